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
  decoder_ = decoder_family(c).make(model, be);
  const size_t kv = size_t(max_ctx_) * size_t(c.kv_heads) * size_t(c.head_dim);
  for (int l = 0; l < c.layers; ++l) cache_.push_back({be.alloc(kv), be.alloc(kv)});
  names_.resize(size_t(c.layers));
  for (int l = 0; l < c.layers; ++l)
    for (int h = 0; h < int(Hook::kCount); ++h) names_[size_t(l)].push_back(hook_name(l, Hook(h)));
}

Session::~Session() {
  for (auto& l : cache_) {
    be_.release(l.k);
    be_.release(l.v);
  }
  for (Buf* b : {&x_, &xn_, &q_, &k_, &v_, &z_, &attn_out_, &mlp_out_, &logits_buf_, &deepstack_buf_}) be_.release(*b);
}

void Session::set_deepstack(std::vector<std::vector<float>> features, std::vector<int32_t> rows) {
  const ModelConfig& c = model_.config();
  if (int(features.size()) > c.layers)
    fail("DeepStack: ", features.size(), " feature sets for a decoder of ", c.layers, " layers (", model_.dir(), ")");
  for (size_t k = 0; k < features.size(); ++k)
    if (features[k].size() != rows.size() * size_t(c.hidden))
      fail("DeepStack: feature set ", k, " holds ", features[k].size(), " values, expected ", rows.size(), " rows of ",
           c.hidden);
  deepstack_ = std::move(features);
  deepstack_rows_ = std::move(rows);
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
  for (Buf* b : {&x_, &xn_, &q_, &k_, &v_, &z_, &attn_out_, &mlp_out_, &logits_buf_}) be_.release(*b);
  const size_t N = size_t(n), D = size_t(c.hidden), hd = size_t(c.head_dim);
  x_ = be_.alloc(N * D);
  xn_ = be_.alloc(N * D);
  q_ = be_.alloc(N * size_t(c.heads) * hd);
  k_ = be_.alloc(N * size_t(c.kv_heads) * hd);
  v_ = be_.alloc(N * size_t(c.kv_heads) * hd);
  z_ = be_.alloc(N * size_t(c.heads) * hd);
  attn_out_ = be_.alloc(N * D);
  mlp_out_ = be_.alloc(N * D);
  decoder_->reserve(n);
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

// One forward call's state that every layer's points read.
struct Session::Step {
  ForwardCtx& ctx;
  const int32_t* pos;   // [n] 1-D positions
  const int32_t* spos;  // [sections, n] multimodal positions, or null
  const std::vector<int>& sections;
  std::vector<float> pattern;  // host staging for hook_pattern
};

// The points of layer l that the family's forward calls: interventions first, then observers,
// in the order the single forward of earlier versions applied them (so plain runs stay bit-identical).
class Session::Points final : public LayerRun {
 public:
  Points(Session& s, Step& st, int l, int n) : s_(s), st_(st), l_(l), n_(n), c_(s.model_.config()) {}
  int layer() const override { return l_; }

  void resid_pre(Buf x) override {
    for (auto* iv : s_.interventions_) iv->resid_pre(st_.ctx, l_, x);
    emit(Hook::ResidPre, x, {n_, c_.hidden});
  }
  void rotate(Buf x, int heads) override {
    if (st_.spos)
      s_.be_.rope_sections(x, n_, heads, c_.head_dim, st_.spos, st_.sections.data(), int(st_.sections.size()),
                           s_.model_.inv_freq.data());
    else
      s_.be_.rope(x, n_, heads, c_.head_dim, st_.pos, s_.model_.inv_freq.data());
  }
  void qkv(Buf q, Buf k, Buf v) override {
    for (auto* iv : s_.interventions_) iv->qkv(st_.ctx, l_, q, k, v);
    emit(Hook::Q, q, {n_, c_.heads, c_.head_dim});
    emit(Hook::K, k, {n_, c_.kv_heads, c_.head_dim});
    emit(Hook::V, v, {n_, c_.kv_heads, c_.head_dim});
  }
  void attend(Buf z, const Buf& q, const Buf& k, const Buf& v) override {
    Cache& cache = s_.cache_[size_t(l_)];
    const int H = c_.heads, KV = c_.kv_heads, hd = c_.head_dim, past = s_.pos_;
    const size_t row = size_t(KV) * size_t(hd);
    s_.be_.copy(cache.k, size_t(past) * row, k, 0, size_t(n_) * row);
    s_.be_.copy(cache.v, size_t(past) * row, v, 0, size_t(n_) * row);
    for (auto* iv : s_.interventions_) iv->cached_keys(st_.ctx, l_, cache.k);
    AttnParams p;
    p.n_heads = H;
    p.n_kv = KV;
    p.head_dim = hd;
    p.scale = 1.f / std::sqrt(float(hd));
    p.n_new = n_;
    p.past = past;
    for (auto* iv : s_.interventions_) iv->attention_policy(st_.ctx, l_, p);
    const bool pat = wants(Hook::Pattern);
    if (pat) {
      st_.pattern.assign(size_t(H) * size_t(n_) * size_t(past + n_), 0.f);
      p.pattern_out = st_.pattern.data();
    }
    s_.be_.attention(z, q, cache.k, cache.v, p);
    if (pat) emit_host(Hook::Pattern, st_.pattern.data(), {H, n_, past + n_});
    for (auto* iv : s_.interventions_) iv->z(st_.ctx, l_, z);
    emit(Hook::Z, z, {n_, H, hd});
  }
  bool wants(Hook h) const override {
    return !s_.observers_.empty() && s_.wants(s_.names_[size_t(l_)][size_t(h)]);
  }
  void emit(Hook h, const Buf& b, std::initializer_list<int64_t> shape) override {
    if (wants(h)) s_.emit(s_.names_[size_t(l_)][size_t(h)], l_, b, std::vector<int64_t>(shape));
  }
  void emit_host(Hook h, const float* data, std::initializer_list<int64_t> shape) override {
    if (!wants(h)) return;
    const std::string& name = s_.names_[size_t(l_)][size_t(h)];
    HookEvent e{name, l_, data, std::vector<int64_t>(shape), s_.pos_};
    for (Observer* o : s_.observers_)
      if (o->wants(name)) o->on(e);
  }

 private:
  Session& s_;
  Step& st_;
  const int l_, n_;
  const ModelConfig& c_;
};

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
  const int D = c.hidden, hd = c.head_dim;
  const bool observing = !observers_.empty();
  ForwardCtx ctx{&be_, &c, pos_, n, prompt_len_, ids};
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

  // Rotary positions of this call: 1-D, or the multimodal sections. Interleaved M-RoPE (Qwen3-Omni)
  // is written as one section per run of pairs that share an axis, so rope_sections applies it.
  std::vector<int> sections;
  std::vector<int32_t> spos;
  if (mpos) {
    if (c.mrope_interleaved) {
      const int half = hd / 2;
      auto axis = [&](int p) {
        if (p % 3 == 1 && p < 3 * c.mrope_section[1]) return 1;
        if (p % 3 == 2 && p < 3 * c.mrope_section[2]) return 2;
        return 0;
      };
      for (int p = 0; p < half;) {
        int q = p;
        while (q < half && axis(q) == axis(p)) ++q;
        sections.push_back(q - p);
        spos.insert(spos.end(), mpos + size_t(axis(p)) * n, mpos + size_t(axis(p) + 1) * n);
        p = q;
      }
    } else {
      sections = c.mrope_section;
      spos.assign(mpos, mpos + size_t(3) * n);
    }
  }
  Step step{ctx, pos.data(), mpos ? spos.data() : nullptr, sections, {}};
  Scratch sc{n, xn_, q_, k_, v_, z_, attn_out_, mlp_out_};
  std::vector<std::vector<float>> deepstack = std::move(deepstack_);
  std::vector<int32_t> ds_rows = std::move(deepstack_rows_);
  deepstack_.clear();
  deepstack_rows_.clear();
  for (int32_t r : ds_rows)
    if (r < 0 || r >= n) fail("DeepStack: row ", r, " is outside the ", n, " rows of this call");
  const std::vector<float> ones(ds_rows.size(), 1.f);
  for (int l = 0; l < c.layers; ++l) {
    Points pts(*this, step, l, n);
    decoder_->layer(l, n, x_, sc, pts);
    if (size_t(l) < deepstack.size() && !ds_rows.empty()) {
      const size_t vals = ds_rows.size() * size_t(D);
      if (deepstack_buf_.n < vals) {
        be_.release(deepstack_buf_);
        deepstack_buf_ = be_.alloc(vals);
      }
      be_.upload(deepstack_buf_, 0, deepstack[size_t(l)].data(), vals);
      be_.scatter_add_rows(x_, deepstack_buf_, D, ds_rows.data(), ones.data(), int(ds_rows.size()));
    }
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
