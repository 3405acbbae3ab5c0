// CPU speed benchmark: measures the machine's read bandwidth, writes a random checkpoint shaped like
// Qwen2-0.5B (hidden 896, intermediate 4864, 24 layers, 14 heads, 2 KV heads, vocab 151936, tied
// embeddings, q/k/v biases, rope_theta 1e6) to a temporary folder, loads it, and times a prefill and
// decode steps through Session. Decode streams every weight matrix once per token, so its speed is
// reported as achieved bandwidth and as a fraction of the measured read bandwidth. Prefill is bound
// by the matrix units, so the peak of each CPU path (float32 FMA, AVX-512 BF16 vdpbf16ps, AMX
// tiles: whichever this CPU has) is measured by a register-only microbenchmark on every thread, and
// prefill's achieved TFLOP/s is reported as a fraction of the peak of the path it ran on. --gemm
// also times the decoder's products alone (through the backend) on every path.
//
//   bench_cpu [--layers N] [--dtype f32|bf16|f16] [--prefill N] [--decode N] [--reps N]
//             [--threads N] [--isa portable|avx2|avx512|avx512bf16|amx] [--bw-mib N] [--keep DIR]
//             [--bw-only] [--peak-only] [--gemm]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include <unistd.h>

#include "bench_util.h"
#include "core/error.h"
#include "core/threadpool.h"
#include "io/safetensors.h"
#include "kernels/backend.h"
#include "kernels/cpu/gemm.h"
#include "models/model.h"
#include "runtime/session.h"

using namespace outro;
namespace fs = std::filesystem;

