// Qwen3-Omni's MoE thinker decoder (models/qwen3_moe.cpp) against transformers 5.17, on the tiny
// random checkpoints of tools/qwen3_omni_fixtures.py (tests/fixtures/qwen3_omni/): logits, residual
// stream, router logits and chosen experts, the KV-cached decode, a mixed prompt (embeddings, 3-D
// interleaved M-RoPE positions, DeepStack), the released and the save_pretrained layouts; the
// errors for checkpoints that contradict their config; OutRo on a Qwen3-MoE with planted sinks.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/config.h"
#include "io/safetensors.h"
#include "kernels/backend.h"
#include "kernels/host_ops.h"
#include "models/model.h"
#include "outro/outro.h"
#include "runtime/hooks.h"
#include "runtime/session.h"
#include "test_util.h"

namespace outro {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using test::rel_err;

constexpr double kTol = 1e-4;  // relative, float32 engine vs float32 reference
const std::vector<std::string> kText = {"e4k2_mha", "e8k3_step2_gqa", "e6k1_hd16_gqa", "e5k5_norm_off",
                                        "released_e4k2"};

std::string dir_of(const std::string& name) { return test::fixture("qwen3_omni/" + name); }

struct Fixture {
  std::unique_ptr<Model> model;
  std::unique_ptr<WeightStore> ref;
  json meta;
  bool has(const std::string& n) const { return ref->has(n); }
  std::vector<float> t(const std::string& n) const {
    if (!ref->has(n)) ADD_FAILURE() << "fixture tensor '" << n << "' is missing (tools/qwen3_omni_fixtures.py)";
    return ref->has(n) ? read_f32(ref->get(n)) : std::vector<float>{};
  }
};

const Fixture& fixture(const std::string& name) {
  static std::map<std::string, std::unique_ptr<Fixture>> cache;
  auto& f = cache[name];
  if (!f) {
    f = std::make_unique<Fixture>();
    f->model = Model::load(dir_of(name));
    f->ref = WeightStore::open(dir_of(name) + "/ref.safetensors");
    f->meta = json::parse(std::ifstream(dir_of(name) + "/ref.json"));
  }
  return *f;
}

std::vector<int> sparse_layers(const ModelConfig& c) {
  std::vector<int> out;
  for (int l = 0; l < c.layers; ++l)
    if (c.moe_layer(l)) out.push_back(l);
  return out;
}

std::vector<std::string> every_hook(const ModelConfig& c) {
  auto names = all_hook_names(c.layers);
  for (auto& n : moe_hook_names(sparse_layers(c))) names.push_back(n);
  return names;
}

// ------------------------------------------------------------------------------ the op

TEST(Qwen3OmniOps, ScatterAddRowsAddsWeightedRowsInOrder) {
  auto be = make_cpu_backend();
  const int dim = 3;
  std::vector<float> y = {1, 2, 3, 4, 5, 6, 7, 8, 9}, x = {1, 1, 1, 2, 2, 2, 10, 20, 30};
  const std::vector<int32_t> idx = {2, 0, 2};
  const std::vector<float> scale = {0.5f, -1.f, 2.f};
  Buf by = be->alloc(y.size()), bx = be->alloc(x.size());
  be->upload(by, 0, y.data(), y.size());
  be->upload(bx, 0, x.data(), x.size());
  be->scatter_add_rows(by, bx, dim, idx.data(), scale.data(), 3);
  std::vector<float> got(y.size());
  be->download(by, 0, got.data(), got.size());
  // row 0: 1..3 - 2; row 1 untouched; row 2: 7..9 + 0.5 + (20, 40, 60)
  EXPECT_EQ(got, (std::vector<float>{-1, 0, 1, 4, 5, 6, 27.5f, 48.5f, 69.5f}));
  // The portable default (download, host, upload) that other backends fall back to agrees.
  std::vector<float> host = y;
  host::scatter_add_rows(host.data(), x.data(), dim, idx.data(), scale.data(), 3);
  EXPECT_EQ(host, got);
  be->release(by);
  be->release(bx);
}

// ------------------------------------------------------------------------------ config

TEST(Qwen3OmniConfig, ThinkerAndReleasedConfigsGiveTheMoeSettings) {
  const ModelConfig a = load_config(dir_of("e8k3_step2_gqa"));
  EXPECT_EQ(a.arch, Arch::Qwen3OmniMoeThinker);
  EXPECT_FALSE(a.omni_released);
  EXPECT_EQ(a.text_section, "text_config.");
  EXPECT_EQ(a.experts, 8);
  EXPECT_EQ(a.experts_per_tok, 3);
  EXPECT_EQ(a.moe_intermediate, 12);
  EXPECT_EQ(a.intermediate, 40);
  EXPECT_EQ(a.sparse_step, 2);
  EXPECT_FALSE(a.norm_topk);
  EXPECT_TRUE(a.qk_norm);
  EXPECT_FALSE(a.qkv_bias);
  EXPECT_TRUE(a.mrope_interleaved);
  EXPECT_EQ(a.mrope_section, (std::vector<int>{2, 1, 1}));
  EXPECT_FLOAT_EQ(a.rope_theta, 1e6f);
  // (l + 1) % 2 == 0 and not in mlp_only_layers [3]: only layer 1 is sparse.
  EXPECT_EQ(sparse_layers(a), (std::vector<int>{1}));

  const ModelConfig r = load_config(dir_of("released_e4k2"));
  EXPECT_EQ(r.arch, Arch::Qwen3OmniMoeThinker);
  EXPECT_TRUE(r.omni_released);
  EXPECT_EQ(r.text_section, "thinker_config.text_config.");
  EXPECT_NE(std::find(r.other_components.begin(), r.other_components.end(), "code2wav"), r.other_components.end());
  EXPECT_NE(std::find(r.other_components.begin(), r.other_components.end(), "talker"), r.other_components.end());
  EXPECT_EQ(sparse_layers(r), (std::vector<int>{1, 2}));  // mlp_only_layers [0]
  EXPECT_TRUE(r.norm_topk);
}

json config_of(const std::string& name) { return json::parse(std::ifstream(dir_of(name) + "/config.json")); }

std::string parse_error(const json& j) {
  return test::error_of([&] { parse_config(j.dump(), "cfg.json"); });
}

TEST(Qwen3OmniConfig, ContradictionsNameTheField) {
  json j = config_of("e4k2_mha");
  j["text_config"]["num_experts_per_tok"] = 5;
  std::string e = parse_error(j);
  EXPECT_NE(e.find("text_config.num_experts_per_tok"), std::string::npos) << e;
  EXPECT_NE(e.find("more than num_experts 4"), std::string::npos) << e;

  j = config_of("e4k2_mha");
  j["text_config"]["decoder_sparse_step"] = 0;
  e = parse_error(j);
  EXPECT_NE(e.find("text_config.decoder_sparse_step"), std::string::npos) << e;

  j = config_of("e4k2_mha");
  j["text_config"]["mlp_only_layers"] = {0, 7};
  e = parse_error(j);
  EXPECT_NE(e.find("mlp_only_layers: expected layer indices in [0, 2)"), std::string::npos) << e;

  j = config_of("released_e4k2");
  j["thinker_config"]["text_config"].erase("moe_intermediate_size");
  e = parse_error(j);
  EXPECT_NE(e.find("thinker_config.text_config.moe_intermediate_size is missing"), std::string::npos) << e;
}

// ------------------------------------------------------------------------------ parity

class Qwen3Parity : public ::testing::TestWithParam<std::string> {};

TEST_P(Qwen3Parity, TextLogitsResidualStreamRouterAndExperts) {
  const Fixture& f = fixture(GetParam());
  const ModelConfig& c = f.model->config();
  auto be = make_cpu_backend();
  const auto ids = f.meta["text_ids"].get<std::vector<int32_t>>();
  const int n = int(ids.size());
  Recorder rec(every_hook(c));
  Session s(*f.model, *be, n + 4);
  s.add_observer(&rec);
  std::vector<float> logits;
  s.forward(ids, &logits, true);
  const double err = rel_err(logits, f.t("text.logits"));
  EXPECT_LT(err, kTol) << GetParam();
  std::printf("[ qwen3_omni ] %s: text logits max rel err %.3g\n", GetParam().c_str(), err);
  for (int l = 0; l < c.layers; ++l) {
    const std::string L = std::to_string(l);
    EXPECT_LT(rel_err(rec.get(hook_name(l, Hook::ResidPost))->data, f.t("text.resid_post." + L)), kTol) << l;
    EXPECT_LT(rel_err(rec.get(hook_name(l, Hook::MlpOut))->data, f.t("text.mlp_out." + L)), kTol) << l;
    const auto* router = rec.get(hook_name(l, Hook::Router));
    const auto* experts = rec.get(hook_name(l, Hook::Experts));
    ASSERT_EQ(router != nullptr, c.moe_layer(l)) << "layer " << l << ": router hook only on sparse layers";
    ASSERT_EQ(f.has("text.router." + L), c.moe_layer(l)) << "the reference agrees which layers are sparse";
    if (!router) continue;
    EXPECT_EQ(router->shape, (std::vector<int64_t>{n, c.experts}));
    EXPECT_LT(rel_err(router->data, f.t("text.router." + L)), kTol) << l;
    ASSERT_NE(experts, nullptr);
    EXPECT_EQ(experts->shape, (std::vector<int64_t>{n, c.experts_per_tok}));
    EXPECT_EQ(experts->data, f.t("text.experts." + L)) << "chosen experts, in the router's order, layer " << l;
  }
}

TEST_P(Qwen3Parity, CachedDecodeMatchesTheReferenceCache) {
  const Fixture& f = fixture(GetParam());
  const ModelConfig& c = f.model->config();
  auto be = make_cpu_backend();
  const auto ids = f.meta["text_ids"].get<std::vector<int32_t>>();
  Session s(*f.model, *be, int(ids.size()));
  std::vector<float> all, step;
  s.forward(ids.data(), 9, &all, true);
  for (size_t i = 9; i < ids.size(); ++i) {
    s.forward(&ids[i], 1, &step);
    all.insert(all.end(), step.begin(), step.end());
  }
  ASSERT_EQ(all.size(), ids.size() * size_t(c.vocab));
  EXPECT_LT(rel_err(all, f.t("text.cached_logits")), kTol) << GetParam();
  // And greedy decoding's argmax path agrees with the logits.
  Session g(*f.model, *be, int(ids.size()));
  const int32_t best = g.forward_argmax(ids.data(), int(ids.size()));
  const auto ref = f.t("text.logits");
  const float* last = ref.data() + (ids.size() - 1) * size_t(c.vocab);
  EXPECT_EQ(best, int32_t(std::max_element(last, last + c.vocab) - last));
}

TEST_P(Qwen3Parity, MixedPromptEmbedsInterleavedMropeAndDeepStack) {
  const Fixture& f = fixture(GetParam());
  const ModelConfig& c = f.model->config();
  auto be = make_cpu_backend();
  const auto ids = f.meta["mixed_ids"].get<std::vector<int32_t>>();
  const int n = int(ids.size()), D = c.hidden;
  const auto embeds = f.t("mixed.embeds");
  const auto posf = f.t("mixed.positions");
  const auto vis = f.t("mixed.visual");
  const auto ds = f.t("mixed.deepstack");
  const auto* dsi = f.ref->find("mixed.deepstack");
  ASSERT_NE(dsi, nullptr);
  const int n_ds = int(dsi->shape[0]), n_vis = int(dsi->shape[1]);
  std::vector<int32_t> pos(posf.begin(), posf.end());
  std::vector<uint8_t> modality(static_cast<size_t>(n));
  std::vector<int32_t> rows;
  for (int i = 0; i < n; ++i)
    if (vis[size_t(i)] != 0.f) modality[size_t(i)] = 1, rows.push_back(i);
  ASSERT_EQ(int(rows.size()), n_vis);
  std::vector<std::vector<float>> feats;
  for (int k = 0; k < n_ds; ++k)
    feats.emplace_back(ds.begin() + size_t(k) * n_vis * D, ds.begin() + size_t(k + 1) * n_vis * D);

  Recorder rec(every_hook(c));
  Session s(*f.model, *be, n + 2);
  s.add_observer(&rec);
  s.set_deepstack(feats, rows);
  std::vector<float> logits;
  s.forward_embeds(ids.data(), n, embeds.data(), modality.data(), pos.data(), &logits, true);
  const double err = rel_err(logits, f.t("mixed.logits"));
  EXPECT_LT(err, kTol) << GetParam();
  std::printf("[ qwen3_omni ] %s: mixed prompt logits max rel err %.3g\n", GetParam().c_str(), err);
  for (int l = 0; l < c.layers; ++l)
    EXPECT_LT(rel_err(rec.get(hook_name(l, Hook::ResidPost))->data, f.t("mixed.resid_post." + std::to_string(l))),
              kTol)
        << "layer " << l << " (before DeepStack's addition)";
  // Without the DeepStack features the logits differ: the test above checks the addition.
  Session plain(*f.model, *be, n + 2);
  std::vector<float> other;
  plain.forward_embeds(ids.data(), n, embeds.data(), modality.data(), pos.data(), &other, true);
  EXPECT_GT(rel_err(other, f.t("mixed.logits")), 1e-3);
  // The features apply to one call only.
  EXPECT_NO_THROW(plain.forward(ids.data(), 1, &other));
}

TEST_P(Qwen3Parity, ObserversChangeNothing) {
  const Fixture& f = fixture(GetParam());
  auto be = make_cpu_backend();
  const auto ids = f.meta["text_ids"].get<std::vector<int32_t>>();
  std::vector<float> a, b;
  {
    Session s(*f.model, *be, int(ids.size()));
    s.forward(ids, &a, true);
  }
  Recorder rec(every_hook(f.model->config()));
  Session s(*f.model, *be, int(ids.size()));
  s.add_observer(&rec);
  s.forward(ids, &b, true);
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * 4), 0);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Qwen3Parity, ::testing::ValuesIn(kText));

