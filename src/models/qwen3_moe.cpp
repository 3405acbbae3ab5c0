// The Qwen3-MoE decoder layer of Qwen3-Omni's thinker: like Qwen2's, with every q and k head
// RMS-normalised over head_dim before the rotary and no projection biases, and with a sparse
// mixture of experts in place of the MLP on the layers the config makes sparse: a linear router,
// softmax over the experts in float32, the top k chosen (weights renormalised to sum to one when
// norm_topk_prob), each chosen expert a SwiGLU MLP, their outputs summed with the router's weights.
// No shared expert. Routing and experts are Backend ops (moe_route, moe_experts): only the chosen
// experts' weights are read, a decode step streams k of them.
#include "core/error.h"
#include "io/config.h"
#include "io/safetensors.h"
#include "models/decoder.h"
#include "models/model.h"

namespace outro {

namespace {

std::string layers_rule(const ModelConfig& c) {
  std::string only;
  for (int l : c.mlp_only_layers) only += (only.empty() ? "" : ", ") + std::to_string(l);
  return "num_experts " + std::to_string(c.experts) + ", decoder_sparse_step " + std::to_string(c.sparse_step) +
         ", mlp_only_layers [" + only + "]";
}

void bind(const ModelConfig& c, const TensorLookup& t, const std::string& P, int l, LayerTensors* out) {
  const std::string L = P + "layers." + std::to_string(l) + ".";
  const int64_t D = c.hidden, hd = c.head_dim;
  const std::string& where = t.store.where();
  bind_attention(c, t, L, out);
  out->q_norm = t.need(L + "self_attn.q_norm.weight", {hd});
  out->k_norm = t.need(L + "self_attn.k_norm.weight", {hd});

  const bool sparse = c.moe_layer(l);
  const std::string router = L + "mlp.gate.weight", dense = L + "mlp.gate_proj.weight";
  if (sparse && !t.has(router)) {
    if (t.has(dense))
      fail(where, ": layer ", l, " is a mixture-of-experts layer by config.json (", layers_rule(c),
           "), but the checkpoint holds a dense MLP there (", dense, ") and no router ", router);
    fail(where, ": missing tensor ", router, " (the router of mixture-of-experts layer ", l, ", expected shape [",
         c.experts, ", ", D, "]: num_experts, hidden_size)");
  }
  if (!sparse && t.has(router))
    fail(where, ": layer ", l, " is dense by config.json (", layers_rule(c), "), but the checkpoint holds a router ",
         router, " there");
  if (!sparse) {
    const int64_t I = c.intermediate;
    out->gate = t.need(dense, {I, D});
    out->up = t.need(L + "mlp.up_proj.weight", {I, D});
    out->down = t.need(L + "mlp.down_proj.weight", {D, I});
    return;
  }

  const int64_t E = c.experts, I = c.moe_intermediate;
  auto shaped = [&](const std::string& name, const std::vector<int64_t>& shape, const std::string& what) {
    const TensorInfo* ti = t.store.find(name);
    if (!ti)
      fail(where, ": missing tensor ", name, " (", what, ", expected shape ", shape_to_string(shape), ")");
    if (ti->shape != shape)
      fail(ti->file, ": tensor ", name, ": expected shape ", shape_to_string(shape), " (", what, "), found ",
           ti->shape_str());
    return t.need(name, shape);
  };
  out->router = shaped(router, {E, D}, "the router: num_experts, hidden_size");
  const std::string X = L + "mlp.experts.";
  if (t.has(X + "gate_up_proj") || t.has(X + "down_proj")) {  // transformers 5's fused tensors
    out->experts_gate_up =
        shaped(X + "gate_up_proj", {E, 2 * I, D}, "num_experts, 2 * moe_intermediate_size, hidden_size");
    out->experts_down = shaped(X + "down_proj", {E, D, I}, "num_experts, hidden_size, moe_intermediate_size");
    return;
  }
  for (int64_t e = 0; e < E; ++e) {
    const std::string x = X + std::to_string(e) + ".";
    const std::string what = "expert " + std::to_string(e) + " of num_experts " + std::to_string(E);
    out->expert_gate.push_back(shaped(x + "gate_proj.weight", {I, D}, what + ": moe_intermediate_size, hidden_size"));
    out->expert_up.push_back(shaped(x + "up_proj.weight", {I, D}, what + ": moe_intermediate_size, hidden_size"));
    out->expert_down.push_back(shaped(x + "down_proj.weight", {D, I}, what + ": hidden_size, moe_intermediate_size"));
  }
  if (t.has(X + std::to_string(E) + ".gate_proj.weight"))
    fail(where, ": tensor ", X, E, ".gate_proj.weight exists, but config.json says num_experts is ", E,
         " (experts 0 .. ", E - 1, ")");
}

struct LayerW {
  Weight attn_norm, q, k, v, o, qb, kb, vb, ob, q_norm, k_norm, mlp_norm;
  Weight gate, up, down;  // dense layers
  Weight router;          // sparse layers: [E, D]
  ExpertSet experts;      // sparse layers: per expert [I, D], [I, D], [D, I]
  bool sparse = false;
};

const Weight* opt(const Weight& w) { return w ? &w : nullptr; }

class Qwen3MoeDecoder final : public Decoder {
 public:
  Qwen3MoeDecoder(const Model& m, Backend& be) : c_(m.config()), be_(be) {
    auto w = [&](const TensorInfo* t) { return t ? be.weight(*t) : Weight{}; };
    const int64_t D = c_.hidden, I = c_.moe_intermediate;
    for (const LayerTensors& t : m.layers) {
      LayerW lw;
      lw.attn_norm = w(t.attn_norm), lw.q = w(t.q), lw.k = w(t.k), lw.v = w(t.v), lw.o = w(t.o);
      lw.qb = w(t.q_bias), lw.kb = w(t.k_bias), lw.vb = w(t.v_bias), lw.ob = w(t.o_bias);
      lw.q_norm = w(t.q_norm), lw.k_norm = w(t.k_norm), lw.mlp_norm = w(t.mlp_norm);
      lw.sparse = t.router != nullptr;
      if (!lw.sparse) {
        lw.gate = w(t.gate), lw.up = w(t.up), lw.down = w(t.down);
      } else {
        lw.router = w(t.router);
        if (t.experts_gate_up) {
          // One upload of each fused tensor; the experts are views into it, gate rows before up rows.
          const Weight gu = w(t.experts_gate_up), dn = w(t.experts_down);
          for (int64_t e = 0; e < c_.experts; ++e) {
            lw.experts.gate.push_back(weight_slice(gu, e * 2 * I * D, I, D));
            lw.experts.up.push_back(weight_slice(gu, e * 2 * I * D + I * D, I, D));
            lw.experts.down.push_back(weight_slice(dn, e * D * I, D, I));
          }
        } else {
          for (int64_t e = 0; e < c_.experts; ++e) {
            lw.experts.gate.push_back(w(t.expert_gate[size_t(e)]));
            lw.experts.up.push_back(w(t.expert_up[size_t(e)]));
            lw.experts.down.push_back(w(t.expert_down[size_t(e)]));
          }
        }
      }
      layers_.push_back(std::move(lw));
    }
  }
  ~Qwen3MoeDecoder() override {
    for (Buf* b : {&gate_, &up_, &router_, &route_}) be_.release(*b);
  }

