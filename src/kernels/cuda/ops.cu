// The CUDA backend's elementwise and row kernels: embedding, RMSNorm, LayerNorm, RoPE (plain and
// sectioned), SwiGLU, GELU, add, fill, and the interventions' ops. Each mirrors the CPU twin
// (cpu_backend.cpp, host_ops.cpp) operation for operation; sums are float32 unless the CPU uses double.
#include <algorithm>
#include <climits>
#include <cstdlib>

#include "kernels/cuda/common.cuh"

namespace outro::cuda {

namespace {

inline unsigned blocks_for(size_t n, int threads, size_t cap = 65535u * 8) {
  size_t b = (n + threads - 1) / threads;
  if (b < 1) b = 1;
  return unsigned(b < cap ? b : cap);
}

template <typename WT>
__device__ __forceinline__ float ld(const WT* p, size_t i);
template <>
__device__ __forceinline__ float ld<float>(const float* p, size_t i) { return p[i]; }
template <>
__device__ __forceinline__ float ld<__nv_bfloat16>(const __nv_bfloat16* p, size_t i) { return __bfloat162float(p[i]); }

template <typename WT>
__global__ void k_embed(float* out, const WT* table, int64_t cols, const int32_t* ids, int n) {
  pdl_begin();
  const int i = blockIdx.y;
  const size_t base = size_t(ids[i]) * size_t(cols);
  for (int64_t c = blockIdx.x * blockDim.x + threadIdx.x; c < cols; c += int64_t(gridDim.x) * blockDim.x)
    out[size_t(i) * cols + c] = ld(table, base + c);
}

// yb (may be null): also a bf16 copy of y, rounded as to_bf16 rounds it, for the matrix product
// that reads y next (the backend then skips its own conversion).
__global__ void k_rmsnorm(float* y, const float* x, int d, const float* g, float eps, __nv_bfloat16* yb) {
  pdl_begin();
  __shared__ double sh[32];
  const size_t row = blockIdx.x;
  const float* xr = x + row * d;
  double ss = 0;  // the CPU sums squares in double
  for (int c = threadIdx.x; c < d; c += blockDim.x) ss += double(xr[c]) * double(xr[c]);
  ss = block_sum(ss, sh);
  const float inv = 1.f / sqrtf(float(ss / double(d)) + eps);
  float* yr = y + row * d;
  if (yb) {
    __nv_bfloat16* br = yb + row * d;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
      const float v = g[c] * (xr[c] * inv);
      yr[c] = v;
      br[c] = __float2bfloat16_rn(v);
    }
  } else {
    for (int c = threadIdx.x; c < d; c += blockDim.x) yr[c] = g[c] * (xr[c] * inv);
  }
}

// Weights (norm gains, targets, frequencies) depend on no earlier kernel: brings n floats at p into
// L2 (a hint) before waiting for the previous kernel, then waits.
__device__ __forceinline__ void pdl_begin_prefetch(const float* p, int n) {
  pdl_trigger();
  for (int i = threadIdx.x * 32; i < n; i += blockDim.x * 32) asm volatile("prefetch.global.L2 [%0];" ::"l"(p + i));
  pdl_wait();
}

// The residual add and the next RMSNorm: each block owns one row, adds, sums the squares of the sums
// (in double, as k_rmsnorm) and normalises; the same arithmetic as k_add then k_rmsnorm.
__global__ void k_add_rmsnorm(float* y, float* x, const float* a, int d, const float* g, float eps,
                              __nv_bfloat16* yb) {
  pdl_begin();
  __shared__ double sh[32];
  const size_t row = blockIdx.x;
  float* xr = x + row * d;
  const float* ar = a + row * d;
  double ss = 0;
  for (int c = threadIdx.x; c < d; c += blockDim.x) {
    const float v = xr[c] + ar[c];
    xr[c] = v;
    ss += double(v) * double(v);
  }
  ss = block_sum(ss, sh);
  const float inv = 1.f / sqrtf(float(ss / double(d)) + eps);
  float* yr = y + row * d;
  __nv_bfloat16* br = yb ? yb + row * d : nullptr;
  for (int c = threadIdx.x; c < d; c += blockDim.x) {
    const float v = g[c] * (xr[c] * inv);
    yr[c] = v;
    if (br) br[c] = __float2bfloat16_rn(v);
  }
}

// y = g * (x * inv) over a row of d4 float4s (the output of the vectorised norm kernels); br (may be
// null): the same row in bf16.
__device__ __forceinline__ void write_normed4(float4* yr, const float4* xr, const float4* g4, float inv, int d4,
                                              __nv_bfloat162* br) {
  for (int c = threadIdx.x; c < d4; c += blockDim.x) {
    const float4 v = xr[c], gg = g4[c];
    const float4 o = make_float4(gg.x * (v.x * inv), gg.y * (v.y * inv), gg.z * (v.z * inv), gg.w * (v.w * inv));
    yr[c] = o;
    if (br) {
      br[2 * c] = __floats2bfloat162_rn(o.x, o.y);
      br[2 * c + 1] = __floats2bfloat162_rn(o.z, o.w);
    }
  }
}

// The same with 16-byte accesses (d % 4 == 0, aligned rows), fewer threads per row.
__global__ void k_add_rmsnorm4(float* y, float* x, const float* a, int d, const float* g, float eps,
                               __nv_bfloat16* yb) {
  pdl_begin_prefetch(g, d);
  __shared__ double sh[32];
  const size_t row = blockIdx.x;
  const int d4 = d / 4;
  float4* xr = reinterpret_cast<float4*>(x + row * d);
  const float4* ar = reinterpret_cast<const float4*>(a + row * d);
  double ss = 0;
  for (int c = threadIdx.x; c < d4; c += blockDim.x) {
    float4 v = xr[c];
    const float4 b = ar[c];
    v.x += b.x, v.y += b.y, v.z += b.z, v.w += b.w;
    xr[c] = v;
    ss += double(v.x) * double(v.x) + double(v.y) * double(v.y) + double(v.z) * double(v.z) + double(v.w) * double(v.w);
  }
  ss = block_sum(ss, sh);
  write_normed4(reinterpret_cast<float4*>(y + row * d), xr, reinterpret_cast<const float4*>(g),
                1.f / sqrtf(float(ss / double(d)) + eps), d4,
                yb ? reinterpret_cast<__nv_bfloat162*>(yb + row * d) : nullptr);
}

__global__ void k_layernorm(float* y, const float* x, int d, const float* g, const float* b, float eps) {
  pdl_begin();
  __shared__ double sh[32];
  const size_t row = blockIdx.x;
  const float* xr = x + row * d;
  double s = 0;
  for (int c = threadIdx.x; c < d; c += blockDim.x) s += xr[c];
  s = block_sum(s, sh);
  const float mean = float(s / d);
  double v = 0;
  for (int c = threadIdx.x; c < d; c += blockDim.x) {
    const double t = double(xr[c]) - mean;
    v += t * t;
  }
  v = block_sum(v, sh);
  const float inv = 1.f / sqrtf(float(v / d) + eps);
  float* yr = y + row * d;
  for (int c = threadIdx.x; c < d; c += blockDim.x) yr[c] = (xr[c] - mean) * inv * g[c] + (b ? b[c] : 0.f);
}

// One thread per (row, pair); the angle depends on (row, pair) only.
__global__ void k_rope(float* x, int n, int heads, int hd, const int32_t* pos, int pos0, const float* inv_freq) {
  pdl_begin();
  const int half = hd / 2;
  const size_t total = size_t(n) * half;
  for (size_t t = blockIdx.x * size_t(blockDim.x) + threadIdx.x; t < total; t += size_t(gridDim.x) * blockDim.x) {
    const int i = int(t / half), c = int(t % half);
    const float p = float(pos ? pos[i] : pos0 + i);
    const float ang = p * inv_freq[c];
    float sn, cs;
    sincosf(ang, &sn, &cs);
    for (int h = 0; h < heads; ++h) {
      float* v = x + (size_t(i) * heads + h) * hd;
      const float a = v[c], b = v[c + half];
      v[c] = a * cs - b * sn;
      v[c + half] = b * cs + a * sn;
    }
  }
}

// q and k rotated in one kernel, one thread per (row, head, pair), then the KV-cache writes of the
// rotated k and of v for the same elements.
__global__ void k_rope_qk_cache(float* q, int hq, float* k, int hk, int n, int hd, int pos0, const float* inv_freq,
                                float* kdst, float* vdst, const float* vsrc) {
  pdl_begin_prefetch(inv_freq, hd / 2);
  const int half = hd / 2, hh = hq + hk;
  const size_t total = size_t(n) * hh * half;
  for (size_t t = blockIdx.x * size_t(blockDim.x) + threadIdx.x; t < total; t += size_t(gridDim.x) * blockDim.x) {
    const int c = int(t % half);
    const size_t ih = t / half;
    const int h = int(ih % hh), i = int(ih / hh);
    const float p = float(pos0 + i);
    const float ang = p * inv_freq[c];
    float sn, cs;
    sincosf(ang, &sn, &cs);
    if (h < hq) {
      float* v = q + (size_t(i) * hq + h) * hd;
      const float a = v[c], b = v[c + half];
      v[c] = a * cs - b * sn;
      v[c + half] = b * cs + a * sn;
    } else {
      const size_t off = (size_t(i) * hk + (h - hq)) * hd;
      float* v = k + off;
      const float a = v[c], b = v[c + half];
      const float ra = a * cs - b * sn, rb = b * cs + a * sn;
      v[c] = ra;
      v[c + half] = rb;
      if (kdst) {
        kdst[off + c] = ra;
        kdst[off + c + half] = rb;
      }
      if (vdst) {
        vdst[off + c] = vsrc[off + c];
        vdst[off + c + half] = vsrc[off + c + half];
      }
    }
  }
}

__global__ void k_rope_sections(float* x, int n, int heads, int hd, const int32_t* pos, const int* sec_of,
                                const float* inv_freq) {
  pdl_begin();
  const int half = hd / 2;
  const size_t total = size_t(n) * half;
  for (size_t t = blockIdx.x * size_t(blockDim.x) + threadIdx.x; t < total; t += size_t(gridDim.x) * blockDim.x) {
    const int i = int(t / half), c = int(t % half);
    const float ang = float(pos[size_t(sec_of[c]) * n + i]) * inv_freq[c];
    float sn, cs;
    sincosf(ang, &sn, &cs);
    for (int h = 0; h < heads; ++h) {
      float* v = x + (size_t(i) * heads + h) * hd;
      const float a = v[c], b = v[c + half];
      v[c] = a * cs - b * sn;
      v[c + half] = b * cs + a * sn;
    }
  }
}

// outb (may be null): also a bf16 copy of out, for the down projection that reads it next.
__global__ void k_swiglu(float* out, const float* g, const float* u, size_t n, __nv_bfloat16* outb) {
  pdl_begin();
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    const float a = g[i];
    const float v = a / (1.f + expf(-a)) * u[i];
    out[i] = v;
    if (outb) outb[i] = __float2bfloat16_rn(v);
  }
}

