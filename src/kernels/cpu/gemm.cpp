// Run-time ISA dispatch and the portable kernels (the reference every SIMD set is tested against).
#include "kernels/cpu/gemm.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <string>
#include <vector>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace outro::cpu {

namespace {

inline float load_w(const void* w, DType t, size_t i) {
  switch (t) {
    case DType::F32: return static_cast<const float*>(w)[i];
    case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(w)[i]);
    default: return f16_to_f32(static_cast<const uint16_t*>(w)[i]);
  }
}

void gemm_portable(float* y, const float* x, int n, const void* w, DType wt, int64_t rows, int64_t cols,
                   int64_t r0, int64_t r1) {
  float buf[1024];
  for (int64_t r = r0; r < r1; ++r) {
    const size_t base = size_t(r) * size_t(cols);
    for (int i = 0; i < n; ++i) y[size_t(i) * rows + r] = 0.f;
    for (int64_t c0 = 0; c0 < cols; c0 += 1024) {
      int64_t cn = cols - c0 < 1024 ? cols - c0 : 1024;
      if (wt == DType::F32) {
        std::memcpy(buf, static_cast<const float*>(w) + base + c0, size_t(cn) * 4);
      } else {
        for (int64_t c = 0; c < cn; ++c) buf[c] = load_w(w, wt, base + size_t(c0 + c));
      }
      for (int i = 0; i < n; ++i) {
        const float* xr = x + size_t(i) * cols + c0;
        float acc = 0.f;
        for (int64_t c = 0; c < cn; ++c) acc += buf[c] * xr[c];
        y[size_t(i) * rows + r] += acc;
      }
    }
  }
}

float dot_portable(const float* a, const float* b, int64_t n) {
  float acc = 0.f;
  for (int64_t i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

void axpy_portable(float* y, float a, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

double sumsq_portable(const float* x, int64_t n) {
  double ss = 0;
  for (int64_t i = 0; i < n; ++i) ss += double(x[i]) * x[i];
  return ss;
}

void scale_mul_portable(float* y, const float* x, const float* g, float s, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = g[i] * (x[i] * s);
}

void swiglu_portable(float* out, const float* gate, const float* up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = g / (1.f + std::exp(-g)) * up[i];
  }
}

float exp_shift_portable(float* s, int64_t n, float m) {
  float sum = 0.f;
  for (int64_t i = 0; i < n; ++i) {
    s[i] = std::exp(s[i] - m);
    sum += s[i];
  }
  return sum;
}

void exp_portable(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = std::exp(x[i]);
}

double sum_portable(const float* x, int64_t n) {
  float a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) a[k] += x[i + k];
  double s = 0;
  for (; i < n; ++i) s += x[i];
  for (float v : a) s += v;
  return s;
}

}  // namespace

uint32_t bracket_scalar(const float* x, int64_t n, uint32_t lo, uint32_t hi, uint32_t* out, int64_t* below,
                        int64_t* inside) {
  uint32_t m = 0;
  int64_t b = 0, c = 0;
  const uint32_t width = hi - lo;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t key;
    std::memcpy(&key, x + i, 4);
    key &= 0x7fffffffu;
    m = std::max(m, key);
    b += key < lo;
    out[c] = key;  // kept only when inside: c <= i, so never past out + n
    c += key - lo <= width;
  }
  *below += b, *inside += c;
  return m;
}

