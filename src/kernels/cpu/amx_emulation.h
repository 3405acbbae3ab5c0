// A C++ model of the AMX tile registers and tdpbf16ps, for testing kernels_amx.cpp's loops and
// addressing on CPUs without AMX (compiled only into tests/amx_emulation, with OUTRO_AMX_EMULATE).
// Tiles are per thread, as on the hardware; a configuration must be loaded before use and every
// tile is 16 rows x 64 bytes, the only shape the kernel configures (checked).
#pragma once
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "core/dtype.h"

namespace outro::cpu::amx_emu {

struct State {
  bool configured = false;
  alignas(64) uint8_t t[8][16][64];
};
inline thread_local State st;

inline void check(int t) {
  if (!st.configured || t < 0 || t > 7) std::abort();  // the hardware would fault
}
inline void config(const void* cfg) {
  const auto* b = static_cast<const uint8_t*>(cfg);
  if (b[0] != 1) std::abort();  // palette 1
  for (int t = 0; t < 8; ++t) {
    uint16_t colsb;
    std::memcpy(&colsb, b + 16 + 2 * t, 2);
    if (colsb != 64 || b[48 + t] != 16) std::abort();
  }
  st.configured = true;
}
inline void release() { st.configured = false; }
inline void load(int t, const void* base, long stride) {
  check(t);
  for (int r = 0; r < 16; ++r) std::memcpy(st.t[t][r], static_cast<const uint8_t*>(base) + r * stride, 64);
}
inline void store(int t, void* base, long stride) {
  check(t);
  for (int r = 0; r < 16; ++r) std::memcpy(static_cast<uint8_t*>(base) + r * stride, st.t[t][r], 64);
}
inline void zero(int t) {
  check(t);
  std::memset(st.t[t], 0, sizeof st.t[t]);
}
// C[m][n] += Σ_k A[m][2k]·B[k][2n] + A[m][2k+1]·B[k][2n+1] (16 x 16 float32, bf16 operands).
inline void dpbf16ps(int c, int a, int b) {
  check(c), check(a), check(b);
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 16; ++n) {
      float acc;
      std::memcpy(&acc, &st.t[c][m][4 * n], 4);
      for (int k = 0; k < 16; ++k) {
        uint16_t a0, a1, b0, b1;
        std::memcpy(&a0, &st.t[a][m][4 * k], 2);
        std::memcpy(&a1, &st.t[a][m][4 * k + 2], 2);
        std::memcpy(&b0, &st.t[b][k][4 * n], 2);
        std::memcpy(&b1, &st.t[b][k][4 * n + 2], 2);
        acc += bf16_to_f32(a0) * bf16_to_f32(b0) + bf16_to_f32(a1) * bf16_to_f32(b1);
      }
      std::memcpy(&st.t[c][m][4 * n], &acc, 4);
    }
}

}  // namespace outro::cpu::amx_emu