__global__ void k_gelu(float* y, const float* x, size_t n, bool tanh_approx) {
  pdl_begin();
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    const float v = x[i];
    y[i] = tanh_approx ? 0.5f * v * (1.f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)))
                       : 0.5f * v * (1.f + erff(v * 0.7071067811865476f));
  }
}

__global__ void k_add(float* y, const float* x, size_t n) {
  pdl_begin();
  const size_t n4 = n / 4;
  float4* y4 = reinterpret_cast<float4*>(y);
  const float4* x4 = reinterpret_cast<const float4*>(x);
  const bool vec = (reinterpret_cast<uintptr_t>(y) % 16 == 0) && (reinterpret_cast<uintptr_t>(x) % 16 == 0);
  const size_t stride = size_t(gridDim.x) * blockDim.x, t0 = blockIdx.x * size_t(blockDim.x) + threadIdx.x;
  if (vec) {
    for (size_t i = t0; i < n4; i += stride) {
      float4 a = y4[i];
      const float4 b = x4[i];
      a.x += b.x, a.y += b.y, a.z += b.z, a.w += b.w;
      y4[i] = a;
    }
    for (size_t i = n4 * 4 + t0; i < n; i += stride) y[i] += x[i];
  } else {
    for (size_t i = t0; i < n; i += stride) y[i] += x[i];
  }
}

__global__ void k_copy(float* y, const float* x, size_t n) {
  pdl_begin();
  const size_t stride = size_t(gridDim.x) * blockDim.x, t0 = blockIdx.x * size_t(blockDim.x) + threadIdx.x;
  if ((reinterpret_cast<uintptr_t>(y) | reinterpret_cast<uintptr_t>(x)) % 16 == 0) {
    const size_t n4 = n / 4;
    for (size_t i = t0; i < n4; i += stride) reinterpret_cast<float4*>(y)[i] = reinterpret_cast<const float4*>(x)[i];
    for (size_t i = n4 * 4 + t0; i < n; i += stride) y[i] = x[i];
  } else {
    for (size_t i = t0; i < n; i += stride) y[i] = x[i];
  }
}

__global__ void k_fill(float* y, size_t n, float v) {
  pdl_begin();
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) y[i] = v;
}

__global__ void k_zero_cols(float* x, int n, int row_len, int col0, int ncols) {
  pdl_begin();
  const size_t total = size_t(n) * ncols;
  for (size_t t = blockIdx.x * size_t(blockDim.x) + threadIdx.x; t < total; t += size_t(gridDim.x) * blockDim.x)
    x[(t / ncols) * row_len + col0 + t % ncols] = 0.f;
}

// One warp per group: the first index of the largest |value| (as the CPU's strict >).
__global__ void k_zero_top_dim(float* x, int row, int groups, int gdim) {
  pdl_begin();
  const int g = blockIdx.x;
  float* v = x + (size_t(row) * groups + g) * gdim;
  float best = -1.f;
  int bi = 0x7fffffff;
  for (int c = threadIdx.x; c < gdim; c += 32) {
    const float a = fabsf(v[c]);
    if (a > best) best = a, bi = c;
  }
  for (int o = 16; o > 0; o >>= 1) {
    const float ob = __shfl_xor_sync(0xffffffffu, best, o);
    const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (ob > best || (ob == best && oi < bi)) best = ob, bi = oi;
  }
  if (threadIdx.x == 0 && bi < gdim) v[bi] = 0.f;
}

