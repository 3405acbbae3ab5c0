// Matrix-vector products for the decode path: y[n, rows] = x[n, cols] · wᵀ (+ bias) with bf16 (or
// float32) weights and float32 x, y, for small n. Decode is bound by reading the weights once, so
// each block streams R whole weight rows with 16-byte loads (several in flight per thread, L1 not
// allocated for them), multiplies them with NX rows of x (which stay in L1), and reduces across the
// block. Accumulation in float32.
#include <cstdio>
#include <cstdlib>

#include "kernels/cuda/common.cuh"

namespace outro::cuda {

namespace {

constexpr int kThreads = 128;

__device__ __forceinline__ uint4 ld_stream(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// 16 bytes of weights as float32 values: 8 bf16 or 4 float.
template <typename WT>
struct Chunk;
template <>
struct Chunk<__nv_bfloat16> {
  static constexpr int E = 8;
  __device__ __forceinline__ static void unpack(const uint4& u, float (&f)[8]) {
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      f[2 * i] = __uint_as_float(w[i] << 16);
      f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
  }
};
template <>
struct Chunk<float> {
  static constexpr int E = 4;
  __device__ __forceinline__ static void unpack(const uint4& u, float (&f)[4]) {
    f[0] = __uint_as_float(u.x), f[1] = __uint_as_float(u.y), f[2] = __uint_as_float(u.z), f[3] = __uint_as_float(u.w);
  }
};

template <int E>
__device__ __forceinline__ void load_x(const float* __restrict__ x, int64_t c, float (&f)[E]) {
  const float4* p = reinterpret_cast<const float4*>(x + c * E);
#pragma unroll
  for (int i = 0; i < E / 4; ++i) {
    const float4 v = __ldg(p + i);
    f[4 * i] = v.x, f[4 * i + 1] = v.y, f[4 * i + 2] = v.z, f[4 * i + 3] = v.w;
  }
}

// Up to three matrices that share x (q/k/v, gate/up) in one launch: blocks [seg[s].block0, ...) take
// the rows of matrix s, R rows per block. PAIR (two matrices of equal rows, gate and up): every block
// takes R/2 rows of each at the same row indices and also writes out = silu(gate) * up for them.
struct SegArgs {
  const void* w[3];
  const float* bias[3];
  float* y[3];
  int64_t rows[3];
  unsigned block0[3];
  int nseg;
  float* out;  // PAIR: swiglu output
};

template <int R, int NX, typename WT, bool PAIR>
__global__ void __launch_bounds__(kThreads) k_gemv(SegArgs a, const float* __restrict__ x, int64_t cols) {
  using C = Chunk<WT>;
  constexpr int E = C::E;
  constexpr int U = R * NX <= 4 ? 4 : 2;  // chunks per row in flight per thread
  constexpr int RH = PAIR ? R / 2 : R;
  const int s = PAIR ? 0 : (a.nseg > 2 && blockIdx.x >= a.block0[2]) ? 2 : (a.nseg > 1 && blockIdx.x >= a.block0[1]) ? 1 : 0;
  const WT* w0 = static_cast<const WT*>(s == 0 ? a.w[0] : s == 1 ? a.w[1] : a.w[2]);
  const WT* w1 = static_cast<const WT*>(a.w[1]);
  const int64_t rows = s == 0 ? a.rows[0] : s == 1 ? a.rows[1] : a.rows[2];
  const unsigned b0 = s == 0 ? a.block0[0] : s == 1 ? a.block0[1] : a.block0[2];
  const int64_t r0 = int64_t(blockIdx.x - b0) * RH;
  const int64_t nch = cols / E;
  const uint4* wp[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int rr = r < RH ? r : r - RH;
    const int64_t row = r0 + rr < rows ? r0 + rr : rows - 1;
    wp[r] = reinterpret_cast<const uint4*>((PAIR && r >= RH ? w1 : w0) + row * cols);
  }
  // The weights depend on no earlier kernel: start fetching them into L2 before waiting for x.
  pdl_trigger();
#pragma unroll
  for (int u = 0; u < U; ++u)
    if (threadIdx.x + u * kThreads < nch)
#pragma unroll
      for (int r = 0; r < R; ++r) asm volatile("prefetch.global.L2 [%0];" ::"l"(wp[r] + threadIdx.x + u * kThreads));
  pdl_wait();
  float acc[R][NX];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int j = 0; j < NX; ++j) acc[r][j] = 0.f;

  int64_t c = threadIdx.x;
  for (; c + int64_t(kThreads) * (U - 1) < nch; c += int64_t(kThreads) * U) {
    uint4 wv[U][R];
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int r = 0; r < R; ++r) wv[u][r] = ld_stream(wp[r] + c + u * kThreads);
#pragma unroll
    for (int u = 0; u < U; ++u) {
#pragma unroll
      for (int j = 0; j < NX; ++j) {
        float xv[E];
        load_x<E>(x + j * cols, c + u * kThreads, xv);
#pragma unroll
        for (int r = 0; r < R; ++r) {
          float wf[E];
          C::unpack(wv[u][r], wf);
#pragma unroll
          for (int e = 0; e < E; ++e) acc[r][j] = fmaf(wf[e], xv[e], acc[r][j]);
        }
      }
    }
  }
  for (; c < nch; c += kThreads) {
    uint4 wv[R];
#pragma unroll
    for (int r = 0; r < R; ++r) wv[r] = ld_stream(wp[r] + c);
#pragma unroll
    for (int j = 0; j < NX; ++j) {
      float xv[E];
      load_x<E>(x + j * cols, c, xv);
#pragma unroll
      for (int r = 0; r < R; ++r) {
        float wf[E];
        C::unpack(wv[r], wf);
#pragma unroll
        for (int e = 0; e < E; ++e) acc[r][j] = fmaf(wf[e], xv[e], acc[r][j]);
      }
    }
  }
  __shared__ float sh[kThreads / 32][R * NX];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int j = 0; j < NX; ++j) {
      const float v = warp_sum(acc[r][j]);
      if (lane == 0) sh[warp][r * NX + j] = v;
    }
  __syncthreads();
  if (threadIdx.x < RH * NX) {
    const int r = threadIdx.x / NX, j = threadIdx.x % NX;
    float sv = 0.f;
#pragma unroll
    for (int k = 0; k < kThreads / 32; ++k) sv += sh[k][threadIdx.x];
    const int64_t row = r0 + r;
    if (row < rows) {
      const float* bias = s == 0 ? a.bias[0] : s == 1 ? a.bias[1] : a.bias[2];
      float* y = s == 0 ? a.y[0] : s == 1 ? a.y[1] : a.y[2];
      const float g = sv + (bias ? bias[row] : 0.f);
      y[j * rows + row] = g;
      if (PAIR) {  // the second matrix's row at the same index, then the SwiGLU of the two
        float su = 0.f;
#pragma unroll
        for (int k = 0; k < kThreads / 32; ++k) su += sh[k][RH * NX + threadIdx.x];
        const float u = su + (a.bias[1] ? a.bias[1][row] : 0.f);
        a.y[1][j * rows + row] = u;
        a.out[j * rows + row] = g / (1.f + expf(-g)) * u;
      }
    }
  }
}

