// Qwen2.5-Omni folders as released (Qwen2_5OmniModel): the tiny omni_mm thinker rewritten here into
// that layout (thinker_config.text_config, thinker.* tensors beside dummy talker.* / token2wav.*
// tensors, three index-listed shards, spk_dict.pt and the processor files) must load, keep only the
// thinker, give the thinker-only folder's logits bit for bit and name bad files and fields.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "kernels/backend.h"
#include "models/model.h"
#include "models/multimodal.h"
#include "runtime/session.h"
#include "test_util.h"
#ifdef OUTRO_HAVE_CUDA
#include "kernels/cuda/cuda_api.h"
#endif

namespace outro {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using test::error_of;
using test::fixture;

json read_json(const std::string& path) {
  std::ifstream f(path);
  return json::parse(f);
}

void write_text(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

const char* kShard[3] = {"model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                         "model-00003-of-00003.safetensors"};

// Dummy speech-side tensors (names as in the released checkpoints), filled with NaN bytes: a
// forward pass that read any of them would not match.
TensorOut dummy(const std::string& name, DType dt, std::vector<int64_t> shape) {
  TensorOut t;
  t.name = name;
  t.dtype = dt;
  t.shape = std::move(shape);
  int64_t n = 1;
  for (auto d : t.shape) n *= d;
  t.bytes.assign(size_t(n) * dtype_size(dt), 0xFF);
  return t;
}

struct Released {
  size_t talker_tensors = 0, token2wav_tensors = 0;
  uint64_t talker_bytes = 0, token2wav_bytes = 0, thinker_bytes = 0;
};

// Writes fixture omni/omni_mm into DIR in the released layout. rope_parameters: the transformers 5
// field names in text_config; else the 4.5x ones (rope_theta beside rope_scaling.mrope_section).
Released write_released(const std::string& dir, bool rope_parameters) {
  Released r;
  fs::create_directories(dir);
  json thinker = read_json(fixture("omni/omni_mm/config.json"));
  thinker.erase("transformers_version");
  thinker.erase("dtype");
  thinker["torch_dtype"] = "float32";
  json& tc = thinker["text_config"];
  if (!rope_parameters) {
    json rp = tc["rope_parameters"];
    tc.erase("rope_parameters");
    tc["rope_theta"] = rp["rope_theta"];
    tc["rope_scaling"] = {{"mrope_section", rp["mrope_section"]}, {"rope_type", "default"}, {"type", "default"}};
  }
  // The talker's own decoder fields differ from the thinker's: reading them by mistake shows.
  json talker = {{"architectures", {"Qwen2_5OmniTalkerForConditionalGeneration"}},
                 {"model_type", "qwen2_5_omni_talker"},
                 {"hidden_size", 16},
                 {"embedding_size", 32},
                 {"intermediate_size", 24},
                 {"num_hidden_layers", 1},
                 {"num_attention_heads", 2},
                 {"num_key_value_heads", 1},
                 {"head_dim", 8},
                 {"vocab_size", 40},
                 {"rope_theta", 1000000.0},
                 {"rope_scaling", {{"mrope_section", {1, 1, 2}}, {"rope_type", "default"}, {"type", "default"}}}};
  json token2wav = {{"model_type", "qwen2_5_omni_token2wav"},
                    {"dit_config", {{"dim", 16}, {"depth", 1}, {"heads", 2}, {"mel_dim", 8}}},
                    {"bigvgan_config", {{"mel_dim", 8}, {"upsample_rates", {2, 2}}}}};
  json cfg = {{"architectures", {"Qwen2_5OmniModel"}},
              {"model_type", "qwen2_5_omni"},
              {"enable_audio_output", true},
              {"enable_talker", true},
              {"thinker_config", thinker},
              {"talker_config", talker},
              {"token2wav_config", token2wav},
              {"torch_dtype", "float32"},
              {"transformers_version", rope_parameters ? "5.17.0" : "4.52.3"}};
  write_text(dir + "/config.json", cfg.dump(2));

  std::vector<TensorOut> shards[3];
  auto src = WeightStore::open(fixture("omni/omni_mm"));
  for (const auto& [name, t] : src->tensors()) {
    TensorOut o;
    o.name = "thinker." + name;
    o.dtype = t.dtype;
    o.shape = t.shape;
    o.bytes.assign(t.data, t.data + t.nbytes);
    r.thinker_bytes += t.nbytes;
    const bool first = name == "model.embed_tokens.weight" || name.rfind("model.layers.0.", 0) == 0;
    shards[first ? 0 : 1].push_back(std::move(o));
  }
  std::vector<std::pair<int, TensorOut>> extra = {
      {0, dummy("talker.model.embed_tokens.weight", DType::F32, {40, 32})},  // a shard mixing thinker and talker
      {2, dummy("talker.thinker_to_talker_proj.weight", DType::F32, {32, 32})},
      {2, dummy("talker.thinker_to_talker_proj.bias", DType::F32, {32})},
      {2, dummy("talker.model.layers.0.self_attn.q_proj.weight", DType::BF16, {16, 16})},
      {2, dummy("talker.model.norm.weight", DType::F32, {16})},
      {2, dummy("talker.codec_head.weight", DType::BF16, {40, 16})},
      {2, dummy("token2wav.code2wav_dit_model.input_embed.proj.weight", DType::F32, {16, 24})},
      {2, dummy("token2wav.code2wav_bigvgan_model.conv_pre.weight", DType::BF16, {8, 8, 7})},
      {2, dummy("token2wav.code2wav_bigvgan_model.conv_pre.bias", DType::F32, {8})},
  };
  for (auto& [k, t] : extra) {
    if (t.name.rfind("talker.", 0) == 0) {
      ++r.talker_tensors;
      r.talker_bytes += t.bytes.size();
    } else {
      ++r.token2wav_tensors;
      r.token2wav_bytes += t.bytes.size();
    }
    shards[k].push_back(std::move(t));
  }
  json index = {{"metadata", {{"total_size", r.thinker_bytes + r.talker_bytes + r.token2wav_bytes}}},
                {"weight_map", json::object()}};
  for (int k = 0; k < 3; ++k) {
    write_safetensors(dir + "/" + kShard[k], shards[k], {{"format", "pt"}});
    for (const auto& t : shards[k]) index["weight_map"][t.name] = kShard[k];
  }
  write_text(dir + "/model.safetensors.index.json", index.dump(2));
  // The other files a release ships; outro does not need them.
  write_text(dir + "/spk_dict.pt", "PK\x03\x04 not a real speaker dictionary");
  write_text(dir + "/chat_template.json", R"({"chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}"})");
  write_text(dir + "/preprocessor_config.json",
             R"({"feature_extractor_type": "WhisperFeatureExtractor", "feature_size": 128, "sampling_rate": 16000,)"
             R"( "hop_length": 160, "n_fft": 400, "chunk_length": 300, "processor_class": "Qwen2_5OmniProcessor",)"
             R"( "image_processor_type": "Qwen2VLImageProcessor", "min_pixels": 3136, "max_pixels": 12845056,)"
             R"( "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,)"
             R"( "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]})");
  return r;
}

