// Writes a checkpoint folder of random weights in the Hugging Face layout (config.json +
// model.safetensors) for tests and benchmarks that need a model of a given shape.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace outro {

struct RandomModelSpec {
  std::string architecture = "Qwen2ForCausalLM";  // or LlamaForCausalLM
  int hidden = 64, intermediate = 128, layers = 2, heads = 4, kv_heads = 2, vocab = 256;
  int max_positions = 2048;
  float rope_theta = 10000.f;
  bool tied = false;
  DType dtype = DType::F32;
  float std = 0.1f;  // of the matrices and biases; norm weights: 1 ± 0.1
  uint64_t seed = 1;
  // false: normal values from one std::mt19937_64 (the tests' models). true: uniform values of the
  // same mean and standard deviation from a counter-based hash, written by all threads straight into
  // a mapped file (checkpoints of many GB, for the benchmarks).
  bool hashed = false;
  // architecture "Qwen2_5OmniThinkerForConditionalGeneration": the Qwen2 decoder as text_config
  // (mrope_section below, Qwen's media token ids when the vocabulary has them, else its last ids)
  // plus a vision tower of vision_depth blocks and an audio tower of audio_layers layers, both of
  // the released Qwen2.5-Omni towers' widths (1280, Qwen2.5-VL windows, Whisper-style audio).
  int vision_depth = 32, audio_layers = 32;
  std::vector<int> mrope_section = {16, 24, 24};
  // plant_token >= 0: embed_tokens[plant_token][7] = plant_value, a massive activation in the
  // weights that makes that token an attention sink (OutRo's benchmarks).
  int plant_token = -1;
  float plant_value = 50000.f;
};
// The media token ids a random Omni thinker of this vocabulary uses (audio, image, video,
// audio_start, audio_end, vision_start, vision_end).
struct OmniTokenIds {
  int audio, image, video, audio_start, audio_end, vision_start, vision_end;
};
OmniTokenIds omni_token_ids(int vocab);
// Qwen2ForCausalLM gets q/k/v biases; LlamaForCausalLM none. config.json names the dtype
// (torch_dtype) and, for an untied model, model.safetensors holds lm_head.weight.

void write_random_model(const std::string& dir, const RandomModelSpec& s);

}  // namespace outro
