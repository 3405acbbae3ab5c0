// AVX-512 (F + BW + VL, with FMA and F16C) kernel set; compiled with target attributes only, so the
// rest of the program keeps the baseline ISA and this code runs only where the CPU has AVX-512.
#include "kernels/cpu/gemm.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

// GCC 12 flags the _mm256_undefined_pd() inside its own AVX-512 extract/cast intrinsics.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#define OUTRO_TGT __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))

namespace outro::cpu {

namespace {

struct V {
  using f = __m512;
  static constexpr int W = 16;
  static constexpr int MX = 4, NJ = 4;  // GEMM micro-tile: 16 accumulators + 4 weight vectors

  static OUTRO_TGT inline __mmask16 mask(int n) { return __mmask16((1u << n) - 1u); }
  static OUTRO_TGT inline f zero() { return _mm512_setzero_ps(); }
  static OUTRO_TGT inline f set1(float a) { return _mm512_set1_ps(a); }
  static OUTRO_TGT inline f load(const float* p) { return _mm512_load_ps(p); }
  static OUTRO_TGT inline f loadu(const float* p) { return _mm512_loadu_ps(p); }
  static OUTRO_TGT inline f loadn(const float* p, int n) { return _mm512_maskz_loadu_ps(mask(n), p); }
  static OUTRO_TGT inline void store(float* p, f v) { _mm512_store_ps(p, v); }
  static OUTRO_TGT inline void storeu(float* p, f v) { _mm512_storeu_ps(p, v); }
  static OUTRO_TGT inline void storen(float* p, f v, int n) { _mm512_mask_storeu_ps(p, mask(n), v); }
  static OUTRO_TGT inline f bf16_of(__m256i h) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  static OUTRO_TGT inline f bf16(const uint16_t* p) { return bf16_of(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static OUTRO_TGT inline f bf16n(const uint16_t* p, int n) { return bf16_of(_mm256_maskz_loadu_epi16(mask(n), p)); }
  static OUTRO_TGT inline f f16(const uint16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static OUTRO_TGT inline f f16n(const uint16_t* p, int n) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask(n), p)); }
  // 2W bf16 at p: even elements (0, 2, ..) and odd elements (1, 3, ..) as floats, in order.
  static OUTRO_TGT inline void bf16_pair(const uint16_t* p, f& even, f& odd) {
    const __m512i v = _mm512_loadu_si512(p);
    even = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
    odd = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(int(0xffff0000u))));
  }
  // Elements of [a, b] at even / odd positions, in order.
  static OUTRO_TGT inline void deinterleave(f a, f b, f& even, f& odd) {
    const __m512i ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    even = _mm512_permutex2var_ps(a, ie, b);
    odd = _mm512_permutex2var_ps(a, io, b);
  }
  static OUTRO_TGT inline f fma(f a, f b, f c) { return _mm512_fmadd_ps(a, b, c); }
  static OUTRO_TGT inline f add(f a, f b) { return _mm512_add_ps(a, b); }
  static OUTRO_TGT inline f sub(f a, f b) { return _mm512_sub_ps(a, b); }
  static OUTRO_TGT inline f mul(f a, f b) { return _mm512_mul_ps(a, b); }
  static OUTRO_TGT inline f div(f a, f b) { return _mm512_div_ps(a, b); }
  static OUTRO_TGT inline void prefetch(const char* p) { _mm_prefetch(p, _MM_HINT_T0); }

