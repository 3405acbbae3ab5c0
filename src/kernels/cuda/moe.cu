// Mixture-of-experts kernels (Backend::moe_route, moe_experts) with every decision on the device:
// routing (softmax, top k), the (row, slot) entries grouped by expert in tiles, the chosen experts'
// products read through a per-layer table of weight pointers — one GEMV per entry on the decode
// path, tensor-core GEMMs over tiles of one expert's entries on the prefill — and the combine that
// sums each row's k outputs in ascending expert index, so results do not depend on scheduling.
#include <mma.h>

#include <algorithm>
#include <climits>

#include "kernels/cuda/common.cuh"

namespace outro::cuda {

namespace {

using bf16 = __nv_bfloat16;

__device__ __forceinline__ float silu_mul(float g, float u) { return g / (1.f + expf(-g)) * u; }

// 8 bf16 weights (16 bytes, streamed past L1) as float32.
__device__ __forceinline__ void load8_w(const bf16* p, float (&f)[8]) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    f[2 * i] = __uint_as_float(w[i] << 16);
    f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
  }
}
__device__ __forceinline__ void load8_x(const float* p, float (&f)[8]) {
  const float4 a = __ldg(reinterpret_cast<const float4*>(p)), b = __ldg(reinterpret_cast<const float4*>(p) + 1);
  f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w, f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
}

__device__ __forceinline__ int entry_expert(const float* route, int entry, int k) {
  return int(route[size_t(entry / k) * 2 * k + entry % k]);
}

// ---- routing: one warp per row ----
constexpr int kRouteWarps = 4;

__global__ void k_moe_route(float* route, const float* logits, int n, int E, int k, bool norm) {
  pdl_begin();
  extern __shared__ float sh_p[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int i = blockIdx.x * kRouteWarps + warp;
  if (i >= n) return;
  float* p = sh_p + size_t(warp) * E;
  const float* z = logits + size_t(i) * E;
  float mx = -INFINITY;
  for (int e = lane; e < E; e += 32) mx = fmaxf(mx, z[e]);
  mx = warp_max(mx);
  float sum = 0.f;
  for (int e = lane; e < E; e += 32) {
    const float v = expf(z[e] - mx);
    p[e] = v;
    sum += v;
  }
  sum = warp_sum(sum);
  for (int e = lane; e < E; e += 32) {
    const float v = p[e] / sum;
    p[e] = v == v ? v : -0.5f;  // NaN: after every probability, in index order
  }
  __syncwarp();
  float* r = route + size_t(i) * 2 * k;
  float tot = 0.f;
  for (int j = 0; j < k; ++j) {
    float bv = -1.f;
    int bi = INT_MAX;
    for (int e = lane; e < E; e += 32)  // ascending within a lane: the first of equals stays
      if (p[e] > bv) bv = p[e], bi = e;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
      const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
      if (ov > bv || (ov == bv && oi < bi)) bv = ov, bi = oi;
    }
    if (lane == 0) {
      r[j] = float(bi);
      r[k + j] = bv;
      p[bi] = -2.f;  // taken
      tot += bv;
    }
    __syncwarp();
  }
  if (lane == 0 && norm)
    for (int j = 0; j < k; ++j) r[k + j] /= tot;
}

// ---- grouping (one block): entries (row i, slot j) as i·k + j, grouped by expert in tiles of kBM
// rows, each group padded with -1 to whole tiles; tile t belongs to tile_expert[t]. ----
constexpr int kBM = 32, kBN = 64, kBK = 32, kGemmThreads = 128;