__global__ void k_im2col1d(float* cols, const float* x, int C, int K, int stride, int pad, const int* seg_in,
                           const int* seg_len, const int* seg_out, int nseg, int total_rows) {
  pdl_begin();
  const size_t per = size_t(C) * K, total = size_t(total_rows) * per;
  for (size_t t = blockIdx.x * size_t(blockDim.x) + threadIdx.x; t < total; t += size_t(gridDim.x) * blockDim.x) {
    const int r = int(t / per);
    const int e = int(t % per), ci = e / K, k = e % K;
    int lo = 0, hi = nseg - 1;  // last s with seg_out[s] <= r
    while (lo < hi) {
      const int mid = (lo + hi + 1) / 2;
      if (seg_out[mid] <= r) lo = mid; else hi = mid - 1;
    }
    const int j = r - seg_out[lo];
    const int tt = j * stride + k - pad;
    cols[t] = (tt < 0 || tt >= seg_len[lo]) ? 0.f : x[size_t(seg_in[lo] + tt) * C + ci];
  }
}

__global__ void k_gather_rows(float* y, const float* x, int dim, const int32_t* idx, int n) {
  pdl_begin();
  const size_t total = size_t(n) * dim;
  for (size_t t = blockIdx.x * size_t(blockDim.x) + threadIdx.x; t < total; t += size_t(gridDim.x) * blockDim.x)
    y[t] = x[size_t(idx[t / dim]) * dim + t % dim];
}

// One thread per column walks the rows in order: repeated indices add up in the contract's order,
// with no atomics, so results do not depend on scheduling.
__global__ void k_scatter_add_rows(float* y, const float* x, int dim, const int32_t* idx, const float* scale, int n) {
  pdl_begin();
  for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < dim; c += gridDim.x * blockDim.x)
    for (int i = 0; i < n; ++i) y[size_t(idx[i]) * dim + c] += scale[i] * x[size_t(i) * dim + c];
}

__global__ void k_avgpool_rows(float* y, const float* x, int m, int dim, int k) {
  pdl_begin();
  const size_t total = size_t(m) * dim;
  for (size_t t = blockIdx.x * size_t(blockDim.x) + threadIdx.x; t < total; t += size_t(gridDim.x) * blockDim.x) {
    const size_t i = t / dim, c = t % dim;
    float s = 0.f;
    for (int j = 0; j < k; ++j) s += x[(i * k + j) * dim + c];
    y[t] = s / float(k);
  }
}


// ---- Φ_LLM statistics (OutRo's automatic sinks) ----
// row_max[i] = max_c |h[i,c]| and the k-th smallest |h| over all N = n·dim values, exactly: the key
// (the bits of |h|: a non-negative float's bits order like its value) of rank k. A key has 31 bits,
// chosen in three levels: a coarse bin (bits 30..20, the exponent and three mantissa bits), then
// bits 19..9, then 8..0.
// The common case reads h once. k_phi_sample histograms the coarse bins of every S-th row and
// brackets the sample's median in at most kPhiBracket bins; k_phi_full takes the row maxima, counts
// the keys below the bracket and in each of its bins, and copies the keys inside it to a buffer;
// when the k-th key is inside, the two finer levels (k_phi_pass 1, 2) read only that buffer. When
// the sample misled (the k-th key is outside the bracket) or the buffer overflowed, k_phi_pass runs
// all three levels over h (a radix select). Either way the key found is the same. The last block of
// each kernel to finish decides the next step in PhiState and leaves the histogram and the counters
// zero for the next call (the scratch is zeroed once when allocated).
constexpr int kPhiBins = 2048, kPhiThreads = 128, kPhiWarps = kPhiThreads / 32, kPhiBracket = 4;
constexpr int kPhiStage = 6144;  // keys a block of k_phi_full gathers in shared memory before copying out
constexpr int kPhiUnroll = 4;    // float4 loads a thread of k_phi_full has in flight per chunk
struct PhiState {
  uint32_t prefix, mask, k, count;  // bits fixed so far, which bits they are, the rank left in them, blocks done
  uint32_t mode;                    // 0: the finer levels over the buffer, 1: all levels over h
  uint32_t lo, nb;                  // the bracket: coarse bins [lo, lo + nb); nb = 0: no bracket
  uint32_t below, nbuf;             // keys below the bracket; keys inside it (copied while < cap)
  uint32_t in[kPhiBracket];         // keys in each bracket bin
};
__device__ __forceinline__ uint32_t phi_key(float v) { return __float_as_uint(v) & 0x7fffffffu; }

// f(v) for every value of row r[0, dim), each thread kPhiUnroll loads in flight before it uses them
// (a loop that loads, counts, loads again waits out the memory latency at every value).
template <class F>
__device__ __forceinline__ void phi_row(const float* r, int dim, bool vec, F&& f) {
  const int tid = threadIdx.x;
  if (vec) {
    const float4* r4 = reinterpret_cast<const float4*>(r);
    const int len = dim / 4;
    for (int c0 = 0; c0 < len; c0 += kPhiUnroll * kPhiThreads) {
      float4 v[kPhiUnroll];
#pragma unroll
      for (int u = 0; u < kPhiUnroll; ++u) {
        const int c = c0 + u * kPhiThreads + tid;
        if (c < len) v[u] = r4[c];
      }
#pragma unroll
      for (int u = 0; u < kPhiUnroll; ++u)
        if (c0 + u * kPhiThreads + tid < len) f(v[u].x), f(v[u].y), f(v[u].z), f(v[u].w);
    }
  } else {
    for (int c0 = 0; c0 < dim; c0 += kPhiUnroll * kPhiThreads) {
      float v[kPhiUnroll];
#pragma unroll
      for (int u = 0; u < kPhiUnroll; ++u) {
        const int c = c0 + u * kPhiThreads + tid;
        if (c < dim) v[u] = r[c];
      }
#pragma unroll
      for (int u = 0; u < kPhiUnroll; ++u)
        if (c0 + u * kPhiThreads + tid < dim) f(v[u]);
    }
  }
}
__device__ __forceinline__ bool phi_vec(const float* h, int dim) {
  return (dim & 3) == 0 && (reinterpret_cast<uintptr_t>(h) & 15) == 0;
}

// The last block: the global histogram's nb bins into shared memory (sh), every thread loading a few
// at once, and the global one cleared for the next call. A warp scanning the global bins itself
// waits out an L2 round trip per bin, tens of microseconds for 2048 of them.
__device__ void phi_take_hist(unsigned* sh, unsigned* hist, int nb) {
  constexpr int per = kPhiBins / kPhiThreads;
  unsigned v[per];
#pragma unroll
  for (int u = 0; u < per; ++u) {
    const int i = threadIdx.x + u * kPhiThreads;
    v[u] = i < nb ? __ldcg(&hist[i]) : 0u;
  }
#pragma unroll
  for (int u = 0; u < per; ++u) {
    const int i = threadIdx.x + u * kPhiThreads;
    if (i < nb) sh[i] = v[u], hist[i] = 0;
  }
  __syncthreads();
}

// One warp (lane 0..31): the bin of the shared histogram sh[0, nb) (nb a multiple of 32) holding the
// k-th counted key, and how many keys lie in the bins before it.
__device__ int phi_find_bin(const unsigned* hist, int nb, uint32_t k, uint32_t* before, int lane) {
  const int per = nb / 32;
  uint32_t mine = 0;
  for (int j = 0; j < per; ++j) mine += hist[lane * per + j];
  uint32_t incl = mine;
  for (int o = 1; o < 32; o <<= 1) {
    const uint32_t v = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += v;
  }
  const uint32_t excl = incl - mine;
  int bin = -1;
  uint32_t acc = 0;
  if (excl <= k && k < incl) {
    acc = excl;
    bin = lane * per;
    for (int j = 0; j < per; ++j, ++bin) {
      const uint32_t c = hist[bin];
      if (acc + c > k) break;
      acc += c;
    }
  }
  // The one lane that found it tells the others.
  const unsigned who = __ballot_sync(0xffffffffu, bin >= 0);
  const int src = who ? __ffs(who) - 1 : 0;
  bin = __shfl_sync(0xffffffffu, bin, src);
  acc = __shfl_sync(0xffffffffu, acc, src);
  *before = acc;
  return who ? bin : nb - 1;
}

