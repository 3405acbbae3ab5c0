// OutRo overhead benchmark: runs the baseline and OutRo strategies interleaved on the same model and
// the same prompt, in one process, and prints the prefill and decode times and the ratios
// OutRo / baseline (median and best of N; the targets are prefill <= 1.03 and decode <= 1.02, the
// paper reports about 1.1), then the per-layer cost of OutRo's ops (detection, sink value,
// enhancement, gated rotation) at the prompt's length.
//
// Without --model it writes a random Qwen2 checkpoint: --shape 0.5b (Qwen2-0.5B's widths, 8 layers
// by default) or 7b (Qwen2.5-Omni-7B's thinker decoder: hidden 3584, 28 layers, 28 heads, 4 KV).
// A random model has no massive activation, so --plant-sink (on by default) sets channel 7
// of the first token's embedding output to 50000 in every strategy, baseline included: that token is then a
// Φ_LLM sink at every layer and OutRo really acts everywhere. It prints figures; it never passes or fails.
//
//   bench_outro [--model DIR] [--shape 0.5b|7b] [--prompt N] [--decode N] [--reps N] [--strategies outro,...]
//               [--outro-config FILE] [--layers N] [--vocab N] [--dtype f32|bf16] [--threads N]
//               [--no-plant-sink] [--keep DIR] [--json] [--device cpu|cuda]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include <unistd.h>

#include "bench_util.h"
#include "core/error.h"
#include "core/threadpool.h"
#include "kernels/backend.h"
#include "kernels/cuda/cuda_api.h"
#include "models/model.h"
#include "models/random_model.h"
#include "outro/outro.h"
#include "runtime/session.h"

using namespace outro;
namespace fs = std::filesystem;

namespace {

using bench::best;
using bench::Clock;
using bench::median;
using bench::since;

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t a = 0;
  while (true) {
    size_t b = s.find(sep, a);
    out.push_back(s.substr(a, b == std::string::npos ? std::string::npos : b - a));
    if (b == std::string::npos) break;
    a = b + 1;
  }
  return out;
}

// Forwards every hook to the OutRo object and adds up the time spent inside it (the intervention's
// own work: detection, the sets, the sink value, the gating; the longer sink rows inside the
// attention kernel are not in it).
class Timed : public Intervention {
 public:
  // sync: wait for the backend after each hook (CPU: free). On a GPU a wait per hook would stall the
  // launch queue and slow the very step it measures, so there the time is the host's (launches).
  explicit Timed(Intervention& iv, Backend& be, bool sync = true) : iv_(iv), be_(be), sync_(sync) {}
  std::string name() const override { return iv_.name(); }
  void begin(ForwardCtx& c) override { time([&] { iv_.begin(c); }, c); }
  void resid_pre(ForwardCtx& c, int l, Buf h) override { time([&] { iv_.resid_pre(c, l, h); }, c); }
  void qkv(ForwardCtx& c, int l, Buf q, Buf k, Buf v) override { time([&] { iv_.qkv(c, l, q, k, v); }, c); }
  void cached_keys(ForwardCtx& c, int l, Buf k) override { time([&] { iv_.cached_keys(c, l, k); }, c); }
  void attention_policy(ForwardCtx& c, int l, AttnParams& p) override { time([&] { iv_.attention_policy(c, l, p); }, c); }
  void z(ForwardCtx& c, int l, Buf z) override { time([&] { iv_.z(c, l, z); }, c); }
  std::string explain() const override { return iv_.explain(); }
  double prefill = 0, decode = 0;

 private:
  template <typename F>
  void time(F f, const ForwardCtx& c) {
    auto t = std::chrono::steady_clock::now();
    f();
    if (sync_) be_.synchronize();
    (c.past == 0 ? prefill : decode) += std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
  }
  Intervention& iv_;
  Backend& be_;
  bool sync_;
};

// Writes a massive activation into the first prompt token at the input of layer 0 (prefill only).
class PlantSink : public Intervention {
 public:
  std::string name() const override { return "plant-sink"; }
  void resid_pre(ForwardCtx& c, int l, Buf h) override {
    if (l != 0 || c.past != 0) return;
    const float v = 50000.f;
    c.be->upload(h, 7, &v, 1);
  }
};