__global__ void k_moe_align(const float* route, int n, int k, int E, int* sorted, int* tile_expert, int* ntiles) {
  pdl_begin();
  extern __shared__ int sh_i[];
  int *cnt = sh_i, *off = sh_i + E, *cur = sh_i + 2 * E;
  __shared__ int padded;
  const int total = n * k;
  for (int e = threadIdx.x; e < E; e += blockDim.x) cnt[e] = 0, cur[e] = 0;
  __syncthreads();
  for (int t = threadIdx.x; t < total; t += blockDim.x) atomicAdd(&cnt[entry_expert(route, t, k)], 1);
  __syncthreads();
  if (threadIdx.x == 0) {
    int acc = 0, tiles = 0;
    for (int e = 0; e < E; ++e) {
      off[e] = acc;
      const int nt = (cnt[e] + kBM - 1) / kBM;
      for (int q = 0; q < nt; ++q) tile_expert[tiles++] = e;
      acc += nt * kBM;
    }
    *ntiles = tiles;
    padded = acc;
  }
  __syncthreads();
  for (int t = threadIdx.x; t < padded; t += blockDim.x) sorted[t] = -1;
  __syncthreads();
  for (int t = threadIdx.x; t < total; t += blockDim.x) {
    const int e = entry_expert(route, t, k);
    sorted[off[e] + atomicAdd(&cur[e], 1)] = t;
  }
}

// ---- decode: one warp per output value of one entry, 8 warps a block ----
__global__ void __launch_bounds__(256) k_moe_gateup_gemv(float* h, const float* x, const float* route, int k,
                                                         const bf16* const* tab, int E, int D, int I) {
  pdl_begin();
  const int entry = blockIdx.y, r = blockIdx.x * 8 + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (r >= I) return;
  const int e = entry_expert(route, entry, k);
  const bf16* g = tab[e] + size_t(r) * D;
  const bf16* u = tab[E + e] + size_t(r) * D;
  const float* xr = x + size_t(entry / k) * D;
  float ag = 0.f, au = 0.f;
#pragma unroll 4
  for (int c = lane * 8; c < D; c += 32 * 8) {
    float wg[8], wu[8], xv[8];
    load8_w(g + c, wg);
    load8_w(u + c, wu);
    load8_x(xr + c, xv);
#pragma unroll
    for (int q = 0; q < 8; ++q) ag = fmaf(wg[q], xv[q], ag), au = fmaf(wu[q], xv[q], au);
  }
  ag = warp_sum(ag);
  au = warp_sum(au);
  if (lane == 0) h[size_t(entry) * I + r] = silu_mul(ag, au);
}

__global__ void __launch_bounds__(256) k_moe_down_gemv(float* out, const float* h, const float* route, int k,
                                                       const bf16* const* tab, int E, int D, int I) {
  pdl_begin();
  const int entry = blockIdx.y, r = blockIdx.x * 8 + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (r >= D) return;
  const bf16* w = tab[2 * E + entry_expert(route, entry, k)] + size_t(r) * I;
  const float* hr = h + size_t(entry) * I;
  float a = 0.f;
#pragma unroll 4
  for (int c = lane * 8; c < I; c += 32 * 8) {
    float wv[8], hv[8];
    load8_w(w + c, wv);
    load8_x(hr + c, hv);
#pragma unroll
    for (int q = 0; q < 8; ++q) a = fmaf(wv[q], hv[q], a);
  }
  a = warp_sum(a);
  if (lane == 0) out[size_t(entry) * D + r] = a;
}

// ---- prefill: tensor-core GEMMs (bf16 in, float32 accumulate) over a tile of kBM entries of one
// expert × kBN output columns; 4 warps, each 16 rows × 32 columns. ----
namespace wm = nvcuda::wmma;
using FragA = wm::fragment<wm::matrix_a, 16, 16, 16, bf16, wm::row_major>;
using FragB = wm::fragment<wm::matrix_b, 16, 16, 16, bf16, wm::col_major>;
using FragC = wm::fragment<wm::accumulator, 16, 16, 16, float>;
constexpr int kLd = kBK + 8;  // shared rows of bf16 (80 bytes: 16-byte aligned, fewer bank conflicts)
constexpr int kLdC = kBN + 4;