// Per-warp shared histograms (4 x 2048 counters, 32 KB) merged into the global one; then whether this
// block is the last of the grid to finish.
__device__ bool phi_merge(unsigned (*shw)[kPhiBins], int nb, unsigned* hist, PhiState* st) {
  __shared__ bool last;
  __syncthreads();
  for (int i = threadIdx.x; i < nb; i += kPhiThreads) {
    unsigned c = 0;
    for (int w = 0; w < kPhiWarps; ++w) c += shw[w][i];
    if (c) atomicAdd(&hist[i], c);
  }
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(&st->count, 1u) == gridDim.x - 1;
  __syncthreads();
  if (last) __threadfence();
  return last;
}

// The sample: coarse-bin histogram of rows 0, S, 2S, ... (blocks stride over them); the last block
// brackets the ranks around the sample's median (a slack of m/64 + 16 of its m keys).
__global__ void __launch_bounds__(kPhiThreads) k_phi_sample(const float* h, int dim, int n, int S,
                                                            unsigned* hist, PhiState* st) {
  pdl_begin();
  __shared__ unsigned shw[kPhiWarps][kPhiBins];
  const int tid = threadIdx.x, lane = tid & 31;
  for (int i = tid; i < kPhiWarps * kPhiBins; i += kPhiThreads) (&shw[0][0])[i] = 0;
  __syncthreads();
  unsigned* wh = shw[tid >> 5];
  const int ms = (n + S - 1) / S;
  const bool vec = phi_vec(h, dim) && (size_t(S) * dim & 3) == 0;
  for (int j = blockIdx.x; j < ms; j += gridDim.x)
    phi_row(h + size_t(j) * S * dim, dim, vec, [&](float v) { atomicAdd(&wh[phi_key(v) >> 20], 1u); });
  if (!phi_merge(shw, kPhiBins, hist, st)) return;
  phi_take_hist(shw[0], hist, kPhiBins);
  if (tid >= 32) return;
  const uint32_t m = uint32_t(ms) * uint32_t(dim), ks = (m - 1) / 2, slack = m / 64 + 16;
  uint32_t before;
  const int lo = phi_find_bin(shw[0], kPhiBins, ks > slack ? ks - slack : 0u, &before, lane);
  const int hi = phi_find_bin(shw[0], kPhiBins, min(m - 1, ks + slack), &before, lane);
  if (lane == 0) {
    st->lo = uint32_t(lo);
    st->nb = hi - lo + 1 <= kPhiBracket ? uint32_t(hi - lo + 1) : 0u;
    st->count = 0;
  }
}

// The full pass, a warp per row: the row's maximum, keys below and inside the bracket counted, the
// inside ones staged in the warp's part of shared memory (a ballot gives each its slot: no atomics)
// and copied to buf (at most cap) when that part fills and at the end. The last block picks the mode.
constexpr int kPhiWarpStage = kPhiStage / kPhiWarps;  // keys a warp stages
__global__ void __launch_bounds__(kPhiThreads) k_phi_full(const float* h, int dim, int n, PhiState* st,
                                                          float* out, uint32_t* buf, uint32_t cap, uint32_t k0) {
  pdl_begin();
  __shared__ uint32_t stage[kPhiWarps][kPhiWarpStage];
  __shared__ uint32_t wcount[kPhiWarps], base;
  __shared__ uint32_t cnt[kPhiWarps][kPhiBracket + 1];
  __shared__ bool last;
  const int tid = threadIdx.x, lane = tid & 31, wid = tid >> 5;
  const uint32_t lo = st->lo, nb = st->nb, below_lane = (1u << lane) - 1u;
  uint32_t below = 0, in[kPhiBracket] = {0, 0, 0, 0}, wn = 0;  // wn: keys this warp has staged
  uint32_t* ws = stage[wid];
  auto wflush = [&]() {  // warp-wide: the warp's staged keys to buf
    uint32_t at = 0;
    if (lane == 0) at = atomicAdd(&st->nbuf, wn);
    at = __shfl_sync(0xffffffffu, at, 0);
    __syncwarp();
    for (uint32_t i = lane; i < wn; i += 32)
      if (at + i < cap) buf[at + i] = ws[i];
    __syncwarp();
    wn = 0;
  };
  auto take = [&](float v, bool valid, float& mx) {
    const float a = fabsf(v);
    if (valid) mx = mx < a ? a : mx;  // as the host's std::max(m, |x|): a NaN never wins
    const uint32_t b = phi_key(v), bin = b >> 20;
    bool inside = false;
    if (valid) {
      if (bin < lo) ++below;
      else if (bin - lo < nb) {
        inside = true;
#pragma unroll
        for (int d = 0; d < kPhiBracket; ++d) in[d] += bin - lo == uint32_t(d);
      }
    }
    const unsigned bal = __ballot_sync(0xffffffffu, inside);
    if (inside) ws[wn + __popc(bal & below_lane)] = b;
    wn += __popc(bal);
  };
  const bool vec = phi_vec(h, dim);
  const int len = vec ? dim / 4 : dim, step = 32 * kPhiUnroll;
  const uint32_t per_step = uint32_t(vec ? 4 * step : step);  // keys one step can stage, at most
  for (int row = blockIdx.x * kPhiWarps + wid; row < n; row += gridDim.x * kPhiWarps) {
    const float* r = h + size_t(row) * dim;
    float mx = 0.f;
    for (int c0 = 0; c0 < len; c0 += step) {  // every lane runs every step: the ballots see the whole warp
      if (vec) {
        float4 v[kPhiUnroll];
#pragma unroll
        for (int u = 0; u < kPhiUnroll; ++u) {
          const int c = c0 + 32 * u + lane;
          v[u] = c < len ? reinterpret_cast<const float4*>(r)[c] : make_float4(0.f, 0.f, 0.f, 0.f);
        }
#pragma unroll
        for (int u = 0; u < kPhiUnroll; ++u) {
          const bool valid = c0 + 32 * u + lane < len;
          take(v[u].x, valid, mx), take(v[u].y, valid, mx), take(v[u].z, valid, mx), take(v[u].w, valid, mx);
        }
      } else {
        float v[kPhiUnroll];
#pragma unroll
        for (int u = 0; u < kPhiUnroll; ++u) {
          const int c = c0 + 32 * u + lane;
          v[u] = c < len ? r[c] : 0.f;
        }
#pragma unroll
        for (int u = 0; u < kPhiUnroll; ++u) take(v[u], c0 + 32 * u + lane < len, mx);
      }
      if (wn > uint32_t(kPhiWarpStage) - per_step) wflush();
    }
    for (int o = 16; o > 0; o >>= 1) {
      const float b = __shfl_xor_sync(0xffffffffu, mx, o);
      mx = mx < b ? b : mx;
    }
    if (lane == 0) out[row] = mx;
  }
  // What the warps still hold: one atomic for the block, each warp copying at its offset.
  if (lane == 0) wcount[wid] = wn;
  __syncthreads();
  if (tid == 0) {
    uint32_t t = 0;
    for (int w = 0; w < kPhiWarps; ++w) t += wcount[w];
    base = t ? atomicAdd(&st->nbuf, t) : 0u;
  }
  __syncthreads();
  {
    uint32_t at = base;
    for (int w = 0; w < wid; ++w) at += wcount[w];
    for (uint32_t i = lane; i < wn; i += 32)
      if (at + i < cap) buf[at + i] = ws[i];
  }
  // The block's counts, summed over its warps, then into the state.
  for (int o = 16; o > 0; o >>= 1) {
    below += __shfl_xor_sync(0xffffffffu, below, o);
#pragma unroll
    for (int d = 0; d < kPhiBracket; ++d) in[d] += __shfl_xor_sync(0xffffffffu, in[d], o);
  }
  if (lane == 0) {
    cnt[wid][0] = below;
    for (int d = 0; d < kPhiBracket; ++d) cnt[wid][d + 1] = in[d];
  }
  __syncthreads();
  if (tid <= kPhiBracket) {
    uint32_t c = 0;
    for (int w = 0; w < kPhiWarps; ++w) c += cnt[w][tid];
    if (c) atomicAdd(tid == 0 ? &st->below : &st->in[tid - 1], c);
  }
  __threadfence();
  __syncthreads();
  if (tid == 0) last = atomicAdd(&st->count, 1u) == gridDim.x - 1;
  __syncthreads();
  if (!last || tid != 0) return;
  __threadfence();
  uint32_t mode = 1, prefix = 0, mask = 0, k = k0;
  const uint32_t bl = __ldcg(&st->below), nbuf = __ldcg(&st->nbuf);
  if (nb && nbuf <= cap && k0 >= bl) {
    uint32_t acc = bl;
    for (uint32_t d = 0; d < nb; ++d) {
      const uint32_t c = __ldcg(&st->in[d]);
      if (k0 < acc + c) {
        mode = 0, prefix = (lo + d) << 20, mask = 0x7ffu << 20, k = k0 - acc;
        break;
      }
      acc += c;
    }
  }
  st->mode = mode, st->prefix = prefix, st->mask = mask, st->k = k;
  st->below = 0;
  for (int d = 0; d < kPhiBracket; ++d) st->in[d] = 0;
  if (mode) st->nbuf = 0;
  st->count = 0;
}

