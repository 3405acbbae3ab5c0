// Sink criteria and analyses (src/sink): the criteria on hand-built activations and at their
// thresholds' edges, attention patterns of real forwards, head ablation against the reference
// implementation's fixture and against zeroed o_proj columns, sink-key dimension zeroing on a model
// built to have a sink, PCA/t-SNE, the prompts file, and `outro analyze` end to end.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/safetensors.h"
#include "kernels/backend.h"
#include "models/model.h"
#include "models/random_model.h"
#include "runtime/hooks.h"
#include "runtime/session.h"
#include "sink/analysis.h"
#include "sink/criteria.h"
#include "sink/embed2d.h"
#include "sink/tasks.h"
#include "test_util.h"

namespace outro {
namespace {

namespace fs = std::filesystem;
using namespace outro::sink;
using test::fixture;
using test::rel_err;

// ---------------------------------------------------------------------------------------- fixtures

struct RemoveDirs : ::testing::Environment {
  void TearDown() override {
    for (const auto& d : dirs) fs::remove_all(d);
  }
  static inline std::vector<std::string> dirs;
};
[[maybe_unused]] ::testing::Environment* const kCleanup = ::testing::AddGlobalTestEnvironment(new RemoveDirs);

constexpr int kSinkChannel = 7;   // the residual channel token 0 carries massively
constexpr int kSinkToken = 1;     // the id placed first in the prompts
constexpr float kMassive = 2000.f;

// Reads every tensor of DIR/model.safetensors as float32, lets `edit` change them, writes them back.
void edit_checkpoint(const std::string& dir, const std::function<void(std::map<std::string, std::pair<std::vector<int64_t>, std::vector<float>>>&)>& edit) {
  std::map<std::string, std::pair<std::vector<int64_t>, std::vector<float>>> t;
  {
    auto ws = WeightStore::open(dir);
    for (const auto& [name, info] : ws->tensors()) t[name] = {info.shape, read_f32(info)};
  }
  edit(t);
  std::vector<TensorOut> out;
  for (const auto& [name, v] : t) out.push_back(tensor_f32(name, v.first, v.second.data()));
  write_safetensors(dir + "/model.safetensors.tmp", out);
  fs::rename(dir + "/model.safetensors.tmp", dir + "/model.safetensors");
}

// A random Qwen2 (3 layers, 4 heads, 2 KV heads, head size 16) edited to have an attention sink:
// token id 1 carries a massive value in residual channel 7; in every layer each KV head's key
// dimension hd/2-1 (the slowest rotary pair, so RoPE barely turns it) reads that channel, and every
// query head has a large bias on the same dimension. So the first token's key is large along one
// dimension that every query points at: a sink whose attention hangs on that one dimension.
const std::string& sink_model_dir() {
  static const std::string dir = [] {
    std::string d = test::tmp_dir("sink_model");
    RandomModelSpec s;
    s.hidden = 64;
    s.intermediate = 128;
    s.layers = 3;
    s.heads = 4;
    s.kv_heads = 2;
    s.vocab = 64;
    s.std = 0.1f;
    s.seed = 5;
    write_random_model(d, s);
    const int hd = s.hidden / s.heads, dim = hd / 2 - 1;
    edit_checkpoint(d, [&](auto& t) {
      t["model.embed_tokens.weight"].second[size_t(kSinkToken) * s.hidden + kSinkChannel] = kMassive;
      for (int l = 0; l < s.layers; ++l) {
        const std::string p = "model.layers." + std::to_string(l) + ".self_attn.";
        auto& k = t[p + "k_proj.weight"].second;
        for (int g = 0; g < s.kv_heads; ++g) k[size_t(g * hd + dim) * s.hidden + kSinkChannel] = 1.0f;
        auto& qb = t[p + "q_proj.bias"].second;
        for (int h = 0; h < s.heads; ++h) qb[size_t(h * hd + dim)] = 4.0f;
      }
    });
    RemoveDirs::dirs.push_back(d);
    return d;
  }();
  return dir;
}

const Model& sink_model() {
  static std::unique_ptr<Model> m = Model::load(sink_model_dir());
  return *m;
}

std::vector<int32_t> sink_prompt(int n, uint32_t seed) {
  std::vector<int32_t> ids = {kSinkToken};
  uint32_t x = seed;
  while (int(ids.size()) < n) {
    x = x * 1664525u + 1013904223u;
    const int32_t id = int32_t(2 + (x >> 8) % 60u);  // never the sink token again
    ids.push_back(id);
  }
  return ids;
}

// ---------------------------------------------------------------------------------------- criteria

// n rows of dim channels, every |value| 0.5 (alternating sign) except the given massive entries.
std::vector<float> flat_rows(int n, int dim, const std::vector<std::tuple<int, int, float>>& massive) {
  std::vector<float> h(size_t(n) * dim);
  for (size_t i = 0; i < h.size(); ++i) h[i] = (i % 2) ? 0.5f : -0.5f;
  for (auto [r, c, v] : massive) h[size_t(r) * dim + c] = v;
  return h;
}

TEST(SinkCriteria, PhiLLMFindsTheMassiveTokenOnly) {
  auto h = flat_rows(6, 8, {{2, 5, -150.f}});
  auto r = phi_llm(h.data(), 6, 8, {100.0, 100.0});
  EXPECT_EQ(r.sinks, std::vector<int>{2});
  EXPECT_FLOAT_EQ(r.median, 0.5f);
  EXPECT_FLOAT_EQ(r.row_max[2], 150.f);
  EXPECT_FLOAT_EQ(r.row_max[0], 0.5f);
  // Without the massive channel nothing is found.
  auto flat = flat_rows(6, 8, {});
  EXPECT_TRUE(phi_llm(flat.data(), 6, 8, {100.0, 100.0}).sinks.empty());
  // A token with a moderately large channel (50) is not a sink at tau_abs 100.
  auto mid = flat_rows(6, 8, {{1, 1, 50.f}, {4, 0, 120.f}});
  EXPECT_EQ(phi_llm(mid.data(), 6, 8, {100.0, 100.0}).sinks, std::vector<int>{4});
}

TEST(SinkCriteria, PhiLLMThresholdEdgesAreInclusive) {
  // max |h| = 128 exactly, median 0.5 exactly: 128 = tau_abs = 256 x median. The threshold is
  // compared in float32, as the release compares it on its float tensors.
  auto h = flat_rows(5, 8, {{3, 2, 128.f}});
  EXPECT_EQ(phi_llm(h.data(), 5, 8, {128.0, 1.0}).sinks, std::vector<int>{3});
  EXPECT_TRUE(phi_llm(h.data(), 5, 8, {double(std::nextafter(128.f, 1e9f)), 1.0}).sinks.empty());
  EXPECT_EQ(phi_llm(h.data(), 5, 8, {1.0, 256.0}).sinks, std::vector<int>{3});
  EXPECT_TRUE(phi_llm(h.data(), 5, 8, {1.0, double(std::nextafter(256.f, 1e9f))}).sinks.empty());
  // Both conditions must hold.
  EXPECT_TRUE(phi_llm(h.data(), 5, 8, {200.0, 1.0}).sinks.empty());
  EXPECT_TRUE(phi_llm(h.data(), 5, 8, {1.0, 300.0}).sinks.empty());
}

TEST(SinkCriteria, DSinkIsTheFirstTokensMassiveChannels) {
  const int D = 16;
  std::vector<float> l0(D, 1.f), l1(D, 1.f), l2(D, 1.f);
  l1[3] = 90.f;   // massive at layer 1
  l2[11] = -70.f;  // and another at layer 2
  VlmCriterion p;
  p.dim_tau = 3;  // |h[c]| / rms(h) <= sqrt(dim) = 4 here
  DSink d = find_dsink({l0.data(), l1.data(), l2.data()}, D, p);
  EXPECT_EQ(d.dims, (std::vector<int>{3, 11}));
  EXPECT_EQ(d.rule, "threshold");
  EXPECT_EQ(d.ratio_layer[3], 1);
  EXPECT_EQ(d.ratio_layer[11], 2);
  // ratio = |h[c]| / rms(h): layer 1 has rms sqrt((15 + 8100) / 16)
  EXPECT_NEAR(d.ratio[3], 90.0 / std::sqrt((15.0 + 8100.0) / 16.0), 1e-5);
  // No massive channel: the fallback takes the top channel, or none when fallback_top is 0.
  std::vector<float> a(D, 1.f);
  a[6] = 2.5f;
  DSink f = find_dsink({a.data()}, D, p);
  EXPECT_EQ(f.dims, std::vector<int>{6});
  EXPECT_EQ(f.rule, "fallback-top");
  p.fallback_top = 0;
  DSink none = find_dsink({a.data()}, D, p);
  EXPECT_TRUE(none.dims.empty());
  EXPECT_EQ(none.rule, "none");
}

TEST(SinkCriteria, PhiVLMUsesOnlyTheSinkDimensionsAndIsInclusive) {
  const int D = 8, n = 4;
  auto h = flat_rows(n, D, {{0, 3, 40.f}, {2, 3, -12.f}, {3, 6, 60.f}});
  auto v = phi_vlm_values(h.data(), n, D, {3});
  // token 2: |h[3]| = 12, rms = sqrt((7 * 0.25 + 144) / 8)
  EXPECT_NEAR(v[2], 12.0 / std::sqrt((7 * 0.25 + 144.0) / 8.0), 1e-5);
  EXPECT_NEAR(v[1], 0.5 / 0.5, 1e-6);
  VlmCriterion p;
  p.tau = v[2];
  EXPECT_EQ(phi_vlm(h.data(), n, D, {3}, p), (std::vector<int>{0, 2}));  // token 3's massive channel is not in D_sink
  p.tau = std::nextafter(double(v[2]), 1e9);
  EXPECT_EQ(phi_vlm(h.data(), n, D, {3}, p), std::vector<int>{0});
  EXPECT_TRUE(phi_vlm(h.data(), n, D, {}, p).empty());
  p.tau = 2;  // phi <= sqrt(D) = 2.83: token 3 has 60 / rms = 2.83
  EXPECT_EQ(phi_vlm(h.data(), n, D, {6}, p), std::vector<int>{3});
  p.tau = 20;  // the default cannot be reached with 8 channels
  EXPECT_TRUE(phi_vlm(h.data(), n, D, {3, 6}, p).empty());
}

TEST(SinkCriteria, AttentionCriterionIsStrictAndAveragesOverLaterQueries) {
  // 4 queries, causal; key 0 gets 1, .5, .5, .2 -> alpha_0 = 0.55; key 1: (.5 + .25 + .2) / 3
  const std::vector<float> A = {1.0f, 0, 0, 0,  //
                                0.5f, 0.5f, 0, 0,
                                0.5f, 0.25f, 0.25f, 0,
                                0.2f, 0.2f, 0.2f, 0.4f};
  auto alpha = incoming_attention(A.data(), 4, 4);
  EXPECT_NEAR(alpha[0], 0.55, 1e-6);
  EXPECT_NEAR(alpha[1], 0.95 / 3, 1e-6);
  EXPECT_NEAR(alpha[2], 0.225, 1e-6);
  EXPECT_NEAR(alpha[3], 0.4, 1e-6);
  EXPECT_EQ(attention_sinks(alpha, {0.3}), (std::vector<int>{0, 1, 3}));
  EXPECT_EQ(attention_sinks(alpha, {double(alpha[3])}), (std::vector<int>{0}));  // strictly greater
  EXPECT_EQ(attention_sinks(alpha, {std::nextafter(double(alpha[3]), 0.0)}), (std::vector<int>{0, 3}));
  // Sink score: mean mass on {0} over rows 1..3 (row 0 excluded) = (.5 + .5 + .2) / 3
  EXPECT_NEAR(sink_score(A.data(), 4, 4, {0}, true), 0.4, 1e-6);
  EXPECT_NEAR(sink_score(A.data(), 4, 4, {0}, false), 0.55, 1e-6);
  EXPECT_NEAR(sink_score(A.data(), 4, 4, {0, 1}, true), ((0.5 + 0.25) + (0.2 + 0.2)) / 2, 1e-6);  // rows 2, 3
}

// ---------------------------------------------------------------------------------------- forward

void expect_causal_rows(const Recorded& r, const ModelConfig& c, const std::string& what) {
  const int n = r.n;
  for (int l = 0; l < c.layers; ++l)
    for (int h = 0; h < c.heads; ++h)
      for (int i = 0; i < n; ++i) {
        const float* row = r.pattern[size_t(l)].data() + (size_t(h) * n + i) * n;
        double s = 0;
        for (int j = 0; j < n; ++j) {
          if (j > i) ASSERT_EQ(row[j], 0.f) << what << " layer " << l << " head " << h << " row " << i;
          ASSERT_GE(row[j], 0.f);
          s += row[j];
        }
        ASSERT_NEAR(s, 1.0, 1e-5) << what << " layer " << l << " head " << h << " row " << i;
      }
}

TEST(SinkCriteria, HeadFocusSeparatesEvenSpreadFromOneKey) {
  const int n = 7;
  std::vector<float> even(n * n, 0.f), first(n * n, 0.f), diag(n * n, 0.f), half(n * n, 0.f);
  double ratio_half = 0, uni = 0;
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j <= i; ++j) even[size_t(i * n + j)] = 1.f / float(i + 1);
    first[size_t(i * n)] = 1.f;
    diag[size_t(i * n + i)] = 1.f;
    half[size_t(i * n)] += i ? 0.5f : 1.f;
    if (i) half[size_t(i * n + i)] += 0.5f;
    if (i) ratio_half += std::log(2.0) / std::log(double(i + 1)) / (n - 1), uni += 1.0 / (i + 1) / (n - 1);
  }
  Focus e = head_focus(even.data(), n, n), f = head_focus(first.data(), n, n), d = head_focus(diag.data(), n, n),
        h = head_focus(half.data(), n, n);
  EXPECT_NEAR(e.entropy_ratio, 1.0, 1e-6);
  EXPECT_NEAR(e.first, uni, 1e-6);
  EXPECT_NEAR(even_first_share(n), uni, 1e-12);
  EXPECT_NEAR(f.entropy_ratio, 0.0, 1e-12);
  EXPECT_NEAR(f.first, 1.0, 1e-12);
  EXPECT_NEAR(d.entropy_ratio, 0.0, 1e-12);
  EXPECT_NEAR(d.first, 0.0, 1e-12);
  EXPECT_NEAR(h.entropy_ratio, ratio_half, 1e-6);  // row 1 (two keys, half each) is an even spread: ratio 1
  EXPECT_NEAR(h.first, 0.5, 1e-7);
  EXPECT_EQ(head_focus(even.data(), 1, n).entropy_ratio, 0.0);  // no row beyond the first
}