// Any shape and alignment: one block per output row, scalar loads.
template <typename WT>
__global__ void k_gemv_scalar(float* y, const float* x, int n, const WT* w, int64_t rows, int64_t cols,
                              const float* bias) {
  __shared__ float sh[32];
  pdl_begin();
  const int64_t row = blockIdx.x;
  const WT* wr = w + row * cols;
  for (int j = 0; j < n; ++j) {
    float s = 0.f;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) s += float(wr[c]) * x[j * cols + c];
    s = block_sum(s, sh);
    if (threadIdx.x == 0) y[j * rows + row] = s + (bias ? bias[row] : 0.f);
  }
}

template <int R, int NX, typename WT, bool PAIR>
void launch_rnx(cudaStream_t s, const SegArgs& a, unsigned grid, const float* x, int64_t cols) {
  launch("gemv", k_gemv<R, NX, WT, PAIR>, dim3(grid), dim3(kThreads), 0, s, a, x, cols);
}

// Block layout for R rows per block (R / 2 of each matrix for PAIR).
template <int R, bool PAIR>
unsigned layout(SegArgs& a) {
  constexpr int RH = PAIR ? R / 2 : R;
  unsigned b = 0;
  for (int i = 0; i < a.nseg; ++i) {
    a.block0[i] = b;
    b += unsigned((a.rows[i] + RH - 1) / RH);
    if (PAIR) break;
  }
  return b;
}