  void reserve(int n) override {
    if (n <= rows_) return;
    for (Buf* b : {&gate_, &up_, &router_, &route_}) be_.release(*b);
    const size_t N = size_t(n), I = size_t(c_.intermediate);
    gate_ = be_.alloc(N * I);
    up_ = be_.alloc(N * I);
    if (c_.experts > 0) {
      router_ = be_.alloc(N * size_t(c_.experts));
      route_ = be_.alloc(N * 2 * size_t(c_.experts_per_tok));
    }
    rows_ = n;
  }

  void layer(int l, int n, Buf x, Scratch& s, LayerRun& run) override {
    LayerW& w = layers_[size_t(l)];
    const int D = c_.hidden, H = c_.heads, KV = c_.kv_heads;
    run.resid_pre(x);

    be_.rmsnorm(s.xn, x, n, w.attn_norm, c_.rms_eps);
    be_.matmul(s.q, s.xn, n, w.q, opt(w.qb));
    be_.matmul(s.k, s.xn, n, w.k, opt(w.kb));
    be_.matmul(s.v, s.xn, n, w.v, opt(w.vb));
    // Every head's q and k normalised on its own (rows of head_dim), then rotated.
    be_.rmsnorm(s.q, s.q, n * H, w.q_norm, c_.rms_eps);
    be_.rmsnorm(s.k, s.k, n * KV, w.k_norm, c_.rms_eps);
    run.rotate(s.q, H);
    run.rotate(s.k, KV);
    run.qkv(s.q, s.k, s.v);
    run.attend(s.z, s.q, s.k, s.v);
    be_.matmul(s.attn_out, s.z, n, w.o, opt(w.ob));
    run.emit(Hook::AttnOut, s.attn_out, {n, D});
    be_.add(x, s.attn_out, size_t(n) * D);
    run.emit(Hook::ResidMid, x, {n, D});

    be_.rmsnorm(s.xn, x, n, w.mlp_norm, c_.rms_eps);
    if (w.sparse) {
      experts(w, n, s, run);
    } else {
      be_.matmul(gate_, s.xn, n, w.gate, nullptr);
      be_.matmul(up_, s.xn, n, w.up, nullptr);
      be_.swiglu(gate_, gate_, up_, size_t(n) * c_.intermediate);
      be_.matmul(s.mlp_out, gate_, n, w.down, nullptr);
    }
    run.emit(Hook::MlpOut, s.mlp_out, {n, D});
    be_.add(x, s.mlp_out, size_t(n) * D);
    run.emit(Hook::ResidPost, x, {n, D});
  }

 private:
  // The sparse block: the router's logits, the k experts of each row and their weights (on the
  // backend: the host sees the choice only when a hook asks for it), then the chosen experts.
  void experts(LayerW& w, int n, Scratch& s, LayerRun& run) {
    const int E = c_.experts, K = c_.experts_per_tok;
    be_.matmul(router_, s.xn, n, w.router, nullptr);
    run.emit(Hook::Router, router_, {n, E});
    be_.moe_route(route_, router_, n, E, K, c_.norm_topk);
    if (run.wants(Hook::Experts)) {
      std::vector<float> r(size_t(n) * 2 * K), f(size_t(n) * K);
      be_.download(route_, 0, r.data(), r.size());
      for (int i = 0; i < n; ++i)
        for (int j = 0; j < K; ++j) f[size_t(i) * K + j] = r[size_t(i) * 2 * K + j];
      run.emit_host(Hook::Experts, f.data(), {n, K});
    }
    be_.moe_experts(s.mlp_out, s.xn, n, route_, K, w.experts);
  }

  const ModelConfig& c_;
  Backend& be_;
  std::vector<LayerW> layers_;
  int rows_ = 0;
  Buf gate_, up_, router_, route_;  // route_: [n, 2k], Backend::moe_route's layout
};

std::unique_ptr<Decoder> make(const Model& m, Backend& be) { return std::make_unique<Qwen3MoeDecoder>(m, be); }

}  // namespace

const DecoderFamily kQwen3MoeFamily{"qwen3_moe", bind, make};

}  // namespace outro
