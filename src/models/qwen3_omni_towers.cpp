// Qwen3-Omni's vision and audio towers on the Backend's ops (matmul, layernorm, gelu, rotary,
// segmented attention); the convolutions' im2col and the learned-position resampling on the host.
#include "models/qwen3_omni_towers.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "models/encoder_layers.h"

namespace outro {

namespace {
// A row slice [k * rows, (k + 1) * rows) of a fused [3 * rows, ...] tensor, as its own tensor.
TensorInfo slice_rows(const TensorInfo& t, int k, int parts, const std::vector<int64_t>& shape) {
  TensorInfo s = t;
  s.name = t.name + "[" + std::to_string(k) + "/" + std::to_string(parts) + "]";
  s.shape = shape;
  s.nbytes = t.nbytes / size_t(parts);
  s.data = t.data + size_t(k) * s.nbytes;
  return s;
}

int conv_len(int n) { return (n - 1) / 2 + 1; }  // kernel 3, stride 2, padding 1
}  // namespace

int qwen3_audio_tokens(int n, int n_window) {
  const int chunk = 2 * n_window;
  const int rest = n % chunk;
  const int full = conv_len(conv_len(conv_len(chunk)));
  return (rest ? conv_len(conv_len(conv_len(rest))) : 0) + (n / chunk) * full;
}

// ------------------------------------------------------------------ vision

Qwen3VisionEncoder::Qwen3VisionEncoder(const VisionConfig& c, const WeightStore& s, Backend& be) : c_(c), be_(be) {
  for (const char* p : {"visual.", "thinker.visual.", "model.visual."})
    if (s.has(std::string(p) + "patch_embed.proj.weight")) {
      prefix_ = p;
      break;
    }
  if (prefix_.empty())
    fail(s.where(), ": missing tensor visual.patch_embed.proj.weight (Qwen3-Omni's vision tower; also looked under "
                    "thinker.visual.)");
  const std::string& P = prefix_;
  const int64_t D = c.hidden, I = c.intermediate;
  auto get = [&](const std::string& n, std::vector<int64_t> shape) { return be.weight(s.get(P + n, shape)); };
  patch_ = get("patch_embed.proj.weight", {D, c.in_channels, c.temporal, c.patch, c.patch});
  patch_b_ = get("patch_embed.proj.bias", {D});
  side_ = int(std::lround(std::sqrt(double(c.num_position_embeddings))));
  if (side_ * side_ != c.num_position_embeddings)
    fail(s.where(), ": vision_config.num_position_embeddings ", c.num_position_embeddings,
         " is not a square (the learned positions are a side x side grid)");
  pos_table_ = read_f32(s.get(P + "pos_embed.weight", {c.num_position_embeddings, D}));
  for (int l = 0; l < c.depth; ++l) {
    const std::string B = "blocks." + std::to_string(l) + ".";
    Block b;
    b.norm1 = get(B + "norm1.weight", {D});
    b.norm1b = get(B + "norm1.bias", {D});
    b.norm2 = get(B + "norm2.weight", {D});
    b.norm2b = get(B + "norm2.bias", {D});
    const TensorInfo& w = s.get(P + B + "attn.qkv.weight", {3 * D, D});
    const TensorInfo& wb = s.get(P + B + "attn.qkv.bias", {3 * D});
    Weight* dst[3] = {&b.q, &b.k, &b.v};
    Weight* dstb[3] = {&b.qb, &b.kb, &b.vb};
    for (int k = 0; k < 3; ++k) {
      slices_.push_back(slice_rows(w, k, 3, {D, D}));
      *dst[k] = be.weight(slices_.back());
      slices_.push_back(slice_rows(wb, k, 3, {D}));
      *dstb[k] = be.weight(slices_.back());
    }
    b.proj = get(B + "attn.proj.weight", {D, D});
    b.projb = get(B + "attn.proj.bias", {D});
    b.fc1 = get(B + "mlp.linear_fc1.weight", {I, D});
    b.fc1b = get(B + "mlp.linear_fc1.bias", {I});
    b.fc2 = get(B + "mlp.linear_fc2.weight", {D, I});
    b.fc2b = get(B + "mlp.linear_fc2.bias", {D});
    blocks_.push_back(b);
  }
  merger_ = merger(s, "merger.", false);
  for (size_t j = 0; j < c.deepstack.size(); ++j) {
    if (c.deepstack[j] < 0 || c.deepstack[j] >= c.depth)
      fail(s.where(), ": vision_config.deepstack_visual_indexes[", j, "] = ", c.deepstack[j],
           " is not a block of the tower (depth ", c.depth, ")");
    deepstack_.push_back(merger(s, "merger_list." + std::to_string(j) + ".", true));
  }
  if (s.has(P + "merger_list." + std::to_string(c.deepstack.size()) + ".ln_q.weight"))
    fail(s.where(), ": tensor ", P, "merger_list.", c.deepstack.size(), ".ln_q.weight has no entry in ",
         "vision_config.deepstack_visual_indexes (", c.deepstack.size(), " entries)");
  // 2-D rotary over head_dim / 2 frequencies: inv[j] = theta^(-2j / (hd / 2)), j < hd / 4, for h then w.
  const int hd = c.hidden / c.heads, dim = hd / 2, nf = dim / 2;
  inv_freq_.resize(size_t(2 * nf));
  for (int j = 0; j < nf; ++j) {
    const float v = 1.f / std::pow(c.rope_theta, float(2 * j) / float(dim));
    inv_freq_[size_t(j)] = inv_freq_[size_t(j + nf)] = v;
  }
}

Qwen3VisionEncoder::Merger Qwen3VisionEncoder::merger(const WeightStore& s, const std::string& name, bool post) {
  const int64_t D = c_.hidden, M2 = D * c_.merge * c_.merge;
  auto get = [&](const std::string& n, std::vector<int64_t> shape) { return be_.weight(s.get(prefix_ + name + n, shape)); };
  Merger m;
  m.ln = get("ln_q.weight", {post ? M2 : D});
  m.lnb = get("ln_q.bias", {post ? M2 : D});
  m.fc1 = get("mlp.0.weight", {M2, M2});
  m.fc1b = get("mlp.0.bias", {M2});
  m.fc2 = get("mlp.2.weight", {c_.out_hidden, M2});
  m.fc2b = get("mlp.2.bias", {c_.out_hidden});
  return m;
}

void Qwen3VisionEncoder::run_merger(const Merger& m, Buf out, const Buf& x, int N, bool post) {
  const int unit = c_.merge * c_.merge, U = N / unit, M2 = c_.hidden * unit;
  ScopedBufs S(be_);
  Buf xn = S.get(size_t(N) * c_.hidden), h1 = S.get(size_t(U) * M2), h2 = S.get(size_t(U) * M2);
  // Post-shuffle (DeepStack): LayerNorm over the merged unit's 4 patches side by side; else per patch.
  if (post)
    be_.layernorm(xn, x, U, m.ln, &m.lnb, 1e-6f);
  else
    be_.layernorm(xn, x, N, m.ln, &m.lnb, 1e-6f);
  be_.matmul(h1, xn, U, m.fc1, &m.fc1b);
  be_.gelu(h2, h1, size_t(U) * M2, false);
  be_.matmul(out, h2, U, m.fc2, &m.fc2b);
}

Qwen3VisionOut Qwen3VisionEncoder::encode(const float* pixels, int gt, int gh, int gw) {
  const VisionConfig& c = c_;
  const int m = c.merge;
  if (gt <= 0 || gh <= 0 || gw <= 0 || gh % m || gw % m)
    fail("Qwen3-Omni vision encoder: grid ", gt, "x", gh, "x", gw, " (t x h x w patches) is not a positive multiple of "
         "vision_config.spatial_merge_size ", m, " in h and w");
  const int N = gt * gh * gw, D = c.hidden, H = c.heads, hd = D / H, I = c.intermediate;
  const int64_t cols = patch_.cols;
  ScopedBufs S(be_);
  Buf px = S.get(size_t(N) * cols);
  be_.upload(px, 0, pixels, size_t(N) * cols);
  Buf x = S.get(size_t(N) * D), xn = S.get(size_t(N) * D), q = S.get(size_t(N) * D), k = S.get(size_t(N) * D);
  Buf v = S.get(size_t(N) * D), z = S.get(size_t(N) * D), o = S.get(size_t(N) * D), f = S.get(size_t(N) * I);
  be_.matmul(x, px, N, patch_, &patch_b_);

  // Each patch's (row, col) in the processor's order, its learned position resampled from the
  // side x side table (bilinear, corners aligned), and its 2-D rotary positions.
  std::vector<int32_t> pos(size_t(2) * N);
  std::vector<float> pe(size_t(N) * D, 0.f);
  {
    auto taps = [&](int i, int size, int* t0, int* t1, float* w0, float* w1) {
      const float src = float(i) * float(side_ - 1) / float(std::max(size - 1, 1));
      const float fl = std::floor(src);
      *t0 = std::min(int(fl), side_ - 1);
      *t1 = std::min(int(fl) + 1, side_ - 1);
      *w0 = std::max(0.f, 1.f - std::fabs(src - fl));
      *w1 = std::max(0.f, 1.f - std::fabs(src - fl - 1.f));
    };
    size_t r = 0;
    for (int t = 0; t < gt; ++t)
      for (int hb = 0; hb < gh / m; ++hb)
        for (int wb = 0; wb < gw / m; ++wb)
          for (int a = 0; a < m; ++a)
            for (int b = 0; b < m; ++b, ++r) {
              const int row = hb * m + a, col = wb * m + b;
              pos[r] = row;
              pos[size_t(N) + r] = col;
              int h0, h1, w0, w1;
              float hw0, hw1, ww0, ww1;
              taps(row, gh, &h0, &h1, &hw0, &hw1);
              taps(col, gw, &w0, &w1, &ww0, &ww1);
              const int idx[4] = {h0 * side_ + w0, h0 * side_ + w1, h1 * side_ + w0, h1 * side_ + w1};
              const float wt[4] = {hw0 * ww0, hw0 * ww1, hw1 * ww0, hw1 * ww1};
              float* dst = pe.data() + r * size_t(D);
              for (int j = 0; j < 4; ++j) {
                const float* src = pos_table_.data() + size_t(idx[j]) * D;
                for (int d = 0; d < D; ++d) dst[d] += src[d] * wt[j];
              }
            }
  }
  {
    Buf pb = S.get(pe.size());
    be_.upload(pb, 0, pe.data(), pe.size());
    be_.add(x, pb, pe.size());
  }
  std::vector<int> cu(size_t(gt) + 1);  // attention within each temporal slice
  for (int t = 0; t <= gt; ++t) cu[size_t(t)] = t * gh * gw;
  const int sections[2] = {hd / 4, hd / 4};
  const int U = N / (m * m), O = c.out_hidden;
  Qwen3VisionOut out;
  Buf ds = S.get(size_t(U) * O);
  for (int l = 0; l < c.depth; ++l) {
    Block& b = blocks_[size_t(l)];
    be_.layernorm(xn, x, N, b.norm1, &b.norm1b, 1e-6f);
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
    p.segments = cu.data();
    p.n_segments = gt;
    be_.attention(z, q, k, v, p);
    be_.matmul(o, z, N, b.proj, &b.projb);
    be_.add(x, o, size_t(N) * D);
    be_.layernorm(xn, x, N, b.norm2, &b.norm2b, 1e-6f);
    be_.matmul(f, xn, N, b.fc1, &b.fc1b);
    be_.gelu(f, f, size_t(N) * I, c.act == "gelu_pytorch_tanh");
    be_.matmul(o, f, N, b.fc2, &b.fc2b);
    be_.add(x, o, size_t(N) * D);
    for (size_t j = 0; j < c.deepstack.size(); ++j)
      if (c.deepstack[j] == l) {
        run_merger(deepstack_[j], ds, x, N, true);
        if (out.deepstack.size() < c.deepstack.size()) out.deepstack.resize(c.deepstack.size());
        out.deepstack[j].resize(size_t(U) * O);
        be_.download(ds, 0, out.deepstack[j].data(), out.deepstack[j].size());
      }
  }
  out.deepstack.resize(c.deepstack.size());
  Buf fin = S.get(size_t(U) * O);
  run_merger(merger_, fin, x, N, false);
  out.embeds.resize(size_t(U) * O);
  be_.download(fin, 0, out.embeds.data(), out.embeds.size());
  return out;
}

// ------------------------------------------------------------------ audio

Qwen3AudioEncoder::Qwen3AudioEncoder(const AudioConfig& c, const WeightStore& s, Backend& be) : c_(c), be_(be) {
  for (const char* p : {"audio_tower.", "thinker.audio_tower.", "model.audio_tower."})
    if (s.has(std::string(p) + "conv2d1.weight")) {
      prefix_ = p;
      break;
    }
  if (prefix_.empty())
    fail(s.where(), ": missing tensor audio_tower.conv2d1.weight (Qwen3-Omni's audio tower; also looked under "
                    "thinker.audio_tower.)");
  const int64_t D = c.d_model, F = c.ffn, C = c.downsample_hidden;
  auto get = [&](const std::string& n, std::vector<int64_t> shape) { return be.weight(s.get(prefix_ + n, shape)); };
  for (int i = 0; i < 3; ++i) {
    const std::string n = "conv2d" + std::to_string(i + 1);
    conv_[i] = get(n + ".weight", {C, i == 0 ? 1 : C, 3, 3});
    convb_[i] = get(n + ".bias", {C});
  }
  f3_ = conv_len(conv_len(conv_len(c.mel_bins)));
  conv_out_ = get("conv_out.weight", {D, C * f3_});
  for (int l = 0; l < c.layers; ++l) layers_.push_back(bind_encoder_layer(be, s, prefix_, l, D, F, true));
  ln_post_ = get("ln_post.weight", {D});
  ln_postb_ = get("ln_post.bias", {D});
  proj1_ = get("proj1.weight", {D, D});
  proj1b_ = get("proj1.bias", {D});
  proj2_ = get("proj2.weight", {c.out_dim, D});
  proj2b_ = get("proj2.bias", {c.out_dim});
  const int half = int(D / 2);
  const float inc = float(std::log(10000.0) / double(half - 1 > 0 ? half - 1 : 1));
  pos_.resize(size_t(c.max_positions) * D);
  for (int t = 0; t < c.max_positions; ++t)
    for (int j = 0; j < half; ++j) {
      const float a = float(t) * std::exp(-inc * float(j));
      pos_[size_t(t) * D + j] = std::sin(a);
      pos_[size_t(t) * D + half + j] = std::cos(a);
    }
}

std::vector<std::vector<float>> Qwen3AudioEncoder::encode(const std::vector<Clip>& clips) {
  const AudioConfig& c = c_;
  const int D = c.d_model, H = c.heads, F = c.ffn, C = c.downsample_hidden, M = c.mel_bins;
  const int chunk = 2 * c.n_window;
  struct Chunk {
    int clip, start, len;
  };
  std::vector<Chunk> chunks;
  int tmax = 0;
  for (size_t a = 0; a < clips.size(); ++a) {
    if (clips[a].n_frames <= 0) fail("Qwen3-Omni audio encoder: clip ", a, " has no mel frames");
    if (clips[a].n_mels != M)
      fail("Qwen3-Omni audio encoder: clip ", a, " has ", clips[a].n_mels, " mel bins, the tower takes ",
           "audio_config.num_mel_bins = ", M);
    for (int b = 0; b < clips[a].n_frames; b += chunk) {
      chunks.push_back({int(a), b, std::min(chunk, clips[a].n_frames - b)});
      tmax = std::max(tmax, chunks.back().len);
    }
  }
  if (chunks.empty()) return {};
  const int B = int(chunks.size());
  // Every chunk zero-padded to the longest (as transformers pads them into one batch); the
  // convolutions run over the padded length and only the valid outputs are kept.
  int fh = M, tw = tmax;  // current height (mel) and width (time)
  int cin = 1;
  std::vector<float> act(size_t(B) * fh * tw);  // [chunk, channel, f, t]
  for (int b = 0; b < B; ++b) {
    const Chunk& ch = chunks[size_t(b)];
    const Clip& cl = clips[size_t(ch.clip)];
    for (int mm = 0; mm < M; ++mm)
      for (int t = 0; t < ch.len; ++t)
        act[(size_t(b) * fh + mm) * tw + t] = cl.mel[size_t(mm) * cl.n_frames + ch.start + t];
  }
  ScopedBufs S(be_);
  for (int i = 0; i < 3; ++i) {
    const int oh = conv_len(fh), ow = conv_len(tw), K = cin * 9;
    const size_t rows = size_t(B) * oh * ow;
    std::vector<float> cols(rows * K, 0.f);
    for (int b = 0; b < B; ++b)
      for (int y = 0; y < oh; ++y)
        for (int x = 0; x < ow; ++x) {
          float* dst = cols.data() + ((size_t(b) * oh + y) * ow + x) * K;
          for (int ci = 0; ci < cin; ++ci)
            for (int ky = 0; ky < 3; ++ky) {
              const int sy = 2 * y - 1 + ky;
              if (sy < 0 || sy >= fh) continue;
              for (int kx = 0; kx < 3; ++kx) {
                const int sx = 2 * x - 1 + kx;
                if (sx < 0 || sx >= tw) continue;
                dst[ci * 9 + ky * 3 + kx] = act[((size_t(b) * cin + ci) * fh + sy) * tw + sx];
              }
            }
        }
    std::vector<float> y(rows * C);  // [b, oh, ow, C]
    {
      ScopedBufs L(be_);  // this convolution's buffers only
      Buf in = L.get(cols.size()), out = L.get(rows * C);
      be_.upload(in, 0, cols.data(), cols.size());
      be_.matmul(out, in, int(rows), conv_[i], &convb_[i]);
      be_.gelu(out, out, rows * C, false);
      be_.download(out, 0, y.data(), y.size());
    }
    act.assign(size_t(B) * C * oh * ow, 0.f);  // back to [b, C, oh, ow]
    for (int b = 0; b < B; ++b)
      for (int p = 0; p < oh * ow; ++p)
        for (int ci = 0; ci < C; ++ci) act[(size_t(b) * C + ci) * oh * ow + p] = y[(size_t(b) * oh * ow + p) * C + ci];
    fh = oh;
    tw = ow;
    cin = C;
  }
  if (tw > c.max_positions)
    fail("Qwen3-Omni audio encoder: ", tw, " positions per chunk exceed audio_config.max_source_positions ",
         c.max_positions);
  // conv_out over (channel, f) per time step; only each chunk's valid time steps are kept.
  std::vector<float> feat;
  std::vector<int> clip_tokens(clips.size(), 0);
  int max_valid = 0;
  for (int b = 0; b < B; ++b) {
    const int valid = conv_len(conv_len(conv_len(chunks[size_t(b)].len)));
    max_valid = std::max(max_valid, valid);
    clip_tokens[size_t(chunks[size_t(b)].clip)] += valid;
    for (int t = 0; t < valid; ++t)
      for (int ci = 0; ci < C; ++ci)
        for (int y = 0; y < fh; ++y) feat.push_back(act[((size_t(b) * C + ci) * fh + y) * tw + t]);
  }
  const int n = int(feat.size()) / (C * fh);
  Buf fb = S.get(feat.size()), x = S.get(size_t(n) * D);
  be_.upload(fb, 0, feat.data(), feat.size());
  be_.matmul(x, fb, n, conv_out_, nullptr);
  {
    std::vector<float> pe;
    pe.reserve(size_t(n) * D);
    for (int b = 0; b < B; ++b) {
      const int valid = conv_len(conv_len(conv_len(chunks[size_t(b)].len)));
      for (int t = 0; t < valid; ++t) pe.insert(pe.end(), pos_.begin() + long(t) * D, pos_.begin() + long(t + 1) * D);
    }
    Buf pb = S.get(pe.size());
    be_.upload(pb, 0, pe.data(), pe.size());
    be_.add(x, pb, pe.size());
  }
  // Attention windows: each clip's tokens in windows of (longest chunk's tokens) * n_window_infer / chunk.
  const int ratio = c.n_window_infer / chunk;
  const int window = max_valid * ratio;
  if (window <= 0)
    fail("Qwen3-Omni audio encoder: audio_config.n_window_infer ", c.n_window_infer, " is below a chunk of ", chunk,
         " frames (2 * n_window)");
  std::vector<int> seg{0};
  for (int len : clip_tokens) {
    for (int k = 0; k < len / window; ++k) seg.push_back(seg.back() + window);
    if (len % window) seg.push_back(seg.back() + len % window);
  }
  const bool tanh_gelu = c.act == "gelu_new" || c.act == "gelu_pytorch_tanh";
  run_encoder_layers(be_, layers_, x, n, D, F, H, seg, tanh_gelu, S);
  Buf xn = S.get(size_t(n) * D), o = S.get(size_t(n) * D);
  Buf out = S.get(size_t(n) * c.out_dim);
  be_.layernorm(xn, x, n, ln_post_, &ln_postb_, 1e-5f);
  be_.matmul(o, xn, n, proj1_, &proj1b_);
  be_.gelu(o, o, size_t(n) * D, tanh_gelu);
  be_.matmul(out, o, n, proj2_, &proj2b_);
  std::vector<float> host(size_t(n) * c.out_dim);
  be_.download(out, 0, host.data(), host.size());
  std::vector<std::vector<float>> res;
  size_t off = 0;
  for (int len : clip_tokens) {
    res.emplace_back(host.begin() + long(off), host.begin() + long(off + size_t(len) * c.out_dim));
    off += size_t(len) * c.out_dim;
  }
  return res;
}

}  // namespace outro
