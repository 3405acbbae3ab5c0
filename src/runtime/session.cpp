#include "runtime/session.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace outro {

Session::Session(const Model& model, Backend& be, int max_ctx) : model_(model), be_(be) {
  const ModelConfig& c = model.config();
  max_ctx_ = max_ctx > 0 ? max_ctx : c.max_positions;
  embed_ = be.weight(*model.embed);
  final_norm_ = be.weight(*model.final_norm);
  lm_head_ = model.lm_head == model.embed ? embed_ : be.weight(*model.lm_head);
  auto opt = [&](const TensorInfo* t) { return t ? be.weight(*t) : Weight{}; };
  const size_t kv = size_t(max_ctx_) * size_t(c.kv_heads) * size_t(c.head_dim);
  for (const auto& t : model.layers) {
    LayerW w;
    w.attn_norm = be.weight(*t.attn_norm);
    w.q = be.weight(*t.q);
    w.k = be.weight(*t.k);
    w.v = be.weight(*t.v);
    w.o = be.weight(*t.o);
    w.qb = opt(t.q_bias);
    w.kb = opt(t.k_bias);
    w.vb = opt(t.v_bias);
    w.ob = opt(t.o_bias);
    w.mlp_norm = be.weight(*t.mlp_norm);
    w.gate = be.weight(*t.gate);
    w.up = be.weight(*t.up);
    w.down = be.weight(*t.down);
    w.gb = opt(t.gate_bias);
    w.ub = opt(t.up_bias);
    w.db = opt(t.down_bias);
    w.kcache = be.alloc(kv);
    w.vcache = be.alloc(kv);
    layers_.push_back(w);
  }
  names_.resize(size_t(c.layers));
  for (int l = 0; l < c.layers; ++l)
    for (int h = 0; h < int(Hook::kCount); ++h) names_[size_t(l)].push_back(hook_name(l, Hook(h)));
}

Session::~Session() {
  for (auto& l : layers_) {
    be_.release(l.kcache);
    be_.release(l.vcache);
  }
  for (Buf* b : {&x_, &xn_, &q_, &k_, &v_, &z_, &attn_out_, &gate_, &up_, &mlp_out_, &logits_buf_}) be_.release(*b);
}

void Session::reset() {
  pos_ = 0;
  prompt_len_ = 0;
  rope_delta_ = 0;
  modality_.clear();
}

void Session::rewind(int pos) {
  if (pos < 0 || pos > pos_) fail("rewind: position ", pos, " is outside [0, ", pos_, "]");
  pos_ = pos;
  if (modality_.size() > size_t(pos_)) modality_.resize(size_t(pos_));
  if (pos_ == 0) {
    prompt_len_ = 0;
    rope_delta_ = 0;
  }
}

void Session::ensure_scratch(int n) {
  if (n <= scratch_n_) return;
  const ModelConfig& c = model_.config();
  for (Buf* b : {&x_, &xn_, &q_, &k_, &v_, &z_, &attn_out_, &gate_, &up_, &mlp_out_, &logits_buf_}) be_.release(*b);
  const size_t N = size_t(n), D = size_t(c.hidden), hd = size_t(c.head_dim);
  x_ = be_.alloc(N * D);
  xn_ = be_.alloc(N * D);
  q_ = be_.alloc(N * size_t(c.heads) * hd);
  k_ = be_.alloc(N * size_t(c.kv_heads) * hd);
  v_ = be_.alloc(N * size_t(c.kv_heads) * hd);
  z_ = be_.alloc(N * size_t(c.heads) * hd);
  attn_out_ = be_.alloc(N * D);
  gate_ = be_.alloc(N * size_t(c.intermediate));
  up_ = be_.alloc(N * size_t(c.intermediate));
  mlp_out_ = be_.alloc(N * D);
  logits_buf_ = be_.alloc(N * size_t(c.vocab));
  scratch_n_ = n;
}

bool Session::wants(const std::string& name) const {
  for (const Observer* o : observers_)
    if (o->wants(name)) return true;
  return false;
}

void Session::emit(const std::string& name, int layer, const Buf& b, std::vector<int64_t> shape) {
  size_t count = 1;
  for (auto d : shape) count *= size_t(d);
  host_.resize(count);
  be_.download(b, 0, host_.data(), count);
  HookEvent e{name, layer, host_.data(), std::move(shape), pos_};
  for (Observer* o : observers_)
    if (o->wants(name)) o->on(e);
}

