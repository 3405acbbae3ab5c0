// The AVX-512 BF16 kernel set: the AVX-512 set with products of n >= min_n rows on vdpbf16ps
// (x rounded to bf16 once per product, bf16 weights read in place, float32 accumulation). Compiled
// with target attributes only, so it runs only where the CPU reports avx512_bf16.
//
// Layout. vdpbf16ps multiplies 16 pairs of bf16 and adds each pair's sum into a float32 lane, so a
// dot product over k consumes 32 consecutive k per instruction. x is packed row-major with its rows
// padded to a multiple of 32 columns (zeros), and a weight row in its natural row-major order is
// already that layout: no weight repacking, at load time or per tile. Each output element is one
// accumulator per (x row, weight row) over a column tile, reduced horizontally in a fixed order and
// added into y in tile order; tile bounds depend only on `cols`, so the thread split of the rows
// never changes a result.
#include "kernels/cpu/gemm.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

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

size_t packed_size(int n, int64_t cols) { return size_t(n) * size_t(round32(cols)); }

OUTRO_TGT void pack(uint16_t* xp, const float* x, int n, int64_t cols, int i0, int i1) {
  const int64_t kp = round32(cols);
  for (int i = i0; i < i1; ++i) {
    const float* xr = x + int64_t(i) * cols;
    uint16_t* d = xp + int64_t(i) * kp;
    for (int64_t c = 0; c < kp; c += 32) _mm512_storeu_si512(d + c, cvt32(xr + c, int(imin(32, cols - c))));  // c < cols
  }
}

// s[k] = Σ lanes of the k-th argument, each in a fixed order independent of the others.
OUTRO_INL __m256 half_sum(__m512 a) {
  return _mm256_add_ps(_mm512_castps512_ps256(a), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)));
}
OUTRO_INL void hsum4(float* s, __m512 a, __m512 b, __m512 c, __m512 d) {
  const __m256 t0 = _mm256_hadd_ps(half_sum(a), half_sum(b));
  const __m256 t1 = _mm256_hadd_ps(half_sum(c), half_sum(d));
  const __m256 t2 = _mm256_hadd_ps(t0, t1);
  _mm_storeu_ps(s, _mm_add_ps(_mm256_castps256_ps128(t2), _mm256_extractf128_ps(t2, 1)));
}

// out[i][j] = Σ_c x[i][c]·w[j][c] over c < kc (x padded with zeros to a multiple of 32, w not).
template <int MX, int NJ>
OUTRO_TGT void micro(const uint16_t* x, int64_t ldx, const uint16_t* w, int64_t ldw, int64_t kc, float* out) {
  __m512 acc[MX][NJ];
  OUTRO_UNROLL
  for (int i = 0; i < MX; ++i)
    OUTRO_UNROLL
    for (int j = 0; j < NJ; ++j) acc[i][j] = _mm512_setzero_ps();
  int64_t c = 0;
  for (; c + 32 <= kc; c += 32) {
    __m512i wv[NJ];
    OUTRO_UNROLL
    for (int j = 0; j < NJ; ++j) wv[j] = _mm512_loadu_si512(w + j * ldw + c);
    OUTRO_UNROLL
    for (int i = 0; i < MX; ++i) {
      const __m512i xv = _mm512_loadu_si512(x + i * ldx + c);
      OUTRO_UNROLL
      for (int j = 0; j < NJ; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], as_bh(xv), as_bh(wv[j]));
    }
  }
  if (c < kc) {  // the weights' last partial chunk: masked, so no read past the row's end
    const __mmask32 m = __mmask32((uint64_t(1) << (kc - c)) - 1u);
    __m512i wv[NJ];
    OUTRO_UNROLL
    for (int j = 0; j < NJ; ++j) wv[j] = _mm512_maskz_loadu_epi16(m, w + j * ldw + c);
    OUTRO_UNROLL
    for (int i = 0; i < MX; ++i) {
      const __m512i xv = _mm512_loadu_si512(x + i * ldx + c);
      OUTRO_UNROLL
      for (int j = 0; j < NJ; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], as_bh(xv), as_bh(wv[j]));
    }
  }
  OUTRO_UNROLL
  for (int i = 0; i < MX; ++i) {
    float s[4];
    __m512 t[4];
    OUTRO_UNROLL
    for (int j = 0; j < 4; ++j) t[j] = j < NJ ? acc[i][j] : _mm512_setzero_ps();
    hsum4(s, t[0], t[1], t[2], t[3]);
    OUTRO_UNROLL
    for (int j = 0; j < NJ; ++j) out[i * NJ + j] = s[j];
  }
}

