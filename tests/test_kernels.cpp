// CPU kernels: every ISA the machine has against the portable path and a double-precision
// reference (all weight dtypes, odd shapes), the bf16 matrix paths (AVX-512 BF16, AMX: whichever
// this CPU has; the others are reported as skipped) against bf16 error bounds, determinism across
// row splits, the fast exp's accuracy, and every Backend op of make_cpu_backend() against
// straightforward loops written here.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cpu/gemm.h"

namespace outro {
namespace {

using cpu::Isa;
using cpu::Kernels;

std::vector<float> randn(size_t n, uint64_t seed, float sd = 1.f, float mean = 0.f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(mean, sd);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

// Weights stored in dtype, plus the exact float values they hold.
struct Mat {
  DType dt;
  std::vector<uint8_t> bytes;
  std::vector<float> vals;
};

Mat make_mat(DType dt, size_t n, uint64_t seed) {
  Mat m{dt, {}, randn(n, seed, 0.5f)};
  m.bytes.resize(n * dtype_size(dt));
  for (size_t i = 0; i < n; ++i) {
    if (dt == DType::F32) {
      std::memcpy(m.bytes.data() + 4 * i, &m.vals[i], 4);
    } else {
      const uint16_t h = dt == DType::BF16 ? f32_to_bf16(m.vals[i]) : f32_to_f16(m.vals[i]);
      std::memcpy(m.bytes.data() + 2 * i, &h, 2);
      m.vals[i] = dt == DType::BF16 ? bf16_to_f32(h) : f16_to_f32(h);
    }
  }
  return m;
}

// max |a - b| / max |ref|
double rel(const std::vector<float>& a, const std::vector<double>& ref) {
  double m = 0, s = 1e-30;
  for (size_t i = 0; i < ref.size(); ++i) {
    m = std::max(m, std::fabs(double(a[i]) - ref[i]));
    s = std::max(s, std::fabs(ref[i]));
  }
  return m / s;
}
double rel(const std::vector<float>& a, const std::vector<float>& ref) {
  return rel(a, std::vector<double>(ref.begin(), ref.end()));
}

std::vector<Isa> simd_isas() {
  std::vector<Isa> v;
  for (Isa i : {Isa::Avx2, Isa::Avx512})
    if (cpu::isa_supported(i)) v.push_back(i);
  return v;
}
std::vector<Isa> all_isas() {
  std::vector<Isa> v{Isa::Portable};
  for (Isa i : simd_isas()) v.push_back(i);
  return v;
}
// The bf16 matrix paths this CPU can run; the others are printed as skipped (once per test).
std::vector<Isa> bf16_isas() {
  std::vector<Isa> v;
  for (Isa i : {Isa::Avx512Bf16, Isa::Amx}) {
    if (cpu::isa_supported(i)) {
      v.push_back(i);
    } else {
      const char* why = "";
      if (i == Isa::Amx) cpu::cpu_amx_usable(&why);
      std::printf("[  skipped ] %s path: not available on this CPU%s%s\n", cpu::isa_name(i), *why ? ": " : "", why);
    }
  }
  return v;
}

// Restores the active kernel set when a test switches it.
struct IsaGuard {
  Isa saved = cpu::kernels().isa;
  ~IsaGuard() { cpu::set_isa(saved); }
};

const DType kDtypes[] = {DType::F32, DType::BF16, DType::F16};

TEST(Kernels, DispatchReportsAnAvailableIsa) {
  const char* name = cpu::gemm_isa();
  EXPECT_TRUE(!std::strcmp(name, "portable") || !std::strcmp(name, "avx2") || !std::strcmp(name, "avx512") ||
              !std::strcmp(name, "avx512bf16") || !std::strcmp(name, "amx"))
      << name;
  EXPECT_TRUE(cpu::isa_supported(Isa::Portable));
  EXPECT_NE(cpu::kernels_for(Isa::Portable), nullptr);
  for (Isa i : simd_isas()) EXPECT_STREQ(cpu::kernels_for(i)->name, cpu::isa_name(i));
  std::printf("[ kernels  ] active %s; SIMD sets here:", name);
  for (Isa i : simd_isas()) std::printf(" %s", cpu::isa_name(i));
  std::printf("\n");
}

TEST(Kernels, GemmMatchesReferenceForEveryIsaDtypeAndShape) {
  const Kernels* portable = cpu::kernels_for(Isa::Portable);
  const int64_t shapes[][2] = {{1, 1}, {5, 7}, {3, 17}, {37, 100}, {19, 1000}, {33, 2100}, {21, 33}, {6, 4097}};
  for (DType dt : kDtypes) {
    for (auto [rows, cols] : shapes) {
      const Mat w = make_mat(dt, size_t(rows * cols), uint64_t(rows * 1000 + cols));
      for (int n : {1, 3, 7}) {
        SCOPED_TRACE(std::string(dtype_name(dt)) + " rows " + std::to_string(rows) + " cols " + std::to_string(cols) +
                     " n " + std::to_string(n));
        const auto x = randn(size_t(n * cols), uint64_t(n + 7 * cols));
        std::vector<double> ref(size_t(n * rows));
        for (int i = 0; i < n; ++i)
          for (int64_t r = 0; r < rows; ++r) {
            double acc = 0;
            for (int64_t c = 0; c < cols; ++c) acc += double(x[size_t(i * cols + c)]) * w.vals[size_t(r * cols + c)];
            ref[size_t(i * rows + r)] = acc;
          }
        std::vector<float> yp(ref.size(), NAN);
        portable->gemm(yp.data(), x.data(), n, w.bytes.data(), dt, rows, cols, 0, rows);
        EXPECT_LT(rel(yp, ref), 1e-5) << "portable";
        for (Isa isa : simd_isas()) {
          const Kernels* k = cpu::kernels_for(isa);
          std::vector<float> y(ref.size(), NAN);
          k->gemm(y.data(), x.data(), n, w.bytes.data(), dt, rows, cols, 0, rows);
          EXPECT_LT(rel(y, ref), 1e-5) << k->name << " vs double";
          EXPECT_LT(rel(y, yp), 1e-5) << k->name << " vs portable";
          // Any split of the rows (as threads would make) gives bit-identical results.
          for (int64_t cut : {int64_t(1), int64_t(3), int64_t(16), rows / 2 + 1}) {
            if (cut >= rows) continue;
            std::vector<float> ys(ref.size(), NAN);
            k->gemm(ys.data(), x.data(), n, w.bytes.data(), dt, rows, cols, 0, cut);
            k->gemm(ys.data(), x.data(), n, w.bytes.data(), dt, rows, cols, cut, rows);
            EXPECT_EQ(0, std::memcmp(ys.data(), y.data(), y.size() * 4)) << k->name << " split at " << cut;
          }
        }
      }
    }
  }
}

TEST(Kernels, GemmRowsUsesTheActiveSet) {
  IsaGuard guard;
  const Mat w = make_mat(DType::BF16, 9 * 50, 3);
  const auto x = randn(2 * 50, 4);
  std::vector<Isa> isas = all_isas();
  for (Isa i : bf16_isas()) isas.push_back(i);
  for (Isa isa : isas) {
    ASSERT_TRUE(cpu::set_isa(isa));
    EXPECT_STREQ(cpu::gemm_isa(), cpu::isa_name(isa));
    std::vector<float> a(18), b(18);
    cpu::gemm_rows(a.data(), x.data(), 2, w.bytes.data(), DType::BF16, 9, 50, 0, 9);
    cpu::kernels_for(isa)->gemm(b.data(), x.data(), 2, w.bytes.data(), DType::BF16, 9, 50, 0, 9);
    EXPECT_EQ(a, b);
  }
}

// ---- the bf16 matrix paths ----
//
// A bf16 product rounds each x to bf16 (8 significant bits, round to nearest even: relative error
// <= u = 2^-8) and, for f16 weights, each weight too (another u); bf16 weights are exact. Each term
// x·w is then off by at most u|x·w| (bf16 weights) or (2u + u²)|x·w| (f16 weights), and float32
// accumulation adds at most (number of sequential adds)·2^-24 of Σ|x·w|: one chain per 32 columns
// (vdpbf16ps lanes / tile steps) plus the lane reduction and tile sums, under K/32 + 16 adds, i.e.
// < 2^-12 for K <= 4096. So per element
//   |y - x·w| <= (2^-8 or 2^-7, + 2^-11) · Σ_k |x_k·w_k|          (against the float32 operands)
//   |y - bf16(x)·bf16(w)| <= 2^-12 · Σ_k |bf16(x_k)·bf16(w_k)|     (the same rounded operands, in double)
// The second bound is the kernel's own correctness check: a wrong index, tail or tile costs far
// more than 2^-12 of the absolute sum.
double bf16_bound(DType wt) { return (wt == DType::BF16 ? 1.0 / 256 : 1.0 / 128) + 1.0 / 2048; }

struct Bf16Ref {
  std::vector<double> y, abs;    // against the float32 operands
  std::vector<double> yb, absb;  // against the bf16-rounded operands
};

Bf16Ref bf16_ref(const std::vector<float>& x, const Mat& w, int n, int64_t rows, int64_t cols) {
  Bf16Ref r;
  for (auto* v : {&r.y, &r.abs, &r.yb, &r.absb}) v->assign(size_t(n * rows), 0.0);
  for (int i = 0; i < n; ++i)
    for (int64_t o = 0; o < rows; ++o) {
      double a = 0, aa = 0, b = 0, ba = 0;
      for (int64_t c = 0; c < cols; ++c) {
        const double xv = x[size_t(i * cols + c)], wv = w.vals[size_t(o * cols + c)];
        const double xb = bf16_to_f32(f32_to_bf16(float(xv))), wb = bf16_to_f32(f32_to_bf16(float(wv)));
        a += xv * wv, aa += std::fabs(xv * wv), b += xb * wb, ba += std::fabs(xb * wb);
      }
      const size_t k = size_t(i * rows + o);
      r.y[k] = a, r.abs[k] = aa, r.yb[k] = b, r.absb[k] = ba;
    }
  return r;
}

// Largest |y - ref| / Σ|terms| over the elements (the bound is per element).
double worst(const std::vector<float>& y, const std::vector<double>& ref, const std::vector<double>& abs) {
  double m = 0;
  for (size_t i = 0; i < ref.size(); ++i) m = std::max(m, std::fabs(double(y[i]) - ref[i]) / (abs[i] + 1e-30));
  return m;
}

TEST(Kernels, Bf16PathsMatchReferenceWithinBf16Bounds) {
  const auto isas = bf16_isas();
  if (isas.empty()) GTEST_SKIP() << "no bf16 matrix path on this CPU";
  const cpu::Kernels* f32 = cpu::kernels_for(Isa::Avx512);
  ASSERT_NE(f32, nullptr);
  // Odd shapes: cols below, at, and off multiples of 32 (tails, padding); rows off multiples of 16/32.
  const int64_t shapes[][2] = {{1, 1}, {5, 7}, {17, 33}, {37, 100}, {33, 896}, {48, 1176}, {21, 3420}, {40, 64}, {6, 4097}};
  for (Isa isa : isas) {
    const Kernels* k = cpu::kernels_for(isa);
    ASSERT_NE(k->mm, nullptr);
    for (DType dt : {DType::BF16, DType::F16}) {
      for (auto [rows, cols] : shapes) {
        const Mat w = make_mat(dt, size_t(rows * cols), uint64_t(rows * 1000 + cols) + 5);
        for (int n : {2, 3, 4, 7, 16, 17, 33, 40, 130}) {  // 130: several x chunks at cols 4097
          SCOPED_TRACE(std::string(k->name) + " " + dtype_name(dt) + " rows " + std::to_string(rows) + " cols " +
                       std::to_string(cols) + " n " + std::to_string(n));
          const auto x = randn(size_t(n * cols), uint64_t(n + 7 * cols) + 1);
          std::vector<float> y(size_t(n * rows), NAN);
          k->gemm(y.data(), x.data(), n, w.bytes.data(), dt, rows, cols, 0, rows);
          if (!cpu::uses_bf16(*k, n, dt)) {
            // Below min_n the set keeps the float32 kernels: identical to the AVX-512 set.
            std::vector<float> yf(y.size(), NAN);
            f32->gemm(yf.data(), x.data(), n, w.bytes.data(), dt, rows, cols, 0, rows);
            EXPECT_EQ(0, std::memcmp(y.data(), yf.data(), y.size() * 4)) << "below min_n";
            continue;
          }
          const Bf16Ref ref = bf16_ref(x, w, n, rows, cols);
          EXPECT_LT(worst(y, ref.yb, ref.absb), 1.0 / 4096) << "against the bf16-rounded operands";
          EXPECT_LT(worst(y, ref.y, ref.abs), bf16_bound(dt)) << "against the float32 operands";
          // The rounding is real: on these shapes the result differs from the float32 kernels.
          if (cols >= 33) {
            std::vector<float> yf(y.size());
            f32->gemm(yf.data(), x.data(), n, w.bytes.data(), dt, rows, cols, 0, rows);
            EXPECT_NE(0, std::memcmp(y.data(), yf.data(), y.size() * 4)) << "x was not rounded to bf16?";
          }
          // Any split of the rows (as threads make) and of the packing gives bit-identical results,
          // through the two-phase interface the backend uses.
          const cpu::MatPath& mm = *k->mm;
          std::vector<uint16_t> xp(mm.packed_size(n, cols), 0xffff);  // garbage where pack must write
          const int icut = n / 2;
          mm.pack(xp.data(), x.data(), n, cols, icut, n);
          mm.pack(xp.data(), x.data(), n, cols, 0, icut);
          for (int64_t cut : {int64_t(0), int64_t(1), int64_t(16), int64_t(17), rows / 2 + 1}) {
            if (cut >= rows) continue;
            std::vector<float> ys(y.size(), NAN);
            mm.gemm(ys.data(), xp.data(), n, w.bytes.data(), dt, rows, cols, 0, cut);
            mm.gemm(ys.data(), xp.data(), n, w.bytes.data(), dt, rows, cols, cut, rows);
            EXPECT_EQ(0, std::memcmp(ys.data(), y.data(), y.size() * 4)) << "split at " << cut;
          }
        }
      }
    }
  }
}

TEST(Kernels, Bf16PathsKeepFloat32WeightsAndDecodeOnFloat32Kernels) {
  const auto isas = bf16_isas();
  if (isas.empty()) GTEST_SKIP() << "no bf16 matrix path on this CPU";
  const cpu::Kernels* f32 = cpu::kernels_for(Isa::Avx512);
  for (Isa isa : isas) {
    const Kernels* k = cpu::kernels_for(isa);
    EXPECT_FALSE(cpu::uses_bf16(*k, 64, DType::F32)) << k->name;
    EXPECT_FALSE(cpu::uses_bf16(*k, 1, DType::BF16)) << k->name;
    EXPECT_TRUE(cpu::uses_bf16(*k, 64, DType::BF16)) << k->name;
    for (auto [dt, n] : {std::pair{DType::F32, 40}, std::pair{DType::BF16, 1}}) {
      const Mat w = make_mat(dt, 50 * 300, 9);
      const auto x = randn(size_t(n) * 300, 10);
      std::vector<float> a(size_t(n) * 50), b(size_t(n) * 50);
      k->gemm(a.data(), x.data(), n, w.bytes.data(), dt, 50, 300, 0, 50);
      f32->gemm(b.data(), x.data(), n, w.bytes.data(), dt, 50, 300, 0, 50);
      EXPECT_EQ(a, b) << k->name << " " << dtype_name(dt) << " n " << n;
    }
  }
}

TEST(Kernels, AmxIsUsedOnlyWhenUsableAndSaysWhyNot) {
  const char* why = "";
  const bool usable = cpu::cpu_amx_usable(&why);
  EXPECT_EQ(usable, cpu::isa_supported(Isa::Amx));
  if (usable) {
    EXPECT_STREQ(why, "");
    std::printf("[ kernels  ] AMX usable (tile-data permission granted)\n");
  } else {
    EXPECT_STRNE(why, "") << "a refusal must say why";
    EXPECT_EQ(cpu::kernels_for(Isa::Amx), nullptr);
    IsaGuard guard;
    EXPECT_FALSE(cpu::set_isa(Isa::Amx));
    EXPECT_NE(cpu::kernels().isa, Isa::Amx);
    // The automatic choice records the reason (shown by `outro info`).
    EXPECT_NE(std::string(cpu::isa_note()).find("AMX not used"), std::string::npos) << cpu::isa_note();
    std::printf("[  skipped ] amx kernels: %s\n", why);
  }
}

TEST(Kernels, VectorPrimitivesMatchReference) {
  for (Isa isa : all_isas()) {
    const Kernels* k = cpu::kernels_for(isa);
    SCOPED_TRACE(k->name);
    for (int n : {1, 5, 16, 31, 64, 100, 1001}) {
      SCOPED_TRACE(n);
      const auto a = randn(size_t(n), uint64_t(n)), b = randn(size_t(n), uint64_t(n) + 1);
      const auto g = randn(size_t(n), uint64_t(n) + 2, 0.1f, 1.f);
      double d = 0, ss = 0;
      for (int i = 0; i < n; ++i) {
        d += double(a[size_t(i)]) * b[size_t(i)];
        ss += double(a[size_t(i)]) * a[size_t(i)];
      }
      double norm = 0;
      for (int i = 0; i < n; ++i) norm += std::fabs(double(a[size_t(i)]) * b[size_t(i)]);
      EXPECT_LE(std::fabs(k->dot(a.data(), b.data(), n) - d), 1e-5 * norm);
      EXPECT_LE(std::fabs(k->sumsq(a.data(), n) - ss), 1e-5 * ss);
      double sm = 0;
      for (float v : a) sm += v;
      EXPECT_NEAR(k->sum(a.data(), n), sm, 1e-5 * ss + 1e-6);

      std::vector<float> y = b;
      k->axpy(y.data(), 0.75f, a.data(), n);
      std::vector<double> ry(static_cast<size_t>(n));
      for (int i = 0; i < n; ++i) ry[size_t(i)] = double(b[size_t(i)]) + 0.75 * a[size_t(i)];
      EXPECT_LT(rel(y, ry), 1e-6);

      std::vector<float> sc(static_cast<size_t>(n));
      k->scale_mul(sc.data(), a.data(), g.data(), 0.3f, n);
      for (int i = 0; i < n; ++i) ry[size_t(i)] = double(g[size_t(i)]) * (double(a[size_t(i)]) * 0.3f);
      EXPECT_LT(rel(sc, ry), 1e-6);

      std::vector<float> sw(static_cast<size_t>(n));
      const auto gate = randn(size_t(n), uint64_t(n) + 3, 4.f);
      k->swiglu(sw.data(), gate.data(), b.data(), n);
      for (int i = 0; i < n; ++i) {
        const float gg = gate[size_t(i)];
        const float want = gg / (1.f + std::exp(-gg)) * b[size_t(i)];
        EXPECT_NEAR(sw[size_t(i)], want, 1e-6 * std::fabs(want) + 1e-30) << "swiglu at " << i;
      }

      std::vector<float> s = a;
      const float m = *std::max_element(a.begin(), a.end());
      const float sum = k->exp_shift(s.data(), n, m);
      double rsum = 0;
      for (int i = 0; i < n; ++i) {
        const float want = std::exp(a[size_t(i)] - m);
        rsum += want;
        EXPECT_NEAR(s[size_t(i)], want, 1e-6 * want) << "exp_shift at " << i;
      }
      EXPECT_NEAR(sum, rsum, 1e-6 * rsum);
    }
  }
}

// OutRo's per-head gate and Φ_LLM's bracket pass, every set against the formulas (double sums).
TEST(Kernels, GateAndBracketMatchTheirContracts) {
  for (Isa isa : all_isas()) {
    const Kernels* k = cpu::kernels_for(isa);
    SCOPED_TRACE(k->name);
    for (int n : {1, 5, 16, 31, 64, 80, 100}) {
      SCOPED_TRACE(n);
      const auto v = randn(size_t(n), uint64_t(n) + 40);
      double vv = 0;
      for (float x : v) vv += double(x) * x;
      for (int sign : {1, -1})
        for (bool rescale : {true, false}) {
          // o = sign * (v + noise): cos(o, v) > 0 for sign 1, < 0 for sign -1.
          auto o = randn(size_t(n), uint64_t(n) + 41, 0.3f);
          for (int i = 0; i < n; ++i) o[size_t(i)] = float(sign) * (v[size_t(i)] + o[size_t(i)]);
          double oo = 0, ov = 0;
          for (int i = 0; i < n; ++i) oo += double(o[size_t(i)]) * o[size_t(i)], ov += double(o[size_t(i)]) * v[size_t(i)];
          const double cs = ov / std::sqrt(oo * vv), g = std::tanh(std::max(cs, 0.0) / 0.1);
          std::vector<double> w(static_cast<size_t>(n));
          double ww = 0;
          for (int i = 0; i < n; ++i) {
            w[size_t(i)] = o[size_t(i)] + g * 3.0 * std::fabs(ov) / (vv + 1e-8) * v[size_t(i)];
            ww += w[size_t(i)] * w[size_t(i)];
          }
          std::vector<float> got = o;
          const float c = k->gate(got.data(), v.data(), n, float(vv), float(std::sqrt(vv)), 3.f, 0.1f, rescale);
          EXPECT_NEAR(c, cs, 1e-5);
          for (int i = 0; i < n; ++i) {
            const double want = rescale ? w[size_t(i)] * std::sqrt(oo) / (std::sqrt(ww) + 1e-8) : w[size_t(i)];
            ASSERT_NEAR(got[size_t(i)], want, 1e-5 * (1 + std::fabs(want))) << i;
          }
          if (sign < 0 && !rescale) EXPECT_EQ(got, o);  // a closed gate leaves the row's bits alone
        }
      // bracket: max, counts and the kept patterns; nothing written past out + n.
      auto x = randn(size_t(n), uint64_t(n) + 42);
      x[0] = -0.f;
      auto bits = [](float f) {
        uint32_t b;
        std::memcpy(&b, &f, 4);
        return b & 0x7fffffffu;
      };
      const float lo_v = 0.3f, hi_v = 1.1f;
      uint32_t want_max = 0;
      int64_t want_below = 0;
      std::vector<uint32_t> want_in;
      for (float f : x) {
        want_max = std::max(want_max, bits(f));
        want_below += bits(f) < bits(lo_v);
        if (bits(f) >= bits(lo_v) && bits(f) <= bits(hi_v)) want_in.push_back(bits(f));
      }
      std::vector<uint32_t> out(size_t(n) + 8, 0xdeadbeefu);
      int64_t below = 3, inside = 2;
      EXPECT_EQ(k->bracket(x.data(), n, bits(lo_v), bits(hi_v), out.data(), &below, &inside), want_max);
      EXPECT_EQ(below, 3 + want_below);
      ASSERT_EQ(inside, 2 + int64_t(want_in.size()));
      EXPECT_EQ(std::vector<uint32_t>(out.begin(), out.begin() + long(want_in.size())), want_in);  // in order
      for (size_t i = size_t(n); i < out.size(); ++i) EXPECT_EQ(out[i], 0xdeadbeefu) << "written past out + n";
    }
  }
}

TEST(Kernels, ExpIsWithin1e6RelativeOfStdExp) {
  std::vector<float> x;
  for (float v = -87.f; v <= 88.f; v += 0.0137f) x.push_back(v);
  for (float v : {0.f, -0.f, 1e-8f, -1e-8f, 0.34657359f, -0.34657359f, 88.7f, -87.3f}) x.push_back(v);
  for (Isa isa : all_isas()) {
    const Kernels* k = cpu::kernels_for(isa);
    std::vector<float> y(x.size());
    k->exp(y.data(), x.data(), int64_t(x.size()));
    double worst = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      const double want = std::exp(x[i]);
      worst = std::max(worst, std::fabs(y[i] - want) / want);
    }
    EXPECT_LT(worst, 1e-6) << k->name;
    // Far ends: overflow to inf and underflow to (almost) zero like std::exp.
    const float ends[4] = {100.f, -200.f, 89.f, -110.f};
    float out[4];
    k->exp(out, ends, 4);
    EXPECT_TRUE(std::isinf(out[0])) << k->name;
    EXPECT_EQ(out[1], 0.f) << k->name;
    EXPECT_TRUE(std::isinf(out[2])) << k->name;
    EXPECT_LT(out[3], 1e-44f) << k->name;
  }
}

// ---- Backend ops against plain loops ----

Weight weight_of(const Mat& m, int64_t rows, int64_t cols) {
  Weight w;
  w.dtype = m.dt;
  w.rows = rows;
  w.cols = cols;
  w.data = m.bytes.data();
  return w;
}

struct BackendTest : ::testing::Test {
  std::unique_ptr<Backend> be = make_cpu_backend();
  Buf put(const std::vector<float>& v) {
    Buf b = be->alloc(v.size());
    be->upload(b, 0, v.data(), v.size());
    return b;
  }
  std::vector<float> get(const Buf& b) {
    std::vector<float> v(b.n);
    be->download(b, 0, v.data(), v.size());
    return v;
  }
  std::vector<Buf> bufs;
  Buf keep(Buf b) {
    bufs.push_back(b);
    return b;
  }
  void TearDown() override {
    for (auto& b : bufs) be->release(b);
  }
};

TEST_F(BackendTest, MatmulWithBias) {
  IsaGuard guard;
  for (Isa isa : all_isas()) {
    ASSERT_TRUE(cpu::set_isa(isa));
    for (DType dt : kDtypes) {
      for (auto [n, rows, cols] : {std::tuple{1, 100, 70}, std::tuple{7, 300, 900}, std::tuple{1, 1000, 1200}}) {
        SCOPED_TRACE(std::string(cpu::isa_name(isa)) + " " + dtype_name(dt) + " n " + std::to_string(n) + " rows " +
                     std::to_string(rows));
        const Mat w = make_mat(dt, size_t(rows * cols), 11), bias = make_mat(dt, size_t(rows), 12);
        const auto x = randn(size_t(n * cols), 13);
        Buf xb = keep(put(x)), yb = keep(be->alloc(size_t(n * rows)));
        const Weight ww = weight_of(w, rows, cols), bw = weight_of(bias, 1, rows);
        be->matmul(yb, xb, n, ww, &bw);
        std::vector<double> ref(size_t(n * rows));
        for (int i = 0; i < n; ++i)
          for (int r = 0; r < rows; ++r) {
            double acc = bias.vals[size_t(r)];
            for (int c = 0; c < cols; ++c) acc += double(x[size_t(i * cols + c)]) * w.vals[size_t(r * cols + c)];
            ref[size_t(i * rows + r)] = acc;
          }
        EXPECT_LT(rel(get(yb), ref), 1e-5);
      }
    }
  }
}

// The backend's product on a bf16 path: x packed once (in parallel for large products), rows split
// over the pool; the same bits as the set's single-threaded kernel plus the bias, within the bounds.
TEST_F(BackendTest, MatmulOnBf16Paths) {
  const auto isas = bf16_isas();
  if (isas.empty()) GTEST_SKIP() << "no bf16 matrix path on this CPU";
  IsaGuard guard;
  for (Isa isa : isas) {
    ASSERT_TRUE(cpu::set_isa(isa));
    const Kernels* k = cpu::kernels_for(isa);
    for (DType dt : {DType::BF16, DType::F16}) {
      for (auto [n, rows, cols] : {std::tuple{4, 100, 70}, std::tuple{37, 300, 900}, std::tuple{130, 520, 1000}}) {
        SCOPED_TRACE(std::string(k->name) + " " + dtype_name(dt) + " n " + std::to_string(n) + " rows " +
                     std::to_string(rows));
        const Mat w = make_mat(dt, size_t(rows * cols), 11), bias = make_mat(dt, size_t(rows), 12);
        const auto x = randn(size_t(n * cols), 13);
        Buf xb = keep(put(x)), yb = keep(be->alloc(size_t(n * rows)));
        const Weight ww = weight_of(w, rows, cols), bw = weight_of(bias, 1, rows);
        be->matmul(yb, xb, n, ww, &bw);
        const auto y = get(yb);
        std::vector<float> want(size_t(n * rows));
        k->gemm(want.data(), x.data(), n, w.bytes.data(), dt, rows, cols, 0, rows);
        for (int i = 0; i < n; ++i)
          for (int r = 0; r < rows; ++r) want[size_t(i * rows + r)] += bias.vals[size_t(r)];
        EXPECT_EQ(y, want);
        Bf16Ref ref = bf16_ref(x, w, n, rows, cols);
        for (int i = 0; i < n; ++i)
          for (int r = 0; r < rows; ++r) ref.y[size_t(i * rows + r)] += bias.vals[size_t(r)];
        EXPECT_LT(worst(y, ref.y, ref.abs), bf16_bound(dt));
      }
    }
  }
}

TEST_F(BackendTest, RmsnormAddSwiglu) {
  IsaGuard guard;
  for (Isa isa : all_isas()) {
    ASSERT_TRUE(cpu::set_isa(isa));
    SCOPED_TRACE(cpu::isa_name(isa));
    for (auto [n, d] : {std::pair{3, 37}, std::pair{50, 900}}) {
      const Mat g = make_mat(DType::BF16, size_t(d), 21);
      const auto x = randn(size_t(n * d), 22, 2.f);
      Buf xb = keep(put(x)), yb = keep(be->alloc(size_t(n * d)));
      be->rmsnorm(yb, xb, n, weight_of(g, 1, d), 1e-6f);
      std::vector<double> ref(size_t(n * d));
      for (int i = 0; i < n; ++i) {
        double ss = 0;
        for (int c = 0; c < d; ++c) ss += double(x[size_t(i * d + c)]) * x[size_t(i * d + c)];
        const double inv = 1.0 / std::sqrt(ss / d + 1e-6);
        for (int c = 0; c < d; ++c) ref[size_t(i * d + c)] = g.vals[size_t(c)] * x[size_t(i * d + c)] * inv;
      }
      EXPECT_LT(rel(get(yb), ref), 1e-5);

      const auto a = randn(size_t(n * d), 23);
      Buf ab = keep(put(a));
      be->add(ab, xb, size_t(n * d));
      std::vector<float> sum(a.size());
      for (size_t i = 0; i < a.size(); ++i) sum[i] = a[i] + x[i];
      EXPECT_EQ(get(ab), sum);  // exact
    }
    for (size_t n : {size_t(13), size_t(40000)}) {
      const auto g = randn(n, 31, 3.f), u = randn(n, 32);
      Buf gb = keep(put(g)), ub = keep(put(u)), ob = keep(be->alloc(n));
      be->swiglu(ob, gb, ub, n);
      std::vector<double> ref(n);
      for (size_t i = 0; i < n; ++i) ref[i] = double(g[i]) / (1.0 + std::exp(-double(g[i]))) * u[i];
      EXPECT_LT(rel(get(ob), ref), 1e-5);
      be->swiglu(gb, gb, ub, n);  // in place, as the session calls it
      EXPECT_LT(rel(get(gb), ref), 1e-5);
    }
  }
}

TEST_F(BackendTest, RopeEmbedAndZeroCols) {
  const int n = 3, heads = 5, hd = 12;
  const auto x = randn(size_t(n * heads * hd), 41);
  const int32_t pos[n] = {0, 7, 300};
  std::vector<float> inv(hd / 2);
  for (int c = 0; c < hd / 2; ++c) inv[size_t(c)] = float(std::pow(10000.0, -2.0 * c / hd));
  Buf xb = keep(put(x));
  be->rope(xb, n, heads, hd, pos, inv.data());
  std::vector<double> ref(x.begin(), x.end());
  for (int i = 0; i < n; ++i)
    for (int h = 0; h < heads; ++h)
      for (int c = 0; c < hd / 2; ++c) {
        const double ang = double(float(pos[i]) * inv[size_t(c)]);
        const size_t o = size_t((i * heads + h) * hd);
        const double a = x[o + size_t(c)], b = x[o + size_t(c + hd / 2)];
        ref[o + size_t(c)] = a * std::cos(ang) - b * std::sin(ang);
        ref[o + size_t(c + hd / 2)] = b * std::cos(ang) + a * std::sin(ang);
      }
  EXPECT_LT(rel(get(xb), ref), 1e-5);

  const Mat table = make_mat(DType::BF16, 10 * 6, 42);
  const int32_t ids[3] = {9, 0, 4};
  Buf eb = keep(be->alloc(18));
  be->embed(eb, weight_of(table, 10, 6), ids, 3);
  const auto e = get(eb);
  for (int i = 0; i < 3; ++i)
    for (int c = 0; c < 6; ++c) EXPECT_EQ(e[size_t(i * 6 + c)], table.vals[size_t(ids[i] * 6 + c)]);

  be->zero_cols(eb, 3, 6, 2, 3);
  const auto z = get(eb);
  for (int i = 0; i < 3; ++i)
    for (int c = 0; c < 6; ++c)
      EXPECT_EQ(z[size_t(i * 6 + c)], c >= 2 && c < 5 ? 0.f : table.vals[size_t(ids[i] * 6 + c)]);
}

// Reference attention: causal rows, sink-out rows that see keys [0, sinkout_end).
void ref_attention(const std::vector<float>& q, const std::vector<float>& kc, const std::vector<float>& vc,
                   const AttnParams& p, const std::vector<int>& sinks, std::vector<double>& z,
                   std::vector<double>& pattern) {
  const int H = p.n_heads, KV = p.n_kv, hd = p.head_dim, total = p.past + p.n_new;
  z.assign(size_t(p.n_new * H * hd), 0.0);
  pattern.assign(size_t(H * p.n_new * total), 0.0);
  for (int h = 0; h < H; ++h)
    for (int r = 0; r < p.n_new; ++r) {
      const int pos = p.past + r, kvh = h / (H / KV);
      bool sink = false;
      for (int sp : sinks) sink |= sp == pos;
      const int nk = sink ? std::max(pos + 1, std::min(p.sinkout_end, total)) : pos + 1;
      std::vector<double> s(static_cast<size_t>(nk));
      double mx = -1e300;
      for (int j = 0; j < nk; ++j) {
        double acc = 0;
        for (int c = 0; c < hd; ++c)
          acc += double(q[size_t((r * H + h) * hd + c)]) * kc[size_t((j * KV + kvh) * hd + c)];
        s[size_t(j)] = acc * p.scale;
        mx = std::max(mx, s[size_t(j)]);
      }
      double sum = 0;
      for (auto& v : s) sum += (v = std::exp(v - mx));
      for (int j = 0; j < nk; ++j) {
        const double pj = s[size_t(j)] / sum;
        pattern[size_t((h * p.n_new + r) * total + j)] = pj;
        for (int c = 0; c < hd; ++c) z[size_t((r * H + h) * hd + c)] += pj * vc[size_t((j * KV + kvh) * hd + c)];
      }
    }
}

TEST_F(BackendTest, AttentionCausalSinkoutAndPattern) {
  IsaGuard guard;
  struct Case {
    int H, KV, hd, n_new, past;
    std::vector<int> sink;
    int sink_end;
  };
  const std::vector<Case> cases = {
      {4, 2, 16, 1, 9, {}, 0},              // decode step
      {4, 2, 16, 5, 0, {1, 3}, 5},          // prefill, two sink-out rows seeing the whole prompt
      {6, 3, 20, 7, 4, {4, 5, 10}, 9},      // with a past; sink rows at absolute positions
      {8, 2, 64, 40, 10, {12, 30}, 50},     // large enough for the threaded path
      {2, 1, 13, 3, 2, {}, 0},              // head_dim not a multiple of the vector width
      {4, 2, 13, 20, 3, {5}, 23},           // the blocked prefill kernel, odd head_dim
      {4, 1, 80, 130, 7, {20, 100}, 137},   // several key blocks, head_dim 80, MQA
  };
  for (Isa isa : all_isas()) {
    ASSERT_TRUE(cpu::set_isa(isa));
    for (const Case& cs : cases) {
      SCOPED_TRACE(std::string(cpu::isa_name(isa)) + " H " + std::to_string(cs.H) + " n_new " +
                   std::to_string(cs.n_new) + " past " + std::to_string(cs.past));
      const int total = cs.past + cs.n_new;
      const auto q = randn(size_t(cs.n_new * cs.H * cs.hd), 51, 1.5f);
      const auto kc = randn(size_t(total * cs.KV * cs.hd), 52, 1.5f);
      const auto vc = randn(size_t(total * cs.KV * cs.hd), 53);
      AttnParams p;
      p.n_heads = cs.H;
      p.n_kv = cs.KV;
      p.head_dim = cs.hd;
      p.scale = 1.f / std::sqrt(float(cs.hd));
      p.n_new = cs.n_new;
      p.past = cs.past;
      // The rows of the listed absolute positions are flagged in the mask (backend memory).
      std::vector<float> mask(size_t(cs.n_new), 0.f);
      for (int sp : cs.sink) mask[size_t(sp - cs.past)] = 1.f;
      Buf mb = keep(put(mask));
      p.sinkout_mask = cs.sink.empty() ? nullptr : mb.ptr;
      p.sinkout_end = cs.sink_end;
      std::vector<float> pattern(size_t(cs.H * cs.n_new * total), -1.f);
      p.pattern_out = pattern.data();
      Buf qb = keep(put(q)), kb = keep(put(kc)), vb = keep(put(vc)), zb = keep(be->alloc(q.size()));
      be->attention(zb, qb, kb, vb, p);
      std::vector<double> rz, rp;
      ref_attention(q, kc, vc, p, cs.sink, rz, rp);
      EXPECT_LT(rel(get(zb), rz), 1e-5);
      EXPECT_LT(rel(pattern, rp), 1e-5);
      for (size_t i = 0; i < rp.size(); ++i) {
        if (rp[i] == 0.0) {
          ASSERT_EQ(pattern[i], 0.f) << "masked entry " << i;
        }
      }
      // Without a pattern observer the output is the same.
      p.pattern_out = nullptr;
      Buf zb2 = keep(be->alloc(q.size()));
      be->attention(zb2, qb, kb, vb, p);
      EXPECT_EQ(get(zb2), get(zb));
    }
  }
}

// Non-causal attention within segments (the encoders' windows), row by row and blocked, against
// double sums; the pattern observer changes nothing.
TEST_F(BackendTest, AttentionSegmentsMatchReference) {
  IsaGuard guard;
  for (Isa isa : all_isas()) {
    ASSERT_TRUE(cpu::set_isa(isa));
    for (int n : {9, 70, 150}) {
      SCOPED_TRACE(std::string(cpu::isa_name(isa)) + " n " + std::to_string(n));
      const int H = 4, KV = 2, hd = 20;
      std::vector<int> seg = {0, n / 7, n / 2, n};
      const auto q = randn(size_t(n * H * hd), 81, 1.5f), k = randn(size_t(n * KV * hd), 82, 1.5f);
      const auto v = randn(size_t(n * KV * hd), 83);
      AttnParams p;
      p.n_heads = H, p.n_kv = KV, p.head_dim = hd, p.scale = 1.f / std::sqrt(float(hd)), p.n_new = n, p.past = 0;
      p.causal = false, p.segments = seg.data(), p.n_segments = 3;
      std::vector<float> pattern(size_t(H * n * n), -1.f);
      p.pattern_out = pattern.data();
      Buf qb = keep(put(q)), kb = keep(put(k)), vb = keep(put(v)), zb = keep(be->alloc(q.size()));
      be->attention(zb, qb, kb, vb, p);
      std::vector<double> rz(q.size(), 0.0), rp(pattern.size(), 0.0);
      for (int h = 0; h < H; ++h)
        for (int r = 0; r < n; ++r) {
          int b = 0;
          while (seg[size_t(b + 1)] <= r) ++b;
          const int j0 = seg[size_t(b)], j1 = seg[size_t(b + 1)], g = h / (H / KV);
          std::vector<double> sc;
          double mx = -1e300, sum = 0;
          for (int j = j0; j < j1; ++j) {
            double d = 0;
            for (int c = 0; c < hd; ++c) d += double(q[size_t((r * H + h) * hd + c)]) * k[size_t((j * KV + g) * hd + c)];
            sc.push_back(d * p.scale);
            mx = std::max(mx, sc.back());
          }
          for (auto& x : sc) sum += (x = std::exp(x - mx));
          for (int j = j0; j < j1; ++j) {
            const double pj = sc[size_t(j - j0)] / sum;
            rp[size_t((h * n + r) * n + j)] = pj;
            for (int c = 0; c < hd; ++c) rz[size_t((r * H + h) * hd + c)] += pj * v[size_t((j * KV + g) * hd + c)];
          }
        }
      EXPECT_LT(rel(get(zb), rz), 1e-5);
      EXPECT_LT(rel(pattern, rp), 1e-5);
      for (size_t i = 0; i < rp.size(); ++i)
        if (rp[i] == 0.0) ASSERT_EQ(pattern[i], 0.f) << "entry outside the segment " << i;
      p.pattern_out = nullptr;
      Buf zb2 = keep(be->alloc(q.size()));
      be->attention(zb2, qb, kb, vb, p);
      EXPECT_EQ(get(zb2), get(zb));
    }
  }
}

TEST_F(BackendTest, InterventionOps) {
  const int n = 4, groups = 3, gdim = 10;
  const auto x = randn(size_t(n * groups * gdim), 61);
  Buf yb = keep(put(x));
  be->zero_top_dim(yb, 2, groups, gdim);
  std::vector<float> want = x;
  for (int g = 0; g < groups; ++g) {
    const size_t o = size_t((2 * groups + g) * gdim);
    size_t best = o;
    for (size_t c = o; c < o + size_t(gdim); ++c)
      if (std::fabs(x[c]) > std::fabs(x[best])) best = c;
    want[best] = 0.f;
  }
  EXPECT_EQ(get(yb), want);

}

// OutRo's ops against their contracts (backend.h), computed here from method.md's formulas.
TEST_F(BackendTest, OutroOps) {
  // phi_detect: rows 1 and 4 carry massive channels; 200 values of N(0, 1) otherwise.
  const int n = 8, dim = 25;
  auto h = randn(size_t(n * dim), 71);
  h[size_t(1 * dim + 3)] = -2000.f;
  h[size_t(4 * dim + 7)] = 800.f;
  Buf rb = keep(be->alloc(size_t(n + 4)));
  std::vector<float> sorted;
  for (float v : h) sorted.push_back(std::fabs(v));
  std::sort(sorted.begin(), sorted.end());
  const float med = sorted[(sorted.size() - 1) / 2];
  for (auto [abs_thr, mul] : {std::pair{100.f, 1000.f}, std::pair{1000.f, 1.f}, std::pair{5000.f, 1.f}}) {
    be->phi_detect(rb, keep(put(h)), n, dim, abs_thr, mul);
    const auto rec = get(rb);
    const float tau = std::max(abs_thr, mul * med);
    int count = 0;
    for (int i = 0; i < n; ++i) {
      float mx = 0;
      for (int c = 0; c < dim; ++c) mx = std::max(mx, std::fabs(h[size_t(i * dim + c)]));
      EXPECT_EQ(rec[size_t(i)], mx >= tau ? 1.f : 0.f) << i;
      count += mx >= tau;
    }
    EXPECT_EQ(rec[n], tau);
    EXPECT_EQ(rec[n + 1], med);
    EXPECT_EQ(rec[n + 2], float(count));
    EXPECT_EQ(rec[n + 3], 2000.f);
    EXPECT_EQ(count, abs_thr == 100.f ? 2 : abs_thr == 1000.f ? 1 : 0);
  }
  // outro_sets: enhancement skips what is done (apply_once) and the cumulative set only grows.
  std::vector<float> rec = {1, 0, 1, 1, 0, 0, 0, 0}, done = {0, 0, 1, 0, 0, 0, 0, 0}, cum = {0, 1, 0, 0, 0, 0, 0, 0};
  Buf eb = keep(be->alloc(size_t(n))), db = keep(put(done)), cb = keep(put(cum)), recb = keep(put(rec));
  be->outro_sets(eb, db, cb, recb, n, true, true);
  EXPECT_EQ(get(eb), (std::vector<float>{1, 0, 0, 1, 0, 0, 0, 0}));
  EXPECT_EQ(get(db), (std::vector<float>{1, 0, 1, 1, 0, 0, 0, 0}));
  EXPECT_EQ(get(cb), (std::vector<float>{1, 1, 1, 1, 0, 0, 0, 0}));
  be->outro_sets(eb, db, cb, recb, n, false, true);
  EXPECT_EQ(get(eb), std::vector<float>(size_t(n), 0.f));
  // masked_mean: rows 0, 2, 3; with no flagged row, zeros and a count of 0.
  const int KV = 2, hd = 12, vdim = KV * hd, H = 6;
  const auto v = randn(size_t(n * vdim), 72);
  Buf mb = keep(be->alloc(size_t(vdim + 3)));
  be->masked_mean(mb, keep(put(v)), n, vdim, recb);
  auto mean = get(mb);
  for (int c = 0; c < vdim; ++c)
    EXPECT_NEAR(mean[size_t(c)], (v[size_t(c)] + v[size_t(2 * vdim + c)] + v[size_t(3 * vdim + c)]) / 3.0, 1e-6);
  EXPECT_EQ(mean[size_t(vdim)], 3.f);
  Buf none = keep(put(std::vector<float>(size_t(n), 0.f)));
  Buf mz = keep(be->alloc(size_t(vdim + 3)));
  be->masked_mean(mz, keep(put(v)), n, vdim, none);
  EXPECT_EQ(get(mz), std::vector<float>(size_t(vdim + 3), 0.f));
  // gate_heads against the formula; rows 1 and 3 excluded; the counter counts c > 0.
  std::vector<float> vbar(size_t(vdim + 3), 0.f);
  const auto vv = randn(size_t(vdim), 73);
  std::copy(vv.begin(), vv.end(), vbar.begin());
  vbar[size_t(vdim)] = 2.f;
  const auto z = randn(size_t(n * H * hd), 74);
  const std::vector<float> excl = {0, 1, 0, 1};
  for (bool rescale : {true, false}) {
    Buf zb = keep(put(z)), vb = keep(put(vbar)), xb = keep(put(excl));
    Buf ctr = keep(put(std::vector<float>{5.f}));
    be->gate_heads(zb, n, H, KV, hd, vb, &xb, 4, 3.f, 0.1f, rescale, ctr);
    const auto got = get(zb);
    int pos = 0;
    for (int i = 0; i < n; ++i)
      for (int hh = 0; hh < H; ++hh) {
        const float* o = &z[size_t((i * H + hh) * hd)];
        const float* t = &vv[size_t((hh / (H / KV)) * hd)];
        double oo = 0, tt = 0, ot = 0;
        for (int c = 0; c < hd; ++c) oo += double(o[c]) * o[c], tt += double(t[c]) * t[c], ot += double(o[c]) * t[c];
        const bool ex = i < 4 && excl[size_t(i)] != 0.f;
        const double cs = ot / std::sqrt(oo * tt), g = std::tanh(std::max(cs, 0.0) / 0.1);
        pos += !ex && cs > 0;
        std::vector<double> w(static_cast<size_t>(hd));
        double ww = 0;
        for (int c = 0; c < hd; ++c) {
          w[size_t(c)] = ex ? o[c] : o[c] + g * 3.0 * std::fabs(ot) / (tt + 1e-8) * t[c];
          ww += w[size_t(c)] * w[size_t(c)];
        }
        for (int c = 0; c < hd; ++c) {
          const double want = !ex && rescale ? w[size_t(c)] * std::sqrt(oo) / (std::sqrt(ww) + 1e-8) : w[size_t(c)];
          ASSERT_NEAR(got[size_t((i * H + hh) * hd + c)], want, 1e-5 * (1 + std::fabs(want))) << i << " " << hh;
        }
      }
    EXPECT_EQ(get(ctr)[0], 5.f + float(pos));
    EXPECT_GT(pos, 0);
  }
  // A sink count of 0: nothing changes.
  vbar[size_t(vdim)] = 0.f;
  Buf zb = keep(put(z)), vb = keep(put(vbar));
  be->gate_heads(zb, n, H, KV, hd, vb, nullptr, 0, 3.f, 0.1f, true, Buf{});
  EXPECT_EQ(get(zb), z);
}

}  // namespace
}  // namespace outro
