// Hook points (TransformerLens names) and the observers that read them. Observers never change
// results; with none attached the forward pass does no extra work.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "io/config.h"

namespace outro {

// Per-layer hook point names, relative to "blocks.{l}.".
enum class Hook : int {
  ResidPre,   // hook_resid_pre      [n, D]   input of layer l
  Q,          // attn.hook_q         [n, H, hd] after RoPE
  K,          // attn.hook_k         [n, KV, hd] after RoPE
  V,          // attn.hook_v         [n, KV, hd]
  Pattern,    // attn.hook_pattern   [H, n, past+n] post-softmax
  Z,          // attn.hook_z         [n, H, hd] per-head attention output (o_proj input)
  AttnOut,    // hook_attn_out       [n, D]
  ResidMid,   // hook_resid_mid      [n, D]
  MlpOut,     // hook_mlp_out        [n, D]
  ResidPost,  // hook_resid_post     [n, D]
  // Mixture-of-experts layers only (Qwen3-Omni's thinker):
  Router,     // mlp.hook_router     [n, E]   router logits (before the softmax)
  Experts,    // mlp.hook_experts    [n, k]   the chosen experts' indices (as floats), largest weight first
  kCount
};
// The hook points of every layer (ResidPre .. ResidPost); the MoE points follow them.
inline constexpr int kEveryLayerHooks = int(Hook::ResidPost) + 1;
const char* hook_suffix(Hook h);
// "blocks.3.attn.hook_pattern" for (3, Pattern)
std::string hook_name(int layer, Hook h);
// Model-level points: "embed" [n, D] and "ln_final" [n, D] (after the final norm).
inline constexpr const char* kHookEmbed = "embed";
inline constexpr const char* kHookLnFinal = "ln_final";

// Every hook point name of a model with `layers` layers, in forward order (the points of every
// layer; a mixture-of-experts model adds the MoE points of its sparse layers, see moe_hook_names).
std::vector<std::string> all_hook_names(int layers);
// The MoE points (mlp.hook_router, mlp.hook_experts) of the given sparse layers.
std::vector<std::string> moe_hook_names(const std::vector<int>& sparse_layers);
// Every hook point of the model config c describes, in forward order: all_hook_names, with the MoE
// points of its sparse layers after their hook_resid_mid.
std::vector<std::string> all_hook_names(const ModelConfig& c);

struct HookEvent {
  const std::string& name;
  int layer;             // -1 for model-level points
  const float* data;     // host float32, row-major
  std::vector<int64_t> shape;
  int pos0;              // absolute position of the first row
};

class Observer {
 public:
  virtual ~Observer() = default;
  virtual bool wants(const std::string& name) const = 0;
  virtual void on(const HookEvent& e) = 0;
};

// An observer that keeps copies of the tensors whose names it was given, concatenating rows
// across forward calls (prefill then decode steps) along the position axis.
class Recorder : public Observer {
 public:
  explicit Recorder(std::vector<std::string> names) : names_(std::move(names)) {}
  bool wants(const std::string& name) const override;
  void on(const HookEvent& e) override;
  struct Entry {
    std::vector<int64_t> shape;
    std::vector<float> data;
  };
  const Entry* get(const std::string& name) const;
  const std::vector<std::string>& names() const { return names_; }

 private:
  std::vector<std::string> names_;
  std::vector<std::pair<std::string, Entry>> entries_;
};

}  // namespace outro
