// The CUDA backend against the CPU backend: every Backend op on random inputs (all weight dtypes,
// odd shapes, both attention kernels with the causal, sink-out and segment policies, patterns), a
// whole forward pass with prefill, decode steps, hooks and OutRo, and the transformers fixtures.
// Every test needs a GPU: where there is none (CI compiles the backend with nvcc but has no GPU) it
// is skipped, saying why.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/safetensors.h"
#include "kernels/backend.h"
#include "kernels/host_ops.h"
#include "models/decoder.h"
#include "models/model.h"
#include "models/multimodal.h"
#include "models/random_model.h"
#include "outro/outro.h"
#include "runtime/hooks.h"
#include "runtime/intervention.h"
#include "runtime/session.h"
#include "test_util.h"
#ifdef OUTRO_HAVE_CUDA
#include "kernels/cuda/cuda_api.h"
#endif

namespace outro {
namespace {

namespace fs = std::filesystem;

std::vector<float> randn(size_t n, uint64_t seed, float sd = 1.f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.f, sd);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

// max |a - b| / max |b|
double rel(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0, s = 1e-30;
  for (size_t i = 0; i < b.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    m = std::max(m, double(std::fabs(a[i] - b[i])));
    s = std::max(s, double(std::fabs(b[i])));
  }
  return m / s;
}

// A tensor in host memory the backends can take through weight().
struct HostTensor {
  TensorInfo info;
  std::vector<uint8_t> bytes;
};
HostTensor tensor(const std::string& name, DType dt, std::vector<int64_t> shape, uint64_t seed, float sd = 0.5f,
                  float mean = 0.f) {
  HostTensor t;
  size_t n = 1;
  for (auto d : shape) n *= size_t(d);
  auto v = randn(n, seed, sd);
  t.bytes.resize(n * dtype_size(dt));
  for (size_t i = 0; i < n; ++i) {
    const float x = v[i] + mean;
    if (dt == DType::F32) std::memcpy(t.bytes.data() + 4 * i, &x, 4);
    else {
      const uint16_t h = dt == DType::BF16 ? f32_to_bf16(x) : f32_to_f16(x);
      std::memcpy(t.bytes.data() + 2 * i, &h, 2);
    }
  }
  t.info.name = name;
  t.info.dtype = dt;
  t.info.shape = std::move(shape);
  t.info.nbytes = t.bytes.size();
  t.info.file = "test";
  t.info.data = t.bytes.data();
  return t;
}

std::string no_gpu_reason() {
  std::string why;
  auto be = make_cuda_backend(0, &why);
  return be ? std::string() : why;
}

#define NEED_GPU()                                                                                      \
  do {                                                                                                   \
    static const std::string why = no_gpu_reason();                                                      \
    if (!why.empty()) GTEST_SKIP() << "needs a CUDA GPU, and this machine has none usable: " << why;     \
  } while (0)

// The same op on both backends.
struct Pair : ::testing::Test {
  std::unique_ptr<Backend> cpu = make_cpu_backend();
  std::unique_ptr<Backend> gpu;
  std::vector<std::pair<Backend*, Buf>> bufs;
  void SetUp() override {
    std::string why;
    gpu = make_cuda_backend(0, &why);
    if (!gpu) GTEST_SKIP() << "needs a CUDA GPU, and this machine has none usable: " << why;
  }
  void TearDown() override {
    for (auto& [b, buf] : bufs) b->release(buf);
  }
  Buf put(Backend& be, const std::vector<float>& v) {
    Buf b = be.alloc(v.size());
    be.upload(b, 0, v.data(), v.size());
    bufs.push_back({&be, b});
    return b;
  }
  std::vector<float> get(Backend& be, const Buf& b) {
    std::vector<float> v(b.n);
    be.download(b, 0, v.data(), v.size());
    return v;
  }
  // Runs f(backend, buffers) on both with the same inputs and returns the outputs' relative error.
  template <typename Fn>
  double both(const std::vector<std::vector<float>>& in, size_t out_index, Fn fn, std::vector<float>* out_cpu = nullptr,
              std::vector<float>* out_gpu = nullptr) {
    std::vector<float> r[2];
    int k = 0;
    for (Backend* be : {cpu.get(), gpu.get()}) {
      std::vector<Buf> b;
      for (auto& v : in) b.push_back(put(*be, v));
      fn(*be, b);
      r[k++] = get(*be, b[out_index]);
    }
    if (out_cpu) *out_cpu = r[0];
    if (out_gpu) *out_gpu = r[1];
    return rel(r[1], r[0]);
  }
};

TEST(Cuda, BackendIsCreatedOrSaysWhyNot) {
  std::string why;
  auto be = make_cuda_backend(0, &why);
  if (!be) {
    EXPECT_FALSE(why.empty());
    GTEST_SKIP() << "needs a CUDA GPU, and this machine has none usable: " << why;
  }
  EXPECT_STREQ(be->name(), "cuda");
  auto none = make_cuda_backend(1000, &why);
  EXPECT_EQ(none, nullptr);
  EXPECT_NE(why.find("1000"), std::string::npos) << why;
}

TEST_F(Pair, MemoryOps) {
  auto a = randn(1000, 1), b = randn(1000, 2);
  double e = both({a, b}, 0, [](Backend& be, std::vector<Buf>& x) {
    be.copy(x[0], 10, x[1], 100, 500);
    be.fill(x[0], 700, 33, 2.5f);
    be.add(x[0], x[1], 999);
  });
  EXPECT_EQ(e, 0.0);
  // A large upload (over the staging path) round-trips.
  auto big = randn(size_t(1) << 19, 3);
  Buf g = put(*gpu, big);
  EXPECT_EQ(get(*gpu, g), big);
}

TEST_F(Pair, MatmulEveryDtypeShapeAndRowCount) {
  for (DType dt : {DType::F32, DType::BF16, DType::F16})
    for (auto [rows, cols] : {std::pair{7, 50}, std::pair{64, 96}, std::pair{300, 1024}, std::pair{2500, 512},
                              std::pair{9000, 256}})
      for (int n : {1, 2, 3, 5, 8, 9, 40})
        for (bool with_bias : {false, true}) {
          auto w = tensor("w", dt, {rows, cols}, uint64_t(rows * 7 + cols));
          auto bias = tensor("b", dt, {rows}, uint64_t(rows + 5));
          Weight wc = cpu->weight(w.info), wg = gpu->weight(w.info);
          Weight bc = cpu->weight(bias.info), bg = gpu->weight(bias.info);
          auto x = randn(size_t(n) * cols, uint64_t(n));
          std::vector<float> yc, yg;
          int k = 0;
          for (Backend* be : {cpu.get(), gpu.get()}) {
            Buf xb = put(*be, x), yb = put(*be, std::vector<float>(size_t(n) * rows, NAN));
            const Weight& ww = k == 0 ? wc : wg;
            const Weight& bb = k == 0 ? bc : bg;
            be->matmul(yb, xb, n, ww, with_bias ? &bb : nullptr);
            (k++ == 0 ? yc : yg) = get(*be, yb);
          }
          // GEMV (n <= 8) reads x in float32: only the summation order differs. cuBLAS (n > 8) rounds
          // x to bf16 for bf16 weights; f16 weights are kept as bf16 on the GPU.
          const double tol = dt == DType::F16 ? 2e-2 : (dt == DType::BF16 && n > 8) ? 1e-2 : 1e-5;
          EXPECT_LT(rel(yg, yc), tol) << dtype_name(dt) << " " << rows << "x" << cols << " n=" << n
                                      << " bias=" << with_bias;
        }
}

TEST_F(Pair, NormsRopeSwigluEmbed) {
  for (int d : {64, 896, 3584}) {
    const int n = 5;
    auto g = tensor("g", DType::BF16, {d}, 7, 0.2f, 1.f);
    Weight gc = cpu->weight(g.info), gg = gpu->weight(g.info);
    auto x = randn(size_t(n) * d, 9, 3.f);
    std::vector<float> out[2];
    int k = 0;
    for (Backend* be : {cpu.get(), gpu.get()}) {
      Buf xb = put(*be, x), yb = put(*be, std::vector<float>(x.size(), NAN));
      be->rmsnorm(yb, xb, n, k == 0 ? gc : gg, 1e-6f);
      out[k++] = get(*be, yb);
    }
    EXPECT_LT(rel(out[1], out[0]), 1e-6) << "rmsnorm d=" << d;
  }
  {
    auto g = randn(4096, 11), u = randn(4096, 12);
    EXPECT_LT(both({g, u}, 0, [](Backend& be, std::vector<Buf>& b) { be.swiglu(b[0], b[0], b[1], 4096); }), 1e-6);
  }
  for (bool contiguous : {true, false}) {
    const int n = 6, heads = 3, hd = 64;
    std::vector<float> inv(hd / 2);
    for (int c = 0; c < hd / 2; ++c) inv[size_t(c)] = std::pow(1e6f, -2.f * c / hd);
    std::vector<int32_t> pos(n);
    for (int i = 0; i < n; ++i) pos[size_t(i)] = contiguous ? 4000 + i : 17 * i * i;
    auto x = randn(size_t(n) * heads * hd, 13);
    EXPECT_LT(both({x}, 0, [&](Backend& be, std::vector<Buf>& b) { be.rope(b[0], n, heads, hd, pos.data(), inv.data()); }),
              1e-5)
        << "rope contiguous=" << contiguous;
  }
  for (DType dt : {DType::F32, DType::BF16}) {
    auto table = tensor("emb", dt, {100, 48}, 21);
    Weight tc = cpu->weight(table.info), tg = gpu->weight(table.info);
    std::vector<int32_t> ids = {5, 0, 99, 5, 42};
    std::vector<float> out[2];
    int k = 0;
    for (Backend* be : {cpu.get(), gpu.get()}) {
      Buf o = put(*be, std::vector<float>(ids.size() * 48, NAN));
      be->embed(o, k == 0 ? tc : tg, ids.data(), int(ids.size()));
      out[k++] = get(*be, o);
    }
    EXPECT_EQ(out[1], out[0]) << dtype_name(dt);
  }
}

struct AttnCase {
  int H, KV, hd, n_new, past;
  std::vector<int> sinkout;
  int sinkout_end;
  bool pattern;
};

TEST_F(Pair, AttentionBothKernelsEveryPolicy) {
#ifdef OUTRO_HAVE_CUDA
  std::vector<AttnCase> cases = {
      {4, 2, 16, 12, 0, {}, 0, true},            // tiny, GQA
      {4, 2, 16, 12, 0, {0, 3}, 12, true},       // sink-out rows
      {28, 4, 128, 1, 300, {}, 0, false},        // decode, split over the context
      {28, 4, 128, 1, 5000, {0}, 200, false},    // long decode; a sink row is not the new row
      {8, 2, 128, 200, 0, {}, 0, false},         // prefill, tensor cores
      {8, 2, 128, 200, 0, {0, 77}, 180, true},   // prefill with sink-out rows and the pattern
      {6, 6, 64, 333, 17, {20, 100}, 350, false},  // prefill after a past, MHA, hd 64
      {14, 2, 64, 70, 0, {}, 0, false},
      {16, 16, 80, 190, 0, {}, 0, false},        // head size 80 (vision tower), MHA
      {4, 1, 128, 1, 1, {}, 0, true},
  };
  for (const auto& c : cases)
    for (int force : {1, 2, 3}) {
      const int total = c.past + c.n_new;
      auto q = randn(size_t(c.n_new) * c.H * c.hd, 31, 1.f);
      auto kc = randn(size_t(total) * c.KV * c.hd, 32, 1.f), vc = randn(size_t(total) * c.KV * c.hd, 33);
      std::vector<float> pat[2], z[2];
      int k = 0;
      for (Backend* be : {cpu.get(), gpu.get()}) {
        cuda_api::set_attention_kernel(*be, force);
        AttnParams p;
        p.n_heads = c.H, p.n_kv = c.KV, p.head_dim = c.hd, p.scale = 1.f / std::sqrt(float(c.hd));
        p.n_new = c.n_new, p.past = c.past;
        std::vector<float> mask(size_t(c.n_new), 0.f);
        for (int sp : c.sinkout)
          if (sp >= c.past) mask[size_t(sp - c.past)] = 1.f;
        Buf mb = put(*be, mask);
        p.sinkout_mask = c.sinkout.empty() ? nullptr : mb.ptr, p.sinkout_end = c.sinkout_end;
        if (c.pattern) {
          pat[k].assign(size_t(c.H) * c.n_new * total, NAN);
          p.pattern_out = pat[k].data();
        }
        Buf qb = put(*be, q), kb = put(*be, kc), vb = put(*be, vc), zb = put(*be, std::vector<float>(q.size(), NAN));
        be->attention(zb, qb, kb, vb, p);
        z[k++] = get(*be, zb);
      }
      const std::string used = cuda_api::last_attention_kernel(*gpu);
      // Tensor cores take q, k, v and the probabilities in bf16.
      const double tol = used == "mma" ? 2e-2 : 1e-5;
      EXPECT_LT(rel(z[1], z[0]), tol) << "H" << c.H << " KV" << c.KV << " hd" << c.hd << " n" << c.n_new << " past"
                                      << c.past << " sinkout " << c.sinkout.size() << " kernel " << used;
      if (c.pattern) EXPECT_LT(test::max_abs_diff(pat[1].data(), pat[0].data(), pat[0].size()), 1e-5) << used;
    }
  cuda_api::set_attention_kernel(*gpu, 0);
#endif
}

// The decode kernel (one block per KV head for all the query heads of its group) against the CPU:
// GQA ratios 1, 2 and 7, head_dim 64 and 128, contexts of 1 to 5000 keys (one block or split over
// the context), one or more new rows, sink-out rows, patterns; the automatic choice takes it for a
// decode step, and a split result does not depend on which block merges (bit-identical reruns).
TEST_F(Pair, AttentionDecodeKernel) {
#ifdef OUTRO_HAVE_CUDA
  int cases = 0;
  for (int G : {1, 2, 7})
    for (int hd : {64, 128})
      for (int total : {1, 2, 17, 64, 65, 161, 700, 5000})
        for (int n_new : {1, 2, 3}) {
          if (n_new > total || n_new * G > 16) continue;
          const int KV = G == 7 ? 4 : 2, H = G * KV, past = total - n_new;
          const bool pattern = total <= 700 && (total + n_new + G) % 3 == 0;
          std::vector<int> sinkout;
          if (total > 2 && n_new > 1) sinkout = {past};  // the first new row sees every key
          const int sinkout_end = total;
          auto q = randn(size_t(n_new) * H * hd, 51 + total, 1.f);
          auto kc = randn(size_t(total) * KV * hd, 52 + hd, 1.f), vc = randn(size_t(total) * KV * hd, 53 + G);
          for (int force : {3, 4, 5}) {  // cluster merge where it fits, global merge, unsplit
          std::vector<float> pat[2], z[2];
          int k = 0;
          for (Backend* be : {cpu.get(), gpu.get()}) {
            cuda_api::set_attention_kernel(*be, force);
            AttnParams p;
            p.n_heads = H, p.n_kv = KV, p.head_dim = hd, p.scale = 1.f / std::sqrt(float(hd));
            p.n_new = n_new, p.past = past;
            std::vector<float> mask(size_t(n_new), 0.f);
            for (int sp : sinkout) mask[size_t(sp - past)] = 1.f;
            Buf mb = put(*be, mask);
            p.sinkout_mask = sinkout.empty() ? nullptr : mb.ptr, p.sinkout_end = sinkout_end;
            if (pattern) {
              pat[k].assign(size_t(H) * n_new * total, NAN);
              p.pattern_out = pat[k].data();
            }
            Buf qb = put(*be, q), kb = put(*be, kc), vb = put(*be, vc), zb = put(*be, std::vector<float>(q.size(), NAN));
            be->attention(zb, qb, kb, vb, p);
            z[k++] = get(*be, zb);
            if (be == gpu.get()) {
              const std::string used = cuda_api::last_attention_kernel(*gpu);
              EXPECT_EQ(used.substr(0, 3), "dec") << used;
              // Again: the same bits, whichever split block merged this time.
              be->attention(zb, qb, kb, vb, p);
              const auto again = get(*be, zb);
              EXPECT_EQ(std::memcmp(again.data(), z[1].data(), again.size() * 4), 0)
                  << "G" << G << " hd" << hd << " total" << total << " n" << n_new;
              // The automatic choice for a plain decode step is this kernel.
              if (force == 3 && n_new == 1 && sinkout.empty()) {
                cuda_api::set_attention_kernel(*be, 0);
                be->attention(zb, qb, kb, vb, p);
                EXPECT_EQ(cuda_api::last_attention_kernel(*gpu).substr(0, 3), "dec");
                const auto autoz = get(*be, zb);
                EXPECT_EQ(std::memcmp(autoz.data(), z[1].data(), autoz.size() * 4), 0);
              }
            }
          }
          EXPECT_LT(rel(z[1], z[0]), 1e-5) << "G" << G << " hd" << hd << " total" << total << " n" << n_new
                                          << " sinkout " << sinkout.size() << " force " << force;
          if (pattern) EXPECT_LT(test::max_abs_diff(pat[1].data(), pat[0].data(), pat[0].size()), 1e-5);
          ++cases;
          }
        }
  std::printf("  decode attention kernel: %d cases against the CPU\n", cases);
  cuda_api::set_attention_kernel(*gpu, 0);
#endif
}

// Downloads large enough to go through the pinned buffer in chunks, and the same with it off.
TEST_F(Pair, PinnedChunkedDownload) {
#ifdef OUTRO_HAVE_CUDA
  for (bool pinned : {true, false})
    for (size_t n : {size_t(100), size_t(20000), size_t(152064), size_t(3000001)}) {
      cuda_api::set_pinned_download(*gpu, pinned);
      auto v = randn(n, 77 + n);
      Buf b = put(*gpu, v);
      std::vector<float> back(n - 7, NAN);
      gpu->download(b, 7, back.data(), back.size());  // from an offset, an odd length
      EXPECT_EQ(std::memcmp(back.data(), v.data() + 7, back.size() * 4), 0) << n << " pinned " << pinned;
    }
  cuda_api::set_pinned_download(*gpu, true);
#endif
}

// Greedy decoding's argmax on the GPU: the CPU backend's index (the first of equal maxima) for random
// rows, rows with ties, an offset, -inf everywhere but one, and the vocabulary-sized row of decode.
TEST_F(Pair, ArgmaxEqualsTheHostScan) {
  for (size_t n : {size_t(1), size_t(7), size_t(1000), size_t(152064), size_t(300001)}) {
    auto v = randn(n + 5, 900 + n);
    std::vector<std::vector<float>> rows = {v};
    auto ties = v;
    const float top = 10.f;
    for (size_t i = n / 3; i < n + 5; i += std::max<size_t>(1, n / 4)) ties[i] = top;  // several equal maxima
    rows.push_back(ties);
    std::vector<float> infs(n + 5, -INFINITY);
    infs[n / 2 + 5] = -1e30f;
    rows.push_back(infs);
    for (const auto& r : rows) {
      Buf bc = put(*cpu, r), bg = put(*gpu, r);
      for (size_t off : {size_t(0), size_t(5)}) {
        const int32_t want = cpu->argmax(bc, off, int(n)), got = gpu->argmax(bg, off, int(n));
        EXPECT_EQ(got, want) << "n " << n << " offset " << off;
      }
    }
  }
  Buf b = put(*gpu, randn(10, 1));
  EXPECT_THROW(gpu->argmax(b, 5, 6), Error);
}

TEST_F(Pair, AttentionNonCausalSegments) {
#ifdef OUTRO_HAVE_CUDA
  for (int force : {1, 2})
    for (int hd : {16, 64, 80}) {  // 80: the vision tower's heads
      const int H = 4, KV = 4, n = 150;
      std::vector<int> seg = {0, 40, 41, 150};
      auto q = randn(size_t(n) * H * hd, 41), kc = randn(size_t(n) * KV * hd, 42), vc = randn(size_t(n) * KV * hd, 43);
      std::vector<float> z[2], pat[2];
      for (int withseg : {0, 1}) {
        int k = 0;
        for (Backend* be : {cpu.get(), gpu.get()}) {
          cuda_api::set_attention_kernel(*be, force);
          AttnParams p;
          p.n_heads = H, p.n_kv = KV, p.head_dim = hd, p.scale = 0.2f, p.n_new = n, p.past = 0, p.causal = false;
          if (withseg) p.segments = seg.data(), p.n_segments = 3;
          pat[k].assign(size_t(H) * n * n, NAN);
          p.pattern_out = pat[k].data();
          Buf qb = put(*be, q), kb = put(*be, kc), vb = put(*be, vc), zb = put(*be, std::vector<float>(q.size(), NAN));
          be->attention(zb, qb, kb, vb, p);
          z[k++] = get(*be, zb);
        }
        const bool mma = cuda_api::last_attention_kernel(*gpu) == "mma";
        EXPECT_LT(rel(z[1], z[0]), mma ? 2e-2 : 1e-5) << "hd " << hd << " segments " << withseg << " force " << force;
        EXPECT_LT(test::max_abs_diff(pat[1].data(), pat[0].data(), pat[0].size()), 1e-5);
      }
    }
  cuda_api::set_attention_kernel(*gpu, 0);
#endif
}

// The decoder's op sequences that the CUDA backend fuses (add + RMSNorm; q/k/v GEMVs of one x;
// gate/up GEMVs + SwiGLU; rope(q), rope(k) + the KV-cache copies) against the CPU composition of
// the same ops, and against the GPU with fusion off.
TEST_F(Pair, FusedDecoderSequencesMatchCpuComposition) {
#ifdef OUTRO_HAVE_CUDA
  for (DType dt : {DType::BF16, DType::F32})
    for (int n : {1, 3, 6, 40, 300}) {  // GEMV rows, then prefill rows (cuBLASLt, the grouped products)
      const int D = 256, H = 4, KV = 2, hd = 64, I = 384, past = 9;
      auto g1 = tensor("g1", DType::BF16, {D}, 101, 0.2f, 1.f);
      auto wq = tensor("wq", dt, {H * hd, D}, 102), wk = tensor("wk", dt, {KV * hd, D}, 103),
           wv = tensor("wv", dt, {KV * hd, D}, 104);
      auto bq = tensor("bq", dt, {H * hd}, 105), bk = tensor("bk", dt, {KV * hd}, 106), bv = tensor("bv", dt, {KV * hd}, 107);
      auto wg = tensor("wg", dt, {I, D}, 108), wu = tensor("wu", dt, {I, D}, 109), wd = tensor("wd", dt, {D, I}, 110);
      std::vector<float> inv(hd / 2);
      for (int c = 0; c < hd / 2; ++c) inv[size_t(c)] = std::pow(1e6f, -2.f * c / hd);
      std::vector<int32_t> pos(static_cast<size_t>(n));
      for (int i = 0; i < n; ++i) pos[size_t(i)] = past + i;
      auto x0 = randn(size_t(n) * D, 111, 2.f), a0 = randn(size_t(n) * D, 112, 2.f);
      auto kc0 = randn(size_t(past + n) * KV * hd, 113), vc0 = randn(size_t(past + n) * KV * hd, 114);
      // outputs: x, xn, q, k, v, kcache, vcache, gate, up, down, x after the second add + norm, its norm
      auto run = [&](Backend& be) {
        Weight G = be.weight(g1.info), Q = be.weight(wq.info), K = be.weight(wk.info), V = be.weight(wv.info);
        Weight BQ = be.weight(bq.info), BK = be.weight(bk.info), BV = be.weight(bv.info);
        Weight WG = be.weight(wg.info), WU = be.weight(wu.info), WD = be.weight(wd.info);
        Buf x = put(be, x0), a = put(be, a0), xn = put(be, std::vector<float>(x0.size(), NAN));
        Buf q = put(be, std::vector<float>(size_t(n) * H * hd, NAN)), k = put(be, std::vector<float>(size_t(n) * KV * hd, NAN)),
            v = put(be, std::vector<float>(size_t(n) * KV * hd, NAN));
        Buf kc = put(be, kc0), vc = put(be, vc0);
        Buf gate = put(be, std::vector<float>(size_t(n) * I, NAN)), up = put(be, std::vector<float>(size_t(n) * I, NAN)),
            down = put(be, std::vector<float>(size_t(n) * D, NAN));
        be.add(x, a, size_t(n) * D);
        be.rmsnorm(xn, x, n, G, 1e-6f);
        be.matmul(q, xn, n, Q, &BQ);
        be.matmul(k, xn, n, K, &BK);
        be.matmul(v, xn, n, V, &BV);
        be.rope(q, n, H, hd, pos.data(), inv.data());
        be.rope(k, n, KV, hd, pos.data(), inv.data());
        const size_t row = size_t(KV) * hd;
        be.copy(kc, size_t(past) * row, k, 0, size_t(n) * row);
        be.copy(vc, size_t(past) * row, v, 0, size_t(n) * row);
        be.matmul(gate, xn, n, WG, nullptr);
        be.matmul(up, xn, n, WU, nullptr);
        be.swiglu(gate, gate, up, size_t(n) * I);
        be.matmul(down, gate, n, WD, nullptr);
        std::vector<std::vector<float>> out = {get(be, x), get(be, xn), get(be, q), get(be, k), get(be, v),
                                               get(be, kc), get(be, vc), get(be, gate), get(be, up), get(be, down)};
        be.add(x, down, size_t(n) * D);  // the next layer's norm, in place
        be.rmsnorm(x, x, n, G, 1e-6f);
        out.push_back(get(be, x));
        return out;
      };
      auto c = run(*cpu);
      cuda_api::set_fusion(*gpu, false);
      auto u = run(*gpu);
      cuda_api::set_fusion(*gpu, true);
      auto f = run(*gpu);
      cuda_api::set_gemm_lt(*gpu, true);  // the prefill's products grouped, through cuBLASLt
      cuda_api::set_gemm_group(*gpu, true);
      auto g = run(*gpu);
      cuda_api::set_gemm_lt(*gpu, false);
      cuda_api::set_gemm_group(*gpu, false);
      const char* names[] = {"x",      "xn", "q",    "k",  "v",  "kcache", "vcache",
                             "swiglu", "up", "down", "x2"};
      // Prefill rows with bf16 weights: the products round x to bf16 (the CPU keeps it float32).
      const double tol = dt == DType::BF16 && n > 8 ? 1e-2 : 1e-4;
      for (size_t i = 0; i < c.size(); ++i) {
        EXPECT_LT(rel(f[i], c[i]), tol) << names[i] << " " << dtype_name(dt) << " n=" << n;
        EXPECT_LT(rel(f[i], u[i]), 1e-6) << names[i] << " fused vs unfused " << dtype_name(dt) << " n=" << n;
        EXPECT_LT(rel(g[i], c[i]), tol) << names[i] << " grouped, cuBLASLt " << dtype_name(dt) << " n=" << n;
        // Two GEMM algorithms round differently (~1e-7); down's input is rounded to bf16 again, where
        // such a difference can move a value by one bf16 step (~4e-3 of it): down and x2 get more room.
        const double tg = i >= 9 ? 5e-3 : 1e-5;
        EXPECT_LT(rel(g[i], f[i]), tg) << names[i] << " grouped, cuBLASLt vs default " << dtype_name(dt) << " n=" << n;
      }
    }
#endif
}

// The towers' and the prefill's products (n > 8 rows) with set_gemm_group and set_gemm_lt on: the
// norm or SwiGLU before a group of products that share x writes x's bf16 copy, the group converts
// once, the bias comes in cuBLASLt's epilogue. Against the CPU, the defaults, the same GPU sequence
// with the fusion off (equal), grouped through cuBLAS + a bias pass, and sequences that must break a
// group: x changed between two products that read it, a product over fewer rows than the norm wrote.
TEST_F(Pair, PrefillProductGroupsMatchCpuAndUnfused) {
#ifdef OUTRO_HAVE_CUDA
  for (int n : {9, 77, 600}) {
    const int D = 320, I = 456;
    auto g1 = tensor("g1", DType::BF16, {D}, 201, 0.2f, 1.f), g2 = tensor("g2", DType::BF16, {D}, 202, 0.2f, 1.f);
    auto wq = tensor("wq", DType::BF16, {D, D}, 203), wk = tensor("wk", DType::BF16, {D, D}, 204),
         wv = tensor("wv", DType::BF16, {D, D}, 205);
    auto bq = tensor("bq", DType::BF16, {D}, 206), bk = tensor("bk", DType::BF16, {D}, 207), bv = tensor("bv", DType::BF16, {D}, 208);
    auto wg = tensor("wg", DType::BF16, {I, D}, 209), wu = tensor("wu", DType::BF16, {I, D}, 210),
         wd = tensor("wd", DType::BF16, {D, I}, 211);
    auto bg = tensor("bg", DType::BF16, {I}, 212), bu = tensor("bu", DType::BF16, {I}, 213), bd = tensor("bd", DType::BF16, {D}, 214);
    auto x0 = randn(size_t(n) * D, 215, 2.f), a0 = randn(size_t(n) * D, 216, 1.f);
    auto run = [&](Backend& be) {
      Weight G1 = be.weight(g1.info), G2 = be.weight(g2.info), Q = be.weight(wq.info), K = be.weight(wk.info),
             V = be.weight(wv.info), BQ = be.weight(bq.info), BK = be.weight(bk.info), BV = be.weight(bv.info);
      Weight WG = be.weight(wg.info), WU = be.weight(wu.info), WD = be.weight(wd.info), BG = be.weight(bg.info),
             BU = be.weight(bu.info), BD = be.weight(bd.info);
      auto nan = [&](size_t m) { return put(be, std::vector<float>(m, NAN)); };
      Buf x = put(be, x0), a = put(be, a0), xn = nan(x0.size());
      Buf q = nan(size_t(n) * D), k = nan(size_t(n) * D), v = nan(size_t(n) * D), q2 = nan(size_t(n) * D),
          k2 = nan(size_t(n) * D), part = nan(size_t(n - 1) * D);
      Buf gate = nan(size_t(n) * I), up = nan(size_t(n) * I), down = nan(size_t(n) * D);
      be.rmsnorm(xn, x, n, G1, 1e-6f);  // a norm with no add before it, then q, k, v
      be.matmul(q, xn, n, Q, &BQ);
      be.matmul(k, xn, n, K, &BK);
      be.matmul(v, xn, n, V, &BV);
      be.matmul(q2, xn, n, Q, nullptr);  // a fourth product of xn: a new group
      be.add(xn, a, size_t(n) * D);      // xn changes: the next product must read the sum
      be.matmul(k2, xn, n, K, &BK);
      be.rmsnorm(xn, x, n, G2, 1e-6f);
      be.matmul(part, xn, n - 1, V, &BV);  // fewer rows than the norm wrote
      be.add(x, v, size_t(n) * D);         // the residual add and the next norm, then gate, up, SwiGLU, down
      be.rmsnorm(xn, x, n, G2, 1e-6f);
      be.matmul(gate, xn, n, WG, &BG);
      be.matmul(up, xn, n, WU, &BU);
      be.swiglu(gate, gate, up, size_t(n) * I);
      be.matmul(down, gate, n, WD, &BD);
      return std::vector<std::vector<float>>{get(be, q),    get(be, k),    get(be, v),  get(be, q2),
                                             get(be, k2),   get(be, part), get(be, x),
                                             get(be, xn),   get(be, gate), get(be, up), get(be, down)};
    };
    const char* names[] = {"q", "k", "v", "q2", "k2 (after xn changed)", "part", "x", "xn", "swiglu", "up", "down"};
    auto c = run(*cpu);
    auto d = run(*gpu);  // the defaults: cublasGemmEx, a bias pass, each product converting its x
    cuda_api::set_gemm_lt(*gpu, true);
    cuda_api::set_gemm_group(*gpu, true);
    auto f = run(*gpu);
    cuda_api::set_fusion(*gpu, false);  // no group, no bf16 copy from the norms: the same arithmetic
    auto u = run(*gpu);
    cuda_api::set_fusion(*gpu, true);
    cuda_api::set_gemm_lt(*gpu, false);  // grouped, through cublasGemmEx and a bias pass
    auto o = run(*gpu);
    cuda_api::set_gemm_group(*gpu, false);
    for (size_t i = 0; i < c.size(); ++i) {
      EXPECT_LT(rel(d[i], c[i]), 1e-2) << names[i] << " n=" << n;  // bf16 x in the products
      EXPECT_LT(rel(f[i], c[i]), 1e-2) << names[i] << " n=" << n;
      EXPECT_LT(rel(f[i], u[i]), 1e-6) << names[i] << " fused vs unfused n=" << n;
      // Two GEMM algorithms round differently (~1e-7); where a product's input was made from another
      // product's output (gate, up and down, after x += v) a bf16 rounding can flip: more room there.
      EXPECT_LT(rel(f[i], o[i]), i >= 8 ? 5e-3 : 1e-5) << names[i] << " cuBLASLt vs cuBLAS + bias pass n=" << n;
      EXPECT_LT(rel(o[i], d[i]), 1e-6) << names[i] << " grouped vs one product at a time n=" << n;
    }
    // Had k2 read the xn of before the add, it would equal xn·Kᵀ: far from the CPU's.
    auto k_old = c[1];
    EXPECT_GT(rel(c[4], k_old), 0.05) << "the test's xn change must matter";
  }
#endif
}

// OutRo's automatic sinks: the GPU's row maxima and median of |h| equal the host's exactly.
TEST_F(Pair, PhiLlmStatsOnGpuEqualHost) {
#ifdef OUTRO_HAVE_CUDA
  for (auto [n, dim] : {std::pair{1, 1}, std::pair{1, 7}, std::pair{2, 3}, std::pair{70, 256}, std::pair{300, 3584},
                        std::pair{1024, 896}}) {
    auto h = randn(size_t(n) * dim, uint64_t(n * 31 + dim), 0.5f);
    for (int r = 0; r < n; r += 17) h[size_t(r) * dim + size_t(r % dim)] = r % 2 ? -900.f : 1200.f;  // massive
    for (size_t i = 0; i < h.size(); i += 5) h[i] = h[i / 2];                                        // ties
    if (h.size() > 10) h[3] = -0.f, h[4] = 0.f, h[5] = std::numeric_limits<float>::infinity();
    PhiLLM want = phi_llm(h.data(), n, dim, 100.0, 1000.0);
    Buf b = put(*gpu, h);
    std::vector<float> row_max;
    float median = -1.f;
    ASSERT_TRUE(cuda_api::phi_llm_stats(*gpu, b, n, dim, &row_max, &median));
    EXPECT_EQ(median, want.median) << n << "x" << dim;
    EXPECT_EQ(row_max, want.row_max) << n << "x" << dim;
    // The backend's other host buffers are untouched: a download through the pinned buffer after it.
    if (h.size() > 100000) {
      std::vector<float> back(h.size());
      gpu->download(b, 0, back.data(), back.size());
      EXPECT_EQ(back, h);
    }
  }
  // The GPU reads h once when a sample of its rows brackets the median, and falls back to a radix
  // select over all of h when the sample misleads or too many values share the median's bin: both
  // give the host's answer. Cases: a plain large prompt (the one-read path), every value equal (the
  // bracket holds everything: the buffer overflows), the sampled rows (every S-th, S = n / 256)
  // a thousand times larger than the rest (the bracket misses), and half the values zero.
  for (int kind = 0; kind < 4; ++kind) {
    const int n = 2048, dim = 896, S = n / 256;
    auto h = randn(size_t(n) * dim, uint64_t(700 + kind), 0.5f);
    for (size_t i = 0; i < h.size(); ++i) {
      if (kind == 1) h[i] = 0.25f;
      if (kind == 2 && (i / dim) % S == 0) h[i] *= 1000.f;
      if (kind == 3 && i % 2) h[i] = 0.f;
    }
    h[5 * dim + 3] = 5000.f;
    PhiLLM want = phi_llm(h.data(), n, dim, 100.0, 1000.0);
    Buf b = put(*gpu, h);
    std::vector<float> row_max;
    float median = -1.f;
    ASSERT_TRUE(cuda_api::phi_llm_stats(*gpu, b, n, dim, &row_max, &median));
    EXPECT_EQ(median, want.median) << "case " << kind;
    EXPECT_EQ(row_max, want.row_max) << "case " << kind;
  }
  std::vector<float> rm;
  float med = 0.f;
  EXPECT_FALSE(cuda_api::phi_llm_stats(*cpu, Buf{}, 1, 1, &rm, &med));
#endif
}

TEST_F(Pair, InterventionOps) {
  const int n = 7, groups = 4, gdim = 32, D = groups * gdim;
  auto x = randn(size_t(n) * D, 51, 2.f);
  EXPECT_EQ(both({x}, 0, [&](Backend& be, std::vector<Buf>& b) { be.zero_cols(b[0], n, D, 32, 32); }), 0.0);
  EXPECT_EQ(both({x}, 0, [&](Backend& be, std::vector<Buf>& b) { be.zero_top_dim(b[0], 2, groups, gdim); }), 0.0);
}

// OutRo's ops on the GPU against the CPU backend: detection records exactly, the sets exactly, the
// sink value and the gated rotation within float32 rounding; the rotation counter exactly.
TEST_F(Pair, OutroOps) {
#ifdef OUTRO_HAVE_CUDA
  for (auto [n, dim] : {std::pair{1, 7}, std::pair{37, 64}, std::pair{700, 896}, std::pair{4100, 3584}}) {
    auto h = randn(size_t(n) * dim, uint64_t(n + dim), 0.5f);
    for (int r = 0; r < n; r += 13) h[size_t(r) * dim + size_t(r % dim)] = r % 2 ? -900.f : 1200.f;
    std::vector<float> rec[2];
    int k = 0;
    for (Backend* be : {cpu.get(), gpu.get()}) {
      Buf hb = put(*be, h), rb = put(*be, std::vector<float>(size_t(n) + 4, NAN));
      be->phi_detect(rb, hb, n, dim, 100.f, 1000.f);
      rec[k++] = get(*be, rb);
    }
    EXPECT_EQ(rec[1], rec[0]) << n << "x" << dim;
    EXPECT_GT(rec[0][size_t(n) + 2], 0.f);
    std::vector<float> done(size_t(n), 0.f), cum(size_t(n), 0.f);
    for (int i = 0; i < n; i += 26) done[size_t(i)] = 1.f;
    for (bool enhance : {true, false})
      for (int out : {0, 1, 2})
        EXPECT_EQ(both({std::vector<float>(size_t(n), NAN), done, cum, rec[0]}, size_t(out),
                       [&](Backend& be, std::vector<Buf>& b) { be.outro_sets(b[0], b[1], b[2], b[3], n, enhance, true); }),
                  0.0);
  }
  const int n = 300, H = 28, KV = 4, hd = 128, vdim = KV * hd;
  auto v = randn(size_t(n) * vdim, 81);
  std::vector<float> flags(size_t(n), 0.f);
  flags[0] = flags[7] = flags[250] = 1.f;
  EXPECT_LT(both({std::vector<float>(size_t(vdim) + 3, 0.f), v, flags}, 0,
                 [&](Backend& be, std::vector<Buf>& b) { be.masked_mean(b[0], b[1], n, vdim, b[2]); }),
            1e-6);
  auto z = randn(size_t(n) * H * hd, 82);
  std::vector<float> vbar = randn(size_t(vdim) + 3, 83);
  vbar[size_t(vdim)] = 3.f;
  for (bool rescale : {true, false})
    for (bool ex : {true, false}) {
      EXPECT_LT(both({z, vbar, flags, std::vector<float>{0.f}}, 0,
                     [&](Backend& be, std::vector<Buf>& b) {
                       be.gate_heads(b[0], n, H, KV, hd, b[1], ex ? &b[2] : nullptr, n, 3.f, 0.1f, rescale, b[3]);
                     }),
                2e-6);
      EXPECT_EQ(both({z, vbar, flags, std::vector<float>{0.f}}, 3,
                     [&](Backend& be, std::vector<Buf>& b) {
                       be.gate_heads(b[0], n, H, KV, hd, b[1], ex ? &b[2] : nullptr, n, 3.f, 0.1f, rescale, b[3]);
                     }),
                0.0);
    }
  // The gated rotation done by the tensor-core attention kernel in its epilogue (AttnGate) equals
  // the same attention followed by gate_heads on the GPU, rows and rotated count; sink rows and
  // rows after excl_n's range are checked by the same comparison.
  {
    const int na = 300;
    auto qa = randn(size_t(na) * H * hd, 84), ka = randn(size_t(na) * vdim, 85), va = randn(size_t(na) * vdim, 86);
    // The sink value at an odd float offset, as OutRo's per-layer views of one buffer are.
    std::vector<float> vb = randn(size_t(vdim) + 4, 87);
    vb[size_t(vdim) + 1] = 2.f;
    Buf qb = put(*gpu, qa), kb = put(*gpu, ka), vbb = put(*gpu, va), vall = put(*gpu, vb), fl = put(*gpu, flags);
    Buf vbar_b{static_cast<float*>(vall.ptr) + 1, size_t(vdim) + 3};
    Buf z1 = put(*gpu, std::vector<float>(size_t(na) * H * hd, 0.f)), z2 = put(*gpu, std::vector<float>(size_t(na) * H * hd, 0.f));
    Buf c1 = put(*gpu, std::vector<float>{0.f}), c2 = put(*gpu, std::vector<float>{0.f});
    AttnParams ap;
    ap.n_heads = H, ap.n_kv = KV, ap.head_dim = hd, ap.scale = 0.09f, ap.n_new = na, ap.past = 0;
    for (bool rescale : {true, false}) {
      gpu->attention(z1, qb, kb, vbb, ap);
      gpu->gate_heads(z1, na, H, KV, hd, vbar_b, &fl, 250, 3.f, 0.1f, rescale, c1);
      AttnGate g;
      g.vbar = &vbar_b, g.excl = &fl, g.excl_n = 250, g.gamma = 3.f, g.temp = 0.1f, g.rescale = rescale, g.counter = c2;
      ap.gate = &g;
      gpu->attention(z2, qb, kb, vbb, ap);
      ap.gate = nullptr;
      EXPECT_EQ(cuda_api::last_attention_kernel(*gpu), "mma");
      const auto a = get(*gpu, z1), b = get(*gpu, z2);
      double worst = 0;
      for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, double(std::fabs(a[i] - b[i])) / (std::fabs(a[i]) + 1e-3));
      // float32 sums in another order (~1e-6 in the cosine), through the gate's slope (gamma / temp
      // times tanh' <= 30): a few 1e-5.
      EXPECT_LT(worst, 2e-4) << "rescale " << rescale;
      EXPECT_EQ(get(*gpu, c1), get(*gpu, c2)) << "rescale " << rescale;
      EXPECT_GT(get(*gpu, c2)[0], 0.f);
    }
  }
  // Head sizes off the float4 path (30: not a multiple of 4) and of 64 and 256 (half of the lanes
  // idle; two runs of 4 per lane), with the sink count and rotated count checked too.
  for (int hd2 : {30, 64, 256}) {
    const int H2 = 4, KV2 = 2, n2 = 37, vd2 = KV2 * hd2;
    auto z2 = randn(size_t(n2) * H2 * hd2, 90 + hd2);
    std::vector<float> vb2 = randn(size_t(vd2) + 3, 91 + hd2), fl2(size_t(n2), 0.f);
    vb2[size_t(vd2)] = 1.f;
    fl2[3] = 1.f;
    for (int out : {0, 3})
      EXPECT_LE(both({z2, vb2, fl2, std::vector<float>{0.f}}, size_t(out),
                     [&](Backend& be, std::vector<Buf>& b) {
                       be.gate_heads(b[0], n2, H2, KV2, hd2, b[1], &b[2], n2, 3.f, 0.1f, true, b[3]);
                     }),
                out ? 0.0 : 2e-6)
          << "hd " << hd2;
  }
#endif
}

TEST_F(Pair, EncoderOps) {
  const int n = 9, d = 200;
  auto x = randn(size_t(n) * d, 61, 2.f);
  auto w = tensor("ln.w", DType::BF16, {d}, 62, 0.1f, 1.f), b = tensor("ln.b", DType::F32, {d}, 63);
  for (bool with_bias : {false, true}) {
    std::vector<float> out[2];
    int k = 0;
    for (Backend* be : {cpu.get(), gpu.get()}) {
      Weight ww = be->weight(w.info), bb = be->weight(b.info);
      Buf xb = put(*be, x), yb = put(*be, std::vector<float>(x.size(), NAN));
      be->layernorm(yb, xb, n, ww, with_bias ? &bb : nullptr, 1e-5f);
      out[k++] = get(*be, yb);
    }
    EXPECT_LT(rel(out[1], out[0]), 1e-5) << "layernorm bias=" << with_bias;
  }
  for (bool th : {false, true})
    EXPECT_LT(both({x, std::vector<float>(x.size())}, 1,
                   [&](Backend& be, std::vector<Buf>& bb) { be.gelu(bb[1], bb[0], x.size(), th); }),
              1e-6)
        << "gelu tanh=" << th;
  {
    const int heads = 2, hd = 16;
    std::vector<int> sections = {2, 3, 3};
    std::vector<int32_t> pos(3 * size_t(n));
    for (size_t i = 0; i < pos.size(); ++i) pos[i] = int32_t(i * 7 % 23);
    std::vector<float> inv(hd / 2);
    for (int c = 0; c < hd / 2; ++c) inv[size_t(c)] = std::pow(1e4f, -2.f * c / hd);
    auto xr = randn(size_t(n) * heads * hd, 64);
    EXPECT_LT(both({xr}, 0,
                   [&](Backend& be, std::vector<Buf>& bb) {
                     be.rope_sections(bb[0], n, heads, hd, pos.data(), sections.data(), 3, inv.data());
                   }),
              1e-5);
  }
  {
    const int C = 6, K = 3, stride = 2, pad = 1;
    std::vector<int> seg = {0, 4, 4, 9};
    const int rows = 2 + 0 + 3;  // (4+2-3)/2+1, empty, (5+2-3)/2+1
    auto xi = randn(size_t(9) * C, 65);
    EXPECT_EQ(both({xi, std::vector<float>(size_t(rows) * C * K, NAN)}, 1,
                   [&](Backend& be, std::vector<Buf>& bb) { be.im2col1d(bb[1], bb[0], C, K, stride, pad, seg.data(), 3); }),
              0.0);
  }
  {
    std::vector<int32_t> idx = {8, 0, 3, 3};
    EXPECT_EQ(both({x, std::vector<float>(4 * size_t(d), NAN)}, 1,
                   [&](Backend& be, std::vector<Buf>& bb) { be.gather_rows(bb[1], bb[0], d, idx.data(), 4); }),
              0.0);
    EXPECT_LT(both({x, std::vector<float>(4 * size_t(d), NAN)}, 1,
                   [&](Backend& be, std::vector<Buf>& bb) { be.avgpool_rows(bb[1], bb[0], n, d, 2); }),
              1e-6);
    // A mixture-of-experts layer's weighted add of expert rows (a repeated index adds twice, in order).
    const std::vector<float> scale = {0.5f, -1.f, 2.f, 0.25f};
    EXPECT_LT(both({x, randn(4 * size_t(d), 66)}, 0,
                   [&](Backend& be, std::vector<Buf>& bb) {
                     be.scatter_add_rows(bb[0], bb[1], d, idx.data(), scale.data(), 4);
                   }),
              1e-6);
  }
}

// Mixture of experts: the device routing and experts (moe.cu) against the CPU backend's.
TEST_F(Pair, MoeRouteEqualsHost) {
  for (int E : {128, 5, 37})
    for (int k : {1, 3, 8})
      for (bool norm : {true, false}) {
        if (k > E) continue;
        const int n = 23;
        auto z = randn(size_t(n) * E, uint64_t(70 + E + k), 2.f);
        // Planted ties: the lower index wins.
        z[0] = z[1] = z[2] = 9.f;
        if (E > 4) z[size_t(E) + 4] = z[size_t(E) + 2] = 7.f;
        std::vector<float> out[2];
        int b = 0;
        for (Backend* be : {cpu.get(), gpu.get()}) {
          Buf zl = put(*be, z), r = put(*be, std::vector<float>(size_t(n) * 2 * k, NAN));
          be->moe_route(r, zl, n, E, k, norm);
          out[b++] = get(*be, r);
        }
        for (int i = 0; i < n; ++i)
          for (int j = 0; j < 2 * k; ++j) {
            const size_t at = size_t(i) * 2 * k + size_t(j);
            if (j < k)
              ASSERT_EQ(out[1][at], out[0][at]) << "E " << E << " k " << k << " row " << i << " slot " << j;
            else
              ASSERT_NEAR(out[1][at], out[0][at], 2e-6) << "E " << E << " k " << k << " row " << i << " weight " << j;
          }
        EXPECT_EQ(out[0][0], 0.f);
        if (k > 1) EXPECT_EQ(out[0][1], 1.f);
      }
  Buf zl = put(*gpu, randn(12, 79)), r = put(*gpu, std::vector<float>(24));
  EXPECT_THROW(gpu->moe_route(r, zl, 2, 6, 7, true), Error);
}

TEST_F(Pair, MoeExpertsMatchCpuDecodeAndPrefill) {
  struct Case {
    int E, k, D, I;
    DType dt;
    bool fused;
  };
  // bf16 with dimensions in multiples of 8: the device kernels (GEMV up to 8 rows, tensor-core GEMMs
  // past that, tails of the 64-column tiles included); float32 or odd shapes: the default path.
  for (const Case& c : {Case{16, 4, 64, 48, DType::BF16, false}, Case{128, 8, 256, 96, DType::BF16, true},
                        Case{6, 2, 40, 24, DType::BF16, true}, Case{5, 3, 36, 20, DType::BF16, false},
                        Case{4, 2, 32, 16, DType::F32, false}}) {
    std::vector<HostTensor> hts;
    if (c.fused) {
      hts.push_back(tensor("gu", c.dt, {c.E, 2 * c.I, c.D}, 81, 0.2f));
      hts.push_back(tensor("dn", c.dt, {c.E, c.D, c.I}, 82, 0.2f));
    } else {
      for (int e = 0; e < c.E; ++e) {
        hts.push_back(tensor("g" + std::to_string(e), c.dt, {c.I, c.D}, 100 + 3 * uint64_t(e), 0.2f));
        hts.push_back(tensor("u" + std::to_string(e), c.dt, {c.I, c.D}, 101 + 3 * uint64_t(e), 0.2f));
        hts.push_back(tensor("d" + std::to_string(e), c.dt, {c.D, c.I}, 102 + 3 * uint64_t(e), 0.2f));
      }
    }
    for (int n : {1, 3, 8, 9, 77}) {
      auto x = randn(size_t(n) * c.D, 90 + uint64_t(n));
      auto z = randn(size_t(n) * c.E, 91 + uint64_t(n), 2.f);
      std::vector<float> out[2];
      int b = 0;
      for (Backend* be : {cpu.get(), gpu.get()}) {
        ExpertSet ex;
        const int64_t D = c.D, I = c.I;
        if (c.fused) {
          const Weight gu = be->weight(hts[0].info), dn = be->weight(hts[1].info);
          for (int64_t e = 0; e < c.E; ++e) {
            ex.gate.push_back(weight_slice(gu, e * 2 * I * D, I, D));
            ex.up.push_back(weight_slice(gu, e * 2 * I * D + I * D, I, D));
            ex.down.push_back(weight_slice(dn, e * D * I, D, I));
          }
        } else {
          for (int e = 0; e < c.E; ++e) {
            ex.gate.push_back(be->weight(hts[size_t(3 * e)].info));
            ex.up.push_back(be->weight(hts[size_t(3 * e + 1)].info));
            ex.down.push_back(be->weight(hts[size_t(3 * e + 2)].info));
          }
        }
        // The same route on both (the CPU's), so that the products alone are compared.
        std::vector<float> route(size_t(n) * 2 * c.k);
        host::moe_route(route.data(), z.data(), n, c.E, c.k, true);
        Buf xb = put(*be, x), rb = put(*be, route), yb = put(*be, std::vector<float>(size_t(n) * c.D, NAN));
        be->moe_experts(yb, xb, n, rb, c.k, ex);
        out[b++] = get(*be, yb);
      }
      // Decode keeps x and h in float32; the prefill's GEMMs round them to bf16 as the dense products do.
      const bool device_gemm = c.dt == DType::BF16 && c.D % 8 == 0 && c.I % 8 == 0 && n > 8;
      const double tol = c.dt == DType::F32 ? 1e-5 : device_gemm ? 2e-2 : 1e-4;
      const double e = rel(out[1], out[0]);
      std::printf("  moe E %d k %d D %d I %d %s n %d: rel err %.2e\n", c.E, c.k, c.D, c.I, dtype_name(c.dt), n, e);
      EXPECT_LT(e, tol) << "E " << c.E << " k " << c.k << " D " << c.D << " I " << c.I << " n " << n;
    }
  }
}

// ---- whole forward passes ----

struct TmpModel {
  std::string dir;
  explicit TmpModel(const RandomModelSpec& s, const std::string& name) {
    dir = test::tmp_dir("cuda_" + name);
    write_random_model(dir, s);
  }
  ~TmpModel() { fs::remove_all(dir); }
};

std::vector<float> last_row(const std::vector<float>& all, int V) { return {all.end() - V, all.end()}; }

TEST(CudaForward, PrefillDecodeHooksAndOutRoMatchCpu) {
  NEED_GPU();
  for (DType dt : {DType::F32, DType::BF16}) {
    RandomModelSpec s;
    s.hidden = 256, s.intermediate = 512, s.layers = 4, s.heads = 4, s.kv_heads = 2, s.vocab = 300;
    s.dtype = dt;
    TmpModel tm(s, dt == DType::F32 ? "f32" : "bf16");
    auto m = Model::load(tm.dir);
    const int V = m->config().vocab;
    std::vector<int32_t> ids;
    for (int i = 0; i < 70; ++i) ids.push_back(int32_t((i * 37 + 11) % V));
    // 1: OutRo with sinks given (override); 2: Φ_LLM at a low threshold, so that every layer has its
    // own set (on the GPU for the CUDA backend; float32 only, where both backends see the same h).
    for (int with_outro : {0, 1, 2}) {
      if (with_outro == 2 && dt != DType::F32) continue;
      std::vector<float> res[2], steps[2];
      std::vector<std::vector<int>> chosen[2];
      std::vector<float> pat[2];
      auto cpu = make_cpu_backend();
      std::string why;
      auto gpu = make_cuda_backend(0, &why);
      ASSERT_TRUE(gpu) << why;
      // float32 checkpoints: the float32 row kernel for attention, so that only the summation
      // order differs; bf16: the default kernels (tensor-core prefill attention, cuBLAS in bf16).
#ifdef OUTRO_HAVE_CUDA
      cuda_api::set_attention_kernel(*gpu, dt == DType::F32 ? 1 : 0);
#endif
      int k = 0;
      for (Backend* be : {cpu.get(), gpu.get()}) {
        Session sess(*m, *be, 80);
        Recorder rec({hook_name(1, Hook::Pattern), hook_name(2, Hook::ResidPost)});
        sess.add_observer(&rec);
        std::unique_ptr<OutRo> o;
        if (with_outro) {
          OutroParams p = outro_preset("outro");
          p.decode = DecodeGating::On;
          p.apply_interval = 2;
          if (with_outro == 1) p.override_sinks = {0, 5};
          if (with_outro == 2) p.abs_thr = 0.0, p.med_mul = 4.0;
          o = std::make_unique<OutRo>(p);
          sess.add_intervention(o.get());
        }
        std::vector<float> logits;
        sess.forward(ids, &logits, true);
        res[k] = logits;
        if (!with_outro) {  // greedy on the backend: the argmax of the last row
          Session g(*m, *be, 80);
          const int32_t am = g.forward_argmax(ids.data(), int(ids.size()));
          const float* last = logits.data() + (ids.size() - 1) * size_t(V);
          EXPECT_EQ(last[am], *std::max_element(last, last + V)) << be->name();
        }
        if (o) chosen[k] = o->layer_sinks();
        pat[k] = rec.get(hook_name(1, Hook::Pattern))->data;
        sess.clear_observers();
        for (int t = 0; t < 4; ++t) {
          int32_t id = int32_t((t * 91 + 3) % V);
          sess.forward(&id, 1, &logits);
          steps[k].insert(steps[k].end(), logits.begin(), logits.end());
        }
        ++k;
      }
      EXPECT_EQ(chosen[1], chosen[0]) << "outro=" << with_outro;
      if (with_outro == 2) {
        size_t total = 0;
        for (const auto& l : chosen[0]) total += l.size();
        EXPECT_GT(total, 0u);
        EXPECT_NE(chosen[0][0], chosen[0][1]);  // the layers' sets differ
      }
      const double tol = dt == DType::F32 ? 1e-4 : 5e-2;
      std::printf("  forward %s outro=%d: prefill logits rel err %.2e, decode %.2e, pattern max abs %.2e\n",
                  dtype_name(dt), int(with_outro), rel(res[1], res[0]), rel(steps[1], steps[0]),
                  test::max_abs_diff(pat[1].data(), pat[0].data(), pat[0].size()));
      EXPECT_LT(rel(res[1], res[0]), tol) << dtype_name(dt) << " outro=" << with_outro << " prefill";
      EXPECT_LT(rel(steps[1], steps[0]), tol) << dtype_name(dt) << " outro=" << with_outro << " decode";
      EXPECT_LT(test::max_abs_diff(pat[1].data(), pat[0].data(), pat[0].size()), dt == DType::F32 ? 1e-4 : 3e-2);
    }
  }
}

TEST(CudaForward, TransformersFixtures) {
  NEED_GPU();
  for (const char* name : {"qwen2_gqa_f32", "qwen2_tied_f32", "qwen2_mqa_bf16", "llama_gqa_f32", "llama_bias_f16",
                           "qwen2_sharded_f32", "omni_thinker_f32", "vl_f32"}) {
    const std::string dir = test::fixture(std::string("models/") + name);
    if (!fs::exists(dir + "/ref.safetensors")) continue;
    auto m = Model::load(dir);
    auto ref = WeightStore::open(dir + "/ref.safetensors");
    auto idsl = read_i64(ref->get("input_ids"));
    std::vector<int32_t> ids(idsl.begin(), idsl.end());
    std::string why;
    auto gpu = make_cuda_backend(0, &why);
    ASSERT_TRUE(gpu) << why;
    Session s(*m, *gpu, int(ids.size()) + 1);
    std::vector<float> logits;
    s.forward(ids, &logits, true);
    const DType dt = m->layers[0].q->dtype;
    // f32 checkpoints stay float32 on the GPU; bf16 ones are compared with the reference's
    // float32-math logits; f16 ones are converted to bf16 on upload.
    const double e =
        rel(logits, read_f32(ref->get(dt != DType::F32 && ref->has("logits_f32math") ? "logits_f32math" : "logits")));
    std::printf("  fixture %s (%s): logits rel err %.2e\n", name, dtype_name(dt), e);
    EXPECT_LT(e, dt == DType::F32 ? 1e-4 : 5e-2) << name;
  }
}

// OutRo as released on the GPU: every preset's prompt and decode-step logits against the reference
// fixtures (tools/outro_fixtures.py), the per-layer sink sets equal the CPU backend's, and a prompt
// without sinks is bit-identical to the plain model on the GPU too.
TEST(CudaForward, OutroReleaseFixtures) {
  NEED_GPU();
  for (const char* name : {"q14_gqa", "q8_mha"}) {
    const std::string dir = test::fixture(std::string("outro_release/") + name);
    auto m = Model::load(dir);
    auto ref = WeightStore::open(dir + "/ref.safetensors");
    std::ifstream meta_in(dir + "/ref.json");
    const auto meta = nlohmann::json::parse(meta_in);
    const auto ids = meta["ids"].get<std::vector<int32_t>>(), quiet = meta["nosink_ids"].get<std::vector<int32_t>>();
    const auto steps = meta["steps"].get<std::vector<int32_t>>();
    std::string why;
    auto gpu = make_cuda_backend(0, &why);
    ASSERT_TRUE(gpu) << why;
    for (const std::string& preset : outro_preset_names()) {
      OutRo o(outro_preset(preset));
      Session s(*m, *gpu, 40);
      s.add_intervention(&o);
      std::vector<float> lg;
      s.forward(ids, &lg, true);
      EXPECT_LT(rel(lg, read_f32(ref->get(preset + ".prompt"))), 1e-4) << name << " " << preset;
      for (size_t i = 0; i < steps.size(); ++i) {
        s.forward(&steps[i], 1, &lg);
        EXPECT_LT(rel(lg, read_f32(ref->get(preset + ".step" + std::to_string(i)))), 1e-4) << name << " " << preset;
      }
      EXPECT_EQ(o.layer_sinks(), meta["presets"][preset]["sinks"].get<std::vector<std::vector<int>>>()) << name;
      Session q(*m, *gpu, 40), b(*m, *gpu, 40);
      q.add_intervention(&o);
      std::vector<float> a, c;
      q.forward(quiet, &a, true);
      b.forward(quiet, &c, true);
      ASSERT_EQ(a.size(), c.size());
      EXPECT_EQ(std::memcmp(a.data(), c.data(), a.size() * 4), 0) << name << " " << preset << " no-sink prompt";
      EXPECT_FALSE(o.any_sink());
    }
  }
}

// Qwen3-Omni's MoE thinker on the GPU (models/qwen3_moe.cpp through the CUDA backend: expert views
// into fused uploads, scatter_add_rows): text and cached decode against transformers' logits, the
// router's choices equal to the reference's, OutRo's presets on the planted-sink fixture.
TEST(CudaForward, Qwen3OmniMoeFixtures) {
  NEED_GPU();
  std::string why;
  auto gpu = make_cuda_backend(0, &why);
  ASSERT_TRUE(gpu) << why;
  for (const char* name : {"e4k2_mha", "e8k3_step2_gqa", "e6k1_hd16_gqa", "e5k5_norm_off", "released_e4k2"}) {
    const std::string dir = test::fixture(std::string("qwen3_omni/") + name);
    auto m = Model::load(dir);
    auto ref = WeightStore::open(dir + "/ref.safetensors");
    std::ifstream meta_in(dir + "/ref.json");
    const auto ids = nlohmann::json::parse(meta_in)["text_ids"].get<std::vector<int32_t>>();
    std::vector<std::string> hooks;
    for (int l = 0; l < m->config().layers; ++l)
      if (m->config().moe_layer(l)) hooks.push_back(hook_name(l, Hook::Experts));
    Recorder rec(hooks);
    Session s(*m, *gpu, int(ids.size()));
    s.add_observer(&rec);
    std::vector<float> logits;
    s.forward(ids.data(), 9, &logits, true);
    std::vector<float> all = logits, step;
    for (size_t i = 9; i < ids.size(); ++i) {
      s.forward(&ids[i], 1, &step);
      all.insert(all.end(), step.begin(), step.end());
    }
    const double e = rel(all, read_f32(ref->get("text.cached_logits")));
    std::printf("  qwen3_omni %s: logits rel err %.2e\n", name, e);
    EXPECT_LT(e, 1e-4) << name;
    for (int l = 0; l < m->config().layers; ++l)
      if (m->config().moe_layer(l))
        EXPECT_EQ(rec.get(hook_name(l, Hook::Experts))->data, read_f32(ref->get("text.experts." + std::to_string(l))))
            << name << " layer " << l;
  }
  const std::string dir = test::fixture("qwen3_omni/outro_q3");
  auto m = Model::load(dir);
  auto ref = WeightStore::open(dir + "/ref.safetensors");
  std::ifstream meta_in(dir + "/ref.json");
  const auto meta = nlohmann::json::parse(meta_in);
  const auto ids = meta["ids"].get<std::vector<int32_t>>();
  for (const std::string& preset : outro_preset_names()) {
    OutRo o(outro_preset(preset));
    Session s(*m, *gpu, 40);
    s.add_intervention(&o);
    std::vector<float> lg;
    s.forward(ids, &lg, true);
    EXPECT_LT(rel(lg, read_f32(ref->get(preset + ".prompt"))), 1e-4) << "outro_q3 " << preset;
  }
}

// A bf16 copy of a tiny Qwen3-Omni thinker: its experts take the device kernels (the float32 fixtures
// above take the default path); prefill and decode logits against the CPU's.
TEST(CudaForward, Qwen3OmniMoeBf16DeviceExpertsMatchCpu) {
  NEED_GPU();
  std::string why;
  auto gpu = make_cuda_backend(0, &why);
  ASSERT_TRUE(gpu) << why;
  auto cpu = make_cpu_backend();
  const std::string src = test::fixture("qwen3_omni/e4k2_mha"), dir = test::tmp_dir("cuda_q3_bf16");
  {
    fs::copy_file(src + "/config.json", dir + "/config.json", fs::copy_options::overwrite_existing);
    auto st = WeightStore::open(src + "/model.safetensors");
    std::vector<TensorOut> ts;
    for (const auto& [name, t] : st->tensors()) {
      TensorOut o;
      o.name = name;
      o.dtype = DType::BF16;
      o.shape = t.shape;
      size_t n = 1;
      for (auto d : t.shape) n *= size_t(d);
      std::vector<float> f(n);
      to_f32(t.dtype, t.data, f.data(), n);
      o.bytes.resize(2 * n);
      for (size_t i = 0; i < n; ++i) {
        const uint16_t h = f32_to_bf16(f[i]);
        std::memcpy(o.bytes.data() + 2 * i, &h, 2);
      }
      ts.push_back(std::move(o));
    }
    write_safetensors(dir + "/model.safetensors", ts);
  }
  auto m = Model::load(dir);
  std::vector<int32_t> ids;
  for (int i = 0; i < 40; ++i) ids.push_back(int32_t((i * 37 + 11) % m->config().vocab));
  std::vector<float> res[2];
  int b = 0;
  for (Backend* be : {cpu.get(), gpu.get()}) {
    Session s(*m, *be, int(ids.size()));
    std::vector<float> lg, step;
    s.forward(ids.data(), 33, &lg, true);
    for (size_t i = 33; i < ids.size(); ++i) {
      s.forward(&ids[i], 1, &step);
      lg.insert(lg.end(), step.begin(), step.end());
    }
    res[b++] = lg;
  }
  const double e = rel(res[1], res[0]);
  std::printf("  qwen3_omni e4k2_mha bf16: cpu vs cuda logits rel err %.2e\n", e);
  EXPECT_LT(e, 5e-2);
  fs::remove_all(dir);
}

// Qwen3-Omni's vision and audio towers on the GPU (float32 fixtures: the ops' float32 paths): the
// mixed video + audio + image + text prompt's tower outputs, DeepStack features and logits against
// transformers' reference, as tests/test_qwen3_omni_media.cpp checks them on the CPU.
TEST(CudaForward, Qwen3OmniTowersMatchReference) {
  NEED_GPU();
  std::string why;
  auto gpu = make_cuda_backend(0, &why);
  ASSERT_TRUE(gpu) << why;
  for (const char* name : {"towers_a", "towers_b"}) {
    const std::string dir = test::fixture(std::string("qwen3_omni/") + name);
    auto m = Model::load(dir);
    MultimodalModel mm(*m, *gpu);
    auto ref = WeightStore::open(dir + "/ref.safetensors");
    const auto meta = nlohmann::json::parse(std::ifstream(dir + "/ref.json"));
    auto f = [&](const std::string& k) { return read_f32(ref->get(k)); };
    auto mel = [&](const std::string& k) {
      const TensorInfo& t = ref->get(k);
      media::MelFeatures ml;
      ml.n_mels = int(t.shape[0]);
      ml.n_frames = int(t.shape[1]);
      ml.data = read_f32(t);
      return ml;
    };
    auto grid = [&](const char* k, double spg) {
      return Grid{meta[k][0].get<int>(), meta[k][1].get<int>(), meta[k][2].get<int>(), spg};
    };
    const auto& p = meta["mixed"];
    MediaSet media;
    media.images.push_back(grid("image_grid", 0));
    media.videos.push_back(grid("video_grid", meta["video_second_per_grid"].get<double>()));
    media.use_audio_in_video = p["use_audio_in_video"].get<bool>();
    if (media.use_audio_in_video) media.audio_frames.push_back(meta["audio_frames"][0].get<int>());
    media.audio_frames.push_back(meta["audio_frames"][1].get<int>());
    const Grid ig = media.images[0], vg = media.videos[0];
    std::vector<EncodedMedia> images, videos, audios;
    images.push_back(mm.encode_vision(f("image.pixels").data(), ig.t, ig.h, ig.w, Modality::Image));
    videos.push_back(mm.encode_vision(f("video.pixels").data(), vg.t, vg.h, vg.w, Modality::Video));
    media::MelFeatures a = mel("audio.0.mel"), b = mel("audio.1.mel");
    audios = media.use_audio_in_video ? mm.encode_audio({&a, &b}) : mm.encode_audio({&b});
    MultimodalPrefill pf =
        mm.assemble(p["template_ids"].get<std::vector<int32_t>>(), media, images, videos, audios);
    ASSERT_EQ(pf.ids, p["ids"].get<std::vector<int32_t>>()) << name;
    std::vector<float> ds;
    for (auto& d : pf.deepstack) ds.insert(ds.end(), d.begin(), d.end());
    const double eds = rel(ds, f("mixed.deepstack"));
    Session s(*m, *gpu, int(pf.ids.size()) + 2);
    std::vector<float> logits;
    feed_prefill(s, pf, &logits, true);
    const double el = rel(logits, f("mixed.logits"));
    std::printf("  qwen3_omni %s on cuda: deepstack rel err %.2e, mixed prompt (%zu tokens) logits rel err %.2e\n",
                name, eds, pf.ids.size(), el);
    EXPECT_LT(eds, 1e-4) << name;
    EXPECT_LT(el, 1e-4) << name;
  }
}

TEST(CudaForward, TooLargeCacheIsAnErrorNotACrash) {
  NEED_GPU();
  RandomModelSpec s;
  s.hidden = 64, s.intermediate = 128, s.layers = 2, s.heads = 4, s.kv_heads = 2, s.vocab = 100;
  TmpModel tm(s, "big");
  auto m = Model::load(tm.dir);
  std::string why;
  auto gpu = make_cuda_backend(0, &why);
  ASSERT_TRUE(gpu) << why;
  // 2 layers x 2 x 2^34 floats: far beyond any GPU.
  try {
    Session sess(*m, *gpu, 1 << 30);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("do not fit"), std::string::npos) << e.what();
  }
  // The backend still works afterwards.
  Session ok(*m, *gpu, 16);
  std::vector<float> logits;
  std::vector<int32_t> ids = {1, 2, 3};
  ok.forward(ids, &logits);
  EXPECT_EQ(logits.size(), size_t(100));
}

}  // namespace
}  // namespace outro
