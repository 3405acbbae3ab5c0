// CPU kernels: y[n, rows] = x[n, cols] · wᵀ with w in f32/f16/bf16 and float32 x, y, plus the
// vector primitives of the other hot ops (attention dot products, softmax exp, rmsnorm, swiglu).
// The ISA (AMX-BF16, AVX-512 + BF16, AVX-512, AVX2+FMA+F16C, portable) is chosen once at run time
// from what the CPU (and, for AMX, the kernel's tile-data permission) allows; OUTRO_ISA=portable|
// avx2|avx512|avx512bf16|amx forces one (a request the CPU cannot run falls back, with a note on
// stderr). The two bf16 sets are the AVX-512 set plus a matrix path (MatPath): products with
// n >= min_n rows and bf16/f16 weights round x to bf16 once, multiply on the bf16 units (vdpbf16ps
// or AMX tiles) and accumulate in float32, as the CUDA backend does; float32 weights and decode-sized
// products keep the float32 kernels. Every kernel sums each output element in an order that depends
// only on the shapes, never on how callers split rows across threads, so results are identical for
// any thread count.
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/dtype.h"

namespace outro::cpu {

// Computes rows [r0, r1) of the output for all n input rows. Single-threaded; callers split rows.
void gemm_rows(float* y, const float* x, int n, const void* w, DType wt, int64_t rows, int64_t cols,
               int64_t r0, int64_t r1);

// Name of the kernel set in use ("amx", "avx512bf16", "avx512", "avx2", "portable").
const char* gemm_isa();

enum class Isa { Portable, Avx2, Avx512, Avx512Bf16, Amx };

// A bf16 matrix path. x is packed (rounded to bf16, zero-padded, laid out for the unit) once per
// product; gemm then computes output rows [r0, r1) from the packed x, single-threaded.
struct MatPath {
  const char* name;  // "avx512bf16", "amx"
  int min_n;         // smallest n it is used for: below it the float32 kernels are as fast or faster
  size_t (*packed_size)(int n, int64_t cols);  // uint16 elements of the packed x
  // Packs rows [i0, i1) of x; disjoint ranges may run on different threads. The range that ends at
  // n also writes the padding rows.
  void (*pack)(uint16_t* xp, const float* x, int n, int64_t cols, int i0, int i1);
  // wt is BF16 or F16 (f16 weights are rounded to bf16 tile by tile).
  void (*gemm)(float* y, const uint16_t* xp, int n, const void* w, DType wt, int64_t rows, int64_t cols,
               int64_t r0, int64_t r1);
  // Peak probe: runs the unit's multiply-accumulate on registers only and returns the flops done.
  double (*peak)(int64_t iters);
};

// Rows of one attention head against their keys (the CPU backend's prefill and encoder attention).
// Row i < rows reads q + i·q_stride (hd floats) and sees the keys [k0[i], k1[i]). K comes transposed,
// kt[c·kt_stride + j] for key j, zero-padded so that kt_stride >= every k1 rounded up to a multiple
// of 64, plus 64; V as rows v + j·v_stride. Writes z + i·z_stride = softmax(scale · q·Kᵀ) V over the
// row's keys (zeros for an empty range). Keys in blocks of 64 with an online softmax, from the
// smallest k0 of the row's group of 4 (rows 4g .. 4g+3 of the call): so a row's result depends on
// its inputs and that grouping only, never on a thread split.
struct AttnRows {
  const float* q;
  int64_t q_stride;
  const float* kt;
  int64_t kt_stride;
  const float* v;
  int64_t v_stride;
  float* z;
  int64_t z_stride;
  const int* k0;
  const int* k1;
  int rows, hd;
  float scale;
  // When not null: row i's probabilities over keys [0, p_len) at pattern + i·p_stride (zeros outside
  // its range); z is the same with or without it.
  float* pattern = nullptr;
  int64_t p_stride = 0;
  int p_len = 0;
};

// One ISA's kernel set. All pointers are non-null.
struct Kernels {
  const char* name;
  Isa isa;
  void (*gemm)(float* y, const float* x, int n, const void* w, DType wt, int64_t rows, int64_t cols,
               int64_t r0, int64_t r1);
  float (*dot)(const float* a, const float* b, int64_t n);         // Σ a·b
  void (*axpy)(float* y, float a, const float* x, int64_t n);      // y += a·x
  double (*sumsq)(const float* x, int64_t n);                      // Σ x²
  void (*scale_mul)(float* y, const float* x, const float* g, float s, int64_t n);  // y = g·(x·s)
  void (*swiglu)(float* out, const float* gate, const float* up, int64_t n);     // silu(g)·u
  float (*exp_shift)(float* s, int64_t n, float m);  // s ← exp(s − m); returns Σ s
  void (*exp)(float* y, const float* x, int64_t n);  // y = exp(x) (for tests)
  double (*sum)(const float* x, int64_t n);          // Σ x, streaming (bandwidth probe)
  // OutRo's gated rotation of one head output toward v (gate_heads' contract); returns cos(o, v).
  float (*gate)(float* o, const float* v, int64_t n, float vv, float nv, float gamma, float temp, bool rescale);
  // Φ_LLM's bracket pass over one row x[0, n), on the bit patterns of |x| (ordered like the values):
  // returns the largest; adds to *below the count of patterns < lo; writes the patterns in [lo, hi]
  // to out and adds their count to *inside. It may write up to 16 values past those it keeps, never
  // past out + n.
  uint32_t (*bracket)(const float* x, int64_t n, uint32_t lo, uint32_t hi, uint32_t* out, int64_t* below,
                      int64_t* inside);
  void (*attn)(const AttnRows& a);  // blocked attention rows (AttnRows)
  double (*peak)(int64_t iters);  // float32 FMA peak probe (flops done); nullptr for portable
  const MatPath* mm;              // the bf16 matrix path; nullptr in the float32 sets
};

// Whether the product y = x·wᵀ of n rows with weights of type wt runs on k's bf16 matrix path.
inline bool uses_bf16(const Kernels& k, int n, DType wt) {
  return k.mm && n >= k.mm->min_n && (wt == DType::BF16 || wt == DType::F16);
}

// The scalar bracket pass (the portable and AVX2 sets').
uint32_t bracket_scalar(const float* x, int64_t n, uint32_t lo, uint32_t hi, uint32_t* out, int64_t* below,
                        int64_t* inside);

// The active set (chosen on first use: OUTRO_ISA, else the best the CPU supports).
const Kernels& kernels();
// Whether this CPU (and build) can run the ISA.
bool isa_supported(Isa isa);
// The kernel set of an ISA, or nullptr when unsupported here.
const Kernels* kernels_for(Isa isa);
// Switches the active set (tests); returns false (and changes nothing) when unsupported.
bool set_isa(Isa isa);
const char* isa_name(Isa isa);
// The best float32-only set this CPU has (parity tests that need float32 products pin it).
Isa best_f32_isa();
// Why the AMX set is not usable here (no tiles, or the kernel refused tile data), or "" when it is.
const char* isa_note();

// Per-ISA sets, defined in their own translation units (nullptr-returning when not compiled).
const Kernels* avx2_kernels();
const Kernels* avx512_kernels();
const Kernels* avx512bf16_kernels();
const Kernels* amx_kernels();

// CPU feature probes (CPUID / XCR0). cpu_amx_usable() also asks Linux for tile-data permission
// (arch_prctl ARCH_REQ_XCOMP_PERM, once per process) and sets *why when AMX cannot be used.
bool cpu_has_avx512();
bool cpu_has_avx512bf16();
bool cpu_amx_usable(const char** why);

}  // namespace outro::cpu
