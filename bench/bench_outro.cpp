// OutRo overhead benchmark: runs the baseline and OutRo strategies interleaved on the same model and
// the same prompt, in one process, and prints the prefill and decode times and the ratios
// OutRo / baseline (median and best of N; the target is <= 1.05, the paper reports about 1.1).
//
// Without --model it writes a random Qwen2 checkpoint shaped like Qwen2-0.5B with fewer layers
// (hidden 896, intermediate 4864, 14 heads, 2 KV heads, tied embeddings, q/k/v biases, vocab 151936,
// 8 layers by default) to a temporary folder. It prints figures; it never passes or fails.
//
//   bench_outro [--model DIR] [--prompt N] [--decode N] [--reps N] [--strategies outro,...]
//               [--outro-config FILE] [--layers N] [--vocab N] [--dtype f32|bf16] [--threads N]
//               [--keep DIR] [--json] [--device cpu|cuda]
#include <algorithm>
#include <chrono>
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
// own work: sink selection, mean_rows, align_rows; the longer sink rows inside the attention kernel
// are not in it).
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
  std::string dtype = "bf16", device = "cpu";
  bool json_out = false;
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
    else {
      std::fprintf(stderr,
                   "usage: bench_outro [--model DIR] [--prompt N] [--decode N] [--reps N] [--strategies outro,...]\n"
                   "                   [--outro-config FILE] [--layers N] [--vocab N] [--dtype f32|bf16]\n"
                   "                   [--threads N] [--keep DIR] [--json] [--device cpu|cuda]\n");
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
        s.hidden = 896;
        s.intermediate = 4864;
        s.layers = layers;
        s.heads = 14;
        s.kv_heads = 2;
        s.vocab = vocab;
        s.max_positions = 32768;
        s.rope_theta = 1e6f;
        s.tied = true;
        s.std = 0.02f;
        if (dtype == "bf16") s.dtype = DType::BF16;
        else if (dtype == "f32") s.dtype = DType::F32;
        else fail("--dtype: expected f32 or bf16, found '", dtype, "'");
        std::fprintf(stderr, "writing a random Qwen2 (hidden 896, %d layers, vocab %d, %s) to %s ...\n", layers, vocab,
                     dtype.c_str(), dir.c_str());
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
    for (auto& s : ss) {
      s.session = std::make_unique<Session>(*m, *be, ctx);
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
    std::printf("\nratios are OutRo / baseline (target <= 1.05; the paper reports about 1.1)\n\n");
    std::printf("time inside the OutRo hooks (median; share of the baseline's median time):\n");
    for (auto& s : ss) {
      if (!s.timed) continue;
      const double hp = median(s.hook_prefill), hd = median(s.hook_decode);
      std::printf("  %s: prefill %.2f ms (%.2f%%), decode %.1f us/token (%.3f%%)\n", s.name.c_str(), 1e3 * hp,
                  100 * hp / median(b.prefill), 1e6 * hd, 100 * hd / median(b.decode));
      j["strategies"][&s - &ss[0]]["hook_prefill_s"] = s.hook_prefill;
      j["strategies"][&s - &ss[0]]["hook_decode_s_per_token"] = s.hook_decode;
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
