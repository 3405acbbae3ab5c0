// Qwen3-Omni's media path against transformers 5.17 (tools/qwen3_omni_fixtures.py, towers_a/b:
// tiny random thinkers with both towers): the vision tower and its DeepStack features, the audio
// tower (clips batched as the thinker runs them), the processor's placeholder expansion, the
// thinker's 3-D positions and the logits of image + video-with-its-audio + audio + text prompts.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "kernels/backend.h"
#include "models/chat_prompt.h"
#include "models/model.h"
#include "models/multimodal.h"
#include "media/audio_features.h"
#include "models/multimodal_input.h"
#include "models/qwen3_omni_towers.h"
#include "runtime/hooks.h"
#include "runtime/session.h"
#include "test_util.h"

namespace outro {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using test::rel_err;

std::string dir_of(const std::string& name) { return test::fixture("qwen3_omni/" + name); }

struct Fx {
  std::unique_ptr<Model> model;
  std::unique_ptr<Backend> be;
  std::unique_ptr<MultimodalModel> mm;
  std::unique_ptr<WeightStore> ref;
  json meta;
  explicit Fx(const std::string& name, const std::string& dir = "") {
    model = Model::load(dir.empty() ? dir_of(name) : dir);
    be = make_cpu_backend();
    mm = std::make_unique<MultimodalModel>(*model, *be);
    ref = WeightStore::open(dir_of(name) + "/ref.safetensors");
    meta = json::parse(std::ifstream(dir_of(name) + "/ref.json"));
  }
  std::vector<float> f(const std::string& n) const { return read_f32(ref->get(n)); }
  Grid grid(const char* key, double spg) const {
    return {meta[key][0].get<int>(), meta[key][1].get<int>(), meta[key][2].get<int>(), spg};
  }
  media::MelFeatures mel(const std::string& n) const {
    const TensorInfo& t = ref->get(n);
    media::MelFeatures m;
    m.n_mels = int(t.shape[0]);
    m.n_frames = int(t.shape[1]);
    m.data = read_f32(t);
    return m;
  }
  std::vector<float> rows(const std::string& n, size_t from, size_t count) const {
    auto v = f(n);
    const size_t D = size_t(model->config().hidden);
    return std::vector<float>(v.begin() + long(from * D), v.begin() + long((from + count) * D));
  }
};

std::vector<int32_t> ints(const json& j) { return j.get<std::vector<int32_t>>(); }

const char* kFixtures[] = {"towers_a", "towers_b"};

TEST(Qwen3OmniTowers, ConfigNamesTheTowers) {
  MultimodalConfig c = load_multimodal_config(dir_of("towers_a"));
  EXPECT_EQ(c.family, MmFamily::Qwen3Omni);
  EXPECT_TRUE(c.has_vision && c.has_audio);
  EXPECT_EQ(c.vision.deepstack, (std::vector<int>{0, 2}));
  EXPECT_EQ(c.vision.num_position_embeddings, 16);
  EXPECT_EQ(c.vision.act, "gelu_pytorch_tanh");
  EXPECT_EQ(c.audio.downsample_hidden, 8);
  EXPECT_EQ(c.audio.n_window, 50);
  EXPECT_EQ(c.audio.n_window_infer, 200);
  EXPECT_EQ(c.image_token, 151);
  EXPECT_EQ(c.vision_start, 153);
  EXPECT_EQ(c.audio_end, 156);
  EXPECT_EQ(c.position_id_per_seconds, 13);
}

TEST(Qwen3OmniTowers, VisionAndDeepStackMatchReference) {
  for (const char* name : kFixtures) {
    Fx x(name);
    const int nds = int(x.mm->config().vision.deepstack.size());
    for (const char* kind : {"image", "video"}) {
      const std::string k = kind;
      Grid g = x.grid(k == "image" ? "image_grid" : "video_grid", 0);
      EncodedMedia e = x.mm->encode_vision(x.f(k + ".pixels").data(), g.t, g.h, g.w,
                                           k == "image" ? Modality::Image : Modality::Video);
      const double err = rel_err(e.embeds, x.f(k + ".embeds"));
      EXPECT_LT(err, 1e-4) << name << " " << kind;
      ASSERT_EQ(int(e.deepstack.size()), nds);
      double ds_err = 0;
      for (int j = 0; j < nds; ++j) ds_err = std::max(ds_err, rel_err(e.deepstack[size_t(j)], x.f(k + ".deepstack." + std::to_string(j))));
      EXPECT_LT(ds_err, 1e-4) << name << " " << kind;
      std::printf("[ qwen3_omni ] %s %s tower: merged rel err %.3g, DeepStack (%d) %.3g\n", name, kind, err, nds, ds_err);
    }
  }
}

TEST(Qwen3OmniTowers, AudioMatchesReference) {
  for (const char* name : kFixtures) {
    Fx x(name);
    media::MelFeatures a = x.mel("audio.0.mel"), b = x.mel("audio.1.mel"), s = x.mel("short.mel");
    auto out = x.mm->encode_audio({&a, &b});
    ASSERT_EQ(out.size(), 2u);
    EXPECT_EQ(out[0].tokens, x.meta["audio_tokens"][0].get<int>());
    EXPECT_EQ(out[1].tokens, x.meta["audio_tokens"][1].get<int>());
    EXPECT_EQ(qwen3_audio_tokens(a.n_frames, 50), out[0].tokens);
    std::vector<float> both = out[0].embeds;
    both.insert(both.end(), out[1].embeds.begin(), out[1].embeds.end());
    const double err = rel_err(both, x.f("audio.embeds"));
    EXPECT_LT(err, 1e-4) << name;
    // A clip shorter than a chunk, alone: its chunk is padded to its own length only.
    auto one = x.mm->encode_audio({&s});
    const double err1 = rel_err(one[0].embeds, x.f("short.embeds"));
    EXPECT_LT(err1, 1e-4) << name;
    // Batched with a clip of full chunks, the short clip's chunk is padded to 100 frames and its
    // last outputs move (the convolutions see GELU(bias) past its end, not zeros): why a prompt's
    // clips are encoded together, as the reference's forward does.
    auto with = x.mm->encode_audio({&s, &a});
    const double moved = rel_err(with[0].embeds, one[0].embeds);
    EXPECT_GT(moved, 1e-4) << name;
    std::printf("[ qwen3_omni ] %s audio tower: two clips rel err %.3g, short clip %.3g (batched with a longer clip it "
                "moves by %.3g)\n", name, err, err1, moved);
  }
}

struct PromptCase {
  std::string prompt;
};

MediaSet media_of(const Fx& x, bool aiv) {
  MediaSet m;
  m.images.push_back(x.grid("image_grid", 0));
  m.videos.push_back(x.grid("video_grid", x.meta["video_second_per_grid"].get<double>()));
  if (aiv) m.audio_frames.push_back(x.meta["audio_frames"][0].get<int>());
  m.audio_frames.push_back(x.meta["audio_frames"][1].get<int>());
  m.use_audio_in_video = aiv;
  return m;
}

TEST(Qwen3OmniPrompt, ExpansionPositionsAndLogitsMatchReference) {
  for (const char* name : kFixtures)
    for (const char* prompt : {"mixed", "plain"}) {
      Fx x(name);
      const json& p = x.meta[prompt];
      const bool aiv = p["use_audio_in_video"].get<bool>();
      MediaSet media = media_of(x, aiv);
      const MultimodalConfig& c = x.mm->config();
      const int merge = c.vision.merge;
      ExpandedPrompt e = expand_placeholders(ints(p["template_ids"]), c, media, merge);
      EXPECT_EQ(e.ids, ints(p["ids"])) << name << " " << prompt;
      auto pos = multimodal_positions(e.ids, c, media, merge);
      auto want = x.f(std::string(prompt) + ".positions");
      std::vector<int32_t> wanti(want.begin(), want.end());
      EXPECT_EQ(pos, wanti) << name << " " << prompt;
      // The rope delta (decode continues at max + 1).
      const int mx = *std::max_element(pos.begin(), pos.end());
      EXPECT_EQ(double(mx + 1 - int(e.ids.size())), p["rope_delta"].get<double>());

      // The towers, the splice and the decoder with DeepStack.
      std::vector<EncodedMedia> images, videos, audios;
      Grid ig = media.images[0], vg = media.videos[0];
      images.push_back(x.mm->encode_vision(x.f("image.pixels").data(), ig.t, ig.h, ig.w, Modality::Image));
      videos.push_back(x.mm->encode_vision(x.f("video.pixels").data(), vg.t, vg.h, vg.w, Modality::Video));
      media::MelFeatures a = x.mel("audio.0.mel"), b = x.mel("audio.1.mel");
      if (aiv)
        audios = x.mm->encode_audio({&a, &b});
      else
        audios = x.mm->encode_audio({&b});
      MultimodalPrefill pf = x.mm->assemble(ints(p["template_ids"]), media, images, videos, audios);
      ASSERT_EQ(pf.ids, ints(p["ids"]));
      const std::string P = prompt;
      // The spliced media rows (the text rows of pf.embeds are unused: the session embeds those ids).
      {
        auto want_e = x.f(P + ".embeds");
        const size_t D = size_t(x.model->config().hidden);
        std::vector<float> got_m, want_m;
        for (size_t i = 0; i < pf.ids.size(); ++i)
          if (pf.modality[i] != 0) {
            got_m.insert(got_m.end(), pf.embeds.begin() + long(i * D), pf.embeds.begin() + long((i + 1) * D));
            want_m.insert(want_m.end(), want_e.begin() + long(i * D), want_e.begin() + long((i + 1) * D));
          }
        EXPECT_GT(got_m.size(), 0u);
        EXPECT_LT(rel_err(got_m, want_m), 1e-4) << name << " " << prompt;
      }
      auto vis = x.f(P + ".visual");
      std::vector<int32_t> vis_rows;
      for (size_t i = 0; i < vis.size(); ++i)
        if (vis[i] > 0.5f) vis_rows.push_back(int32_t(i));
      EXPECT_EQ(pf.deepstack_rows, vis_rows);
      auto ds = x.f(P + ".deepstack");
      std::vector<float> got;
      for (auto& d : pf.deepstack) got.insert(got.end(), d.begin(), d.end());
      EXPECT_LT(rel_err(got, ds), 1e-4) << name << " " << prompt;

      Session s(*x.model, *x.be, int(pf.ids.size()) + 4);
      std::vector<float> logits;
      feed_prefill(s, pf, &logits, true);
      const double err = rel_err(logits, x.f(P + ".logits"));
      EXPECT_LT(err, 1e-4) << name << " " << prompt;
      std::printf("[ qwen3_omni ] %s %s prompt (%zu tokens): logits rel err %.3g\n", name, prompt, pf.ids.size(), err);
      // A cached decode step continues at max(position) + 1 (transformers' rope delta): the same
      // logits as a prefill of n + 1 rows (DeepStack on the same rows) with that last position.
      int next = 7;
      std::vector<float> step;
      s.forward(&next, 1, &step, false);
      MultimodalPrefill p2 = pf;
      const size_t n = pf.ids.size(), D = size_t(x.model->config().hidden);
      p2.ids.push_back(next);
      p2.modality.push_back(0);
      p2.embeds.resize(p2.embeds.size() + D, 0.f);
      p2.positions.clear();
      for (int r = 0; r < 3; ++r) {
        p2.positions.insert(p2.positions.end(), pf.positions.begin() + long(r * n), pf.positions.begin() + long((r + 1) * n));
        p2.positions.push_back(mx + 1);
      }
      Session s2(*x.model, *x.be, int(n) + 4);
      std::vector<float> full;
      feed_prefill(s2, p2, &full, false);
      EXPECT_LT(rel_err(step, full), 1e-5) << name << " " << prompt;
    }
}

// The towers and the decoder from bf16 weights (as the released checkpoints are): near the float32
// reference.
TEST(Qwen3OmniPrompt, Bf16TowersStayCloseToTheReference) {
  const std::string d = test::tmp_dir("q3m_bf16");
  fs::copy_file(dir_of("towers_a") + "/config.json", d + "/config.json");
  auto store = WeightStore::open(dir_of("towers_a") + "/model.safetensors");
  std::vector<TensorOut> out;
  for (const auto& [tn, t] : store->tensors()) {
    auto v = read_f32(t);
    TensorOut o;
    o.name = tn;
    o.dtype = DType::BF16;
    o.shape = t.shape;
    o.bytes.resize(v.size() * 2);
    for (size_t i = 0; i < v.size(); ++i) {
      uint32_t u;
      std::memcpy(&u, &v[i], 4);
      const uint16_t h = uint16_t((u + 0x7FFF + ((u >> 16) & 1)) >> 16);  // round to nearest even
      std::memcpy(o.bytes.data() + 2 * i, &h, 2);
    }
    out.push_back(std::move(o));
  }
  write_safetensors(d + "/model.safetensors", out);
  Fx x("towers_a", d);
  const json& p = x.meta["mixed"];
  MediaSet media = media_of(x, true);
  std::vector<EncodedMedia> images, videos;
  Grid ig = media.images[0], vg = media.videos[0];
  images.push_back(x.mm->encode_vision(x.f("image.pixels").data(), ig.t, ig.h, ig.w, Modality::Image));
  videos.push_back(x.mm->encode_vision(x.f("video.pixels").data(), vg.t, vg.h, vg.w, Modality::Video));
  media::MelFeatures a = x.mel("audio.0.mel"), b = x.mel("audio.1.mel");
  auto audios = x.mm->encode_audio({&a, &b});
  MultimodalPrefill pf = x.mm->assemble(ints(p["template_ids"]), media, images, videos, audios);
  const int L = x.model->config().layers;
  std::vector<std::string> hooks;
  for (int l = 0; l < L; ++l) hooks.push_back("blocks." + std::to_string(l) + ".mlp.hook_experts");
  Recorder rec(hooks);
  Session s(*x.model, *x.be, int(pf.ids.size()));
  s.add_observer(&rec);
  std::vector<float> logits;
  feed_prefill(s, pf, &logits, true);
  // The same prompt in float32 (its logits are the reference's to 1e-6): which rows chose other experts.
  Recorder rec32(hooks);
  {
    Fx y("towers_a");
    std::vector<EncodedMedia> i32, v32;
    i32.push_back(y.mm->encode_vision(y.f("image.pixels").data(), ig.t, ig.h, ig.w, Modality::Image));
    v32.push_back(y.mm->encode_vision(y.f("video.pixels").data(), vg.t, vg.h, vg.w, Modality::Video));
    MultimodalPrefill p32 = y.mm->assemble(ints(p["template_ids"]), media, i32, v32, y.mm->encode_audio({&a, &b}));
    Session s32(*y.model, *y.be, int(p32.ids.size()));
    s32.add_observer(&rec32);
    std::vector<float> l32;
    feed_prefill(s32, p32, &l32, true);
  }
  int flipped = 0;
  for (size_t i = 0; i < pf.ids.size(); ++i) {
    bool f = false;
    for (const auto& h : hooks) {
      const auto& e16 = rec.get(h)->data;
      const auto& e32 = rec32.get(h)->data;
      const size_t k = e16.size() / pf.ids.size();
      std::vector<float> a16(e16.begin() + long(i * k), e16.begin() + long((i + 1) * k));
      std::vector<float> a32(e32.begin() + long(i * k), e32.begin() + long((i + 1) * k));
      std::sort(a16.begin(), a16.end());
      std::sort(a32.begin(), a32.end());
      f |= a16 != a32;
    }
    flipped += f;
  }
  const double ev = rel_err(images[0].embeds, x.f("image.embeds")), el = rel_err(logits, x.f("mixed.logits"));
  EXPECT_LT(ev, 3e-2);
  EXPECT_GT(el, 1e-6);  // the weights really are bf16
  // Per prompt row: the rows stay close but for a few, after some rows' top-k expert choice changed
  // under bf16 rounding (counted against the float32 run's choices).
  const size_t V = size_t(x.model->config().vocab), n = pf.ids.size();
  auto ref = x.f("mixed.logits");
  std::vector<double> row_err;
  for (size_t i = 0; i < n; ++i)
    row_err.push_back(rel_err(std::vector<float>(logits.begin() + long(i * V), logits.begin() + long((i + 1) * V)),
                              std::vector<float>(ref.begin() + long(i * V), ref.begin() + long((i + 1) * V))));
  std::vector<double> sorted = row_err;
  std::sort(sorted.begin(), sorted.end());
  const double median = sorted[n / 2], p90 = sorted[n * 9 / 10];
  EXPECT_LT(median, 3e-2);
  if (sorted.back() > 5e-2) EXPECT_GT(flipped, 0) << "a large row error without any changed expert choice";
  std::printf("[ qwen3_omni ] towers_a in bf16: per-row logits rel err median %.3g, 90th percentile %.3g, max %.3g; "
              "%d of %zu rows chose other experts on some layer\n",
              median, p90, sorted.back(), flipped, n);
  std::vector<float> both = audios[0].embeds;
  both.insert(both.end(), audios[1].embeds.begin(), audios[1].embeds.end());
  const double ea = rel_err(both, x.f("audio.embeds")), evv = rel_err(videos[0].embeds, x.f("video.embeds"));
  std::printf("[ qwen3_omni ] towers_a in bf16: image tower rel err %.3g, video %.3g, audio %.3g, mixed prompt logits %.3g vs float32\n", ev, evv, ea, el);
  fs::remove_all(d);
}

// The released layout (Qwen3OmniMoeForConditionalGeneration: thinker_config, thinker.* tensors,
// a talker beside them): the same towers and logits as the thinker folder.
TEST(Qwen3OmniPrompt, ReleasedLayoutGivesTheSameMediaLogits) {
  const std::string d = test::tmp_dir("q3m_released");
  json cfg = json::parse(std::ifstream(dir_of("towers_a") + "/config.json"));
  json top = {{"architectures", {"Qwen3OmniMoeForConditionalGeneration"}}, {"model_type", "qwen3_omni_moe"},
              {"thinker_config", cfg}, {"talker_config", json::object()}, {"enable_audio_output", true}};
  std::ofstream(d + "/config.json") << top.dump(1);
  auto store = WeightStore::open(dir_of("towers_a") + "/model.safetensors");
  std::vector<TensorOut> out;
  for (const auto& [tn, t] : store->tensors()) {
    auto v = read_f32(t);
    out.push_back(tensor_f32("thinker." + tn, t.shape, v.data()));
  }
  std::vector<float> talker(64, 0.5f);
  out.push_back(tensor_f32("talker.model.codec_embedding.weight", {8, 8}, talker.data()));
  write_safetensors(d + "/model.safetensors", out);
  Fx x("towers_a", d);
  EXPECT_EQ(x.mm->config().section, "thinker_config.");
  const json& p = x.meta["mixed"];
  MediaSet media = media_of(x, true);
  std::vector<EncodedMedia> images, videos;
  Grid ig = media.images[0], vg = media.videos[0];
  images.push_back(x.mm->encode_vision(x.f("image.pixels").data(), ig.t, ig.h, ig.w, Modality::Image));
  videos.push_back(x.mm->encode_vision(x.f("video.pixels").data(), vg.t, vg.h, vg.w, Modality::Video));
  media::MelFeatures a = x.mel("audio.0.mel"), b = x.mel("audio.1.mel");
  MultimodalPrefill pf = x.mm->assemble(ints(p["template_ids"]), media, images, videos, x.mm->encode_audio({&a, &b}));
  EXPECT_EQ(pf.ids, ints(p["ids"]));
  Session s(*x.model, *x.be, int(pf.ids.size()));
  std::vector<float> logits;
  feed_prefill(s, pf, &logits, true);
  const double err = rel_err(logits, x.f("mixed.logits"));
  EXPECT_LT(err, 1e-4);
  std::printf("[ qwen3_omni ] towers_a as released (thinker.*): mixed prompt logits rel err %.3g\n", err);
  fs::remove_all(d);
}

// ------------------------------------------------------------------------------ bad input

std::string copy_fixture(const std::string& name, const std::string& tag) {
  const std::string d = test::tmp_dir("q3m_" + tag);
  for (const char* f : {"config.json", "model.safetensors"}) fs::copy_file(dir_of(name) + "/" + f, d + "/" + f);
  return d;
}

std::string load_error(const std::string& d) {
  return test::error_of([&] {
    auto m = Model::load(d);
    auto be = make_cpu_backend();
    MultimodalModel mm(*m, *be);
  });
}

TEST(Qwen3OmniTowerErrors, GridTheMergeSizeContradicts) {
  Fx x("towers_a");
  std::vector<float> px(size_t(1 * 3 * 4) * 96, 0.f);
  const std::string e = test::error_of([&] { x.mm->encode_vision(px.data(), 1, 3, 4, Modality::Image); });
  EXPECT_NE(e.find("grid 1x3x4"), std::string::npos) << e;
  EXPECT_NE(e.find("spatial_merge_size 2"), std::string::npos) << e;
}

TEST(Qwen3OmniTowerErrors, VisionWidthTheTensorsContradict) {
  const std::string d = copy_fixture("towers_a", "vwidth");
  json j = json::parse(std::ifstream(d + "/config.json"));
  j["vision_config"]["intermediate_size"] = 48;
  std::ofstream(d + "/config.json") << j.dump(1);
  const std::string e = load_error(d);
  EXPECT_NE(e.find("visual.blocks.0.mlp.linear_fc1.weight"), std::string::npos) << e;
  EXPECT_NE(e.find("[48, 16]"), std::string::npos) << e;
}

TEST(Qwen3OmniTowerErrors, DeepStackMergerMissing) {
  const std::string d = copy_fixture("towers_a", "ds");
  json j = json::parse(std::ifstream(d + "/config.json"));
  j["vision_config"]["deepstack_visual_indexes"] = {0, 1, 2};
  std::ofstream(d + "/config.json") << j.dump(1);
  const std::string e = load_error(d);
  EXPECT_NE(e.find("visual.merger_list.2.ln_q.weight"), std::string::npos) << e;
}

TEST(Qwen3OmniTowerErrors, AudioChannelsTheTensorsContradict) {
  const std::string d = copy_fixture("towers_a", "achan");
  json j = json::parse(std::ifstream(d + "/config.json"));
  j["audio_config"]["downsample_hidden_size"] = 4;
  std::ofstream(d + "/config.json") << j.dump(1);
  const std::string e = load_error(d);
  EXPECT_NE(e.find("audio_tower.conv2d1.weight"), std::string::npos) << e;
  EXPECT_NE(e.find("[4, 1, 3, 3]"), std::string::npos) << e;
}

TEST(Qwen3OmniTowerErrors, MissingAudioField) {
  const std::string d = copy_fixture("towers_a", "afield");
  json j = json::parse(std::ifstream(d + "/config.json"));
  j["audio_config"].erase("downsample_hidden_size");
  std::ofstream(d + "/config.json") << j.dump(1);
  const std::string e = load_error(d);
  EXPECT_NE(e.find("audio_config.downsample_hidden_size is missing"), std::string::npos) << e;
}

TEST(Qwen3OmniTowerErrors, PlaceholdersAndMediaDisagree) {
  Fx x("towers_a");
  MediaSet m = media_of(x, false);
  m.images.clear();
  const std::string e = test::error_of([&] {
    expand_placeholders(ints(x.meta["plain"]["template_ids"]), x.mm->config(), m, 2);
  });
  EXPECT_NE(e.find("more image placeholders than images (0)"), std::string::npos) << e;
}

// ------------------------------------------------------------------------------ the CLI

// towers_a with Whisper's 128 mel bins (conv_out widened; deterministic weights) and a context and
// pixel budget that fit real media files: the CLI's decoding, towers and prefill end to end.
// With a tokenizer: a byte-level vocabulary (bytes 0..255, no merges) and the ChatML and media
// tokens after it (the vocabulary widened to 272, the token ids in config.json moved to them).
const char* kSpecial[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio_pad|>", "<|image_pad|>",
                          "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|audio_start|>", "<|audio_end|>"};
const int kVocab = 272;

void write_tokenizer(const std::string& d) {
  // GPT-2's bytes_to_unicode: printable bytes stand for themselves, the rest map past 255.
  std::vector<int> bs;
  for (int b = '!'; b <= '~'; ++b) bs.push_back(b);
  for (int b = 0xA1; b <= 0xAC; ++b) bs.push_back(b);
  for (int b = 0xAE; b <= 0xFF; ++b) bs.push_back(b);
  std::vector<int> cp(256, -1);
  for (int b : bs) cp[size_t(b)] = b;
  int extra = 0;
  for (int b = 0; b < 256; ++b)
    if (cp[size_t(b)] < 0) cp[size_t(b)] = 256 + extra++;
  auto utf8 = [](int c) {
    std::string o;
    if (c < 0x80) {
      o += char(c);
    } else {
      o += char(0xC0 | (c >> 6));
      o += char(0x80 | (c & 0x3F));
    }
    return o;
  };
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[utf8(cp[size_t(b)])] = b;
  json added = json::array();
  for (int i = 0; i < 10; ++i)
    added.push_back({{"id", 256 + i}, {"content", kSpecial[i]}, {"single_word", false}, {"lstrip", false},
                     {"rstrip", false}, {"normalized", false}, {"special", true}});
  json t = {{"version", "1.0"}, {"truncation", nullptr}, {"padding", nullptr}, {"added_tokens", added},
            {"normalizer", nullptr},
            {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}}},
            {"post_processor", nullptr},
            {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
            {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", nullptr},
                       {"end_of_word_suffix", nullptr}, {"fuse_unk", false}, {"byte_fallback", false},
                       {"ignore_merges", false}, {"vocab", vocab}, {"merges", json::array()}}}};
  std::ofstream(d + "/tokenizer.json") << t.dump(1);
}