  static OUTRO_TGT inline __m256 half_sum(f a) {
    return _mm256_add_ps(_mm512_castps512_ps256(a),
                         _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)));
  }
  static OUTRO_TGT inline float hsum(f a) {
    const __m256 h = half_sum(a);
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_movehdup_ps(q));
    return _mm_cvtss_f32(q);
  }
  // s[k] = Σ lanes of the k-th argument; each sum's order is fixed and independent of the others.
  static OUTRO_TGT inline void hsum4(float* s, f a, f b, f c, f d) {
    const __m256 t0 = _mm256_hadd_ps(half_sum(a), half_sum(b));
    const __m256 t1 = _mm256_hadd_ps(half_sum(c), half_sum(d));
    const __m256 t2 = _mm256_hadd_ps(t0, t1);
    _mm_storeu_ps(s, _mm_add_ps(_mm256_castps256_ps128(t2), _mm256_extractf128_ps(t2, 1)));
  }
  // exp(x) to ~2 ulp: x = k·ln2 + r (Cody-Waite), degree-7 polynomial for e^r, 2^k applied in two
  // halves so that results down to the subnormal range and overflow to inf match std::exp.
  static OUTRO_TGT inline f exp(f x) {
    x = _mm512_min_ps(_mm512_max_ps(x, set1(-104.f)), set1(89.f));
    const f k = _mm512_roundscale_ps(_mm512_mul_ps(x, set1(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    f r = _mm512_fnmadd_ps(k, set1(0.693359375f), x);
    r = _mm512_fnmadd_ps(k, set1(-2.12194440e-4f), r);
    f p = set1(1.f / 5040);
    p = fma(p, r, set1(1.f / 720));
    p = fma(p, r, set1(1.f / 120));
    p = fma(p, r, set1(1.f / 24));
    p = fma(p, r, set1(1.f / 6));
    p = fma(p, r, set1(0.5f));
    p = fma(p, r, set1(1.f));
    p = fma(p, r, set1(1.f));
    const __m512i ki = _mm512_cvtps_epi32(k);
    const __m512i k1 = _mm512_srai_epi32(ki, 1), k2 = _mm512_sub_epi32(ki, k1);
    const __m512i bias = _mm512_set1_epi32(127);
    const f s1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(k1, bias), 23));
    const f s2 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(k2, bias), 23));
    return _mm512_mul_ps(_mm512_mul_ps(p, s1), s2);
  }
};

}  // namespace

#include "kernels/cpu/simd_impl.inc"

namespace {
// Kernels::bracket with 16 keys a step: the in-bracket keys are compressed in a register and stored
// whole (a compressing store to memory is slow on some cores), so up to 16 values past those kept.
OUTRO_TGT uint32_t k_bracket(const float* x, int64_t n, uint32_t lo, uint32_t hi, uint32_t* out, int64_t* below,
                             int64_t* inside) {
  const __m512i absm = _mm512_set1_epi32(0x7fffffff), vlo = _mm512_set1_epi32(int(lo)), vhi = _mm512_set1_epi32(int(hi));
  __m512i mx = _mm512_setzero_si512();
  int64_t b = 0, c = 0, i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512i k = _mm512_and_si512(_mm512_loadu_si512(x + i), absm);
    mx = _mm512_max_epu32(mx, k);
    const __mmask16 lt = _mm512_cmplt_epu32_mask(k, vlo);
    const __mmask16 in = _mm512_mask_cmple_epu32_mask(__mmask16(~lt), k, vhi);
    _mm512_storeu_si512(out + c, _mm512_maskz_compress_epi32(in, k));
    b += __builtin_popcount(lt), c += __builtin_popcount(in);
  }
  uint32_t m = _mm512_reduce_max_epu32(mx);
  if (i < n) {
    int64_t tb = 0, tc = 0;
    m = std::max(m, bracket_scalar(x + i, n - i, lo, hi, out + c, &tb, &tc));
    b += tb, c += tc;
  }
  *below += b, *inside += c;
  return m;
}

const Kernels kAvx512 = {"avx512", Isa::Avx512, k_gemm,      k_dot,  k_axpy, k_sumsq,
                         k_scale_mul, k_swiglu, k_exp_shift, k_exp,  k_sum, k_gate, k_bracket, k_attn, k_peak, nullptr};
}

const Kernels* avx512_kernels() { return &kAvx512; }

}  // namespace outro::cpu

#else
namespace outro::cpu {
const Kernels* avx512_kernels() { return nullptr; }
}  // namespace outro::cpu
#endif
