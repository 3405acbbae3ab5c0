#include "sink/criteria.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "outro/outro.h"

namespace outro::sink {

namespace {
double rms(const float* h, int dim) {
  double s = 0;
  for (int c = 0; c < dim; ++c) s += double(h[c]) * double(h[c]);
  return std::sqrt(s / std::max(dim, 1));
}
}  // namespace

LlmResult phi_llm(const float* h, int n, int dim, const LlmCriterion& p) {
  // The same code path as OutRo's sink choice (src/outro), so the two never disagree.
  PhiLLM r = ::outro::phi_llm(h, n, dim, p.tau_abs, p.tau_rel);
  return {std::move(r.sinks), std::move(r.row_max), r.median};
}

DSink find_dsink(const std::vector<const float*>& first_rows, int dim, const VlmCriterion& p) {
  DSink d;
  d.ratio.assign(size_t(dim), 0.f);
  d.ratio_layer.assign(size_t(dim), -1);
  for (size_t l = 0; l < first_rows.size(); ++l) {
    const float* h = first_rows[l];
    const double r = rms(h, dim);
    if (!(r > 0)) continue;
    for (int c = 0; c < dim; ++c) {
      const float v = float(std::fabs(h[c]) / r);
      if (v > d.ratio[size_t(c)]) {
        d.ratio[size_t(c)] = v;
        d.ratio_layer[size_t(c)] = int(l);
      }
    }
  }
  for (int c = 0; c < dim; ++c)
    if (d.ratio_layer[size_t(c)] >= 0 && double(d.ratio[size_t(c)]) >= p.dim_tau) d.dims.push_back(c);
  if (!d.dims.empty()) {
    d.rule = "threshold";
    return d;
  }
  if (p.fallback_top > 0 && dim > 0 && !first_rows.empty()) {
    std::vector<int> idx(static_cast<size_t>(dim));
    for (int c = 0; c < dim; ++c) idx[size_t(c)] = c;
    const int k = std::min(p.fallback_top, dim);
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int a, int b) {
      return d.ratio[size_t(a)] != d.ratio[size_t(b)] ? d.ratio[size_t(a)] > d.ratio[size_t(b)] : a < b;
    });
    d.dims.assign(idx.begin(), idx.begin() + k);
    std::sort(d.dims.begin(), d.dims.end());
    d.rule = "fallback-top";
    return d;
  }
  d.rule = "none";
  return d;
}

std::vector<float> phi_vlm_values(const float* h, int n, int dim, const std::vector<int>& dims) {
  std::vector<float> out(size_t(n), 0.f);
  for (int c : dims)
    if (c < 0 || c >= dim) fail("phi_vlm: sink dimension ", c, " is outside [0, ", dim, ")");
  for (int i = 0; i < n; ++i) {
    const float* row = h + size_t(i) * size_t(dim);
    const double r = rms(row, dim);
    double m = 0;
    for (int c : dims) m = std::max(m, double(std::fabs(row[c])));
    out[size_t(i)] = r > 0 ? float(m / r) : 0.f;
  }
  return out;
}

std::vector<int> phi_vlm(const float* h, int n, int dim, const std::vector<int>& dims, const VlmCriterion& p) {
  std::vector<int> s;
  auto v = phi_vlm_values(h, n, dim, dims);
  for (int i = 0; i < n; ++i)
    if (!dims.empty() && double(v[size_t(i)]) >= p.tau) s.push_back(i);
  return s;
}

std::vector<float> incoming_attention(const float* A, int n, int cols, int past) {
  std::vector<double> sum(size_t(cols), 0.0);
  std::vector<int> cnt(size_t(cols), 0);
  for (int i = 0; i < n; ++i) {
    const int qpos = past + i;
    const float* row = A + size_t(i) * size_t(cols);
    for (int j = 0; j <= std::min(qpos, cols - 1); ++j) {
      sum[size_t(j)] += row[j];
      ++cnt[size_t(j)];
    }
  }
  std::vector<float> a(size_t(cols), 0.f);
  for (int j = 0; j < cols; ++j)
    if (cnt[size_t(j)]) a[size_t(j)] = float(sum[size_t(j)] / cnt[size_t(j)]);
  return a;
}

std::vector<int> attention_sinks(const std::vector<float>& alpha, const AttentionCriterion& p) {
  std::vector<int> s;
  for (size_t j = 0; j < alpha.size(); ++j)
    if (double(alpha[j]) > p.eps) s.push_back(int(j));
  return s;
}

double sink_score(const float* A, int n, int cols, const std::vector<int>& sinks, bool exclude_sink_rows, int past) {
  double total = 0;
  int rows = 0;
  for (int i = 0; i < n; ++i) {
    const int qpos = past + i;
    if (exclude_sink_rows && std::find(sinks.begin(), sinks.end(), qpos) != sinks.end()) continue;
    const float* row = A + size_t(i) * size_t(cols);
    double m = 0;
    for (int s : sinks)
      if (s >= 0 && s < cols) m += row[s];
    total += m;
    ++rows;
  }
  return rows ? total / rows : 0.0;
}

Focus head_focus(const float* A, int n, int cols) {
  Focus f;
  if (n < 2 || cols < n) return f;
  for (int i = 1; i < n; ++i) {
    const float* row = A + size_t(i) * size_t(cols);
    double h = 0;
    for (int j = 0; j <= i; ++j)
      if (row[j] > 0) h -= double(row[j]) * std::log(double(row[j]));
    f.entropy_ratio += h / std::log(double(i + 1));
    f.first += row[0];
  }
  f.entropy_ratio /= n - 1;
  f.first /= n - 1;
  return f;
}

double even_first_share(int n) {
  double s = 0;
  for (int i = 1; i < n; ++i) s += 1.0 / double(i + 1);
  return n > 1 ? s / (n - 1) : 0.0;
}

}  // namespace outro::sink
