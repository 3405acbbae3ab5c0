#include "eval/stats.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <stdexcept>

namespace outro::eval {

double mcnemar_exact(int64_t b, int64_t c) {
  if (b < 0 || c < 0) throw std::invalid_argument("mcnemar_exact: negative count");
  const int64_t n = b + c;
  if (n == 0) return 1.0;
  const int64_t k = std::min(b, c);
  // P[X <= k] for X ~ Binomial(n, 1/2), summed in log space (n can be large).
  double tail = 0;
  const double log_half_n = double(n) * std::log(0.5);
  for (int64_t i = 0; i <= k; ++i) {
    const double log_choose = std::lgamma(double(n) + 1) - std::lgamma(double(i) + 1) - std::lgamma(double(n - i) + 1);
    tail += std::exp(log_choose + log_half_n);
  }
  return std::min(1.0, 2.0 * tail);
}

BootstrapCI paired_bootstrap(const std::vector<double>& a, const std::vector<double>& b, int resamples, uint64_t seed,
                             double alpha) {
  if (a.size() != b.size()) throw std::invalid_argument("paired_bootstrap: the two score lists differ in length");
  if (resamples < 1) throw std::invalid_argument("paired_bootstrap: resamples must be positive");
  BootstrapCI r;
  r.resamples = resamples;
  const size_t n = a.size();
  if (n == 0) return r;
  std::vector<double> d(n);
  double sum = 0;
  for (size_t i = 0; i < n; ++i) sum += d[i] = a[i] - b[i];
  r.diff = sum / double(n);
  std::mt19937_64 rng(seed);
  std::vector<double> means(resamples);
  for (int s = 0; s < resamples; ++s) {
    double t = 0;
    for (size_t i = 0; i < n; ++i) t += d[rng() % n];
    means[s] = t / double(n);
  }
  std::sort(means.begin(), means.end());
  // Percentile positions with linear interpolation (numpy's default "linear" method).
  auto q = [&](double p) {
    const double pos = p * double(resamples - 1);
    const size_t lo = size_t(std::floor(pos));
    const size_t hi = std::min(lo + 1, size_t(resamples - 1));
    return means[lo] + (pos - double(lo)) * (means[hi] - means[lo]);
  };
  r.low = q(alpha / 2);
  r.high = q(1 - alpha / 2);
  return r;
}

MeanStd mean_std(const std::vector<double>& v) {
  MeanStd m;
  m.n = int(v.size());
  if (v.empty()) return m;
  double s = 0;
  for (double x : v) s += x;
  m.mean = s / double(v.size());
  if (v.size() > 1) {
    double ss = 0;
    for (double x : v) ss += (x - m.mean) * (x - m.mean);
    m.std = std::sqrt(ss / double(v.size() - 1));
  }
  return m;
}

}  // namespace outro::eval
