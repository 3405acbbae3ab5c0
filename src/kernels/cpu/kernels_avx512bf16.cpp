// The AVX-512 BF16 kernel set: the AVX-512 set with products of n >= min_n rows on vdpbf16ps
// (x rounded to bf16 once per product, bf16 weights read in place, float32 accumulation). Compiled
// with target attributes only, so it runs only where the CPU reports avx512_bf16.
//
// Layout. vdpbf16ps multiplies 16 pairs of bf16 and adds each pair's sum into a float32 lane. The
// lanes run over 16 rows of x: x is packed once per product in pairs of consecutive k, 16 rows side
// by side (bf16_layout.h), so one load gives the pair p of 16 x rows, and the matching weight pair w[r][2p..2p+1] is one 32-bit broadcast straight from the
// row-major bf16 matrix: no weight repacking, at load time or per tile. A micro-tile of 6 weight
// rows x 64 x rows keeps 24 accumulators in registers over the whole k range, so there is no
// horizontal reduction and each output element is a single chain over k in order: a function of
// the shapes only, never of the thread split. The same packed x feeds the AMX path (kernels_amx.cpp).
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
#define OUTRO_INL OUTRO_TGT inline __attribute__((always_inline))
#if defined(__clang__)
#define OUTRO_UNROLL _Pragma("unroll")
#else
#define OUTRO_UNROLL _Pragma("GCC unroll 16")
#endif

namespace outro::cpu {

namespace {

inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t round32(int64_t c) { return (c + 31) / 32 * 32; }

OUTRO_INL __m512bh as_bh(__m512i v) { return (__m512bh)v; }

// 32 floats -> 32 bf16 (round to nearest even), the tail (n < 32) zero-filled.
OUTRO_INL __m512i cvt32(const float* p, int n) {
  const __mmask16 lo = n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1u);
  const __mmask16 hi = n >= 32 ? __mmask16(0xffff) : n <= 16 ? __mmask16(0) : __mmask16((1u << (n - 16)) - 1u);
  const __m512 a = _mm512_maskz_loadu_ps(lo, p), b = _mm512_maskz_loadu_ps(hi, p + 16);
  return (__m512i)_mm512_cvtne2ps_pbh(b, a);
}

using bf16x::round16;

size_t packed_size(int n, int64_t cols) { return bf16x::packed_size(n, cols); }

OUTRO_TGT void pack(uint16_t* xp, const float* x, int n, int64_t cols, int i0, int i1) {
  const int64_t kp = round32(cols);
  const int n16 = round16(n);
  // memcpy: xp is only 2-byte aligned for the type.
  alignas(64) uint32_t tmp[16];
  for (int i = i0; i < i1; ++i) {
    const float* xr = x + int64_t(i) * cols;
    uint16_t* d = xp + bf16x::row_offset(kp, i);
    const int64_t w2 = 2 * bf16x::block_width(n16, i);
    for (int64_t c = 0; c < kp; c += 32) {
      _mm512_store_si512(tmp, cvt32(xr + c, int(imin(32, cols - c))));  // c < cols
      for (int p = 0; p < 16; ++p) std::memcpy(d + (c / 2 + p) * w2, &tmp[p], 4);
    }
  }
  if (i1 == n && n < n16) {  // padding rows, all in the last block
    const int64_t w2 = 2 * bf16x::block_width(n16, n);
    uint16_t* d = xp + bf16x::row_offset(kp, n);
    for (int64_t p = 0; p < kp / 2; ++p) std::memset(d + p * w2, 0, size_t(n16 - n) * 4);
  }
}

// Rows [r, r + nr) of f16 (or odd-length bf16) weights as bf16 pairs, zero-padded to kp columns.
OUTRO_TGT void fill_panel(uint16_t* panel, const uint16_t* w, DType wt, int64_t cols, int64_t kp, int64_t r, int nr) {
  for (int j = 0; j < nr; ++j) {
    const uint16_t* src = w + (r + j) * cols;
    uint16_t* dst = panel + j * kp;
    for (int64_t c = 0; c < kp; c += 32) {
      const int m = int(imin(32, cols - c));
      if (wt == DType::BF16) {
        _mm512_storeu_si512(dst + c, _mm512_maskz_loadu_epi16(__mmask32((uint64_t(1) << m) - 1u), src + c));
        continue;
      }
      const __mmask16 lo = m >= 16 ? __mmask16(0xffff) : __mmask16((1u << m) - 1u);
      const __mmask16 hi = m >= 32 ? __mmask16(0xffff) : m <= 16 ? __mmask16(0) : __mmask16((1u << (m - 16)) - 1u);
      const __m512 a = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(lo, src + c));
      const __m512 b = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(hi, src + c + 16));
      _mm512_storeu_si512(dst + c, _mm512_maskz_mov_epi16(__mmask32((uint64_t(1) << m) - 1u),
                                                          (__m512i)_mm512_cvtne2ps_pbh(b, a)));
    }
  }
}

