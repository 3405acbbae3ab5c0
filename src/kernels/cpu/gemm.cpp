#include "kernels/cpu/gemm.h"

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

}  // namespace

void gemm_rows(float* y, const float* x, int n, const void* w, DType wt, int64_t rows, int64_t cols,
               int64_t r0, int64_t r1) {
  gemm_portable(y, x, n, w, wt, rows, cols, r0, r1);
}

const char* gemm_isa() { return "portable"; }

}  // namespace outro::cpu