// Median seconds of f over reps runs, the backend synchronised around each.
template <typename F>
double op_time(Backend& be, int reps, F f) {
  // Median over 5 rounds of `reps` calls in a row, one synchronisation a round: on a GPU the calls
  // queue up, so this is the op's device time (as in a forward, where the host runs ahead), not its
  // launch latency plus a synchronisation.
  std::vector<double> t;
  f();
  be.synchronize();
  for (int round = 0; round < 5; ++round) {
    auto t0 = Clock::now();
    for (int r = 0; r < reps; ++r) f();
    be.synchronize();
    t.push_back(since(t0) / reps);
  }
  return median(t);
}

// The extra time of `with` over `base` (the same op with one more thing to do): 9 rounds, each
// timing `reps` calls of one then of the other, in alternating order; the median of the rounds'
// differences, so a change of load between rounds cancels.
template <class F, class G>
double op_extra(Backend& be, int reps, F base, G with) {
  std::vector<double> d;
  base();
  with();
  be.synchronize();
  auto timed = [&](auto& f) {
    auto t0 = Clock::now();
    for (int r = 0; r < reps; ++r) f();
    be.synchronize();
    return since(t0) / reps;
  };
  for (int round = 0; round < 9; ++round) {
    const double a = round % 2 ? timed(base) : 0.0, b = timed(with), c = round % 2 ? 0.0 : timed(base);
    d.push_back(b - (round % 2 ? a : c));
  }
  return median(d);
}

struct Strategy {
  std::string name;
  std::unique_ptr<OutRo> iv;  // null: baseline
  std::unique_ptr<Timed> timed;
  std::vector<double> hook_prefill, hook_decode;  // seconds inside the intervention
  std::unique_ptr<Session> session;
  std::vector<double> prefill, decode;  // seconds; decode = seconds per token
};

}  // namespace