TEST(Qwen3OmniLayout, ReleasedFolderLeavesTalkerAndCode2wavOut) {
  const Fixture& f = fixture("released_e4k2");
  EXPECT_EQ(f.model->prefix(), "thinker.model.");
  const auto& lo = f.model->store().left_out();
  ASSERT_EQ(lo.size(), 2u);
  EXPECT_EQ(lo[0].prefix, "talker.");
  EXPECT_EQ(lo[0].tensors, 3u);
  EXPECT_EQ(lo[1].prefix, "code2wav.");
  EXPECT_EQ(lo[1].tensors, 2u);
  for (const auto& [name, t] : f.model->store().tensors())
    EXPECT_EQ(name.rfind("thinker.", 0), 0u) << name << " should not be kept";
  // The per-expert tensors of the released layout were bound (not the fused ones).
  EXPECT_EQ(f.model->layers[1].expert_gate.size(), 4u);
  EXPECT_EQ(f.model->layers[1].experts_gate_up, nullptr);
  EXPECT_EQ(fixture("e4k2_mha").model->layers[0].expert_gate.size(), 0u);
  EXPECT_NE(fixture("e4k2_mha").model->layers[0].experts_gate_up, nullptr);
}

// The folder transformers 5.17 writes with save_pretrained (per-expert tensors, audio_tower.* and
// visual.* beside the decoder) holds the same decoder as e4k2_mha (same seed and shape; a
// different lm_head), there in the fused layout: their final hidden states agree.
TEST(Qwen3OmniLayout, SavePretrainedFolderLoadsAndMatchesTheFusedLayout) {
  auto saved = Model::load(dir_of("thinker_saved"));
  const Fixture& f = fixture("e4k2_mha");
  EXPECT_EQ(saved->prefix(), "model.");
  EXPECT_EQ(saved->layers[0].expert_gate.size(), 4u);
  EXPECT_TRUE(saved->store().has("audio_tower.conv2d1.weight"));
  const auto ids = f.meta["text_ids"].get<std::vector<int32_t>>();
  auto be = make_cpu_backend();
  auto final_hidden = [&](const Model& m) {
    Recorder rec({kHookLnFinal});
    Session s(m, *be, int(ids.size()));
    s.add_observer(&rec);
    s.forward(ids, nullptr, true);
    return rec.get(kHookLnFinal)->data;
  };
  const auto a = final_hidden(*saved), b = final_hidden(*f.model);
  EXPECT_LT(rel_err(a, b), 1e-6);
  EXPECT_LT(rel_err(a, b), kTol);
}

