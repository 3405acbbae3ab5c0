// The packed-x layout shared by the bf16 matrix paths (kernels_avx512bf16.cpp, kernels_amx.cpp).
//
// x [n, cols] float32 is rounded to bf16 and stored as pairs of consecutive k, 16 rows side by side,
// which is what vdpbf16ps (one x pair per lane) and the AMX B operand (a row of k pairs) consume.
// n is rounded up to n16 (a multiple of 16) and cols to kp (a multiple of 32), with zeros. Rows are
// grouped in blocks of 64; block b holds rows [64b, 64b + w) (w = 64, or less for the last block)
// at xp + 64·kp·b, the pair p of its row j at 2·(p·w + j). A block is contiguous, so a kernel
// walking k over one block reads memory sequentially: a layout with all n16 rows per pair would
// stride 4·n16 bytes per pair, which for encoder-sized n (thousands of rows) lands every pair in the
// same cache sets and on a new page.
#pragma once
#include <cstddef>
#include <cstdint>

namespace outro::cpu::bf16x {

constexpr int kBlock = 64;

inline int64_t round32(int64_t c) { return (c + 31) / 32 * 32; }
inline int round16(int n) { return (n + 15) / 16 * 16; }

inline size_t packed_size(int n, int64_t cols) { return size_t(round16(n)) * size_t(round32(cols)); }

// Rows in the block of row i (a multiple of 16).
inline int block_width(int n16, int i) {
  const int b0 = i / kBlock * kBlock;
  return n16 - b0 < kBlock ? n16 - b0 : kBlock;
}
// Where row i's pair 0 is (uint16 elements); its pair p is 2·p·block_width further.
inline size_t row_offset(int64_t kp, int i) {
  return size_t(i / kBlock) * size_t(kBlock) * size_t(kp) + 2 * size_t(i % kBlock);
}

}  // namespace outro::cpu::bf16x
