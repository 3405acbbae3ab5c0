// Multimodal parity with the reference implementation (transformers 5.17), on the tiny random
// Qwen2.5-Omni thinker and Qwen2.5-VL checkpoints made by tools/omni_fixtures.py: processor outputs
// (pixel values, log-mel features) from the same raw frames and samples, the vision and audio
// towers, placeholder expansion, 3-D rotary positions (M-RoPE, TMRoPE with audio interleaved in
// time chunks) and the logits of mixed video + audio + image + text prompts.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "kernels/backend.h"
#include "media/audio_features.h"
#include "media/vision_process.h"
#include "models/model.h"
#include "models/multimodal.h"
#include "runtime/session.h"
#include "test_util.h"

namespace outro {
namespace {

using test::fixture;
using test::rel_err;

const int kMinPixels = 28 * 28 * 4, kMaxPixels = 28 * 28 * 1024;

struct Inputs {
  std::unique_ptr<WeightStore> s;
  std::vector<media::Image> frames;
  media::Image image;
  std::vector<float> audio;
  Inputs() {
    s = WeightStore::open(fixture("omni/inputs.safetensors"));
    const TensorInfo& v = s->get("video");  // [T, H, W, 3] uint8
    for (int64_t t = 0; t < v.shape[0]; ++t) {
      media::Image im;
      im.height = int(v.shape[1]);
      im.width = int(v.shape[2]);
      const size_t n = size_t(im.width) * im.height * 3;
      im.rgb.assign(v.data + size_t(t) * n, v.data + size_t(t + 1) * n);
      frames.push_back(std::move(im));
    }
    const TensorInfo& i = s->get("image");
    image.height = int(i.shape[0]);
    image.width = int(i.shape[1]);
    image.rgb.assign(i.data, i.data + i.nbytes);
    for (float x : read_f32(s->get("pcm"))) audio.push_back(x / 32768.f);
  }
};

struct Ref {
  std::unique_ptr<WeightStore> s;
  explicit Ref(const std::string& name) : s(WeightStore::open(fixture("omni/" + name + "/ref.safetensors"))) {}
  std::vector<float> f(const std::string& n) const { return read_f32(s->get(n)); }
  std::vector<int32_t> i(const std::string& n) const {
    auto v = read_i64(s->get(n));
    return std::vector<int32_t>(v.begin(), v.end());
  }
  bool has(const std::string& n) const { return s->has(n); }
};

media::VisionParams params() {
  media::VisionParams p;
  p.image_min_pixels = p.video_min_pixels = kMinPixels;
  p.image_max_pixels = p.video_max_pixels = kMaxPixels;
  return p;
}

TEST(OmniProcessor, PixelValuesMatchReference) {
  Inputs in;
  Ref ref("omni_mm");
  auto p = params();
  auto [h, w] = media::smart_resize(in.frames[0].height, in.frames[0].width, 28, kMinPixels, kMaxPixels, "video");
  EXPECT_EQ(h, 56);
  EXPECT_EQ(w, 84);
  std::vector<media::FloatImage> fl;
  for (auto& f : in.frames) fl.push_back(media::resize_bicubic(f, h, w));
  auto pv = media::patchify(fl, p);
  EXPECT_EQ(std::vector<int>({pv.grid_t, pv.grid_h, pv.grid_w}), ref.i("video_grid_thw"));
  EXPECT_LT(rel_err(pv.data, ref.f("pixel_values_videos")), 1e-5);
  auto pi = media::process_image(in.image, p, "image");
  EXPECT_EQ(std::vector<int>({pi.grid_t, pi.grid_h, pi.grid_w}), ref.i("image_grid_thw"));
  EXPECT_LT(rel_err(pi.data, ref.f("pixel_values")), 1e-5);
}

TEST(OmniProcessor, LogMelMatchesReference) {
  Inputs in;
  Ref ref("omni_mm");
  auto mel = media::whisper_log_mel(in.audio.data(), in.audio.size());
  const TensorInfo& t = ref.s->get("input_features");
  ASSERT_EQ(mel.n_mels, int(t.shape[0]));
  ASSERT_EQ(mel.n_frames, int(t.shape[1]));
  EXPECT_LT(rel_err(mel.data, ref.f("input_features")), 1e-4);
  EXPECT_EQ(media::audio_tokens(mel.n_frames), 55);
}

struct Mm {
  std::unique_ptr<Model> model;
  std::unique_ptr<Backend> be;
  std::unique_ptr<MultimodalModel> mm;
  explicit Mm(const std::string& name) {
    model = Model::load(fixture("omni/" + name));
    be = make_cpu_backend();
    mm = std::make_unique<MultimodalModel>(*model, *be);
  }
};

TEST(OmniEncoders, VisionTowerMatchesReference) {
  for (std::string name : {"omni_mm", "vl_mm"}) {
    Mm m(name);
    Ref ref(name);
    Ref px("omni_mm");
    auto v = m.mm->vision().encode(px.f("pixel_values_videos").data(), 3, 4, 6);
    EXPECT_LT(rel_err(v, ref.f("video_embeds")), 1e-4) << name;
    auto i = m.mm->vision().encode(px.f("pixel_values").data(), 1, 4, 4);
    EXPECT_LT(rel_err(i, ref.f("image_embeds")), 1e-4) << name;
  }
}

TEST(OmniEncoders, AudioTowerMatchesReference) {
  Mm m("omni_mm");
  Ref ref("omni_mm");
  auto a = m.mm->audio().encode(ref.f("input_features").data(), 220);
  EXPECT_LT(rel_err(a, ref.f("audio_embeds")), 1e-4);
}

TEST(OmniEncoders, WindowIndexSkipsEmptyWindows) {
  std::vector<int32_t> idx;
  std::vector<int> cu;
  // 2x3 merged units, windows of 2: (rows 0-1, cols 0-1), (rows 0-1, col 2); the padded row of
  // windows is empty.
  VisionEncoder::window_index(1, 4, 6, 2, 2, &idx, &cu);
  EXPECT_EQ(idx, (std::vector<int32_t>{0, 1, 3, 4, 2, 5}));
  EXPECT_EQ(cu, (std::vector<int>{0, 16, 24}));
}

struct Case {
  std::string model, prompt;
  bool image, audio, uav;
};

MediaSet media_of(const Case& c) {
  MediaSet s;
  if (c.image) s.images.push_back({1, 4, 4, 0});
  s.videos.push_back({3, 4, 6, 1.0});
  if (c.audio || c.uav) s.audio_frames.push_back(220);
  s.use_audio_in_video = c.uav;
  return s;
}

class OmniPrompt : public ::testing::TestWithParam<Case> {};

TEST_P(OmniPrompt, ExpansionPositionsAndLogitsMatchReference) {
  const Case c = GetParam();
  Mm m(c.model);
  Ref ref(c.model);
  Ref px("omni_mm");
  const MultimodalConfig& cfg = m.mm->config();
  MediaSet media = media_of(c);
  auto prompt = ref.i(c.prompt + ".prompt_ids");
  auto want_ids = ref.i(c.prompt + ".input_ids");
  ExpandedPrompt e = expand_placeholders(prompt, cfg, media, 2);
  EXPECT_EQ(e.ids, want_ids);
  auto pos = multimodal_positions(e.ids, cfg, media, 2);
  if (ref.has(c.prompt + ".position_ids")) {
    EXPECT_EQ(pos, ref.i(c.prompt + ".position_ids"));
  }

  std::vector<EncodedMedia> images, videos, audios;
  auto enc = [](Modality k, std::vector<float> v, int width) {
    EncodedMedia e;
    e.kind = k;
    e.tokens = int(v.size()) / width;
    e.embeds = std::move(v);
    return e;
  };
  const int D = m.model->config().hidden;
  videos.push_back(enc(Modality::Video, m.mm->vision().encode(px.f("pixel_values_videos").data(), 3, 4, 6), D));
  if (c.image) images.push_back(enc(Modality::Image, m.mm->vision().encode(px.f("pixel_values").data(), 1, 4, 4), D));
  if (c.audio || c.uav) audios.push_back(enc(Modality::Audio, m.mm->audio().encode(px.f("input_features").data(), 220), D));
  MultimodalPrefill pf = m.mm->assemble(prompt, media, images, videos, audios);
  ASSERT_EQ(pf.ids, want_ids);
  Session s(*m.model, *m.be, int(pf.ids.size()) + 4);
  std::vector<float> logits;
  s.forward_embeds(pf.ids.data(), int(pf.ids.size()), pf.embeds.data(), pf.modality.data(), pf.positions.data(), &logits,
                   true);
  EXPECT_LT(rel_err(logits, ref.f(c.prompt + ".logits")), 1e-4) << c.model << " " << c.prompt;
  EXPECT_EQ(s.modalities(), pf.modality);
  // A decode step continues after the largest position: equal to a prefill of n + 1 rows whose
  // last position is max + 1.
  int next = 7;
  std::vector<float> step;
  s.forward(&next, 1, &step, false);
  auto ids2 = pf.ids;
  ids2.push_back(next);
  auto mod2 = pf.modality;
  mod2.push_back(0);
  auto emb2 = pf.embeds;
  emb2.resize(emb2.size() + size_t(D), 0.f);
  int mx = *std::max_element(pf.positions.begin(), pf.positions.end());
  const size_t n = pf.ids.size();
  std::vector<int32_t> pos2;
  for (int r = 0; r < 3; ++r) {
    pos2.insert(pos2.end(), pf.positions.begin() + long(r * n), pf.positions.begin() + long((r + 1) * n));
    pos2.push_back(mx + 1);
  }
  Session s2(*m.model, *m.be, int(n) + 4);
  std::vector<float> full;
  s2.forward_embeds(ids2.data(), int(n + 1), emb2.data(), mod2.data(), pos2.data(), &full, false);
  EXPECT_LT(rel_err(step, full), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, OmniPrompt,
                         ::testing::Values(Case{"omni_mm", "av", true, false, true},
                                           Case{"omni_mm", "va", false, true, false},
                                           Case{"vl_mm", "iv", true, false, false}),
                         [](const auto& info) { return info.param.model + "_" + info.param.prompt; });

TEST(OmniConfig, ReadsTowersAndTokenIds) {
  auto c = load_multimodal_config(fixture("omni/omni_mm"));
  EXPECT_TRUE(c.omni);
  EXPECT_TRUE(c.has_vision);
  EXPECT_TRUE(c.has_audio);
  EXPECT_EQ(c.vision.depth, 2);
  EXPECT_EQ(c.vision.fullatt_blocks, std::vector<int>{1});
  EXPECT_EQ(c.audio.n_window, 25);
  EXPECT_EQ(c.video_token, 246);
  EXPECT_EQ(c.audio_start, 241);
  auto v = load_multimodal_config(fixture("omni/vl_mm"));
  EXPECT_FALSE(v.omni);
  EXPECT_FALSE(v.has_audio);
  EXPECT_EQ(v.vision.tokens_per_second, 2);
  auto t = load_multimodal_config(fixture("models/qwen2_gqa_f32"));
  EXPECT_FALSE(t.has_vision);
}

TEST(OmniConfig, BadVisionFieldIsNamed) {
  try {
    parse_multimodal_config(R"({"architectures":["Qwen2_5_VLForConditionalGeneration"],"vision_config":{"depth":"x"}})",
                            "cfg.json");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cfg.json: field vision_config.depth"), std::string::npos) << e.what();
  }
}

// The checkpoint's processor settings replace the Qwen utilities' defaults: a model trained on
// small frames must see them at the size it was trained on.
TEST(OmniConfig, ProcessorConfigSetsThePixelBudget) {
  namespace fs = std::filesystem;
  const std::string dir = test::tmp_dir("omni_proc");
  for (const auto& e : fs::directory_iterator(fixture("omni/omni_mm")))
    fs::copy_file(e.path(), fs::path(dir) / e.path().filename(), fs::copy_options::overwrite_existing);
  auto write = [&](const std::string& name, const std::string& text) { std::ofstream(dir + "/" + name) << text; };
  {
    auto model = Model::load(dir);
    auto be = make_cpu_backend();
    MultimodalModel mm(*model, *be);
    auto p = mm.vision_params();
    EXPECT_EQ(p.video_min_pixels, 128 * 28 * 28);  // no processor file: the defaults
    EXPECT_EQ(p.video_max_pixels, 768 * 28 * 28);
  }
  write("processor_config.json",
        R"({"image_processor":{"min_pixels":1000,"max_pixels":5000,"image_mean":[0.5,0.5,0.5]},)"
        R"("video_processor":{"size":{"shortest_edge":3136,"longest_edge":12544},"min_frames":2}})");
  {
    auto model = Model::load(dir);
    auto be = make_cpu_backend();
    MultimodalModel mm(*model, *be);
    auto p = mm.vision_params();
    EXPECT_EQ(p.video_min_pixels, 3136);
    EXPECT_EQ(p.video_max_pixels, 12544);
    EXPECT_EQ(p.min_frames, 2);
    EXPECT_EQ(p.image_min_pixels, 1000);
    EXPECT_EQ(p.image_max_pixels, 5000);
    EXPECT_FLOAT_EQ(p.mean[1], 0.5f);
    // 56x56 frames stay 56x56 under this budget: 2x2 merged tokens per temporal patch.
    std::vector<media::Image> frames(4);
    for (auto& f : frames) f.width = 56, f.height = 56, f.rgb.assign(56 * 56 * 3, 100);
    auto px = media::process_video_frames(frames, p, "clip");
    EXPECT_EQ(px.tokens(p.merge), 8);
  }
  write("processor_config.json", R"({"video_processor":{"size":{"shortest_edge":20000,"longest_edge":100}}})");
  {
    auto model = Model::load(dir);
    auto be = make_cpu_backend();
    MultimodalModel mm(*model, *be);
    try {
      mm.vision_params();
      FAIL() << "expected an error";
    } catch (const Error& e) {
      const std::string w = e.what();
      EXPECT_NE(w.find("processor_config.json: video_processor"), std::string::npos) << w;
      EXPECT_NE(w.find("min pixels 20000"), std::string::npos) << w;
    }
  }
  write("processor_config.json", R"({"image_processor":{"max_pixels":"many"}})");
  {
    auto model = Model::load(dir);
    auto be = make_cpu_backend();
    MultimodalModel mm(*model, *be);
    try {
      mm.vision_params();
      FAIL() << "expected an error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("'max_pixels' must be a positive pixel count"), std::string::npos) << e.what();
    }
  }
}

TEST(OmniPromptErrors, PlaceholderCountsMustMatchMedia) {
  auto c = load_multimodal_config(fixture("omni/omni_mm"));
  MediaSet none;
  EXPECT_THROW(expand_placeholders({1, c.video_token, 2}, c, none, 2), Error);
  MediaSet two;
  two.videos = {{2, 4, 4, 1.0}, {2, 4, 4, 1.0}};
  EXPECT_THROW(expand_placeholders({1, c.video_token, 2}, c, two, 2), Error);
}

}  // namespace
}  // namespace outro

namespace outro {
namespace {

// The CLI on the tiny checkpoints with ffmpeg-made media: generate and forward with a video and
// its own audio, an image and a separate audio; forward writes each token's modality.
TEST(OmniCli, GenerateAndForwardWithMedia) {
  const std::string dir = test::tmp_dir("omni_cli");
  std::filesystem::create_directories(dir);
  auto ff = [](const std::string& args) {
    return std::system(("ffmpeg -nostdin -v error -y " + args + " >/dev/null 2>&1").c_str()) == 0;
  };
  if (!ff("-f lavfi -i testsrc=size=112x84:rate=10 -f lavfi -i sine=frequency=440:sample_rate=44100 -t 3 -c:v mpeg4 "
          "-c:a aac -shortest " + dir + "/av.mp4") ||
      !ff("-f lavfi -i testsrc=size=112x84:rate=10 -t 2 -c:v mpeg4 " + dir + "/v.mp4") ||
      !ff("-f lavfi -i color=c=blue:size=64x48 -frames:v 1 " + dir + "/b.png"))
    GTEST_SKIP() << "ffmpeg could not make the test media";
  const std::string omni = fixture("omni/omni_mm"), vl = fixture("omni/vl_mm");
  auto r = test::run_cli("generate --model " + omni + " --tokens 65,66,243,246,244,243,245,244,67 --video " + dir +
                         "/av.mp4 --use-audio-in-video --image " + dir + "/b.png --max-new-tokens 3 --greedy");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("video"), std::string::npos) << r.out;
  r = test::run_cli("forward --model " + omni + " --tokens 65,243,246,244,241,240,242,67 --video " + dir +
                    "/v.mp4 --audio " + dir + "/av.mp4 --out " + dir + "/f.safetensors --hooks blocks.0.hook_resid_pre");
  ASSERT_EQ(r.code, 0) << r.out;
  auto st = WeightStore::open(dir + "/f.safetensors");
  auto mod = read_i64(st->get("token_modality"));
  auto ids = read_i64(st->get("input_ids"));
  ASSERT_EQ(mod.size(), ids.size());
  int counts[4] = {0, 0, 0, 0};
  for (size_t i = 0; i < ids.size(); ++i) {
    ++counts[mod[i]];
    EXPECT_EQ(mod[i] == 2, ids[i] == 246);
    EXPECT_EQ(mod[i] == 3, ids[i] == 240);
  }
  EXPECT_GT(counts[2], 0);
  EXPECT_GT(counts[3], 0);
  EXPECT_EQ(counts[0], 6);
  EXPECT_EQ(read_i64(st->get("position_ids")).size(), 3 * ids.size());
  r = test::run_cli("generate --model " + vl + " --tokens 65,243,246,244,243,245,244,67 --video " + dir + "/v.mp4 --image " +
                    dir + "/b.png --max-new-tokens 2");
  EXPECT_EQ(r.code, 0) << r.out;
  // clear errors
  r = test::run_cli("generate --model " + omni + " --tokens 65,243,246,244 --video " + dir + "/v.mp4 --use-audio-in-video");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("v.mp4: the video has no audio track"), std::string::npos) << r.out;
  r = test::run_cli("generate --model " + vl + " --tokens 65,241,240,242 --audio " + dir + "/av.mp4");
  EXPECT_NE(r.out.find("no audio tower"), std::string::npos) << r.out;
  r = test::run_cli("generate --model " + omni + " --tokens 65,66 --video " + dir + "/v.mp4");
  EXPECT_NE(r.out.find("1 videos given but 0 video placeholders"), std::string::npos) << r.out;
  std::ofstream(dir + "/bad.mp4") << "not a video";
  r = test::run_cli("generate --model " + omni + " --tokens 65,243,246,244 --video " + dir + "/bad.mp4");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("bad.mp4: not a media file"), std::string::npos) << r.out;
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace outro