// bf16 copies of the fused and per-expert fixtures (the released checkpoints are bf16): the expert
// views into a fused 2-byte tensor land on the right rows, so the logits stay near float32's.
TEST(Qwen3OmniLayout, Bf16CheckpointsOfBothLayouts) {
  for (const std::string name : {"e4k2_mha", "e8k3_step2_gqa"}) {
    const std::string d = test::tmp_dir("q3_bf16_" + name);
    fs::copy_file(dir_of(name) + "/config.json", d + "/config.json");
    auto store = WeightStore::open(dir_of(name));
    std::vector<TensorOut> out;
    for (const auto& [tn, t] : store->tensors()) {
      auto v = read_f32(t);
      TensorOut o;
      o.name = tn;
      o.dtype = DType::BF16;
      o.shape = t.shape;
      o.bytes.resize(v.size() * 2);
      for (size_t i = 0; i < v.size(); ++i) {
        const uint16_t h = f32_to_bf16(v[i]);
        std::memcpy(o.bytes.data() + 2 * i, &h, 2);
      }
      out.push_back(std::move(o));
    }
    write_safetensors(d + "/model.safetensors", out);
    auto m = Model::load(d);
    EXPECT_EQ(m->layers[0].q->dtype, DType::BF16);
    const Fixture& f = fixture(name);
    const auto ids = f.meta["text_ids"].get<std::vector<int32_t>>();
    auto be = make_cpu_backend();
    Session s(*m, *be, int(ids.size()));
    std::vector<float> logits;
    s.forward(ids, &logits, true);
    const double err = rel_err(logits, f.t("text.logits"));
    EXPECT_LT(err, 3e-2) << name << " (bf16 weights vs the float32 reference)";
    std::printf("[ qwen3_omni ] %s in bf16: logits max rel err %.3g vs float32\n", name.c_str(), err);
  }
}