namespace {

float gate_portable(float* o, const float* v, int64_t n, float vv, float nv, float gamma, float temp, bool rescale) {
  float oo = 0.f, ov = 0.f;
  for (int64_t i = 0; i < n; ++i) oo += o[i] * o[i], ov += o[i] * v[i];
  const float no = std::sqrt(oo);
  const float cs = ov / (std::max(no, 1e-12f) * std::max(nv, 1e-12f));
  const float k = cs > 0.f ? std::tanh(cs / temp) * gamma * std::fabs(ov) / (vv + 1e-8f) : 0.f;
  float qq = oo;
  if (k != 0.f) {
    qq = 0.f;
    for (int64_t i = 0; i < n; ++i) o[i] += k * v[i], qq += o[i] * o[i];
  }
  if (rescale) {
    const float sc = no / (std::sqrt(qq) + 1e-8f);
    for (int64_t i = 0; i < n; ++i) o[i] *= sc;
  }
  return cs;
}

// Kernels::attn, one row at a time, with the same blocks of 64 keys and online softmax.
void attn_portable(const AttnRows& a) {
  constexpr int BK = 64;
  const int hd = a.hd;
  std::vector<float> o(static_cast<size_t>(hd));
  float s[BK];
  for (int i = 0; i < a.rows; ++i) {
    const float* q = a.q + int64_t(i) * a.q_stride;
    std::fill(o.begin(), o.end(), 0.f);
    float m = -INFINITY, l = 0.f;
    for (int j0 = a.k0[i]; j0 < a.k1[i]; j0 += BK) {
      const int nj = std::min(BK, a.k1[i] - j0);
      float bm = -INFINITY;
      for (int j = 0; j < nj; ++j) {
        float d = 0.f;
        for (int c = 0; c < hd; ++c) d += q[c] * a.kt[int64_t(c) * a.kt_stride + j0 + j];
        s[j] = d * a.scale;
        bm = std::max(bm, s[j]);
      }
      if (a.pattern)
        for (int j = 0; j < nj; ++j) a.pattern[int64_t(i) * a.p_stride + j0 + j] = s[j];
      const float mn = std::max(m, bm), alpha = m == -INFINITY ? 0.f : std::exp(m - mn);
      m = mn;
      float ps = 0.f;
      for (int j = 0; j < nj; ++j) ps += (s[j] = std::exp(s[j] - mn));
      l = l * alpha + ps;
      for (int c = 0; c < hd; ++c) o[size_t(c)] *= alpha;
      for (int j = 0; j < nj; ++j) {
        const float* vr = a.v + int64_t(j0 + j) * a.v_stride;
        for (int c = 0; c < hd; ++c) o[size_t(c)] += s[j] * vr[c];
      }
    }
    float* z = a.z + int64_t(i) * a.z_stride;
    const float inv = l > 0.f ? 1.f / l : 0.f;
    for (int c = 0; c < hd; ++c) z[c] = o[size_t(c)] * inv;
    if (a.pattern) {
      float* pr = a.pattern + int64_t(i) * a.p_stride;
      for (int j = 0; j < a.p_len; ++j) pr[j] = j >= a.k0[i] && j < a.k1[i] ? std::exp(pr[j] - m) * inv : 0.f;
    }
  }
}

const Kernels kPortable = {"portable",         Isa::Portable,      gemm_portable,      dot_portable,
                           axpy_portable,      sumsq_portable,     scale_mul_portable, swiglu_portable,
                           exp_shift_portable, exp_portable,       sum_portable,       gate_portable,
                           bracket_scalar,     attn_portable,      nullptr,            nullptr};

bool cpu_has_avx2() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  // F16C is read from CPUID leaf 1 (ECX bit 29): clang 14's __builtin_cpu_supports has no "f16c".
  unsigned a = 0, b = 0, c = 0, d = 0;
  const bool f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29));
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
#else
  return false;
#endif
}

bool cpu_has_amx_bits();  // below, with the AMX probe

constexpr Isa kBestFirst[] = {Isa::Amx, Isa::Avx512Bf16, Isa::Avx512, Isa::Avx2, Isa::Portable};

const Kernels* choose() {
  const char* env = std::getenv("OUTRO_ISA");
  if (env && *env) {
    bool known = false;
    for (Isa i : kBestFirst) {
      if (std::strcmp(env, isa_name(i))) continue;
      known = true;
      if (const Kernels* k = kernels_for(i)) return k;
      const char* why = "";
      if (i == Isa::Amx) cpu_amx_usable(&why);
      std::fprintf(stderr, "outro: OUTRO_ISA=%s is not supported by this CPU%s%s; choosing automatically\n", env,
                   *why ? ": " : "", why);
    }
    if (!known)
      std::fprintf(stderr,
                   "outro: OUTRO_ISA=%s is not one of portable, avx2, avx512, avx512bf16, amx; choosing automatically\n",
                   env);
  }
  // A CPU with tiles whose kernel refuses them: said once here (and by isa_note(), e.g. in `info`).
  if (!cpu_amx_usable(nullptr) && cpu_has_amx_bits())
    std::fprintf(stderr, "outro: %s; using the next CPU path\n", isa_note());
  for (Isa i : kBestFirst)
    if (const Kernels* k = kernels_for(i)) return k;
  return &kPortable;
}

std::atomic<const Kernels*> g_active{nullptr};

}  // namespace

bool cpu_has_avx512() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl");
#else
  return false;
#endif
}

bool cpu_has_avx512bf16() {
#if defined(__x86_64__) || defined(__i386__)
  // CPUID leaf 7 sub-leaf 1, EAX bit 5 (read directly: older compilers' __builtin_cpu_supports lack it).
  unsigned a = 0, b = 0, c = 0, d = 0;
  return cpu_has_avx512() && __get_cpuid_count(7, 1, &a, &b, &c, &d) && (a & (1u << 5));
#else
  return false;
#endif
}