std::vector<float> text_logits(const Model& m, Backend& be) {
  const std::vector<int32_t> ids = {1, 5, 9, 17, 200, 3, 77, 140};
  Session s(m, be, int(ids.size()) + 2);
  std::vector<float> logits;
  s.forward(ids, &logits, true);
  std::vector<float> step;
  int32_t next = 11;
  s.forward(&next, 1, &step, false);
  logits.insert(logits.end(), step.begin(), step.end());
  return logits;
}

// The image + video-with-audio prompt of the omni_mm reference, through the towers and the decoder.
std::vector<float> av_logits(const Model& m, Backend& be) {
  MultimodalModel mm(m, be);
  auto ref = WeightStore::open(fixture("omni/omni_mm/ref.safetensors"));
  auto f = [&](const char* n) { return read_f32(ref->get(n)); };
  auto prompt64 = read_i64(ref->get("av.prompt_ids"));
  std::vector<int32_t> prompt(prompt64.begin(), prompt64.end());
  MediaSet media;  // as test_omni.cpp's case omni_mm/av: an image, and a video with its own audio
  media.images.push_back({1, 4, 4, 0});
  media.videos.push_back({3, 4, 6, 1.0});
  media.audio_frames.push_back(220);
  media.use_audio_in_video = true;
  const int D = m.config().hidden;
  auto enc = [&](Modality k, std::vector<float> v) {
    EncodedMedia e;
    e.kind = k;
    e.tokens = int(v.size()) / D;
    e.embeds = std::move(v);
    return e;
  };
  std::vector<EncodedMedia> images, videos, audios;
  images.push_back(enc(Modality::Image, mm.vision().encode(f("pixel_values").data(), 1, 4, 4)));
  videos.push_back(enc(Modality::Video, mm.vision().encode(f("pixel_values_videos").data(), 3, 4, 6)));
  audios.push_back(enc(Modality::Audio, mm.audio().encode(f("input_features").data(), 220)));
  MultimodalPrefill pf = mm.assemble(prompt, media, images, videos, audios);
  Session s(m, be, int(pf.ids.size()) + 2);
  std::vector<float> logits;
  s.forward_embeds(pf.ids.data(), int(pf.ids.size()), pf.embeds.data(), pf.modality.data(), pf.positions.data(), &logits,
                   true);
  return logits;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && !a.empty() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

TEST(OmniReleased, LoadsTheThinkerAloneAndMatchesTheThinkerFolderBitForBit) {
  auto thinker = Model::load(fixture("omni/omni_mm"));
  auto be = make_cpu_backend();
  const auto want_text = text_logits(*thinker, *be);
  const auto want_av = av_logits(*thinker, *be);
  for (bool rope_parameters : {false, true}) {
    SCOPED_TRACE(rope_parameters ? "rope_parameters (transformers 5)" : "rope_scaling + rope_theta (transformers 4.5x)");
    const std::string dir = test::tmp_dir(std::string("omni_released_") + (rope_parameters ? "5" : "4"));
    Released r = write_released(dir, rope_parameters);
    auto m = Model::load(dir);
    const ModelConfig& c = m->config();
    EXPECT_EQ(c.arch, Arch::Qwen2_5OmniThinker);
    EXPECT_EQ(c.architecture, "Qwen2_5OmniModel");
    EXPECT_TRUE(c.omni_released);
    EXPECT_EQ(c.text_section, "thinker_config.text_config.");
    EXPECT_EQ(c.other_components, (std::vector<std::string>{"talker", "token2wav"}));
    EXPECT_EQ(c.hidden, thinker->config().hidden);  // not the talker's 16
    EXPECT_EQ(c.layers, 2);
    EXPECT_EQ(c.mrope_section, (std::vector<int>{2, 3, 3}));
    EXPECT_FLOAT_EQ(c.rope_theta, 10000.f);
    EXPECT_EQ(c.tie_embeddings, thinker->config().tie_embeddings);
    EXPECT_EQ(m->prefix(), "thinker.model.");
    EXPECT_EQ(m->lm_head->name, "thinker.lm_head.weight");

    const WeightStore& s = m->store();
    ASSERT_EQ(s.left_out().size(), 2u);
    EXPECT_EQ(s.left_out()[0].prefix, "talker.");
    EXPECT_EQ(s.left_out()[0].tensors, r.talker_tensors);
    EXPECT_EQ(s.left_out()[0].bytes, r.talker_bytes);
    EXPECT_EQ(s.left_out()[1].prefix, "token2wav.");
    EXPECT_EQ(s.left_out()[1].tensors, r.token2wav_tensors);
    EXPECT_EQ(s.left_out()[1].bytes, r.token2wav_bytes);
    EXPECT_EQ(s.kept_bytes(), r.thinker_bytes);
    EXPECT_EQ(s.tensors().size(), thinker->store().tensors().size());
    for (const auto& [name, t] : s.tensors()) EXPECT_EQ(name.rfind("thinker.", 0), 0u) << name;
    EXPECT_EQ(s.shard_count(), 3u);
    EXPECT_EQ(s.mapped_files(), 2u);  // the talker/token2wav-only shard: header read, then unmapped
    EXPECT_FALSE(s.has("talker.codec_head.weight"));
    EXPECT_NE(error_of([&] { s.get("talker.codec_head.weight"); }).find("under talker., which outro leaves out"),
              std::string::npos);

    EXPECT_TRUE(same_bits(text_logits(*m, *be), want_text));
    EXPECT_TRUE(same_bits(av_logits(*m, *be), want_av));
    fs::remove_all(dir);
  }
}

// On the GPU, where weights are uploaded when Backend::weight is first called on them: the released
// folder uploads exactly what the thinker folder does (the talker/token2wav bytes never reach the
// device) and gives the same logits bit for bit.
TEST(OmniReleased, CudaUploadsOnlyTheThinker) {
  std::string why;
  if (!make_cuda_backend(0, &why)) GTEST_SKIP() << "needs a CUDA GPU: " << why;
  const std::string dir = test::tmp_dir("omni_released_cuda");
  write_released(dir, false);
  std::vector<float> logits[2], av[2];
  size_t uploaded[2] = {0, 0};
  for (int k = 0; k < 2; ++k) {
    auto m = Model::load(k ? dir : fixture("omni/omni_mm"));
    auto gpu = make_cuda_backend(0, &why);
    ASSERT_TRUE(gpu) << why;
    logits[k] = text_logits(*m, *gpu);
    av[k] = av_logits(*m, *gpu);
#ifdef OUTRO_HAVE_CUDA
    uploaded[k] = cuda_api::weight_bytes(*gpu);
#endif
  }
  EXPECT_TRUE(same_bits(logits[1], logits[0]));
  EXPECT_TRUE(same_bits(av[1], av[0]));
  EXPECT_EQ(uploaded[1], uploaded[0]);
  EXPECT_GT(uploaded[1], 0u);
  EXPECT_LE(uploaded[1], size_t(Model::load(dir)->store().kept_bytes()));  // float32 stays float32
  std::printf("  GPU weights uploaded: %zu bytes (thinker folder %zu)\n", uploaded[1], uploaded[0]);
  fs::remove_all(dir);
}

// Fields the thinker keeps beside text_config (token ids) are read from thinker_config and named there.
TEST(OmniReleased, ThinkerLevelFieldsAreReadAndNamed) {
  const std::string text = R"("text_config":{"hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,)"
                           R"("num_attention_heads":4,"num_key_value_heads":2,"vocab_size":300,"rope_theta":1000000.0,)"
                           R"("rope_scaling":{"mrope_section":[2,3,3],"rope_type":"default","type":"default"}})";
  auto c = parse_config(R"({"architectures":["Qwen2_5OmniModel"],"model_type":"qwen2_5_omni","talker_config":{"hidden_size":8},)"
                        R"("thinker_config":{"bos_token_id":7,"eos_token_id":9,)" + text + "}}", "config.json");
  EXPECT_EQ(c.hidden, 64);
  EXPECT_EQ(c.bos_token, 7);
  EXPECT_EQ(c.eos_tokens, std::vector<int>{9});
  EXPECT_FLOAT_EQ(c.rope_theta, 1e6f);
  EXPECT_EQ(c.other_components, std::vector<std::string>{"talker"});
  std::string e = error_of([&] {
    parse_config(R"({"architectures":["Qwen2_5OmniModel"],"thinker_config":{"eos_token_id":"end",)" + text + "}}", "config.json");
  });
  EXPECT_NE(e.find("config.json: field thinker_config.eos_token_id: expected an integer or a list"), std::string::npos) << e;
  e = error_of([&] { parse_config(R"({"model_type":"qwen2_5_omni","thinker_config":[1]})", "config.json"); });
  EXPECT_NE(e.find("config.json: field thinker_config: expected an object, found [1]"), std::string::npos) << e;
}

