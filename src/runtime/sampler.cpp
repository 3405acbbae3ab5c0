#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace outro {

int argmax(const float* x, int n) {
  int best = 0;
  for (int i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;
  return best;
}

Sampler::Sampler(const SamplingOptions& o) : o_(o), rng_(o.seed) {
  if (!o.greedy) {
    if (!(o.temperature > 0.f)) fail("sampling: temperature must be > 0, found ", o.temperature);
    if (!(o.top_p > 0.f && o.top_p <= 1.f)) fail("sampling: top-p must be in (0, 1], found ", o.top_p);
    if (o.top_k < 0) fail("sampling: top-k must be >= 0, found ", o.top_k);
  }
}

int Sampler::sample(const float* logits, int vocab) {
  if (o_.greedy) return argmax(logits, vocab);
  cand_.resize(size_t(vocab));
  for (int i = 0; i < vocab; ++i) cand_[size_t(i)] = {logits[i] / o_.temperature, i};
  size_t keep = size_t(vocab);
  auto by_logit = [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); };
  if (o_.top_k > 0 && size_t(o_.top_k) < keep) {
    keep = size_t(o_.top_k);
    std::partial_sort(cand_.begin(), cand_.begin() + long(keep), cand_.end(), by_logit);
  } else {
    std::sort(cand_.begin(), cand_.end(), by_logit);
  }
  const float mx = cand_[0].first;
  double sum = 0;
  for (size_t i = 0; i < keep; ++i) {
    cand_[i].first = std::exp(cand_[i].first - mx);
    sum += cand_[i].first;
  }
  if (o_.top_p < 1.f) {
    double acc = 0;
    size_t k = 0;
    while (k < keep) {
      acc += cand_[k].first / sum;
      ++k;
      if (acc >= o_.top_p) break;
    }
    keep = k;
    sum = 0;
    for (size_t i = 0; i < keep; ++i) sum += cand_[i].first;
  }
  const double u = std::uniform_real_distribution<double>(0.0, 1.0)(rng_) * sum;
  double acc = 0;
  for (size_t i = 0; i < keep; ++i) {
    acc += cand_[i].first;
    if (u < acc) return cand_[i].second;
  }
  return cand_[keep - 1].second;
}

}  // namespace outro
