// OutRo as the authors' release computes it: presets, validation, Φ_LLM on the host, and the
// intervention that runs detection, enhancement and gated rotation on the backend.
#include "outro/outro.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

#include "core/error.h"
#include "io/config.h"
#include "kernels/host_ops.h"

namespace outro {

const std::vector<std::string>& outro_preset_names() {
  static const std::vector<std::string> names = {"baseline", "outro", "outro-align-only", "outro-sinkout-only"};
  return names;
}

OutroParams outro_preset(const std::string& name) {
  OutroParams p;
  p.strategy = name;
  if (name == "baseline") {
    p.enhance = false;
    p.gate = false;
  } else if (name == "outro") {
  } else if (name == "outro-align-only") {
    p.enhance = false;
  } else if (name == "outro-sinkout-only") {
    p.gate = false;
  } else {
    std::string list;
    for (const auto& n : outro_preset_names()) list += (list.empty() ? "" : ", ") + n;
    fail("unknown strategy '", name, "' (expected one of: ", list, ")");
  }
  return p;
}

bool outro_active(const OutroParams& p) { return p.enhance || p.gate; }

const char* decode_gating_name(DecodeGating d) {
  return d == DecodeGating::Official ? "official" : d == DecodeGating::On ? "on" : "off";
}

void validate_outro(const OutroParams& p, const ModelConfig& c, const std::string& where) {
  const int L = c.layers;
  if (p.start_layer < 0 || p.start_layer >= L)
    fail(where, ": start_layer = ", p.start_layer, " is outside the model's layers (expected 0 .. ", L - 1, "; ",
         c.source, " has ", L, " layers)");
  if (p.end_layer >= 0 && p.end_layer > L)
    fail(where, ": end_layer = ", p.end_layer, " is past the model's ", L, " layers (expected <= ", L,
         ", exclusive; ", c.source, ")");
  if (p.end_layer >= 0 && p.end_layer < p.start_layer)
    fail(where, ": end_layer = ", p.end_layer, " is before start_layer = ", p.start_layer,
         " (the range [start_layer, end_layer) must not run backwards)");
  if (p.apply_interval < 0) fail(where, ": apply_interval: expected an integer >= 1, found ", p.apply_interval);
  if (!(p.temp > 0.f) || !std::isfinite(p.temp)) fail(where, ": temp: expected a number > 0, found ", p.temp);
  if (!std::isfinite(p.gamma)) fail(where, ": gamma: expected a finite number, found ", p.gamma);
  if (!(p.abs_thr >= 0) || !std::isfinite(p.abs_thr)) fail(where, ": abs_thr: expected a number >= 0, found ", p.abs_thr);
  if (!(p.med_mul >= 0) || !std::isfinite(p.med_mul)) fail(where, ": med_mul: expected a number >= 0, found ", p.med_mul);
  for (int s : p.override_sinks)
    if (s < 0) fail(where, ": override_sinks: expected positions >= 0, found ", s);
}

PhiLLM phi_llm(const float* h, int n, int dim, double tau_abs, double tau_rel) {
  PhiLLM r;
  if (size_t(n) * size_t(dim) == 0) return r;
  // The backends' rule, from the same host code the CPU backend runs.
  std::vector<float> rec(size_t(n) + 4);
  r.row_max.assign(size_t(n), 0.f);
  host::phi_detect(rec.data(), h, n, dim, float(tau_abs), float(tau_rel), r.row_max.data());
  for (int i = 0; i < n; ++i)
    if (rec[size_t(i)] != 0.f) r.sinks.push_back(i);
  r.tau = rec[size_t(n)], r.median = rec[size_t(n) + 1];
  return r;
}

OutRo::OutRo(OutroParams p) : p_(std::move(p)) {
  std::sort(p_.override_sinks.begin(), p_.override_sinks.end());
  p_.override_sinks.erase(std::unique(p_.override_sinks.begin(), p_.override_sinks.end()), p_.override_sinks.end());
}

OutRo::~OutRo() { release_buffers(); }

void OutRo::release_buffers() {
  if (be_)
    for (Buf* b : {&rec_, &vbar_, &enh_, &done_, &cum_})
      if (b->ptr) be_->release(*b);
  rec_ = vbar_ = enh_ = done_ = cum_ = Buf{};
  cap_p_ = cap_l_ = cap_v_ = 0;
  be_ = nullptr;
  prefilled_ = false;
  read_ = false;
  host_layers_.clear();
}

Buf OutRo::view(const Buf& b, size_t off, size_t n) const {
  return Buf{static_cast<float*>(b.ptr) + off, n};
}

void OutRo::alloc(ForwardCtx& ctx) {
  const ModelConfig& c = *ctx.cfg;
  const size_t P = size_t(ctx.n), L = size_t(c.layers);
  const size_t vs = size_t(c.kv_heads) * size_t(c.head_dim) + 3;
  if (be_ != ctx.be) {
    release_buffers();
    be_ = ctx.be;
  }
  if (P > cap_p_ || L > cap_l_ || vs > cap_v_) {
    for (Buf* b : {&rec_, &vbar_, &enh_, &done_, &cum_})
      if (b->ptr) be_->release(*b);
    cap_p_ = std::max(P, cap_p_), cap_l_ = std::max(L, cap_l_), cap_v_ = std::max(vs, cap_v_);
    rec_ = be_->alloc(cap_l_ * (cap_p_ + 4));
    vbar_ = be_->alloc(cap_l_ * cap_v_);
    enh_ = be_->alloc(cap_p_);
    done_ = be_->alloc(cap_p_);
    cum_ = be_->alloc(cap_p_);
  }
  vstride_ = vs;
  be_->fill(rec_, 0, L * (P + 4), 0.f);
  be_->fill(vbar_, 0, L * vs, 0.f);
  be_->fill(done_, 0, P, 0.f);
  be_->fill(cum_, 0, P, 0.f);
}

void OutRo::begin(ForwardCtx& ctx) {
  prefill_ = ctx.past == 0;
  read_ = false;
  if (prefill_) {
    const ModelConfig& c = *ctx.cfg;
    validate_outro(p_, c, "outro");
    layers_ = c.layers;
    lo_ = p_.start_layer;
    hi_ = std::min(p_.end(c.layers), c.layers);
    interval_ = p_.interval(c.layers);
    prompt_len_ = ctx.n;
    decode_steps_ = 0;
    for (int s : p_.override_sinks)
      if (s >= ctx.n)
        fail("outro: override_sinks position ", s, " is outside the prompt of ", ctx.n, " tokens");
    alloc(ctx);
    prefilled_ = true;
    return;
  }
  if (!prefilled_ || be_ != ctx.be)
    fail("outro: a decode step (position ", ctx.past, ") came before the prompt was run with OutRo attached on this "
         "backend; OutRo's state is made in the prefill (reset the session and run the prompt again)");
  ++decode_steps_;
}

// Detection, the sets and the sink value all run at the attention_policy hook, on rows kept from
// the earlier hooks: the residual stream is unchanged until the attention output is added, and v is
// final once projected. By then the layer's RMSNorm has taken the previous layer's residual add into
// its kernel and RoPE has taken the KV-cache writes into its own, fusions of the CUDA backend that a
// backend op at resid_pre or qkv would have split (each runs what waits before it starts).
void OutRo::resid_pre(ForwardCtx& ctx, int layer, Buf h) {
  (void)ctx, (void)layer;
  resid_ = h;
}

void OutRo::qkv(ForwardCtx& ctx, int layer, Buf q, Buf k, Buf v) {
  (void)ctx, (void)layer, (void)q, (void)k;
  v_ = v;
}

void OutRo::attention_policy(ForwardCtx& ctx, int layer, AttnParams& p) {
  if (!prefill_ || !detect_layer(layer)) return;
  const int n = ctx.n;
  Buf r = rec(layer);
  if (!p_.override_sinks.empty()) {
    std::vector<float> host(size_t(n) + 4, 0.f);
    for (int s : p_.override_sinks) host[size_t(s)] = 1.f;
    host[size_t(n) + 2] = float(p_.override_sinks.size());
    ctx.be->upload(r, 0, host.data(), host.size());
  } else {
    ctx.be->phi_detect(r, resid_, n, ctx.cfg->hidden, float(p_.abs_thr), float(p_.med_mul));
  }
  ctx.be->outro_sets(enh_, done_, cum_, r, n, enhance_layer(layer), p_.apply_once);
  const size_t dim = size_t(ctx.cfg->kv_heads) * size_t(ctx.cfg->head_dim);
  if (p_.gate) {
    ctx.be->masked_mean(vbar(layer), v_, n, int(dim), r);
    // The gated rotation of this layer's outputs, done by the attention call that writes them
    // (the z point, before o_proj): a backend can apply it while the rows are in registers.
    gate_vbar_ = vbar(layer);
    gate_.vbar = &gate_vbar_;
    gate_.excl = &cum_;
    gate_.excl_n = prompt_len_;
    gate_.gamma = p_.gamma, gate_.temp = p_.temp, gate_.rescale = p_.rescale;
    gate_.counter = view(vbar_, size_t(layer) * vstride_ + dim + 1, 1);
    p.gate = &gate_;
  }
  if (!enhance_layer(layer)) return;
  p.sinkout_mask = enh_.ptr;
  p.sinkout_end = prompt_len_;
}

void OutRo::z(ForwardCtx& ctx, int layer, Buf z) {
  // The prefill's rows were gated by the attention call (attention_policy).
  if (prefill_ || !p_.gate || !detect_layer(layer) || p_.decode == DecodeGating::Off) return;
  const ModelConfig& c = *ctx.cfg;
  const size_t dim = size_t(c.kv_heads) * size_t(c.head_dim);
  Buf vb = vbar(layer);
  // The release compares the step's own row indices with the prompt's sink positions of the layer.
  const Buf r = rec(layer);
  ctx.be->gate_heads(z, ctx.n, c.heads, c.kv_heads, c.head_dim, vb,
                     p_.decode == DecodeGating::Official ? &r : nullptr, prompt_len_, p_.gamma, p_.temp, p_.rescale,
                     view(vbar_, size_t(layer) * vstride_ + dim + 2, 1));
}

const std::vector<OutroLayer>& OutRo::layers() const {
  if (read_ || !prefilled_ || !be_) return host_layers_;
  const size_t P = size_t(prompt_len_), L = size_t(layers_);
  std::vector<float> recs(L * (P + 4)), vb(L * vstride_);
  be_->download(rec_, 0, recs.data(), recs.size());
  be_->download(vbar_, 0, vb.data(), vb.size());
  host_layers_.assign(L, OutroLayer{});
  std::vector<uint8_t> done(P, 0);
  for (size_t l = 0; l < L; ++l) {
    OutroLayer& o = host_layers_[l];
    o.detected = detect_layer(int(l));
    o.enhancement_layer = enhance_layer(int(l));
    if (!o.detected) continue;
    const float* r = recs.data() + l * (P + 4);
    for (size_t i = 0; i < P; ++i)
      if (r[i] != 0.f) {
        o.sinks.push_back(int(i));
        if (o.enhancement_layer && !done[i]) {
          o.enhanced.push_back(int(i));
          if (p_.apply_once) done[i] = 1;
        }
      }
    o.tau = r[P], o.median = r[P + 1], o.top = r[P + 3];
    const float* v = vb.data() + l * vstride_;
    o.rotated = long(v[vstride_ - 2]);
    o.rotated_decode = long(v[vstride_ - 1]);
  }
  read_ = true;
  return host_layers_;
}

std::vector<std::vector<int>> OutRo::layer_sinks() const {
  std::vector<std::vector<int>> out;
  for (const auto& l : layers()) out.push_back(l.sinks);
  return out;
}

bool OutRo::any_sink() const {
  for (const auto& l : layers())
    if (!l.sinks.empty()) return true;
  return false;
}

namespace {
std::string fmt(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.4g", v);
  return b;
}
std::string list(const std::vector<int>& v, size_t most = 16) {
  std::string s = "[";
  for (size_t i = 0; i < v.size() && i < most; ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  if (v.size() > most) s += ", ... (" + std::to_string(v.size()) + ")";
  return s + "]";
}
}  // namespace

std::string OutRo::explain() const {
  std::ostringstream os;
  os << "outro (strategy " << p_.strategy << "): enhancement " << (p_.enhance ? "on" : "off") << ", gated rotation "
     << (p_.gate ? "on" : "off") << " (gamma " << fmt(p_.gamma) << ", temp " << fmt(p_.temp) << ", rescale "
     << (p_.rescale ? "on" : "off") << "), decode gating " << decode_gating_name(p_.decode);
  if (!prefilled_) {
    os << "\n  no prompt run yet";
    return os.str();
  }
  os << "\n  layers [" << lo_ << ", " << hi_ << ") of " << layers_ << "; enhancement every " << interval_
     << " layers" << (p_.apply_once ? ", each position once" : "") << "; sinks by "
     << (p_.override_sinks.empty() ? "Φ_LLM: max|h| >= tau = max(abs_thr " + fmt(p_.abs_thr) + ", med_mul " +
                                         fmt(p_.med_mul) + " x median|h|; thresholds from " +
                                         (p_.thresholds_from.empty() ? std::string("the release's defaults")
                                                                     : p_.thresholds_from) + ")"
                                   : "override_sinks " + list(p_.override_sinks) + " (research override, not Φ_LLM)");
  const auto& ls = layers();
  bool any = false;
  for (size_t l = 0; l < ls.size(); ++l) {
    const OutroLayer& o = ls[l];
    if (!o.detected) continue;
    any |= !o.sinks.empty();
    os << "\n  layer " << l << ": ";
    if (p_.override_sinks.empty())
      os << "tau " << fmt(o.tau) << " (median " << fmt(o.median) << ", largest max|h| " << fmt(o.top) << "); ";
    if (o.sinks.empty()) {
      os << "no sink";
      continue;
    }
    os << "sinks " << list(o.sinks);
    if (o.enhancement_layer) os << "; enhanced " << (o.enhanced.empty() ? std::string("none (all enhanced before)") : list(o.enhanced));
    if (p_.gate) os << "; rotated " << o.rotated << " (token, head) outputs";
    if (decode_steps_ > 0 && p_.gate && p_.decode != DecodeGating::Off) os << ", " << o.rotated_decode << " in decode steps";
  }
  if (!any) os << "\n  no sink at any layer: OutRo changed nothing";
  if (decode_steps_ > 0)
    os << "\n  " << decode_steps_ << " decode step(s): nothing detected or enhanced; gating "
       << (!p_.gate || p_.decode == DecodeGating::Off ? "off"
           : p_.decode == DecodeGating::On            ? "of every new token at the layers with a sink value"
                                                      : "as the release: at the layers with a sink value, except the "
                                                        "step's rows whose index was a sink position of that layer");
  return os.str();
}

}  // namespace outro