TEST(SinkForward, PatternsSumToOnePerRowAndAreZeroAboveTheDiagonal) {
  auto be = make_cpu_backend();
  Recorded r = record(sink_model(), *be, sink_prompt(20, 3));
  expect_causal_rows(r, sink_model().config(), "sink fixture");
  auto stories = Model::load(test::shared_model("stories260K"));
  Recorded s = record(*stories, *be, {1, 461, 401, 397, 453, 289, 422, 417, 333, 424, 323});
  expect_causal_rows(s, stories->config(), "stories260K");
  EXPECT_EQ(s.q[0].size(), size_t(11 * 8 * 8));
  EXPECT_EQ(s.k[0].size(), size_t(11 * 4 * 8));
}

TEST(SinkForward, TheBuiltSinkIsFoundByEveryCriterion) {
  auto be = make_cpu_backend();
  const Model& m = sink_model();
  Recorded r = record(m, *be, sink_prompt(24, 9));
  VlmCriterion vlm;
  vlm.tau = vlm.dim_tau = 6;  // phi <= sqrt(64) = 8 on this model
  DSink d = model_dsink(r, m.config(), vlm);
  EXPECT_EQ(d.dims, std::vector<int>{kSinkChannel});
  EXPECT_EQ(d.rule, "threshold");
  SinkParams sp;
  sp.vlm = vlm;
  auto s = prompt_sinks(r, m.config(), d, sp);
  for (int l = 0; l < m.config().layers; ++l) {
    EXPECT_EQ(s[size_t(l)].llm, std::vector<int>{0}) << "layer " << l << ": max|h| of token 0 " << s[size_t(l)].first_max
                                                     << ", median " << s[size_t(l)].median;  // default thresholds 100, 1000
    EXPECT_EQ(s[size_t(l)].vlm, std::vector<int>{0}) << "layer " << l;
    EXPECT_FALSE(s[size_t(l)].fallback);
    for (int h = 0; h < m.config().heads; ++h)
      EXPECT_EQ(s[size_t(l)].attn_heads[size_t(h)].front(), 0) << "layer " << l << " head " << h;
  }
  auto sc = head_scores(r, m.config(), s, true);
  for (const auto& row : sc)
    for (double v : row) EXPECT_GT(v, 0.8);
}

