// Small hand-written SVG charts for self-contained reports: line, grouped bar, scatter, heatmap.
// Every chart has a title, labelled axes with ticks, and a legend when there is more than one
// series; text is XML-escaped; the output is one <svg> element with no external references.
#pragma once
#include <string>
#include <vector>

namespace outro::report {

struct Axes {
  std::string title, xlabel, ylabel;
  int width = 760, height = 340;
  // Fixed y range when ymin < ymax (else from the data, padded, including 0 for bar charts).
  double ymin = 0, ymax = 0;
  double xmin = 0, xmax = 0;  // same for x (line and scatter)
  bool integer_x = false;     // x ticks at integers only
  std::vector<double> hlines;  // horizontal reference lines (dashed grey)
};

struct Series {
  Series() = default;
  Series(std::string n, std::vector<double> xs, std::vector<double> ys, std::string col = "")
      : name(std::move(n)), x(std::move(xs)), y(std::move(ys)), color(std::move(col)) {}
  std::string name;
  std::vector<double> x, y;
  std::string color;     // empty: from the palette
  bool dashed = false;
  double width = 2.0;
  bool markers = true;
  double opacity = 1.0;
  bool legend = true;
};

struct Points {
  Points() = default;
  Points(std::string n, std::vector<double> xs, std::vector<double> ys, std::vector<std::string> labs = {},
         std::string col = "", double r = 3.0, double op = 0.8)
      : name(std::move(n)), x(std::move(xs)), y(std::move(ys)), labels(std::move(labs)), color(std::move(col)),
        radius(r), opacity(op) {}
  std::string name;
  std::vector<double> x, y;
  std::vector<std::string> labels;  // optional per-point tooltip (<title>)
  std::string color;
  double radius = 3.0;
  double opacity = 0.8;
};

std::string line_chart(const Axes& a, const std::vector<Series>& series);
// One group of bars per category, one bar per series (series[k].y[category]).
std::string bar_chart(const Axes& a, const std::vector<std::string>& categories, const std::vector<Series>& series);
std::string scatter_chart(const Axes& a, const std::vector<Points>& sets);
// m[row][col]; rows drawn top to bottom. Colour: white (lo) to dark blue (hi) on [lo, hi]
// (lo == hi: the data's range). annotate prints each value in its cell.
std::string heatmap(const Axes& a, const std::vector<std::vector<double>>& m, const std::vector<std::string>& col_labels,
                    const std::vector<std::string>& row_labels, bool annotate, double lo = 0, double hi = 0);

// Helpers (exposed for tests).
std::string xml_escape(const std::string& s);
// About `target` round ticks (1, 2, 5 x 10^k) covering [lo, hi].
std::vector<double> nice_ticks(double lo, double hi, int target = 5);
std::string fmt_num(double v);  // short, locale-free: 0.25, 1.5e-05, 1200
const std::string& palette(size_t i);

}  // namespace outro::report