// ------------------------------------------------------------------------------ bad input

// A copy of a fixture folder whose config.json (and optionally tensors) a test edits.
std::string copy_fixture(const std::string& name, const std::string& tag) {
  const std::string d = test::tmp_dir("q3_" + tag);
  for (const char* f : {"config.json", "model.safetensors"}) fs::copy_file(dir_of(name) + "/" + f, d + "/" + f);
  return d;
}

void write_config(const std::string& d, const json& j) { std::ofstream(d + "/config.json") << j.dump(1); }

TEST(Qwen3OmniErrors, ExpertCountTheTensorsContradict) {
  const std::string d = copy_fixture("e4k2_mha", "experts");
  json j = config_of("e4k2_mha");
  j["text_config"]["num_experts"] = 6;
  write_config(d, j);
  const std::string e = test::error_of([&] { Model::load(d); });
  EXPECT_NE(e.find("model.layers.0.mlp.gate.weight"), std::string::npos) << e;
  EXPECT_NE(e.find("expected shape [6, 32]"), std::string::npos) << e;
  EXPECT_NE(e.find("found [4, 32]"), std::string::npos) << e;
  EXPECT_NE(e.find("num_experts"), std::string::npos) << e;
}

TEST(Qwen3OmniErrors, FusedExpertShapesAreChecked) {
  const std::string d = copy_fixture("e4k2_mha", "inter");
  json j = config_of("e4k2_mha");
  j["text_config"]["moe_intermediate_size"] = 8;
  write_config(d, j);
  const std::string e = test::error_of([&] { Model::load(d); });
  EXPECT_NE(e.find("model.layers.0.mlp.experts.gate_up_proj: expected shape [4, 16, 32]"), std::string::npos) << e;
  EXPECT_NE(e.find("found [4, 32, 32]"), std::string::npos) << e;
}

