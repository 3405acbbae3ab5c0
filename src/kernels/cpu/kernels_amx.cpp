// The AMX-BF16 kernel set: the AVX-512 set with products of n >= min_n rows on the tile unit
// (tdpbf16ps: a 16x16 float32 tile += 16x32 bf16 times 32x16 bf16). Used only where CPUID reports
// AMX-BF16 and AMX-TILE, the OS enables the tile state and Linux grants this process tile-data
// permission (cpu_amx_usable in gemm.cpp); the tile instructions are written as inline assembly, so
// nothing here runs, or is even reachable, elsewhere.
//
// Operands. The tile product wants its B operand in "pairs of k" order (row p of B holds, for each
// column, the elements 2p and 2p+1 of the reduction). Making the weights A and x B puts that burden
// on x, which is rounded to bf16 once per product anyway: x is packed in pairs of k, 16 rows side by
// side (bf16_layout.h; the AVX-512 BF16 path's pack), and a weight block of 16 rows x 32 k is read in place
// from the row-major bf16 matrix, no repacking. C = W·Xᵀ is a block of yᵀ, transposed on the store.
// Blocks the matrix cannot give in place (f16 weights, cols not a multiple of 32, the last partial
// 16 rows) are copied (and rounded) into a zero-padded panel first.
//
// Summation order: each output element is its own tdpbf16ps chain over the 32-column steps in order,
// whatever block it falls in, so results depend only on the shapes, never on the thread split.
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/bf16_layout.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#define OUTRO_TGT __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")))

