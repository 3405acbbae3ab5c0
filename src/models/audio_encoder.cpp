#include "models/audio_encoder.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "models/encoder_layers.h"

namespace outro {

AudioEncoder::AudioEncoder(const AudioConfig& c, const WeightStore& s, Backend& be) : c_(c), be_(be) {
  for (const char* p : {"audio_tower.", "thinker.audio_tower.", "model.audio_tower."})
    if (s.has(std::string(p) + "conv1.weight")) {
      prefix_ = p;
      break;
    }
  if (prefix_.empty()) fail(s.where(), ": missing tensor audio_tower.conv1.weight (the audio tower; also looked under thinker.audio_tower.)");
  const int64_t D = c.d_model, F = c.ffn;
  auto get = [&](const std::string& n, std::vector<int64_t> shape) { return be.weight(s.get(prefix_ + n, shape)); };
  conv1_ = get("conv1.weight", {D, c.mel_bins, 3});
  conv1b_ = get("conv1.bias", {D});
  conv2_ = get("conv2.weight", {D, D, 3});
  conv2b_ = get("conv2.bias", {D});
  for (int l = 0; l < c.layers; ++l) layers_.push_back(bind_encoder_layer(be, s, prefix_, l, D, F, false));
  ln_post_ = get("ln_post.weight", {D});
  ln_postb_ = get("ln_post.bias", {D});
  proj_ = get("proj.weight", {c.out_dim, D});
  projb_ = get("proj.bias", {c.out_dim});
  // Sinusoids: [sin(t * inv), cos(t * inv)], inv_j = exp(-j * ln(10000) / (D/2 - 1)).
  const int half = int(D / 2);
  const float inc = float(std::log(10000.0) / double(half - 1 > 0 ? half - 1 : 1));
  pos_.resize(size_t(c.max_positions) * D);
  for (int t = 0; t < c.max_positions; ++t)
    for (int j = 0; j < half; ++j) {
      const float inv = std::exp(-inc * float(j));
      const float a = float(t) * inv;
      pos_[size_t(t) * D + j] = std::sin(a);
      pos_[size_t(t) * D + half + j] = std::cos(a);
    }
}

std::vector<float> AudioEncoder::encode(const float* mel, int nf) {
  const AudioConfig& c = c_;
  if (nf <= 0) fail("audio encoder: zero-length audio (no mel frames)");
  const int D = c.d_model, H = c.heads, F = c.ffn, C = c.mel_bins;
  // Chunks of 2 * n_window frames, each convolved and attended on its own.
  const int chunk = 2 * c.n_window;
  std::vector<int> seg{0}, seg2{0};
  for (int b = 0; b < nf; b += chunk) {
    const int len = std::min(chunk, nf - b);
    seg.push_back(b + len);
    seg2.push_back(seg2.back() + (len - 1) / 2 + 1);
  }
  const int n2 = seg2.back();
  for (size_t s = 1; s < seg2.size(); ++s)
    if (seg2[s] - seg2[s - 1] > c.max_positions)
      fail("audio encoder: chunk of ", seg2[s] - seg2[s - 1], " positions exceeds max_source_positions ", c.max_positions);
  const bool tanh_gelu = c.act == "gelu_new" || c.act == "gelu_pytorch_tanh";
  ScopedBufs bufs(be_);
  auto get = [&](size_t n) { return bufs.get(n); };
  std::vector<float> tm(size_t(nf) * C);  // time-major [nf, C]
  for (int m = 0; m < C; ++m)
    for (int f = 0; f < nf; ++f) tm[size_t(f) * C + m] = mel[size_t(m) * nf + f];
  Buf in = get(tm.size());
  be_.upload(in, 0, tm.data(), tm.size());
  Buf cols1 = get(size_t(nf) * C * 3), h1 = get(size_t(nf) * D);
  be_.im2col1d(cols1, in, C, 3, 1, 1, seg.data(), int(seg.size()) - 1);
  be_.matmul(h1, cols1, nf, conv1_, &conv1b_);
  be_.gelu(h1, h1, size_t(nf) * D, tanh_gelu);
  Buf cols2 = get(size_t(n2) * D * 3), x = get(size_t(n2) * D);
  be_.im2col1d(cols2, h1, D, 3, 2, 1, seg.data(), int(seg.size()) - 1);
  be_.matmul(x, cols2, n2, conv2_, &conv2b_);
  be_.gelu(x, x, size_t(n2) * D, tanh_gelu);
  {
    std::vector<float> pe(size_t(n2) * D);
    for (size_t s = 1; s < seg2.size(); ++s)
      for (int i = seg2[s - 1]; i < seg2[s]; ++i)
        std::copy_n(pos_.begin() + long(i - seg2[s - 1]) * D, D, pe.begin() + long(i) * D);
    Buf pb = get(pe.size());
    be_.upload(pb, 0, pe.data(), pe.size());
    be_.add(x, pb, pe.size());
  }
  run_encoder_layers(be_, layers_, x, n2, D, F, H, seg2, tanh_gelu, bufs);
  const int n3 = n2 / 2;
  if (n3 <= 0) fail("audio encoder: audio too short (", nf, " mel frames give no token)");
  Buf pooled = get(size_t(n3) * D), pn = get(size_t(n3) * D), out = get(size_t(n3) * c.out_dim);
  be_.avgpool_rows(pooled, x, n2, D, 2);
  be_.layernorm(pn, pooled, n3, ln_post_, &ln_postb_, 1e-5f);
  be_.matmul(out, pn, n3, proj_, &projb_);
  std::vector<float> host(size_t(n3) * c.out_dim);
  be_.download(out, 0, host.data(), host.size());
  return host;
}

}  // namespace outro
