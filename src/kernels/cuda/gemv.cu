// Matrix-vector products for the decode path: y[n, rows] = x[n, cols] · wᵀ (+ bias) with bf16 (or
// float32) weights and float32 x, y, for small n. Decode is bound by reading the weights once, so
// each block streams R whole weight rows with 16-byte loads (several in flight per thread, L1 not
// allocated for them), multiplies them with NX rows of x (which stay in L1), and reduces across the
// block. Accumulation in float32.
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

template <int R, int NX, typename WT>
__global__ void __launch_bounds__(kThreads) k_gemv(float* __restrict__ y, const float* __restrict__ x,
                                                   const WT* __restrict__ w, int64_t rows, int64_t cols,
                                                   const float* __restrict__ bias) {
  using C = Chunk<WT>;
  constexpr int E = C::E;
  constexpr int U = R * NX <= 4 ? 4 : 2;  // chunks per row in flight per thread
  const int64_t r0 = int64_t(blockIdx.x) * R;
  const int64_t nch = cols / E;
  const uint4* wp[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int64_t row = r0 + r < rows ? r0 + r : rows - 1;
    wp[r] = reinterpret_cast<const uint4*>(w + row * cols);
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
  if (threadIdx.x < R * NX) {
    const int r = threadIdx.x / NX, j = threadIdx.x % NX;
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < kThreads / 32; ++k) s += sh[k][threadIdx.x];
    const int64_t row = r0 + r;
    if (row < rows) y[j * rows + row] = s + (bias ? bias[row] : 0.f);
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

template <int R, int NX, typename WT>
void launch_rnx(cudaStream_t s, float* y, const float* x, const WT* w, int64_t rows, int64_t cols, const float* b) {
  const unsigned grid = unsigned((rows + R - 1) / R);
  launch("gemv", k_gemv<R, NX, WT>, dim3(grid), dim3(kThreads), 0, s, y, x, w, rows, cols, b);
}

template <int NX, typename WT>
void launch_nx(cudaStream_t s, float* y, const float* x, const WT* w, int64_t rows, int64_t cols, const float* b) {
  // Fewer rows per block for small matrices, so that every multiprocessor gets blocks.
  if (rows >= 8192)
    launch_rnx<4, NX>(s, y, x, w, rows, cols, b);
  else if (rows >= 2048)
    launch_rnx<2, NX>(s, y, x, w, rows, cols, b);
  else
    launch_rnx<1, NX>(s, y, x, w, rows, cols, b);
}

template <typename WT>
void gemv_t(cudaStream_t s, float* y, const float* x, int n, const WT* w, int64_t rows, int64_t cols,
            const float* bias) {
  constexpr int E = 16 / int(sizeof(WT));
  const bool vec = cols % E == 0 && reinterpret_cast<uintptr_t>(w) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(x) % 16 == 0 && cols % 4 == 0;
  if (!vec) {
    launch("gemv", k_gemv_scalar<WT>, dim3(unsigned(rows)), dim3(128), 0, s, y, x, n, w, rows, cols, bias);
    return;
  }
  int j = 0;
  while (j < n) {
    const int left = n - j;
    float* yj = y + size_t(j) * rows;
    const float* xj = x + size_t(j) * cols;
    if (left >= 4) {
      launch_nx<4>(s, yj, xj, w, rows, cols, bias);
      j += 4;
    } else if (left >= 2) {
      launch_nx<2>(s, yj, xj, w, rows, cols, bias);
      j += 2;
    } else {
      launch_nx<1>(s, yj, xj, w, rows, cols, bias);
      j += 1;
    }
  }
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
