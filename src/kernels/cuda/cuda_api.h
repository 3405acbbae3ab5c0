// What the CUDA backend offers beyond the Backend interface: device facts, ceilings measured on
// the device (for the benchmarks), and knobs for tests. Only declared usefully when the build has
// CUDA (OUTRO_HAVE_CUDA); plain C++, no CUDA headers.
#pragma once
#include <cstddef>
#include <string>
#include <vector>

#include "kernels/backend.h"

namespace outro::cuda_api {

struct DeviceInfo {
  std::string name;
  int sm_major = 0, sm_minor = 0, sms = 0;
  size_t mem_total = 0, mem_free = 0;
};
// False (with why) when no GPU can be used.
bool device_info(int device, DeviceInfo* out, std::string* why);
// Device-to-device cudaMemcpy of `bytes`: best (read + written bytes) / s over reps.
double copy_bandwidth(int device, size_t bytes, int reps);
// bf16 x bf16 -> fp32 cuBLAS GEMM m x n x k on random data: best TFLOP/s over reps.
double bf16_gemm_tflops(int device, int m, int n, int k, int reps);
// Attention kernel choice of a CUDA backend: 0 automatic, 1 the portable row kernel, 2 tensor cores,
// 3 the decode kernel (blocks per KV head for all its query heads; where it cannot run: rows), 4 the
// same with its splits always merged through global memory (no thread-block cluster), 5 the same
// unsplit (one block per KV head).
// Returns false when `be` is not a CUDA backend.
bool set_attention_kernel(Backend& be, int force);
// Name of the kernel the last attention() call used ("mma", "rows", "rows-split", "dec", "dec-split",
// "dec-cluster"), or "".
std::string last_attention_kernel(Backend& be);
// Device memory the backend holds for weights, in bytes.
size_t weight_bytes(Backend& be);
// Fusion of the decoder's small ops (add + RMSNorm, GEMVs sharing x, gate/up + SwiGLU, q/k RoPE +
// KV-cache writes); on unless OUTRO_CUDA_FUSE=0. Returns false when `be` is not a CUDA backend.
bool set_fusion(Backend& be, bool on);
// The prefill's matrix products through cuBLASLt with the bias in its epilogue (off unless
// OUTRO_CUDA_LT=1); off: cublasGemmEx and a separate bias pass. False when `be` is not a CUDA backend.
bool set_gemm_lt(Backend& be, bool on);
// The prefill's products of one x as one group that rounds x to bf16 once, the RMSNorm or SwiGLU
// before them writing that copy (off unless OUTRO_CUDA_GROUP=1). False when `be` is not a CUDA backend.
bool set_gemm_group(Backend& be, bool on);
// y[n, rows] = x[n, cols] · wᵀ: each step of the backend's two paths timed alone (ms, median over reps,
// random data; -1 where cuBLASLt found no algorithm).
struct GemmShape {
  int n = 0, rows = 0, cols = 0;
};
struct GemmShapeTimes {
  GemmShape shape;
  double to_bf16_ms = 0;  // the float32 input rounded to bf16
  double gemmex_ms = 0;   // cublasGemmEx, bf16 in, fp32 out
  double bias_ms = 0;     // the separate bias pass
  double lt_bias_ms = 0;  // cuBLASLt, bias in the epilogue, fp32 out
  double lt_bf16_ms = 0;  // cuBLASLt, bf16 out, no bias
};
std::vector<GemmShapeTimes> gemm_shape_times(int device, const std::vector<GemmShape>& shapes, int reps);
// Downloads of 64 KiB to 64 MiB through a pinned buffer in overlapped chunks (on unless
// OUTRO_CUDA_PINNED_DL=0); off: straight into the destination. False when `be` is not a CUDA backend.
bool set_pinned_download(Backend& be, bool on);
// Φ_LLM's statistics of rows h[n, dim] held by a CUDA backend, computed on the GPU: row_max[i] =
// max_c |h[i,c]| and median = the ((n·dim - 1) / 2)-th smallest |h| (the lower middle), exactly the
// values outro::phi_llm computes on the host; only these n + 1 floats are copied back. False (nothing
// done) when `be` is not a CUDA backend or n·dim is 0 or >= 2^32.
bool phi_llm_stats(Backend& be, const Buf& h, int n, int dim, std::vector<float>* row_max, float* median);
// The same statistics with each of its five kernels timed (sample, full pass, levels 0-2, in ms) and
// the path taken (mode 0: the finer levels over the bracket's buffer; 1: the radix select over h).
bool phi_llm_profile(Backend& be, const Buf& h, int n, int dim, std::vector<float>* kernel_ms, int* mode);

}  // namespace outro::cuda_api
