// Shared pieces of the CUDA backend's translation units: error checks, bf16 helpers, reductions,
// and the launchers each .cu file defines (called by cuda_backend.cu).
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <utility>

#include "core/error.h"

namespace outro::cuda {

inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail("CUDA: ", what, ": ", cudaGetErrorString(e));
}
#define OUTRO_CK(x) ::outro::cuda::check((x), #x)
// After a launch: catches bad configurations at once (no synchronisation).
#define OUTRO_LAUNCHED(name) ::outro::cuda::check(cudaGetLastError(), name)

// Programmatic dependent launch (sm_90): kernels are launched with programmatic stream
// serialisation, so a kernel's blocks start while its predecessor drains. Every kernel launched
// through launch() calls pdl_begin() first: it lets the next kernel launch, then waits until the
// previous grid has completed and its writes are visible. Work that depends on nothing earlier
// (weight prefetches) may come before pdl_wait().
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_begin() {
  pdl_trigger();
  pdl_wait();
}

// Whether launch() asks for programmatic serialisation (sm_90 and newer; OUTRO_CUDA_PDL=0 turns it off).
bool pdl_enabled();

template <typename... KArgs, typename... Args>
void launch(const char* name, void (*k)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t s,
            Args&&... args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = s;
  cudaLaunchAttribute at[1];
  at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  at[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = at;
  cfg.numAttrs = pdl_enabled() ? 1 : 0;
  check(cudaLaunchKernelEx(&cfg, k, std::forward<Args>(args)...), name);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ double warp_sum_d(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* sh /* >= 32 */) {
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();
  if (lane == 0) sh[w] = v;
  __syncthreads();
  T r = T(0);
  for (int i = 0; i < nw; ++i) r += sh[i];
  return r;
}

// Weight element types on the device: float32 or bf16 (f16 checkpoints are converted to bf16).
enum class WType { F32, BF16 };

// ---- launchers (stream-ordered; pointers are device pointers unless named host_) ----

// gemv.cu: y[n, rows] = x[n, cols] · wᵀ (+ bias), for small n (the decode path).
void gemv(cudaStream_t s, float* y, const float* x, int n, const void* w, WType wt, int64_t rows, int64_t cols,
          const float* bias);
// One matrix of a fused GEMV launch: y[n, rows] = x[n, cols] · wᵀ (+ bias).
struct GemvOut {
  float* y;
  const void* w;
  const float* bias;
  int64_t rows;
};
// Whether the vector GEMV can take these operands (16-byte aligned, cols a multiple of 8).
bool gemv_vectorizable(const void* w, WType wt, const float* x, int64_t cols);
// Up to 3 matrices sharing x (same cols and weight type) in one launch per 4 rows of x. With
// swiglu_out (count 2, equal rows; gate then up): also swiglu_out = silu(y0) * y1, written after y0
// and y1 (it may be either of them). Every operand must pass gemv_vectorizable.
void gemv_multi(cudaStream_t s, const float* x, int n, int64_t cols, WType wt, const GemvOut* outs, int count,
                float* swiglu_out);
// y[i, r] += bias[r]
void add_bias(cudaStream_t s, float* y, const float* bias, int n, int64_t rows);
// float32 -> bf16 copy
void to_bf16(cudaStream_t s, __nv_bfloat16* y, const float* x, size_t n);

// moe.cu: Backend::moe_route and moe_experts (bf16 experts, D and I multiples of 8).
constexpr int kMoeMaxExperts = 2048, kMoeMaxK = 64, kMoeGemvMaxRows = 8;
void moe_route(cudaStream_t s, float* route, const float* logits, int n, int E, int k, bool norm);
// Scratch moe_experts needs for n rows (the GEMV path up to kMoeGemvMaxRows rows, then the GEMMs).
size_t moe_scratch_bytes(int n, int k, int E, int D, int I);
// table: 3E device pointers (gate of every expert, then up, then down), each 16-byte aligned.
void moe_experts(cudaStream_t s, float* y, const float* x, int n, int k, const float* route, const void* const* table,
                 int E, int D, int I, void* scratch);
// attention.cu
struct AttnDev {
  int n_heads, n_kv, head_dim, n_new, past;
  float scale;
  const float* sinkout_mask;  // device [n_new]: nonzero rows see keys [0, sinkout_end); null: none
  int sinkout_end;
  bool causal;
  const int* segments;  // device-readable, n_segments + 1 offsets
  int n_segments;
  // OutRo's gated rotation of the output rows (AttnGate), done by the tensor-core kernel in its
  // epilogue; gate_vbar null: none. The other kernels ignore it (the backend gates after them).
  const float* gate_vbar;
  const float* gate_excl;
  int gate_excl_n;
  float gate_gamma, gate_temp;
  bool gate_rescale;
  float* gate_counter;
};
// Scratch the attention launchers may use (grown by the backend on request).
struct AttnScratch {
  void* ptr = nullptr;
  size_t bytes = 0;
  // kAttnCounters zero-initialised counters, left zero by every call (the split decode kernel's
  // last block per row and head merges the splits); null: a separate merge kernel.
  unsigned* counters = nullptr;
};
constexpr int kAttnCounters = 1024;
// Bytes of scratch attention() needs for these parameters (0 when none).
size_t attention_scratch_bytes(const AttnDev& p, int sm_major);
// z = attention(q, kcache, vcache); pattern (device, [H, n_new, past + n_new]) when non-null.
// Returns the name of the kernel used (for tests and benches).
const char* attention(cudaStream_t s, float* z, const float* q, const float* kc, const float* vc, const AttnDev& p,
                      float* pattern, AttnScratch scratch, int sm_major,
                      int force /* 0 auto, 1 rowwise, 2 mma, 3 decode, 4 decode merged in global
                                   memory, 5 decode unsplit */);

// ops.cu
void embed(cudaStream_t s, float* out, const void* table, WType wt, int64_t cols, const int32_t* ids, int n);
// yb (may be null): also y in bf16 (the input of the matrix products that read y next).
void rmsnorm(cudaStream_t s, float* y, const float* x, int n, int d, const float* g, float eps,
             __nv_bfloat16* yb = nullptr);
// x[n, d] += a; then y = rmsnorm(x) (the add and the norm of the residual stream in one kernel).
void add_rmsnorm(cudaStream_t s, float* y, float* x, const float* a, int n, int d, const float* g, float eps,
                 __nv_bfloat16* yb = nullptr);
void layernorm(cudaStream_t s, float* y, const float* x, int n, int d, const float* g, const float* b, float eps);
// positions: pos (device-readable) or, when pos == nullptr, pos0 + i
void rope(cudaStream_t s, float* x, int n, int heads, int hd, const int32_t* pos, int pos0, const float* inv_freq);
// rope() on q [n, hq, hd] and k [n, hk, hd] (positions pos0 + i) in one kernel; then, when kdst is
// non-null, kdst[n, hk, hd] = the rotated k, and when vdst is non-null, vdst[n, hk, hd] = vsrc (the
// KV-cache writes).
void rope_qk_cache(cudaStream_t s, float* q, int hq, float* k, int hk, int n, int hd, int pos0,
                   const float* inv_freq, float* kdst, float* vdst, const float* vsrc);
void rope_sections(cudaStream_t s, float* x, int n, int heads, int hd, const int32_t* pos, const int* sec_of,
                   const float* inv_freq);
// outb (may be null): also out in bf16.
void swiglu(cudaStream_t s, float* out, const float* g, const float* u, size_t n, __nv_bfloat16* outb = nullptr);
void gelu(cudaStream_t s, float* y, const float* x, size_t n, bool tanh_approx);
void add(cudaStream_t s, float* y, const float* x, size_t n);
void fill(cudaStream_t s, float* y, size_t n, float v);
void copy(cudaStream_t s, float* y, const float* x, size_t n);
void zero_cols(cudaStream_t s, float* x, int n, int row_len, int col0, int ncols);
void zero_top_dim(cudaStream_t s, float* x, int row, int groups, int gdim);
// Φ_LLM statistics of h[n, dim] (n * dim < 2^32): writes, in scratch (phi_llm_scratch_bytes(n, dim)),
// n row maxima of |h| followed by the ((n·dim - 1) / 2)-th smallest |h|, and returns where (n + 1
// floats). Five launches, one full read of h in the common case. The scratch must be zeroed once
// when allocated; every call leaves its histogram and counters zero again.
size_t phi_llm_scratch_bytes(int n, int dim);
// Index of the largest of x[0, n) (the lowest index among equal maxima; NaN never wins) into *out
// (device memory). One block.
void argmax(cudaStream_t s, const float* x, int n, int32_t* out);
// ev: null, or 6 events recorded before the first and after each of the five launches (profiling).
float* phi_llm_stats(cudaStream_t s, const float* h, int n, int dim, void* scratch, cudaEvent_t* ev);
// After a synchronised call: 0 when the finer levels read the buffer, 1 when they read all of h.
uint32_t phi_llm_last_mode(void* scratch);
// OutRo's ops (Backend::phi_detect, outro_sets, masked_mean, gate_heads), all on the stream; phi_detect
// uses the phi_llm_stats scratch.
void phi_detect(cudaStream_t s, float* rec, const float* h, int n, int dim, float abs_thr, float med_mul,
                void* scratch);
void outro_sets(cudaStream_t s, float* enh, float* done, float* cum, const float* rec, int n, bool enhance, bool once);
void masked_mean(cudaStream_t s, float* out, const float* x, int n, int dim, const float* flags);
void gate_heads(cudaStream_t s, float* z, int n, int heads, int kv_heads, int hd, const float* vbar, const float* excl,
                int excl_n, float gamma, float temp, bool rescale, float* counter);
// out rows [seg_out[s], seg_out[s+1]) come from input rows starting at seg_in[s] of length seg_len[s]
void im2col1d(cudaStream_t s, float* cols, const float* x, int C, int K, int stride, int pad, const int* seg_in,
              const int* seg_len, const int* seg_out, int nseg, int total_rows);
void gather_rows(cudaStream_t s, float* y, const float* x, int dim, const int32_t* idx, int n);
// y[idx[i], :] += scale[i] * x[i, :] for i < n in order (idx, scale in device memory).
void scatter_add_rows(cudaStream_t s, float* y, const float* x, int dim, const int32_t* idx, const float* scale, int n);
void avgpool_rows(cudaStream_t s, float* y, const float* x, int m, int dim, int k);

}  // namespace outro::cuda
