// Next-token choice: greedy, or seeded sampling with temperature, top-k and top-p.
#pragma once
#include <cstdint>
#include <random>
#include <vector>

namespace outro {

struct SamplingOptions {
  bool greedy = true;
  float temperature = 1.f;
  int top_k = 0;      // 0: no limit
  float top_p = 1.f;  // 1: no limit
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(const SamplingOptions& o);
  int sample(const float* logits, int vocab);

 private:
  SamplingOptions o_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int>> cand_;
};

// Index of the largest logit (lowest index among ties), as torch.argmax.
int argmax(const float* logits, int vocab);

}  // namespace outro
