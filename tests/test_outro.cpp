// OutRo as the release computes it (src/outro): parity with the reference fixtures
// (tools/outro_fixtures.py: transformers float32 eager with the release's hook points, written from
// method.md) for every preset, decode gating mode and a custom setting; per-layer sink sets; the
// enhanced rows against plain non-causal attention; the gating's geometry; no-sink bit identity;
// presets, config files and their errors; --explain through the CLI.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/config.h"
#include "io/safetensors.h"
#include "kernels/backend.h"
#include "models/model.h"
#include "kernels/host_ops.h"
#include "outro/outro.h"
#include "runtime/session.h"
#include "test_util.h"

namespace outro {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using test::rel_err;

constexpr double kTol = 1e-4;  // relative, float32 engine vs float32 reference
const std::vector<std::string> kModels = {"q14_gqa", "q8_mha"};

std::string fixture_dir(const std::string& name) { return test::fixture("outro_release/" + name); }

struct Fixture {
  std::unique_ptr<Model> model;
  std::unique_ptr<WeightStore> ref;
  json meta;
  std::vector<int32_t> ids, quiet, steps;
  std::vector<float> t(const std::string& n) const {
    if (!ref->has(n)) ADD_FAILURE() << "fixture tensor '" << n << "' is missing (tools/outro_fixtures.py)";
    return ref->has(n) ? read_f32(ref->get(n)) : std::vector<float>{};
  }
};

const Fixture& fixture(const std::string& name) {
  static std::map<std::string, std::unique_ptr<Fixture>> cache;
  auto& f = cache[name];
  if (!f) {
    f = std::make_unique<Fixture>();
    const std::string d = fixture_dir(name);
    f->model = Model::load(d);
    f->ref = WeightStore::open(d + "/ref.safetensors");
    f->meta = json::parse(std::ifstream(d + "/ref.json"));
    f->ids = f->meta["ids"].get<std::vector<int32_t>>();
    f->quiet = f->meta["nosink_ids"].get<std::vector<int32_t>>();
    f->steps = f->meta["steps"].get<std::vector<int32_t>>();
  }
  return *f;
}

// Prompt logits (every row) and the logits of each decode step that feeds `steps` one by one.
struct Logits {
  std::vector<float> prompt;
  std::vector<std::vector<float>> steps;
};
Logits run(const Model& m, Backend& be, const std::vector<int32_t>& ids, const std::vector<int32_t>& steps,
        std::vector<Intervention*> ivs) {
  Session s(m, be, int(ids.size() + steps.size()) + 2);
  for (auto* iv : ivs) s.add_intervention(iv);
  Logits r;
  s.forward(ids, &r.prompt, true);
  for (int32_t t : steps) {
    r.steps.emplace_back();
    s.forward(&t, 1, &r.steps.back());
  }
  return r;
}

std::vector<std::vector<int>> lists(const json& j) { return j.get<std::vector<std::vector<int>>>(); }

// ------------------------------------------------------------------------------------ parity

class OutroParity : public ::testing::TestWithParam<std::string> {};

TEST_P(OutroParity, EveryPresetPromptAndDecodeStepsAndSinkSets) {
  const Fixture& f = fixture(GetParam());
  auto be = make_cpu_backend();
  for (const std::string& preset : outro_preset_names()) {
    OutRo o(outro_preset(preset));
    Logits r = run(*f.model, *be, f.ids, f.steps, {&o});
    EXPECT_LT(rel_err(r.prompt, f.t(preset + ".prompt")), kTol) << GetParam() << " " << preset;
    for (size_t i = 0; i < f.steps.size(); ++i)
      EXPECT_LT(rel_err(r.steps[i], f.t(preset + ".step" + std::to_string(i))), kTol)
          << GetParam() << " " << preset << " step " << i;
    const json& pm = f.meta["presets"][preset];
    // The sink sets are the same whatever the preset (detection runs before either edit changes h).
    EXPECT_EQ(o.layer_sinks(), lists(pm["sinks"])) << GetParam() << " " << preset;
    std::vector<std::vector<int>> enh;
    for (const auto& l : o.layers()) enh.push_back(l.enhanced);
    EXPECT_EQ(enh, lists(pm["enhanced"])) << GetParam() << " " << preset;
    for (size_t l = 0; l < o.layers().size(); ++l)
      if (pm["tau"][l].get<float>() > 0)
        EXPECT_NEAR(o.layers()[l].tau, pm["tau"][l].get<float>(), 1e-4 * pm["tau"][l].get<float>()) << l;
  }
  // The reference's baseline is transformers unchanged.
  OutRo off(outro_preset("baseline"));
  EXPECT_LT(rel_err(run(*f.model, *be, f.ids, {}, {}).prompt, f.t("baseline.prompt")), kTol);
  // OutRo acts on this model: the logits move well beyond the tolerance.
  EXPECT_GT(rel_err(f.t("outro.prompt"), f.t("baseline.prompt")), 1e-2);
}

TEST_P(OutroParity, DecodeGatingModes) {
  const Fixture& f = fixture(GetParam());
  auto be = make_cpu_backend();
  for (auto [mode, name] : {std::pair{DecodeGating::On, "on"}, std::pair{DecodeGating::Off, "off"}}) {
    OutroParams p = outro_preset("outro");
    p.decode = mode;
    OutRo o(p);
    Logits r = run(*f.model, *be, f.ids, f.steps, {&o});
    for (size_t i = 0; i < f.steps.size(); ++i)
      EXPECT_LT(rel_err(r.steps[i], f.t(std::string("outro.decode_") + name + ".step" + std::to_string(i))), kTol)
          << GetParam() << " decode " << name << " step " << i;
  }
  // With a first-token sink at every layer, the release's rule leaves the new token alone: the
  // official steps equal decode gating off, and differ from gating every new token.
  EXPECT_LT(rel_err(f.t("outro.step0"), f.t("outro.decode_off.step0")), 1e-6);
  EXPECT_GT(rel_err(f.t("outro.decode_on.step0"), f.t("outro.decode_off.step0")), 1e-4);
}

TEST_P(OutroParity, CustomSettingFromAConfigFile) {
  const Fixture& f = fixture(GetParam());
  const json& cp = f.meta["custom"]["params"];
  const std::string toml = "strategy = \"outro\"\napply_interval = " + std::to_string(cp["apply_interval"].get<int>()) +
                           "\napply_once = false\nrescale = false\ngamma = 2.0\ntemp = 0.25\nstart_layer = 1\n"
                           "end_layer = " + std::to_string(cp["end_layer"].get<int>()) + "\n";
  auto be = make_cpu_backend();  // before the OutRo object, which keeps buffers in it
  OutRo o(parse_outro_config(toml, "custom.toml", false, outro_preset("outro"), false));
  Logits r = run(*f.model, *be, f.ids, {f.steps[0]}, {&o});
  EXPECT_LT(rel_err(r.prompt, f.t("custom.prompt")), kTol);
  EXPECT_LT(rel_err(r.steps[0], f.t("custom.step0")), kTol);
  EXPECT_EQ(o.layer_sinks(), lists(f.meta["custom"]["sinks"]));
  std::vector<std::vector<int>> enh;
  for (const auto& l : o.layers()) enh.push_back(l.enhanced);
  EXPECT_EQ(enh, lists(f.meta["custom"]["enhanced"]));
}

TEST_P(OutroParity, NoSinkPromptIsTheBaselineBitForBit) {
  const Fixture& f = fixture(GetParam());
  auto be = make_cpu_backend();
  const std::vector<float> base = run(*f.model, *be, f.quiet, {f.steps[0]}, {}).prompt;
  EXPECT_LT(rel_err(base, f.t("baseline.nosink")), kTol);
  for (const std::string& preset : outro_preset_names()) {
    OutRo o(outro_preset(preset));
    Logits r = run(*f.model, *be, f.quiet, {f.steps[0]}, {&o});
    ASSERT_EQ(r.prompt.size(), base.size());
    EXPECT_EQ(std::memcmp(r.prompt.data(), base.data(), base.size() * 4), 0) << preset;
    EXPECT_FALSE(o.any_sink());
    if (preset != "baseline")
      EXPECT_NE(o.explain().find("no sink at any layer: OutRo changed nothing"), std::string::npos) << o.explain();
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, OutroParity, ::testing::ValuesIn(kModels));

// ----------------------------------------------------------------------- what each edit does

// Copies of q, k, v and of z at one layer; attached before OutRo it sees z unedited, after it edited.
class Tap : public Intervention {
 public:
  explicit Tap(int layer) : layer_(layer) {}
  std::string name() const override { return "tap"; }
  void qkv(ForwardCtx& ctx, int l, Buf q, Buf k, Buf v) override {
    if (l != layer_ || ctx.past) return;
    const ModelConfig& c = *ctx.cfg;
    get(ctx, q, size_t(ctx.n) * c.heads * c.head_dim, this->q);
    get(ctx, k, size_t(ctx.n) * c.kv_heads * c.head_dim, this->k);
    get(ctx, v, size_t(ctx.n) * c.kv_heads * c.head_dim, this->v);
  }
  void z(ForwardCtx& ctx, int l, Buf z) override {
    if (l == layer_ && !ctx.past) get(ctx, z, size_t(ctx.n) * ctx.cfg->heads * ctx.cfg->head_dim, this->zv);
  }
  std::vector<float> q, k, v, zv;

 private:
  static void get(ForwardCtx& ctx, const Buf& b, size_t n, std::vector<float>& out) {
    out.resize(n);
    ctx.be->download(b, 0, out.data(), n);
  }
  int layer_;
};

// softmax(q_r . K^T * scale) V over keys [0, nk), in double.
std::vector<double> attend(const Tap& t, const ModelConfig& c, int r, int h, int nk) {
  const int H = c.heads, KV = c.kv_heads, hd = c.head_dim, g = h / (H / KV);
  std::vector<double> s(static_cast<size_t>(nk)), out(static_cast<size_t>(hd), 0.0);
  double mx = -1e300, sum = 0;
  for (int j = 0; j < nk; ++j) {
    double a = 0;
    for (int d = 0; d < hd; ++d) a += double(t.q[(size_t(r) * H + h) * hd + d]) * t.k[(size_t(j) * KV + g) * hd + d];
    s[size_t(j)] = a / std::sqrt(double(hd));
    mx = std::max(mx, s[size_t(j)]);
  }
  for (int j = 0; j < nk; ++j) sum += s[size_t(j)] = std::exp(s[size_t(j)] - mx);
  for (int j = 0; j < nk; ++j)
    for (int d = 0; d < hd; ++d) out[size_t(d)] += s[size_t(j)] / sum * t.v[(size_t(j) * KV + g) * hd + d];
  return out;
}

TEST(OutroEnhance, EnhancedRowsArePlainNonCausalAttentionAndEachPositionOnce) {
  const Fixture& f = fixture("q14_gqa");
  const ModelConfig& c = f.model->config();
  auto be = make_cpu_backend();
  const int n = int(f.ids.size());
  for (int layer : {0, 4, 6}) {  // enhancement layers: 0 (tokens 0 and 5), 4 (9 and 16), 6 (none new)
    OutRo o(outro_preset("outro-sinkout-only"));
    Tap after(layer);
    run(*f.model, *be, f.ids, {}, {&o, &after});
    const std::vector<int>& enh = o.layers()[size_t(layer)].enhanced;
    EXPECT_EQ(enh.empty(), layer == 6) << layer;
    for (int r = 0; r < n; ++r) {
      const bool e = std::find(enh.begin(), enh.end(), r) != enh.end();
      for (int h = 0; h < c.heads; ++h) {
        const auto want = attend(after, c, r, h, e ? n : r + 1);
        for (int d = 0; d < c.head_dim; ++d)
          ASSERT_NEAR(after.zv[(size_t(r) * c.heads + h) * c.head_dim + d], want[size_t(d)], 1e-5)
              << "layer " << layer << " row " << r << " head " << h << (e ? " (enhanced)" : "");
      }
    }
  }
  // Each position is enhanced at most once, at the first enhancement layer where it is a sink.
  OutRo o(outro_preset("outro"));
  run(*f.model, *be, f.ids, {}, {&o});
  std::map<int, int> times;
  for (const auto& l : o.layers())
    for (int p : l.enhanced) ++times[p];
  EXPECT_EQ(times, (std::map<int, int>{{0, 1}, {5, 1}, {9, 1}, {16, 1}}));
}

TEST(OutroGate, NormKeptTurnedTowardTheSinkValueAndExcludedRowsUnchanged) {
  const Fixture& f = fixture("q14_gqa");
  const ModelConfig& c = f.model->config();
  const int H = c.heads, KV = c.kv_heads, hd = c.head_dim, n = int(f.ids.size());
  auto be = make_cpu_backend();
  int rotated = 0, unchanged_neg = 0;
  for (int layer = 0; layer < 12; ++layer) {
    // The rotation happens inside the layer's attention call, so every z hook sees it: the rows
    // before it come from a run that acts only on the layers before this one (end_layer = layer;
    // those layers, their sinks and exclusions are the same as in the full run).
    OutroParams upto = outro_preset("outro-align-only");
    upto.end_layer = layer;
    OutRo o0(upto), o(outro_preset("outro-align-only"));
    Tap before(layer), after(layer);
    run(*f.model, *be, f.ids, {}, {&o0, &before});
    run(*f.model, *be, f.ids, {}, {&o, &after});
    const auto& L = o.layers();
    std::vector<int> cum;  // sinks of this or any earlier layer
    for (int l = 0; l <= layer; ++l)
      for (int s : L[size_t(l)].sinks) cum.push_back(s);
    // The sink value: the mean of this layer's sinks' values per KV head (from the tap, not OutRo).
    const auto& sk = L[size_t(layer)].sinks;
    std::vector<double> vbar(size_t(KV) * hd, 0.0);
    for (int s : sk)
      for (size_t i = 0; i < vbar.size(); ++i) vbar[i] += before.v[size_t(s) * KV * hd + i] / double(sk.size());
    int here = 0;
    for (int r = 0; r < n; ++r)
      for (int h = 0; h < H; ++h) {
        const float* a = &before.zv[(size_t(r) * H + h) * hd];
        const float* b = &after.zv[(size_t(r) * H + h) * hd];
        const double* v = &vbar[size_t(h / (H / KV)) * hd];
        double na = 0, nb = 0, av = 0, bv = 0, vv = 0;
        for (int d = 0; d < hd; ++d)
          na += double(a[d]) * a[d], nb += double(b[d]) * b[d], av += a[d] * v[d], bv += b[d] * v[d], vv += v[d] * v[d];
        if (std::find(cum.begin(), cum.end(), r) != cum.end()) {
          EXPECT_EQ(std::memcmp(a, b, size_t(hd) * 4), 0) << "layer " << layer << " sink row " << r << " head " << h;
          continue;
        }
        EXPECT_NEAR(std::sqrt(nb), std::sqrt(na), 1e-5 * std::sqrt(na)) << "layer " << layer << " row " << r;
        const double ca = av / std::sqrt(na * vv), cb = bv / std::sqrt(nb * vv);
        if (ca <= 0) {
          ++unchanged_neg;
          for (int d = 0; d < hd; ++d) EXPECT_NEAR(b[d], a[d], 1e-6 * std::sqrt(na)) << "layer " << layer << " row " << r;
        } else {
          ++rotated, ++here;
          EXPECT_GT(cb, ca) << "layer " << layer << " row " << r << " head " << h;
        }
      }
    EXPECT_EQ(L[size_t(layer)].rotated, here) << layer;
  }
  EXPECT_GT(rotated, 0);
  EXPECT_GT(unchanged_neg, 0);  // both kinds occur in this prompt, so both checks ran
}

// ------------------------------------------------------------------------- presets and configs

// Φ_LLM's median, from the spec: the lower median of |h| over every value (nth_element over a copy),
// on prompts large enough for the thread pool's path: random values with ties and signed zeros,
// every value equal, half of them zero; and the row maxima as max |h| per row.
TEST(OutroDetect, MedianAndRowMaximaOfLargePromptsAreExact) {
  const int n = 240, dim = 896;
  std::mt19937 rng(11);
  std::normal_distribution<float> nd(0.f, 0.7f);
  for (int kind = 0; kind < 3; ++kind) {
    std::vector<float> h(size_t(n) * dim);
    for (size_t i = 0; i < h.size(); ++i) h[i] = kind == 1 ? -0.375f : kind == 2 && i % 2 ? 0.f : nd(rng);
    for (size_t i = 0; kind == 0 && i < h.size(); i += 7) h[i] = h[i / 3];  // ties
    if (kind == 0) h[10] = -0.f, h[11] = 0.f;
    h[size_t(17) * dim + 5] = -4000.f;
    std::vector<float> a(h.size());
    for (size_t i = 0; i < h.size(); ++i) a[i] = std::fabs(h[i]);
    std::nth_element(a.begin(), a.begin() + long((a.size() - 1) / 2), a.end());
    const float want = a[(a.size() - 1) / 2];
    PhiLLM got = phi_llm(h.data(), n, dim, 100.0, 1000.0);
    EXPECT_EQ(got.median, want) << "case " << kind;
    for (int r = 0; r < n; ++r) {
      float m = 0.f;
      for (int c = 0; c < dim; ++c) m = std::max(m, std::fabs(h[size_t(r) * dim + c]));
      ASSERT_EQ(got.row_max[size_t(r)], m) << "case " << kind << " row " << r;
    }
    EXPECT_EQ(got.sinks, std::vector<int>{17}) << "case " << kind;
    // Whatever bracket the sample gives, the median is exact: the right one, a narrow one at the
    // median, ones wholly below or above it, and the widest.
    auto bits = [](float f) {
      uint32_t b;
      std::memcpy(&b, &f, 4);
      return b;
    };
    const uint32_t m = bits(want);
    std::vector<float> rm(static_cast<size_t>(n));
    for (auto [lo, hi] : {std::pair{m, m}, std::pair{m > 3 ? m - 3 : 0u, m + 3}, std::pair{0u, m > 0 ? m - 1 : 0u},
                          std::pair{m + 1, m + 1000}, std::pair{0u, 0x7fffffffu}}) {
      EXPECT_EQ(host::phi_stats_bracket(h.data(), n, dim, rm.data(), lo, hi), want) << "case " << kind << " [" << lo << ", " << hi << "]";
      EXPECT_EQ(rm, got.row_max) << "case " << kind;
    }
  }
}

TEST(OutroConfig, PresetsAreTheReleasesSettings) {
  auto o = outro_preset("outro");
  EXPECT_TRUE(o.enhance && o.gate && o.apply_once && o.rescale && o.override_sinks.empty());
  EXPECT_EQ(o.abs_thr, 100.0);
  EXPECT_EQ(o.med_mul, 1000.0);
  EXPECT_FLOAT_EQ(o.gamma, 3.f);
  EXPECT_FLOAT_EQ(o.temp, 0.1f);
  EXPECT_EQ(o.decode, DecodeGating::Official);
  EXPECT_EQ(o.start_layer, 0);
  EXPECT_EQ(o.end(28), 26);
  EXPECT_EQ(o.interval(28), 4);
  EXPECT_EQ(o.interval(36), 5);
  EXPECT_EQ(o.interval(6), 1);
  auto s = outro_preset("outro-sinkout-only");
  EXPECT_TRUE(s.enhance && !s.gate);
  auto a = outro_preset("outro-align-only");
  EXPECT_TRUE(!a.enhance && a.gate);
  EXPECT_FALSE(outro_active(outro_preset("baseline")));
  EXPECT_NE(test::error_of([] { outro_preset("outr0"); }).find("outro-sinkout-only"), std::string::npos);
}

TEST(OutroConfig, JsonAndTomlSetEveryParameter) {
  const std::string toml =
      "# OutRo parameters\n"
      "strategy = \"outro-align-only\"  # base preset\n"
      "start_layer = 1\nend_layer = 6\napply_interval = 2\napply_once = false\nabs_thr = 50\nmed_mul = 2.5e2\n"
      "gamma = 2\ntemp = 0.2\nrescale = false\nenhance = true\nenable_relu_tanh = false\n"
      "decode_gating = \"on\"\noverride_sinks = [3, 0]\n";
  const std::string js =
      R"({"preset": "outro-align-only", "start_layer": 1, "end_layer": 6, "apply_interval": 2, "apply_once": false,
          "abs_thr": 50, "med_mul": 250, "gamma": 2, "temp": 0.2, "rescale": false, "enhance": true, "gate": false,
          "decode_gating": "on", "override_sinks": [3, 0]})";
  for (auto [text, is_json] : {std::pair{toml, false}, std::pair{js, true}}) {
    OutroParams p = parse_outro_config(text, "cfg", is_json, outro_preset("outro"), false);
    EXPECT_EQ(p.strategy, "outro-align-only");
    EXPECT_EQ(p.start_layer, 1);
    EXPECT_EQ(p.end_layer, 6);
    EXPECT_EQ(p.apply_interval, 2);
    EXPECT_FALSE(p.apply_once);
    EXPECT_EQ(p.abs_thr, 50.0);
    EXPECT_EQ(p.med_mul, 250.0);
    EXPECT_FLOAT_EQ(p.gamma, 2.f);
    EXPECT_FLOAT_EQ(p.temp, 0.2f);
    EXPECT_FALSE(p.rescale);
    EXPECT_TRUE(p.enhance);
    EXPECT_FALSE(p.gate);
    EXPECT_EQ(p.decode, DecodeGating::On);
    EXPECT_EQ(p.override_sinks, (std::vector<int>{3, 0}));
  }
  // An explicit --strategy wins over the file's; the file's other keys still apply.
  OutroParams p = parse_outro_config("strategy = \"outro\"\nenhance = false\n", "c.toml", false,
                                     outro_preset("outro-sinkout-only"), true);
  EXPECT_EQ(p.strategy, "outro-sinkout-only");
  EXPECT_FALSE(p.enhance);
  EXPECT_FALSE(p.gate);
}

