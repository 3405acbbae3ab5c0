#include "outro/outro.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <sstream>

#include "core/error.h"
#include "io/config.h"
#ifdef OUTRO_HAVE_CUDA
#include "kernels/cuda/cuda_api.h"
#endif

namespace outro {

const std::vector<std::string>& outro_preset_names() {
  static const std::vector<std::string> names = {"baseline", "outro", "outro-align-only", "outro-sinkout-only"};
  return names;
}

OutroParams outro_preset(const std::string& name) {
  OutroParams p;
  p.strategy = name;
  if (name == "baseline") {
    p.sinkout = false;
    p.align = false;
  } else if (name == "outro") {
  } else if (name == "outro-align-only") {
    p.sinkout = false;
  } else if (name == "outro-sinkout-only") {
    p.align = false;
  } else {
    std::string list;
    for (const auto& n : outro_preset_names()) list += (list.empty() ? "" : ", ") + n;
    fail("unknown strategy '", name, "' (expected one of: ", list, ")");
  }
  return p;
}

bool outro_active(const OutroParams& p) { return p.sinkout || (p.align && p.lambda != 0.f); }

void validate_outro(const OutroParams& p, const ModelConfig& c, const std::string& where) {
  const int L = c.layers;
  // l_out matters only when an edit is on (the baseline preset runs on any depth).
  if (outro_active(p) && (p.l_out < 0 || p.l_out >= L))
    fail(where, ": l_out = ", p.l_out, " is not a layer of the model (expected 0 .. ", L - 1, ", the model has ", L,
         " layers; ", c.source, ")");
  if (!p.auto_sinks) {
    if (p.sinks.empty()) fail(where, ": sinks: expected \"auto\" or a non-empty list of prompt positions, found []");
    for (int s : p.sinks)
      if (s < 0) fail(where, ": sinks: expected positions >= 0, found ", s);
  }
  if (!(p.tau_abs >= 0) || !std::isfinite(p.tau_abs)) fail(where, ": tau_abs: expected a number >= 0, found ", p.tau_abs);
  if (!(p.tau_rel >= 0) || !std::isfinite(p.tau_rel)) fail(where, ": tau_rel: expected a number >= 0, found ", p.tau_rel);
  if (p.sinkout_end < 0) fail(where, ": sinkout_end: expected >= 0 (0: the prompt length), found ", p.sinkout_end);
  if (!(p.lambda >= 0.f && p.lambda <= 1.f)) fail(where, ": lambda: expected a number in [0, 1], found ", p.lambda);
  if (p.align_begin >= 0 || p.align_end >= 0) {
    const int b = p.first_align_layer(), e = p.last_align_layer(L);
    if (b < 0 || b >= L || e < 0 || e >= L || b > e)
      fail(where, ": align_layers = [", b, ", ", e, "] is not a range of layers of the model (expected 0 <= start <= end <= ",
           L - 1, "; ", c.source, ")");
  }
  if (p.align && p.auto_sinks && p.first_align_layer() < p.l_out && p.first_align_layer() <= p.last_align_layer(L))
    fail(where, ": align_layers start at layer ", p.first_align_layer(), ", before l_out = ", p.l_out,
         " where the automatic sink set is chosen (start the range at l_out or later, or give explicit sinks)");
}

namespace {

// The k-th smallest (0-based) of |h[i]| over n values, exactly, in two counting passes: the bit
// pattern of a non-negative float orders like its value, so select on the top 16 bits, then on the
// low 16 bits among the values that share the top half.
float kth_abs(const float* h, size_t n, size_t k) {
  auto bits = [](float v) {
    uint32_t b;
    std::memcpy(&b, &v, 4);
    return b & 0x7fffffffu;
  };
  std::vector<uint32_t> hist(65536, 0);
  for (size_t i = 0; i < n; ++i) ++hist[bits(h[i]) >> 16];
  uint32_t hi = 0;
  for (size_t acc = 0;; ++hi) {
    if (acc + hist[hi] > k) {
      k -= acc;
      break;
    }
    acc += hist[hi];
  }
  std::fill(hist.begin(), hist.end(), 0u);
  for (size_t i = 0; i < n; ++i) {
    const uint32_t b = bits(h[i]);
    if ((b >> 16) == hi) ++hist[b & 0xffffu];
  }
  uint32_t lo = 0;
  for (size_t acc = 0;; ++lo) {
    if (acc + hist[lo] > k) break;
    acc += hist[lo];
  }
  const uint32_t b = (hi << 16) | lo;
  float v;
  std::memcpy(&v, &b, 4);
  return v;
}

// The rows whose max|h| passes both thresholds.
void phi_llm_threshold(PhiLLM& r, int n, double tau_abs, double tau_rel) {
  for (int i = 0; i < n; ++i) {
    const double m = r.row_max[size_t(i)];
    if (m >= tau_abs && m >= tau_rel * double(r.median)) r.sinks.push_back(i);
  }
}

}  // namespace

PhiLLM phi_llm(const float* h, int n, int dim, double tau_abs, double tau_rel) {
  PhiLLM r;
  const size_t N = size_t(n) * size_t(dim);
  if (N == 0) return r;
  r.row_max.assign(size_t(n), 0.f);
  for (int i = 0; i < n; ++i) {
    float m = 0.f;
    const float* row = h + size_t(i) * dim;
    for (int c = 0; c < dim; ++c) m = std::max(m, std::fabs(row[c]));
    r.row_max[size_t(i)] = m;
  }
  r.median = kth_abs(h, N, (N - 1) / 2);
  phi_llm_threshold(r, n, tau_abs, tau_rel);
  return r;
}

OutRo::OutRo(OutroParams p) : p_(std::move(p)) {
  edits_hidden_ = p_.align && p_.lambda != 0.f && p_.target == AlignTarget::Hidden;
  edits_value_ = p_.align && p_.lambda != 0.f && p_.target == AlignTarget::Value;
  if (!p_.auto_sinks) {
    std::sort(p_.sinks.begin(), p_.sinks.end());
    p_.sinks.erase(std::unique(p_.sinks.begin(), p_.sinks.end()), p_.sinks.end());
  }
}

OutRo::~OutRo() { release_buffers(); }

void OutRo::release_buffers() {
  if (be_)
    for (auto& b : targets_)
      if (b.ptr) be_->release(b);
  targets_.clear();
  target_len_.clear();
  be_ = nullptr;
}

Buf& OutRo::target(ForwardCtx& ctx, int layer, size_t len) {
  if (be_ != ctx.be) {
    release_buffers();
    be_ = ctx.be;
  }
  if (targets_.size() < size_t(ctx.cfg->layers)) {
    targets_.resize(size_t(ctx.cfg->layers));
    target_len_.resize(size_t(ctx.cfg->layers), 0);
  }
  Buf& b = targets_[size_t(layer)];
  if (target_len_[size_t(layer)] != len) {
    if (b.ptr) be_->release(b);
    b = be_->alloc(len);
    target_len_[size_t(layer)] = len;
  }
  return b;
}

const Buf& OutRo::kept_target(ForwardCtx& ctx, int layer) const {
  if (be_ != ctx.be || size_t(layer) >= targets_.size() || !targets_[size_t(layer)].ptr)
    fail("outro: no sink target of layer ", layer, " is kept from the prompt on this backend (the buffers were "
         "released or the session changed backend after the prefill); run the prompt again");
  return targets_[size_t(layer)];
}

void OutRo::set_sinks(std::vector<int> s, const char* rule, int n) {
  sinks_ = std::move(s);
  rule_ = rule;
  chosen_ = true;
  batch_rows_ = sinks_;  // the prefill starts at position 0
  skip_.assign(size_t(n), 0);
  for (int r : batch_rows_) skip_[size_t(r)] = 1;
}

void OutRo::begin(ForwardCtx& ctx) {
  prefill_ = ctx.past == 0;
  if (prefill_) {
    const ModelConfig& c = *ctx.cfg;
    validate_outro(p_, c, "outro");
    chosen_ = false;
    sinks_.clear();
    rule_.clear();
    phi_median_ = phi_max_ = 0.f;
    decode_steps_ = 0;
    aligned_rows_ = 0;
    prompt_len_ = ctx.n;
    sinkout_end_ = p_.sinkout_end > 0 ? p_.sinkout_end : ctx.prompt_len;
    align_lo_ = std::max(0, p_.first_align_layer());
    align_hi_ = std::min(c.layers - 1, p_.last_align_layer(c.layers));
    layers_edited_.clear();
    if (!p_.auto_sinks) {
      for (int s : p_.sinks)
        if (s >= ctx.n)
          fail("outro: sink position ", s, " is outside the prompt of ", ctx.n, " tokens (sinks must be prompt positions)");
      set_sinks(p_.sinks, "explicit", ctx.n);
    }
    return;
  }
  if (!chosen_)
    fail("outro: a decode step (position ", ctx.past, ") came before the prompt was run with OutRo attached; the sink "
         "set is chosen during the prefill (reset the session and run the prompt again)");
  ++decode_steps_;
}

void OutRo::choose_sinks_phi(ForwardCtx& ctx, const Buf& h) {
  const int D = ctx.cfg->hidden;
  PhiLLM r;
  bool on_device = false;
#ifdef OUTRO_HAVE_CUDA
  // On a GPU the row maxima and the median are computed there (the same values); only they come back.
  if (cuda_api::phi_llm_stats(*ctx.be, h, ctx.n, D, &r.row_max, &r.median)) {
    phi_llm_threshold(r, ctx.n, p_.tau_abs, p_.tau_rel);
    on_device = true;
  }
#endif
  if (!on_device) {
    host_.resize(size_t(ctx.n) * size_t(D));
    ctx.be->download(h, 0, host_.data(), host_.size());
    r = phi_llm(host_.data(), ctx.n, D, p_.tau_abs, p_.tau_rel);
  }
  phi_median_ = r.median;
  phi_max_ = r.row_max.empty() ? 0.f : *std::max_element(r.row_max.begin(), r.row_max.end());
  if (r.sinks.empty())
    set_sinks({0}, "fallback", ctx.n);
  else
    set_sinks(std::move(r.sinks), "phi_llm", ctx.n);
}

void OutRo::resid_pre(ForwardCtx& ctx, int layer, Buf h) {
  if (prefill_ && !chosen_ && layer == p_.l_out) choose_sinks_phi(ctx, h);
  if (!edits_hidden_ || !in_align(layer)) return;
  const int D = ctx.cfg->hidden;
  if (prefill_) {
    Buf& t = target(ctx, layer, size_t(D));
    ctx.be->mean_rows(t, h, D, batch_rows_.data(), int(batch_rows_.size()));
    ctx.be->align_rows(h, ctx.n, 1, D, t, skip_.data(), p_.lambda);
    layers_edited_.push_back(layer);
    aligned_rows_ = ctx.n - int(batch_rows_.size());
  } else {
    ctx.be->align_rows(h, ctx.n, 1, D, kept_target(ctx, layer), nullptr, p_.lambda);
  }
}

void OutRo::qkv(ForwardCtx& ctx, int layer, Buf q, Buf k, Buf v) {
  if (!edits_value_ || !in_align(layer)) return;
  const int KV = ctx.cfg->kv_heads, hd = ctx.cfg->head_dim;
  if (prefill_) {
    Buf& t = target(ctx, layer, size_t(KV) * size_t(hd));
    ctx.be->mean_rows(t, v, KV * hd, batch_rows_.data(), int(batch_rows_.size()));
    ctx.be->align_rows(v, ctx.n, KV, hd, t, skip_.data(), p_.lambda);
    layers_edited_.push_back(layer);
    aligned_rows_ = ctx.n - int(batch_rows_.size());
  } else {
    ctx.be->align_rows(v, ctx.n, KV, hd, kept_target(ctx, layer), nullptr, p_.lambda);
  }
}

void OutRo::attention_policy(ForwardCtx& ctx, int layer, AttnParams& p) {
  // Only the prefill has sink rows among its queries; a decode step's mask is the plain causal one.
  if (!p_.sinkout || layer != p_.l_out || !prefill_ || sinks_.empty()) return;
  p.sinkout_rows = sinks_.data();
  p.n_sinkout = int(sinks_.size());
  p.sinkout_end = sinkout_end_;
}

namespace {
std::string fmt(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.4g", v);
  return b;
}
std::string list(const std::vector<int>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}
}  // namespace

std::string OutRo::explain() const {
  std::ostringstream os;
  os << "outro (strategy " << p_.strategy << "):";
  // Sinks.
  os << "\n  sinks: ";
  if (!chosen_) {
    os << (p_.auto_sinks ? "not chosen yet (Φ_LLM at the input of layer " + std::to_string(p_.l_out) + " during the prefill)"
                         : list(p_.sinks) + " (explicit; no prompt run yet)");
  } else if (rule_ == "explicit") {
    os << "positions " << list(sinks_) << " (explicit in the config)";
  } else if (rule_ == "phi_llm") {
    os << "positions " << list(sinks_) << " chosen by Φ_LLM at the input of layer " << p_.l_out << " (max_c|h_i[c]| >= tau_abs "
       << fmt(p_.tau_abs) << " and >= tau_rel " << fmt(p_.tau_rel) << " x median|h| " << fmt(phi_median_)
       << "; largest max|h| " << fmt(phi_max_) << ")";
  } else {
    os << "position [0], the first token (fallback: Φ_LLM at the input of layer " << p_.l_out
       << " found no token with max|h| >= max(tau_abs " << fmt(p_.tau_abs) << ", tau_rel " << fmt(p_.tau_rel)
       << " x median " << fmt(phi_median_) << "); largest max|h| was " << fmt(phi_max_) << ")";
  }
  // Sink-out.
  os << "\n  sink-out: ";
  if (!p_.sinkout)
    os << "off";
  else
    os << "at layer " << p_.l_out << ", the sink rows see keys [0, "
       << (chosen_ ? std::to_string(sinkout_end_) : p_.sinkout_end > 0 ? std::to_string(p_.sinkout_end) : "prompt length")
       << ") instead of the causal prefix (prefill only; decode steps reuse the cached sink keys and values)";
  // Alignment.
  os << "\n  alignment: ";
  if (!p_.align) {
    os << "off";
  } else {
    const char* tg = p_.target == AlignTarget::Hidden ? "hidden (residual stream at hook_resid_pre)"
                                                      : "value (value vectors per KV head)";
    os << "target " << tg << ", lambda " << fmt(p_.lambda) << ", layers ";
    const int lo = chosen_ ? align_lo_ : p_.first_align_layer();
    const int hi = chosen_ ? align_hi_ : p_.align_end;
    if (hi >= 0 && lo > hi)
      os << "none (the range " << lo << ".." << hi << " is empty)";
    else if (hi < 0)
      os << lo << "..L-1";
    else
      os << lo << ".." << hi;
    if (p_.lambda == 0.f) os << " (lambda 0: no edit)";
    if (chosen_ && !layers_edited_.empty())
      os << "; edited layers " << list(layers_edited_) << ", " << aligned_rows_ << " non-sink prompt rows each, and "
         << decode_steps_ << " decode step(s) of 1 row, toward the mean sink target kept from the prefill";
  }
  return os.str();
}

}  // namespace outro