TEST(Qwen3OmniErrors, SparseStepTheCheckpointContradicts) {
  const std::string d = copy_fixture("e4k2_mha", "step");
  json j = config_of("e4k2_mha");
  j["text_config"]["decoder_sparse_step"] = 2;  // layer 0 dense by config; the checkpoint has its router
  write_config(d, j);
  std::string e = test::error_of([&] { Model::load(d); });
  EXPECT_NE(e.find("layer 0 is dense by config.json (num_experts 4, decoder_sparse_step 2"), std::string::npos) << e;
  EXPECT_NE(e.find("model.layers.0.mlp.gate.weight"), std::string::npos) << e;

  const std::string d2 = copy_fixture("e8k3_step2_gqa", "step1");
  json k = config_of("e8k3_step2_gqa");
  k["text_config"]["decoder_sparse_step"] = 1;  // layer 0 sparse by config; the checkpoint has a dense MLP
  write_config(d2, k);
  e = test::error_of([&] { Model::load(d2); });
  EXPECT_NE(e.find("layer 0 is a mixture-of-experts layer by config.json"), std::string::npos) << e;
  EXPECT_NE(e.find("model.layers.0.mlp.gate_proj.weight"), std::string::npos) << e;
}

TEST(Qwen3OmniErrors, MissingOrExtraExpertTensors) {
  const std::string d = copy_fixture("e8k3_step2_gqa", "missing");
  auto store = WeightStore::open(dir_of("e8k3_step2_gqa"));
  std::vector<TensorOut> out;
  for (const auto& [name, t] : store->tensors()) {
    if (name == "model.layers.1.mlp.experts.5.up_proj.weight") continue;
    auto v = read_f32(t);
    out.push_back(tensor_f32(name, t.shape, v.data()));
  }
  write_safetensors(d + "/model.safetensors", out);
  std::string e = test::error_of([&] { Model::load(d); });
  EXPECT_NE(e.find("missing tensor model.layers.1.mlp.experts.5.up_proj.weight"), std::string::npos) << e;
  EXPECT_NE(e.find("expected shape [12, 32]"), std::string::npos) << e;
  EXPECT_NE(e.find("expert 5 of num_experts 8"), std::string::npos) << e;

  const std::string d2 = copy_fixture("e8k3_step2_gqa", "fewer");
  json j = config_of("e8k3_step2_gqa");
  j["text_config"]["num_experts"] = 7;
  j["text_config"]["num_experts_per_tok"] = 3;
  write_config(d2, j);
  e = test::error_of([&] { Model::load(d2); });
  EXPECT_NE(e.find("model.layers.1.mlp.gate.weight: expected shape [7, 32]"), std::string::npos) << e;
}

