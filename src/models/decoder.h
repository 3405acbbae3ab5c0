// The decoder-layer forward of an architecture family, written once per family (models/qwen2.cpp,
// models/qwen3_moe.cpp), the helpers they share (models/decoder.cpp) and the registry that maps a
// config to its family (models/registry.cpp).
// A family owns its layer weights on the backend and the order of its operations; the session
// (runtime/session.cpp) owns the residual stream, the KV cache, the hook points and the
// interventions, and offers them to the family through LayerRun.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "runtime/hooks.h"

namespace outro {

class Model;
struct ModelConfig;
struct LayerTensors;
class WeightStore;

// What the session does for a layer at the points every family shares. Each call applies the
// interventions attached at that point and then fires the hook points that observers asked for.
class LayerRun {
 public:
  virtual ~LayerRun() = default;
  virtual int layer() const = 0;
  // The residual stream entering the layer (interventions' resid_pre; hook_resid_pre).
  virtual void resid_pre(Buf x) = 0;
  // Rotary embedding of q [n, heads, hd] or k at this step's positions (1-D, or the multimodal
  // sections in the layout the config names).
  virtual void rotate(Buf x, int heads) = 0;
  // q, k after the rotary, v (interventions' qkv; hook_q / hook_k / hook_v).
  virtual void qkv(Buf q, Buf k, Buf v) = 0;
  // Appends k, v to the layer's cache and attends q over it into z [n, heads * hd] (cached_keys,
  // attention_policy, hook_pattern, then z's interventions and hook_z).
  virtual void attend(Buf z, const Buf& q, const Buf& k, const Buf& v) = 0;
  // An observation point: no effect unless an observer asked for it (wants() says whether one did,
  // so a family can skip work done only for a hook).
  virtual bool wants(Hook h) const = 0;
  // (An initializer list: a point nobody observes costs no allocation.)
  virtual void emit(Hook h, const Buf& b, std::initializer_list<int64_t> shape) = 0;
  // Host-side observation (e.g. the router's choices, computed on the host).
  virtual void emit_host(Hook h, const float* data, std::initializer_list<int64_t> shape) = 0;
};

// Activation buffers the session allocates for n rows and every family uses.
struct Scratch {
  int n = 0;
  Buf xn, q, k, v, z, attn_out, mlp_out;
};

class Decoder {
 public:
  virtual ~Decoder() = default;
  // Makes room for n rows in the family's own buffers.
  virtual void reserve(int n) = 0;
  // One layer: x [n, D] is the residual stream, updated in place.
  virtual void layer(int l, int n, Buf x, Scratch& s, LayerRun& run) = 0;
};

// Looks tensors up by checkpoint name with their expected shapes and checks their dtypes.
struct TensorLookup {
  const WeightStore& store;
  const TensorInfo* need(const std::string& name, const std::vector<int64_t>& shape) const;
  const TensorInfo* maybe(const std::string& name, const std::vector<int64_t>& shape) const;
  bool has(const std::string& name) const;
};

// A decoder family: how its layers' tensors are named and checked, and its forward.
struct DecoderFamily {
  const char* name;
  // Resolves layer l's tensors under prefix P ("model.", "thinker.model.", ...).
  void (*bind)(const ModelConfig& c, const TensorLookup& t, const std::string& P, int l, LayerTensors* out);
  std::unique_ptr<Decoder> (*make)(const Model& m, Backend& be);
};

// The family that runs config c (registry.cpp).
const DecoderFamily& decoder_family(const ModelConfig& c);

// The families (one file each).
extern const DecoderFamily kQwen2Family;     // Qwen2 / LLaMA / Qwen2.5-VL / Qwen2.5-Omni decoders
extern const DecoderFamily kQwen3MoeFamily;  // Qwen3-Omni's thinker: q/k norm, sparse MoE layers

// The shared attention tensors of the Qwen2-style layer (q, k, v, o with the config's biases).
void bind_attention(const ModelConfig& c, const TensorLookup& t, const std::string& L, LayerTensors* out);

// A [rows, cols] matrix inside a weight the backend holds, from element offset `off` on: an
// expert's slice of a fused expert tensor. Backends keep a weight's elements contiguous, row-major,
// in Weight::dtype (backend.h), so an offset view is a weight of its own.
Weight weight_slice(const Weight& w, int64_t off, int64_t rows, int64_t cols);

}  // namespace outro
