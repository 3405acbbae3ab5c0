#include "sink/analysis.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <random>
#include <set>

#include "core/error.h"
#include "io/config.h"
#include "models/model.h"
#include "models/multimodal.h"
#include "runtime/hooks.h"
#include "runtime/session.h"

namespace outro::sink {

using nlohmann::json;

namespace {

// A head whose mean row entropy is at least this fraction of an even spread's counts as near uniform.
constexpr double kNearUniform = 0.9;

bool contains(const std::vector<int>& v, int x) { return std::find(v.begin(), v.end(), x) != v.end(); }

double dot(const float* a, const float* b, int d) {
  double s = 0;
  for (int c = 0; c < d; ++c) s += double(a[c]) * double(b[c]);
  return s;
}

// Runs ids with the interventions and returns the patterns of the given layers ([H * n * n] each).
std::vector<std::vector<float>> record_patterns(const Model& m, Backend& be, const Recorded& r0,
                                                const std::vector<int>& layers, const std::vector<Intervention*>& ivs) {
  std::vector<std::string> names;
  for (int l : layers) names.push_back(hook_name(l, Hook::Pattern));
  Recorder rec(names);
  Session s(m, be, r0.n);
  s.add_observer(&rec);
  for (auto* iv : ivs) s.add_intervention(iv);
  TaskItem it;
  it.prompt = r0.ids;
  it.prefill = r0.prefill;
  feed_prompt(s, it, nullptr, false);
  std::vector<std::vector<float>> out;
  for (const auto& n : names) {
    const Recorder::Entry* e = rec.get(n);
    if (!e) fail("hook point ", n, " did not fire");
    out.push_back(e->data);
  }
  return out;
}

// Mean over heads of the sink score of layer pattern P [H, n, n] on the set S.
double layer_mass(const std::vector<float>& P, int H, int n, const std::vector<int>& S, bool exclude) {
  double t = 0;
  for (int h = 0; h < H; ++h) t += sink_score(P.data() + size_t(h) * n * n, n, n, S, exclude);
  return H ? t / H : 0;
}

json metric_json(const MetricValue& v) {
  return {{"loglik", v.loglik}, {"accuracy", v.accuracy < 0 ? json(nullptr) : json(v.accuracy)}};
}

}  // namespace

Recorded record(const Model& m, Backend& be, const std::vector<int32_t>& ids, bool qkv,
                const std::vector<Intervention*>& ivs) {
  TaskItem it;
  it.prompt = ids;
  return record(m, be, it, qkv, ivs);
}

Recorded record(const Model& m, Backend& be, const TaskItem& item, bool qkv, const std::vector<Intervention*>& ivs) {
  const std::vector<int32_t>& ids = item.prompt;
  const ModelConfig& c = m.config();
  std::vector<std::string> names;
  for (int l = 0; l < c.layers; ++l) {
    names.push_back(hook_name(l, Hook::ResidPre));
    names.push_back(hook_name(l, Hook::Pattern));
    if (qkv)
      for (Hook h : {Hook::Q, Hook::K, Hook::V}) names.push_back(hook_name(l, h));
  }
  Recorder rec(names);
  Session s(m, be, int(ids.size()));
  s.add_observer(&rec);
  for (auto* iv : ivs) s.add_intervention(iv);
  feed_prompt(s, item, nullptr, false);
  Recorded r;
  r.ids = ids;
  r.n = int(ids.size());
  r.prefill = item.prefill;
  r.modality = s.modalities();
  auto take = [&](int l, Hook h) {
    const Recorder::Entry* e = rec.get(hook_name(l, h));
    if (!e) fail("hook point ", hook_name(l, h), " did not fire");
    return e->data;
  };
  for (int l = 0; l < c.layers; ++l) {
    r.resid.push_back(take(l, Hook::ResidPre));
    r.pattern.push_back(take(l, Hook::Pattern));
    if (qkv) {
      r.q.push_back(take(l, Hook::Q));
      r.k.push_back(take(l, Hook::K));
      r.v.push_back(take(l, Hook::V));
    }
  }
  return r;
}

ScoreSinks parse_score_sinks(const std::string& s) {
  if (s == "phi_llm") return ScoreSinks::PhiLLM;
  if (s == "phi_vlm") return ScoreSinks::PhiVLM;
  if (s == "attention") return ScoreSinks::Attention;
  if (s == "first") return ScoreSinks::First;
  fail("--score-sinks: expected phi_llm, phi_vlm, attention or first, found '", s, "'");
}

const char* score_sinks_name(ScoreSinks s) {
  switch (s) {
    case ScoreSinks::PhiLLM: return "phi_llm";
    case ScoreSinks::PhiVLM: return "phi_vlm";
    case ScoreSinks::Attention: return "attention";
    case ScoreSinks::First: return "first";
  }
  return "?";
}

DSink model_dsink(const Recorded& r, const ModelConfig& c, const VlmCriterion& p) {
  std::vector<const float*> rows;
  for (const auto& h : r.resid) rows.push_back(h.data());  // row 0 of every layer's resid_pre
  return find_dsink(rows, c.hidden, p);
}

std::vector<LayerSinks> prompt_sinks(const Recorded& r, const ModelConfig& c, const DSink& dsink, const SinkParams& p) {
  const int n = r.n, D = c.hidden, H = c.heads;
  std::vector<LayerSinks> out(size_t(c.layers));
  for (int l = 0; l < c.layers; ++l) {
    LayerSinks& s = out[size_t(l)];
    const float* h = r.resid[size_t(l)].data();
    LlmResult llm = phi_llm(h, n, D, p.llm);
    s.llm = llm.sinks;
    s.median = llm.median;
    s.first_max = llm.row_max.empty() ? 0.f : llm.row_max[0];
    for (int i = 1; i < n; ++i) s.other_max = std::max(s.other_max, llm.row_max[size_t(i)]);
    auto phi = phi_vlm_values(h, n, D, dsink.dims);
    s.vlm = phi_vlm(h, n, D, dsink.dims, p.vlm);
    s.first_phi = phi.empty() ? 0.f : phi[0];
    for (int i = 1; i < n; ++i) s.other_phi_max = std::max(s.other_phi_max, phi[size_t(i)]);
    std::set<int> uni;
    s.attn_heads.resize(size_t(H));
    s.alpha_max_heads.assign(size_t(H), 0.f);
    for (int hh = 0; hh < H; ++hh) {
      auto alpha = incoming_attention(r.pattern[size_t(l)].data() + size_t(hh) * n * n, n, n);
      s.attn_heads[size_t(hh)] = attention_sinks(alpha, p.attn);
      s.alpha_max_heads[size_t(hh)] = alpha.empty() ? 0.f : *std::max_element(alpha.begin(), alpha.end());
      uni.insert(s.attn_heads[size_t(hh)].begin(), s.attn_heads[size_t(hh)].end());
    }
    s.attn.assign(uni.begin(), uni.end());
    switch (p.score_sinks) {
      case ScoreSinks::PhiLLM: s.score = s.llm; break;
      case ScoreSinks::PhiVLM: s.score = s.vlm; break;
      case ScoreSinks::Attention: s.score = s.attn; break;
      case ScoreSinks::First: s.score = {0}; break;
    }
    if (s.score.empty() && p.fallback_first) {
      s.score = {0};
      s.fallback = true;
    }
  }
  return out;
}

std::vector<std::vector<double>> head_scores(const Recorded& r, const ModelConfig& c, const std::vector<LayerSinks>& s,
                                             bool exclude_sink_rows) {
  const int n = r.n, H = c.heads;
  std::vector<std::vector<double>> out(size_t(c.layers), std::vector<double>(size_t(H), 0.0));
  for (int l = 0; l < c.layers; ++l)
    for (int h = 0; h < H; ++h)
      out[size_t(l)][size_t(h)] =
          sink_score(r.pattern[size_t(l)].data() + size_t(h) * n * n, n, n, s[size_t(l)].score, exclude_sink_rows);
  return out;
}

Geometry geometry(const std::vector<Recorded>& recs, const std::vector<std::vector<LayerSinks>>& sinks,
                  const ModelConfig& c, int layer, int head, int max_points) {
  const int L = c.layers, H = c.heads, KV = c.kv_heads, hd = c.head_dim, group = H / KV;
  if (layer < 0 || layer >= L || head < 0 || head >= H)
    fail("geometry: layer ", layer, " head ", head, " is outside the model's ", L, " layers and ", H, " heads");
  Geometry g;
  g.layer = layer;
  g.head = head;
  g.kv_head = head / group;
  g.layers.resize(size_t(L));
  for (int l = 0; l < L; ++l) {
    GeometryLayer& G = g.layers[size_t(l)];
    double kn[2] = {0, 0}, vn[2] = {0, 0}, top[2] = {0, 0}, cs[2] = {0, 0}, lg[2] = {0, 0};
    long cnt[2] = {0, 0}, pairs[2] = {0, 0};
    for (size_t p = 0; p < recs.size(); ++p) {
      const Recorded& r = recs[p];
      const auto& S = sinks[p][size_t(l)].score;
      const int n = r.n;
      const float* K = r.k[size_t(l)].data();
      const float* Vv = r.v[size_t(l)].data();
      const float* Q = r.q[size_t(l)].data();
      std::vector<double> knorm(size_t(n) * KV);
      for (int j = 0; j < n; ++j) {
        const int w = contains(S, j) ? 0 : 1;
        for (int kv = 0; kv < KV; ++kv) {
          const float* k = K + (size_t(j) * KV + kv) * hd;
          const float* v = Vv + (size_t(j) * KV + kv) * hd;
          const double k2 = dot(k, k, hd);
          knorm[size_t(j) * KV + kv] = std::sqrt(k2);
          kn[w] += std::sqrt(k2);
          vn[w] += std::sqrt(dot(v, v, hd));
          double m = 0;
          for (int d = 0; d < hd; ++d) m = std::max(m, double(k[d]) * k[d]);
          top[w] += k2 > 0 ? m / k2 : 0;
          ++cnt[w];
        }
      }
      for (int i = 0; i < n; ++i) {
        if (contains(S, i)) continue;
        for (int h = 0; h < H; ++h) {
          const float* q = Q + (size_t(i) * H + h) * hd;
          const double qn = std::sqrt(dot(q, q, hd));
          const int kv = h / group;
          for (int j = 0; j <= i; ++j) {
            const int w = contains(S, j) ? 0 : 1;
            const float* k = K + (size_t(j) * KV + kv) * hd;
            const double qk = dot(q, k, hd);
            const double den = qn * knorm[size_t(j) * KV + kv];
            cs[w] += den > 0 ? qk / den : 0;
            lg[w] += qk / std::sqrt(double(hd));
            ++pairs[w];
          }
        }
      }
    }
    auto avg = [](double s, long k) { return k ? s / double(k) : 0.0; };
    G.key_norm_sink = avg(kn[0], cnt[0]);
    G.key_norm_other = avg(kn[1], cnt[1]);
    G.value_norm_sink = avg(vn[0], cnt[0]);
    G.value_norm_other = avg(vn[1], cnt[1]);
    G.top1_share_sink = avg(top[0], cnt[0]);
    G.top1_share_other = avg(top[1], cnt[1]);
    G.cos_sink = avg(cs[0], pairs[0]);
    G.cos_other = avg(cs[1], pairs[1]);
    G.logit_sink = avg(lg[0], pairs[0]);
    G.logit_other = avg(lg[1], pairs[1]);
    G.n_sink_keys = int(cnt[0] / std::max(KV, 1));
    G.n_other_keys = int(cnt[1] / std::max(KV, 1));
  }
  // Profile and points of the chosen layer/head.
  g.profile_sink.assign(size_t(hd), 0.0);
  g.profile_other.assign(size_t(hd), 0.0);
  long ns = 0, no = 0;
  struct Pt {
    int kind, prompt, pos;
    const float* x;
  };
  std::vector<Pt> qs, sk, ok;
  for (size_t p = 0; p < recs.size(); ++p) {
    const Recorded& r = recs[p];
    const auto& S = sinks[p][size_t(layer)].score;
    for (int j = 0; j < r.n; ++j) {
      const float* k = r.k[size_t(layer)].data() + (size_t(j) * KV + g.kv_head) * hd;
      const bool is_s = contains(S, j);
      auto& prof = is_s ? g.profile_sink : g.profile_other;
      for (int d = 0; d < hd; ++d) prof[size_t(d)] += std::fabs(k[d]);
      (is_s ? ns : no)++;
      (is_s ? sk : ok).push_back({is_s ? 1 : 2, int(p), j, k});
      qs.push_back({0, int(p), j, r.q[size_t(layer)].data() + (size_t(j) * H + head) * hd});
    }
  }
  for (auto& e : g.profile_sink) e /= std::max(ns, 1L);
  for (auto& e : g.profile_other) e /= std::max(no, 1L);
  // Keep every sink key; split the remaining budget evenly between queries and other keys.
  const int budget = std::max(0, max_points - int(sk.size()));
  auto thin = [](std::vector<Pt>& v, int keep) {
    if (keep >= int(v.size())) return;
    std::vector<Pt> out;
    for (int i = 0; i < keep; ++i) out.push_back(v[size_t(double(i) * v.size() / keep)]);
    v.swap(out);
  };
  const int half = budget / 2;
  thin(qs, std::max(half, budget - int(ok.size())));
  thin(ok, budget - int(qs.size()));
  for (const auto* group_v : {&qs, &sk, &ok})
    for (const Pt& pt : *group_v) {
      g.points.insert(g.points.end(), pt.x, pt.x + hd);
      g.kind.push_back(pt.kind);
      g.prompt_of.push_back(pt.prompt);
      g.pos_of.push_back(pt.pos);
    }
  return g;
}

DimZeroing dim_zeroing(const Model& m, Backend& be, const std::vector<Recorded>& recs,
                       const std::vector<std::vector<LayerSinks>>& sinks, bool exclude_sink_rows,
                       const std::function<void()>& tick) {
  const ModelConfig& c = m.config();
  const int L = c.layers, H = c.heads;
  DimZeroing z;
  z.baseline.assign(size_t(L), 0.0);
  z.zeroed_all.assign(size_t(L), 0.0);
  z.zeroed_own.assign(size_t(L), 0.0);
  std::vector<int> all_layers(static_cast<size_t>(L));
  std::iota(all_layers.begin(), all_layers.end(), 0);
  for (size_t p = 0; p < recs.size(); ++p) {
    const Recorded& r = recs[p];
    std::set<int> u;
    for (const auto& s : sinks[p]) u.insert(s.score.begin(), s.score.end());
    std::vector<int> Z(u.begin(), u.end());
    z.positions.push_back(Z);
    for (int l = 0; l < L; ++l) z.baseline[size_t(l)] += layer_mass(r.pattern[size_t(l)], H, r.n, Z, exclude_sink_rows);
    SinkDimZeroing all(Z, {});
    auto pats = record_patterns(m, be, r, all_layers, {&all});
    for (int l = 0; l < L; ++l) z.zeroed_all[size_t(l)] += layer_mass(pats[size_t(l)], H, r.n, Z, exclude_sink_rows);
    if (tick) tick();
    for (int l = 0; l < L; ++l) {
      SinkDimZeroing own(Z, {l});
      auto pl = record_patterns(m, be, r, {l}, {&own});
      z.zeroed_own[size_t(l)] += layer_mass(pl[0], H, r.n, Z, exclude_sink_rows);
      if (tick) tick();
    }
  }
  const double np = std::max<size_t>(recs.size(), 1);
  for (auto* v : {&z.baseline, &z.zeroed_all, &z.zeroed_own})
    for (auto& e : *v) e /= np;
  return z;
}

std::vector<HeadAblation::Target> order_by_score(const std::vector<std::vector<double>>& scores) {
  std::vector<HeadAblation::Target> t;
  for (size_t l = 0; l < scores.size(); ++l)
    for (size_t h = 0; h < scores[l].size(); ++h) t.push_back({int(l), int(h)});
  std::stable_sort(t.begin(), t.end(), [&](const auto& a, const auto& b) {
    return scores[size_t(a.layer)][size_t(a.head)] > scores[size_t(b.layer)][size_t(b.head)];
  });
  return t;
}

std::vector<HeadAblation::Target> random_order(int layers, int heads, uint64_t seed) {
  std::vector<HeadAblation::Target> t;
  for (int l = 0; l < layers; ++l)
    for (int h = 0; h < heads; ++h) t.push_back({l, h});
  std::mt19937_64 rng(seed);
  for (size_t i = t.size(); i > 1; --i) {  // Fisher-Yates with our own index draw (portable across libstdc++)
    const size_t j = size_t(rng() % i);
    std::swap(t[i - 1], t[j]);
  }
  return t;
}

PruneCurve prune_curve(const Model& m, Backend& be, const std::vector<TaskItem>& items,
                       const std::vector<HeadAblation::Target>& order, const std::vector<int>& steps,
                       const std::function<void()>& tick) {
  PruneCurve pc;
  for (int k : steps) {
    if (k < 0 || k > int(order.size())) fail("prune_curve: step ", k, " is outside [0, ", order.size(), "]");
    std::vector<HeadAblation::Target> ab(order.begin(), order.begin() + k);
    pc.steps.push_back(k);
    pc.values.push_back(evaluate_tasks(m, be, items, ab));
    if (tick) tick();
  }
  return pc;
}

std::vector<std::vector<MetricValue>> single_head_effects(const Model& m, Backend& be, const std::vector<TaskItem>& items,
                                                          const std::function<void()>& tick) {
  const ModelConfig& c = m.config();
  std::vector<std::vector<MetricValue>> out(size_t(c.layers), std::vector<MetricValue>(size_t(c.heads)));
  for (int l = 0; l < c.layers; ++l)
    for (int h = 0; h < c.heads; ++h) {
      out[size_t(l)][size_t(h)] = evaluate_tasks(m, be, items, {{l, h}});
      if (tick) tick();
    }
  return out;
}

// ------------------------------------------------------------------------------------------ the run

json run_analysis(const Model& m, Backend& be, const std::vector<TaskItem>& items, const AnalysisParams& p,
                  const ProgressSink& progress) {
  const ModelConfig& c = m.config();
  const int L = c.layers, H = c.heads;
  if (items.empty()) fail("analyze: no prompts");
  auto t0 = std::chrono::steady_clock::now();
  auto stage = [&](const std::string& s, size_t n) {
    if (progress.stage) progress.stage(s, n);
  };
  auto tick = [&]() {
    if (progress.tick) progress.tick();
  };
  auto done = [&]() {
    if (progress.done) progress.done();
  };
  auto secs = [&]() { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
  json timing;
  double last = 0;
  auto mark = [&](const char* key) {  // seconds spent in the stage that just ended
    const double now = secs();
    timing[key] = now - last;
    last = now;
  };

  // 1. One forward per prompt with the hooks; D_sink from the first prompt.
  stage("forward + hooks", items.size());
  std::vector<Recorded> recs;
  for (const auto& it : items) {
    recs.push_back(record(m, be, it, true));
    tick();
  }
  done();
  const DSink dsink = model_dsink(recs[0], c, p.sinks.vlm);
  std::vector<std::vector<LayerSinks>> sinks;
  std::vector<std::vector<std::vector<double>>> scores_pp;
  for (const auto& r : recs) {
    sinks.push_back(prompt_sinks(r, c, dsink, p.sinks));
    scores_pp.push_back(head_scores(r, c, sinks.back(), p.sinks.exclude_sink_rows));
  }
  mark("forward_s");
  const double np = double(recs.size());

  json j;
  j["version"] = 1;
  j["model"] = {{"dir", m.dir()},          {"architecture", c.architecture}, {"layers", L},
                {"heads", H},              {"kv_heads", c.kv_heads},         {"head_dim", c.head_dim},
                {"hidden_size", c.hidden}, {"vocab_size", c.vocab}};
  const Metric metric = choose_metric(p.metric, items);
  j["params"] = {{"phi_llm", {{"tau_abs", p.sinks.llm.tau_abs}, {"tau_rel", p.sinks.llm.tau_rel},
                              {"from", p.sinks.llm.from.empty() ? "the release's defaults or the command's flags" : p.sinks.llm.from}}},
                 {"phi_vlm", {{"tau", p.sinks.vlm.tau}, {"dim_tau", p.sinks.vlm.dim_tau}, {"fallback_top", p.sinks.vlm.fallback_top}}},
                 {"attention", {{"eps", p.sinks.attn.eps}}},
                 {"score_sinks", score_sinks_name(p.sinks.score_sinks)},
                 {"fallback_first", p.sinks.fallback_first},
                 {"exclude_sink_rows", p.sinks.exclude_sink_rows},
                 {"metric", metric_name(metric)},
                 {"seeds", p.seeds},
                 {"max_points", p.max_points},
                 {"tsne_perplexity", p.tsne_params.perplexity},
                 {"tsne_iterations", p.tsne_params.iterations}};
  json warnings = json::array();
  const double phi_cap = std::sqrt(double(c.hidden));  // |h[c]| / rms(h) <= sqrt(hidden)
  if (p.sinks.vlm.tau > phi_cap)
    warnings.push_back("Φ_VLM: phi = |h[c]|/rms(h) is at most sqrt(hidden) = " + std::to_string(phi_cap).substr(0, 5) +
                       " on this model, below tau " + std::to_string(p.sinks.vlm.tau).substr(0, 5) +
                       ": Φ_VLM cannot mark any token (lower --vlm-tau)");
  if (dsink.rule != "threshold")
    warnings.push_back("D_sink: no channel of token 0 reaches |h[c]|/rms(h) >= " + std::to_string(p.sinks.vlm.dim_tau).substr(0, 5) +
                       " (largest " + std::to_string(*std::max_element(dsink.ratio.begin(), dsink.ratio.end())).substr(0, 5) +
                       ", cap sqrt(hidden) = " + std::to_string(phi_cap).substr(0, 5) + "); D_sink is the " + dsink.rule +
                       " rule's choice (lower --dim-tau)");
  j["d_sink"] = {{"dims", dsink.dims}, {"rule", dsink.rule}, {"ratio", dsink.ratio}, {"ratio_layer", dsink.ratio_layer},
                 {"from_prompt", items[0].id}};

  // Per prompt sets.
  json pp = json::array();
  for (size_t i = 0; i < recs.size(); ++i) {
    json layers = json::array();
    for (const auto& s : sinks[i])
      layers.push_back({{"phi_llm", s.llm}, {"phi_vlm", s.vlm}, {"attention", s.attn}, {"attention_heads", s.attn_heads},
                        {"score_set", s.score}, {"score_fallback", s.fallback}, {"first_max_abs", s.first_max},
                        {"other_max_abs", s.other_max}, {"median_abs", s.median}, {"first_phi_vlm", s.first_phi},
                        {"other_phi_vlm_max", s.other_phi_max}, {"alpha_max_heads", s.alpha_max_heads}});
    pp.push_back({{"id", items[i].id}, {"line", items[i].line}, {"n_tokens", recs[i].n}, {"tokens", recs[i].ids},
                  {"modality", recs[i].modality}, {"layers", layers}});
  }
  j["per_prompt"] = pp;

  // Fig. 1a
  {
    std::vector<double> cl(size_t(L), 0), cv(size_t(L), 0), ca(size_t(L), 0), first(size_t(L), 0), fmax(size_t(L), 0),
        omax(size_t(L), 0), med(size_t(L), 0), tokens_mean(size_t(L), 0);
    int llm_total = 0, llm_first = 0;
    // sinks counted over all layers and prompts by the modality of the token: text, image, video, audio
    std::vector<int> llm_mod(4, 0), vlm_mod(4, 0), tok_mod(4, 0);
    for (size_t p = 0; p < sinks.size(); ++p) {
      const auto& mod = recs[p].modality;
      auto kind = [&](int pos) { return pos < int(mod.size()) && mod[size_t(pos)] < 4 ? int(mod[size_t(pos)]) : 0; };
      for (int t = 0; t < recs[p].n; ++t) ++tok_mod[size_t(kind(t))];
      for (int l = 0; l < L; ++l) {
        for (int pos : sinks[p][size_t(l)].llm) ++llm_mod[size_t(kind(pos))];
        for (int pos : sinks[p][size_t(l)].vlm) ++vlm_mod[size_t(kind(pos))];
      }
    }
    auto by_mod = [](const std::vector<int>& v) {
      return json{{"text", v[0]}, {"image", v[1]}, {"video", v[2]}, {"audio", v[3]}};
    };
    for (const auto& ps : sinks)
      for (int l = 0; l < L; ++l) {
        const LayerSinks& s = ps[size_t(l)];
        cl[size_t(l)] += double(s.llm.size()) / np;
        cv[size_t(l)] += double(s.vlm.size()) / np;
        ca[size_t(l)] += double(s.attn.size()) / np;
        first[size_t(l)] += (contains(s.llm, 0) ? 1.0 : 0.0) / np;
        fmax[size_t(l)] += s.first_max / np;
        omax[size_t(l)] += s.other_max / np;
        med[size_t(l)] += s.median / np;
        llm_total += int(s.llm.size());
        llm_first += contains(s.llm, 0) ? 1 : 0;
      }
    double mean_tokens = 0;
    for (const auto& r : recs) mean_tokens += r.n / np;
    j["fig1a"] = {{"layer", [&] {
                     std::vector<int> v(static_cast<size_t>(L));
                     std::iota(v.begin(), v.end(), 0);
                     return v;
                   }()},
                  {"phi_llm", cl},
                  {"phi_vlm", cv},
                  {"attention", ca},
                  {"phi_llm_first_token_fraction", first},
                  {"first_max_abs", fmax},
                  {"other_max_abs", omax},
                  {"median_abs", med},
                  {"mean_tokens", mean_tokens},
                  {"phi_llm_total", llm_total},
                  {"phi_llm_by_modality", by_mod(llm_mod)},
                  {"phi_vlm_by_modality", by_mod(vlm_mod)},
                  {"tokens_by_modality", by_mod(tok_mod)},
                  {"phi_llm_total_first_token", llm_first}};
  }

  if (j["fig1a"]["phi_llm_total"].get<int>() == 0)
    warnings.push_back("Φ_LLM found no sink in any layer of any prompt (tau_abs " + std::to_string(p.sinks.llm.tau_abs).substr(0, 6) +
                       ", tau_rel " + std::to_string(p.sinks.llm.tau_rel).substr(0, 6) + ")" +
                       (p.sinks.fallback_first ? "; the scores, geometry and zeroing use the first token (fallback)" : ""));
  // Sink scores (mean over prompts).
  std::vector<std::vector<double>> scores(size_t(L), std::vector<double>(size_t(H), 0.0));
  for (const auto& sp : scores_pp)
    for (int l = 0; l < L; ++l)
      for (int h = 0; h < H; ++h) scores[size_t(l)][size_t(h)] += sp[size_t(l)][size_t(h)] / np;
  {
    int fb = 0;
    for (const auto& ps : sinks)
      for (const auto& s : ps) fb += s.fallback ? 1 : 0;
    j["sink_scores"] = {{"sink_set", score_sinks_name(p.sinks.score_sinks)},
                        {"fallback_layers", fb},
                        {"scores", scores},
                        {"per_prompt", scores_pp}};
  }

  // How focused every head is: near-uniform heads have nothing to park on a sink.
  {
    std::vector<std::vector<double>> ent(size_t(L), std::vector<double>(size_t(H), 0.0)), first = ent;
    double uniform = 0;
    for (const auto& r : recs) {
      for (int l = 0; l < L; ++l)
        for (int h = 0; h < H; ++h) {
          const Focus f = head_focus(r.pattern[size_t(l)].data() + size_t(h) * r.n * r.n, r.n, r.n);
          ent[size_t(l)][size_t(h)] += f.entropy_ratio / np;
          first[size_t(l)][size_t(h)] += f.first / np;
        }
      uniform += even_first_share(r.n) / np;
    }
    int near_uniform = 0;
    for (const auto& row : ent)
      for (double e : row) near_uniform += e >= kNearUniform ? 1 : 0;
    j["head_focus"] = {{"entropy_ratio", ent},
                       {"first_token", first},
                       {"first_token_uniform", uniform},
                       {"near_uniform_threshold", kNearUniform},
                       {"near_uniform_heads", near_uniform}};
    if (2 * near_uniform >= L * H)
      warnings.push_back(std::to_string(near_uniform) + " of " + std::to_string(L * H) +
                         " heads attend near uniformly (mean row entropy >= " + std::to_string(kNearUniform).substr(0, 4) +
                         " of an even spread's): a model whose heads look nowhere in particular has no use for a sink");
  }

  // Fig. 4: geometry at the chosen head.
  int gl = p.geometry_layer, gh = p.geometry_head;
  if (gl < 0 || gh < 0) {  // the head of highest sink score (beyond layer 0 when there is more than one layer)
    double best = -1;
    int bl = L > 1 ? 1 : 0, bh = 0;
    for (int l = (gl >= 0 ? gl : bl); l < (gl >= 0 ? gl + 1 : L); ++l)
      for (int h = (gh >= 0 ? gh : 0); h < (gh >= 0 ? gh + 1 : H); ++h)
        if (l < L && h < H && scores[size_t(l)][size_t(h)] > best) {
          best = scores[size_t(l)][size_t(h)];
          bl = l;
          bh = h;
        }
    if (gl < 0) gl = bl;
    if (gh < 0) gh = bh;
  }
  if (gl >= L || gh >= H) fail("--geometry-layer/--geometry-head: ", gl, ".", gh, " is outside ", L, " layers x ", H, " heads");
  {
    Geometry g = geometry(recs, sinks, c, gl, gh, p.max_points);
    json per;
    std::vector<double> a[10];
    for (const auto& G : g.layers) {
      a[0].push_back(G.key_norm_sink);
      a[1].push_back(G.key_norm_other);
      a[2].push_back(G.value_norm_sink);
      a[3].push_back(G.value_norm_other);
      a[4].push_back(G.cos_sink);
      a[5].push_back(G.cos_other);
      a[6].push_back(G.logit_sink);
      a[7].push_back(G.logit_other);
      a[8].push_back(G.top1_share_sink);
      a[9].push_back(G.top1_share_other);
    }
    const char* names[10] = {"key_norm_sink", "key_norm_other", "value_norm_sink", "value_norm_other", "cos_sink",
                             "cos_other",     "logit_sink",     "logit_other",     "top1_share_sink", "top1_share_other"};
    for (int i = 0; i < 10; ++i) per[names[i]] = a[i];
    const int n_pts = int(g.kind.size());
    const int hd = c.head_dim;
    stage("PCA + t-SNE", 1);
    Embedding2D pc = pca2(g.points, n_pts, hd);
    json emb = {{"n", n_pts}, {"kind", g.kind}, {"kind_names", {"query", "sink key", "other key"}}, {"prompt", g.prompt_of},
                {"pos", g.pos_of}, {"pca", {{"xy", pc.xy}, {"explained", {pc.explained[0], pc.explained[1]}}}}};
    if (p.tsne) {
      Embedding2D ts = tsne2(g.points, n_pts, hd, p.tsne_params);
      emb["tsne"] = {{"xy", ts.xy}, {"kl", ts.kl}, {"iterations", ts.iterations},
                     {"perplexity", std::max(1.0, std::min(p.tsne_params.perplexity, (n_pts - 1) / 3.0))}};
    }
    tick();
    done();
    int top_dim = 0;
    for (int d = 1; d < hd; ++d)
      if (g.profile_sink[size_t(d)] > g.profile_sink[size_t(top_dim)]) top_dim = d;
    j["geometry"] = {{"layer", g.layer},
                     {"head", g.head},
                     {"kv_head", g.kv_head},
                     {"chosen_by", p.geometry_layer >= 0 || p.geometry_head >= 0 ? "flag" : "highest sink score"},
                     {"per_layer", per},
                     {"profile_sink", g.profile_sink},
                     {"profile_other", g.profile_other},
                     {"profile_top_dim", top_dim},
                     {"embedding", emb}};
  }
  mark("geometry_s");

  // Fig. 5
  if (p.zeroing) {
    stage("dimension zeroing", recs.size() * size_t(L + 1));
    DimZeroing z = dim_zeroing(m, be, recs, sinks, p.sinks.exclude_sink_rows, tick);
    done();
    j["dim_zeroing"] = {{"baseline", z.baseline}, {"zeroed_all_layers", z.zeroed_all}, {"zeroed_this_layer", z.zeroed_own},
                        {"positions", z.positions}};
    mark("dim_zeroing_s");
  }

  // Fig. 3 and Fig. 2
  const int total = L * H;
  int max_k = std::clamp(int(std::lround(p.prune_max_frac * total)), 1, total);
  const int step = p.prune_step > 0 ? p.prune_step : std::max(1, (max_k + 11) / 12);
  std::vector<int> steps;
  for (int k = 0; k < max_k; k += step) steps.push_back(k);
  steps.push_back(max_k);
  MetricValue base;
  bool have_base = false;
  if (p.single_head) {
    stage("single-head ablation", size_t(total) + 1);
    base = evaluate_tasks(m, be, items, {});
    have_base = true;
    tick();
    auto eff = single_head_effects(m, be, items, tick);
    done();
    json heads = json::array(), improves = json::array(), hurts = json::array();
    std::vector<std::tuple<double, int, int>> d;
    for (int l = 0; l < L; ++l)
      for (int h = 0; h < H; ++h) {
        const MetricValue& v = eff[size_t(l)][size_t(h)];
        const double delta = v.value(metric) - base.value(metric);
        heads.push_back({{"layer", l}, {"head", h}, {"sink_score", scores[size_t(l)][size_t(h)]}, {"value", v.value(metric)},
                         {"delta", delta}, {"delta_loglik", v.loglik - base.loglik}, {"metric", metric_json(v)}});
        d.emplace_back(delta, l, h);
      }
    std::sort(d.begin(), d.end(), [](const auto& a, const auto& b) { return std::get<0>(a) > std::get<0>(b); });
    for (const auto& [delta, l, h] : d) {
      json e = {{"layer", l}, {"head", h}, {"delta", delta}, {"sink_score", scores[size_t(l)][size_t(h)]}};
      if (delta > 0) improves.push_back(e);
      else if (delta < 0) hurts.push_back(e);
    }
    std::reverse(hurts.begin(), hurts.end());  // most harmful first
    j["single_head"] = {{"metric", metric_name(metric)}, {"baseline", base.value(metric)}, {"baseline_metric", metric_json(base)},
                        {"heads", heads}, {"improves", improves}, {"hurts", hurts}};
    mark("single_head_s");
  }
  if (p.pruning) {
    stage("head pruning", steps.size() * (1 + p.seeds.size()));
    auto run = [&](const std::vector<HeadAblation::Target>& order) {
      PruneCurve pc = prune_curve(m, be, items, order, steps, tick);
      json o = json::array();
      for (const auto& t : order) o.push_back({t.layer, t.head});
      std::vector<double> val;
      json mets = json::array();
      for (const auto& v : pc.values) {
        val.push_back(v.value(metric));
        mets.push_back(metric_json(v));
      }
      return json{{"order", o}, {"value", val}, {"metric", mets}};
    };
    json by = run(order_by_score(scores));
    json rnd = json::array();
    std::vector<double> mean(steps.size(), 0.0);
    for (uint64_t s : p.seeds) {
      json r = run(random_order(L, H, s));
      r["seed"] = s;
      for (size_t i = 0; i < steps.size(); ++i) mean[i] += r["value"][i].get<double>() / double(p.seeds.size());
      rnd.push_back(r);
    }
    done();
    j["pruning"] = {{"metric", metric_name(metric)}, {"steps", steps}, {"by_sink_score", by}, {"random", rnd},
                    {"random_mean", mean}};
    if (!have_base) base = evaluate_tasks(m, be, items, {});
    mark("pruning_s");
  }
  j["prompts"] = {{"count", items.size()}, {"metric", metric_name(metric)},
                  {"multiple_choice", std::count_if(items.begin(), items.end(), [](const TaskItem& t) { return !t.options.empty(); })},
                  {"with_answer", std::count_if(items.begin(), items.end(), [](const TaskItem& t) { return !t.answer.empty(); })}};
  if (p.single_head || p.pruning) j["prompts"]["baseline_metric"] = metric_json(base);
  timing["total_s"] = secs();
  j["timing"] = timing;
  j["warnings"] = warnings;
  return j;
}

}  // namespace outro::sink
