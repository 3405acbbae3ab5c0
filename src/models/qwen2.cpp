// The Qwen2-style decoder layer (Qwen2, LLaMA, and the decoders of Qwen2.5-VL and Qwen2.5-Omni's
// thinker): RMSNorm, q/k/v projections (Qwen2: with biases), rotary, attention, o projection,
// residual; RMSNorm, SwiGLU MLP, residual.
#include "core/error.h"
#include "io/config.h"
#include "models/decoder.h"
#include "models/model.h"

namespace outro {

namespace {

void bind(const ModelConfig& c, const TensorLookup& t, const std::string& P, int l, LayerTensors* out) {
  const std::string L = P + "layers." + std::to_string(l) + ".";
  const int64_t D = c.hidden, I = c.intermediate;
  bind_attention(c, t, L, out);
  out->gate = t.need(L + "mlp.gate_proj.weight", {I, D});
  out->up = t.need(L + "mlp.up_proj.weight", {I, D});
  out->down = t.need(L + "mlp.down_proj.weight", {D, I});
  if (c.mlp_bias) {
    out->gate_bias = t.need(L + "mlp.gate_proj.bias", {I});
    out->up_bias = t.need(L + "mlp.up_proj.bias", {I});
    out->down_bias = t.need(L + "mlp.down_proj.bias", {D});
  }
}

struct LayerW {
  Weight attn_norm, q, k, v, o, qb, kb, vb, ob, mlp_norm, gate, up, down, gb, ub, db;
};

const Weight* opt(const Weight& w) { return w ? &w : nullptr; }

class Qwen2Decoder final : public Decoder {
 public:
  Qwen2Decoder(const Model& m, Backend& be) : c_(m.config()), be_(be) {
    auto w = [&](const TensorInfo* t) { return t ? be.weight(*t) : Weight{}; };
    for (const LayerTensors& t : m.layers)
      layers_.push_back({w(t.attn_norm), w(t.q), w(t.k), w(t.v), w(t.o), w(t.q_bias), w(t.k_bias), w(t.v_bias),
                         w(t.o_bias), w(t.mlp_norm), w(t.gate), w(t.up), w(t.down), w(t.gate_bias), w(t.up_bias),
                         w(t.down_bias)});
  }
  ~Qwen2Decoder() override {
    be_.release(gate_);
    be_.release(up_);
  }

  void reserve(int n) override {
    if (n <= rows_) return;
    be_.release(gate_);
    be_.release(up_);
    gate_ = be_.alloc(size_t(n) * size_t(c_.intermediate));
    up_ = be_.alloc(size_t(n) * size_t(c_.intermediate));
    rows_ = n;
  }

  void layer(int l, int n, Buf x, Scratch& s, LayerRun& run) override {
    const LayerW& w = layers_[size_t(l)];
    const int D = c_.hidden, H = c_.heads, KV = c_.kv_heads;
    run.resid_pre(x);

    be_.rmsnorm(s.xn, x, n, w.attn_norm, c_.rms_eps);
    be_.matmul(s.q, s.xn, n, w.q, opt(w.qb));
    be_.matmul(s.k, s.xn, n, w.k, opt(w.kb));
    be_.matmul(s.v, s.xn, n, w.v, opt(w.vb));
    run.rotate(s.q, H);
    run.rotate(s.k, KV);
    run.qkv(s.q, s.k, s.v);
    run.attend(s.z, s.q, s.k, s.v);
    be_.matmul(s.attn_out, s.z, n, w.o, opt(w.ob));
    run.emit(Hook::AttnOut, s.attn_out, {n, D});
    be_.add(x, s.attn_out, size_t(n) * D);
    run.emit(Hook::ResidMid, x, {n, D});

    be_.rmsnorm(s.xn, x, n, w.mlp_norm, c_.rms_eps);
    be_.matmul(gate_, s.xn, n, w.gate, opt(w.gb));
    be_.matmul(up_, s.xn, n, w.up, opt(w.ub));
    be_.swiglu(gate_, gate_, up_, size_t(n) * c_.intermediate);
    be_.matmul(s.mlp_out, gate_, n, w.down, opt(w.db));
    run.emit(Hook::MlpOut, s.mlp_out, {n, D});
    be_.add(x, s.mlp_out, size_t(n) * D);
    run.emit(Hook::ResidPost, x, {n, D});
  }

 private:
  const ModelConfig& c_;
  Backend& be_;
  std::vector<LayerW> layers_;
  int rows_ = 0;
  Buf gate_, up_;
};

std::unique_ptr<Decoder> make(const Model& m, Backend& be) { return std::make_unique<Qwen2Decoder>(m, be); }

}  // namespace

const DecoderFamily kQwen2Family{"qwen2", bind, make};

}  // namespace outro