TEST(SinkForward, DimensionZeroingLowersTheSinksAttention) {
  auto be = make_cpu_backend();
  const Model& m = sink_model();
  std::vector<Recorded> recs = {record(m, *be, sink_prompt(20, 1)), record(m, *be, sink_prompt(28, 2))};
  DSink d = model_dsink(recs[0], m.config(), {});
  std::vector<std::vector<LayerSinks>> sinks;
  for (const auto& r : recs) sinks.push_back(prompt_sinks(r, m.config(), d, {}));
  DimZeroing z = dim_zeroing(m, *be, recs, sinks, true);
  ASSERT_EQ(z.positions.size(), 2u);
  EXPECT_EQ(z.positions[0], std::vector<int>{0});
  for (int l = 0; l < m.config().layers; ++l) {
    EXPECT_GT(z.baseline[size_t(l)], 0.8) << "layer " << l;
    EXPECT_LT(z.zeroed_own[size_t(l)], z.baseline[size_t(l)] - 0.5) << "layer " << l;
    EXPECT_LT(z.zeroed_all[size_t(l)], z.baseline[size_t(l)] - 0.5) << "layer " << l;
  }
}

// ---------------------------------------------------------------------------------------- ablation

TEST(SinkAblation, TaskMetricUnderAblationMatchesReferenceLogits) {
  // tests/fixtures: the reference implementation's logits with head (1, 2) zeroed before o_proj.
  auto m = Model::load(fixture("models/qwen2_gqa_f32"));
  auto ref = WeightStore::open(fixture("models/qwen2_gqa_f32/ref.safetensors"));
  auto ids64 = read_i64(ref->get("input_ids"));
  TaskItem it;
  it.prompt.assign(ids64.begin(), ids64.end());
  const int V = m->config().vocab, n = int(it.prompt.size());
  auto expect_ll = [&](const std::vector<float>& logits) {
    double lp = 0;
    for (int t = 1; t < n; ++t) lp += log_prob(logits.data() + size_t(t - 1) * V, V, it.prompt[size_t(t)]);
    return lp / (n - 1);
  };
  auto be = make_cpu_backend();
  const double ablated = evaluate_tasks(*m, *be, {it}, {{1, 2}}).loglik;
  EXPECT_NEAR(ablated, expect_ll(read_f32(ref->get("ablate.l1h2.logits"))), 1e-4);
  EXPECT_NEAR(evaluate_tasks(*m, *be, {it}, {{0, 0}}).loglik, expect_ll(read_f32(ref->get("ablate.l0h0.logits"))), 1e-4);
  const double plain = evaluate_tasks(*m, *be, {it}, {}).loglik;
  EXPECT_NEAR(plain, expect_ll(read_f32(ref->get("logits"))), 1e-4);
  EXPECT_GT(std::fabs(plain - ablated), 1e-4);
}

