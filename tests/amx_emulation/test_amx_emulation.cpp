// The AMX kernel (src/kernels/cpu/kernels_amx.cpp) compiled against a C++ model of the tile
// instructions (amx_emulation.h) and run here, on a CPU without AMX: its block loops, tails, panels,
// x chunks and addressing against the same bounds as the real path's test in test_kernels.cpp
// (|y - bf16(x)·bf16(w)| <= 2^-12·Σ|bf16(x)·bf16(w)| per element) and bit-identical results over
// row splits. Under ASan every tile load and store touches exactly the bytes the hardware would, so
// an out-of-bounds tile read shows here. What it cannot show: the hardware's own behaviour (the
// instructions' encoding, the tile-data permission, timing); those need a CPU with AMX.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/gemm.h"

namespace outro::cpu {
const Kernels* amx_emulated_kernels();
}

namespace outro {
namespace {

std::vector<float> randn(size_t n, uint64_t seed, float sd = 1.f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.f, sd);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

TEST(AmxEmulation, KernelMatchesBf16ReferenceOnOddShapesAndSplits) {
  if (!cpu::cpu_has_avx512bf16()) GTEST_SKIP() << "the kernel packs and rounds with AVX-512 BF16, which this CPU lacks";
  const cpu::Kernels* k = cpu::amx_emulated_kernels();
  ASSERT_NE(k, nullptr);
  ASSERT_NE(k->mm, nullptr);
  const cpu::MatPath& mm = *k->mm;
  // cols: multiples of 32 (weights read in place) and not (panels); rows: full and partial 16/32 blocks;
  // n: single and double x tiles, 64-row block tails, several x chunks (cols 4097: 64-row chunks).
  const int64_t shapes[][2] = {{16, 32}, {5, 7}, {17, 33}, {33, 96}, {40, 896}, {48, 1176}, {6, 4097}};
  for (DType dt : {DType::BF16, DType::F16}) {
    for (auto [rows, cols] : shapes) {
      std::vector<float> wv = randn(size_t(rows * cols), uint64_t(rows * 31 + cols), 0.5f);
      std::vector<uint16_t> w(wv.size());
      for (size_t i = 0; i < wv.size(); ++i) {
        w[i] = dt == DType::BF16 ? f32_to_bf16(wv[i]) : f32_to_f16(wv[i]);
        wv[i] = dt == DType::BF16 ? bf16_to_f32(w[i]) : f16_to_f32(w[i]);
      }
      for (int n : {4, 16, 17, 33, 48, 80, 130, 300}) {
        SCOPED_TRACE(std::string(dtype_name(dt)) + " rows " + std::to_string(rows) + " cols " + std::to_string(cols) +
                     " n " + std::to_string(n));
        const auto x = randn(size_t(n) * size_t(cols), uint64_t(n * 7 + cols));
        std::vector<uint16_t> xp(mm.packed_size(n, cols), 0xffff);
        mm.pack(xp.data(), x.data(), n, cols, 0, n);
        std::vector<float> y(size_t(n * rows), NAN);
        mm.gemm(y.data(), xp.data(), n, w.data(), dt, rows, cols, 0, rows);
        double worst = 0;
        for (int i = 0; i < n; ++i)
          for (int64_t r = 0; r < rows; ++r) {
            double s = 0, a = 0;
            for (int64_t c = 0; c < cols; ++c) {
              const double xb = bf16_to_f32(f32_to_bf16(x[size_t(i * cols + c)]));
              const double wb = bf16_to_f32(f32_to_bf16(wv[size_t(r * cols + c)]));
              s += xb * wb, a += std::fabs(xb * wb);
            }
            worst = std::max(worst, std::fabs(double(y[size_t(i * rows + r)]) - s) / (a + 1e-30));
          }
        EXPECT_LT(worst, 1.0 / 4096);
        for (int64_t cut : {int64_t(16), int64_t(17), int64_t(32), rows / 2 + 1}) {
          if (cut >= rows) continue;
          std::vector<float> ys(y.size(), NAN);
          mm.gemm(ys.data(), xp.data(), n, w.data(), dt, rows, cols, 0, cut);
          mm.gemm(ys.data(), xp.data(), n, w.data(), dt, rows, cols, cut, rows);
          EXPECT_EQ(0, std::memcmp(ys.data(), y.data(), y.size() * 4)) << "split at " << cut;
        }
      }
    }
  }
}

TEST(AmxEmulation, PeakProbeRunsTheTileLoop) {
  const cpu::Kernels* k = cpu::amx_emulated_kernels();
  EXPECT_EQ(k->mm->peak(3), 3.0 * 4 * 16 * 16 * 32 * 2);
  EXPECT_STREQ(k->mm->name, "amx");
}

}  // namespace
}  // namespace outro