std::vector<float> cli_logits(const std::string& model, const std::string& out) {
  auto r = test::run_cli("forward --model " + model + " --device cpu --tokens 1,5,9,17,200 --out " + out);
  EXPECT_EQ(r.code, 0) << r.out;
  if (r.code) return {};
  auto s = WeightStore::open(out);
  return read_f32(s->get("logits"));
}

TEST(OmniReleased, CliInfoReportsWhatWasLeftOutAndForwardMatches) {
  const std::string dir = test::tmp_dir("omni_released_cli");
  Released r = write_released(dir + "/m", false);
  auto info = test::run_cli("info --model " + dir + "/m");
  ASSERT_EQ(info.code, 0) << info.out;
  const size_t a = info.out.find('{'), b = info.out.rfind('}');
  ASSERT_TRUE(a != std::string::npos && b != std::string::npos) << info.out;
  json j = json::parse(info.out.substr(a, b - a + 1));
  EXPECT_EQ(j["architecture"], "Qwen2_5OmniModel");
  EXPECT_EQ(j["model_type"], "qwen2_5_omni");
  EXPECT_EQ(j["weight_prefix"], "thinker.model.");
  EXPECT_EQ(j["hidden_size"], 32);
  EXPECT_EQ(j["thinker_weight_bytes"], r.thinker_bytes);
  EXPECT_EQ(j["left_out"]["talker"]["tensors"], r.talker_tensors);
  EXPECT_EQ(j["left_out"]["talker"]["bytes"], r.talker_bytes);
  EXPECT_EQ(j["left_out"]["talker"]["in_config"], true);
  EXPECT_EQ(j["left_out"]["token2wav"]["tensors"], r.token2wav_tensors);
  EXPECT_EQ(j["left_out"]["token2wav"]["bytes"], r.token2wav_bytes);
  EXPECT_EQ(j["weights"]["files_read"], 3);
  EXPECT_EQ(j["weights"]["files_mapped"], 2);
  EXPECT_NE(info.out.find("left out 6 talker tensors"), std::string::npos) << info.out;

  auto want = cli_logits(fixture("omni/omni_mm"), dir + "/a.safetensors");
  auto got = cli_logits(dir + "/m", dir + "/b.safetensors");
  EXPECT_TRUE(same_bits(got, want));
  auto g = test::run_cli("generate --model " + dir + "/m --device cpu --tokens 1,5,9 --max-new-tokens 3 --greedy --json");
  EXPECT_EQ(g.code, 0) << g.out;
  fs::remove_all(dir);
}