TEST(SinkAblation, AblatingAHeadEqualsZeroingItsOprojInputColumns) {
  std::string d = test::tmp_dir("sink_oproj");
  RemoveDirs::dirs.push_back(d);
  fs::copy(sink_model_dir(), d, fs::copy_options::recursive | fs::copy_options::overwrite_existing);
  const int layer = 1, head = 2, hd = 16, D = 64;
  edit_checkpoint(d, [&](auto& t) {
    auto& o = t["model.layers." + std::to_string(layer) + ".self_attn.o_proj.weight"].second;  // [D, H*hd]
    for (int r = 0; r < D; ++r)
      for (int c = head * hd; c < (head + 1) * hd; ++c) o[size_t(r) * (4 * hd) + c] = 0.f;
  });
  auto zeroed = Model::load(d);
  auto be = make_cpu_backend();
  TaskItem it;
  it.prompt = sink_prompt(18, 4);
  it.answer = {5, 9, 13};
  const double a = evaluate_tasks(sink_model(), *be, {it}, {{layer, head}}).loglik;
  const double b = evaluate_tasks(*zeroed, *be, {it}, {}).loglik;
  const double plain = evaluate_tasks(sink_model(), *be, {it}, {}).loglik;
  EXPECT_NEAR(a, b, 1e-5);
  EXPECT_GT(std::fabs(a - plain), 1e-5);
  // Same with whole logits through the hooks' forward.
  Session s1(sink_model(), *be, 32), s2(*zeroed, *be, 32);
  HeadAblation ab({{layer, head}});
  s1.add_intervention(&ab);
  std::vector<float> l1, l2;
  s1.forward(it.prompt, &l1, true);
  s2.forward(it.prompt, &l2, true);
  EXPECT_LT(rel_err(l1, l2), 1e-5);
}