std::string cli_model(const std::string& dir, bool tokenizer = false) {
  const std::string d = dir + "/model";
  fs::create_directories(d);
  json j = json::parse(std::ifstream(dir_of("towers_a") + "/config.json"));
  j["audio_config"]["num_mel_bins"] = 128;
  j["text_config"]["max_position_embeddings"] = 4096;
  if (tokenizer) {
    j["text_config"]["vocab_size"] = kVocab;
    const char* keys[] = {"audio_token_id", "image_token_id", "video_token_id", "vision_start_token_id",
                          "vision_end_token_id", "audio_start_token_id", "audio_end_token_id"};
    for (int i = 0; i < 7; ++i) j[keys[i]] = 259 + i;
    j["text_config"]["eos_token_id"] = 258;
    write_tokenizer(d);
  }
  std::ofstream(d + "/config.json") << j.dump(1);
  for (const char* f : {"preprocessor_config.json", "video_preprocessor_config.json"})
    std::ofstream(d + "/" + f) << R"({"min_pixels": 1024, "max_pixels": 3072, "max_frames": 4})";
  auto st = WeightStore::open(dir_of("towers_a") + "/model.safetensors");
  std::vector<TensorOut> out;
  for (const auto& [name, t] : st->tensors()) {
    std::vector<float> v = read_f32(t);
    std::vector<int64_t> shape = t.shape;
    if (name == "audio_tower.conv_out.weight") {
      shape = {16, 8 * 16};  // 128 mels -> 16 after three stride-2 convolutions
      v.resize(size_t(16 * 8 * 16));
      for (size_t i = 0; i < v.size(); ++i) v[i] = 0.05f * float(int(i * 37 % 17) - 8);
    }
    if (tokenizer && (name == "model.embed_tokens.weight" || name == "lm_head.weight")) {
      const size_t D = size_t(shape[1]), rows = size_t(shape[0]);
      std::vector<float> w(size_t(kVocab) * D);
      for (size_t r = 0; r < size_t(kVocab); ++r)
        for (size_t c = 0; c < D; ++c) w[r * D + c] = v[(r % rows) * D + c] * (r < rows ? 1.f : -0.7f);
      v = std::move(w);
      shape[0] = kVocab;
    }
    out.push_back(tensor_f32(name, shape, v.data()));
  }
  write_safetensors(d + "/model.safetensors", out);
  return d;
}