TEST(OmniReleased, BadFoldersNameTheFileAndField) {
  const std::string dir = test::tmp_dir("omni_released_bad") + "/m";
  write_released(dir, false);
  const std::string cfg_path = dir + "/config.json", idx_path = dir + "/model.safetensors.index.json";
  const json cfg = read_json(cfg_path), idx = read_json(idx_path);
  auto load_err = [&] { return error_of([&] { Model::load(dir); }); };
  auto with_config = [&](const std::function<void(json&)>& edit) {
    json c = cfg;
    edit(c);
    write_text(cfg_path, c.dump());
    std::string e = load_err();
    write_text(cfg_path, cfg.dump());
    return e;
  };
  auto has = [](const std::string& e, const std::string& part) {
    return e.find(part) != std::string::npos ? ::testing::AssertionSuccess() : ::testing::AssertionFailure() << e;
  };

  // config.json
  std::string e = with_config([](json& c) { c["thinker_config"].erase("text_config"); });
  EXPECT_TRUE(has(e, cfg_path + ": field thinker_config.text_config is missing"));
  e = with_config([](json& c) { c["thinker_config"]["text_config"] = 7; });
  EXPECT_TRUE(has(e, "config.json: field thinker_config.text_config: expected an object, found 7"));
  e = with_config([](json& c) { c.erase("thinker_config"); });
  EXPECT_TRUE(has(e, "config.json: field thinker_config is missing (a Qwen2_5OmniModel config.json"));
  e = with_config([](json& c) { c["thinker_config"]["text_config"]["rope_scaling"]["mrope_section"] = {16, 24}; });
  EXPECT_TRUE(has(e, "config.json: field thinker_config.text_config.rope_scaling.mrope_section: expected 3 integers > 0 "
                     "(temporal, height, width), found [16,24]"));
  e = with_config([](json& c) { c["thinker_config"]["text_config"]["rope_scaling"]["mrope_section"] = {2, 3, 4}; });
  EXPECT_TRUE(has(e, "thinker_config.text_config.rope_scaling.mrope_section: [2,3,4] sums to 9, expected head_dim / 2 = 8"));
  e = with_config([](json& c) { c["thinker_config"]["text_config"]["rope_parameters"] = {{"mrope_section", {3, 3, 2}}}; });
  EXPECT_TRUE(has(e, "thinker_config.text_config.rope_parameters.mrope_section [3,3,2] disagrees with"));
  e = with_config([](json& c) { c["thinker_config"]["text_config"]["rope_scaling"].erase("mrope_section"); });
  EXPECT_TRUE(has(e, "config.json: field thinker_config.text_config.rope_scaling.mrope_section is missing"));
  e = with_config([](json& c) { c["thinker_config"]["text_config"]["rope_scaling"] = "mrope"; });
  EXPECT_TRUE(has(e, "config.json: field thinker_config.text_config.rope_scaling: expected an object, found \"mrope\""));
  e = with_config([](json& c) { c["thinker_config"]["text_config"]["rope_theta"] = "big"; });
  EXPECT_TRUE(has(e, "config.json: field thinker_config.text_config.rope_theta: expected a number"));
  e = with_config([](json& c) { c["thinker_config"]["text_config"].erase("hidden_size"); });
  EXPECT_TRUE(has(e, "config.json: field thinker_config.text_config.hidden_size is missing"));
  EXPECT_TRUE(has(load_err(), "<no error>"));  // the folder is whole again
  // The towers' fields, read when the multimodal model is built.
  auto towers_err = [&](const std::function<void(json&)>& edit) {
    json c = cfg;
    edit(c);
    write_text(cfg_path, c.dump());
    std::string e = error_of([&] {
      auto m = Model::load(dir);
      auto be = make_cpu_backend();
      MultimodalModel mm(*m, *be);
    });
    write_text(cfg_path, cfg.dump());
    return e;
  };
  e = towers_err([](json& c) { c["thinker_config"]["vision_config"]["out_hidden_size"] = 99; });
  EXPECT_TRUE(has(e, "config.json: field thinker_config.vision_config.out_hidden_size: expected the decoder's hidden_size 32, found 99"));
  e = towers_err([](json& c) { c["thinker_config"]["audio_config"]["output_dim"] = 99; });
  EXPECT_TRUE(has(e, "config.json: field thinker_config.audio_config.output_dim: expected the decoder's hidden_size 32, found 99"));
  e = towers_err([](json& c) { c["thinker_config"]["audio_config"]["d_model"] = "wide"; });
  EXPECT_TRUE(has(e, "config.json: field thinker_config.audio_config.d_model: expected an integer"));

  // model.safetensors.index.json and its shards
  fs::rename(dir + "/" + kShard[2], dir + "/moved.safetensors");
  e = load_err();
  EXPECT_TRUE(has(e, idx_path + ": field weight_map[\""));
  EXPECT_TRUE(has(e, "names shard model-00003-of-00003.safetensors, which is missing from " + dir));
  fs::rename(dir + "/moved.safetensors", dir + "/" + kShard[2]);
  json i2 = idx;
  i2["weight_map"]["thinker.model.norm.weight"] = kShard[0];
  write_text(idx_path, i2.dump());
  EXPECT_TRUE(has(load_err(), "field weight_map[\"thinker.model.norm.weight\"] names shard model-00001-of-00003.safetensors, "
                              "but " + dir + "/" + kShard[0] + " has no tensor thinker.model.norm.weight"));
  write_text(idx_path, idx.dump());
  EXPECT_TRUE(has(load_err(), "<no error>"));
  fs::remove_all(fs::path(dir).parent_path());
}

}  // namespace
}  // namespace outro
