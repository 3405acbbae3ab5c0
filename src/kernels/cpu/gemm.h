// CPU matrix kernels: y[n, rows] = x[n, cols] · wᵀ with w in f32/f16/bf16 and float32 x, y.
// The ISA (AVX-512, AVX2+FMA+F16C, portable) is chosen at run time from what the CPU has.
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

}  // namespace outro::cpu