TEST(Qwen3OmniCli, GenerateAndForwardWithMedia) {
  const std::string dir = test::tmp_dir("q3m_cli");
  fs::create_directories(dir);
  auto ff = [](const std::string& args) {
    return std::system(("ffmpeg -nostdin -v error -y " + args + " >/dev/null 2>&1").c_str()) == 0;
  };
  if (!ff("-f lavfi -i testsrc=size=112x84:rate=10 -f lavfi -i sine=frequency=440:sample_rate=44100 -t 2 -c:v mpeg4 "
          "-c:a aac -shortest " + dir + "/av.mp4") ||
      !ff("-f lavfi -i color=c=blue:size=64x48 -frames:v 1 " + dir + "/b.png"))
    GTEST_SKIP() << "ffmpeg could not make the test media";
  const std::string m = cli_model(dir);
  // Image, the video with its own audio (interleaved), text.
  auto r = test::run_cli("generate --model " + m + " --tokens 5,153,151,154,153,152,154,6 --image " + dir +
                         "/b.png --video " + dir + "/av.mp4 --use-audio-in-video --max-new-tokens 3 --greedy");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("video"), std::string::npos) << r.out;
  // forward: the video alone and the same track as an audio clip; its logits are the library's own
  // pipeline's (media decoding, towers, DeepStack, positions), and DeepStack changes them.
  const std::vector<int32_t> ids = {5, 153, 152, 154, 155, 150, 156, 6};
  r = test::run_cli("forward --model " + m + " --tokens 5,153,152,154,155,150,156,6 --video " + dir +
                    "/av.mp4 --audio " + dir + "/av.mp4 --out " + dir + "/f.safetensors");
  ASSERT_EQ(r.code, 0) << r.out;
  auto st = WeightStore::open(dir + "/f.safetensors");
  auto mod = read_i64(st->get("token_modality"));
  auto got_ids = read_i64(st->get("input_ids"));
  int counts[4] = {0, 0, 0, 0};
  for (size_t i = 0; i < got_ids.size(); ++i) {
    ++counts[mod[i]];
    EXPECT_EQ(mod[i] == 2, got_ids[i] == 152);
    EXPECT_EQ(mod[i] == 3, got_ids[i] == 150);
  }
  EXPECT_GT(counts[2], 0);
  EXPECT_GT(counts[3], 0);
  EXPECT_EQ(counts[0], 6);
  {
    auto model = Model::load(m);
    auto be = make_cpu_backend();
    MultimodalModel mm(*model, *be);
    MediaRequest req;
    req.video = dir + "/av.mp4";
    req.audio = dir + "/av.mp4";
    PreparedPrompt pp = prepare_multimodal(mm, req, ids);
    ASSERT_FALSE(pp.prefill.deepstack.empty());
    // transformers' Qwen3-Omni processor without an fps: temporal_patch_size / 1.0 seconds per grid.
    ASSERT_EQ(pp.media.videos.size(), 1u);
    EXPECT_EQ(pp.media.videos[0].second_per_grid, 2.0);
    EXPECT_EQ(pp.prefill.deepstack_rows.size(), size_t(counts[2]));
    Session s(*model, *be, int(pp.prefill.ids.size()));
    std::vector<float> logits, plain;
    feed_prefill(s, pp.prefill, &logits, true);
    EXPECT_LT(rel_err(logits, read_f32(st->get("logits"))), 1e-6);
    MultimodalPrefill no_ds = pp.prefill;
    no_ds.deepstack.clear();
    Session s2(*model, *be, int(pp.prefill.ids.size()));
    feed_prefill(s2, no_ds, &plain, true);
    EXPECT_GT(rel_err(plain, logits), 1e-3);
  }
  // The tiny fixture's tower takes 16 mel bins, not Whisper's 128: said, not misread.
  r = test::run_cli("generate --model " + dir_of("towers_a") + " --tokens 5,155,150,156 --audio " + dir + "/av.mp4");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("has 128 mel bins, the tower takes audio_config.num_mel_bins = 16"), std::string::npos) << r.out;
  fs::remove_all(dir);
}