// One level of the select: a histogram of the keys that carry the bits fixed so far, over the
// buffer (mode 0, levels 1 and 2) or over h (mode 1, blocks striding over the rows); the last block fixes the
// level's bits and, after level 2, writes the median.
__global__ void __launch_bounds__(kPhiThreads) k_phi_pass(const float* h, int dim, int n,
                                                          const uint32_t* buf, unsigned* hist, PhiState* st,
                                                          float* out, int level) {
  pdl_begin();
  const uint32_t mode = st->mode;
  if (mode == 0 && level == 0) return;  // the coarse bin is known already
  __shared__ unsigned shw[kPhiWarps][kPhiBins];
  const int tid = threadIdx.x, lane = tid & 31;
  const int shift = level == 0 ? 20 : level == 1 ? 9 : 0, width = level == 2 ? 9 : 11, nbins = 1 << width;
  const uint32_t prefix = st->prefix, mask = st->mask, bmask = uint32_t(nbins) - 1u;
  const uint32_t nbuf = mode == 0 ? st->nbuf : 0u;
  // Over the buffer, only as many blocks as it needs take part; the rest only arrive.
  const uint32_t per_block = 256u * kPhiThreads;  // keys a block takes from the buffer: few blocks, few merges
  const bool idle = mode == 0 && uint64_t(blockIdx.x) * per_block >= nbuf;
  if (!idle) {
    for (int i = tid; i < kPhiWarps * nbins; i += kPhiThreads) shw[i / nbins][i % nbins] = 0;
    __syncthreads();
    unsigned* wh = shw[tid >> 5];
    auto count = [&](uint32_t b) {
      if ((b & mask) == prefix) atomicAdd(&wh[(b >> shift) & bmask], 1u);
    };
    if (mode == 0) {  // keys as uint4, kPhiUnroll of them in flight per thread (buf is 16-byte aligned)
      const uint32_t nblk = min(gridDim.x, (nbuf + per_block - 1) / per_block), n4 = nbuf / 4;
      const uint4* b4 = reinterpret_cast<const uint4*>(buf);
      for (uint32_t i0 = blockIdx.x * kPhiThreads; i0 < n4; i0 += nblk * kPhiThreads * kPhiUnroll) {
        uint4 v[kPhiUnroll];
#pragma unroll
        for (int u = 0; u < kPhiUnroll; ++u) {
          const uint32_t i = i0 + u * nblk * kPhiThreads + tid;
          if (i < n4) v[u] = __ldcg(&b4[i]);
        }
#pragma unroll
        for (int u = 0; u < kPhiUnroll; ++u)
          if (i0 + u * nblk * kPhiThreads + tid < n4) count(v[u].x), count(v[u].y), count(v[u].z), count(v[u].w);
      }
      if (blockIdx.x == 0)
        for (uint32_t i = n4 * 4 + tid; i < nbuf; i += kPhiThreads) count(__ldcg(&buf[i]));
    } else {
      const bool vec = phi_vec(h, dim);
      for (int row = blockIdx.x; row < n; row += gridDim.x)
        phi_row(h + size_t(row) * dim, dim, vec, [&](float v) { count(phi_key(v)); });
    }
  }
  bool last;
  if (idle) {
    __shared__ bool l2;
    if (tid == 0) l2 = atomicAdd(&st->count, 1u) == gridDim.x - 1;
    __syncthreads();
    last = l2;
    if (last) __threadfence();
  } else {
    last = phi_merge(shw, nbins, hist, st);
  }
  if (!last) return;
  phi_take_hist(shw[0], hist, nbins);
  if (tid >= 32) return;
  const uint32_t k = __ldcg(&st->k);
  uint32_t before;
  const int bin = phi_find_bin(shw[0], nbins, k, &before, lane);
  if (lane == 0) {
    const uint32_t np = prefix | (uint32_t(bin) << shift);
    st->prefix = np;
    st->mask = mask | (bmask << shift);
    st->k = k - before;
    if (level == 2) {
      out[n] = __uint_as_float(np);
      st->nbuf = 0;
    }
    st->count = 0;
  }
}

}  // namespace

// (v, i) beats (w, j): j is empty (INT_MAX), or i is not and v is larger, or equal with a lower index.
__device__ __forceinline__ bool argmax_better(float v, int i, float w, int j) {
  return j == INT_MAX || (i != INT_MAX && (v > w || (v == w && i < j)));
}
// Lane 0 ends with the best (value, index) of the warp.
__device__ __forceinline__ void argmax_warp(float& bv, int& bi) {
  for (int o = 16; o > 0; o >>= 1) {
    const float w = __shfl_down_sync(0xffffffffu, bv, o);
    const int j = __shfl_down_sync(0xffffffffu, bi, o);
    if (!argmax_better(bv, bi, w, j)) {
      bv = w;
      bi = j;
    }
  }
}

// One block scans x: each thread keeps the largest of its strided values (the first it meets among
// equals, so the lowest index), then the block keeps the largest, the lower index on a tie.
__global__ void k_argmax(const float* x, int n, int32_t* out) {
  pdl_begin();
  __shared__ float sv[32];
  __shared__ int si[32];
  float bv = -INFINITY;
  int bi = INT_MAX;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const float v = x[i];
    if (v > bv || (bi == INT_MAX && !(v != v))) {  // the first non-NaN value, then strictly larger ones
      bv = v;
      bi = i;
    }
  }
  argmax_warp(bv, bi);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) {
    sv[warp] = bv;
    si[warp] = bi;
  }
  __syncthreads();
  if (warp == 0) {
    const int nw = (blockDim.x + 31) >> 5;
    bv = lane < nw ? sv[lane] : -INFINITY;
    bi = lane < nw ? si[lane] : INT_MAX;
    argmax_warp(bv, bi);
    if (lane == 0) *out = bi == INT_MAX ? 0 : bi;  // all NaN: 0, as the host scan
  }
}

