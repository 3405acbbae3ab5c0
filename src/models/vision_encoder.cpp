#include "models/vision_encoder.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"

namespace outro {

VisionEncoder::VisionEncoder(const VisionConfig& c, const WeightStore& s, Backend& be) : c_(c), be_(be) {
  for (const char* p : {"visual.", "model.visual.", "thinker.visual."})
    if (s.has(std::string(p) + "patch_embed.proj.weight")) {
      prefix_ = p;
      break;
    }
  if (prefix_.empty()) fail(s.where(), ": missing tensor visual.patch_embed.proj.weight (the vision tower; also looked under model.visual., thinker.visual.)");
  const std::string& P = prefix_;
  const int64_t D = c.hidden, I = c.intermediate, M2 = int64_t(c.hidden) * c.merge * c.merge;
  auto get = [&](const std::string& n, std::vector<int64_t> shape) { return be.weight(s.get(P + n, shape)); };
  patch_ = get("patch_embed.proj.weight", {D, c.in_channels, c.temporal, c.patch, c.patch});
  for (int l = 0; l < c.depth; ++l) {
    const std::string B = "blocks." + std::to_string(l) + ".";
    Block b;
    b.norm1 = get(B + "norm1.weight", {D});
    b.norm2 = get(B + "norm2.weight", {D});
    if (s.has(P + B + "attn.qkv.weight")) {  // Qwen2.5-VL: fused [3D, D]
      const TensorInfo& w = s.get(P + B + "attn.qkv.weight", {3 * D, D});
      const TensorInfo& bias = s.get(P + B + "attn.qkv.bias", {3 * D});
      Weight* dst[3] = {&b.q, &b.k, &b.v};
      Weight* dstb[3] = {&b.qb, &b.kb, &b.vb};
      for (int k = 0; k < 3; ++k) {
        TensorInfo t = w;
        t.name = w.name + "[" + "qkv"[k] + "]";
        t.shape = {D, D};
        t.nbytes = w.nbytes / 3;
        t.data = w.data + size_t(k) * t.nbytes;
        slices_.push_back(t);
        *dst[k] = be.weight(slices_.back());
        TensorInfo tb = bias;
        tb.name = bias.name + "[" + "qkv"[k] + "]";
        tb.shape = {D};
        tb.nbytes = bias.nbytes / 3;
        tb.data = bias.data + size_t(k) * tb.nbytes;
        slices_.push_back(tb);
        *dstb[k] = be.weight(slices_.back());
      }
    } else {  // Qwen2.5-Omni: q, k, v
      b.q = get(B + "attn.q.weight", {D, D});
      b.k = get(B + "attn.k.weight", {D, D});
      b.v = get(B + "attn.v.weight", {D, D});
      b.qb = get(B + "attn.q.bias", {D});
      b.kb = get(B + "attn.k.bias", {D});
      b.vb = get(B + "attn.v.bias", {D});
    }
    b.proj = get(B + "attn.proj.weight", {D, D});
    b.projb = get(B + "attn.proj.bias", {D});
    b.gate = get(B + "mlp.gate_proj.weight", {I, D});
    b.gateb = get(B + "mlp.gate_proj.bias", {I});
    b.up = get(B + "mlp.up_proj.weight", {I, D});
    b.upb = get(B + "mlp.up_proj.bias", {I});
    b.down = get(B + "mlp.down_proj.weight", {D, I});
    b.downb = get(B + "mlp.down_proj.bias", {D});
    blocks_.push_back(b);
  }
  ln_q_ = get("merger.ln_q.weight", {D});
  mlp0_ = get("merger.mlp.0.weight", {M2, M2});
  mlp0b_ = get("merger.mlp.0.bias", {M2});
  mlp2_ = get("merger.mlp.2.weight", {c.out_hidden, M2});
  mlp2b_ = get("merger.mlp.2.bias", {c.out_hidden});
  // Rotary of dim head_dim / 2: inv[j] = theta^(-2j / dim), j < dim / 2, used for h then for w.
  const int hd = c.hidden / c.heads, dim = hd / 2, nf = dim / 2;
  inv_freq_.resize(size_t(2 * nf));
  for (int j = 0; j < nf; ++j) {
    const float v = 1.f / std::pow(c.rope_theta, float(2 * j) / float(dim));
    inv_freq_[size_t(j)] = inv_freq_[size_t(j + nf)] = v;
  }
}

void VisionEncoder::window_index(int gt, int gh, int gw, int merge, int ws, std::vector<int32_t>* index,
                                 std::vector<int>* cu) {
  const int lh = gh / merge, lw = gw / merge;
  const int pad_h = ws - lh % ws, pad_w = ws - lw % ws;  // as the reference: a full extra window when divisible
  const int nwh = (lh + pad_h) / ws, nww = (lw + pad_w) / ws;
  const int unit = merge * merge;
  index->clear();
  cu->assign(1, 0);
  for (int t = 0; t < gt; ++t)
    for (int a = 0; a < nwh; ++a)
      for (int b = 0; b < nww; ++b) {
        int count = 0;
        for (int y = a * ws; y < (a + 1) * ws; ++y)
          for (int x = b * ws; x < (b + 1) * ws; ++x)
            if (y < lh && x < lw) {
              index->push_back((t * lh + y) * lw + x);
              ++count;
            }
        if (count) cu->push_back(cu->back() + count * unit);  // empty windows repeat a bound: dropped
      }
}

std::vector<float> VisionEncoder::encode(const float* pixels, int gt, int gh, int gw) {
  const VisionConfig& c = c_;
  const int m = c.merge, unit = m * m;
  if (gt <= 0 || gh <= 0 || gw <= 0 || gh % m || gw % m)
    fail("vision encoder: grid ", gt, "x", gh, "x", gw, " is not a positive multiple of the merge size ", m);
  const int N = gt * gh * gw, D = c.hidden, H = c.heads, hd = D / H, I = c.intermediate;
  const int64_t cols = patch_.cols;
  ScopedBufs S(be_);
  Buf px = S.get(size_t(N) * cols);
  be_.upload(px, 0, pixels, size_t(N) * cols);
  Buf x0 = S.get(size_t(N) * D), x = S.get(size_t(N) * D), xn = S.get(size_t(N) * D);
  Buf q = S.get(size_t(N) * D), k = S.get(size_t(N) * D), v = S.get(size_t(N) * D), z = S.get(size_t(N) * D);
  Buf o = S.get(size_t(N) * D), g = S.get(size_t(N) * I), u = S.get(size_t(N) * I);
  be_.matmul(x0, px, N, patch_, nullptr);

  // 2-D positions of each patch in the processor's order (t, h-block, w-block, h-in, w-in).
  std::vector<int32_t> hpos(static_cast<size_t>(N)), wpos(static_cast<size_t>(N));
  {
    size_t r = 0;
    for (int t = 0; t < gt; ++t)
      for (int hb = 0; hb < gh / m; ++hb)
        for (int wb = 0; wb < gw / m; ++wb)
          for (int a = 0; a < m; ++a)
            for (int b = 0; b < m; ++b, ++r) {
              hpos[r] = hb * m + a;
              wpos[r] = wb * m + b;
            }
  }
  // Window order of the merged units; rows are moved to it, and back after the merger.
  std::vector<int32_t> widx;
  std::vector<int> cu_win;
  window_index(gt, gh, gw, m, std::max(1, c.window / m / c.patch), &widx, &cu_win);
  std::vector<int32_t> rows(static_cast<size_t>(N));
  std::vector<int32_t> pos(size_t(2) * N);
  for (int uidx = 0; uidx < int(widx.size()); ++uidx)
    for (int j = 0; j < unit; ++j) {
      const int src = widx[size_t(uidx)] * unit + j, dst = uidx * unit + j;
      rows[size_t(dst)] = src;
      pos[size_t(dst)] = hpos[size_t(src)];
      pos[size_t(N + dst)] = wpos[size_t(src)];
    }
  be_.gather_rows(x, x0, D, rows.data(), N);
  std::vector<int> cu_full(size_t(gt) + 1);
  for (int t = 0; t <= gt; ++t) cu_full[size_t(t)] = t * gh * gw;
  const int sections[2] = {hd / 4, hd / 4};

  for (int l = 0; l < c.depth; ++l) {
    Block& b = blocks_[size_t(l)];
    const bool full = std::find(c.fullatt_blocks.begin(), c.fullatt_blocks.end(), l) != c.fullatt_blocks.end();
    be_.rmsnorm(xn, x, N, b.norm1, 1e-6f);
    be_.matmul(q, xn, N, b.q, &b.qb);
    be_.matmul(k, xn, N, b.k, &b.kb);
    be_.matmul(v, xn, N, b.v, &b.vb);
    be_.rope_sections(q, N, H, hd, pos.data(), sections, 2, inv_freq_.data());
    be_.rope_sections(k, N, H, hd, pos.data(), sections, 2, inv_freq_.data());
    AttnParams p;
    p.n_heads = H;
    p.n_kv = H;
    p.head_dim = hd;
    p.scale = 1.f / std::sqrt(float(hd));
    p.n_new = N;
    p.causal = false;
    const std::vector<int>& seg = full ? cu_full : cu_win;
    p.segments = seg.data();
    p.n_segments = int(seg.size()) - 1;
    be_.attention(z, q, k, v, p);
    be_.matmul(o, z, N, b.proj, &b.projb);
    be_.add(x, o, size_t(N) * D);
    be_.rmsnorm(xn, x, N, b.norm2, 1e-6f);
    be_.matmul(g, xn, N, b.gate, &b.gateb);
    be_.matmul(u, xn, N, b.up, &b.upb);
    be_.swiglu(g, g, u, size_t(N) * I);
    be_.matmul(o, g, N, b.down, &b.downb);
    be_.add(x, o, size_t(N) * D);
  }
  // Merger: RMSNorm per patch, 2x2 patches side by side (rows are already grouped by unit).
  const int U = N / unit, M2 = D * unit, O = c.out_hidden;
  be_.rmsnorm(xn, x, N, ln_q_, 1e-6f);
  Buf h1 = S.get(size_t(U) * M2), h2 = S.get(size_t(U) * M2), out = S.get(size_t(U) * O), fin = S.get(size_t(U) * O);
  be_.matmul(h1, xn, U, mlp0_, &mlp0b_);
  be_.gelu(h2, h1, size_t(U) * M2, false);
  be_.matmul(out, h2, U, mlp2_, &mlp2b_);
  std::vector<int32_t> back(static_cast<size_t>(U));
  for (int i = 0; i < U; ++i) back[size_t(widx[size_t(i)])] = i;
  be_.gather_rows(fin, out, O, back.data(), U);
  std::vector<float> host(size_t(U) * O);
  be_.download(fin, 0, host.data(), host.size());
  return host;
}

}  // namespace outro