TEST(SinkAblation, MultipleChoiceScoringWithRewindEqualsFullSequences) {
  auto be = make_cpu_backend();
  const Model& m = sink_model();
  const int V = m.config().vocab;
  TaskItem it;
  it.prompt = sink_prompt(12, 8);
  it.options = {{3, 4}, {10}, {20, 21, 22}};
  double best = -1e30;
  int arg = -1;
  for (size_t k = 0; k < it.options.size(); ++k) {
    std::vector<int32_t> seq = it.prompt;
    seq.insert(seq.end(), it.options[k].begin(), it.options[k].end());
    Session s(m, *be, int(seq.size()));
    std::vector<float> lg;
    s.forward(seq, &lg, true);
    double lp = 0;
    for (size_t t = 0; t < it.options[k].size(); ++t)
      lp += log_prob(lg.data() + (it.prompt.size() + t - 1) * V, V, it.options[k][t]);
    if (lp > best) best = lp, arg = int(k);
  }
  for (int correct = 0; correct < 3; ++correct) {
    it.correct = correct;
    MetricValue v = evaluate_tasks(m, *be, {it}, {});
    EXPECT_EQ(v.accuracy, correct == arg ? 1.0 : 0.0) << "option " << correct;
  }
}

TEST(SinkAblation, PruneOrdersAndCurves) {
  std::vector<std::vector<double>> sc = {{0.1, 0.9}, {0.5, 0.3}};
  auto o = order_by_score(sc);
  ASSERT_EQ(o.size(), 4u);
  EXPECT_EQ(o[0].layer, 0);
  EXPECT_EQ(o[0].head, 1);
  EXPECT_EQ(o[1].layer, 1);
  EXPECT_EQ(o[1].head, 0);
  auto r1 = random_order(3, 4, 1), r2 = random_order(3, 4, 2), r1b = random_order(3, 4, 1);
  auto key = [](const std::vector<HeadAblation::Target>& v) {
    std::vector<int> k;
    for (auto t : v) k.push_back(t.layer * 100 + t.head);
    return k;
  };
  EXPECT_EQ(key(r1), key(r1b));
  EXPECT_NE(key(r1), key(r2));
  auto sorted = key(r1);
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(sorted, key(order_by_score({{0, 0, 0, 0}, {0, 0, 0, 0}, {0, 0, 0, 0}})));  // a permutation of all heads
  auto be = make_cpu_backend();
  TaskItem it;
  it.prompt = sink_prompt(16, 6);
  auto pc = prune_curve(sink_model(), *be, {it}, r1, {0, 1, 12});
  ASSERT_EQ(pc.values.size(), 3u);
  EXPECT_NEAR(pc.values[0].loglik, evaluate_tasks(sink_model(), *be, {it}, {}).loglik, 1e-9);
  EXPECT_NEAR(pc.values[1].loglik, evaluate_tasks(sink_model(), *be, {it}, {r1[0]}).loglik, 1e-9);
  EXPECT_NE(pc.values[2].loglik, pc.values[0].loglik);
}

// ---------------------------------------------------------------------------------------- embeddings

TEST(SinkEmbedding, PCAFindsTheDirectionOfLargestVariance) {
  // Points along (1, 2, 0, 0)/sqrt5 with small noise in the other directions.
  const int n = 200, d = 4;
  std::vector<float> x;
  uint32_t s = 1;
  auto u = [&] {
    s = s * 1664525u + 1013904223u;
    return float((s >> 8) % 10000u) / 10000.f - 0.5f;
  };
  for (int i = 0; i < n; ++i) {
    const float t = float(i - n / 2) / 10.f;
    x.insert(x.end(), {t / std::sqrt(5.f) + 0.05f * u(), 2 * t / std::sqrt(5.f) + 0.05f * u(), 0.3f * u(), 0.05f * u()});
  }
  Embedding2D e = pca2(x, n, d);
  EXPECT_GT(e.explained[0], 0.99);
  EXPECT_LT(e.explained[1], 0.01);
  // The first coordinate is the signed position along the line (up to the centring).
  for (int i = 1; i < n; ++i) EXPECT_GT(e.xy[size_t(i) * 2], e.xy[size_t(i - 1) * 2] - 0.1f);
  EXPECT_NEAR(e.xy[size_t(n - 1) * 2] - e.xy[0], float(n - 1) / 10.f, 0.1);
}