constexpr int NR = 6, NI = 4;  // micro-tile: 6 weight rows x 4 vectors of 16 x rows (24 accumulators)
static_assert(16 * NI == bf16x::kBlock, "a micro-tile spans one packed block");

// y[16v + l][r] for r < NRR, v < NIV, l < 16 (and 16v + l < nvalid) over npairs k pairs. w: NRR
// rows of bf16 with row stride ldw; x: the packed pairs of the first x row, ldx elements per pair.
template <int NRR, int NIV>
OUTRO_TGT void micro(const uint16_t* w, int64_t ldw, const uint16_t* x, int64_t ldx, int64_t npairs, float* y,
                     int64_t rows, int nvalid) {
  __m512 acc[NRR][NIV];
  OUTRO_UNROLL
  for (int r = 0; r < NRR; ++r)
    OUTRO_UNROLL
    for (int v = 0; v < NIV; ++v) acc[r][v] = _mm512_setzero_ps();
  for (int64_t p = 0; p < npairs; ++p) {
    __m512i xv[NIV];
    OUTRO_UNROLL
    for (int v = 0; v < NIV; ++v) xv[v] = _mm512_loadu_si512(x + p * ldx + 32 * v);
    OUTRO_UNROLL
    for (int r = 0; r < NRR; ++r) {
      const __m512i wv = _mm512_broadcastd_epi32(_mm_loadu_si32(w + r * ldw + 2 * p));
      OUTRO_UNROLL
      for (int v = 0; v < NIV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], as_bh(xv[v]), as_bh(wv));
    }
  }
  alignas(64) float t[16];
  OUTRO_UNROLL
  for (int v = 0; v < NIV; ++v) {
    const int nl = int(imin(16, nvalid - 16 * v));
    OUTRO_UNROLL
    for (int r = 0; r < NRR; ++r) {
      _mm512_store_ps(t, acc[r][v]);
      for (int l = 0; l < nl; ++l) y[int64_t(16 * v + l) * rows + r] = t[l];
    }
  }
}

using MicroFn = void (*)(const uint16_t*, int64_t, const uint16_t*, int64_t, int64_t, float*, int64_t, int);
template <int R>
struct MicroRow {
  static constexpr MicroFn fns[NI] = {micro<R, 1>, micro<R, 2>, micro<R, 3>, micro<R, 4>};
};
constexpr const MicroFn* kMicro[NR] = {MicroRow<1>::fns, MicroRow<2>::fns, MicroRow<3>::fns,
                                       MicroRow<4>::fns, MicroRow<5>::fns, MicroRow<6>::fns};