namespace {

using bench::Clock;
using bench::since;

struct Rng {  // splitmix64: fast, plenty for random weights
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  float uniform() { return float(next() >> 40) * (1.f / 16777216.f); }  // [0, 1)
};

struct Shape {
  int hidden = 896, intermediate = 4864, layers = 24, heads = 14, kv_heads = 2, vocab = 151936;
  double rope_theta = 1e6;
};

// Random values mean ± sd·√3 (uniform), stored in dtype.
TensorOut random_tensor(const std::string& name, std::vector<int64_t> shape, DType dt, float mean, float sd,
                        uint64_t seed) {
  TensorOut t;
  t.name = name;
  t.dtype = dt;
  t.shape = std::move(shape);
  size_t n = 1;
  for (auto d : t.shape) n *= size_t(d);
  t.bytes.resize(n * dtype_size(dt));
  const size_t chunk = 1 << 20;
  const size_t nchunks = (n + chunk - 1) / chunk;
  const float a = sd * 1.7320508f;
  ThreadPool::global().parallel_for(nchunks, [&](size_t c0, size_t c1) {
    for (size_t c = c0; c < c1; ++c) {
      Rng rng{seed * 1000003u + c};
      for (size_t i = c * chunk; i < std::min(n, (c + 1) * chunk); ++i) {
        const float v = mean + a * (2.f * rng.uniform() - 1.f);
        if (dt == DType::F32) {
          std::memcpy(t.bytes.data() + 4 * i, &v, 4);
        } else {
          const uint16_t h = dt == DType::BF16 ? f32_to_bf16(v) : f32_to_f16(v);
          std::memcpy(t.bytes.data() + 2 * i, &h, 2);
        }
      }
    }
  });
  return t;
}

void write_model(const std::string& dir, const Shape& s, DType dt) {
  fs::create_directories(dir);
  nlohmann::json cfg = {{"architectures", {"Qwen2ForCausalLM"}},
                        {"model_type", "qwen2"},
                        {"hidden_size", s.hidden},
                        {"intermediate_size", s.intermediate},
                        {"num_hidden_layers", s.layers},
                        {"num_attention_heads", s.heads},
                        {"num_key_value_heads", s.kv_heads},
                        {"vocab_size", s.vocab},
                        {"max_position_embeddings", 32768},
                        {"rope_theta", s.rope_theta},
                        {"rms_norm_eps", 1e-6},
                        {"tie_word_embeddings", true},
                        {"hidden_act", "silu"},
                        {"eos_token_id", s.vocab - 1}};
  std::ofstream(dir + "/config.json") << cfg.dump(2);
  const int64_t D = s.hidden, I = s.intermediate, hd = s.hidden / s.heads;
  const int64_t q = int64_t(s.heads) * hd, kv = int64_t(s.kv_heads) * hd;
  const float sd = 0.02f;
  uint64_t seed = 1;
  std::vector<TensorOut> ts;
  ts.push_back(random_tensor("model.embed_tokens.weight", {s.vocab, D}, dt, 0, sd, seed++));
  for (int l = 0; l < s.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    ts.push_back(random_tensor(p + "input_layernorm.weight", {D}, dt, 1, 0.05f, seed++));
    ts.push_back(random_tensor(p + "self_attn.q_proj.weight", {q, D}, dt, 0, sd, seed++));
    ts.push_back(random_tensor(p + "self_attn.k_proj.weight", {kv, D}, dt, 0, sd, seed++));
    ts.push_back(random_tensor(p + "self_attn.v_proj.weight", {kv, D}, dt, 0, sd, seed++));
    ts.push_back(random_tensor(p + "self_attn.q_proj.bias", {q}, dt, 0, sd, seed++));
    ts.push_back(random_tensor(p + "self_attn.k_proj.bias", {kv}, dt, 0, sd, seed++));
    ts.push_back(random_tensor(p + "self_attn.v_proj.bias", {kv}, dt, 0, sd, seed++));
    ts.push_back(random_tensor(p + "self_attn.o_proj.weight", {D, q}, dt, 0, sd, seed++));
    ts.push_back(random_tensor(p + "post_attention_layernorm.weight", {D}, dt, 1, 0.05f, seed++));
    ts.push_back(random_tensor(p + "mlp.gate_proj.weight", {I, D}, dt, 0, sd, seed++));
    ts.push_back(random_tensor(p + "mlp.up_proj.weight", {I, D}, dt, 0, sd, seed++));
    ts.push_back(random_tensor(p + "mlp.down_proj.weight", {D, I}, dt, 0, sd, seed++));
  }
  ts.push_back(random_tensor("model.norm.weight", {D}, dt, 1, 0.05f, seed++));
  write_safetensors(dir + "/model.safetensors", ts);
}

// Best-of-reps multithreaded read bandwidth (bytes/s) over a buffer far larger than the LLC,
// read with the same pool and the same ISA's streaming kernel the decode path uses.
double measure_read_bw(size_t mib, int reps, double* checksum) {
  auto& pool = ThreadPool::global();
  const size_t n = mib * (size_t(1) << 20) / sizeof(float);
  float* buf = static_cast<float*>(::operator new[](n * sizeof(float), std::align_val_t(64)));
  const size_t parts = size_t(pool.size());
  pool.parallel_for(parts, [&](size_t p0, size_t p1) {
    for (size_t p = p0; p < p1; ++p) {
      const size_t b = n * p / parts, e = n * (p + 1) / parts;
      for (size_t i = b; i < e; ++i) buf[i] = float(i & 1023) * 1e-3f;
    }
  });
  const auto& K = cpu::kernels();
  std::vector<double> partial(parts);
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    auto t = Clock::now();
    pool.parallel_for(parts, [&](size_t p0, size_t p1) {
      for (size_t p = p0; p < p1; ++p) {
        const size_t b = n * p / parts, e = n * (p + 1) / parts;
        partial[p] = K.sum(buf + b, int64_t(e - b));
      }
    });
    best = std::min(best, since(t));
    *checksum = 0;
    for (double v : partial) *checksum += v;
  }
  ::operator delete[](buf, std::align_val_t(64));
  return double(n * sizeof(float)) / best;
}

// Best-of-reps flop/s of a peak probe run on every pool thread at once.
double measure_peak(double (*probe)(int64_t), int reps) {
  auto& pool = ThreadPool::global();
  const size_t parts = size_t(pool.size());
  int64_t iters = 1 << 16;
  for (;;) {  // size the run to ~50 ms per thread
    auto t = Clock::now();
    probe(iters);
    if (since(t) > 0.05 || iters > (int64_t(1) << 32)) break;
    iters *= 2;
  }
  double best = 0;
  for (int r = 0; r < reps; ++r) {
    std::vector<double> flops(parts);
    auto t = Clock::now();
    pool.parallel_for(parts, [&](size_t p0, size_t p1) {
      for (size_t p = p0; p < p1; ++p) flops[p] = probe(iters);
    });
    const double dt = since(t);
    double f = 0;
    for (double v : flops) f += v;
    best = std::max(best, f / dt);
  }
  return best;
}

