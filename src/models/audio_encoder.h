// The audio tower of Qwen2.5-Omni (Whisper-style): per chunk of 2 * n_window mel frames, two
// convolutions (k 3; stride 1 then 2) with GELU and sinusoidal positions restarting per chunk;
// pre-LayerNorm transformer layers attending within their chunk; then, per audio, average pooling
// by 2, LayerNorm and the projection to the decoder's width. Runs on any Backend.
#pragma once
#include <vector>

#include "models/encoder_layers.h"
#include "io/safetensors.h"
#include "kernels/backend.h"
#include "models/multimodal_config.h"

namespace outro {

class AudioEncoder {
 public:
  AudioEncoder(const AudioConfig& c, const WeightStore& store, Backend& be);

  // mel [n_mels, n_frames] (media::MelFeatures' layout) -> host [tokens, out_dim] with
  // tokens = media::audio_tokens(n_frames).
  std::vector<float> encode(const float* mel, int n_frames);

  const AudioConfig& config() const { return c_; }

 private:
  AudioConfig c_;
  Backend& be_;
  std::string prefix_;
  Weight conv1_, conv1b_, conv2_, conv2b_, ln_post_, ln_postb_, proj_, projb_;
  std::vector<EncoderLayer> layers_;
  std::vector<float> pos_;  // sinusoids [max_positions, d_model]
};

}  // namespace outro
