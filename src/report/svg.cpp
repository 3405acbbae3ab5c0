#include "report/svg.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

namespace outro::report {

namespace {

constexpr int kLeft = 70, kRight = 16, kTop = 34, kBottom = 50, kLegendW = 230;

struct Frame {
  double x0, y0, w, h;           // plot area in pixels
  double xlo, xhi, ylo, yhi;     // data range
  double px(double x) const { return x0 + (xhi > xlo ? (x - xlo) / (xhi - xlo) : 0.5) * w; }
  double py(double y) const { return y0 + h - (yhi > ylo ? (y - ylo) / (yhi - ylo) : 0.5) * h; }
};

std::string f2(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.2f", v);
  return b;
}

bool finite(double v) { return std::isfinite(v); }

void range_of(const std::vector<double>& v, double& lo, double& hi) {
  for (double e : v)
    if (finite(e)) {
      lo = std::min(lo, e);
      hi = std::max(hi, e);
    }
}

void pad_range(double& lo, double& hi) {
  if (!(lo <= hi)) {
    lo = 0;
    hi = 1;
  }
  if (hi - lo < 1e-12) {
    const double d = std::max(std::fabs(lo) * 0.1, 0.5);
    lo -= d;
    hi += d;
  } else {
    const double d = (hi - lo) * 0.05;
    lo -= d;
    hi += d;
  }
}

std::string open_svg(const Axes& a, int w, int h) {
  std::ostringstream o;
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << w << "\" height=\"" << h << "\" viewBox=\"0 0 " << w << ' '
    << h << "\" font-family=\"sans-serif\" font-size=\"12\" role=\"img\">";
  o << "<title>" << xml_escape(a.title) << "</title>";
  o << "<rect x=\"0\" y=\"0\" width=\"" << w << "\" height=\"" << h << "\" fill=\"white\"/>";
  o << "<text x=\"" << w / 2 << "\" y=\"20\" text-anchor=\"middle\" font-size=\"14\" font-weight=\"bold\">"
    << xml_escape(a.title) << "</text>";
  return o.str();
}

// Axes box, ticks, grid and labels.
std::string axes(const Axes& a, const Frame& f, const std::vector<double>& xt, const std::vector<std::string>& xtl,
                 const std::vector<double>& yt) {
  std::ostringstream o;
  for (double y : yt) {
    const double p = f.py(y);
    o << "<line x1=\"" << f2(f.x0) << "\" y1=\"" << f2(p) << "\" x2=\"" << f2(f.x0 + f.w) << "\" y2=\"" << f2(p)
      << "\" stroke=\"#e4e4e4\"/>";
    o << "<text x=\"" << f2(f.x0 - 6) << "\" y=\"" << f2(p + 4) << "\" text-anchor=\"end\">" << fmt_num(y) << "</text>";
  }
  for (size_t i = 0; i < xt.size(); ++i) {
    const double p = f.px(xt[i]);
    o << "<line x1=\"" << f2(p) << "\" y1=\"" << f2(f.y0 + f.h) << "\" x2=\"" << f2(p) << "\" y2=\"" << f2(f.y0 + f.h + 5)
      << "\" stroke=\"#333\"/>";
    o << "<text x=\"" << f2(p) << "\" y=\"" << f2(f.y0 + f.h + 18) << "\" text-anchor=\"middle\">"
      << xml_escape(i < xtl.size() ? xtl[i] : fmt_num(xt[i])) << "</text>";
  }
  for (double y : a.hlines)
    if (y >= f.ylo && y <= f.yhi)
      o << "<line x1=\"" << f2(f.x0) << "\" y1=\"" << f2(f.py(y)) << "\" x2=\"" << f2(f.x0 + f.w) << "\" y2=\""
        << f2(f.py(y)) << "\" stroke=\"#888\" stroke-dasharray=\"4 3\"/>";
  o << "<rect x=\"" << f2(f.x0) << "\" y=\"" << f2(f.y0) << "\" width=\"" << f2(f.w) << "\" height=\"" << f2(f.h)
    << "\" fill=\"none\" stroke=\"#333\"/>";
  o << "<text x=\"" << f2(f.x0 + f.w / 2) << "\" y=\"" << f2(f.y0 + f.h + 38) << "\" text-anchor=\"middle\">"
    << xml_escape(a.xlabel) << "</text>";
  o << "<text transform=\"translate(16," << f2(f.y0 + f.h / 2) << ") rotate(-90)\" text-anchor=\"middle\">"
    << xml_escape(a.ylabel) << "</text>";
  return o.str();
}

std::string legend(const Frame& f, const std::vector<std::pair<std::string, std::string>>& items,
                   const std::vector<bool>& dashed, bool dots) {
  std::ostringstream o;
  double y = f.y0 + 8;
  const double x = f.x0 + f.w + 12;
  for (size_t i = 0; i < items.size(); ++i) {
    if (dots)
      o << "<circle cx=\"" << f2(x + 8) << "\" cy=\"" << f2(y) << "\" r=\"4\" fill=\"" << items[i].second << "\"/>";
    else
      o << "<line x1=\"" << f2(x) << "\" y1=\"" << f2(y) << "\" x2=\"" << f2(x + 18) << "\" y2=\"" << f2(y) << "\" stroke=\""
        << items[i].second << "\" stroke-width=\"3\"" << (i < dashed.size() && dashed[i] ? " stroke-dasharray=\"5 3\"" : "")
        << "/>";
    o << "<text x=\"" << f2(x + 24) << "\" y=\"" << f2(y + 4) << "\">" << xml_escape(items[i].first) << "</text>";
    y += 18;
  }
  return o.str();
}

}  // namespace

std::string xml_escape(const std::string& s) {
  std::string o;
  for (char c : s) switch (c) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      case '\'': o += "&#39;"; break;
      default: o += c;
    }
  return o;
}

