// CPU kernels: y[n, rows] = x[n, cols] · wᵀ with w in f32/f16/bf16 and float32 x, y, plus the
// vector primitives of the other hot ops (attention dot products, softmax exp, rmsnorm, swiglu).
// The ISA (AVX-512, AVX2+FMA+F16C, portable) is chosen once at run time from what the CPU has;
// OUTRO_ISA=portable|avx2|avx512 forces one (a request the CPU cannot run falls back, with a note
// on stderr). Every kernel sums each output element in an order that depends only on the shapes,
// never on how callers split rows across threads, so results are identical for any thread count.
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/dtype.h"

namespace outro::cpu {

// Computes rows [r0, r1) of the output for all n input rows. Single-threaded; callers split rows.
void gemm_rows(float* y, const float* x, int n, const void* w, DType wt, int64_t rows, int64_t cols,
               int64_t r0, int64_t r1);

// Name of the kernel set in use ("avx512", "avx2", "portable").
const char* gemm_isa();

enum class Isa { Portable, Avx2, Avx512 };

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
};

// The active set (chosen on first use: OUTRO_ISA, else the best the CPU supports).
const Kernels& kernels();
// Whether this CPU (and build) can run the ISA.
bool isa_supported(Isa isa);
// The kernel set of an ISA, or nullptr when unsupported here.
const Kernels* kernels_for(Isa isa);
// Switches the active set (tests); returns false (and changes nothing) when unsupported.
bool set_isa(Isa isa);
const char* isa_name(Isa isa);

// Per-ISA sets, defined in their own translation units (nullptr-returning when not compiled).
const Kernels* avx2_kernels();
const Kernels* avx512_kernels();

}  // namespace outro::cpu