TEST(Qwen3OmniCli, AnalyzeAndEvalWithMedia) {
  const std::string dir = test::tmp_dir("q3m_ae");
  fs::create_directories(dir);
  const std::string m = cli_model(dir, true);
  // analyze: the demo's clips (a video with an AAC track: its own audio by default) and a picture.
  {
    std::ofstream f(dir + "/prompts.jsonl");
    f << R"({"id": "clip", "prompt": "What colour is it?", "video": "clips/h0000.mp4"})" << "\n";
    f << R"({"id": "two", "prompt": "How many beeps?", "video": "clips/h0002.mp4"})" << "\n";
  }
  auto r = test::run_cli("analyze --model " + m + " --prompts " + dir + "/prompts.jsonl --media-root " +
                         test::fixture("omni_demo") + " --out " + dir + "/out --no-tsne --no-pruning --device cpu --threads 1");
  ASSERT_EQ(r.code, 0) << r.out;
  json j = json::parse(std::ifstream(dir + "/out/report.json"));
  ASSERT_EQ(j["per_prompt"].size(), 2u);
  for (const auto& p : j["per_prompt"]) {
    std::map<int, int> count;
    for (int k : p["modality"]) ++count[k];
    EXPECT_GT(count[2], 0) << p["id"];  // video tokens
    EXPECT_GT(count[3], 0) << p["id"];  // its audio, interleaved
    EXPECT_EQ(int(p["modality"].size()), p["n_tokens"].get<int>());
  }
  // eval: the synthetic bench's clips through the towers, baseline and OutRo.
  const std::string sy = dir + "/synth", out = dir + "/eval";
  auto g = test::run_cli("eval synth --out " + sy + " --n 2 --seed 3");
  ASSERT_EQ(g.code, 0) << g.out;
  auto e = test::run_cli("eval --model " + m + " --bench " + sy + "/bench.jsonl --media-root " + sy +
                         "/media --strategies baseline,outro --out " + out + " --threads 1 --no-progress");
  ASSERT_EQ(e.code, 0) << e.out;
  const json s = json::parse(std::ifstream(out + "/summary.json"));
  EXPECT_EQ(s["n_items"], 2);
  EXPECT_TRUE(s["accuracy"].contains("outro"));
  EXPECT_NE(s.dump().find("encoded"), std::string::npos) << s.dump().substr(0, 2000);
  fs::remove_all(dir);
}