int main(int argc, char** argv) {
  std::string model, keep, strategies = "outro", config;
  int prompt = 256, decode = 32, reps = 5, layers = 8, vocab = 151936, threads = 0;
  std::string dtype = "bf16", device = "cpu", shape = "0.5b";
  bool json_out = false, plant = true;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "bench_outro: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    auto num = [&]() {
      const std::string v = val();
      char* e = nullptr;
      long x = std::strtol(v.c_str(), &e, 10);
      if (*e || x <= 0) {
        std::fprintf(stderr, "bench_outro: %s expects a positive integer, found '%s'\n", a.c_str(), v.c_str());
        std::exit(2);
      }
      return int(x);
    };
    if (a == "--model") model = val();
    else if (a == "--prompt") prompt = num();
    else if (a == "--decode") decode = num();
    else if (a == "--reps") reps = num();
    else if (a == "--layers") layers = num();
    else if (a == "--vocab") vocab = num();
    else if (a == "--threads") threads = num();
    else if (a == "--dtype") dtype = val();
    else if (a == "--strategies") strategies = val();
    else if (a == "--outro-config") config = val();
    else if (a == "--keep") keep = val();
    else if (a == "--json") json_out = true;
    else if (a == "--device") device = val();
    else if (a == "--shape") shape = val();
    else if (a == "--no-plant-sink") plant = false;
    else {
      std::fprintf(stderr,
                   "usage: bench_outro [--model DIR] [--shape 0.5b|7b] [--prompt N] [--decode N] [--reps N]\n"
                   "                   [--strategies outro,...] [--outro-config FILE] [--layers N] [--vocab N]\n"
                   "                   [--dtype f32|bf16] [--threads N] [--no-plant-sink] [--keep DIR] [--json]\n"
                   "                   [--device cpu|cuda]\n");
      return a == "--help" || a == "-h" ? 0 : 2;
    }
  }
  if (threads > 0) setenv("OUTRO_THREADS", std::to_string(threads).c_str(), 1);  // before the pool exists
  try {
    std::string dir = model;
    std::string tmp;
    if (dir.empty()) {
      dir = keep.empty() ? (fs::temp_directory_path() / ("bench_outro_" + std::to_string(::getpid()))).string() : keep;
      if (keep.empty()) tmp = dir;
      if (!fs::exists(dir + "/model.safetensors")) {
        RandomModelSpec s;
        if (shape == "7b") {
          s.hidden = 3584, s.intermediate = 18944, s.heads = 28, s.kv_heads = 4, s.tied = false;
          if (layers == 8) layers = 28;
          if (vocab == 151936) vocab = 152064;
        } else if (shape == "0.5b") {
          s.hidden = 896, s.intermediate = 4864, s.heads = 14, s.kv_heads = 2, s.tied = true;
        } else {
          fail("--shape: expected 0.5b or 7b, found '", shape, "'");
        }
        s.layers = layers;
        s.vocab = vocab;
        s.max_positions = 32768;
        s.rope_theta = 1e6f;
        s.std = 0.02f;
        s.hashed = true;  // every thread fills the mapped file: 7B-shaped checkpoints are 15 GB
        if (dtype == "bf16") s.dtype = DType::BF16;
        else if (dtype == "f32") s.dtype = DType::F32;
        else fail("--dtype: expected f32 or bf16, found '", dtype, "'");
        std::fprintf(stderr, "writing a random Qwen2 (hidden %d, %d layers, vocab %d, %s) to %s ...\n", s.hidden, layers,
                     vocab, dtype.c_str(), dir.c_str());
        auto t = Clock::now();
        write_random_model(dir, s);
        std::fprintf(stderr, "  done in %.1f s\n", since(t));
      }
    }
    auto m = Model::load(dir);
    const ModelConfig& c = m->config();
    std::unique_ptr<Backend> be;
    if (device == "cuda") {
      std::string why;
      be = make_cuda_backend(0, &why);
      if (!be) fail("--device cuda: ", why);
    } else if (device == "cpu") {
      be = make_cpu_backend();
    } else {
      fail("--device: expected cpu or cuda, found '", device, "'");
    }
    const int ctx = prompt + decode;
    if (ctx > c.max_positions) fail("--prompt + --decode = ", ctx, " is longer than the model's context of ", c.max_positions);

    // The same prompt and the same continuation tokens for every strategy.
    std::vector<int32_t> ids(static_cast<size_t>(ctx));
    uint64_t x = 12345;
    for (auto& id : ids) {
      x = x * 6364136223846793005ull + 1442695040888963407ull;
      id = int32_t((x >> 33) % uint64_t(c.vocab));
    }

    std::vector<Strategy> ss;
    ss.push_back({"baseline", nullptr, nullptr, {}, {}, nullptr, {}, {}});
    for (const auto& name : split(strategies, ',')) {
      if (name.empty() || name == "baseline") continue;
      OutroParams p = outro_preset(name);
      if (!config.empty()) p = load_outro_config(config, p, true);
      validate_outro(p, c, config.empty() ? "--strategies " + name : config);
      ss.push_back({name, std::make_unique<OutRo>(p), nullptr, {}, {}, nullptr, {}, {}});
    }
    PlantSink planter;
    for (auto& s : ss) {
      s.session = std::make_unique<Session>(*m, *be, ctx);
      if (plant) s.session->add_intervention(&planter);
      if (s.iv) {
        s.timed = std::make_unique<Timed>(*s.iv, *be, device != "cuda");
        s.session->add_intervention(s.timed.get());
      }
    }
    std::printf("model: %s\n  hidden %d, %d layers, %d heads (%d KV), vocab %d, %s weights; backend %s, %d threads\n",
                dir.c_str(), c.hidden, c.layers, c.heads, c.kv_heads, c.vocab, dtype_name(m->layers[0].q->dtype),
                be->name(), ThreadPool::global().size());
    std::printf("prompt %d tokens, %d decode steps, %d repetitions (strategies interleaved, order rotated)\n\n", prompt,
                decode, reps);

    std::vector<float> logits;
    auto run = [&](Strategy& s) {
      Session& se = *s.session;
      se.reset();
      if (s.timed) s.timed->prefill = s.timed->decode = 0;
      auto t0 = Clock::now();
      se.forward(ids.data(), prompt, &logits, false);
      const double pf = since(t0);
      auto t1 = Clock::now();
      for (int i = prompt; i < ctx; ++i) se.forward(&ids[size_t(i)], 1, &logits, false);
      const double dc = since(t1) / decode;
      s.prefill.push_back(pf);
      s.decode.push_back(dc);
      if (s.timed) {
        s.hook_prefill.push_back(s.timed->prefill);
        s.hook_decode.push_back(s.timed->decode / decode);
      }
    };
    // Warm-up: page the weights in and size the scratch buffers.
    for (auto& s : ss) run(s);
    for (auto& s : ss) s.prefill.clear(), s.decode.clear(), s.hook_prefill.clear(), s.hook_decode.clear();
    for (int r = 0; r < reps; ++r) {
      for (size_t k = 0; k < ss.size(); ++k) run(ss[(k + size_t(r)) % ss.size()]);
      std::fprintf(stderr, "  rep %d/%d:", r + 1, reps);
      for (auto& s : ss)
        std::fprintf(stderr, "  %s %.3f s + %.1f ms/tok", s.name.c_str(), s.prefill.back(), 1e3 * s.decode.back());
      std::fprintf(stderr, "\n");
    }

    const Strategy& b = ss[0];
    std::printf("| strategy | prefill s (median) | prefill s (best) | decode ms/tok (median) | decode ms/tok (best) |"
                " prefill ratio (median / best) | decode ratio (median / best) |\n");
    std::printf("|---|---|---|---|---|---|---|\n");
    nlohmann::json j = {{"model", dir}, {"prompt", prompt}, {"decode", decode}, {"reps", reps},
                        {"threads", ThreadPool::global().size()}, {"strategies", nlohmann::json::array()}};
    for (const auto& s : ss) {
      const double pr_m = median(s.prefill) / median(b.prefill), pr_b = best(s.prefill) / best(b.prefill);
      const double dr_m = median(s.decode) / median(b.decode), dr_b = best(s.decode) / best(b.decode);
      std::printf("| %s | %.3f | %.3f | %.2f | %.2f | %.3f / %.3f | %.3f / %.3f |\n", s.name.c_str(), median(s.prefill),
                  best(s.prefill), 1e3 * median(s.decode), 1e3 * best(s.decode), pr_m, pr_b, dr_m, dr_b);
      j["strategies"].push_back({{"name", s.name}, {"prefill_s", s.prefill}, {"decode_s_per_token", s.decode},
                                 {"prefill_ratio_median", pr_m}, {"prefill_ratio_best", pr_b},
                                 {"decode_ratio_median", dr_m}, {"decode_ratio_best", dr_b}});
    }
    std::printf("\nratios are OutRo / baseline (targets: prefill <= 1.03, decode <= 1.02; the paper reports about 1.1)%s\n\n",
                plant ? "; a sink planted in token 0" : "; no sink planted");
    std::printf("time inside the OutRo hooks (median; share of the baseline's median time):\n");
    for (auto& s : ss) {
      if (!s.timed) continue;
      const double hp = median(s.hook_prefill), hd = median(s.hook_decode);
      std::printf("  %s: prefill %.2f ms (%.2f%%), decode %.1f us/token (%.3f%%)\n", s.name.c_str(), 1e3 * hp,
                  100 * hp / median(b.prefill), 1e6 * hd, 100 * hd / median(b.decode));
      j["strategies"][&s - &ss[0]]["hook_prefill_s"] = s.hook_prefill;
      j["strategies"][&s - &ss[0]]["hook_decode_s_per_token"] = s.hook_decode;
    }
    // Per-layer cost of OutRo's own ops at this prompt length, each timed alone.
    {
      const int N = prompt, D = c.hidden, H = c.heads, KV = c.kv_heads, hd = c.head_dim;
      const size_t vd = size_t(KV) * hd;
      std::vector<float> hh(size_t(N) * D), qv(size_t(N) * H * hd), kv(size_t(N) * vd);
      uint64_t r = 99;
      auto rnd = [&] {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        return float(int64_t(r >> 40) - (int64_t(1) << 23)) / float(1 << 23);
      };
      for (auto& v : hh) v = rnd();
      for (auto& v : qv) v = rnd();
      for (auto& v : kv) v = rnd();
      hh[7] = 50000.f;
      auto up = [&](const std::vector<float>& v) {
        Buf b = be->alloc(v.size());
        be->upload(b, 0, v.data(), v.size());
        return b;
      };
      Buf h = up(hh), q = up(qv), k = up(kv), v = up(kv), z = up(qv), rec = be->alloc(size_t(N) + 4);
      Buf enh = be->alloc(size_t(N)), done = be->alloc(size_t(N)), cum = be->alloc(size_t(N));
      Buf vbar = be->alloc(vd + 3), zo = be->alloc(size_t(N) * H * hd), counter = be->alloc(1);
      be->fill(done, 0, size_t(N), 0.f);
      be->fill(cum, 0, size_t(N), 0.f);
      const int R = 10;
      const double t_det = op_time(*be, R, [&] {
        be->phi_detect(rec, h, N, D, 100.f, 1000.f);
        be->outro_sets(enh, done, cum, rec, N, true, false);
      });
      const double t_val = op_time(*be, R, [&] { be->masked_mean(vbar, v, N, int(vd), rec); });
      AttnParams ap;
      ap.n_heads = H, ap.n_kv = KV, ap.head_dim = hd, ap.scale = 1.f / std::sqrt(float(hd)), ap.n_new = N, ap.past = 0;
      const double t_att = op_time(*be, R, [&] { be->attention(zo, q, k, v, ap); });
      // The gated rotation rides on the attention call that writes the rows (AttnGate).
      AttnGate gate;
      gate.vbar = &vbar, gate.excl = &cum, gate.excl_n = N, gate.gamma = 3.f, gate.temp = 0.1f, gate.rescale = true;
      gate.counter = counter;
      ap.gate = &gate;
      const int Ra = std::max(1, std::min(R, int(0.05 / std::max(t_att, 1e-9))));  // slow CPU attention: fewer calls
      AttnParams plain = ap;
      plain.gate = nullptr;
      auto att_plain = [&] { be->attention(zo, q, k, v, plain); };
      const double t_gate = op_extra(*be, Ra, att_plain, [&] { be->attention(zo, q, k, v, ap); });
      ap.gate = nullptr;
      ap.sinkout_mask = enh.ptr, ap.sinkout_end = N;
      const double t_enh = op_extra(*be, Ra, att_plain, [&] { be->attention(zo, q, k, v, ap); });
      const double per_layer = median(b.prefill) / c.layers;
      std::printf("\nper-layer cost of OutRo's ops at %d tokens (%d calls in a row, median of 5 rounds, or of 9 rounds' differences for the two inside attention; share of a baseline layer, %.2f ms):\n", N, R,
                  1e3 * per_layer);
      std::printf("  detection (Φ_LLM + sets)   %8.3f ms  %6.2f%%  (every layer of the range)\n", 1e3 * t_det, 100 * t_det / per_layer);
      std::printf("  sink value (masked mean)   %8.3f ms  %6.2f%%  (every layer of the range)\n", 1e3 * t_val, 100 * t_val / per_layer);
      std::printf("  gated rotation (in attention) %5.3f ms  %6.2f%%  (layers with a sink)\n", 1e3 * t_gate, 100 * t_gate / per_layer);
      std::printf("  enhancement (1 sink row)   %8.3f ms  %6.2f%%  (every %d-th layer; attention alone %.3f ms)\n", 1e3 * t_enh,
                  100 * t_enh / per_layer, std::max(1, c.layers / 7), 1e3 * t_att);
#ifdef OUTRO_HAVE_CUDA
      std::vector<float> kms;
      int mode = -1;
      if (cuda_api::phi_llm_profile(*be, h, N, D, &kms, &mode))
        std::printf("  detection's kernels: sample %.3f, full pass %.3f, levels %.3f / %.3f / %.3f ms (%s)\n", kms[0], kms[1],
                    kms[2], kms[3], kms[4], mode == 0 ? "finer levels over the bracket's buffer" : "radix select over h");
#endif
      j["per_layer_ms"] = {{"detection", 1e3 * t_det}, {"sink_value", 1e3 * t_val}, {"gating", 1e3 * t_gate},
                           {"enhancement", 1e3 * t_enh}, {"attention", 1e3 * t_att}, {"baseline_layer", 1e3 * per_layer}};
      for (Buf* bb : {&h, &q, &k, &v, &z, &rec, &enh, &done, &cum, &vbar, &zo, &counter}) be->release(*bb);
    }
    for (const auto& s : ss)
      if (s.iv) std::printf("\n%s\n", s.iv->explain().c_str());
    if (json_out) std::printf("\n%s\n", j.dump().c_str());
    for (auto& s : ss) s.session.reset(), s.timed.reset(), s.iv.reset();
    if (!tmp.empty()) fs::remove_all(tmp);
  } catch (const Error& e) {
    std::fprintf(stderr, "bench_outro: %s\n", e.what());
    return 1;
  }
  return 0;
}