void argmax(cudaStream_t s, const float* x, int n, int32_t* out) {
  launch("k_argmax", k_argmax, dim3(1), dim3(1024), 0, s, x, n, out);
  OUTRO_LAUNCHED("argmax");
}

namespace {
size_t phi_cap(int n, int dim) { return size_t(n) * size_t(dim) / 4 + 1024; }
// Bytes before the key buffer: histogram, state, the n + 1 outputs, rounded up to 16 (uint4 reads).
size_t phi_buf_offset(int n) {
  return (size_t(kPhiBins) * 4 + sizeof(PhiState) + (size_t(n) + 1) * 4 + 15) & ~size_t(15);
}
// Streaming multiprocessors of the current device (asked once per process and device).
int phi_sms() {
  static int cached[64] = {0};
  int dev = 0;
  cudaGetDevice(&dev);
  if (dev < 0 || dev >= 64) dev = 0;
  if (!cached[dev]) {
    int v = 0;
    cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev);
    cached[dev] = v > 0 ? v : 1;
  }
  return cached[dev];
}
}  // namespace

uint32_t phi_llm_last_mode(void* scratch) {
  PhiState st{};
  OUTRO_CK(cudaMemcpy(&st, static_cast<unsigned*>(scratch) + kPhiBins, sizeof st, cudaMemcpyDeviceToHost));
  return st.mode;
}

size_t phi_llm_scratch_bytes(int n, int dim) { return phi_buf_offset(n) + phi_cap(n, dim) * 4; }

float* phi_llm_stats(cudaStream_t s, const float* h, int n, int dim, void* scratch, cudaEvent_t* ev) {
  const size_t N = size_t(n) * size_t(dim);
  unsigned* hist = static_cast<unsigned*>(scratch);
  PhiState* st = reinterpret_cast<PhiState*>(hist + kPhiBins);
  float* out = reinterpret_cast<float*>(st + 1);
  uint32_t* buf = reinterpret_cast<uint32_t*>(static_cast<char*>(scratch) + phi_buf_offset(n));
  // Blocks: 8 per SM over the rows (each block strides over them, so its fixed costs, the shared
  // histogram's clearing and merging and its atomics on the state, are paid 8 times per SM, not per
  // row); the sample of about 256 rows, every S-th, a block each.
  const int sms = phi_sms(), blocks = std::min(n, 8 * sms);
  const int S = std::max(1, n / 256), ms = (n + S - 1) / S;
  auto mark = [&](int i) {
    if (ev) OUTRO_CK(cudaEventRecord(ev[i], s));
  };
  mark(0);
  launch("k_phi_sample", k_phi_sample, dim3(unsigned(std::min(ms, 8 * sms))), dim3(kPhiThreads), 0, s, h, dim, n, S,
         hist, st);
  mark(1);
  launch("k_phi_full", k_phi_full, dim3(unsigned(blocks)), dim3(kPhiThreads), 0, s, h, dim, n, st, out, buf,
         uint32_t(phi_cap(n, dim)), uint32_t((N - 1) / 2));
  mark(2);
  for (int level = 0; level < 3; ++level) {
    launch("k_phi_pass", k_phi_pass, dim3(unsigned(blocks)), dim3(kPhiThreads), 0, s, h, dim, n,
           static_cast<const uint32_t*>(buf), hist, st, out, level);
    mark(3 + level);
  }
  OUTRO_LAUNCHED("phi_llm_stats");
  return out;
}

// ---- OutRo: detection record, per-prompt sets, sink value, gated rotation ----
// rec[i] = row_max[i] >= tau; rec[n..n+3] = tau, median, count, largest max|h|. One block.
__global__ void k_phi_rec(float* rec, const float* stats, int n, float abs_thr, float med_mul) {
  pdl_begin();
  __shared__ float smax[32];
  __shared__ int scnt[32];
  const float m = stats[n];
  const float tau = fmaxf(abs_thr, med_mul * m);
  float top = 0.f;
  int cnt = 0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const float v = stats[i];
    const bool s = v >= tau;
    rec[i] = s ? 1.f : 0.f;
    cnt += s;
    top = fmaxf(top, v);
  }
  top = warp_max(top);
  for (int o = 16; o; o >>= 1) cnt += __shfl_xor_sync(0xffffffffu, cnt, o);
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  if (lane == 0) smax[w] = top, scnt[w] = cnt;
  __syncthreads();
  if (threadIdx.x == 0) {
    float t = 0.f;
    int c = 0;
    for (int i = 0; i < int(blockDim.x >> 5); ++i) t = fmaxf(t, smax[i]), c += scnt[i];
    rec[n] = tau, rec[n + 1] = m, rec[n + 2] = float(c), rec[n + 3] = t;
  }
}

__global__ void k_outro_sets(float* enh, float* done, float* cum, const float* rec, int n, bool enhance, bool once) {
  pdl_begin();
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    const bool s = rec[i] != 0.f;
    const bool e = enhance && s && done[i] == 0.f;
    enh[i] = e ? 1.f : 0.f;
    if (once && e) done[i] = 1.f;
    if (s) cum[i] = 1.f;
  }
}

// Each block lists the flagged rows in order (ballots over the flags, kMaxListed at most in shared
// memory), then each thread sums one column over the list in that order (past kMaxListed rows: over
// every flag). One block per 128 columns.
constexpr int kMaxListed = 2048;
__global__ void __launch_bounds__(128) k_masked_mean(float* out, const float* x, int n, int dim, const float* flags) {
  pdl_begin();
  __shared__ int list[kMaxListed];
  __shared__ int warp_n[4];
  __shared__ int total;
  const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
  if (tid == 0) total = 0;
  __syncthreads();
  for (int i0 = 0; i0 < n; i0 += 128) {
    const int i = i0 + tid;
    const bool f = i < n && flags[i] != 0.f;
    const unsigned b = __ballot_sync(0xffffffffu, f);
    if (lane == 0) warp_n[w] = __popc(b);
    __syncthreads();
    int off = total;
    for (int k = 0; k < w; ++k) off += warp_n[k];
    off += __popc(b & ((1u << lane) - 1u));
    if (f && off < kMaxListed) list[off] = i;
    __syncthreads();
    if (tid == 0) total += warp_n[0] + warp_n[1] + warp_n[2] + warp_n[3];
    __syncthreads();
  }
  const int cnt = total;
  const int c = blockIdx.x * 128 + tid;
  if (c >= dim) return;
  double acc = 0.0;
  if (cnt <= kMaxListed) {
    for (int k = 0; k < cnt; ++k) acc += x[size_t(list[k]) * dim + c];
  } else {
    for (int i = 0; i < n; ++i)
      if (flags[i] != 0.f) acc += x[size_t(i) * dim + c];
  }
  out[c] = cnt ? float(acc / cnt) : 0.f;
  if (c == 0) out[dim] = float(cnt);
}

