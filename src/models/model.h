// A decoder checkpoint (Qwen2 / LLaMA / the Qwen2 decoder of Qwen2.5-Omni and Qwen2.5-VL):
// its config, its tensors (mapped in place) and the names of the tensors each layer uses.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "io/config.h"
#include "io/safetensors.h"

namespace outro {

struct LayerTensors {
  const TensorInfo *attn_norm = nullptr, *q = nullptr, *k = nullptr, *v = nullptr, *o = nullptr;
  const TensorInfo *q_bias = nullptr, *k_bias = nullptr, *v_bias = nullptr, *o_bias = nullptr;
  const TensorInfo *mlp_norm = nullptr, *gate = nullptr, *up = nullptr, *down = nullptr;
  const TensorInfo *gate_bias = nullptr, *up_bias = nullptr, *down_bias = nullptr;
};

class Model {
 public:
  // Reads DIR/config.json and the weights; checks every tensor the decoder needs (names, shapes, dtypes).
  static std::unique_ptr<Model> load(const std::string& dir);

  const ModelConfig& config() const { return cfg_; }
  const WeightStore& store() const { return *store_; }
  const std::string& dir() const { return dir_; }
  const std::string& prefix() const { return prefix_; }  // e.g. "model." or "thinker.model."

  const TensorInfo* embed = nullptr;
  const TensorInfo* final_norm = nullptr;
  const TensorInfo* lm_head = nullptr;  // the embedding table when tied
  std::vector<LayerTensors> layers;
  std::vector<float> inv_freq;  // rotary inverse frequencies, head_dim/2

 private:
  ModelConfig cfg_;
  std::unique_ptr<WeightStore> store_;
  std::string dir_, prefix_;
};

}  // namespace outro
