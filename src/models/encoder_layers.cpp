#include "models/encoder_layers.h"

#include <cmath>

namespace outro {

EncoderLayer bind_encoder_layer(Backend& be, const WeightStore& s, const std::string& prefix, int l, int64_t D,
                                int64_t F, bool k_bias) {
  const std::string L = prefix + "layers." + std::to_string(l) + ".";
  auto get = [&](const std::string& n, std::vector<int64_t> shape) { return be.weight(s.get(L + n, shape)); };
  EncoderLayer t;
  t.ln1 = get("self_attn_layer_norm.weight", {D});
  t.ln1b = get("self_attn_layer_norm.bias", {D});
  t.q = get("self_attn.q_proj.weight", {D, D});
  t.qb = get("self_attn.q_proj.bias", {D});
  t.k = get("self_attn.k_proj.weight", {D, D});
  if (k_bias) t.kb = get("self_attn.k_proj.bias", {D});
  t.v = get("self_attn.v_proj.weight", {D, D});
  t.vb = get("self_attn.v_proj.bias", {D});
  t.o = get("self_attn.out_proj.weight", {D, D});
  t.ob = get("self_attn.out_proj.bias", {D});
  t.ln2 = get("final_layer_norm.weight", {D});
  t.ln2b = get("final_layer_norm.bias", {D});
  t.fc1 = get("fc1.weight", {F, D});
  t.fc1b = get("fc1.bias", {F});
  t.fc2 = get("fc2.weight", {D, F});
  t.fc2b = get("fc2.bias", {D});
  return t;
}

void run_encoder_layers(Backend& be, const std::vector<EncoderLayer>& layers, Buf x, int n, int D, int F, int heads,
                        const std::vector<int>& segments, bool tanh_gelu, ScopedBufs& S) {
  const size_t nd = size_t(n) * D;
  Buf xn = S.get(nd), q = S.get(nd), k = S.get(nd), v = S.get(nd), z = S.get(nd), o = S.get(nd);
  Buf f1 = S.get(size_t(n) * F);
  const int hd = D / heads;
  for (const auto& L : layers) {
    be.layernorm(xn, x, n, L.ln1, &L.ln1b, 1e-5f);
    be.matmul(q, xn, n, L.q, &L.qb);
    be.matmul(k, xn, n, L.k, &L.kb);
    be.matmul(v, xn, n, L.v, &L.vb);
    AttnParams p;
    p.n_heads = heads;
    p.n_kv = heads;
    p.head_dim = hd;
    p.scale = 1.f / std::sqrt(float(hd));
    p.n_new = n;
    p.causal = false;
    p.segments = segments.data();
    p.n_segments = int(segments.size()) - 1;
    be.attention(z, q, k, v, p);
    be.matmul(o, z, n, L.o, &L.ob);
    be.add(x, o, nd);
    be.layernorm(xn, x, n, L.ln2, &L.ln2b, 1e-5f);
    be.matmul(f1, xn, n, L.fc1, &L.fc1b);
    be.gelu(f1, f1, size_t(n) * F, tanh_gelu);
    be.matmul(o, f1, n, L.fc2, &L.fc2b);
    be.add(x, o, nd);
  }
}

}  // namespace outro