// A warp per (row, head) task, warps striding over the tasks: o = z[row, head], v = vbar[head /
// group]. Each lane keeps its values of o and v in registers (hd <= 256: 8 at most), so z is read
// and written once; with VEC (hd a multiple of 4, z 16-byte aligned) a lane holds runs of 4 and moves
// them as float4. The rotated count is summed per warp and per block, then one atomic per block
// (one per task would queue ~10^5 atomics on one address).
template <bool VEC>
__global__ void k_gate_heads(float* z, int n, int heads, int kv_heads, int hd, const float* vbar, const float* excl,
                             int excl_n, float gamma, float temp, bool rescale, float* counter) {
  pdl_begin();
  if (vbar[size_t(kv_heads) * hd] == 0.f) return;
  __shared__ unsigned blk;
  if (threadIdx.x == 0) blk = 0;
  __syncthreads();
  const int warps = blockDim.x >> 5, lane = threadIdx.x & 31;
  const size_t tasks = size_t(n) * heads, stride = size_t(gridDim.x) * warps;
  // Lane's j-th value sits at column col(j): lane + 32 j, or 4 lane + 128 (j / 4) + j % 4 with VEC.
  auto col = [&](int j) { return VEC ? 4 * lane + 128 * (j >> 2) + (j & 3) : lane + 32 * j; };
  unsigned rotated = 0;
  for (size_t task = size_t(blockIdx.x) * warps + (threadIdx.x >> 5); task < tasks; task += stride) {
    const int i = int(task / heads), h = int(task % heads);
    if (excl && i < excl_n && excl[i] != 0.f) continue;
    float* o = z + task * hd;
    const float* v = vbar + size_t(h / (heads / kv_heads)) * hd;
    float a[8], b[8];
    if (VEC) {
#pragma unroll
      for (int q = 0; q < 2; ++q) {
        const int c = 4 * lane + 128 * q;
        const float4 x = c < hd ? *reinterpret_cast<const float4*>(o + c) : make_float4(0.f, 0.f, 0.f, 0.f);
        a[4 * q] = x.x, a[4 * q + 1] = x.y, a[4 * q + 2] = x.z, a[4 * q + 3] = x.w;
#pragma unroll
        for (int e = 0; e < 4; ++e) b[4 * q + e] = c < hd ? v[c + e] : 0.f;
      }
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int c = col(j);
        a[j] = c < hd ? o[c] : 0.f;
        b[j] = c < hd ? v[c] : 0.f;
      }
    }
    float oo = 0.f, vv = 0.f, ov = 0.f;
#pragma unroll
    for (int j = 0; j < 8; ++j) oo += a[j] * a[j], vv += b[j] * b[j], ov += a[j] * b[j];
    for (int s = 16; s; s >>= 1) {
      oo += __shfl_xor_sync(0xffffffffu, oo, s);
      vv += __shfl_xor_sync(0xffffffffu, vv, s);
      ov += __shfl_xor_sync(0xffffffffu, ov, s);
    }
    const float no = sqrtf(oo), nv = sqrtf(vv);
    const float cs = ov / (fmaxf(no, 1e-12f) * fmaxf(nv, 1e-12f));
    const float g = tanhf(fmaxf(cs, 0.f) / temp);
    const float coef = g * gamma * fabsf(ov) / (vv + 1e-8f);
    float nn = 0.f;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      a[j] += coef * b[j];
      nn += a[j] * a[j];
    }
    float sc = 1.f;
    if (rescale) {
      for (int s = 16; s; s >>= 1) nn += __shfl_xor_sync(0xffffffffu, nn, s);
      sc = no / (sqrtf(nn) + 1e-8f);
    }
    if (VEC) {
#pragma unroll
      for (int q = 0; q < 2; ++q) {
        const int c = 4 * lane + 128 * q;
        if (c < hd) {
          const float k = rescale ? sc : 1.f;
          *reinterpret_cast<float4*>(o + c) = make_float4(a[4 * q] * k, a[4 * q + 1] * k, a[4 * q + 2] * k, a[4 * q + 3] * k);
        }
      }
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int c = col(j);
        if (c < hd) o[c] = rescale ? a[j] * sc : a[j];
      }
    }
    rotated += cs > 0.f;
  }
  if (!counter) return;
  if (lane == 0 && rotated) atomicAdd(&blk, rotated);
  __syncthreads();
  if (threadIdx.x == 0 && blk) atomicAdd(counter, float(blk));  // an integer below 2^24: exact
}

void phi_detect(cudaStream_t s, float* rec, const float* h, int n, int dim, float abs_thr, float med_mul,
                void* scratch) {
  if (n <= 0) return;
  const float* stats = phi_llm_stats(s, h, n, dim, scratch, nullptr);
  launch("k_phi_rec", k_phi_rec, dim3(1), dim3(1024), 0, s, rec, stats, n, abs_thr, med_mul);
  OUTRO_LAUNCHED("phi_detect");
}

void outro_sets(cudaStream_t s, float* enh, float* done, float* cum, const float* rec, int n, bool enhance, bool once) {
  if (n <= 0) return;
  launch("k_outro_sets", k_outro_sets, dim3(blocks_for(size_t(n), 256)), dim3(256), 0, s, enh, done, cum, rec, n,
         enhance, once);
  OUTRO_LAUNCHED("outro_sets");
}

void masked_mean(cudaStream_t s, float* out, const float* x, int n, int dim, const float* flags) {
  if (dim <= 0) return;
  launch("k_masked_mean", k_masked_mean, dim3(unsigned((dim + 127) / 128)), dim3(128), 0, s, out, x, n, dim, flags);
  OUTRO_LAUNCHED("masked_mean");
}

void gate_heads(cudaStream_t s, float* z, int n, int heads, int kv_heads, int hd, const float* vbar, const float* excl,
                int excl_n, float gamma, float temp, bool rescale, float* counter) {
  if (n <= 0 || heads <= 0) return;
  const size_t tasks = size_t(n) * heads;
  // Up to 16 blocks of 8 warps per SM (of 132 on an H200), each warp taking several tasks.
  const size_t blocks = std::min<size_t>((tasks + 7) / 8, size_t(132) * 16);
  if ((hd & 3) == 0 && (reinterpret_cast<uintptr_t>(z) & 15) == 0)
    launch("k_gate_heads", k_gate_heads<true>, dim3(unsigned(blocks)), dim3(256), 0, s, z, n, heads, kv_heads, hd,
           vbar, excl, excl_n, gamma, temp, rescale, counter);
  else
    launch("k_gate_heads", k_gate_heads<false>, dim3(unsigned(blocks)), dim3(256), 0, s, z, n, heads, kv_heads, hd,
           vbar, excl, excl_n, gamma, temp, rescale, counter);
  OUTRO_LAUNCHED("gate_heads");
}

void embed(cudaStream_t s, float* out, const void* table, WType wt, int64_t cols, const int32_t* ids, int n) {
  if (n <= 0) return;
  dim3 grid(unsigned((cols + 255) / 256), unsigned(n));
  if (wt == WType::BF16)
    launch("k_embed", k_embed<__nv_bfloat16>, dim3(grid), dim3(256), 0, s, out, static_cast<const __nv_bfloat16*>(table), cols, ids, n);
  else
    launch("k_embed", k_embed<float>, dim3(grid), dim3(256), 0, s, out, static_cast<const float*>(table), cols, ids, n);
  OUTRO_LAUNCHED("embed");
}