TEST(SinkEmbedding, TsneSeparatesClustersAndMatchesThePerplexity) {
  const int per = 30, d = 10, n = 3 * per;
  std::vector<float> x;
  uint32_t s = 7;
  auto u = [&] {
    s = s * 1664525u + 1013904223u;
    return float((s >> 8) % 10000u) / 10000.f - 0.5f;
  };
  for (int c = 0; c < 3; ++c)
    for (int i = 0; i < per; ++i)
      for (int k = 0; k < d; ++k) x.push_back((k == c ? 10.f : 0.f) + u());
  auto P = tsne_affinities(x, n, d, 10.0);
  double total = 0;
  for (double v : P) total += v;
  EXPECT_NEAR(total, 1.0, 1e-9);
  for (int i = 0; i < n; ++i) EXPECT_EQ(P[size_t(i) * n + i], 0.0);
  TsneParams p;
  p.perplexity = 10;
  p.iterations = 500;
  Embedding2D e = tsne2(x, n, d, p);
  auto dist = [&](int a, int b) {
    return std::hypot(e.xy[size_t(a) * 2] - e.xy[size_t(b) * 2], e.xy[size_t(a) * 2 + 1] - e.xy[size_t(b) * 2 + 1]);
  };
  double intra = 0, inter = 0;
  int ni = 0, no = 0;
  for (int a = 0; a < n; ++a)
    for (int b = a + 1; b < n; ++b) {
      if (a / per == b / per) intra += dist(a, b), ++ni;
      else inter += dist(a, b), ++no;
    }
  EXPECT_LT(intra / ni * 3, inter / no);
  EXPECT_GT(e.kl, 0);
  EXPECT_LT(e.kl, 2.0);
}

// ---------------------------------------------------------------------------------------- prompts

TEST(SinkTasks, ParsesTokensAnswersAndOptions) {
  const std::string text =
      "{\"tokens\": [1, 2, 3], \"answer\": [4, 5], \"id\": \"a\"}\n"
      "\n"
      "{\"tokens\": [1, 7], \"options\": [[3], [4, 4], [9]], \"answer\": \"B\"}\n"
      "{\"tokens\": [1, 7], \"options\": [[3], [4, 4], [9]], \"answer\": 2}\n"
      "{\"tokens\": [1, 7], \"options\": [[3], [4, 4], [9]], \"answer\": [9]}\n"
      "{\"tokens\": [9]}\n";
  auto items = parse_tasks(text, "p.jsonl", nullptr, 16, {});
  ASSERT_EQ(items.size(), 5u);
  EXPECT_EQ(items[0].id, "a");
  EXPECT_EQ(items[0].answer, (std::vector<int32_t>{4, 5}));
  EXPECT_EQ(items[1].line, 3);
  EXPECT_EQ(items[1].correct, 1);
  EXPECT_EQ(items[2].correct, 2);
  EXPECT_EQ(items[3].correct, 2);
  EXPECT_TRUE(items[4].answer.empty());
  EXPECT_EQ(choose_metric("auto", items), Metric::LogLik);
  EXPECT_EQ(choose_metric("auto", {items[1], items[2]}), Metric::Accuracy);
  EXPECT_THROW(choose_metric("accuracy", items), Error);
}

// Each text must fail to parse (vocabulary 16, no tokenizer) with an error containing `must`.
struct ParseCase {
  std::string text, must;
};
void expect_parse_errors(const std::vector<ParseCase>& cases, const TaskLoadOptions& o) {
  for (const auto& c : cases) {
    try {
      parse_tasks(c.text, "p.jsonl", nullptr, 16, o);
      ADD_FAILURE() << "no error for: " << c.text;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(c.must), std::string::npos) << e.what();
    }
  }
}

TEST(SinkTasks, BadLinesNameTheFileLineAndField) {
  const std::vector<ParseCase> cases = {
      {"{\"tokens\": [1]}\n{\"tokens\": [1, 99]}\n", "p.jsonl:2: field 'tokens': token id 99 is outside the vocabulary [0, 16)"},
      {"{\"tokens\": [1]\n", "p.jsonl:1: not valid JSON"},
      {"[1, 2]\n", "p.jsonl:1: expected a JSON object"},
      {"{\"answer\": \"x\"}\n", "p.jsonl:1: expected a field 'prompt'"},
      {"{\"prompt\": \"hello\"}\n", "p.jsonl:1: field 'prompt' is text but the model folder has no tokenizer.json"},
      {"{\"tokens\": [1], \"options\": [[2], [3]], \"answer\": \"E\"}\n", "p.jsonl:1: field 'answer'"},
      {"{\"tokens\": [1], \"options\": [[2], [3]]}\n", "field 'answer' is required"},
      {"{\"tokens\": [1], \"answer\": [2, -1]}\n", "field 'answer': token id -1"},
      {"{\"tokens\": [1, 2, 3, 4, 5, 6, 7, 8, 9]}\n", "longer than the model's context of 8"},
      {"\n\n", "p.jsonl: no prompts"},
  };
  TaskLoadOptions o;
  o.max_positions = 8;
  expect_parse_errors(cases, o);
  EXPECT_THROW(load_tasks("/nonexistent/prompts.jsonl", nullptr, 16, {}), Error);
}

