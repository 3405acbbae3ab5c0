// One benchmark item of the paper's workload on a backend, stage by stage: a Qwen2.5-Omni thinker
// (3B or 7B shape, random bf16 weights, the towers at full depth, a sink planted in the weights of
// the prompt's first token) answering about a 10 s or 60 s clip at 640x360 with its audio. The
// media come already decoded (random pixel values and log-mel features of the processor's shapes:
// 2 frames per second, a 26 x 46 patch grid, 100 mel frames per second up to 30 s), so this program
// needs no media libraries; `bench_media` times the decoding on the CPU. Prints, per clip and
// strategy (baseline, outro), the vision tower, the audio tower, the decoder prefill and the one
// generated token, items per second, and each stage's TFLOP/s against the GPU's measured bf16 rate.
//   bench_item [--shape 3b|7b] [--clips 10,60] [--strategies baseline,outro] [--reps N]
//              [--device cpu|cuda] [--keep DIR] [--json FILE] [--depth-vision N] [--layers-audio N]
//              [--layers-text N] [--profile] [--gemm-shapes]
//   --profile: each op timed alone, summed per kind; --gemm-shapes: the towers' and the prefill's
//   matrix products alone, each step of the backend's two GEMM paths timed (CUDA only)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include <unistd.h>

#include "bench_util.h"
#include "core/error.h"
#include "kernels/backend.h"
#include "kernels/cuda/cuda_api.h"
#include "models/model.h"
#include "models/multimodal_input.h"
#include "models/random_model.h"
#include "outro/outro.h"
#include "profile_backend.h"
#include "runtime/session.h"

using namespace outro;
namespace fs = std::filesystem;
using bench::Clock;
using bench::median;
using bench::since;

namespace {

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  size_t a = 0;
  while (a <= s.size()) {
    const size_t b = s.find(',', a);
    out.push_back(s.substr(a, b == std::string::npos ? std::string::npos : b - a));
    if (b == std::string::npos) break;
    a = b + 1;
  }
  return out;
}

// Uniform noise in [-1, 1) (the towers' cost does not depend on the values).
void noise(std::vector<float>& v, uint64_t seed) {
  uint64_t z = seed;
  for (auto& x : v) {
    z = z * 6364136223846793005ull + 1442695040888963407ull;
    x = float(int64_t(z >> 40) - (int64_t(1) << 23)) / float(1 << 23);
  }
}

struct Flops {  // multiply-adds x 2 of the matrix products and attention of each stage
  double vision = 0, audio = 0, prefill = 0;
};

}  // namespace