TEST(Qwen3OmniErrors, TopKAboveTheExpertCount) {
  const std::string d = copy_fixture("e4k2_mha", "topk");
  json j = config_of("e4k2_mha");
  j["text_config"]["num_experts_per_tok"] = 9;
  write_config(d, j);
  const std::string e = test::error_of([&] { Model::load(d); });
  EXPECT_NE(e.find("config.json: field text_config.num_experts_per_tok: 9 experts per token is more than "
                   "num_experts 4"),
            std::string::npos)
      << e;
}

// ------------------------------------------------------------------------------ OutRo

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

TEST(Qwen3OmniOutro, EveryPresetMatchesTheReferenceOnPlantedSinks) {
  const Fixture& f = fixture("outro_q3");
  auto be = make_cpu_backend();
  const auto ids = f.meta["ids"].get<std::vector<int32_t>>();
  const auto steps = f.meta["steps"].get<std::vector<int32_t>>();
  EXPECT_GT(f.model->config().experts, 0);
  for (const std::string& preset : outro_preset_names()) {
    OutRo o(outro_preset(preset));
    Logits r = run(*f.model, *be, ids, steps, {&o});
    const double err = rel_err(r.prompt, f.t(preset + ".prompt"));
    EXPECT_LT(err, kTol) << preset;
    std::printf("[ qwen3_omni ] outro_q3 %s: prompt logits max rel err %.3g\n", preset.c_str(), err);
    for (size_t i = 0; i < steps.size(); ++i)
      EXPECT_LT(rel_err(r.steps[i], f.t(preset + ".step" + std::to_string(i))), kTol) << preset << " step " << i;
    const json& pm = f.meta["presets"][preset];
    EXPECT_EQ(o.layer_sinks(), lists(pm["sinks"])) << preset;
  }
  // OutRo acts here: its logits move well beyond the tolerance from the plain model's.
  EXPECT_GT(rel_err(f.t("outro.prompt"), f.t("baseline.prompt")), 1e-2);
  EXPECT_LT(rel_err(run(*f.model, *be, ids, {}, {}).prompt, f.t("baseline.prompt")), kTol);
}

TEST(Qwen3OmniOutro, NoSinkPromptIsThePlainModelBitForBit) {
  const Fixture& f = fixture("outro_q3");
  auto be = make_cpu_backend();
  const auto quiet = f.meta["nosink_ids"].get<std::vector<int32_t>>();
  const std::vector<float> base = run(*f.model, *be, quiet, {17}, {}).prompt;
  EXPECT_LT(rel_err(base, f.t("baseline.nosink")), kTol);
  for (const std::string& preset : outro_preset_names()) {
    OutRo o(outro_preset(preset));
    Logits r = run(*f.model, *be, quiet, {17}, {&o});
    ASSERT_EQ(r.prompt.size(), base.size());
    EXPECT_EQ(std::memcmp(r.prompt.data(), base.data(), base.size() * 4), 0) << preset;
    EXPECT_FALSE(o.any_sink()) << preset;
  }
}

}  // namespace
}  // namespace outro

// ------------------------------------------------------------------------------ CLI