#ifndef OUTRO_AMX_EMULATE
// Tile instructions as inline assembly with a memory clobber on loads and stores (GCC 12's
// _tile_loadd declares no memory read, so a panel written just before could be reordered past it).
#define T_LOAD(t, base, stride) \
  __asm__ volatile("tileloadd (%0,%1,1), %%tmm" #t ::"r"(base), "r"(long(stride)) : "memory")
#define T_STORE(t, base, stride) \
  __asm__ volatile("tilestored %%tmm" #t ", (%0,%1,1)" ::"r"(base), "r"(long(stride)) : "memory")
#define T_ZERO(t) __asm__ volatile("tilezero %%tmm" #t ::)
#define T_DP(c, a, b) __asm__ volatile("tdpbf16ps %%tmm" #b ", %%tmm" #a ", %%tmm" #c ::)
#define T_CONFIG(cfg) __asm__ volatile("ldtilecfg %0" ::"m"(cfg) : "memory")
#define T_RELEASE() __asm__ volatile("tilerelease" ::: "memory")
#else
// Test build (tests/amx_emulation): the same kernel on a C++ model of the eight 16x64-byte tiles and
// tdpbf16ps, so its loops and addressing run (under ASan too) on a CPU without AMX. Each load and
// store touches exactly the bytes the instruction would. The set is then amx_emulated_kernels().
#include "kernels/cpu/amx_emulation.h"
#define T_LOAD(t, base, stride) amx_emu::load(t, base, stride)
#define T_STORE(t, base, stride) amx_emu::store(t, base, stride)
#define T_ZERO(t) amx_emu::zero(t)
#define T_DP(c, a, b) amx_emu::dpbf16ps(c, a, b)
#define T_CONFIG(cfg) amx_emu::config(&(cfg))
#define T_RELEASE() amx_emu::release()
#define amx_kernels amx_emulated_kernels
#endif

namespace outro::cpu {

namespace {

inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t round32(int64_t c) { return (c + 31) / 32 * 32; }
inline int round16(int n) { return (n + 15) / 16 * 16; }

struct alignas(64) TileCfg {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};
static_assert(sizeof(TileCfg) == 64, "ldtilecfg reads 64 bytes");

// Tiles 0-3: C (A block a, B block b at 2a + b); 4-5: A (weights); 6-7: B (x). All 16 rows x 64 bytes.
void load_config() {
  TileCfg cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = 16;
  }
  T_CONFIG(cfg);
}
void release() { T_RELEASE(); }

// Rows [r, r + nr) of w, all columns, rounded to bf16 into a 16 x kp panel (zeros elsewhere).
OUTRO_TGT void fill_panel(uint16_t* panel, const uint16_t* w, DType wt, int64_t cols, int64_t kp, int64_t r, int nr) {
  std::memset(panel, 0, size_t(16 * kp) * 2);
  for (int j = 0; j < nr; ++j) {
    const uint16_t* src = w + (r + j) * cols;
    uint16_t* dst = panel + j * kp;
    if (wt == DType::BF16) {
      std::memcpy(dst, src, size_t(cols) * 2);
      continue;
    }
    for (int64_t c = 0; c < cols; c += 32) {
      const int m = int(imin(32, cols - c));
      const __mmask16 lo = m >= 16 ? __mmask16(0xffff) : __mmask16((1u << m) - 1u);
      const __mmask16 hi = m >= 32 ? __mmask16(0xffff) : m <= 16 ? __mmask16(0) : __mmask16((1u << (m - 16)) - 1u);
      const __m512 a = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(lo, src + c));
      const __m512 b = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(hi, src + c + 16));
      _mm512_mask_storeu_epi16(dst + c, __mmask32((uint64_t(1) << m) - 1u), (__m512i)_mm512_cvtne2ps_pbh(b, a));
    }
  }
}

// One block: NA weight tiles (16 rows each) x NB x tiles (16 rows each), all `steps` k steps.
// a[t], lda: the weight tiles' first element and row stride (bytes); b: the first x row's pair 0 in
// its packed block of bw rows.
template <int NA, int NB>
void block(const uint16_t* const* a, int64_t lda, const uint16_t* b, int bw, int64_t steps, float* c) {
  T_ZERO(0);
  if (NB > 1) T_ZERO(1);
  if (NA > 1) T_ZERO(2);
  if (NA > 1 && NB > 1) T_ZERO(3);
  const int64_t ldb = int64_t(bw) * 4;       // bytes per k pair
  const int64_t bstep = int64_t(bw) * 2 * 16;  // uint16 elements per 32-column step
  for (int64_t s = 0; s < steps; ++s) {
    T_LOAD(4, a[0] + s * 32, lda);
    if (NA > 1) T_LOAD(5, a[1] + s * 32, lda);
    T_LOAD(6, b + s * bstep, ldb);
    if (NB > 1) T_LOAD(7, b + s * bstep + 32, ldb);
    T_DP(0, 4, 6);
    if (NB > 1) T_DP(1, 4, 7);
    if (NA > 1) T_DP(2, 5, 6);
    if (NA > 1 && NB > 1) T_DP(3, 5, 7);
  }
  T_STORE(0, c, 64);
  if (NB > 1) T_STORE(1, c + 256, 64);
  if (NA > 1) T_STORE(2, c + 512, 64);
  if (NA > 1 && NB > 1) T_STORE(3, c + 768, 64);
}

OUTRO_TGT void gemm(float* y, const uint16_t* xp, int n, const void* w, DType wt, int64_t rows, int64_t cols,
                    int64_t r0, int64_t r1) {
  if (r1 <= r0 || n <= 0) return;
  const int64_t kp = round32(cols), steps = kp / 32;
  const int n16 = round16(n);
  const auto* wb = static_cast<const uint16_t*>(w);
  thread_local std::vector<uint16_t> panel;
  alignas(64) float c[4 * 256];
  load_config();  // tile configuration is per thread
  // x in chunks of about 512 KiB (a multiple of 32 rows) that stay in L2 while every weight block of
  // this thread's rows passes over them; blocking changes no summation order.
  const int chunk = int(std::max<int64_t>(64, (int64_t(512) << 10) / (kp * 2) / 64 * 64));  // whole blocks
  for (int i0 = 0; i0 < n16; i0 += chunk) {
    const int i1 = int(imin(n16, int64_t(i0) + chunk));
    for (int64_t rb = r0; rb < r1; rb += 32) {
      const int na = r1 - rb > 16 ? 2 : 1;
      const uint16_t* a[2] = {nullptr, nullptr};
      int nra[2] = {0, 0};
      int64_t lda = cols * 2;
      bool direct = wt == DType::BF16 && cols % 32 == 0;
      for (int t = 0; t < na; ++t) {
        nra[t] = int(imin(16, r1 - (rb + 16 * t)));
        direct = direct && nra[t] == 16;
      }
      if (direct) {
        for (int t = 0; t < na; ++t) a[t] = wb + (rb + 16 * t) * cols;
      } else {
        if (panel.size() < size_t(32 * kp)) panel.resize(size_t(32 * kp));
        for (int t = 0; t < na; ++t) {
          fill_panel(panel.data() + t * 16 * kp, wb, wt, cols, kp, rb + 16 * t, nra[t]);
          a[t] = panel.data() + t * 16 * kp;
        }
        lda = kp * 2;
      }
      for (int ib = i0; ib < i1; ib += 32) {  // 32-row steps never straddle a packed block
        const int bw = bf16x::block_width(n16, ib);
        const int nb = bw - ib % bf16x::kBlock > 16 ? 2 : 1;
        const uint16_t* b = xp + bf16x::row_offset(kp, ib);
        if (na == 2 && nb == 2) block<2, 2>(a, lda, b, bw, steps, c);
        else if (na == 2) block<2, 1>(a, lda, b, bw, steps, c);
        else if (nb == 2) block<1, 2>(a, lda, b, bw, steps, c);
        else block<1, 1>(a, lda, b, bw, steps, c);
        for (int ta = 0; ta < na; ++ta)
          for (int tb = 0; tb < nb; ++tb) {
            const float* ct = c + (2 * ta + tb) * 256;  // ct[r][i]: output row rb + 16ta + r, x row ib + 16tb + i
            const int ni = int(imin(16, n - (ib + 16 * tb)));
            for (int i = 0; i < ni; ++i) {
              float* yr = y + int64_t(ib + 16 * tb + i) * rows + rb + 16 * ta;
              for (int r = 0; r < nra[ta]; ++r) yr[r] = ct[r * 16 + i];
            }
          }
      }
    }
  }
  release();
}

double peak(int64_t iters) {
  alignas(64) static const uint16_t zeros[16 * 32] = {};
  load_config();
  T_ZERO(0);
  T_ZERO(1);
  T_ZERO(2);
  T_ZERO(3);
  T_LOAD(4, zeros, 64);
  T_LOAD(5, zeros, 64);
  T_LOAD(6, zeros, 64);
  T_LOAD(7, zeros, 64);
  for (int64_t it = 0; it < iters; ++it) {
    T_DP(0, 4, 6);
    T_DP(1, 4, 7);
    T_DP(2, 5, 6);
    T_DP(3, 5, 7);
  }
  release();
  return double(iters) * 4 * 16 * 16 * 32 * 2;
}

// x is packed as for the AVX-512 BF16 path (the same pairs layout). From 4 rows up, as that path: a
// tile pads n to 16 rows, but at these sizes the product is bound by reading the weights once.
const MatPath& path() {
  // min_n 9: at 8 rows the tiles ran at 0.05-0.51 TFLOP/s against AVX-512 float32's 0.40-0.54 (H200 host).
  static const MatPath p = {"amx", 9, avx512bf16_kernels()->mm->packed_size, avx512bf16_kernels()->mm->pack, gemm, peak};
  return p;
}

void gemm_entry(float* y, const float* x, int n, const void* w, DType wt, int64_t rows, int64_t cols, int64_t r0,
                int64_t r1) {
  const MatPath& mm = path();
  if (n >= mm.min_n && (wt == DType::BF16 || wt == DType::F16)) {
    thread_local std::vector<uint16_t> xp;
    xp.resize(mm.packed_size(n, cols));
    mm.pack(xp.data(), x, n, cols, 0, n);
    gemm(y, xp.data(), n, w, wt, rows, cols, r0, r1);
  } else {
    avx512_kernels()->gemm(y, x, n, w, wt, rows, cols, r0, r1);
  }
}

}  // namespace

const Kernels* amx_kernels() {
  static const Kernels k = [] {
    Kernels s = *avx512_kernels();
    s.name = "amx";
    s.isa = Isa::Amx;
    s.gemm = gemm_entry;
    s.mm = &path();
    return s;
  }();
  return &k;
}

}  // namespace outro::cpu

#else
namespace outro::cpu {
const Kernels* amx_kernels() { return nullptr; }
}  // namespace outro::cpu
#endif
