// Qwen3-Omni's media towers: the Qwen3-VL-style vision encoder (Conv3d patches with bias, learned
// positions resampled bilinearly to the grid, 2-D rotary, LayerNorm blocks with a GELU MLP, the
// 2x2 patch merger and the DeepStack mergers at deepstack_visual_indexes) and the audio encoder
// (three stride-2 Conv2d over 2 * n_window-frame mel chunks, sinusoidal positions per chunk,
// attention within n_window_infer windows, LayerNorm, two projections). Any Backend.
#pragma once
#include <deque>
#include <vector>

#include "models/encoder_layers.h"
#include "io/safetensors.h"
#include "kernels/backend.h"
#include "models/multimodal_config.h"

namespace outro {

// Tokens the audio tower gives for n mel frames (transformers' _get_feat_extract_output_lengths:
// 13 per full 100-frame chunk, the released n_window of 50).
int qwen3_audio_tokens(int n_frames, int n_window);

struct Qwen3VisionOut {
  std::vector<float> embeds;                  // [t*h*w / merge^2, out_hidden]
  std::vector<std::vector<float>> deepstack;  // one per deepstack_visual_indexes entry, same shape
};

class Qwen3VisionEncoder {
 public:
  Qwen3VisionEncoder(const VisionConfig& c, const WeightStore& store, Backend& be);
  // pixels [t*h*w, C*T*P*P] in the processor's order (t, h-block, w-block, h-in, w-in).
  Qwen3VisionOut encode(const float* pixels, int grid_t, int grid_h, int grid_w);
  const VisionConfig& config() const { return c_; }

 private:
  struct Merger {
    Weight ln, lnb, fc1, fc1b, fc2, fc2b;
  };
  struct Block {
    Weight norm1, norm1b, norm2, norm2b, q, k, v, qb, kb, vb, proj, projb, fc1, fc1b, fc2, fc2b;
  };
  Merger merger(const WeightStore& s, const std::string& name, bool postshuffle);
  void run_merger(const Merger& m, Buf out, const Buf& x, int n_patches, bool postshuffle);
  VisionConfig c_;
  Backend& be_;
  std::string prefix_;
  std::deque<TensorInfo> slices_;
  Weight patch_, patch_b_;
  std::vector<float> pos_table_;  // [side * side, hidden]
  int side_ = 0;
  std::vector<Block> blocks_;
  Merger merger_;
  std::vector<Merger> deepstack_;
  std::vector<float> inv_freq_;
};

class Qwen3AudioEncoder {
 public:
  Qwen3AudioEncoder(const AudioConfig& c, const WeightStore& store, Backend& be);
  struct Clip {
    const float* mel;  // [n_mels, n_frames]
    int n_frames;
    int n_mels;  // must be audio_config.num_mel_bins
  };
  // The clips of one prompt together, as the thinker's forward runs them (every chunk padded to
  // the longest chunk of all clips; the attention window follows that longest chunk too) ->
  // host [tokens, out_dim] per clip.
  std::vector<std::vector<float>> encode(const std::vector<Clip>& clips);
  const AudioConfig& config() const { return c_; }

 private:
  AudioConfig c_;
  Backend& be_;
  std::string prefix_;
  Weight conv_[3], convb_[3], conv_out_, ln_post_, ln_postb_, proj1_, proj1b_, proj2_, proj2b_;
  std::vector<EncoderLayer> layers_;
  std::vector<float> pos_;
  int f3_ = 0;  // mel bins after the three convolutions
};

}  // namespace outro
