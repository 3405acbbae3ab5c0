// Paired statistics for comparing two decoding strategies on the same items: the exact McNemar
// test, a paired bootstrap confidence interval of the accuracy difference, mean and standard
// deviation across seeds.
#pragma once
#include <cstdint>
#include <vector>

namespace outro::eval {

// Exact two-sided McNemar test: b = items the first strategy gets right and the second wrong,
// c = the reverse. Under H0 the discordant pairs split Binomial(b + c, 1/2);
// p = min(1, 2 * P[X <= min(b, c)]). b = c = 0 gives p = 1.
double mcnemar_exact(int64_t b, int64_t c);

struct BootstrapCI {
  double diff = 0;  // observed mean(a - b)
  double low = 0, high = 0;
  int resamples = 0;
};

// Paired percentile bootstrap of mean(a_i - b_i): items are resampled with replacement
// (`resamples` times, std::mt19937_64 seeded with `seed`); the interval holds the central
// 1 - alpha of the resampled means. a and b are per-item scores (0/1, or a mean over seeds).
BootstrapCI paired_bootstrap(const std::vector<double>& a, const std::vector<double>& b, int resamples = 10000,
                             uint64_t seed = 20260314, double alpha = 0.05);

struct MeanStd {
  double mean = 0, std = 0;  // std: sample standard deviation (n - 1); 0 for fewer than two values
  int n = 0;
};
MeanStd mean_std(const std::vector<double>& v);

}  // namespace outro::eval