const std::string& palette(size_t i) {
  static const std::vector<std::string> p = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
                                             "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};
  return p[i % p.size()];
}

std::string fmt_num(double v) {
  if (!std::isfinite(v)) return "nan";
  if (std::fabs(v) < 1e-12) return "0";
  char b[32];
  const double a = std::fabs(v);
  if (a >= 1e5 || a < 1e-3) std::snprintf(b, sizeof b, "%.3g", v);
  else std::snprintf(b, sizeof b, "%.4g", v);
  return b;
}

std::vector<double> nice_ticks(double lo, double hi, int target) {
  std::vector<double> t;
  if (!(std::isfinite(lo) && std::isfinite(hi)) || hi < lo) return t;
  if (hi == lo) return {lo};
  const double raw = (hi - lo) / std::max(target, 1);
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (m * mag >= raw) {
      step = m * mag;
      break;
    }
  const double first = std::ceil(lo / step - 1e-9) * step;
  for (double v = first; v <= hi + step * 1e-9; v += step) t.push_back(std::fabs(v) < step * 1e-9 ? 0.0 : v);
  return t;
}

std::string line_chart(const Axes& a, const std::vector<Series>& series) {
  int nleg = 0;
  for (const auto& s : series) nleg += s.legend ? 1 : 0;
  const bool leg = nleg > 1;
  Frame f{double(kLeft), double(kTop), double(a.width - kLeft - kRight - (leg ? kLegendW : 0)),
          double(a.height - kTop - kBottom), 1e300, -1e300, 1e300, -1e300};
  for (const auto& s : series) {
    range_of(s.x, f.xlo, f.xhi);
    range_of(s.y, f.ylo, f.yhi);
  }
  for (double y : a.hlines) range_of({y}, f.ylo, f.yhi);
  if (!(f.xlo <= f.xhi)) f.xlo = 0, f.xhi = 1;
  if (f.xhi == f.xlo) f.xhi = f.xlo + 1;
  pad_range(f.ylo, f.yhi);
  if (a.ymin < a.ymax) f.ylo = a.ymin, f.yhi = a.ymax;
  if (a.xmin < a.xmax) f.xlo = a.xmin, f.xhi = a.xmax;
  auto xt = nice_ticks(f.xlo, f.xhi, 8);
  if (a.integer_x) xt.erase(std::remove_if(xt.begin(), xt.end(), [](double v) { return v != std::floor(v); }), xt.end());
  std::ostringstream o;
  o << open_svg(a, a.width, a.height) << axes(a, f, xt, {}, nice_ticks(f.ylo, f.yhi, 6));
  std::vector<std::pair<std::string, std::string>> items;
  std::vector<bool> dashed;
  for (size_t k = 0; k < series.size(); ++k) {
    const auto& s = series[k];
    const std::string col = s.color.empty() ? palette(k) : s.color;
    std::ostringstream path;
    bool pen = false;
    for (size_t i = 0; i < std::min(s.x.size(), s.y.size()); ++i) {
      if (!finite(s.x[i]) || !finite(s.y[i])) {
        pen = false;
        continue;
      }
      path << (pen ? " L" : " M") << f2(f.px(s.x[i])) << ' ' << f2(f.py(s.y[i]));
      pen = true;
    }
    o << "<g class=\"series\" data-name=\"" << xml_escape(s.name) << "\"><path d=\"" << path.str() << "\" fill=\"none\" stroke=\""
      << col << "\" stroke-width=\"" << s.width << "\" stroke-opacity=\"" << s.opacity << "\""
      << (s.dashed ? " stroke-dasharray=\"6 4\"" : "") << "/>";
    if (s.markers)
      for (size_t i = 0; i < std::min(s.x.size(), s.y.size()); ++i)
        if (finite(s.x[i]) && finite(s.y[i]))
          o << "<circle cx=\"" << f2(f.px(s.x[i])) << "\" cy=\"" << f2(f.py(s.y[i])) << "\" r=\"3\" fill=\"" << col
            << "\" fill-opacity=\"" << s.opacity << "\"><title>" << xml_escape(s.name) << ": (" << fmt_num(s.x[i]) << ", "
            << fmt_num(s.y[i]) << ")</title></circle>";
    o << "</g>";
    if (s.legend) {
      items.push_back({s.name, col});
      dashed.push_back(s.dashed);
    }
  }
  if (leg) o << legend(f, items, dashed, false);
  o << "</svg>";
  return o.str();
}

