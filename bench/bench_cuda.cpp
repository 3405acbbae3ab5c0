// CUDA speed benchmark. Measures the GPU's device-to-device copy bandwidth (cudaMemcpy, read + written
// bytes) and its bf16 matrix rate (cuBLAS, 8192^3), writes a random bf16 checkpoint shaped like the
// Qwen2.5-Omni-7B thinker's decoder (hidden 3584, 28 layers, 28 heads, 4 KV heads, intermediate
// 18944, vocab 152064, untied, q/k/v biases, rope_theta 1e6), loads it onto the GPU and times:
//   - decode at batch 1 after a short prompt, greedy with the argmax on the GPU (the headline, as
//     transformers is run), and with every step's logits copied back; as tokens/s and as weight bytes
//     read per second over the measured copy bandwidth; the latter also with the op fusion off;
//   - the decode step's matrix products alone (our GEMV over every weight matrix once);
//   - prefill of long prompts (default 4096 and 16384 tokens) as tokens/s and as the fraction of the
//     measured bf16 matrix rate (matrix FLOPs + causal attention FLOPs).
// It prints figures; it never passes or fails. --json FILE writes them for tools/bench_transformers.py.
//
//   bench_cuda [--layers N] [--prompt N] [--decode N] [--prefill 4096,16384] [--reps N] [--dir DIR]
//              [--keep] [--json FILE]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include <sys/statvfs.h>
#include <unistd.h>

#include "bench_util.h"
#include "core/error.h"
#include "kernels/backend.h"
#include "models/model.h"
#include "models/random_model.h"
#include "runtime/session.h"
#ifdef OUTRO_HAVE_CUDA
#include "kernels/cuda/cuda_api.h"
#endif

using namespace outro;
namespace fs = std::filesystem;

