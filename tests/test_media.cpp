// Media input: FFmpeg decoding of clips made at test time with the ffmpeg command (test patterns,
// tones), still images, frame sampling, smart_resize, patchify, the log-mel features, and the
// errors for missing, corrupt and unsuitable files.
#include <gtest/gtest.h>

#include <cmath>
#include <complex>
#include <cstring>
#include <fstream>

#include "core/error.h"
#include "media/audio_features.h"
#include "media/media.h"
#include "media/vision_process.h"
#include "test_util.h"

namespace outro {
namespace {

using test::error_of;

namespace fs = std::filesystem;

class Clips : public ::testing::Test {
 protected:
  static std::string dir;
  static bool ok;
  static void SetUpTestSuite() {
    dir = test::tmp_dir("media");
    fs::create_directories(dir);
    auto ff = [](const std::string& args) {
      return std::system(("ffmpeg -nostdin -v error -y " + args + " >/dev/null 2>&1").c_str()) == 0;
    };
    ok = ff("-f lavfi -i testsrc=size=160x120:rate=10 -f lavfi -i sine=frequency=440:sample_rate=44100 -t 2 "
            "-c:v mpeg4 -pix_fmt yuv420p -c:a aac -shortest " + dir + "/av.mp4") &&
         ff("-f lavfi -i color=c=red:size=96x64:rate=5 -t 1 -c:v ffv1 " + dir + "/red.mkv") &&
         ff("-f lavfi -i testsrc=size=64x48:rate=8 -f lavfi -i sine=frequency=1000:sample_rate=48000 -t 1 "
            "-c:v libvpx-vp9 -deadline realtime -c:a libopus -shortest " + dir + "/clip.webm") &&
         ff("-f lavfi -i sine=frequency=440:sample_rate=22050 -t 1 " + dir + "/tone.wav") &&
         ff("-f lavfi -i color=c=blue:size=64x48 -frames:v 1 " + dir + "/blue.png") &&
         ff("-f lavfi -i color=c=green:size=64x48 -frames:v 1 " + dir + "/green.jpg");
    std::ofstream(dir + "/corrupt.mp4") << "this is not a video file at all, just some text bytes";
    std::ofstream(dir + "/empty.mp4");
  }
  static void TearDownTestSuite() { fs::remove_all(dir); }
  void SetUp() override {
    if (!ok) GTEST_SKIP() << "the ffmpeg command could not make the test clips";
  }
};
std::string Clips::dir;
bool Clips::ok = false;

TEST_F(Clips, ProbesAndDecodesMp4) {
  auto v = media::probe_video(dir + "/av.mp4");
  EXPECT_EQ(v.total_frames, 20);
  EXPECT_NEAR(v.fps, 10.0, 1e-6);
  EXPECT_EQ(v.width, 160);
  EXPECT_EQ(v.height, 120);
  EXPECT_TRUE(v.has_audio);
  auto frames = media::decode_frames(dir + "/av.mp4", {0, 5, 5, 19});
  ASSERT_EQ(frames.size(), 4u);
  EXPECT_EQ(frames[0].width, 160);
  EXPECT_EQ(frames[0].rgb.size(), size_t(160 * 120 * 3));
  EXPECT_EQ(frames[1].rgb, frames[2].rgb);
  EXPECT_NE(frames[0].rgb, frames[3].rgb);  // testsrc moves
}

// tools/omni_clips.py decodes the training pack with the ffmpeg command and these scaler flags so
// that the demo model trains on the pixels this engine gives it: every frame equal, byte for byte.
TEST_F(Clips, DecodeEqualsTheFfmpegCommandWithTheSameScalerFlags) {
  for (const std::string clip : {dir + "/av.mp4", test::fixture("omni_demo/clips/h0000.mp4")}) {
    const std::string raw = dir + "/frames.rgb";
    const std::string cmd = "ffmpeg -nostdin -v error -y -i " + clip +
                            " -map 0:v -vf scale=flags=bicubic+accurate_rnd+full_chroma_int,format=rgb24"
                            " -f rawvideo " + raw + " >/dev/null 2>&1";
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
    std::ifstream f(raw, std::ios::binary);
    std::string cli((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    auto v = media::probe_video(clip);
    std::vector<int64_t> all(size_t(v.total_frames));
    for (size_t i = 0; i < all.size(); ++i) all[i] = int64_t(i);
    auto frames = media::decode_frames(clip, all);
    const size_t fb = size_t(v.width) * v.height * 3;
    ASSERT_EQ(cli.size(), fb * frames.size()) << clip;
    for (size_t i = 0; i < frames.size(); ++i)
      EXPECT_EQ(0, std::memcmp(frames[i].rgb.data(), cli.data() + i * fb, fb)) << clip << " frame " << i;
  }
}

TEST_F(Clips, DecodesColoursOfMkvAndPng) {
  auto f = media::decode_frames(dir + "/red.mkv", {0});
  ASSERT_EQ(f.size(), 1u);
  const uint8_t* px = f[0].rgb.data() + (32 * 96 + 48) * 3;
  EXPECT_GT(px[0], 240);
  EXPECT_LT(px[1], 15);
  EXPECT_LT(px[2], 15);
  auto b = media::load_image(dir + "/blue.png");
  EXPECT_EQ(b.width, 64);
  EXPECT_EQ(b.height, 48);
  EXPECT_LT(b.rgb[0], 15);
  EXPECT_GT(b.rgb[2], 240);
  auto g = media::load_image(dir + "/green.jpg");
  EXPECT_GT(g.rgb[1], 100);
  EXPECT_LT(g.rgb[0], 30);
}

double tone_power(const std::vector<float>& x, double hz, int rate) {
  std::complex<double> s = 0;
  for (size_t i = 0; i < x.size(); ++i) s += double(x[i]) * std::polar(1.0, -2 * M_PI * hz * double(i) / rate);
  return std::abs(s) / double(x.size());
}

TEST_F(Clips, AudioIsResampledTo16kMono) {
  auto a = media::decode_audio(dir + "/av.mp4");
  EXPECT_NEAR(double(a.size()), 32000.0, 1200.0);  // 2 s (the AAC priming may add a little)
  EXPECT_GT(tone_power(a, 440, 16000), 20 * tone_power(a, 700, 16000));
  auto w = media::decode_audio(dir + "/tone.wav");
  EXPECT_NEAR(double(w.size()), 16000.0, 50.0);
  EXPECT_GT(tone_power(w, 440, 16000), 0.05);  // amplitude 1/8 sine -> |X|/n = 1/16
  auto webm = media::decode_audio(dir + "/clip.webm");
  EXPECT_GT(tone_power(webm, 1000, 16000), 10 * tone_power(webm, 440, 16000));
  auto v = media::probe_video(dir + "/clip.webm");
  EXPECT_EQ(v.total_frames, 8);
}

TEST_F(Clips, ClearErrors) {
  std::string e = error_of([&] { media::decode_audio(dir + "/red.mkv"); });
  EXPECT_NE(e.find("red.mkv: no audio track"), std::string::npos) << e;
  e = error_of([&] { media::probe_video(dir + "/corrupt.mp4"); });
  EXPECT_NE(e.find("corrupt.mp4: not a media file"), std::string::npos) << e;
  e = error_of([&] { media::probe_video(dir + "/empty.mp4"); });
  EXPECT_NE(e.find("empty.mp4"), std::string::npos) << e;
  e = error_of([&] { media::probe_video(dir + "/missing.mp4"); });
  EXPECT_NE(e.find("missing.mp4: media file does not exist"), std::string::npos) << e;
  e = error_of([&] { media::probe_video(dir + "/tone.wav"); });
  EXPECT_NE(e.find("tone.wav: no video stream"), std::string::npos) << e;
  e = error_of([&] { media::load_image(dir + "/corrupt.mp4"); });
  EXPECT_NE(e.find("corrupt.mp4"), std::string::npos) << e;
  e = error_of([&] { media::load_image(dir); });
  EXPECT_NE(e.find("found a folder"), std::string::npos) << e;
}

TEST_F(Clips, ProcessVideoEndToEnd) {
  media::VisionParams p;
  auto v = media::process_video(dir + "/av.mp4", p);
  // 20 frames at 10 fps sampled at 2 fps: 4 frames, indices spread over the clip.
  EXPECT_EQ(v.indices, (std::vector<int64_t>{0, 6, 13, 19}));
  EXPECT_NEAR(v.second_per_grid, 2.0 / (4.0 / 20.0 * 10.0), 1e-12);
  EXPECT_EQ(v.pixels.grid_t, 2);
  auto [h, w] = media::smart_resize(120, 160, 28, p.video_min_pixels, p.video_max_pixels, "x");
  EXPECT_EQ(v.pixels.grid_h, h / 14);
  EXPECT_EQ(v.pixels.grid_w, w / 14);
  EXPECT_EQ(v.pixels.cols, 3 * 2 * 14 * 14);
  EXPECT_EQ(v.pixels.rows, int64_t(2) * (h / 14) * (w / 14));
}

TEST(Vision, SmartResize) {
  EXPECT_EQ(media::smart_resize(480, 640, 28, 56 * 56, 28 * 28 * 1280, "x"), std::make_pair(476, 644));
  // too many pixels: scaled down, multiples of 28
  auto [h, w] = media::smart_resize(2000, 3000, 28, 56 * 56, 28 * 28 * 256, "x");
  EXPECT_EQ(h % 28, 0);
  EXPECT_EQ(w % 28, 0);
  EXPECT_LE(int64_t(h) * w, 28 * 28 * 256);
  // too few: scaled up
  auto [h2, w2] = media::smart_resize(20, 30, 28, 128 * 28 * 28, 768 * 28 * 28, "x");
  EXPECT_GE(int64_t(h2) * w2, 128 * 28 * 28);
  EXPECT_THROW(media::smart_resize(10, 3000, 28, 1, 1 << 30, "x"), Error);  // aspect > 200
}

TEST(Vision, FrameSampling) {
  media::VisionParams p;
  auto i = media::sample_frame_indices(300, 30.0, p);  // 10 s at 30 fps -> 20 frames
  ASSERT_EQ(i.size(), 20u);
  EXPECT_EQ(i.front(), 0);
  EXPECT_EQ(i.back(), 299);
  auto few = media::sample_frame_indices(3, 30.0, p);  // fewer frames than the minimum: even, <= total
  EXPECT_EQ(few.size(), 2u);
  EXPECT_THROW(media::sample_frame_indices(0, 30.0, p), Error);
}

TEST(Vision, ResizeIsIdentityAtSameSizeAndSmooth) {
  media::Image im;
  im.width = 8;
  im.height = 6;
  for (int i = 0; i < 48; ++i)
    for (int c = 0; c < 3; ++c) im.rgb.push_back(uint8_t(i * 5 + c));
  auto same = media::resize_bicubic(im, 6, 8);
  EXPECT_EQ(same.chw[0], 0.f);
  EXPECT_EQ(same.chw[48 + 1], 6.f);
  media::Image flat;
  flat.width = 30;
  flat.height = 20;
  flat.rgb.assign(30 * 20 * 3, 77);
  auto r = media::resize_bicubic(flat, 56, 28);  // a constant picture stays constant
  for (float v : r.chw) EXPECT_NEAR(v, 77.f, 1e-3);
}

TEST(Vision, PatchifyLayout) {
  media::VisionParams p;
  p.patch = 2;
  p.merge = 2;
  p.temporal = 2;
  p.mean[0] = p.mean[1] = p.mean[2] = 0.f;
  p.std[0] = p.std[1] = p.std[2] = 1.f;
  media::FloatImage f;
  f.width = 4;
  f.height = 4;
  f.chw.resize(3 * 16);
  for (int c = 0; c < 3; ++c)
    for (int i = 0; i < 16; ++i) f.chw[size_t(c * 16 + i)] = float(c * 100 + i) * 255.f;
  auto pv = media::patchify({f}, p);  // one frame, repeated to 2
  EXPECT_EQ(pv.grid_t, 1);
  EXPECT_EQ(pv.rows, 4);
  EXPECT_EQ(pv.cols, 3 * 2 * 2 * 2);
  // row 1 = patch (y 0, x 1): pixels (0,2),(0,3),(1,2),(1,3) of channel 0, twice (temporal)
  const float* r1 = pv.data.data() + 24;
  EXPECT_FLOAT_EQ(r1[0], 2.f);
  EXPECT_FLOAT_EQ(r1[1], 3.f);
  EXPECT_FLOAT_EQ(r1[2], 6.f);
  EXPECT_FLOAT_EQ(r1[3], 7.f);
  EXPECT_FLOAT_EQ(r1[4], 2.f);
  EXPECT_FLOAT_EQ(r1[8], 102.f);
}

TEST(Audio, FftMatchesDft) {
  for (size_t n : {1u, 2u, 7u, 12u, 400u}) {
    std::vector<std::complex<double>> x(n), y;
    for (size_t i = 0; i < n; ++i) x[i] = {std::sin(0.3 * double(i)), std::cos(1.7 * double(i * i % 11))};
    y = x;
    media::fft(y);
    for (size_t k = 0; k < n; ++k) {
      std::complex<double> s = 0;
      for (size_t j = 0; j < n; ++j) s += x[j] * std::polar(1.0, -2 * M_PI * double(j * k) / double(n));
      EXPECT_LT(std::abs(s - y[k]), 1e-9) << n << " " << k;
    }
  }
}

TEST(Audio, LogMelOfToneAndLengths) {
  std::vector<float> x(16000);
  for (size_t i = 0; i < x.size(); ++i) x[i] = 0.5f * float(std::sin(2 * M_PI * 1000.0 * double(i) / 16000.0));
  auto m = media::whisper_log_mel(x.data(), x.size());
  EXPECT_EQ(m.n_mels, 128);
  EXPECT_EQ(m.n_frames, 100);
  // the loudest bin of a middle frame is the mel bin holding 1 kHz
  auto fb = media::mel_filters(128, 400, 16000);
  int want = 0;
  for (int b = 1; b < 128; ++b)
    if (fb[size_t(25) * 128 + b] > fb[size_t(25) * 128 + want]) want = b;  // fft bin 25 = 1 kHz (40 Hz bins)
  int best = 0;
  for (int b = 1; b < 128; ++b)
    if (m.data[size_t(b) * 100 + 50] > m.data[size_t(best) * 100 + 50]) best = b;
  EXPECT_NEAR(best, want, 1);
  float lo = 1e9f, hi = -1e9f;
  for (float v : m.data) {
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  EXPECT_NEAR(hi - lo, 2.0f, 1e-5);  // dynamic range 8 (log10) / 4
  EXPECT_EQ(media::audio_tokens(100), 25);
  EXPECT_EQ(media::audio_tokens(3000), 750);
  EXPECT_THROW(media::whisper_log_mel(x.data(), 0), Error);
  std::vector<float> longer(16000 * 31, 0.1f);
  EXPECT_EQ(media::whisper_log_mel(longer.data(), longer.size()).n_frames, 3000);  // cut at 30 s
}

}  // namespace
}  // namespace outro