OUTRO_TGT void gemm(float* y, const uint16_t* xp, int n, const void* w, DType wt, int64_t rows, int64_t cols,
                    int64_t r0, int64_t r1) {
  if (r1 <= r0 || n <= 0) return;
  const int64_t kp = round32(cols);
  const int n16 = round16(n);
  // Odd cols: the last pair would read past a row's end, so those rows go through a panel too.
  const bool direct = wt == DType::BF16 && cols % 2 == 0;
  const int64_t npairs = direct ? cols / 2 : kp / 2;  // x's pairs past cols are zeros
  const auto* wb = static_cast<const uint16_t*>(w);
  thread_local std::vector<uint16_t> panel;
  if (!direct && panel.size() < size_t(NR * kp)) panel.resize(size_t(NR * kp));
  // x in chunks of about 384 KiB (a multiple of 64 rows), so a chunk stays in L2 while every weight
  // block of this thread's rows passes over it; within a chunk, weight rows in blocks of NR (in L1)
  // and, for each, the chunk's x in blocks of 64 rows. Blocking changes no summation order.
  const int chunk = int(std::max<int64_t>(64, (int64_t(384) << 10) / (kp * 2) / 64 * 64));
  for (int i0 = 0; i0 < n16; i0 += chunk) {
    const int i1 = int(imin(n16, int64_t(i0) + chunk));
    for (int64_t rb = r0; rb < r1; rb += NR) {
      const int nr = int(imin(NR, r1 - rb));
      const uint16_t* wr = wb + rb * cols;
      int64_t ldw = cols;
      if (!direct) {
        fill_panel(panel.data(), wb, wt, cols, kp, rb, nr);
        wr = panel.data();
        ldw = kp;
      }
      for (int ib = i0; ib < i1; ib += bf16x::kBlock) {  // one block: 64 rows, or the last one's
        const int bw = bf16x::block_width(n16, ib);
        kMicro[nr - 1][bw / 16 - 1](wr, ldw, xp + bf16x::row_offset(kp, ib), 2 * bw, npairs,
                                    y + int64_t(ib) * rows + rb, rows, n - ib);
      }
    }
  }
}

// Independent accumulator chains enough to cover vdpbf16ps latency x throughput on current cores,
// all in registers (every loop over them unrolled).
OUTRO_TGT double peak(int64_t iters) {
  __m512 a[12];
  OUTRO_UNROLL
  for (int j = 0; j < 12; ++j) a[j] = _mm512_set1_ps(float(j));
  const __m512i x = _mm512_set1_epi16(0x3f80), wv = _mm512_set1_epi16(0x3c00);  // 1.0, 2^-7
  for (int64_t it = 0; it < iters; ++it) {
    OUTRO_UNROLL
    for (int j = 0; j < 12; ++j) a[j] = _mm512_dpbf16_ps(a[j], as_bh(x), as_bh(wv));
  }
  __m512 s = a[0];
  OUTRO_UNROLL
  for (int j = 1; j < 12; ++j) s = _mm512_add_ps(s, a[j]);
  volatile float sink = _mm512_reduce_add_ps(s);
  (void)sink;
  return double(iters) * 12 * 32 * 2;
}

// min_n 9: at 8 rows the float32 kernels were faster (0.40-0.54 against 0.24-0.30 TFLOP/s, 16 threads), and
// products of up to 8 rows are float32 on the GPU too (its GEMV), so both backends round the same products.
const MatPath kPath = {"avx512bf16", 9, packed_size, pack, gemm, peak};

// The float-x entry of the set (gemm_rows, tests): packs x itself, per call.
void gemm_entry(float* y, const float* x, int n, const void* w, DType wt, int64_t rows, int64_t cols, int64_t r0,
                int64_t r1) {
  if (n >= kPath.min_n && (wt == DType::BF16 || wt == DType::F16)) {
    thread_local std::vector<uint16_t> xp;
    xp.resize(packed_size(n, cols));
    pack(xp.data(), x, n, cols, 0, n);
    gemm(y, xp.data(), n, w, wt, rows, cols, r0, r1);
  } else {
    avx512_kernels()->gemm(y, x, n, w, wt, rows, cols, r0, r1);
  }
}

}  // namespace

const Kernels* avx512bf16_kernels() {
  static const Kernels k = [] {
    Kernels s = *avx512_kernels();
    s.name = "avx512bf16";
    s.isa = Isa::Avx512Bf16;
    s.gemm = gemm_entry;
    s.mm = &kPath;
    return s;
  }();
  return avx512_kernels() ? &k : nullptr;
}

}  // namespace outro::cpu

#else
namespace outro::cpu {
const Kernels* avx512bf16_kernels() { return nullptr; }
}  // namespace outro::cpu
#endif
