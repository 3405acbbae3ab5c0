// Interventions: small named value objects that change the forward pass at named points
// (OutRo, head ablation, dimension zeroing). With none attached the model is the plain model.
#pragma once
#include <string>
#include <vector>

#include "kernels/backend.h"

namespace outro {

struct ModelConfig;

// What an intervention sees of the forward call in progress.
struct ForwardCtx {
  Backend* be = nullptr;
  const ModelConfig* cfg = nullptr;
  int past = 0;        // tokens already in the cache
  int n = 0;           // tokens in this call
  int prompt_len = 0;  // tokens of the first call after reset (the prompt)
  const int32_t* ids = nullptr;
};

class Intervention {
 public:
  virtual ~Intervention() = default;
  virtual std::string name() const = 0;
  // Called once at the start of every forward call.
  virtual void begin(ForwardCtx& ctx) {}
  // The residual stream entering layer l, [n, D]; may be edited in place.
  virtual void resid_pre(ForwardCtx& ctx, int layer, Buf h) {}
  // Projections of layer l after RoPE, before they enter the cache: q [n,H,hd], k/v [n,KV,hd].
  virtual void qkv(ForwardCtx& ctx, int layer, Buf q, Buf k, Buf v) {}
  // The keys in the cache [ctx, KV, hd] after this call's rows were written.
  virtual void cached_keys(ForwardCtx& ctx, int layer, Buf kcache) {}
  // May set the mask policy of layer l's attention (sink-out rows).
  virtual void attention_policy(ForwardCtx& ctx, int layer, AttnParams& p) {}
  // The per-head attention output [n, H*hd] before o_proj; may be edited.
  virtual void z(ForwardCtx& ctx, int layer, Buf z) {}
  // Human-readable account of what it did (for --explain).
  virtual std::string explain() const { return name(); }
};

// Zeroes head `head` of layer `layer` before o_proj (the head's output columns).
class HeadAblation : public Intervention {
 public:
  struct Target { int layer, head; };
  explicit HeadAblation(std::vector<Target> targets) : targets_(std::move(targets)) {}
  std::string name() const override { return "head-ablation"; }
  void z(ForwardCtx& ctx, int layer, Buf z) override;
  const std::vector<Target>& targets() const { return targets_; }

 private:
  std::vector<Target> targets_;
};

// Zeroes, in each sink key (per KV head), the channel of largest magnitude before scoring.
class SinkDimZeroing : public Intervention {
 public:
  SinkDimZeroing(std::vector<int> sink_positions, std::vector<int> layers)
      : sinks_(std::move(sink_positions)), layers_(std::move(layers)) {}
  std::string name() const override { return "sink-dim-zeroing"; }
  void cached_keys(ForwardCtx& ctx, int layer, Buf kcache) override;

 private:
  std::vector<int> sinks_;
  std::vector<int> layers_;  // empty: every layer
};

}  // namespace outro