TEST(SinkTasks, MediaFieldsAreCheckedPerLine) {
  const std::string clips = fixture("omni_demo");
  const std::vector<ParseCase> cases = {
      {"{\"prompt\": \"q\", \"video\": \"clips/none.mp4\"}\n", "p.jsonl:1: field 'video': no such file " + clips + "/clips/none.mp4"},
      {"{\"tokens\": [1], \"video\": \"clips/h0000.mp4\"}\n", "p.jsonl:1: an item with media needs a text 'prompt'"},
      {"{\"prompt\": \"q\", \"audio\": 3}\n", "p.jsonl:1: field 'audio': expected a file path"},
      {"{\"prompt\": \"q\", \"media\": [1]}\n", "p.jsonl:1: field 'media': expected an object"},
      {"{\"prompt\": \"q\", \"media\": {\"video\": \"clips/h0000.mp4\"}, \"video\": \"x\"}\n", "not both"},
      {"{\"prompt\": \"q\", \"audio\": \"clips/h0000.mp4\", \"use_audio_in_video\": true}\n",
       "field 'use_audio_in_video' needs a 'video'"},
      {"{\"prompt\": \"q\", \"video\": \"clips/h0000.mp4\"}\n", "p.jsonl:1: field 'prompt' is text but the model folder has no tokenizer.json"},
  };
  TaskLoadOptions o;
  o.media_root = clips;
  expect_parse_errors(cases, o);
}

// ---------------------------------------------------------------------------------------- CLI

std::string write_prompts(const std::string& dir, int count) {
  std::ofstream f(dir + "/prompts.jsonl");
  for (int i = 0; i < count; ++i) {
    nlohmann::json j = {{"id", "p" + std::to_string(i)}, {"tokens", sink_prompt(14 + 3 * i, 20 + i)}};
    if (i % 2) j["answer"] = std::vector<int>{5, 6};
    f << j.dump() << "\n";
  }
  return dir + "/prompts.jsonl";
}

TEST(AnalyzeCli, WritesTheReportAndFindsTheBuiltSink) {
  const std::string d = test::tmp_dir("analyze_cli");
  RemoveDirs::dirs.push_back(d);
  const std::string prompts = write_prompts(d, 3);
  auto r = test::run_cli("analyze --model " + sink_model_dir() + " --prompts " + prompts + " --out " + d +
                         "/out --tsne-iters 300 --seeds 1,2 --device cpu --vlm-tau 6 --dim-tau 6");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(r.out.find('\r'), std::string::npos) << "no progress bar when piped";
  std::ifstream jf(d + "/out/report.json");
  ASSERT_TRUE(jf.good());
  nlohmann::json j = nlohmann::json::parse(jf);
  const int L = 3, H = 4;
  for (int l = 0; l < L; ++l) {
    EXPECT_EQ(j["fig1a"]["phi_llm"][l].get<double>(), 1.0);
    EXPECT_EQ(j["fig1a"]["phi_llm_first_token_fraction"][l].get<double>(), 1.0);
    EXPECT_GT(j["dim_zeroing"]["baseline"][l].get<double>(), j["dim_zeroing"]["zeroed_this_layer"][l].get<double>() + 0.5);
  }
  EXPECT_EQ(j["d_sink"]["dims"], nlohmann::json::array({kSinkChannel}));
  EXPECT_EQ(j["sink_scores"]["scores"].size(), size_t(L));
  EXPECT_EQ(j["head_focus"]["near_uniform_heads"].get<int>(), 0);  // every head is on the built sink
  for (int l = 0; l < L; ++l)
    for (int h = 0; h < H; ++h) {
      EXPECT_GT(j["head_focus"]["first_token"][l][h].get<double>(), 0.8) << l << "." << h;
      EXPECT_LT(j["head_focus"]["entropy_ratio"][l][h].get<double>(), 0.5) << l << "." << h;
    }
  EXPECT_EQ(j["single_head"]["heads"].size(), size_t(L * H));
  EXPECT_EQ(j["pruning"]["random"].size(), 2u);
  EXPECT_EQ(j["pruning"]["steps"].front().get<int>(), 0);
  EXPECT_EQ(j["pruning"]["steps"].back().get<int>(), L * H / 2);
  EXPECT_EQ(j["pruning"]["by_sink_score"]["value"][0], j["single_head"]["baseline"]);
  const auto& e = j["geometry"]["embedding"];
  EXPECT_EQ(e["pca"]["xy"].size(), 2 * e["n"].get<size_t>());
  EXPECT_EQ(e["tsne"]["xy"].size(), 2 * e["n"].get<size_t>());
  // Sink keys are the 3 first tokens; the geometry separates them (they are far larger along one dim).
  EXPECT_GT(j["geometry"]["per_layer"]["top1_share_sink"][1].get<double>(), j["geometry"]["per_layer"]["top1_share_other"][1].get<double>());
  std::ifstream hf(d + "/out/report.html");
  std::string html((std::istreambuf_iterator<char>(hf)), std::istreambuf_iterator<char>());
  EXPECT_NE(html.find("<svg"), std::string::npos);
  EXPECT_NE(html.find("Fig. 5"), std::string::npos);
}