// Weight rows n0 .. n0 + kBN of w [rows, cols] at columns k0 .. k0 + kBK into s[kBN][kLd] (zeros past
// the edges; cols is a multiple of 8).
__device__ __forceinline__ void load_w_tile(bf16 (*s)[kLd], const bf16* w, int rows, int cols, int n0, int k0) {
#pragma unroll
  for (int q = 0; q < kBN * kBK / 8 / kGemmThreads; ++q) {
    const int idx = threadIdx.x + q * kGemmThreads, nr = idx / (kBK / 8), c = idx % (kBK / 8) * 8;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (n0 + nr < rows && k0 + c < cols) v = __ldg(reinterpret_cast<const uint4*>(w + size_t(n0 + nr) * cols + k0 + c));
    *reinterpret_cast<uint4*>(&s[nr][c]) = v;
  }
}

__global__ void __launch_bounds__(kGemmThreads) k_moe_gateup_gemm(bf16* hb, const float* x, const int* sorted,
                                                                  const int* tile_expert, const int* ntiles, int k,
                                                                  const bf16* const* tab, int E, int D, int I) {
  pdl_begin();
  const int t = blockIdx.x;
  if (t >= *ntiles) return;
  const int e = tile_expert[t], n0 = blockIdx.y * kBN;
  __shared__ __align__(128) bf16 As[kBM][kLd];
  __shared__ __align__(128) bf16 Gs[kBN][kLd];
  __shared__ __align__(128) bf16 Us[kBN][kLd];
  __shared__ __align__(128) float Cs[2][kBM][kLdC];
  __shared__ int rid[kBM];
  if (threadIdx.x < kBM) {
    const int s = sorted[t * kBM + threadIdx.x];
    rid[threadIdx.x] = s >= 0 ? s / k : -1;
  }
  __syncthreads();
  const int warp = threadIdx.x >> 5, wr = (warp >> 1) * 16, wc = (warp & 1) * 32;
  FragC cg[2], cu[2];
  for (int q = 0; q < 2; ++q) wm::fill_fragment(cg[q], 0.f), wm::fill_fragment(cu[q], 0.f);
  const bf16 *gw = tab[e], *uw = tab[E + e];
  for (int k0 = 0; k0 < D; k0 += kBK) {
    {  // x rows (float32 → bf16): 8 values a thread
      const int r = threadIdx.x / (kBK / 8), c = threadIdx.x % (kBK / 8) * 8, xr = rid[r];
      float v[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      if (xr >= 0 && k0 + c < D) load8_x(x + size_t(xr) * D + k0 + c, v);
#pragma unroll
      for (int q = 0; q < 8; ++q) As[r][c + q] = __float2bfloat16_rn(v[q]);
    }
    load_w_tile(Gs, gw, I, D, n0, k0);
    load_w_tile(Us, uw, I, D, n0, k0);
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 16) {
      FragA a;
      wm::load_matrix_sync(a, &As[wr][kk], kLd);
#pragma unroll
      for (int q = 0; q < 2; ++q) {
        FragB b;
        wm::load_matrix_sync(b, &Gs[wc + 16 * q][kk], kLd);
        wm::mma_sync(cg[q], a, b, cg[q]);
        wm::load_matrix_sync(b, &Us[wc + 16 * q][kk], kLd);
        wm::mma_sync(cu[q], a, b, cu[q]);
      }
    }
    __syncthreads();
  }
  for (int q = 0; q < 2; ++q) {
    wm::store_matrix_sync(&Cs[0][wr][wc + 16 * q], cg[q], kLdC, wm::mem_row_major);
    wm::store_matrix_sync(&Cs[1][wr][wc + 16 * q], cu[q], kLdC, wm::mem_row_major);
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < kBM * kBN; idx += kGemmThreads) {
    const int r = idx / kBN, c = idx % kBN;
    if (n0 + c < I) hb[size_t(t * kBM + r) * I + n0 + c] = __float2bfloat16_rn(silu_mul(Cs[0][r][c], Cs[1][r][c]));
  }
}