struct Peak {
  std::string path;
  double flops;
};

// The peak of every path this CPU can run.
std::vector<Peak> measure_peaks() {
  std::vector<Peak> v;
  for (cpu::Isa i : {cpu::Isa::Avx2, cpu::Isa::Avx512, cpu::Isa::Avx512Bf16, cpu::Isa::Amx}) {
    const cpu::Kernels* k = cpu::kernels_for(i);
    if (!k) continue;
    if (k->mm) v.push_back({std::string(k->mm->name) + " (bf16 in, f32 accumulate)", measure_peak(k->mm->peak, 3)});
    else if (k->peak) v.push_back({std::string(k->name) + " f32 FMA", measure_peak(k->peak, 3)});
  }
  return v;
}

// The peak of the unit the active set multiplies n-row products with (weights of type dt) on.
double active_peak(DType dt, int n) {
  const cpu::Kernels& k = cpu::kernels();
  if (cpu::uses_bf16(k, n, dt)) return measure_peak(k.mm->peak, 3);
  return k.peak ? measure_peak(k.peak, 3) : 0.0;
}

// The decoder's products alone (the 0.5B shape's q, gate/up, down) at n rows, on every path.
void bench_gemm(const Shape& s, DType dt, int n, int reps) {
  auto be = make_cpu_backend();
  const int64_t D = s.hidden, I = s.intermediate;
  const int64_t shapes[][2] = {{D, D}, {I, D}, {D, I}};
  std::printf("\nproducts y[%d, rows] = x[%d, cols] · wᵀ (%s weights), best of %d, TFLOP/s:\n", n, n, dtype_name(dt), reps);
  std::printf("| path | %lldx%lld | %lldx%lld | %lldx%lld |\n|---|---|---|---|\n", (long long)D, (long long)D,
              (long long)I, (long long)D, (long long)D, (long long)I);
  const cpu::Isa saved = cpu::kernels().isa;
  for (cpu::Isa i : {cpu::Isa::Avx2, cpu::Isa::Avx512, cpu::Isa::Avx512Bf16, cpu::Isa::Amx}) {
    if (!cpu::set_isa(i)) continue;
    std::printf("| %s |", cpu::isa_name(i));
    for (auto [rows, cols] : shapes) {
      TensorOut w = random_tensor("w", {rows, cols}, dt, 0, 0.02f, uint64_t(rows + cols));
      Weight wt;
      wt.dtype = dt;
      wt.rows = rows;
      wt.cols = cols;
      wt.data = w.bytes.data();
      std::vector<float> xs(size_t(n) * size_t(cols), 0.01f);
      Buf x = be->alloc(xs.size()), y = be->alloc(size_t(n) * size_t(rows));
      be->upload(x, 0, xs.data(), xs.size());
      double best = 1e30;
      for (int r = 0; r < reps + 1; ++r) {  // the first is a warm-up
        auto t = Clock::now();
        be->matmul(y, x, n, wt, nullptr);
        if (r) best = std::min(best, since(t));
      }
      std::printf(" %.3f |", 2.0 * double(n) * double(rows) * double(cols) / best / 1e12);
      be->release(x);
      be->release(y);
    }
    std::printf("\n");
  }
  cpu::set_isa(saved);
}

struct TempDir {
  std::string path;
  bool keep = false;
  ~TempDir() {
    if (!path.empty() && !keep) {
      std::error_code ec;
      fs::remove_all(path, ec);
    }
  }
};