TEST(OutroConfig, ErrorsNameTheFileAndTheKey) {
  struct Bad {
    std::string text;
    bool json;
    std::vector<std::string> mention;
  };
  for (const Bad& b : std::vector<Bad>{
           {"gamma = 3\nlambda = 0.2\n", false, {"my.toml:2", "unknown key 'lambda'"}},
           {R"({"l_out": 2})", true, {"my.toml", "unknown key 'l_out'"}},
           {"apply_interval = 0\n", false, {"my.toml:1", "'apply_interval'", ">= 1"}},
           {"temp = 0\n", false, {"my.toml:1", "'temp'", "> 0"}},
           {"temp = -0.1\n", false, {"'temp'", "> 0"}},
           {"gamma = \"big\"\n", false, {"'gamma'"}},
           {"decode_gating = \"sometimes\"\n", false, {"'decode_gating'", "\"official\", \"on\" or \"off\""}},
           {"override_sinks = [0, -1]\n", false, {"'override_sinks'"}},
           {"override_sinks = \"valu\xd1\"\n", false, {"my.toml:1", "'override_sinks'"}},
           {"rescale = 1\n", false, {"'rescale'", "true or false"}},
           {"start_layer = 1.5\n", false, {"'start_layer'"}},
           {"gate = true\nenable_relu_tanh = true\n", false, {"my.toml", "same thing"}},
           {"strategy = \"fast\"\n", false, {"'strategy'", "unknown strategy 'fast'"}},
           {"gamma = 1\ngamma = 2\n", false, {"my.toml:2", "set twice"}},
           {"[outro]\ngamma = 0.1\n", false, {"my.toml:1", "tables"}},
           {"gamma 0.1\n", false, {"my.toml:1", "key = value"}},
           {"{\"gamma\": }", true, {"my.toml", "not valid JSON"}},
       }) {
    const std::string e = test::error_of([&] { parse_outro_config(b.text, "my.toml", b.json, outro_preset("outro"), false); });
    for (const auto& s : b.mention) EXPECT_NE(e.find(s), std::string::npos) << "'" << e << "' lacks '" << s << "'";
  }
}