__global__ void __launch_bounds__(kGemmThreads) k_moe_down_gemm(float* out, const bf16* hb, const int* sorted,
                                                                const int* tile_expert, const int* ntiles,
                                                                const bf16* const* tab, int E, int D, int I) {
  pdl_begin();
  const int t = blockIdx.x;
  if (t >= *ntiles) return;
  const int e = tile_expert[t], n0 = blockIdx.y * kBN;
  __shared__ __align__(128) bf16 As[kBM][kLd];
  __shared__ __align__(128) bf16 Ws[kBN][kLd];
  __shared__ __align__(128) float Cs[kBM][kLdC];
  const int warp = threadIdx.x >> 5, wr = (warp >> 1) * 16, wc = (warp & 1) * 32;
  FragC acc[2];
  for (int q = 0; q < 2; ++q) wm::fill_fragment(acc[q], 0.f);
  const bf16* dw = tab[2 * E + e];
  const bf16* h0 = hb + size_t(t) * kBM * I;
  for (int k0 = 0; k0 < I; k0 += kBK) {
    {  // kBM × kBK bf16 of h: one 16-byte chunk a thread
      const int r = threadIdx.x / (kBK / 8), c = threadIdx.x % (kBK / 8) * 8;
      uint4 v = make_uint4(0, 0, 0, 0);
      if (k0 + c < I) v = *reinterpret_cast<const uint4*>(h0 + size_t(r) * I + k0 + c);
      *reinterpret_cast<uint4*>(&As[r][c]) = v;
    }
    load_w_tile(Ws, dw, D, I, n0, k0);
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 16) {
      FragA a;
      wm::load_matrix_sync(a, &As[wr][kk], kLd);
#pragma unroll
      for (int q = 0; q < 2; ++q) {
        FragB b;
        wm::load_matrix_sync(b, &Ws[wc + 16 * q][kk], kLd);
        wm::mma_sync(acc[q], a, b, acc[q]);
      }
    }
    __syncthreads();
  }
  for (int q = 0; q < 2; ++q) wm::store_matrix_sync(&Cs[wr][wc + 16 * q], acc[q], kLdC, wm::mem_row_major);
  __syncthreads();
  for (int idx = threadIdx.x; idx < kBM * kBN; idx += kGemmThreads) {
    const int r = idx / kBN, c = idx % kBN, s = sorted[t * kBM + r];
    if (s >= 0 && n0 + c < D) out[size_t(s) * D + n0 + c] = Cs[r][c];
  }
}

// ---- combine: y[i] = Σ over row i's slots in ascending expert index of weight · out[i·k + slot] ----
__global__ void k_moe_combine(float* y, const float* out, const float* route, int k, int D) {
  pdl_begin();
  __shared__ int ord[kMoeMaxK];
  __shared__ float wt[kMoeMaxK];
  const int i = blockIdx.x;
  const float* r = route + size_t(i) * 2 * k;
  if (threadIdx.x == 0) {
    for (int j = 0; j < k; ++j) {  // insertion sort of the slots by expert
      int q = j;
      while (q > 0 && r[ord[q - 1]] > r[j]) ord[q] = ord[q - 1], --q;
      ord[q] = j;
    }
    for (int j = 0; j < k; ++j) wt[j] = r[k + ord[j]];
  }
  __syncthreads();
  for (int c = threadIdx.x; c < D; c += blockDim.x) {
    float a = 0.f;
    for (int j = 0; j < k; ++j) a += wt[j] * out[(size_t(i) * k + ord[j]) * D + c];
    y[size_t(i) * D + c] = a;
  }
}

size_t align256(size_t b) { return (b + 255) & ~size_t(255); }

}  // namespace