int main(int argc, char** argv) {
  std::string shape = "7b", device = "cuda", keep, json_path;
  std::vector<std::string> clips = {"10", "60"}, strategies = {"baseline", "outro"};
  int reps = 3, Lv = 32, La = 32, Lt = -1;
  bool profile = false, gemm_shapes = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) fail(a, ": expected a value");
      return argv[++i];
    };
    if (a == "--shape") shape = val();
    else if (a == "--clips") clips = split(val());
    else if (a == "--strategies") strategies = split(val());
    else if (a == "--reps") reps = std::max(1, std::atoi(val().c_str()));
    else if (a == "--device") device = val();
    else if (a == "--keep") keep = val();
    else if (a == "--json") json_path = val();
    else if (a == "--depth-vision") Lv = std::atoi(val().c_str());
    else if (a == "--layers-audio") La = std::atoi(val().c_str());
    else if (a == "--layers-text") Lt = std::atoi(val().c_str());
    else if (a == "--profile") profile = true;
    else if (a == "--gemm-shapes") gemm_shapes = true;
    else {
      std::fprintf(stderr, "usage: bench_item [--shape 3b|7b] [--clips 10,60] [--strategies baseline,outro] [--reps N]\n"
                           "                  [--device cpu|cuda] [--keep DIR] [--json FILE] [--depth-vision N]\n"
                           "                  [--layers-audio N] [--layers-text N] [--profile] [--gemm-shapes]\n");
      return 2;
    }
  }
  try {
    RandomModelSpec s;
    s.architecture = "Qwen2_5OmniThinkerForConditionalGeneration";
    if (shape == "7b") {
      s.hidden = 3584, s.intermediate = 18944, s.layers = 28, s.heads = 28, s.kv_heads = 4, s.vocab = 152064;
    } else if (shape == "3b") {
      s.hidden = 2048, s.intermediate = 11008, s.layers = 36, s.heads = 16, s.kv_heads = 2, s.vocab = 151936;
    } else {
      fail("--shape: expected 3b or 7b, found '", shape, "'");
    }
    if (Lt > 0) s.layers = Lt;
    s.vision_depth = Lv, s.audio_layers = La;
    s.max_positions = 32768, s.rope_theta = 1e6f, s.dtype = DType::BF16, s.std = 0.02f, s.hashed = true;
    const int im_start = 151644 < s.vocab ? 151644 : 1;
    s.plant_token = im_start;  // the prompt's first token: a sink at every layer
    const std::string dir = !keep.empty() ? keep
                                          : (fs::temp_directory_path() / ("outro_bench_item_" + std::to_string(::getpid()))).string();
    if (!fs::exists(dir + "/model.safetensors")) {
      std::printf("writing a random Qwen2.5-Omni thinker (%s shape: %d layers, vision %d blocks, audio %d layers, bf16) to %s\n",
                  shape.c_str(), s.layers, Lv, La, dir.c_str());
      write_random_model(dir, s);
    }
    auto model = Model::load(dir);
    std::unique_ptr<Backend> be;
    if (device == "cuda") {
      std::string why;
      be = make_cuda_backend(0, &why);
      if (!be) fail("bench_item: no CUDA backend (", why, ")");
    } else {
      be = make_cpu_backend();
    }
    MultimodalModel mm(*model, *be);
    const auto& mc = mm.config();
    const ModelConfig& c = model->config();
    double peak = 0;
    std::string gpu = be->name();
#ifdef OUTRO_HAVE_CUDA
    if (device == "cuda") {
      cuda_api::DeviceInfo info;
      std::string why;
      if (cuda_api::device_info(0, &info, &why)) gpu = info.name;
      peak = cuda_api::bf16_gemm_tflops(0, 8192, 8192, 8192, 5);
    }
#endif
    std::printf("bench_item: Qwen2.5-Omni-%s-shaped thinker (hidden %d, %d layers, vision %d blocks, audio %d layers), "
                "bf16 weights; %s%s\n",
                shape == "7b" ? "7B" : "3B", c.hidden, c.layers, Lv, La, gpu.c_str(),
                peak > 0 ? (", measured bf16 GEMM rate " + std::to_string(int(peak)) + " TFLOP/s").c_str() : "");
#ifdef OUTRO_HAVE_CUDA
    if (gemm_shapes && device == "cuda") {
      // The vision tower's products at the 10 s clip (11,960 patches), the decoder's at both prompts.
      std::vector<cuda_api::GemmShape> sh;
      for (auto [r, k] : {std::pair{1280, 1280}, std::pair{3420, 1280}, std::pair{1280, 3420}}) sh.push_back({11960, r, k});
      const int qd = c.heads * c.head_dim, kvd = c.kv_heads * c.head_dim;
      for (int n : {3337, 18787})
        for (auto [r, k] : {std::pair{qd, c.hidden}, std::pair{kvd, c.hidden}, std::pair{c.intermediate, c.hidden},
                            std::pair{c.hidden, c.intermediate}})
          sh.push_back({n, r, k});
      const auto t = cuda_api::gemm_shape_times(0, sh, 10);
      std::printf("\nmatrix products alone (ms, median of 10; TFLOP/s of the product itself)\n"
                  "| n x rows x cols | to_bf16 | GemmEx fp32 out | bias pass | old path total | Lt + bias epilogue | "
                  "Lt bf16 out |\n|---|---|---|---|---|---|---|\n");
      for (const auto& e : t) {
        const double fl = 2.0 * e.shape.n * double(e.shape.rows) * e.shape.cols / 1e9;  // GFLOP -> TFLOP/s at ms
        std::printf("| %d x %d x %d | %.3f | %.3f (%.0f) | %.3f | %.3f (%.0f) | %.3f (%.0f) | %.3f (%.0f) |\n", e.shape.n,
                    e.shape.rows, e.shape.cols, e.to_bf16_ms, e.gemmex_ms, fl / e.gemmex_ms, e.bias_ms,
                    e.to_bf16_ms + e.gemmex_ms + e.bias_ms, fl / (e.to_bf16_ms + e.gemmex_ms + e.bias_ms),
                    e.lt_bias_ms, e.lt_bias_ms > 0 ? fl / e.lt_bias_ms : 0.0, e.lt_bf16_ms,
                    e.lt_bf16_ms > 0 ? fl / e.lt_bf16_ms : 0.0);
      }
    }
#endif
    const OmniTokenIds tid = omni_token_ids(c.vocab);
    nlohmann::json out = {{"shape", shape}, {"device", gpu}, {"bf16_tflops", peak}, {"clips", nlohmann::json::array()}};

    for (const std::string& clip : clips) {
      const double secs = std::atof(clip.c_str());
      if (!(secs >= 2)) fail("--clips: expected seconds >= 2, found '", clip, "'");
      // The processor's shapes for 640x360: 2 frames a second in temporal pairs, 26 x 46 patches.
      DecodedMedia d;
      d.request.use_audio_in_video = true;
      d.has_video = true;
      d.video.grid_t = int(secs), d.video.grid_h = 26, d.video.grid_w = 46;
      d.video.rows = int64_t(d.video.grid_t) * 26 * 46, d.video.cols = 3 * 2 * 14 * 14;
      d.video.data.resize(size_t(d.video.rows * d.video.cols));
      noise(d.video.data, 1);
      d.video_second_per_grid = 1.0;
      media::MelFeatures mel;
      mel.n_mels = 128, mel.n_frames = int(std::min(secs, 30.0) * 100);
      mel.data.resize(size_t(mel.n_mels) * mel.n_frames);
      noise(mel.data, 2);
      for (auto& v : mel.data) v = 0.5f * v;
      d.audio.push_back(std::move(mel));
      std::vector<int32_t> ids = {im_start, 8948, 198};  // <|im_start|>system\n ... as the chat template
      for (int i = 0; i < 20; ++i) ids.push_back(1000 + i);
      ids.insert(ids.end(), {151645, 198, im_start, 872, 198});
      ids.insert(ids.end(), {tid.vision_start, tid.video, tid.vision_end});
      for (int i = 0; i < 60; ++i) ids.push_back(2000 + i);  // the question and its options
      ids.insert(ids.end(), {151645, 198, im_start, 77091, 198});
      for (auto& id : ids) id = id < c.vocab ? id : id % c.vocab;

      std::vector<double> tv, ta;
      PreparedPrompt p;
      for (int r = 0; r < reps; ++r) {
        p = encode_media(mm, d, ids);
        tv.push_back(p.timings.vision), ta.push_back(p.timings.audio);
      }
      const int n = int(p.prefill.ids.size());
      int nv = 0, na = 0;
      for (auto k : p.prefill.modality) nv += k == 2, na += k == 3;
      // FLOPs: 2 x the multiply-adds of the matrix products (+ attention).
      Flops f;
      const double Dv = 1280, Iv = 3420, Da = 1280, Fa = 5120, D = c.hidden, I = c.intermediate;
      const double patches = double(d.video.rows), merged = patches / 4, frames = double(d.video.grid_t);
      const double per_frame = 26.0 * 46.0;
      f.vision = 2 * patches * 1176 * Dv + 2 * patches * Lv * (4 * Dv * Dv + 3 * Dv * Iv) +
                 2 * merged * (16 * Dv * Dv + 4 * Dv * D);
      // attention: 4 full blocks over each frame pair's patches, the others in 8x8-patch windows
      const int full = std::min(4, Lv);
      f.vision += 4 * Dv * (full * frames * per_frame * per_frame + (Lv - full) * patches * 64);
      const double af = mel.n_frames / 2.0;  // after the stride-2 convolution
      f.audio = 2 * mel.n_frames * 128 * 3 * Da + 2 * af * 3 * Da * Da + 2 * af * La * (4 * Da * Da + 2 * Da * Fa) +
                4 * Da * La * af * 100 + 2 * (af / 2) * Da * D;  // attention in 100-frame windows
      const double hd = double(c.head_dim), kvd = double(c.kv_heads) * hd, qd = double(c.heads) * hd;
      const double layer_w = D * (qd + 2 * kvd) + qd * D + 3 * D * I;
      f.prefill = 2 * double(n) * c.layers * layer_w + 2.0 * c.layers * c.heads * hd * double(n) * double(n) +
                  2 * D * c.vocab;
          std::printf("\nclip %.0f s: %d frames -> grid %dx26x46 (%d patches, %d video tokens); %d mel frames (%d audio "
                  "tokens); prompt %d tokens\n",
                  secs, 2 * d.video.grid_t, d.video.grid_t, int(patches), nv, mel.n_frames, na, n);
      nlohmann::json jc = {{"seconds", secs}, {"prompt_tokens", n}, {"video_tokens", nv}, {"audio_tokens", na},
                           {"vision_s", median(tv)}, {"audio_s", median(ta)}, {"strategies", nlohmann::json::array()}};
      auto rate = [&](double fl, double t) { return t > 0 ? fl / t / 1e12 : 0.0; };
      std::printf("| stage | seconds (median of %d) | TFLOP/s | of the bf16 rate |\n|---|---|---|---|\n", reps);
      auto row = [&](const std::string& name, double t, double fl) {
        std::printf("| %s | %.4f | %.2f | %s |\n", name.c_str(), t, rate(fl, t),
                    peak > 0 ? (std::to_string(int(100 * rate(fl, t) / peak + 0.5)) + "%").c_str() : "-");
      };
      row("vision tower", median(tv), f.vision);
      row("audio tower", median(ta), f.audio);
      Session sess(*model, *be, n + 2);
      for (const std::string& st : strategies) {
        std::unique_ptr<OutRo> iv;
        if (st != "baseline") iv = std::make_unique<OutRo>(outro_preset(st));
        std::vector<double> tp, td;
        for (int r = 0; r < reps; ++r) {
          sess.reset();
          sess.clear_interventions();
          if (iv) sess.add_intervention(iv.get());
          be->synchronize();
          auto t0 = Clock::now();
          std::vector<float> logits;  // the last row's: its argmax is the one generated token
          sess.forward_embeds(p.prefill.ids.data(), n, p.prefill.embeds.data(), p.prefill.modality.data(),
                              p.prefill.positions.data(), &logits, false);
          const auto next = std::max_element(logits.begin(), logits.end()) - logits.begin();
          (void)next;
          tp.push_back(since(t0));
        }
        row("prefill + first token (" + st + ")", median(tp), f.prefill);
        if (iv) {
          int with = 0;
          for (const auto& l : iv->layers()) with += !l.sinks.empty();
          std::printf("|   (OutRo found a sink at %d of %d layers) | | | |\n", with, c.layers);
        }
        const double item = median(tv) + median(ta) + median(tp);
        std::printf("| whole item, towers + prefill (%s) | %.4f | %.1f | %.2f items/s |\n", st.c_str(), item,
                    rate(f.vision + f.audio + f.prefill, item), 1.0 / item);
        jc["strategies"].push_back({{"name", st}, {"prefill_s", median(tp)}, {"item_s", item}});
      }
      if (profile) {  // where the towers' and the prefill's time goes, op by op
        ProfileBackend pb(*be);
        MultimodalModel pm(*model, pb);
        PreparedPrompt pp = encode_media(pm, d, ids);
        pb.print(("towers, " + clip + " s clip").c_str());
        pb.clear();
        Session ps(*model, pb, n + 2);
        std::vector<float> logits;
        ps.forward_embeds(pp.prefill.ids.data(), n, pp.prefill.embeds.data(), pp.prefill.modality.data(),
                          pp.prefill.positions.data(), &logits, false);
        pb.print(("prefill, " + clip + " s clip, baseline").c_str());
      }
      out["clips"].push_back(jc);
    }
    if (!json_path.empty()) std::ofstream(json_path) << out.dump(2) << "\n";
    if (keep.empty()) fs::remove_all(dir);
  } catch (const Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