[[noreturn]] void usage(const char* why) {
  std::fprintf(stderr,
               "bench_cpu: %s\nusage: bench_cpu [--layers N] [--dtype f32|bf16|f16] [--prefill N] [--decode N] "
               "[--reps N] [--threads N] [--isa portable|avx2|avx512|avx512bf16|amx] [--bw-mib N] [--keep DIR] "
               "[--bw-only] [--peak-only] [--gemm]\n",
               why);
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  Shape shape;
  DType dt = DType::BF16;
  int prefill = 128, decode = 32, reps = 3, threads = 0;
  size_t bw_mib = 1024;
  std::string isa, keep_dir;
  bool bw_only = false, peak_only = false, gemm = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) usage(("missing value after " + a).c_str());
      return argv[++i];
    };
    auto num = [&](int lo) {
      std::string v = val();
      char* end = nullptr;
      long x = std::strtol(v.c_str(), &end, 10);
      if (v.empty() || *end || x < lo || x > 1 << 30) usage((a + ": expected an integer >= " + std::to_string(lo) + ", found '" + v + "'").c_str());
      return int(x);
    };
    if (a == "--layers") shape.layers = num(1);
    else if (a == "--prefill") prefill = num(1);
    else if (a == "--decode") decode = num(1);
    else if (a == "--reps") reps = num(1);
    else if (a == "--threads") threads = num(1);
    else if (a == "--bw-mib") bw_mib = size_t(num(1));
    else if (a == "--isa") isa = val();
    else if (a == "--keep") keep_dir = val();
    else if (a == "--bw-only") bw_only = true;
    else if (a == "--peak-only") peak_only = true;
    else if (a == "--gemm") gemm = true;
    else if (a == "--dtype") {
      std::string v = val();
      if (v == "f32") dt = DType::F32;
      else if (v == "bf16") dt = DType::BF16;
      else if (v == "f16") dt = DType::F16;
      else usage(("--dtype: expected f32, bf16 or f16, found '" + v + "'").c_str());
    } else if (a == "-h" || a == "--help") {
      usage("CPU prefill/decode speed on a random Qwen2-0.5B-shaped checkpoint");
    } else {
      usage(("unknown argument '" + a + "'").c_str());
    }
  }
  if (threads > 0) setenv("OUTRO_THREADS", std::to_string(threads).c_str(), 1);  // before the pool exists
  if (!isa.empty()) {
    cpu::Isa want;
    if (isa == "portable") want = cpu::Isa::Portable;
    else if (isa == "avx2") want = cpu::Isa::Avx2;
    else if (isa == "avx512") want = cpu::Isa::Avx512;
    else if (isa == "avx512bf16") want = cpu::Isa::Avx512Bf16;
    else if (isa == "amx") want = cpu::Isa::Amx;
    else usage(("--isa: expected portable, avx2, avx512, avx512bf16 or amx, found '" + isa + "'").c_str());
    if (!cpu::set_isa(want)) {
      std::fprintf(stderr, "bench_cpu: this CPU cannot run the %s kernels\n", isa.c_str());
      return 1;
    }
  }
  try {
    auto& pool = ThreadPool::global();
    std::printf("ISA: %s   threads: %d%s%s\n", cpu::gemm_isa(), pool.size(), *cpu::isa_note() ? "   note: " : "",
                cpu::isa_note());
    std::printf("measured peak of each CPU path (all %d threads, register-only microbenchmark):\n", pool.size());
    for (const Peak& p : measure_peaks()) std::printf("  %-40s %.3f TFLOP/s\n", p.path.c_str(), p.flops / 1e12);
    if (peak_only) return 0;
    if (gemm) {
      bench_gemm(shape, dt, prefill, reps);
      bench_gemm(shape, dt, 8, reps);
    }

    double checksum = 0;
    const double bw = measure_read_bw(bw_mib, 5, &checksum);
    std::printf("measured read bandwidth: %.2f GB/s (best of 5 passes over %zu MiB; checksum %.3g)\n", bw / 1e9,
                bw_mib, checksum);
    if (bw_only) return 0;

    TempDir tmp;
    if (!keep_dir.empty()) {
      tmp.path = keep_dir;
      tmp.keep = true;
    } else {
      tmp.path = (fs::temp_directory_path() / ("outro_bench_cpu_" + std::to_string(::getpid()))).string();
    }
    auto t = Clock::now();
    if (!fs::exists(tmp.path + "/model.safetensors")) write_model(tmp.path, shape, dt);
    std::printf("random checkpoint: %s (%d layers, %s) written in %.1f s\n", tmp.path.c_str(), shape.layers,
                dtype_name(dt), since(t));

    auto model = Model::load(tmp.path);
    const ModelConfig& c = model->config();
    auto be = make_cpu_backend();
    Session sess(*model, *be, prefill + decode + 1);

    // Bytes of weights one decode step reads: every matrix, lm_head included (the tied embedding).
    double bytes_per_token = double(model->lm_head->nbytes);
    for (const auto& l : model->layers)
      for (const TensorInfo* m : {l.q, l.k, l.v, l.o, l.gate, l.up, l.down}) bytes_per_token += double(m->nbytes);

    std::vector<int32_t> prompt(static_cast<size_t>(prefill));
    Rng rng{42};
    for (auto& id : prompt) id = int32_t(rng.next() % uint64_t(c.vocab));
    std::vector<int32_t> next(static_cast<size_t>(decode));
    for (auto& id : next) id = int32_t(rng.next() % uint64_t(c.vocab));

    // Prefill's flops: every layer's products for every token, attention's QKᵀ and PV over the causal
    // prefix, and the lm_head for the last token only (Session::forward's default).
    double prefill_flops = 2.0 * double(model->lm_head->numel());
    {
      const int hd = c.head_dim, H = c.heads;
      for (const auto& l : model->layers)
        for (const TensorInfo* m : {l.q, l.k, l.v, l.o, l.gate, l.up, l.down})
          prefill_flops += 2.0 * double(m->numel()) * prefill;
      prefill_flops += double(c.layers) * 4.0 * H * hd * (double(prefill) * (prefill + 1) / 2);
    }
    const cpu::Kernels& K = cpu::kernels();
    const bool bf16_path = cpu::uses_bf16(K, prefill, dt);
    const std::string prefill_path = bf16_path ? K.mm->name : std::string(K.name) + " f32";
    const double peak = active_peak(dt, prefill);

    std::vector<float> logits;
    double best_prefill = 1e30, best_decode = 1e30;
    for (int r = 0; r < reps; ++r) {
      sess.reset();
      auto t0 = Clock::now();
      sess.forward(prompt, &logits);
      const double tp = since(t0);
      auto t1 = Clock::now();
      for (int i = 0; i < decode; ++i) sess.forward(&next[size_t(i)], 1, &logits);
      const double td = since(t1);
      std::printf("  rep %d: prefill %.3f s (%.1f tok/s), decode %.3f s (%.2f tok/s)\n", r + 1, tp, prefill / tp, td,
                  decode / td);
      best_prefill = std::min(best_prefill, tp);
      best_decode = std::min(best_decode, td);
    }
    const double ptok = prefill / best_prefill, dtok = decode / best_decode;
    const double dbw = bytes_per_token * dtok;
    char model_name[64];
    std::snprintf(model_name, sizeof model_name, "qwen2-0.5b-shape%s",
                  shape.layers == 24 ? "" : (" (" + std::to_string(shape.layers) + " layers)").c_str());
    std::printf("\nweights read per decode token: %.1f MB; prefill %d tokens, decode %d steps, best of %d\n",
                bytes_per_token / 1e6, prefill, decode, reps);
    std::printf("| model | dtype | isa | threads | prefill tok/s | decode tok/s | decode GB/s | of measured read BW |\n");
    std::printf("|---|---|---|---|---|---|---|---|\n");
    std::printf("| %s | %s | %s | %d | %.1f | %.2f | %.2f | %.0f%% |\n", model_name, dtype_name(dt), cpu::gemm_isa(),
                pool.size(), ptok, dtok, dbw / 1e9, 100.0 * dbw / bw);
    std::printf("(measured read bandwidth %.2f GB/s)\n", bw / 1e9);
    const double tf = prefill_flops / best_prefill;
    std::printf("prefill: %.2f GFLOP per prompt, %.3f TFLOP/s achieved on the %s path = %.0f%% of its measured peak "
                "(%.3f TFLOP/s)\n",
                prefill_flops / 1e9, tf / 1e12, prefill_path.c_str(), peak > 0 ? 100.0 * tf / peak : 0.0, peak / 1e12);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_cpu: %s\n", e.what());
    return 1;
  }
  return 0;
}