using MicroFn = void (*)(const uint16_t*, int64_t, const uint16_t*, int64_t, int64_t, float*);
constexpr int MX = 4, NJ = 4;  // 16 accumulators + 4 weight vectors + 1 x vector of the 32 registers
template <int M>
struct MicroRow {
  static constexpr MicroFn fns[4] = {micro<M, 1>, micro<M, 2>, micro<M, 3>, micro<M, 4>};
};
constexpr const MicroFn* kMicro[4] = {MicroRow<1>::fns, MicroRow<2>::fns, MicroRow<3>::fns, MicroRow<4>::fns};

constexpr int kRowBlock = 16;      // weight rows per block (the backend's split unit)
constexpr int64_t kMaxTile = 1024;  // columns per tile (at most): 16 rows of bf16 = 32 KiB

// f16 weights: a row rounded to bf16 into a tile buffer (the unit takes bf16 only).
OUTRO_TGT void f16_row_to_bf16(uint16_t* dst, const uint16_t* src, int64_t kc) {
  for (int64_t c = 0; c < kc; c += 32) {
    const int m = int(imin(32, kc - c));
    const __mmask16 lo = m >= 16 ? __mmask16(0xffff) : __mmask16((1u << m) - 1u);
    const __mmask16 hi = m >= 32 ? __mmask16(0xffff) : m <= 16 ? __mmask16(0) : __mmask16((1u << (m - 16)) - 1u);
    const __m512 a = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(lo, src + c));
    const __m512 b = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(hi, src + c + 16));
    _mm512_mask_storeu_epi16(dst + c, __mmask32((uint64_t(1) << m) - 1u), (__m512i)_mm512_cvtne2ps_pbh(b, a));
  }
}

OUTRO_TGT void gemm(float* y, const uint16_t* xp, int n, const void* w, DType wt, int64_t rows, int64_t cols,
                    int64_t r0, int64_t r1) {
  if (r1 <= r0 || n <= 0) return;
  const int64_t kp = round32(cols);
  const int64_t ntiles = (cols + kMaxTile - 1) / kMaxTile;
  const int64_t kt = round32((cols + ntiles - 1) / ntiles);  // tile width: a function of cols only
  const auto* wb = static_cast<const uint16_t*>(w);
  thread_local std::vector<uint16_t> conv;
  if (wt != DType::BF16) conv.resize(size_t(kRowBlock) * size_t(kt));
  for (int64_t rb = r0; rb < r1; rb += kRowBlock) {
    const int nr = int(imin(kRowBlock, r1 - rb));
    for (int64_t c0 = 0; c0 < cols; c0 += kt) {
      const int64_t kc = imin(kt, cols - c0);
      const uint16_t* wt0 = wb + rb * cols + c0;
      int64_t ldw = cols;
      if (wt != DType::BF16) {
        for (int j = 0; j < nr; ++j) f16_row_to_bf16(conv.data() + j * kt, wb + (rb + j) * cols + c0, kc);
        wt0 = conv.data();
        ldw = kt;
      }
      for (int i = 0; i < n; i += MX) {
        const int mx = int(imin(MX, n - i));
        for (int j = 0; j < nr; j += NJ) {
          const int nj = int(imin(NJ, nr - j));
          float out[MX * NJ];
          kMicro[mx - 1][nj - 1](xp + int64_t(i) * kp + c0, kp, wt0 + j * ldw, ldw, kc, out);
          for (int ii = 0; ii < mx; ++ii) {
            float* yr = y + int64_t(i + ii) * rows + rb + j;
            for (int jj = 0; jj < nj; ++jj) yr[jj] = c0 == 0 ? out[ii * nj + jj] : yr[jj] + out[ii * nj + jj];
          }
        }
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

const MatPath kPath = {"avx512bf16", 4, packed_size, pack, gemm, peak};

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
