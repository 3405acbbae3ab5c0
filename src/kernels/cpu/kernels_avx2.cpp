// AVX2 + FMA + F16C kernel set; compiled with target attributes only, so the rest of the program
// keeps the baseline ISA and this code runs only where the CPU has these extensions.
#include "kernels/cpu/gemm.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#include <cmath>
#include <vector>

#define OUTRO_TGT __attribute__((target("avx2,fma,f16c")))

namespace outro::cpu {

namespace {

alignas(32) const int32_t kMaskTable[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

struct V {
  using f = __m256;
  static constexpr int W = 8;
  static constexpr int MX = 4, NJ = 2;  // GEMM micro-tile: 8 accumulators of the 16 registers

  static OUTRO_TGT inline __m256i mask(int n) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kMaskTable + 8 - n));
  }
  static OUTRO_TGT inline f zero() { return _mm256_setzero_ps(); }
  static OUTRO_TGT inline f set1(float a) { return _mm256_set1_ps(a); }
  static OUTRO_TGT inline f load(const float* p) { return _mm256_load_ps(p); }
  static OUTRO_TGT inline f loadu(const float* p) { return _mm256_loadu_ps(p); }
  static OUTRO_TGT inline f loadn(const float* p, int n) { return _mm256_maskload_ps(p, mask(n)); }
  static OUTRO_TGT inline void store(float* p, f v) { _mm256_store_ps(p, v); }
  static OUTRO_TGT inline void storeu(float* p, f v) { _mm256_storeu_ps(p, v); }
  static OUTRO_TGT inline void storen(float* p, f v, int n) { _mm256_maskstore_ps(p, mask(n), v); }
  static OUTRO_TGT inline __m128i load16n(const uint16_t* p, int n) {
    alignas(16) uint16_t t[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int i = 0; i < n; ++i) t[i] = p[i];
    return _mm_load_si128(reinterpret_cast<const __m128i*>(t));
  }
  static OUTRO_TGT inline f bf16_of(__m128i h) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  static OUTRO_TGT inline f bf16(const uint16_t* p) { return bf16_of(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static OUTRO_TGT inline f bf16n(const uint16_t* p, int n) { return bf16_of(load16n(p, n)); }
  static OUTRO_TGT inline f f16(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static OUTRO_TGT inline f f16n(const uint16_t* p, int n) { return _mm256_cvtph_ps(load16n(p, n)); }
  // 2W bf16 at p: even elements (0, 2, ..) and odd elements (1, 3, ..) as floats, in order.
  static OUTRO_TGT inline void bf16_pair(const uint16_t* p, f& even, f& odd) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    even = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
    odd = _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32(int(0xffff0000u))));
  }
  // Elements of [a, b] at even / odd positions, in order.
  static OUTRO_TGT inline void deinterleave(f a, f b, f& even, f& odd) {
    // shuffle gives [a0 a2 b0 b2 | a4 a6 b4 b6]; the 64-bit permute puts the pairs in order
    even = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, 0x88)), 0xd8));
    odd = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, 0xdd)), 0xd8));
  }
  static OUTRO_TGT inline f fma(f a, f b, f c) { return _mm256_fmadd_ps(a, b, c); }
  static OUTRO_TGT inline f add(f a, f b) { return _mm256_add_ps(a, b); }
  static OUTRO_TGT inline f sub(f a, f b) { return _mm256_sub_ps(a, b); }
  static OUTRO_TGT inline f mul(f a, f b) { return _mm256_mul_ps(a, b); }
  static OUTRO_TGT inline f div(f a, f b) { return _mm256_div_ps(a, b); }
  static OUTRO_TGT inline void prefetch(const char* p) { _mm_prefetch(p, _MM_HINT_T0); }

  static OUTRO_TGT inline float hsum(f a) {
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_movehdup_ps(q));
    return _mm_cvtss_f32(q);
  }
  // s[k] = Σ lanes of the k-th argument; each sum's order is fixed and independent of the others.
  static OUTRO_TGT inline void hsum4(float* s, f a, f b, f c, f d) {
    const __m256 t0 = _mm256_hadd_ps(a, b);
    const __m256 t1 = _mm256_hadd_ps(c, d);
    const __m256 t2 = _mm256_hadd_ps(t0, t1);
    _mm_storeu_ps(s, _mm_add_ps(_mm256_castps256_ps128(t2), _mm256_extractf128_ps(t2, 1)));
  }
  // exp(x) to ~2 ulp; see kernels_avx512.cpp.
  static OUTRO_TGT inline f exp(f x) {
    x = _mm256_min_ps(_mm256_max_ps(x, set1(-104.f)), set1(89.f));
    const f k = _mm256_round_ps(_mm256_mul_ps(x, set1(1.44269504088896341f)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    f r = _mm256_fnmadd_ps(k, set1(0.693359375f), x);
    r = _mm256_fnmadd_ps(k, set1(-2.12194440e-4f), r);
    f p = set1(1.f / 5040);
    p = fma(p, r, set1(1.f / 720));
    p = fma(p, r, set1(1.f / 120));
    p = fma(p, r, set1(1.f / 24));
    p = fma(p, r, set1(1.f / 6));
    p = fma(p, r, set1(0.5f));
    p = fma(p, r, set1(1.f));
    p = fma(p, r, set1(1.f));
    const __m256i ki = _mm256_cvtps_epi32(k);
    const __m256i k1 = _mm256_srai_epi32(ki, 1), k2 = _mm256_sub_epi32(ki, k1);
    const __m256i bias = _mm256_set1_epi32(127);
    const f s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k1, bias), 23));
    const f s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k2, bias), 23));
    return _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
  }
};

}  // namespace

#include "kernels/cpu/simd_impl.inc"

namespace {
const Kernels kAvx2 = {"avx2",      Isa::Avx2, k_gemm,      k_dot, k_axpy, k_sumsq,
                       k_scale_mul, k_swiglu,  k_exp_shift, k_exp, k_sum, k_gate, bracket_scalar, k_attn, k_peak, nullptr};
}

const Kernels* avx2_kernels() { return &kAvx2; }

}  // namespace outro::cpu

#else
namespace outro::cpu {
const Kernels* avx2_kernels() { return nullptr; }
}  // namespace outro::cpu
#endif