void Session::forward(const int32_t* ids, int n, std::vector<float>* logits, bool all_rows) {
  run(ids, n, nullptr, nullptr, nullptr, logits, all_rows);
}

int32_t Session::forward_argmax(const int32_t* ids, int n) {
  int32_t best = -1;
  run(ids, n, nullptr, nullptr, nullptr, nullptr, false, &best);
  return best;
}

void Session::forward_embeds(const int32_t* ids, int n, const float* embeds, const uint8_t* modality,
                             const int32_t* positions, std::vector<float>* logits, bool all_rows) {
  const ModelConfig& c = model_.config();
  if (positions && c.mrope_section.empty())
    fail(model_.dir(), ": 3-D rotary positions given, but config.json has no rope_scaling.mrope_section");
  if (positions && !c.mrope_section.empty()) {
    int sum = 0;
    for (int s : c.mrope_section) sum += s;
    if (sum != c.head_dim / 2 || c.mrope_section.size() != 3)
      fail(c.source, ": mrope_section sums to ", sum, " over ", c.mrope_section.size(),
           " sections, expected 3 sections summing to head_dim / 2 = ", c.head_dim / 2);
  }
  run(ids, n, embeds, modality, positions, logits, all_rows);
}

void Session::run(const int32_t* ids, int n, const float* embeds, const uint8_t* modality, const int32_t* mpos,
                  std::vector<float>* logits, bool all_rows, int32_t* argmax) {
  const ModelConfig& c = model_.config();
  if (n <= 0) fail("forward: expected at least one token, found ", n);
  for (int i = 0; i < n; ++i)
    if (ids[i] < 0 || ids[i] >= c.vocab)
      fail("token id ", ids[i], " at position ", pos_ + i, " is outside the vocabulary [0, ", c.vocab, ") of ",
           model_.dir());
  if (pos_ + n > max_ctx_)
    fail("sequence of ", pos_ + n, " tokens is longer than the context of ", max_ctx_, " tokens (",
         model_.dir(), ")");
  if (pos_ == 0) prompt_len_ = n;
  ensure_scratch(n);
  const int D = c.hidden, H = c.heads, KV = c.kv_heads, hd = c.head_dim, I = c.intermediate;
  const bool observing = !observers_.empty();
  const bool intervening = !interventions_.empty();
  ForwardCtx ctx{&be_, &c, pos_, n, prompt_len_, ids};
  if (intervening)
    for (auto* iv : interventions_) iv->begin(ctx);

  std::vector<int32_t> pos(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) pos[size_t(i)] = pos_ + i + rope_delta_;

  be_.embed(x_, embed_, ids, n);
  if (embeds && modality)
    for (int i = 0; i < n;) {  // splice the encoders' rows in, one run of media tokens at a time
      if (!modality[i]) {
        ++i;
        continue;
      }
      int j = i;
      while (j < n && modality[j]) ++j;
      be_.upload(x_, size_t(i) * D, embeds + size_t(i) * D, size_t(j - i) * D);
      i = j;
    }
  if (observing && wants(kHookEmbed)) emit(kHookEmbed, -1, x_, {n, D});

  std::vector<float> pattern;
  for (int l = 0; l < c.layers; ++l) {
    LayerW& w = layers_[size_t(l)];
    const auto& nm = names_[size_t(l)];
    auto hook = [&](Hook h) -> const std::string* {
      if (!observing) return nullptr;
      const std::string& s = nm[size_t(h)];
      return wants(s) ? &s : nullptr;
    };
    if (intervening)
      for (auto* iv : interventions_) iv->resid_pre(ctx, l, x_);
    if (auto* s = hook(Hook::ResidPre)) emit(*s, l, x_, {n, D});

    be_.rmsnorm(xn_, x_, n, w.attn_norm, c.rms_eps);
    be_.matmul(q_, xn_, n, w.q, w.qb ? &w.qb : nullptr);
    be_.matmul(k_, xn_, n, w.k, w.kb ? &w.kb : nullptr);
    be_.matmul(v_, xn_, n, w.v, w.vb ? &w.vb : nullptr);
    if (mpos) {
      be_.rope_sections(q_, n, H, hd, mpos, c.mrope_section.data(), 3, model_.inv_freq.data());
      be_.rope_sections(k_, n, KV, hd, mpos, c.mrope_section.data(), 3, model_.inv_freq.data());
    } else {
      be_.rope(q_, n, H, hd, pos.data(), model_.inv_freq.data());
      be_.rope(k_, n, KV, hd, pos.data(), model_.inv_freq.data());
    }
    if (intervening)
      for (auto* iv : interventions_) iv->qkv(ctx, l, q_, k_, v_);
    if (auto* s = hook(Hook::Q)) emit(*s, l, q_, {n, H, hd});
    if (auto* s = hook(Hook::K)) emit(*s, l, k_, {n, KV, hd});
    if (auto* s = hook(Hook::V)) emit(*s, l, v_, {n, KV, hd});

    const size_t row = size_t(KV) * size_t(hd);
    be_.copy(w.kcache, size_t(pos_) * row, k_, 0, size_t(n) * row);
    be_.copy(w.vcache, size_t(pos_) * row, v_, 0, size_t(n) * row);
    if (intervening)
      for (auto* iv : interventions_) iv->cached_keys(ctx, l, w.kcache);

    AttnParams p;
    p.n_heads = H;
    p.n_kv = KV;
    p.head_dim = hd;
    p.scale = 1.f / std::sqrt(float(hd));
    p.n_new = n;
    p.past = pos_;
    if (intervening)
      for (auto* iv : interventions_) iv->attention_policy(ctx, l, p);
    const std::string* pat = hook(Hook::Pattern);
    if (pat) {
      pattern.assign(size_t(H) * size_t(n) * size_t(pos_ + n), 0.f);
      p.pattern_out = pattern.data();
    }
    be_.attention(z_, q_, w.kcache, w.vcache, p);
    if (pat) {
      HookEvent e{*pat, l, pattern.data(), {H, n, pos_ + n}, pos_};
      for (Observer* o : observers_)
        if (o->wants(*pat)) o->on(e);
    }
    if (intervening)
      for (auto* iv : interventions_) iv->z(ctx, l, z_);
    if (auto* s = hook(Hook::Z)) emit(*s, l, z_, {n, H, hd});

    be_.matmul(attn_out_, z_, n, w.o, w.ob ? &w.ob : nullptr);
    if (auto* s = hook(Hook::AttnOut)) emit(*s, l, attn_out_, {n, D});
    be_.add(x_, attn_out_, size_t(n) * D);
    if (auto* s = hook(Hook::ResidMid)) emit(*s, l, x_, {n, D});

    be_.rmsnorm(xn_, x_, n, w.mlp_norm, c.rms_eps);
    be_.matmul(gate_, xn_, n, w.gate, w.gb ? &w.gb : nullptr);
    be_.matmul(up_, xn_, n, w.up, w.ub ? &w.ub : nullptr);
    be_.swiglu(gate_, gate_, up_, size_t(n) * I);
    be_.matmul(mlp_out_, gate_, n, w.down, w.db ? &w.db : nullptr);
    if (auto* s = hook(Hook::MlpOut)) emit(*s, l, mlp_out_, {n, D});
    be_.add(x_, mlp_out_, size_t(n) * D);
    if (auto* s = hook(Hook::ResidPost)) emit(*s, l, x_, {n, D});
  }
  be_.rmsnorm(xn_, x_, n, final_norm_, c.rms_eps);
  if (observing && wants(kHookLnFinal)) emit(kHookLnFinal, -1, xn_, {n, D});
  if (logits || argmax) {
    // All rows' logits, or the last row's (moved to row 0); greedy decoding (argmax) keeps them on
    // the backend and takes only the index of the last row's largest.
    const int rows = logits && all_rows ? n : 1;
    if (rows == 1 && n > 1) be_.copy(xn_, 0, xn_, size_t(n - 1) * D, size_t(D));
    be_.matmul(logits_buf_, xn_, rows, lm_head_, nullptr);
    if (logits) {
      logits->resize(size_t(rows) * c.vocab);
      be_.download(logits_buf_, 0, logits->data(), logits->size());
    }
    if (argmax) *argmax = be_.argmax(logits_buf_, size_t(rows - 1) * c.vocab, c.vocab);
  }
  if (mpos) {  // later tokens continue after the largest position (the reference's rope delta)
    int mx = -1;
    for (int i = 0; i < 3 * n; ++i) mx = std::max(mx, mpos[i]);
    rope_delta_ = mx + 1 - (pos_ + n);
  }
  for (int i = 0; i < n; ++i) modality_.push_back(modality ? modality[i] : 0);
  pos_ += n;
}

}  // namespace outro