void rmsnorm(cudaStream_t s, float* y, const float* x, int n, int d, const float* g, float eps, __nv_bfloat16* yb) {
  if (n <= 0) return;
  launch("k_rmsnorm", k_rmsnorm, dim3(n), dim3(d >= 2048 ? 1024 : d >= 1024 ? 512 : 128), 0, s, y, x, d, g, eps, yb);
  OUTRO_LAUNCHED("rmsnorm");
}

void add_rmsnorm(cudaStream_t s, float* y, float* x, const float* a, int n, int d, const float* g, float eps,
                 __nv_bfloat16* yb) {
  if (n <= 0) return;
  const bool vec = d % 4 == 0 && ((reinterpret_cast<uintptr_t>(y) | reinterpret_cast<uintptr_t>(x) |
                                   reinterpret_cast<uintptr_t>(a) | reinterpret_cast<uintptr_t>(g) |
                                   reinterpret_cast<uintptr_t>(yb)) % 16) == 0;
  if (vec)
    launch("k_add_rmsnorm", k_add_rmsnorm4, dim3(n), dim3(d >= 4096 ? 512 : d >= 1024 ? 256 : 128), 0, s, y, x, a, d,
           g, eps, yb);
  else
    launch("k_add_rmsnorm", k_add_rmsnorm, dim3(n), dim3(d >= 2048 ? 1024 : d >= 1024 ? 512 : 128), 0, s, y, x, a, d,
           g, eps, yb);
  OUTRO_LAUNCHED("add_rmsnorm");
}

void layernorm(cudaStream_t s, float* y, const float* x, int n, int d, const float* g, const float* b, float eps) {
  if (n <= 0) return;
  launch("k_layernorm", k_layernorm, dim3(n), dim3(d >= 1024 ? 512 : 128), 0, s, y, x, d, g, b, eps);
  OUTRO_LAUNCHED("layernorm");
}

void rope(cudaStream_t s, float* x, int n, int heads, int hd, const int32_t* pos, int pos0, const float* inv_freq) {
  const size_t t = size_t(n) * (hd / 2);
  if (!t) return;
  launch("k_rope", k_rope, dim3(blocks_for(t, 128)), dim3(128), 0, s, x, n, heads, hd, pos, pos0, inv_freq);
  OUTRO_LAUNCHED("rope");
}

void rope_qk_cache(cudaStream_t s, float* q, int hq, float* k, int hk, int n, int hd, int pos0,
                   const float* inv_freq, float* kdst, float* vdst, const float* vsrc) {
  const size_t t = size_t(n) * size_t(hq + hk) * (hd / 2);
  if (!t) return;
  launch("k_rope_qk_cache", k_rope_qk_cache, dim3(blocks_for(t, 128)), dim3(128), 0, s, q, hq, k, hk, n, hd, pos0,
         inv_freq, kdst, vdst, vsrc);
  OUTRO_LAUNCHED("rope_qk_cache");
}

void rope_sections(cudaStream_t s, float* x, int n, int heads, int hd, const int32_t* pos, const int* sec_of,
                   const float* inv_freq) {
  const size_t t = size_t(n) * (hd / 2);
  if (!t) return;
  launch("k_rope_sections", k_rope_sections, dim3(blocks_for(t, 128)), dim3(128), 0, s, x, n, heads, hd, pos, sec_of, inv_freq);
  OUTRO_LAUNCHED("rope_sections");
}

void swiglu(cudaStream_t s, float* out, const float* g, const float* u, size_t n, __nv_bfloat16* outb) {
  if (!n) return;
  launch("k_swiglu", k_swiglu, dim3(blocks_for(n, 256)), dim3(256), 0, s, out, g, u, n, outb);
  OUTRO_LAUNCHED("swiglu");
}

void gelu(cudaStream_t s, float* y, const float* x, size_t n, bool tanh_approx) {
  if (!n) return;
  launch("k_gelu", k_gelu, dim3(blocks_for(n, 256)), dim3(256), 0, s, y, x, n, tanh_approx);
  OUTRO_LAUNCHED("gelu");
}

void add(cudaStream_t s, float* y, const float* x, size_t n) {
  if (!n) return;
  launch("k_add", k_add, dim3(blocks_for((n + 3) / 4, 256)), dim3(256), 0, s, y, x, n);
  OUTRO_LAUNCHED("add");
}

void fill(cudaStream_t s, float* y, size_t n, float v) {
  if (!n) return;
  launch("k_fill", k_fill, dim3(blocks_for(n, 256)), dim3(256), 0, s, y, n, v);
  OUTRO_LAUNCHED("fill");
}

void copy(cudaStream_t s, float* y, const float* x, size_t n) {
  if (!n) return;
  launch("copy", k_copy, dim3(blocks_for((n + 3) / 4, 256)), dim3(256), 0, s, y, x, n);
}

void zero_cols(cudaStream_t s, float* x, int n, int row_len, int col0, int ncols) {
  const size_t t = size_t(n) * ncols;
  if (!t) return;
  launch("k_zero_cols", k_zero_cols, dim3(blocks_for(t, 256)), dim3(256), 0, s, x, n, row_len, col0, ncols);
  OUTRO_LAUNCHED("zero_cols");
}

void zero_top_dim(cudaStream_t s, float* x, int row, int groups, int gdim) {
  if (groups <= 0 || gdim <= 0) return;
  launch("k_zero_top_dim", k_zero_top_dim, dim3(unsigned(groups)), dim3(32), 0, s, x, row, groups, gdim);
  OUTRO_LAUNCHED("zero_top_dim");
}

void im2col1d(cudaStream_t s, float* cols, const float* x, int C, int K, int stride, int pad, const int* seg_in,
              const int* seg_len, const int* seg_out, int nseg, int total_rows) {
  const size_t t = size_t(total_rows) * C * K;
  if (!t || nseg <= 0) return;
  launch("k_im2col1d", k_im2col1d, dim3(blocks_for(t, 256)), dim3(256), 0, s, cols, x, C, K, stride, pad, seg_in, seg_len, seg_out, nseg,
                                                total_rows);
  OUTRO_LAUNCHED("im2col1d");
}

void gather_rows(cudaStream_t s, float* y, const float* x, int dim, const int32_t* idx, int n) {
  const size_t t = size_t(n) * dim;
  if (!t) return;
  launch("k_gather_rows", k_gather_rows, dim3(blocks_for(t, 256)), dim3(256), 0, s, y, x, dim, idx, n);
  OUTRO_LAUNCHED("gather_rows");
}

void scatter_add_rows(cudaStream_t s, float* y, const float* x, int dim, const int32_t* idx, const float* scale, int n) {
  if (n <= 0 || dim <= 0) return;
  launch("k_scatter_add_rows", k_scatter_add_rows, dim3(blocks_for(size_t(dim), 256)), dim3(256), 0, s, y, x, dim, idx,
         scale, n);
  OUTRO_LAUNCHED("scatter_add_rows");
}

void avgpool_rows(cudaStream_t s, float* y, const float* x, int m, int dim, int k) {
  const size_t t = size_t(m) * dim;
  if (!t) return;
  launch("k_avgpool_rows", k_avgpool_rows, dim3(blocks_for(t, 256)), dim3(256), 0, s, y, x, m, dim, k);
  OUTRO_LAUNCHED("avgpool_rows");
}

}  // namespace outro::cuda

namespace outro::cuda {
bool pdl_enabled() {
  static const bool on = [] {
    const char* e = std::getenv("OUTRO_CUDA_PDL");
    if (e && e[0] == '0') return false;
    int dev = 0, major = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) return false;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) return false;
    return major >= 9;
  }();
  return on;
}
}  // namespace outro::cuda
