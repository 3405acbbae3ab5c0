// A decoder checkpoint (Qwen2 / LLaMA / the Qwen2 decoder of Qwen2.5-Omni and Qwen2.5-VL / the
// Qwen3-MoE decoder of Qwen3-Omni's thinker): its config, its tensors (mapped in place) and the
// tensors each layer uses, as its architecture family (models/decoder.h) names and checks them.
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
  // Qwen3: per-head RMSNorm weights [head_dim] of q and k.
  const TensorInfo *q_norm = nullptr, *k_norm = nullptr;
  // Qwen3-MoE sparse layers (gate/up/down above stay null there): the router mlp.gate.weight [E, D],
  // and the experts either fused as transformers 5 holds them (mlp.experts.gate_up_proj [E, 2I, D],
  // gate rows first, and mlp.experts.down_proj [E, D, I]) or one tensor per expert as the released
  // checkpoints and save_pretrained store them (mlp.experts.{e}.{gate,up,down}_proj.weight).
  const TensorInfo* router = nullptr;
  const TensorInfo *experts_gate_up = nullptr, *experts_down = nullptr;
  std::vector<const TensorInfo*> expert_gate, expert_up, expert_down;
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