std::string bar_chart(const Axes& a, const std::vector<std::string>& categories, const std::vector<Series>& series) {
  const bool leg = series.size() > 1;
  Frame f{double(kLeft), double(kTop), double(a.width - kLeft - kRight - (leg ? kLegendW : 0)),
          double(a.height - kTop - kBottom), -0.5, double(categories.size()) - 0.5, 0.0, 0.0};
  double lo = 0, hi = 0;
  for (const auto& s : series) range_of(s.y, lo, hi);
  for (double y : a.hlines) range_of({y}, lo, hi);
  if (hi == lo) hi = lo + 1;
  f.ylo = lo < 0 ? lo - (hi - lo) * 0.05 : 0;
  f.yhi = hi > 0 ? hi + (hi - lo) * 0.05 : 0;
  if (a.ymin < a.ymax) f.ylo = a.ymin, f.yhi = a.ymax;
  std::vector<double> xt;
  // Show at most ~24 category labels.
  const size_t every = std::max<size_t>(1, (categories.size() + 23) / 24);
  std::vector<std::string> xtl;
  for (size_t i = 0; i < categories.size(); i += every) {
    xt.push_back(double(i));
    xtl.push_back(categories[i]);
  }
  std::ostringstream o;
  o << open_svg(a, a.width, a.height) << axes(a, f, xt, xtl, nice_ticks(f.ylo, f.yhi, 6));
  const double slot = f.w / std::max<size_t>(categories.size(), 1);
  const double bw = slot * 0.8 / std::max<size_t>(series.size(), 1);
  std::vector<std::pair<std::string, std::string>> items;
  for (size_t k = 0; k < series.size(); ++k) {
    const auto& s = series[k];
    const std::string col = s.color.empty() ? palette(k) : s.color;
    o << "<g class=\"series\" data-name=\"" << xml_escape(s.name) << "\">";
    for (size_t i = 0; i < categories.size() && i < s.y.size(); ++i) {
      if (!finite(s.y[i])) continue;
      const double x = f.px(double(i)) - slot * 0.4 + bw * double(k);
      const double y0 = f.py(std::max(0.0, f.ylo)), y1 = f.py(s.y[i]);
      o << "<rect x=\"" << f2(x) << "\" y=\"" << f2(std::min(y0, y1)) << "\" width=\"" << f2(std::max(bw - 1, 1.0))
        << "\" height=\"" << f2(std::fabs(y1 - y0)) << "\" fill=\"" << col << "\"><title>" << xml_escape(s.name) << ", "
        << xml_escape(categories[i]) << ": " << fmt_num(s.y[i]) << "</title></rect>";
    }
    o << "</g>";
    items.push_back({s.name, col});
  }
  if (leg) o << legend(f, items, {}, false);
  o << "</svg>";
  return o.str();
}