void moe_route(cudaStream_t s, float* route, const float* logits, int n, int E, int k, bool norm) {
  if (n <= 0) return;
  launch("k_moe_route", k_moe_route, dim3(unsigned((n + kRouteWarps - 1) / kRouteWarps)), dim3(32 * kRouteWarps),
         size_t(kRouteWarps) * E * sizeof(float), s, route, logits, n, E, k, norm);
  OUTRO_LAUNCHED("moe_route");
}

int moe_max_tiles(int n, int k, int E) { return (n * k + kBM - 1) / kBM + std::min(E, n * k); }

size_t moe_scratch_bytes(int n, int k, int E, int D, int I) {
  const size_t entries = size_t(n) * k, tiles = size_t(moe_max_tiles(n, k, E));
  if (n <= kMoeGemvMaxRows)  // h [entries, I] float32, out [entries, D]
    return align256(entries * I * 4) + align256(entries * D * 4);
  return align256(tiles * kBM * 4) + align256(tiles * 4) + align256(4) + align256(tiles * kBM * I * 2) +
         align256(entries * D * 4);
}

void moe_experts(cudaStream_t s, float* y, const float* x, int n, int k, const float* route, const void* const* table,
                 int E, int D, int I, void* scratch) {
  if (n <= 0) return;
  const bf16* const* tab = reinterpret_cast<const bf16* const*>(table);
  const int entries = n * k;
  char* p = static_cast<char*>(scratch);
  if (n <= kMoeGemvMaxRows) {
    float* h = reinterpret_cast<float*>(p);
    float* out = reinterpret_cast<float*>(p + align256(size_t(entries) * I * 4));
    launch("k_moe_gateup_gemv", k_moe_gateup_gemv, dim3(unsigned((I + 7) / 8), unsigned(entries)), dim3(256), 0, s, h,
           x, route, k, tab, E, D, I);
    launch("k_moe_down_gemv", k_moe_down_gemv, dim3(unsigned((D + 7) / 8), unsigned(entries)), dim3(256), 0, s, out,
           static_cast<const float*>(h), route, k, tab, E, D, I);
    launch("k_moe_combine", k_moe_combine, dim3(unsigned(n)), dim3(256), 0, s, y, static_cast<const float*>(out),
           route, k, D);
    OUTRO_LAUNCHED("moe_experts (decode)");
    return;
  }
  const int tiles = moe_max_tiles(n, k, E);
  int* sorted = reinterpret_cast<int*>(p);
  p += align256(size_t(tiles) * kBM * 4);
  int* tile_expert = reinterpret_cast<int*>(p);
  p += align256(size_t(tiles) * 4);
  int* ntiles = reinterpret_cast<int*>(p);
  p += align256(4);
  bf16* hb = reinterpret_cast<bf16*>(p);
  p += align256(size_t(tiles) * kBM * I * 2);
  float* out = reinterpret_cast<float*>(p);
  launch("k_moe_align", k_moe_align, dim3(1), dim3(1024), size_t(3) * E * sizeof(int), s, route, n, k, E, sorted,
         tile_expert, ntiles);
  launch("k_moe_gateup_gemm", k_moe_gateup_gemm, dim3(unsigned(tiles), unsigned((I + kBN - 1) / kBN)),
         dim3(kGemmThreads), 0, s, hb, x, static_cast<const int*>(sorted), static_cast<const int*>(tile_expert),
         static_cast<const int*>(ntiles), k, tab, E, D, I);
  launch("k_moe_down_gemm", k_moe_down_gemm, dim3(unsigned(tiles), unsigned((D + kBN - 1) / kBN)), dim3(kGemmThreads),
         0, s, out, static_cast<const bf16*>(hb), static_cast<const int*>(sorted),
         static_cast<const int*>(tile_expert), static_cast<const int*>(ntiles), tab, E, D, I);
  launch("k_moe_combine", k_moe_combine, dim3(unsigned(n)), dim3(256), 0, s, y, static_cast<const float*>(out), route,
         k, D);
  OUTRO_LAUNCHED("moe_experts (prefill)");
}

}  // namespace outro::cuda
