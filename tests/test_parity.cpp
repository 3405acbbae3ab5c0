// Parity with the reference implementation (transformers), on tiny random checkpoints made by
// tools/make_fixtures.py: logits, hidden states, q/k/v/z, attention patterns, greedy decoding,
// head ablation and sink-key dimension zeroing.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "kernels/backend.h"
#include "models/model.h"
#include "runtime/hooks.h"
#include "runtime/intervention.h"
#include "runtime/sampler.h"
#include "runtime/generate.h"
#include "runtime/session.h"
#include "test_util.h"

namespace outro {
namespace {

namespace fs = std::filesystem;
using test::fixture;
using test::rel_err;

const std::vector<std::string> kModels = {"qwen2_gqa_f32",    "qwen2_tied_f32", "qwen2_mqa_bf16",
                                          "llama_gqa_f32",    "llama_bias_f16", "qwen2_sharded_f32",
                                          "omni_thinker_f32", "vl_f32"};

struct Ref {
  std::unique_ptr<WeightStore> store;
  std::vector<float> f(const std::string& n) const { return read_f32(store->get(n)); }
  bool has(const std::string& n) const { return store->has(n); }
  std::vector<int32_t> ids(const std::string& n = "input_ids") const {
    auto v = read_i64(store->get(n));
    return std::vector<int32_t>(v.begin(), v.end());
  }
};

Ref load_ref(const std::string& name) {
  Ref r;
  r.store = WeightStore::open(fixture("models/" + name + "/ref.safetensors"));
  return r;
}

// Logits of every position, with hooks recorded.
std::vector<float> run_all(const Model& m, Backend& be, const std::vector<int32_t>& ids, Recorder* rec,
                           std::vector<Intervention*> ivs = {}) {
  Session s(m, be, int(ids.size()) + 8);
  if (rec) s.add_observer(rec);
  for (auto* iv : ivs) s.add_intervention(iv);
  std::vector<float> logits;
  s.forward(ids, &logits, true);
  return logits;
}

// Float32 products throughout: these compare with transformers' float32 math at 1e-4.
class Parity : public ::testing::TestWithParam<std::string> {
  test::F32Products pin_;
};

TEST_P(Parity, LogitsHiddenStatesAndAttention) {
  const std::string name = GetParam();
  const std::string dir = fixture("models/" + name);
  ASSERT_TRUE(fs::exists(dir + "/ref.safetensors")) << "missing fixture " << dir << " (make it with tools/make_fixtures.py)";
  auto m = Model::load(dir);
  auto be = make_cpu_backend();
  Ref ref = load_ref(name);
  auto ids = ref.ids();
  const auto& c = m->config();
  const int L = c.layers, n = int(ids.size());
  Recorder rec(all_hook_names(L));
  auto logits = run_all(*m, *be, ids, &rec);

  const bool f32 = m->layers[0].q->dtype == DType::F32;
  if (f32) {
    EXPECT_LT(rel_err(logits, ref.f("logits")), 1e-4) << name;
  } else {
    ASSERT_TRUE(ref.has("logits_f32math"));
    EXPECT_LT(rel_err(logits, ref.f("logits_f32math")), 1e-4) << name << " (same weights, float32 math)";
    EXPECT_LT(rel_err(logits, ref.f("logits")), 2e-2) << name << " (reference run in 16-bit)";
  }
  // Hidden states: hidden.0 = embedding output, hidden.i = output of layer i-1, hidden.L = after the final norm.
  const double htol = f32 ? 1e-4 : 1e-3;
  for (int i = 0; i <= L; ++i) {
    std::string hook = i == 0 ? kHookEmbed : i == L ? kHookLnFinal : hook_name(i - 1, Hook::ResidPost);
    auto* e = rec.get(hook);
    ASSERT_NE(e, nullptr) << hook;
    EXPECT_LT(rel_err(e->data, ref.f("hidden." + std::to_string(i))), htol) << name << " " << hook;
  }
  for (int l = 0; l < L; ++l) {
    auto* pat = rec.get(hook_name(l, Hook::Pattern));
    ASSERT_NE(pat, nullptr);
    EXPECT_EQ(pat->shape, (std::vector<int64_t>{c.heads, n, n}));
    EXPECT_LT(test::max_abs_diff(pat->data.data(), ref.f("attn." + std::to_string(l)).data(), pat->data.size()), htol)
        << name << " attn." << l;
    // q [H, n, hd] in the reference, [n, H, hd] at the hook point
    for (auto [hk, key, heads] : {std::tuple{Hook::Q, "q.", c.heads}, std::tuple{Hook::K, "k.", c.kv_heads},
                                  std::tuple{Hook::V, "v.", c.kv_heads}}) {
      if (!ref.has(key + std::to_string(l))) continue;
      auto r = ref.f(key + std::to_string(l));
      auto* e = rec.get(hook_name(l, hk));
      ASSERT_NE(e, nullptr);
      std::vector<float> t(r.size());
      const int hd = c.head_dim;
      for (int h = 0; h < heads; ++h)
        for (int i = 0; i < n; ++i)
          for (int d = 0; d < hd; ++d) t[(size_t(h) * n + i) * hd + d] = e->data[(size_t(i) * heads + h) * hd + d];
      EXPECT_LT(rel_err(t, r), htol) << name << " " << key << l;
    }
    if (ref.has("z." + std::to_string(l))) {
      auto* e = rec.get(hook_name(l, Hook::Z));
      ASSERT_NE(e, nullptr);
      EXPECT_LT(rel_err(e->data, ref.f("z." + std::to_string(l))), htol) << name << " z." << l;
    }
  }
}

TEST_P(Parity, GreedyDecodingWithCacheMatchesReference) {
  const std::string name = GetParam();
  const std::string dir = fixture("models/" + name);
  ASSERT_TRUE(fs::exists(dir + "/ref.safetensors")) << "missing fixture " << dir;
  auto m = Model::load(dir);
  auto be = make_cpu_backend();
  Ref ref = load_ref(name);
  auto ids = ref.ids();
  auto want = ref.ids("greedy");
  Session s(*m, *be, int(ids.size() + want.size()) + 1);
  std::vector<float> logits;
  s.forward(ids, &logits, false);
  std::vector<int32_t> got;
  for (size_t k = 0; k < want.size(); ++k) {
    int id = argmax(logits.data(), m->config().vocab);
    got.push_back(id);
    s.forward(&id, 1, &logits, false);
  }
  EXPECT_EQ(got, want) << name;
  // The same through Session::forward_argmax (greedy decoding without copying the logits back) and
  // through generate(), which uses it.
  Session g(*m, *be, int(ids.size() + want.size()) + 1);
  std::vector<int32_t> got2 = {g.forward_argmax(ids.data(), int(ids.size()))};
  while (got2.size() < want.size()) got2.push_back(g.forward_argmax(&got2.back(), 1));
  EXPECT_EQ(got2, want) << name;
  GenerateOptions o;
  o.max_new_tokens = int(want.size());
  GenerateResult r = generate(g, ids, o, nullptr, {});
  EXPECT_EQ(std::vector<int32_t>(r.tokens.begin(), r.tokens.end()), want) << name;
}

TEST_P(Parity, IncrementalDecodingEqualsFullRecompute) {
  const std::string name = GetParam();
  const std::string dir = fixture("models/" + name);
  ASSERT_TRUE(fs::exists(dir + "/ref.safetensors")) << "missing fixture " << dir;
  auto m = Model::load(dir);
  auto be = make_cpu_backend();
  auto ids = load_ref(name).ids();
  const int V = m->config().vocab, n = int(ids.size());
  auto full = run_all(*m, *be, ids, nullptr);
  Session s(*m, *be, n);
  std::vector<float> step;
  s.forward(ids.data(), 5, &step, true);
  for (int i = 5; i < n; ++i) {
    s.forward(&ids[size_t(i)], 1, &step, false);
    std::vector<float> want(full.begin() + long(i) * V, full.begin() + long(i + 1) * V);
    EXPECT_LT(rel_err(step, want), 1e-5) << name << " position " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Parity, ::testing::ValuesIn(kModels),
                         [](const auto& info) { return info.param; });

TEST(ParityInterventions, HeadAblationMatchesZeroedOprojColumns) {
  for (const std::string name : {"qwen2_gqa_f32", "qwen2_tied_f32"}) {
    auto m = Model::load(fixture("models/" + name));
    auto be = make_cpu_backend();
    Ref ref = load_ref(name);
    auto ids = ref.ids();
    int found = 0;
    for (auto [l, h] : {std::pair{1, 2}, std::pair{0, 0}}) {
      std::string key = "ablate.l" + std::to_string(l) + "h" + std::to_string(h) + ".logits";
      if (!ref.has(key)) continue;
      ++found;
      HeadAblation ab({{l, h}});
      auto logits = run_all(*m, *be, ids, nullptr, {&ab});
      EXPECT_LT(rel_err(logits, ref.f(key)), 1e-4) << name << " " << key;
      auto plain = run_all(*m, *be, ids, nullptr);
      EXPECT_GT(rel_err(plain, ref.f(key)), 1e-3) << "ablating the head must change the logits";
    }
    EXPECT_EQ(found, 2) << name;
  }
}

TEST(ParityInterventions, SinkKeyDimensionZeroing) {
  for (const std::string name : {"qwen2_gqa_f32", "qwen2_tied_f32"}) {
    auto m = Model::load(fixture("models/" + name));
    auto be = make_cpu_backend();
    Ref ref = load_ref(name);
    auto ids = ref.ids();
    const int L = m->config().layers;
    SinkDimZeroing dz({0}, {});
    std::vector<std::string> names;
    for (int l = 0; l < L; ++l) names.push_back(hook_name(l, Hook::Pattern));
    Recorder rec(names);
    auto logits = run_all(*m, *be, ids, &rec, {&dz});
    EXPECT_LT(rel_err(logits, ref.f("dimzero.logits")), 1e-4) << name;
    for (int l = 0; l < L; ++l) {
      auto* e = rec.get(names[size_t(l)]);
      ASSERT_NE(e, nullptr);
      EXPECT_LT(test::max_abs_diff(e->data.data(), ref.f("dimzero.attn." + std::to_string(l)).data(), e->data.size()), 1e-4);
    }
  }
}

}  // namespace
}  // namespace outro
