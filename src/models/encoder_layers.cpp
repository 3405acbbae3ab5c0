#include "models/encoder_layers.h"

#include <cmath>

namespace outro {

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