// --------------------------------------------------------- chat prompt and long audio (issue 20)

// The byte-level tokenizer of cli_model: a byte's id is its value, <|im_start|> 257, <|im_end|> 258.
std::vector<int64_t> byte_ids(const std::string& s) {
  std::vector<int64_t> v;
  for (unsigned char ch : s) v.push_back(ch);
  return v;
}
std::vector<int64_t> cat(std::vector<int64_t> a, const std::vector<int64_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}
// ChatML's turn: <|im_start|>role\ncontent<|im_end|>\n
std::vector<int64_t> turn(const std::string& role, const std::string& content) {
  return cat(cat(cat({257}, byte_ids(role + "\n" + content)), {258}), byte_ids("\n"));
}
std::vector<int64_t> forward_ids(const std::string& args, const std::string& out) {
  auto r = test::run_cli("forward " + args + " --out " + out + " --device cpu --threads 1");
  EXPECT_EQ(r.code, 0) << r.out;
  if (r.code != 0) return {};
  return read_i64(WeightStore::open(out)->get("input_ids"));
}

TEST(Qwen3OmniCli, ChatPromptHasNoDefaultSystemTurnAndThinkModes) {
  const std::string dir = test::tmp_dir("q3m_chat");
  const std::string m = cli_model(dir, true), f = dir + "/f.safetensors";
  const auto gen = cat({257}, byte_ids("assistant\n"));
  const auto user = turn("user", "Hi");
  test::RunResult r;
  // No system turn unless --system gives one (Qwen2's default "You are a helpful assistant." is not Qwen3-Omni's).
  EXPECT_EQ(forward_ids("--model " + m + " --prompt Hi", f), cat(user, gen));
  EXPECT_EQ(forward_ids("--model " + m + " --prompt Hi --system S", f), cat(cat(turn("system", "S"), user), gen));
  // --think: on opens the block, off writes it empty; auto follows the folder's template (none yet).
  EXPECT_EQ(forward_ids("--model " + m + " --prompt Hi --think on", f), cat(cat(user, gen), byte_ids("<think>\n")));
  EXPECT_EQ(forward_ids("--model " + m + " --prompt Hi --think off", f),
            cat(cat(user, gen), byte_ids("<think>\n\n</think>\n\n")));
  auto info = test::run_cli("info --model " + m);
  ASSERT_EQ(info.code, 0) << info.out;
  json j = json::parse(info.out.substr(info.out.find('{')));
  EXPECT_TRUE(j["chat"]["default_system"].is_null());
  EXPECT_TRUE(j["chat"]["template"].is_null());
  EXPECT_NE(j["chat"]["think_auto"].get<std::string>().find("off: no chat template"), std::string::npos);
  // A Thinking checkpoint's template: auto opens the block, in text and media prompts alike.
  std::ofstream(m + "/chat_template.json")
      << json{{"chat_template", "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n<think>\\n' }}{%- endif %}"}}
             .dump();
  EXPECT_EQ(forward_ids("--model " + m + " --prompt Hi", f), cat(cat(user, gen), byte_ids("<think>\n")));
  EXPECT_EQ(forward_ids("--model " + m + " --prompt Hi --think off", f),
            cat(cat(user, gen), byte_ids("<think>\n\n</think>\n\n")));
  // eval builds the same prompt (its --print-prompts shows it): no system turn, --think off's empty block.
  ASSERT_EQ(test::run_cli("eval synth --out " + dir + "/sy --n 1 --seed 1 --no-media").code, 0);
  r = test::run_cli("eval --model " + m + " --bench " + dir + "/sy/bench.jsonl --print-prompts --text-only --think off");
  ASSERT_EQ(r.code, 0) << r.out;
  const std::string text = json::parse(r.out.substr(r.out.find('{')))["text"];
  EXPECT_EQ(text.rfind("<|im_start|>user\n", 0), 0u) << text;
  const std::string end = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n";
  EXPECT_EQ(text.substr(text.size() - end.size()), end) << text;
  info = test::run_cli("info --model " + m);
  j = json::parse(info.out.substr(info.out.find('{')));
  EXPECT_EQ(j["chat"]["template"], m + "/chat_template.json");
  EXPECT_NE(j["chat"]["think_auto"].get<std::string>().find("on:"), std::string::npos) << j["chat"];
  // Errors: a bad mode; --think on for a Qwen2 checkpoint names its model type.
  r = test::run_cli("forward --model " + m + " --prompt Hi --think maybe --out " + f);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("--think: expected auto, on or off, found 'maybe'"), std::string::npos) << r.out;
  r = test::run_cli("generate --model " + test::fixture("models/qwen2_gqa_f32") + " --tokens 1,2 --think on");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("Qwen2ForCausalLM (model_type 'qwen2')"), std::string::npos) << r.out;
  info = test::run_cli("info --model " + test::fixture("models/qwen2_gqa_f32"));
  ASSERT_EQ(info.code, 0) << info.out;
  j = json::parse(info.out.substr(info.out.find('{')));
  EXPECT_EQ(j["chat"]["default_system"], "You are a helpful assistant.");
  EXPECT_NE(j["chat"]["think_auto"].get<std::string>().find("n/a"), std::string::npos);
  fs::remove_all(dir);
}