std::string scatter_chart(const Axes& a, const std::vector<Points>& sets) {
  const bool leg = sets.size() > 1;
  Frame f{double(kLeft), double(kTop), double(a.width - kLeft - kRight - (leg ? kLegendW : 0)),
          double(a.height - kTop - kBottom), 1e300, -1e300, 1e300, -1e300};
  for (const auto& s : sets) {
    range_of(s.x, f.xlo, f.xhi);
    range_of(s.y, f.ylo, f.yhi);
  }
  for (double y : a.hlines) range_of({y}, f.ylo, f.yhi);
  pad_range(f.xlo, f.xhi);
  pad_range(f.ylo, f.yhi);
  if (a.ymin < a.ymax) f.ylo = a.ymin, f.yhi = a.ymax;
  if (a.xmin < a.xmax) f.xlo = a.xmin, f.xhi = a.xmax;
  std::ostringstream o;
  o << open_svg(a, a.width, a.height) << axes(a, f, nice_ticks(f.xlo, f.xhi, 7), {}, nice_ticks(f.ylo, f.yhi, 6));
  std::vector<std::pair<std::string, std::string>> items;
  for (size_t k = 0; k < sets.size(); ++k) {
    const auto& s = sets[k];
    const std::string col = s.color.empty() ? palette(k) : s.color;
    o << "<g class=\"series\" data-name=\"" << xml_escape(s.name) << "\">";
    for (size_t i = 0; i < std::min(s.x.size(), s.y.size()); ++i) {
      if (!finite(s.x[i]) || !finite(s.y[i])) continue;
      o << "<circle cx=\"" << f2(f.px(s.x[i])) << "\" cy=\"" << f2(f.py(s.y[i])) << "\" r=\"" << s.radius << "\" fill=\"" << col
        << "\" fill-opacity=\"" << s.opacity << "\">";
      if (i < s.labels.size()) o << "<title>" << xml_escape(s.labels[i]) << "</title>";
      o << "</circle>";
    }
    o << "</g>";
    items.push_back({s.name + " (" + std::to_string(s.x.size()) + ")", col});
  }
  if (leg) o << legend(f, items, {}, true);
  o << "</svg>";
  return o.str();
}