TEST(OutroConfig, LayerRangesOutsideTheModelAreRejected) {
  const ModelConfig& c = fixture("q8_mha").model->config();  // 8 layers
  auto err = [&](OutroParams p) { return test::error_of([&] { validate_outro(p, c, "x.toml"); }); };
  OutroParams p = outro_preset("outro");
  p.start_layer = 8;
  EXPECT_NE(err(p).find("x.toml: start_layer = 8"), std::string::npos) << err(p);
  p = outro_preset("outro");
  p.end_layer = 9;
  EXPECT_NE(err(p).find("x.toml: end_layer = 9"), std::string::npos) << err(p);
  p.end_layer = 8;
  EXPECT_EQ(err(p), "<no error>");
  p.start_layer = 5, p.end_layer = 3;
  EXPECT_NE(err(p).find("before start_layer"), std::string::npos) << err(p);
  // An override position past the prompt is named when the prompt runs.
  p = outro_preset("outro");
  p.override_sinks = {40};
  auto be = make_cpu_backend();
  OutRo o(p);
  EXPECT_NE(test::error_of([&] { run(*fixture("q8_mha").model, *be, fixture("q8_mha").ids, {}, {&o}); })
                .find("override_sinks position 40 is outside the prompt"),
            std::string::npos);
}