// Rows per block by size: more rows per block read x (from L2) fewer times per weight byte, fewer
// keep every multiprocessor busy on small matrices. Thresholds (total rows) for 8, 4 and 2 rows per
// block; OUTRO_CUDA_GEMV="t8,t4,t2" overrides them (for tuning).
struct RowsPerBlock {
  int64_t t8 = int64_t(1) << 40, t4 = 2048, t2 = 1024;
};
const RowsPerBlock& rows_per_block() {
  static const RowsPerBlock r = [] {
    RowsPerBlock v;
    if (const char* e = std::getenv("OUTRO_CUDA_GEMV")) {
      long long a = 0, b = 0, c = 0;
      if (std::sscanf(e, "%lld,%lld,%lld", &a, &b, &c) == 3) v.t8 = a, v.t4 = b, v.t2 = c;
    }
    return v;
  }();
  return r;
}

template <int NX, typename WT, bool PAIR>
void launch_nx(cudaStream_t s, SegArgs a, const float* x, int64_t cols) {
  int64_t rows = 0;
  for (int i = 0; i < a.nseg; ++i) rows += a.rows[i];
  const RowsPerBlock& t = rows_per_block();
  if (PAIR) {  // by the rows of the two matrices together
    if (rows >= t.t8)
      launch_rnx<8, NX, WT, true>(s, a, layout<8, true>(a), x, cols);
    else if (rows >= t.t4)
      launch_rnx<4, NX, WT, true>(s, a, layout<4, true>(a), x, cols);
    else
      launch_rnx<2, NX, WT, true>(s, a, layout<2, true>(a), x, cols);
  } else if (rows >= t.t8) {
    launch_rnx<8, NX, WT, false>(s, a, layout<8, false>(a), x, cols);
  } else if (rows >= t.t4) {
    launch_rnx<4, NX, WT, false>(s, a, layout<4, false>(a), x, cols);
  } else if (rows >= t.t2) {
    launch_rnx<2, NX, WT, false>(s, a, layout<2, false>(a), x, cols);
  } else {
    launch_rnx<1, NX, WT, false>(s, a, layout<1, false>(a), x, cols);
  }
}

template <typename WT, bool PAIR>
void gemv_rows(cudaStream_t s, const GemvOut* o, int count, float* out, const float* x, int n, int64_t cols) {
  int j = 0;
  while (j < n) {
    const int left = n - j;
    SegArgs a{};
    a.nseg = count;
    for (int i = 0; i < count; ++i) {
      a.w[i] = o[i].w;
      a.bias[i] = o[i].bias;
      a.rows[i] = o[i].rows;
      a.y[i] = o[i].y + size_t(j) * size_t(o[i].rows);
    }
    a.out = out ? out + size_t(j) * size_t(o[0].rows) : nullptr;
    const float* xj = x + size_t(j) * cols;
    if (left >= 4) {
      launch_nx<4, WT, PAIR>(s, a, xj, cols);
      j += 4;
    } else if (left >= 2) {
      launch_nx<2, WT, PAIR>(s, a, xj, cols);
      j += 2;
    } else {
      launch_nx<1, WT, PAIR>(s, a, xj, cols);
      j += 1;
    }
  }
}