namespace {

using bench::Clock;
using bench::median;
using bench::since;

struct Shape {
  int hidden = 3584, intermediate = 18944, layers = 28, heads = 28, kv_heads = 4, vocab = 152064;
};

// config.json and model.safetensors of random bf16 weights (models/random_model.h, the threaded
// hashed writer): Qwen2 with q/k/v biases, untied head, rope_theta 1e6, weights 0 ± 0.02, norms 1 ± 0.1.
void write_checkpoint(const std::string& dir, const Shape& s) {
  RandomModelSpec r;
  r.architecture = "Qwen2ForCausalLM";
  r.hidden = s.hidden, r.intermediate = s.intermediate, r.layers = s.layers, r.heads = s.heads;
  r.kv_heads = s.kv_heads, r.vocab = s.vocab;
  r.max_positions = 32768;
  r.rope_theta = 1e6f;
  r.tied = false;
  r.dtype = DType::BF16;
  r.std = 0.02f;
  r.hashed = true;
  write_random_model(dir, r);
}

std::string default_dir() {
  struct statvfs v{};
  if (::statvfs("/dev/shm", &v) == 0 && double(v.f_bavail) * v.f_frsize > 40e9)
    return "/dev/shm/outro_bench_cuda_" + std::to_string(::getpid());
  return (fs::temp_directory_path() / ("outro_bench_cuda_" + std::to_string(::getpid()))).string();
}

[[noreturn]] void usage(const char* msg) {
  std::fprintf(stderr,
               "%s\nusage: bench_cuda [--layers N] [--prompt N] [--decode N] [--prefill 4096,16384] [--reps N]\n"
               "                  [--dir DIR] [--keep] [--json FILE]\n",
               msg);
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
#ifndef OUTRO_HAVE_CUDA
  std::printf("bench_cuda: this build has no CUDA backend (nvcc was not found at configure time)\n");
  return 0;
#else
  Shape shape;
  int prompt = 128, decode = 64, reps = 3;
  std::vector<int> prefills = {4096, 16384};
  std::string dir, json_path;
  bool keep = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) usage(("missing value after " + a).c_str());
      return argv[++i];
    };
    auto num = [&](const std::string& v) {
      char* e = nullptr;
      long x = std::strtol(v.c_str(), &e, 10);
      if (v.empty() || *e || x < 1 || x > (1 << 24)) usage((a + ": expected a positive integer, found '" + v + "'").c_str());
      return int(x);
    };
    if (a == "--layers") shape.layers = num(val());
    else if (a == "--prompt") prompt = num(val());
    else if (a == "--decode") decode = num(val());
    else if (a == "--reps") reps = num(val());
    else if (a == "--dir") dir = val();
    else if (a == "--keep") keep = true;
    else if (a == "--json") json_path = val();
    else if (a == "--prefill") {
      prefills.clear();
      std::string v = val();
      size_t p = 0;
      while (p <= v.size()) {
        size_t q = v.find(',', p);
        if (q == std::string::npos) q = v.size();
        prefills.push_back(num(v.substr(p, q - p)));
        p = q + 1;
      }
    } else if (a == "-h" || a == "--help") usage("CUDA decode/prefill speed on a random Qwen2.5-Omni-7B-thinker-shaped decoder");
    else usage(("unknown argument '" + a + "'").c_str());
  }
  nlohmann::json out;
  try {
    cuda_api::DeviceInfo info;
    std::string why;
    if (!cuda_api::device_info(0, &info, &why)) {
      std::printf("bench_cuda: no CUDA GPU (%s)\n", why.c_str());
      return 0;
    }
    std::printf("GPU: %s (sm_%d%d, %d SMs, %.1f GiB, %.1f GiB free)\n", info.name.c_str(), info.sm_major, info.sm_minor,
                info.sms, info.mem_total / 1073741824.0, info.mem_free / 1073741824.0);
    const double bw = cuda_api::copy_bandwidth(0, size_t(2) << 30, 20);
    std::printf("measured copy bandwidth (cudaMemcpy D2D 2 GiB, read + written bytes, best of 20): %.0f GB/s\n", bw / 1e9);
    const double peak = cuda_api::bf16_gemm_tflops(0, 8192, 8192, 8192, 20);
    std::printf("measured bf16 matrix rate (cuBLAS 8192^3, random data, best of 20): %.0f TFLOP/s\n", peak);
    out["gpu"] = info.name;
    out["copy_bw_gbs"] = bw / 1e9;
    out["bf16_tflops"] = peak;

    if (dir.empty()) dir = default_dir();
    const bool made = !fs::exists(dir + "/model.safetensors");
    auto t = Clock::now();
    if (made) write_checkpoint(dir, shape);
    std::printf("checkpoint: %s (%d layers, bf16) %s in %.1f s\n", dir.c_str(), shape.layers,
                made ? "written" : "reused", since(t));
    struct Cleanup {
      std::string d;
      bool keep;
      ~Cleanup() {
        if (!keep) fs::remove_all(d);
      }
    } cleanup{dir, keep || !made};

    auto model = Model::load(dir);
    const ModelConfig& c = model->config();
    auto be = make_cuda_backend(0, &why);
    if (!be) fail("no CUDA backend: ", why);
    const int max_prefill = *std::max_element(prefills.begin(), prefills.end());
    const int ctx = std::max(prompt + decode, max_prefill) + 1;
    t = Clock::now();
    Session sess(*model, *be, ctx);
    be->synchronize();
    std::printf("loaded onto the GPU in %.1f s: %.2f GB of weights, KV cache for %d tokens\n", since(t),
                cuda_api::weight_bytes(*be) / 1e9, ctx);

    double bytes_per_token = double(model->lm_head->nbytes);
    double params_matrix = double(model->lm_head->nbytes) / 2;  // FLOPs per token (lm_head for the last row only)
    for (const auto& l : model->layers)
      for (const TensorInfo* m : {l.q, l.k, l.v, l.o, l.gate, l.up, l.down}) {
        bytes_per_token += double(m->nbytes);
        params_matrix += double(m->nbytes) / 2;
      }
    const double layer_params = params_matrix - double(model->lm_head->nbytes) / 2;

    uint64_t x = 777;
    auto rnd_ids = [&](int n) {
      std::vector<int32_t> v(static_cast<size_t>(n));
      for (auto& id : v) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        id = int32_t((x >> 33) % uint64_t(c.vocab));
      }
      return v;
    };

    // ---- decode ----
    const auto p_ids = rnd_ids(prompt), d_ids = rnd_ids(decode);
    std::vector<float> logits;
    // The same decode with the backend's op fusion off (every small op its own kernel), for comparison.
    {
      cuda_api::set_fusion(*be, false);
      std::vector<double> un;
      for (int r = 0; r <= reps; ++r) {
        sess.reset();
        sess.forward(p_ids, &logits);
        be->synchronize();
        auto t1 = Clock::now();
        for (int i = 0; i < decode; ++i) sess.forward(&d_ids[size_t(i)], 1, &logits);
        if (r) un.push_back(since(t1) / decode);
      }
      cuda_api::set_fusion(*be, true);
      const double u = median(un);
      std::printf("\ndecode with op fusion off (OUTRO_CUDA_FUSE=0): median %.2f ms/token = %.1f tok/s = %.1f%% of the "
                  "copy bandwidth\n",
                  u * 1e3, 1 / u, 100 * bytes_per_token / u / bw);
      out["decode_tok_s_unfused"] = 1 / u;
      out["decode_bw_fraction_unfused"] = bytes_per_token / u / bw;
    }
    std::vector<double> dec;
    for (int r = 0; r <= reps; ++r) {  // the first is a warm-up
      sess.reset();
      sess.forward(p_ids, &logits);
      be->synchronize();
      auto t1 = Clock::now();
      for (int i = 0; i < decode; ++i) sess.forward(&d_ids[size_t(i)], 1, &logits);
      const double td = since(t1);
      bool finite = true;
      for (float v : logits) finite = finite && std::isfinite(v);
      if (!finite) std::printf("  warning: non-finite logits\n");
      if (r) dec.push_back(td / decode);
    }
    {
      const double l = median(dec);
      std::printf("\ndecode at batch 1 with every step's logits copied back (prompt %d, %d steps): median %.2f ms/token = "
                  "%.1f tok/s = %.1f%% of the copy bandwidth\n",
                  prompt, decode, l * 1e3, 1 / l, 100 * bytes_per_token / l / bw);
      out["decode_tok_s_logits_copied"] = 1 / l;
      out["decode_bw_fraction_logits_copied"] = bytes_per_token / l / bw;
    }
    // Greedy decoding as `generate --greedy` runs it (and as tools/bench_transformers.py runs
    // transformers): each step's token is the argmax of the last one's logits, found on the GPU
    // (Session::forward_argmax); only the index comes back.
    dec.clear();
    for (int r = 0; r <= reps; ++r) {
      sess.reset();
      int32_t next = sess.forward_argmax(p_ids.data(), int(p_ids.size()));
      be->synchronize();
      auto t1 = Clock::now();
      for (int i = 0; i < decode; ++i) next = sess.forward_argmax(&next, 1);
      if (r) dec.push_back(since(t1) / decode);
    }
    const double dstep = median(dec), dbest = *std::min_element(dec.begin(), dec.end());
    std::printf("\ndecode at batch 1, greedy on the GPU (prompt %d, %d steps, %d reps): median %.2f ms/token = %.1f tok/s "
                "(best %.1f)\n",
                prompt, decode, reps, dstep * 1e3, 1 / dstep, 1 / dbest);
    std::printf("  weights read per token %.2f GB -> %.0f GB/s = %.1f%% of the measured copy bandwidth (best %.1f%%)\n",
                bytes_per_token / 1e9, bytes_per_token / dstep / 1e9, 100 * bytes_per_token / dstep / bw,
                100 * bytes_per_token / dbest / bw);
    out["decode_tok_s"] = 1 / dstep;
    out["decode_tok_s_best"] = 1 / dbest;
    out["decode_bw_fraction"] = bytes_per_token / dstep / bw;
    out["decode_bw_fraction_best"] = bytes_per_token / dbest / bw;
    out["bytes_per_token"] = bytes_per_token;

    // The matrix products of one decode step alone (GEMV over every matrix once).
    {
      Buf xin = be->alloc(size_t(c.intermediate)), yout = be->alloc(size_t(std::max(c.vocab, c.intermediate)));
      std::vector<float> ones(size_t(c.intermediate), 0.01f);
      be->upload(xin, 0, ones.data(), ones.size());
      std::vector<Weight> ws;
      for (const auto& l : model->layers)
        for (const TensorInfo* m : {l.q, l.k, l.v, l.o, l.gate, l.up, l.down}) ws.push_back(be->weight(*m));
      ws.push_back(be->weight(*model->lm_head));
      // Median of 5 timed runs of fn after a warm-up, the GPU idle before and done after each.
      auto gpu_median = [&](const auto& fn) {
        std::vector<double> t;
        for (int r = 0; r < 6; ++r) {
          be->synchronize();
          auto t2 = Clock::now();
          fn();
          be->synchronize();
          if (r) t.push_back(since(t2));
        }
        return median(t);
      };
      const double g = gpu_median([&] {
        for (const auto& w : ws) be->matmul(yout, xin, 1, w, nullptr);
      });
      std::printf("  GEMV alone over the same weights: %.2f ms = %.0f GB/s = %.1f%% of copy bandwidth; the rest of "
                  "the step: %.2f ms\n",
                  g * 1e3, bytes_per_token / g / 1e9, 100 * bytes_per_token / g / bw, (dstep - g) * 1e3);
      out["gemv_bw_fraction"] = bytes_per_token / g / bw;
      // The same products as a decode step launches them: q/k/v together, gate/up with the SwiGLU.
      const size_t Dn = size_t(c.hidden), In = size_t(c.intermediate), KVn = size_t(c.kv_heads) * c.head_dim;
      Buf yq = be->alloc(Dn), yk = be->alloc(KVn), yv = be->alloc(KVn), yo = be->alloc(Dn), yg = be->alloc(In),
          yu = be->alloc(In), yd = be->alloc(Dn), yl = be->alloc(size_t(c.vocab));
      auto gemv_step = [&] {
        for (size_t l = 0; l + 1 < ws.size(); l += 7) {
          be->matmul(yq, xin, 1, ws[l], nullptr);
          be->matmul(yk, xin, 1, ws[l + 1], nullptr);
          be->matmul(yv, xin, 1, ws[l + 2], nullptr);
          be->matmul(yo, xin, 1, ws[l + 3], nullptr);
          be->matmul(yg, xin, 1, ws[l + 4], nullptr);
          be->matmul(yu, xin, 1, ws[l + 5], nullptr);
          be->swiglu(yg, yg, yu, In);
          be->matmul(yd, yg, 1, ws[l + 6], nullptr);
        }
        be->matmul(yl, xin, 1, ws.back(), nullptr);
      };
      const double gf = gpu_median(gemv_step);
      std::printf("  GEMV as a decode step launches it (q/k/v in one launch, gate/up with the SwiGLU): %.2f ms = %.0f "
                  "GB/s = %.1f%% of copy bandwidth; the rest of the step: %.2f ms\n",
                  gf * 1e3, bytes_per_token / gf / 1e9, 100 * bytes_per_token / gf / bw, (dstep - gf) * 1e3);
      out["gemv_fused_bw_fraction"] = bytes_per_token / gf / bw;

      // The small ops between the products, each repeated in a dependent chain (as in a step).
      {
        const int H = c.heads, hd = c.head_dim, past = prompt + decode / 2;
        Weight nw = be->weight(*model->layers[0].attn_norm);
        Buf xr = be->alloc(Dn), ar = be->alloc(Dn), xn = be->alloc(Dn), q = be->alloc(size_t(H) * hd),
            k = be->alloc(KVn), v = be->alloc(KVn), z = be->alloc(size_t(H) * hd),
            kc = be->alloc(size_t(past + 1) * KVn), vc = be->alloc(size_t(past + 1) * KVn);
        const int32_t pos[1] = {past};
        AttnParams ap;
        ap.n_heads = H, ap.n_kv = c.kv_heads, ap.head_dim = hd, ap.scale = 1.f / std::sqrt(float(hd));
        ap.n_new = 1, ap.past = past;
        // GPU time per call of a dependent chain of 200: the chain is queued behind two steps' worth of
        // products (about 10 ms of GPU work), so the host's enqueue cost is hidden; minus the products
        // alone. host_us: the host's own time per call (the enqueue), measured in the same loop.
        double host_us = 0;
        auto lat = [&](auto fn) {
          fn();
          be->synchronize();
          auto tb = Clock::now();
          gemv_step();
          gemv_step();
          be->synchronize();
          const double blocker = since(tb);
          auto t3 = Clock::now();
          gemv_step();
          gemv_step();
          auto th = Clock::now();
          for (int i = 0; i < 200; ++i) fn();
          host_us = since(th) / 200 * 1e6;
          be->synchronize();
          return (since(t3) - blocker) / 200 * 1e6;
        };
        const double t_norm = lat([&] {
          be->add(xr, ar, Dn);
          be->rmsnorm(xn, xr, 1, nw, c.rms_eps);
        });
        const double t_rope = lat([&] {
          be->rope(q, 1, H, hd, pos, model->inv_freq.data());
          be->rope(k, 1, c.kv_heads, hd, pos, model->inv_freq.data());
          be->copy(kc, size_t(past) * KVn, k, 0, KVn);
          be->copy(vc, size_t(past) * KVn, v, 0, KVn);
        });
        const double t_attn = lat([&] { be->attention(z, q, kc, vc, ap); });
        const double t_attn_host = host_us;
        const std::string attn_kernel = cuda_api::last_attention_kernel(*be);
        auto lat_with = [&](int force) {  // other kernels over the same keys, for comparison
          cuda_api::set_attention_kernel(*be, force);
          const double t = lat([&] { be->attention(z, q, kc, vc, ap); });
          cuda_api::set_attention_kernel(*be, 0);
          return t;
        };
        const double t_attn_rows = lat_with(1), t_attn_global = lat_with(4), t_attn_one = lat_with(5);
        const double per_layer = 2 * t_norm + t_rope + t_attn;
        std::printf("  small ops (GPU time, each in a chain of 200): add + RMSNorm %.1f us, RoPE + KV-cache writes %.1f us, "
                    "attention over %d keys %.1f us; per layer 2 x %.1f + %.1f + %.1f = %.1f us, x %d layers = %.2f ms\n",
                    t_norm, t_rope, past + 1, t_attn, t_norm, t_rope, t_attn, per_layer, c.layers,
                    per_layer * c.layers / 1e3);
        std::printf("  decode attention kernel used: %s (the host's enqueue: %.1f us a call); over the same keys: the "
                    "decode kernel merged through global memory %.1f us, unsplit %.1f us, the portable row kernel %.1f "
                    "us\n",
                    attn_kernel.c_str(), t_attn_host, t_attn_global, t_attn_one, t_attn_rows);
        out["attention_host_enqueue_us"] = t_attn_host;
        // The step's end: the logits copied back to the host (the host waits for it).
        Buf lg = be->alloc(size_t(c.vocab));
        std::vector<float> host_logits(size_t(c.vocab));
        const double t_dl = lat([&] { be->download(lg, 0, host_logits.data(), host_logits.size()); });
        cuda_api::set_pinned_download(*be, false);
        const double t_dl_direct = lat([&] { be->download(lg, 0, host_logits.data(), host_logits.size()); });
        cuda_api::set_pinned_download(*be, true);
        be->release(lg);
        std::printf("  logits download (%d floats): %.1f us through the pinned buffer, %.1f us straight to pageable "
                    "memory\n",
                    c.vocab, t_dl, t_dl_direct);
        out["logits_download_us"] = t_dl;
        out["logits_download_direct_us"] = t_dl_direct;
        out["small_ops_us"] = {{"add_rmsnorm", t_norm}, {"rope_kv_write", t_rope}, {"attention", t_attn},
                               {"attention_rows_kernel", t_attn_rows}, {"attention_dec_global", t_attn_global},
                               {"attention_dec_unsplit", t_attn_one}};
        out["decode_attention_kernel"] = attn_kernel;
        for (Buf* b : {&xr, &ar, &xn, &q, &k, &v, &z, &kc, &vc}) be->release(*b);
      }
      for (Buf* b : {&yq, &yk, &yv, &yo, &yg, &yu, &yd, &yl}) be->release(*b);
      be->release(xin);
      be->release(yout);
    }

    // ---- prefill ----
    for (int n : prefills) {
      const auto ids = rnd_ids(n);
      std::vector<double> tp;
      for (int r = 0; r <= std::min(reps, 2); ++r) {
        sess.reset();
        be->synchronize();
        auto t3 = Clock::now();
        sess.forward(ids, &logits);  // logits of the last row, copied back
        const double s = since(t3);
        if (r) tp.push_back(s);
      }
      const double tm = median(tp);
      const double attn_flops = 4.0 * c.layers * c.heads * c.head_dim * (double(n) * (n + 1) / 2);
      const double flops = 2.0 * layer_params * n + 2.0 * double(model->lm_head->nbytes) / 2 + attn_flops;
      std::printf("\nprefill %d tokens: %.3f s = %.0f tok/s; %.1f TFLOP (%.0f%% attention) -> %.0f TFLOP/s = %.1f%% of "
                  "the measured bf16 matrix rate\n",
                  n, tm, n / tm, flops / 1e12, 100 * attn_flops / flops, flops / tm / 1e12, 100 * flops / tm / 1e12 / peak);
      out["prefill"][std::to_string(n)] = {{"tok_s", n / tm}, {"tflops", flops / tm / 1e12},
                                           {"fraction", flops / tm / 1e12 / peak}};
    }
    if (!json_path.empty()) std::ofstream(json_path) << out.dump(2);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_cuda: %s\n", e.what());
    return 1;
  }
  return 0;
#endif
}