TEST(OutroOverride, GivenPositionsReplaceDetectionAndActOnAModelWithoutSinks) {
  const Fixture& f = fixture("q8_mha");
  auto be = make_cpu_backend();
  OutroParams p = outro_preset("outro");
  p.override_sinks = {2};
  OutRo o(p);
  const auto base = run(*f.model, *be, f.quiet, {}, {}).prompt;
  const auto r = run(*f.model, *be, f.quiet, {}, {&o}).prompt;
  EXPECT_GT(rel_err(r, base), 1e-3);
  for (size_t l = 0; l < o.layers().size(); ++l)
    EXPECT_EQ(o.layers()[l].sinks, l + 2 < o.layers().size() ? std::vector<int>{2} : std::vector<int>{}) << l;
  EXPECT_NE(o.explain().find("research override"), std::string::npos) << o.explain();
}

// ----------------------------------------------------------------------------------------- CLI

std::string ids_arg(const std::vector<int32_t>& ids) {
  std::string s;
  for (int32_t i : ids) s += (s.empty() ? "" : ",") + std::to_string(i);
  return s;
}

TEST(OutroCli, ExplainListsTheSinksPerLayerAndSaysWhenNothingChanged) {
  const Fixture& f = fixture("q14_gqa");
  const std::string m = fixture_dir("q14_gqa");
  auto r = test::run_cli("generate --model " + m + " --tokens " + ids_arg(f.ids) +
                         " --max-new-tokens 2 --greedy --strategy outro --explain");
  ASSERT_EQ(r.code, 0) << r.out;
  for (const char* s : {"outro (strategy outro): enhancement on, gated rotation on", "layers [0, 12) of 14",
                        "enhancement every 2 layers", "layer 0: tau", "sinks [0, 5]; enhanced [0, 5]",
                        "layer 4: tau", "sinks [0, 9, 16]; enhanced [9, 16]", "layer 2: tau",
                        "(token, head) outputs", "0 in decode steps", "1 decode step(s)"})
    EXPECT_NE(r.out.find(s), std::string::npos) << "missing '" << s << "' in:\n" << r.out;
  r = test::run_cli("generate --model " + m + " --tokens " + ids_arg(f.quiet) +
                    " --max-new-tokens 1 --strategy outro --explain");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("no sink at any layer: OutRo changed nothing"), std::string::npos) << r.out;
  const std::string d = test::tmp_dir("outro_cli");
  std::ofstream(d + "/bad.toml") << "gamma = 3\nend_layer = 15\n";
  r = test::run_cli("generate --model " + m + " --tokens 5,6 --outro-config " + d + "/bad.toml");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("bad.toml: end_layer = 15"), std::string::npos) << r.out;
  std::ofstream(d + "/unk.toml") << "lambada = 0.2\n";
  r = test::run_cli("generate --model " + m + " --tokens 5,6 --outro-config " + d + "/unk.toml");
  EXPECT_NE(r.out.find("unk.toml:1: unknown key 'lambada'"), std::string::npos) << r.out;
  fs::remove_all(d);
}