namespace {
// CPUID leaf 7 sub-leaf 0, EDX: bit 22 AMX-BF16, bit 24 AMX-TILE.
bool cpu_has_amx_bits() {
#if defined(__x86_64__)
  unsigned a = 0, b = 0, c = 0, d = 0;
  return __get_cpuid_count(7, 0, &a, &b, &c, &d) && (d & (1u << 22)) && (d & (1u << 24));
#else
  return false;
#endif
}

struct AmxState {
  bool ok = false;
  std::string why;
};

AmxState probe_amx() {
  AmxState s;
#if defined(__x86_64__)
  if (!cpu_has_amx_bits()) {
    s.why = "this CPU has no AMX-BF16 tiles";
    return s;
  }
  if (!cpu_has_avx512bf16()) {  // the path packs x with AVX-512 BF16 conversions
    s.why = "this CPU has AMX but not AVX-512 BF16";
    return s;
  }
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) {
    s.why = "the OS does not enable XSAVE (OSXSAVE is clear)";
    return s;
  }
  unsigned lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  if ((lo & (3u << 17)) != (3u << 17)) {
    s.why = "the OS does not enable the tile state (XCR0 bits 17-18 clear)";
    return s;
  }
#if defined(__linux__)
  // Linux 5.16+ keeps tile data off until a process asks (ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA);
  // without the permission the first tile instruction raises SIGILL.
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) != 0) {
    s.why = std::string("Linux refused tile-data permission (arch_prctl ARCH_REQ_XCOMP_PERM: ") + std::strerror(errno) + ")";
    return s;
  }
#endif
  s.ok = true;
#else
  s.why = "not an x86-64 CPU";
#endif
  return s;
}
}  // namespace

bool cpu_amx_usable(const char** why) {
  static const AmxState s = probe_amx();  // the permission is asked once per process
  if (why) *why = s.why.c_str();
  return s.ok;
}

bool isa_supported(Isa isa) {
  switch (isa) {
    case Isa::Portable: return true;
    case Isa::Avx2: return avx2_kernels() && cpu_has_avx2();
    case Isa::Avx512: return avx512_kernels() && cpu_has_avx512();
    case Isa::Avx512Bf16: return avx512bf16_kernels() && cpu_has_avx512bf16();
    case Isa::Amx: return amx_kernels() && cpu_amx_usable(nullptr);
  }
  return false;
}

const Kernels* kernels_for(Isa isa) {
  if (!isa_supported(isa)) return nullptr;
  switch (isa) {
    case Isa::Portable: return &kPortable;
    case Isa::Avx2: return avx2_kernels();
    case Isa::Avx512: return avx512_kernels();
    case Isa::Avx512Bf16: return avx512bf16_kernels();
    case Isa::Amx: return amx_kernels();
  }
  return nullptr;
}

const Kernels& kernels() {
  const Kernels* k = g_active.load(std::memory_order_acquire);
  if (!k) {
    static const Kernels* chosen = choose();  // thread-safe once
    const Kernels* expected = nullptr;
    g_active.compare_exchange_strong(expected, chosen, std::memory_order_acq_rel);
    k = g_active.load(std::memory_order_acquire);
  }
  return *k;
}

bool set_isa(Isa isa) {
  const Kernels* k = kernels_for(isa);
  if (!k) return false;
  g_active.store(k, std::memory_order_release);
  return true;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Portable: return "portable";
    case Isa::Avx2: return "avx2";
    case Isa::Avx512: return "avx512";
    case Isa::Avx512Bf16: return "avx512bf16";
    case Isa::Amx: return "amx";
  }
  return "?";
}

Isa best_f32_isa() {
  for (Isa i : {Isa::Avx512, Isa::Avx2})
    if (isa_supported(i)) return i;
  return Isa::Portable;
}

const char* isa_note() {
  static const std::string note = [] {
    const char* why = "";
    return cpu_amx_usable(&why) ? std::string() : std::string("AMX not used: ") + why;
  }();
  return note.c_str();
}

void gemm_rows(float* y, const float* x, int n, const void* w, DType wt, int64_t rows, int64_t cols,
               int64_t r0, int64_t r1) {
  kernels().gemm(y, x, n, w, wt, rows, cols, r0, r1);
}

const char* gemm_isa() { return kernels().name; }

}  // namespace outro::cpu