// Multimodal prompts: the omni demo model with two held-out clips (video + its audio track) and
// their questions, options as letters. The prefill holds the clip's 8 video and 51 audio tokens,
// the report records them, and the task metric is computed on the multimodal prefill (the model
// answers both questions right: held-out colour and beeps items it gets right in the fixture).
TEST(AnalyzeCli, MediaPromptsRunOnTheOmniDemo) {
  const std::string d = test::tmp_dir("analyze_media");
  RemoveDirs::dirs.push_back(d);
  {
    std::ofstream f(d + "/prompts.jsonl");
    f << R"({"id": "colour", "prompt": "Question: What colour is the shape? Options: A. blue B. green C. purple D. red E. white F. yellow", "media": {"video": "clips/h0000.mp4"}, "options": ["A", "B", "C", "D", "E", "F"], "answer": "C"})"
      << "\n";
    f << R"({"id": "beeps", "prompt": "Question: How many beeps do you hear? Options: A. 1 B. 2 C. 3 D. 4", "video": "clips/h0002.mp4", "options": ["A", "B", "C", "D"], "answer": "A"})"
      << "\n";
  }
  const std::string model = test::source_dir() + "/models/outro-omni-demo";
  auto r = test::run_cli("analyze --model " + model + " --prompts " + d + "/prompts.jsonl --media-root " +
                         fixture("omni_demo") + " --system \"You are a helpful assistant.\" --out " + d +
                         "/out --no-tsne --no-pruning --device cpu --threads 1");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("by modality"), std::string::npos) << r.out;
  nlohmann::json j = nlohmann::json::parse(std::ifstream(d + "/out/report.json"));
  ASSERT_EQ(j["per_prompt"].size(), 2u);
  for (const auto& p : j["per_prompt"]) {
    std::map<int, int> count;
    for (int m : p["modality"]) ++count[m];
    EXPECT_EQ(count[2], 8) << p["id"];   // video tokens: grid 2x4x4 merged 2x2
    EXPECT_EQ(count[3], 51) << p["id"];  // audio tokens of the 2.048 s AAC track
    EXPECT_EQ(int(p["modality"].size()), p["n_tokens"].get<int>());
  }
  EXPECT_EQ(j["fig1a"]["tokens_by_modality"]["video"].get<int>(), 16);
  EXPECT_EQ(j["fig1a"]["tokens_by_modality"]["audio"].get<int>(), 102);
  EXPECT_EQ(j["params"]["metric"], "accuracy");
  EXPECT_EQ(j["single_head"]["baseline"].get<double>(), 1.0) << j["single_head"]["baseline"];
  std::ifstream hf(d + "/out/report.html");
  std::string html((std::istreambuf_iterator<char>(hf)), std::istreambuf_iterator<char>());
  EXPECT_NE(html.find("video 16, audio 102"), std::string::npos) << "the summary counts the tokens by modality";
  // The committed demo model attends near uniformly in every head (its training decayed the norm
  // gains; README, "The omni demo model"): the report says so.
  const int heads = j["model"]["layers"].get<int>() * j["model"]["heads"].get<int>();
  EXPECT_EQ(j["head_focus"]["near_uniform_heads"].get<int>(), heads);
  EXPECT_NE(j["warnings"].dump().find("heads attend near uniformly"), std::string::npos) << j["warnings"].dump();
  EXPECT_NE(html.find("How focused every head is"), std::string::npos);
  // Without the media the same prompts cannot be run on a text-only model.
  auto bad = test::run_cli("analyze --model " + test::source_dir() + "/models/outro-demo --prompts " + d + "/prompts.jsonl --media-root " +
                           fixture("omni_demo") + " --out " + d + "/o2");
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.out.find("need a Qwen2.5-Omni or Qwen3-Omni thinker or Qwen2.5-VL checkpoint"), std::string::npos) << bad.out;
}

TEST(AnalyzeCli, BadInputIsOneErrorLine) {
  const std::string d = test::tmp_dir("analyze_bad");
  RemoveDirs::dirs.push_back(d);
  {
    std::ofstream(d + "/bad.jsonl") << "{\"tokens\": [1, 2]}\n{\"tokens\": [1, 2\n";
    std::ofstream(d + "/range.jsonl") << "{\"tokens\": [1, 64]}\n";
  }
  const std::string m = " --model " + sink_model_dir() + " --out " + d + "/o";
  struct Case {
    std::string args, must;
  } cases[] = {
      {"analyze" + m + " --prompts " + d + "/missing.jsonl", d + "/missing.jsonl"},
      {"analyze" + m + " --prompts " + d + "/bad.jsonl", d + "/bad.jsonl:2"},
      {"analyze" + m + " --prompts " + d + "/range.jsonl", "field 'tokens': token id 64 is outside the vocabulary [0, 64)"},
      {"analyze" + m + " --tokens 1,2,99", "token id 99"},
      {"analyze" + m, "--prompts"},
      {"analyze" + m + " --tokens 1,2 --score-sinks nope", "--score-sinks"},
      {"analyze" + m + " --tokens 1,2 --geometry-layer 7", "--geometry-layer"},
  };
  for (const auto& c : cases) {
    auto r = test::run_cli(c.args);
    EXPECT_NE(r.code, 0) << c.args;
    EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
    EXPECT_NE(r.out.find(c.must), std::string::npos) << r.out;
  }
}

}  // namespace
}  // namespace outro