// A model folder's sink_thresholds.json: applied to OutRo and to analyze's Φ_LLM unless a config
// or the flags set thresholds; said where they came from; a bad file is an error naming it.
TEST(OutroCli, ModelFolderThresholdsAreAppliedAndNamed) {
  const Fixture& f = fixture("q14_gqa");
  const std::string src = fixture_dir("q14_gqa"), d = test::tmp_dir("outro_thr"), m = d + "/model";
  fs::create_directories(m);
  for (const char* name : {"config.json", "model.safetensors"}) fs::copy_file(src + "/" + name, m + "/" + name);
  const std::string gen = "generate --model " + m + " --tokens " + ids_arg(f.ids) + " --max-new-tokens 1 --strategy outro --explain";
  auto r = test::run_cli(gen);  // no file: the release's thresholds find the planted sinks
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("thresholds from the release's defaults"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("sinks [0, 5]"), std::string::npos) << r.out;
  std::ofstream(m + "/sink_thresholds.json") << R"({"abs_thr": 1e9, "med_mul": 0, "note": "calibrated for a test"})";
  r = test::run_cli(gen);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("abs_thr 1e+09, med_mul 0"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("thresholds from " + m + "/sink_thresholds.json"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("no sink at any layer: OutRo changed nothing"), std::string::npos) << r.out;
  std::ofstream(d + "/thr.toml") << "abs_thr = 100\n";  // a config's thresholds win over the folder's
  r = test::run_cli(gen + " --outro-config " + d + "/thr.toml");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("thresholds from " + d + "/thr.toml"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("sinks [0, 5]"), std::string::npos) << r.out;
  r = test::run_cli("analyze --model " + m + " --tokens " + ids_arg(f.ids) + " --out " + d + "/rep --no-pruning --no-tsne --no-single-head --no-zeroing --quiet");
  ASSERT_EQ(r.code, 0) << r.out;
  std::ifstream rf(d + "/rep/report.json");
  const auto rep = nlohmann::json::parse(rf);
  EXPECT_EQ(rep["params"]["phi_llm"]["from"], m + "/sink_thresholds.json");
  EXPECT_EQ(rep["params"]["phi_llm"]["tau_abs"], 1e9);
  r = test::run_cli("analyze --model " + m + " --tokens " + ids_arg(f.ids) + " --tau-abs 100 --out " + d + "/rep2 --no-pruning --no-tsne --no-single-head --no-zeroing --quiet");
  ASSERT_EQ(r.code, 0) << r.out;
  std::ifstream rf2(d + "/rep2/report.json");
  EXPECT_EQ(nlohmann::json::parse(rf2)["params"]["phi_llm"]["tau_abs"], 100.0);
  // Bad files: each error names the file and the key.
  const std::vector<std::pair<std::string, std::string>> bad = {
      {R"({"abs_thr": 10, "med_mul": 5, "lambda": 1})", "unknown key 'lambda'"},
      {R"({"abs_thr": 10})", "key 'med_mul' is missing"},
      {R"({"abs_thr": -1, "med_mul": 5})", "key 'abs_thr': expected a number >= 0"},
      {R"({"abs_thr": 10, "med_mul": 5, "note": 3})", "key 'note': expected a string"},
      {R"(abs_thr = 10)", "not valid JSON"}};
  for (const auto& [text, want] : bad) {
    std::ofstream(m + "/sink_thresholds.json", std::ios::trunc) << text;
    r = test::run_cli(gen);
    EXPECT_NE(r.code, 0) << text;
    EXPECT_NE(r.out.find(m + "/sink_thresholds.json: " + want), std::string::npos) << r.out;
    EXPECT_THROW(read_model_thresholds(m), Error) << text;
  }
  fs::remove(m + "/sink_thresholds.json");
  EXPECT_FALSE(read_model_thresholds(m).present);
  fs::remove_all(d);
}

}  // namespace
}  // namespace outro