std::string heatmap(const Axes& a, const std::vector<std::vector<double>>& m, const std::vector<std::string>& col_labels,
                    const std::vector<std::string>& row_labels, bool annotate, double lo, double hi) {
  const size_t R = m.size(), C = R ? m[0].size() : 0;
  if (lo == hi) {
    lo = 1e300;
    hi = -1e300;
    for (const auto& r : m) range_of(r, lo, hi);
    if (!(lo <= hi)) lo = 0, hi = 1;
    if (hi == lo) hi = lo + 1;
  }
  const int scale_w = 70;
  Frame f{double(kLeft), double(kTop), double(a.width - kLeft - kRight - scale_w), double(a.height - kTop - kBottom),
          0, double(C), 0, double(R)};
  const double cw = f.w / std::max<size_t>(C, 1), ch = f.h / std::max<size_t>(R, 1);
  auto color = [&](double v) {
    double t = std::clamp((v - lo) / (hi - lo), 0.0, 1.0);
    const int r = int(std::lround(255 - t * (255 - 8))), g = int(std::lround(255 - t * (255 - 48))),
              b = int(std::lround(255 - t * (255 - 107)));
    char buf[16];
    std::snprintf(buf, sizeof buf, "#%02x%02x%02x", r, g, b);
    return std::string(buf);
  };
  std::ostringstream o;
  o << open_svg(a, a.width, a.height);
  for (size_t r = 0; r < R; ++r)
    for (size_t c = 0; c < C; ++c) {
      const double v = m[r][c];
      const double x = f.x0 + cw * double(c), y = f.y0 + ch * double(r);
      o << "<rect x=\"" << f2(x) << "\" y=\"" << f2(y) << "\" width=\"" << f2(cw) << "\" height=\"" << f2(ch) << "\" fill=\""
        << (finite(v) ? color(v) : "#ccc") << "\"><title>" << xml_escape(r < row_labels.size() ? row_labels[r] : "") << ", "
        << xml_escape(c < col_labels.size() ? col_labels[c] : "") << ": " << fmt_num(v) << "</title></rect>";
      if (annotate && cw >= 26 && ch >= 14) {
        const double t = (v - lo) / (hi - lo);
        char b[32];
        std::snprintf(b, sizeof b, "%.2f", v);
        o << "<text x=\"" << f2(x + cw / 2) << "\" y=\"" << f2(y + ch / 2 + 4) << "\" text-anchor=\"middle\" font-size=\"10\" fill=\""
          << (t > 0.55 ? "white" : "black") << "\">" << b << "</text>";
      }
    }
  o << "<rect x=\"" << f2(f.x0) << "\" y=\"" << f2(f.y0) << "\" width=\"" << f2(f.w) << "\" height=\"" << f2(f.h)
    << "\" fill=\"none\" stroke=\"#333\"/>";
  const size_t every_c = std::max<size_t>(1, (C + 23) / 24), every_r = std::max<size_t>(1, (R + 19) / 20);
  for (size_t c = 0; c < C; c += every_c)
    o << "<text x=\"" << f2(f.x0 + cw * (double(c) + 0.5)) << "\" y=\"" << f2(f.y0 + f.h + 16) << "\" text-anchor=\"middle\">"
      << xml_escape(c < col_labels.size() ? col_labels[c] : std::to_string(c)) << "</text>";
  for (size_t r = 0; r < R; r += every_r)
    o << "<text x=\"" << f2(f.x0 - 6) << "\" y=\"" << f2(f.y0 + ch * (double(r) + 0.5) + 4) << "\" text-anchor=\"end\">"
      << xml_escape(r < row_labels.size() ? row_labels[r] : std::to_string(r)) << "</text>";
  o << "<text x=\"" << f2(f.x0 + f.w / 2) << "\" y=\"" << f2(f.y0 + f.h + 38) << "\" text-anchor=\"middle\">"
    << xml_escape(a.xlabel) << "</text>";
  o << "<text transform=\"translate(16," << f2(f.y0 + f.h / 2) << ") rotate(-90)\" text-anchor=\"middle\">"
    << xml_escape(a.ylabel) << "</text>";
  // colour scale
  const double sx = f.x0 + f.w + 18;
  for (int i = 0; i < 20; ++i) {
    const double v = hi - (hi - lo) * (i + 0.5) / 20;
    o << "<rect x=\"" << f2(sx) << "\" y=\"" << f2(f.y0 + f.h * i / 20) << "\" width=\"14\" height=\"" << f2(f.h / 20 + 0.5)
      << "\" fill=\"" << color(v) << "\"/>";
  }
  o << "<rect x=\"" << f2(sx) << "\" y=\"" << f2(f.y0) << "\" width=\"14\" height=\"" << f2(f.h) << "\" fill=\"none\" stroke=\"#333\"/>";
  o << "<text x=\"" << f2(sx + 18) << "\" y=\"" << f2(f.y0 + 10) << "\">" << fmt_num(hi) << "</text>";
  o << "<text x=\"" << f2(sx + 18) << "\" y=\"" << f2(f.y0 + f.h) << "\">" << fmt_num(lo) << "</text>";
  o << "</svg>";
  return o.str();
}

}  // namespace outro::report
