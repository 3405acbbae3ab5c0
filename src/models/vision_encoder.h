// The vision tower of Qwen2.5-VL / Qwen2.5-Omni: 3-D patch embedding (a Conv3d with stride =
// kernel, i.e. one matmul over the patchified pixels), blocks of RMSNorm + attention with 2-D
// rotary positions (window attention, full attention in config.fullatt_block_indexes, each over
// one temporal slice) + gated SiLU MLP, and the patch merger (RMSNorm, 2x2 patches -> MLP with GELU).
// Runs on any Backend with the decoder's kernels.
#pragma once
#include <deque>
#include <memory>
#include <vector>

#include "io/safetensors.h"
#include "kernels/backend.h"
#include "models/multimodal_config.h"

namespace outro {

class VisionEncoder {
 public:
  // Finds the tower's tensors (visual., model.visual., thinker.visual.) and checks their shapes.
  VisionEncoder(const VisionConfig& c, const WeightStore& store, Backend& be);

  // pixels [t*h*w, C*T*P*P] (media::patchify's layout) -> host [t*h*w / merge^2, out_hidden].
  std::vector<float> encode(const float* pixels, int grid_t, int grid_h, int grid_w);

  const VisionConfig& config() const { return c_; }
  const std::string& prefix() const { return prefix_; }

  // The window order of merged units and window boundaries in patch rows (exposed for tests).
  static void window_index(int grid_t, int grid_h, int grid_w, int merge, int window_units, std::vector<int32_t>* index,
                           std::vector<int>* cu_patches);

 private:
  struct Block {
    Weight norm1, norm2, q, k, v, qb, kb, vb, proj, projb, gate, gateb, up, upb, down, downb;
  };
  VisionConfig c_;
  Backend& be_;
  std::string prefix_;
  std::deque<TensorInfo> slices_;  // q/k/v row slices of a fused qkv weight
  Weight patch_;
  std::vector<Block> blocks_;
  Weight ln_q_, mlp0_, mlp0b_, mlp2_, mlp2b_;
  std::vector<float> inv_freq_;  // [head_dim / 2]: the h and w halves share the frequencies
};

}  // namespace outro