template <typename WT>
void gemv_t(cudaStream_t s, float* y, const float* x, int n, const WT* w, int64_t rows, int64_t cols,
            const float* bias) {
  if (!gemv_vectorizable(w, sizeof(WT) == 2 ? WType::BF16 : WType::F32, x, cols)) {
    launch("gemv", k_gemv_scalar<WT>, dim3(unsigned(rows)), dim3(128), 0, s, y, x, n, w, rows, cols, bias);
    return;
  }
  const GemvOut o{y, w, bias, rows};
  gemv_rows<WT, false>(s, &o, 1, nullptr, x, n, cols);
}

__global__ void k_add_bias(float* y, const float* bias, size_t total, int64_t rows) {
  pdl_begin();
  for (size_t t = blockIdx.x * size_t(blockDim.x) + threadIdx.x; t < total; t += size_t(gridDim.x) * blockDim.x)
    y[t] += bias[t % rows];
}

__global__ void k_to_bf16(__nv_bfloat16* y, const float* x, size_t n) {
  pdl_begin();
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    y[i] = __float2bfloat16_rn(x[i]);
}

}  // namespace

bool gemv_vectorizable(const void* w, WType wt, const float* x, int64_t cols) {
  const int E = wt == WType::BF16 ? 8 : 4;
  return cols % E == 0 && reinterpret_cast<uintptr_t>(w) % 16 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
         cols % 4 == 0;
}

void gemv_multi(cudaStream_t s, const float* x, int n, int64_t cols, WType wt, const GemvOut* outs, int count,
                float* swiglu_out) {
  if (n <= 0 || count <= 0) return;
  if (count > 3 || (swiglu_out && (count != 2 || outs[0].rows != outs[1].rows)))
    fail("gemv_multi: expected at most 3 matrices (2 of equal rows with a SwiGLU output)");
  for (int i = 0; i < count; ++i)
    if (!gemv_vectorizable(outs[i].w, wt, x, cols)) fail("gemv_multi: unaligned operands");
  if (wt == WType::BF16) {
    if (swiglu_out) gemv_rows<__nv_bfloat16, true>(s, outs, count, swiglu_out, x, n, cols);
    else gemv_rows<__nv_bfloat16, false>(s, outs, count, nullptr, x, n, cols);
  } else {
    if (swiglu_out) gemv_rows<float, true>(s, outs, count, swiglu_out, x, n, cols);
    else gemv_rows<float, false>(s, outs, count, nullptr, x, n, cols);
  }
  OUTRO_LAUNCHED("gemv_multi");
}

void gemv(cudaStream_t s, float* y, const float* x, int n, const void* w, WType wt, int64_t rows, int64_t cols,
          const float* bias) {
  if (n <= 0 || rows <= 0) return;
  if (wt == WType::BF16)
    gemv_t(s, y, x, n, static_cast<const __nv_bfloat16*>(w), rows, cols, bias);
  else
    gemv_t(s, y, x, n, static_cast<const float*>(w), rows, cols, bias);
  OUTRO_LAUNCHED("gemv");
}

void add_bias(cudaStream_t s, float* y, const float* bias, int n, int64_t rows) {
  const size_t t = size_t(n) * size_t(rows);
  if (!t) return;
  size_t b = (t + 255) / 256;
  launch("add_bias", k_add_bias, dim3(unsigned(b < 65535u * 8 ? b : 65535u * 8)), dim3(256), 0, s, y, bias, t, rows);
  OUTRO_LAUNCHED("add_bias");
}

void to_bf16(cudaStream_t s, __nv_bfloat16* y, const float* x, size_t n) {
  if (!n) return;
  size_t b = (n + 255) / 256;
  launch("to_bf16", k_to_bf16, dim3(unsigned(b < 65535u * 8 ? b : 65535u * 8)), dim3(256), 0, s, y, x, n);
  OUTRO_LAUNCHED("to_bf16");
}

}  // namespace outro::cuda