// Qwen3-Omni's processor keeps a clip's whole log-mel (padding=True, truncation=False); Qwen2.5-Omni's
// cuts it at Whisper's 30 s window.
TEST(Qwen3OmniCli, AudioLongerThan30Seconds) {
  const std::string dir = test::tmp_dir("q3m_long");
  const std::string wav = dir + "/long.wav";
  if (std::system(("ffmpeg -nostdin -v error -y -f lavfi -i sine=frequency=330:sample_rate=16000 -t 35 -ac 1 " + wav +
                   " >/dev/null 2>&1").c_str()) != 0)
    GTEST_SKIP() << "ffmpeg could not make the test clip";
  const std::string m = cli_model(dir, true);
  {
    auto model = Model::load(m);
    auto be = make_cpu_backend();
    MultimodalModel mm(*model, *be);
    EXPECT_EQ(mm.config().audio_max_seconds, 0);  // no limit
    MediaRequest req;
    req.audio = wav;
    DecodedMedia d = decode_media(mm, req);
    ASSERT_EQ(d.audio.size(), 1u);
    EXPECT_EQ(d.audio[0].n_frames, 3500);  // 35 s at a hop of 10 ms
    EXPECT_EQ(d.audio[0].n_mels, 128);
    req.audio_max_seconds = 12.5;
    EXPECT_EQ(decode_media(mm, req).audio[0].n_frames, 1250);
    req.audio_max_seconds = 40;  // past the clip: all of it
    EXPECT_EQ(decode_media(mm, req).audio[0].n_frames, 3500);
  }
  // The prompt's audio tokens: 13 per 100 frames (35 chunks of 2 * n_window = 100 frames).
  auto count_audio = [&](const std::string& extra) {
    auto r = test::run_cli("forward --model " + m + " --prompt Hi --audio " + wav + extra + " --out " + dir +
                           "/f.safetensors --device cpu --threads 1");
    EXPECT_EQ(r.code, 0) << r.out;
    if (r.code != 0) return -1;
    int n = 0;
    for (int64_t k : read_i64(WeightStore::open(dir + "/f.safetensors")->get("token_modality"))) n += k == 3;
    return n;
  };
  EXPECT_EQ(count_audio(""), 455);
  EXPECT_EQ(count_audio(" --audio-max-seconds 0"), 455);
  EXPECT_EQ(count_audio(" --audio-max-seconds 10.5"), 130 + 7);  // 1050 frames: 10 chunks and a 50-frame tail
  EXPECT_EQ(qwen3_audio_tokens(1050, 50), 137);
  auto r = test::run_cli("forward --model " + m + " --prompt Hi --audio " + wav + " --audio-max-seconds -2 --out " + dir +
                         "/f.safetensors");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("--audio-max-seconds: expected 0 (the model's limit) or a length in seconds > 0, found -2"),
            std::string::npos)
      << r.out;
  r = test::run_cli("forward --model " + m + " --prompt Hi --audio-max-seconds 5 --out " + dir + "/f.safetensors");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("--audio-max-seconds needs --audio FILE"), std::string::npos) << r.out;

  // Qwen2.5-Omni: cut at 30 s (3000 frames, 750 tokens), and no more than 30 s may be asked for.
  {
    const std::string omni = test::fixture("models/omni_thinker_f32");
    auto model = Model::load(omni);
    auto be = make_cpu_backend();
    MultimodalModel mm(*model, *be);
    EXPECT_EQ(mm.config().audio_max_seconds, 30);
    MediaRequest req;
    req.audio = wav;
    DecodedMedia d = decode_media(mm, req);
    ASSERT_EQ(d.audio.size(), 1u);
    EXPECT_EQ(d.audio[0].n_frames, 3000);
    EXPECT_EQ(media::audio_tokens(d.audio[0].n_frames), 750);
    req.audio_max_seconds = 20;
    EXPECT_EQ(decode_media(mm, req).audio[0].n_frames, 2000);
    req.audio_max_seconds = 31;
    const std::string e = test::error_of([&] { decode_media(mm, req); });
    EXPECT_NE(e.find("--audio-max-seconds: 31 s is past the 30 s"), std::string::npos) << e;
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace outro