namespace outro {
namespace {

TEST(Qwen3OmniCli, GenerateForwardHooksAndAnalyzeRunTheReleasedFolder) {
  const std::string m = dir_of("released_e4k2");
  auto g = test::run_cli("generate --model " + m + " --tokens 5,6,7,8 --max-new-tokens 4 --greedy");
  ASSERT_EQ(g.code, 0) << g.out;
  EXPECT_NE(g.out.find("left out 3 talker tensors"), std::string::npos) << g.out;
  EXPECT_NE(g.out.find("left out 2 code2wav tensors"), std::string::npos) << g.out;
  // Greedy decoding picks the reference's argmax after the prompt's last token.
  {
    const Fixture& f = fixture("released_e4k2");
    auto be = make_cpu_backend();
    Session s(*f.model, *be, 8);
    const std::vector<int32_t> ids = {5, 6, 7, 8};
    EXPECT_NE(g.out.find(std::to_string(s.forward_argmax(ids.data(), 4))), std::string::npos) << g.out;
  }

  const std::string out = test::tmp_dir("q3_cli") + "/f.safetensors";
  auto fw = test::run_cli("forward --model " + m + " --tokens 5,6,7 --out " + out +
                          " --hooks blocks.1.mlp.hook_router,blocks.1.mlp.hook_experts,blocks.1.hook_mlp_out");
  ASSERT_EQ(fw.code, 0) << fw.out;
  auto st = WeightStore::open(out);
  EXPECT_EQ(st->get("blocks.1.mlp.hook_router").shape, (std::vector<int64_t>{3, 4}));
  EXPECT_EQ(st->get("blocks.1.mlp.hook_experts").shape, (std::vector<int64_t>{3, 2}));
  // Layer 0 is dense (mlp_only_layers [0]): it has no router, and the CLI says which layers do.
  auto bad = test::run_cli("forward --model " + m + " --tokens 5,6 --out " + out + " --hooks blocks.0.mlp.hook_router");
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.out.find("blocks.{1,2}.mlp.hook_router"), std::string::npos) << bad.out;

  auto media = test::run_cli("generate --model " + m + " --tokens 5 --image x.png");
  EXPECT_NE(media.code, 0);
  // This folder has the decoder only: media flags name the missing tower tensor.
  EXPECT_NE(media.out.find("missing tensor visual.patch_embed.proj.weight"), std::string::npos) << media.out;

  auto info = test::run_cli("info --model " + m);
  ASSERT_EQ(info.code, 0) << info.out;
  EXPECT_NE(info.out.find("released Qwen3-Omni (thinker_config, thinker.* tensors)"), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("\"experts_per_token\": 2"), std::string::npos) << info.out;

  auto hk = test::run_cli("hooks --model " + m);
  EXPECT_NE(hk.out.find("blocks.2.mlp.hook_experts"), std::string::npos);
  EXPECT_EQ(hk.out.find("blocks.0.mlp.hook_router"), std::string::npos);

  const std::string an = test::tmp_dir("q3_analyze");
  auto a = test::run_cli("analyze --model " + dir_of("outro_q3") + " --tokens 3,20,30,4,50,60,5,70,80 --out " + an +
                         " --quiet --no-tsne");
  ASSERT_EQ(a.code, 0) << a.out;
  const json rep = json::parse(std::ifstream(an + "/report.json"));
  EXPECT_TRUE(rep.contains("sink_scores"));
}

// eval runs a Qwen3-Omni thinker through the same sessions (text prompts: its encoders are not
// supported yet, so the items' media are not fed).
TEST(Qwen3OmniCli, EvalRunsBaselineAndOutro) {
  const std::string d = test::tmp_dir("q3_synth"), out = test::tmp_dir("q3_eval");
  auto sy = test::run_cli("eval synth --out " + d + " --n 3 --seed 5");
  ASSERT_EQ(sy.code, 0) << sy.out;
  auto r = test::run_cli("eval --model " + dir_of("outro_q3") + " --bench " + d + "/bench.jsonl --media-root " + d +
                         "/media --strategies baseline,outro --out " + out + " --threads 1 --no-progress");
  ASSERT_EQ(r.code, 0) << r.out;
  const json s = json::parse(std::ifstream(out + "/summary.json"));
  EXPECT_EQ(s["n_items"], 3);
  EXPECT_TRUE(s["accuracy"].contains("outro"));
}

}  // namespace
}  // namespace outro
