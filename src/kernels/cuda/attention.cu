// Attention kernels of the CUDA backend. Every kernel applies the mask policy per query row from
// AttnDev (causal; OutRo's sink-out rows that see keys [0, sinkout_end); or non-causal segments of
// the encoders) without building an N x N mask:
//  - k_attn_mma: flash-style prefill on tensor cores (mma.sync m16n8k16 bf16, float32 accumulators
//    and softmax), 128 query rows x 64-key tiles double-buffered with cp.async, for head_dim 64 and
//    128 on sm_80 and newer. K and V are first converted once to bf16 (the cache itself is float32).
//  - k_attn_rows: the portable kernel (any head_dim <= 256, any GPU): one block per (row, head, split)
//    with an online softmax over its share of the keys; the decode path, split over the context so
//    long contexts fill the GPU; the last split block of each (row, head) merges the splits (or
//    k_attn_combine, when no counters are given).
//  - k_attn_dec: decode (n_new x H / KV <= 16 query rows per KV head, head_dim 64 or 128): one block
//    per KV head and share of the context serves all the query heads of its group, so K and V are
//    read once; split over the context, the last block of each KV head merges the splits.
//  - k_attn_pattern: the probabilities [H, n_new, total], only when an observer asks for them.
#include <algorithm>
#include <cfloat>
#include <climits>

#include <cooperative_groups.h>

#include "kernels/cuda/common.cuh"

namespace outro::cuda {

namespace {

__device__ __forceinline__ void row_range(const AttnDev& p, int r, int& lo, int& hi) {
  const int total = p.past + p.n_new;
  if (r >= p.n_new) {
    lo = hi = 0;
    return;
  }
  if (!p.causal) {
    lo = 0, hi = p.n_new;
    if (p.segments && p.n_segments > 0) {
      int a = 0, b = p.n_segments - 1;  // last s with segments[s] <= r
      while (a < b) {
        const int m = (a + b + 1) >> 1;
        if (p.segments[m] <= r) a = m; else b = m - 1;
      }
      lo = p.segments[a], hi = p.segments[a + 1];
    }
    return;
  }
  const int pos = p.past + r;
  lo = 0, hi = pos + 1;
  if (p.sinkout_mask && p.sinkout_mask[r] != 0.f) {
    const int e = p.sinkout_end < total ? p.sinkout_end : total;
    if (e > hi) hi = e;
  }
}

// ---------------- portable row kernel ----------------

constexpr int kRowThreads = 128, kRowChunk = 256;

int row_splits(const AttnDev& p) {
  const int total = p.past + p.n_new;
  const long rows = long(p.n_new) * p.n_heads;
  if (rows >= 264) return 1;
  const int want = int((528 + rows - 1) / rows);
  const int most = (total + 31) / 32;
  return want < most ? (want > 1 ? want : 1) : (most > 1 ? most : 1);
}

__device__ __forceinline__ float block_max_f(float v, float* sh) {
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) sh[w] = v;
  __syncthreads();
  float r = sh[0];
  for (int i = 1; i < kRowThreads / 32; ++i) r = fmaxf(r, sh[i]);
  return r;
}

// grid (n_new * nsplit, H). partial: [n_new, H, nsplit, hd + 2] (m, l, acc) when nsplit > 1.
// Scores: a warp per key, lanes over dims. P·V: each warp takes every 4th key, lanes own dims;
// the warps' sums meet in shared memory at the end.
__global__ void __launch_bounds__(kRowThreads) k_attn_rows(float* z, const float* q, const float* kc, const float* vc,
                                                           AttnDev p, int nsplit, float* partial, unsigned* counters) {
  constexpr int W = kRowThreads / 32;
  __shared__ float qs[256];
  __shared__ float sc[kRowChunk];
  __shared__ float red[32];
  __shared__ float pv[W][256];
  const int r = blockIdx.x / nsplit, sp = blockIdx.x % nsplit, h = blockIdx.y;
  const int H = p.n_heads, KV = p.n_kv, hd = p.head_dim, kvh = h / (H / KV);
  // The cached keys and values before this call's rows depend on no running kernel: start bringing
  // this block's share into L2 before waiting for the previous kernel (a hint; causal rows only).
  pdl_trigger();
  if (p.causal && !p.sinkout_mask && r < p.n_new) {
    const int hi0 = p.past + r + 1, per0 = (hi0 + nsplit - 1) / nsplit;
    const int a0 = sp * per0, a1 = min(min(hi0, a0 + per0), p.past);
    const int lines = (hd * 4 + 127) / 128;
    const size_t ks = size_t(KV) * hd;
    for (int t = threadIdx.x; t < (a1 - a0) * lines * 2; t += kRowThreads) {
      const int key = a0 + t / (2 * lines), rem = t % (2 * lines);
      const float* base = (rem < lines ? kc : vc) + size_t(key) * ks + size_t(kvh) * hd;
      asm volatile("prefetch.global.L2 [%0];" ::"l"(reinterpret_cast<const char*>(base) + (rem % lines) * 128));
    }
  }
  pdl_wait();
  int lo, hi;
  row_range(p, r, lo, hi);
  const int len = hi - lo, per = (len + nsplit - 1) / nsplit;
  const int k0 = lo + sp * per, k1 = min(hi, k0 + per);
  const float* qr = q + (size_t(r) * H + h) * hd;
  for (int d = threadIdx.x; d < hd; d += kRowThreads) qs[d] = qr[d];
  __syncthreads();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float m = -FLT_MAX, l = 0.f;
  float acc[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) acc[i] = 0.f;
  const size_t kstride = size_t(KV) * hd;
  for (int c0 = k0; c0 < k1; c0 += kRowChunk) {
    const int cn = min(kRowChunk, k1 - c0);
    // Each warp takes 8 consecutive keys at a time, their loads all in flight before the sums.
    constexpr int KU = 8;
    for (int j0 = warp * KU; j0 < cn; j0 += W * KU) {
      float sv[KU];
#pragma unroll
      for (int u = 0; u < KU; ++u) {
        const int j = min(j0 + u, cn - 1);
        const float* kr = kc + size_t(c0 + j) * kstride + size_t(kvh) * hd;
        float a = 0.f;
#pragma unroll
        for (int i = 0; i < 8; ++i)  // d = lane + 32 i < hd <= 256, in the order of d
          if (lane + 32 * i < hd) a += qs[lane + 32 * i] * kr[lane + 32 * i];
        sv[u] = a;
      }
#pragma unroll
      for (int u = 0; u < KU; ++u) {
        const float t = warp_sum(sv[u]);
        if (lane == 0 && j0 + u < cn) sc[j0 + u] = t * p.scale;
      }
    }
    __syncthreads();
    float mx = -FLT_MAX;
    for (int j = threadIdx.x; j < cn; j += kRowThreads) mx = fmaxf(mx, sc[j]);
    mx = block_max_f(mx, red);
    const float mn = fmaxf(m, mx), corr = expf(m - mn);
    float ps = 0.f;
    for (int j = threadIdx.x; j < cn; j += kRowThreads) {
      const float e = expf(sc[j] - mn);
      sc[j] = e;
      ps += e;
    }
    ps = block_sum(ps, red);  // its barriers also publish sc
    l = l * corr + ps;
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[i] *= corr;
    const float* vb = vc + size_t(c0) * kstride + size_t(kvh) * hd;
#pragma unroll 8
    for (int j = warp; j < cn; j += W) {
      const float pj = sc[j];
      const float* vr = vb + size_t(j) * kstride;
#pragma unroll
      for (int i = 0; i < 8; ++i)
        if (lane + 32 * i < hd) acc[i] = fmaf(pj, vr[lane + 32 * i], acc[i]);
    }
    m = mn;
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 8; ++i)
    if (lane + 32 * i < hd) pv[warp][lane + 32 * i] = acc[i];
  __syncthreads();
  for (int d = threadIdx.x; d < hd; d += kRowThreads) {
    float a = 0.f;
#pragma unroll
    for (int w = 0; w < W; ++w) a += pv[w][d];
    if (nsplit == 1) {
      z[(size_t(r) * H + h) * hd + d] = l > 0.f ? a / l : 0.f;
    } else {
      float* pr = partial + ((size_t(r) * H + h) * nsplit + sp) * (hd + 2);
      if (d == 0) pr[0] = m, pr[1] = l;
      pr[2 + d] = a;
    }
  }
  if (nsplit == 1 || !counters) return;
  // The last split of (row, head) to finish merges them all (as k_attn_combine) and resets its counter.
  __shared__ bool last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    unsigned* ctr = counters + (size_t(r) * H + h);
    last = atomicAdd(ctr, 1u) == unsigned(nsplit - 1);
    if (last) *ctr = 0u;
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  const float* pr = partial + (size_t(r) * H + h) * nsplit * (hd + 2);
  float M = -FLT_MAX;
  for (int s = 0; s < nsplit; ++s)
    if (__ldcg(pr + s * (hd + 2) + 1) > 0.f) M = fmaxf(M, __ldcg(pr + s * (hd + 2)));
  for (int d = threadIdx.x; d < hd; d += kRowThreads) {
    float L = 0.f, a = 0.f;
    for (int s = 0; s < nsplit; ++s) {
      const float* ps = pr + s * (hd + 2);
      const float ls = __ldcg(ps + 1);
      if (ls <= 0.f) continue;
      const float w = expf(__ldcg(ps) - M);
      L += ls * w;
      a += __ldcg(ps + 2 + d) * w;
    }
    z[(size_t(r) * H + h) * hd + d] = L > 0.f ? a / L : 0.f;
  }
}

// grid (n_new, H), hd threads (rounded up to 32).
__global__ void k_attn_combine(float* z, const float* partial, int H, int hd, int nsplit) {
  pdl_begin();
  const int r = blockIdx.x, h = blockIdx.y, d = threadIdx.x;
  const float* pr = partial + (size_t(r) * H + h) * nsplit * (hd + 2);
  float M = -FLT_MAX;
  for (int s = 0; s < nsplit; ++s)
    if (pr[s * (hd + 2) + 1] > 0.f) M = fmaxf(M, pr[s * (hd + 2)]);
  float L = 0.f, a = 0.f;
  for (int s = 0; s < nsplit; ++s) {
    const float* ps = pr + s * (hd + 2);
    if (ps[1] <= 0.f) continue;
    const float w = expf(ps[0] - M);
    L += ps[1] * w;
    if (d < hd) a += ps[2 + d] * w;
  }
  if (d < hd) z[(size_t(r) * H + h) * hd + d] = L > 0.f ? a / L : 0.f;
}

// grid (n_new, H): probabilities of row r, head h over all total keys (zeros outside the range).
__global__ void k_attn_pattern(float* pat, const float* q, const float* kc, AttnDev p) {
  __shared__ float red[32];
  pdl_begin();
  const int r = blockIdx.x, h = blockIdx.y;
  const int H = p.n_heads, KV = p.n_kv, hd = p.head_dim, kvh = h / (H / KV), total = p.past + p.n_new;
  int lo, hi;
  row_range(p, r, lo, hi);
  const float* qr = q + (size_t(r) * H + h) * hd;
  auto score = [&](int j) {
    const float* kr = kc + (size_t(j) * KV + kvh) * hd;
    float s = 0.f;
    for (int d = 0; d < hd; ++d) s += qr[d] * kr[d];
    return s * p.scale;
  };
  float mx = -FLT_MAX;
  for (int j = lo + threadIdx.x; j < hi; j += blockDim.x) mx = fmaxf(mx, score(j));
  mx = block_max_f(mx, red);
  float sum = 0.f;
  for (int j = lo + threadIdx.x; j < hi; j += blockDim.x) sum += expf(score(j) - mx);
  sum = block_sum(sum, red);
  const float inv = sum > 0.f ? 1.f / sum : 0.f;
  float* row = pat + (size_t(h) * p.n_new + r) * total;
  for (int j = threadIdx.x; j < total; j += blockDim.x) row[j] = (j >= lo && j < hi) ? expf(score(j) - mx) * inv : 0.f;
}

// ---------------- decode kernel (one KV head and all its query rows per block) ----------------
// grid (nsplit, KV), kDecThreads threads. A block takes KV head kvh and every query row that reads it:
// the n_new rows x G = H / KV heads of its group (QR = n_new * G <= kDecMaxQR), over its share of the
// keys [K0, K1) (the union of the rows' ranges; each row masks the keys outside its own range), so
// each cached key and value is read once per step instead of once per query head. Keys go in chunks
// of kDecChunk (32 when a block has at most 32 keys, else 64); K and V of a chunk are loaded
// together (16-byte loads), then:
//  - scores: 8 lanes per key (HD / 32 floats each), 4 keys per warp pass, the 8 partial sums per
//    query row meet by shuffles; the row's score goes to shared memory;
//  - softmax: a warp per query row, online (running max m and sum l per row);
//  - P·V: warp w owns dims [w HD / 8, (w + 1) HD / 8) (HD / 32 lanes of float4), the warp's other
//    lanes take every (32 / (HD / 32))-th key; they meet by shuffles at the end.
// nsplit > 1: each block writes (m, l, acc) per row; the last block of the KV head to finish merges
// the splits in a fixed order (the result does not depend on which block is last).
constexpr int kDecThreads = 256, kDecMaxQR = 16, kDecMaxSplit = 32, kDecMaxCluster = 8;

template <int HD, bool CLUSTER, int kDecChunk>
__global__ void __launch_bounds__(kDecThreads) k_attn_dec(float* z, const float* q, const float* kc, const float* vc,
                                                          AttnDev p, int nsplit, float* partial, unsigned* counters) {
  constexpr int W = kDecThreads / 32, NV = HD / 32, SP = kDecChunk / W / 4;
  constexpr int DL = HD / 32, KG = 32 / DL, VK = kDecChunk / KG;
  __shared__ __align__(16) float qs[kDecMaxQR][HD];
  __shared__ float sc[kDecMaxQR][kDecChunk];
  __shared__ float m_s[kDecMaxQR], l_s[kDecMaxQR], c_s[kDecMaxQR];
  __shared__ int lo_s[kDecMaxQR], hi_s[kDecMaxQR];
  __shared__ int s_k0, s_k1;
  __shared__ float wsp[kDecMaxSplit][kDecMaxQR];
  __shared__ float Ls[kDecMaxQR];
  const int sp = blockIdx.x, kvh = blockIdx.y, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int H = p.n_heads, KV = p.n_kv, G = H / KV, QR = p.n_new * G;
  const size_t kstride = size_t(KV) * HD;
  pdl_trigger();
  // The cached keys and values before this call's rows depend on no running kernel: start bringing
  // this block's share into L2 before waiting for the previous kernel (a hint; plain causal rows).
  if (p.causal && !p.sinkout_mask) {
    const int K1 = p.past + p.n_new, per = (K1 + nsplit - 1) / nsplit;
    const int a0 = sp * per, a1 = min(min(K1, a0 + per), p.past);
    constexpr int lines = HD * 4 / 128;
    for (int t = tid; t < (a1 - a0) * lines * 2; t += kDecThreads) {
      const int key = a0 + t / (2 * lines), rem = t % (2 * lines);
      const float* base = (rem < lines ? kc : vc) + size_t(key) * kstride + size_t(kvh) * HD;
      asm volatile("prefetch.global.L2 [%0];" ::"l"(reinterpret_cast<const char*>(base) + (rem % lines) * 128));
    }
  }
  pdl_wait();
  if (tid == 0) s_k0 = INT_MAX, s_k1 = 0;
  __syncthreads();
  if (tid < p.n_new) {
    int lo, hi;
    row_range(p, tid, lo, hi);
    if (hi > lo) atomicMin(&s_k0, lo), atomicMax(&s_k1, hi);
  }
  for (int e = tid; e < QR; e += kDecThreads) {
    int lo, hi;
    row_range(p, e / G, lo, hi);
    lo_s[e] = lo, hi_s[e] = hi;
    m_s[e] = -FLT_MAX, l_s[e] = 0.f;
  }
  for (int e = tid; e < QR * (HD / 4); e += kDecThreads) {
    const int qr = e / (HD / 4), c4 = e % (HD / 4), r = qr / G, h = kvh * G + qr % G;
    *reinterpret_cast<float4*>(&qs[qr][c4 * 4]) =
        *reinterpret_cast<const float4*>(q + (size_t(r) * H + h) * HD + c4 * 4);
  }
  __syncthreads();
  const int K0 = s_k0 == INT_MAX ? 0 : s_k0, K1 = s_k0 == INT_MAX ? 0 : s_k1;
  const int per = (K1 - K0 + nsplit - 1) / nsplit;
  const int k0 = K0 + sp * per, k1 = min(K1, k0 + per);

  // Score-phase lanes: key slot ks (4 per warp pass), part pp (8 lanes per key).
  const int ks = lane >> 3, pp = lane & 7;
  // P·V lanes: key group kg, dim lane dl; dims d0 .. d0 + 3.
  const int kg = lane / DL, dl = lane % DL, d0 = warp * (HD / 8) + dl * 4;
  float acc[kDecMaxQR][4];
#pragma unroll
  for (int i = 0; i < kDecMaxQR; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
  const float* kbase = kc + size_t(kvh) * HD;
  const float* vbase = vc + size_t(kvh) * HD;
  const float4 zero4 = make_float4(0.f, 0.f, 0.f, 0.f);

  for (int c0 = k0; c0 < k1; c0 += kDecChunk) {
    const int cn = min(kDecChunk, k1 - c0);
    float4 kr[SP][NV], vr[VK];
#pragma unroll
    for (int t = 0; t < SP; ++t) {
      const int j = warp * (kDecChunk / W) + t * 4 + ks;
      const float* row = kbase + size_t(c0 + j) * kstride;
#pragma unroll
      for (int i = 0; i < NV; ++i)
        kr[t][i] = j < cn ? __ldcg(reinterpret_cast<const float4*>(row + pp * 4 + 32 * i)) : zero4;
    }
#pragma unroll
    for (int u = 0; u < VK; ++u) {
      const int j = kg + KG * u;
      vr[u] = j < cn ? __ldcg(reinterpret_cast<const float4*>(vbase + size_t(c0 + j) * kstride + d0)) : zero4;
    }
    // Scores: every query row's partial sums first, then their shuffles side by side (independent,
    // so their latencies overlap).
#pragma unroll
    for (int t = 0; t < SP; ++t) {
      const int j = warp * (kDecChunk / W) + t * 4 + ks, key = c0 + j;
      float a[kDecMaxQR];
#pragma unroll
      for (int qr = 0; qr < kDecMaxQR; ++qr) {
        a[qr] = 0.f;
        if (qr < QR) {
#pragma unroll
          for (int i = 0; i < NV; ++i) {
            const float4 qv = *reinterpret_cast<const float4*>(&qs[qr][pp * 4 + 32 * i]);
            a[qr] = fmaf(qv.x, kr[t][i].x, a[qr]);
            a[qr] = fmaf(qv.y, kr[t][i].y, a[qr]);
            a[qr] = fmaf(qv.z, kr[t][i].z, a[qr]);
            a[qr] = fmaf(qv.w, kr[t][i].w, a[qr]);
          }
        }
      }
#pragma unroll
      for (int o = 1; o < 8; o <<= 1)
#pragma unroll
        for (int qr = 0; qr < kDecMaxQR; ++qr)
          if (qr < QR) a[qr] += __shfl_xor_sync(0xffffffffu, a[qr], o);
      if (pp == 0 && j < cn) {
#pragma unroll
        for (int qr = 0; qr < kDecMaxQR; ++qr)
          if (qr < QR) sc[qr][j] = (key >= lo_s[qr] && key < hi_s[qr]) ? a[qr] * p.scale : -INFINITY;
      }
    }
    __syncthreads();
    // Online softmax, a warp per query row.
    for (int qr = warp; qr < QR; qr += W) {
      float s[kDecChunk / 32];
      float mx = -INFINITY;
#pragma unroll
      for (int i = 0; i < kDecChunk / 32; ++i) {
        const int j = lane + 32 * i;
        s[i] = j < cn ? sc[qr][j] : -INFINITY;
        mx = fmaxf(mx, s[i]);
      }
      mx = warp_max(mx);
      const float mo = m_s[qr], mn = fmaxf(mo, mx), corr = expf(mo - mn);
      float sum = 0.f;
#pragma unroll
      for (int i = 0; i < kDecChunk / 32; ++i) {
        const int j = lane + 32 * i;
        const float e = expf(s[i] - mn);
        if (j < cn) sc[qr][j] = e;
        sum += e;
      }
      sum = warp_sum(sum);
      if (lane == 0) m_s[qr] = mn, l_s[qr] = l_s[qr] * corr + sum, c_s[qr] = corr;
    }
    __syncthreads();
    // P·V.
#pragma unroll
    for (int qr = 0; qr < kDecMaxQR; ++qr) {
      if (qr < QR) {
        const float corr = c_s[qr];
        float4 a = make_float4(acc[qr][0] * corr, acc[qr][1] * corr, acc[qr][2] * corr, acc[qr][3] * corr);
#pragma unroll
        for (int u = 0; u < VK; ++u) {
          const int j = kg + KG * u;
          const float pj = j < cn ? sc[qr][j] : 0.f;
          a.x = fmaf(pj, vr[u].x, a.x), a.y = fmaf(pj, vr[u].y, a.y);
          a.z = fmaf(pj, vr[u].z, a.z), a.w = fmaf(pj, vr[u].w, a.w);
        }
        acc[qr][0] = a.x, acc[qr][1] = a.y, acc[qr][2] = a.z, acc[qr][3] = a.w;
      }
    }
    if (c0 + kDecChunk < k1) __syncthreads();  // before the next chunk's scores overwrite sc
  }
  // The key groups' sums meet in the lanes of group 0.
#pragma unroll
  for (int qr = 0; qr < kDecMaxQR; ++qr) {
    if (qr < QR) {
#pragma unroll
      for (int o = DL; o < 32; o <<= 1)
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[qr][c] += __shfl_xor_sync(0xffffffffu, acc[qr][c], o);
    }
  }
  if (nsplit == 1) {
    if (kg == 0) {
#pragma unroll
      for (int qr = 0; qr < kDecMaxQR; ++qr) {
        if (qr < QR) {
          const float l = l_s[qr], inv = l > 0.f ? 1.f / l : 0.f;
          const int r = qr / G, h = kvh * G + qr % G;
          *reinterpret_cast<float4*>(z + (size_t(r) * H + h) * HD + d0) =
              make_float4(acc[qr][0] * inv, acc[qr][1] * inv, acc[qr][2] * inv, acc[qr][3] * inv);
        }
      }
    }
    return;
  }
  if constexpr (CLUSTER) {
    // The splits of this KV head are one thread-block cluster: each block leaves its (m, l, acc) in
    // its shared memory (acc where q was), block 0 of the cluster reads them all (distributed shared
    // memory, in rank order) and writes z; no global scratch, fence or counter.
    namespace cg = cooperative_groups;
    cg::cluster_group cl = cg::this_cluster();
    if (kg == 0) {
#pragma unroll
      for (int qr = 0; qr < kDecMaxQR; ++qr)
        if (qr < QR) *reinterpret_cast<float4*>(&qs[qr][d0]) = make_float4(acc[qr][0], acc[qr][1], acc[qr][2], acc[qr][3]);
    }
    cl.sync();
    if (cl.block_rank() == 0) {
      const int nr = int(cl.num_blocks());
      // Every remote load is issued before the sums that use it (unrolled over the largest cluster).
      if (tid < QR) {
        float mv[kDecMaxCluster], lv[kDecMaxCluster];
#pragma unroll
        for (int s = 0; s < kDecMaxCluster; ++s) {
          mv[s] = -FLT_MAX, lv[s] = 0.f;
          if (s < nr) mv[s] = cl.map_shared_rank(&m_s[0], s)[tid], lv[s] = cl.map_shared_rank(&l_s[0], s)[tid];
        }
        float M = -FLT_MAX;
#pragma unroll
        for (int s = 0; s < kDecMaxCluster; ++s)
          if (lv[s] > 0.f) M = fmaxf(M, mv[s]);
        float L = 0.f;
#pragma unroll
        for (int s = 0; s < kDecMaxCluster; ++s) {
          const float w = lv[s] > 0.f ? expf(mv[s] - M) : 0.f;
          wsp[s][tid] = w;
          L += lv[s] * w;
        }
        Ls[tid] = L;
      }
      __syncthreads();
      for (int e = tid; e < QR * (HD / 4); e += kDecThreads) {
        const int qr = e / (HD / 4), c4 = e % (HD / 4);
        float4 v[kDecMaxCluster];
#pragma unroll
        for (int s = 0; s < kDecMaxCluster; ++s)
          v[s] = s < nr ? *reinterpret_cast<const float4*>(cl.map_shared_rank(&qs[qr][c4 * 4], s)) : zero4;
        float4 a = zero4;
#pragma unroll
        for (int s = 0; s < kDecMaxCluster; ++s) {
          const float w = s < nr ? wsp[s][qr] : 0.f;
          a.x = fmaf(w, v[s].x, a.x), a.y = fmaf(w, v[s].y, a.y), a.z = fmaf(w, v[s].z, a.z), a.w = fmaf(w, v[s].w, a.w);
        }
        const float L = Ls[qr], inv = L > 0.f ? 1.f / L : 0.f;
        const int r = qr / G, h = kvh * G + qr % G;
        *reinterpret_cast<float4*>(z + (size_t(r) * H + h) * HD + c4 * 4) =
            make_float4(a.x * inv, a.y * inv, a.z * inv, a.w * inv);
      }
    }
    cl.sync();  // the other blocks' shared memory stays until block 0 has read it
    return;
  }
  // partial: acc [KV][nsplit][QR][HD], then (m, l) [KV][nsplit][QR][2].
  float* pacc = partial + (size_t(kvh) * nsplit + sp) * QR * HD;
  float* pml = partial + size_t(KV) * nsplit * QR * HD + (size_t(kvh) * nsplit + sp) * QR * 2;
  if (kg == 0) {
#pragma unroll
    for (int qr = 0; qr < kDecMaxQR; ++qr)
      if (qr < QR)
        __stcg(reinterpret_cast<float4*>(pacc + size_t(qr) * HD + d0),
               make_float4(acc[qr][0], acc[qr][1], acc[qr][2], acc[qr][3]));
  }
  if (tid < QR) __stcg(reinterpret_cast<float2*>(pml + 2 * tid), make_float2(m_s[tid], l_s[tid]));
  __shared__ bool last;
  __threadfence();
  __syncthreads();
  if (tid == 0) {
    last = atomicAdd(counters + kvh, 1u) == unsigned(nsplit - 1);
    if (last) counters[kvh] = 0u;
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  const float* ml0 = partial + size_t(KV) * nsplit * QR * HD + size_t(kvh) * nsplit * QR * 2;
  if (tid < QR) {
    float M = -FLT_MAX;
    for (int s = 0; s < nsplit; ++s) {
      const float2 ml = __ldcg(reinterpret_cast<const float2*>(ml0 + (size_t(s) * QR + tid) * 2));
      if (ml.y > 0.f) M = fmaxf(M, ml.x);
    }
    float L = 0.f;
    for (int s = 0; s < nsplit; ++s) {
      const float2 ml = __ldcg(reinterpret_cast<const float2*>(ml0 + (size_t(s) * QR + tid) * 2));
      const float w = ml.y > 0.f ? expf(ml.x - M) : 0.f;
      wsp[s][tid] = w;
      L += ml.y * w;
    }
    Ls[tid] = L;
  }
  __syncthreads();
  const float* acc0 = partial + size_t(kvh) * nsplit * QR * HD;
  for (int e = tid; e < QR * (HD / 4); e += kDecThreads) {
    const int qr = e / (HD / 4), c4 = e % (HD / 4);
    float4 a = zero4;
    for (int s = 0; s < nsplit; ++s) {
      const float w = wsp[s][qr];
      const float4 v = __ldcg(reinterpret_cast<const float4*>(acc0 + (size_t(s) * QR + qr) * HD + c4 * 4));
      a.x = fmaf(w, v.x, a.x), a.y = fmaf(w, v.y, a.y), a.z = fmaf(w, v.z, a.z), a.w = fmaf(w, v.w, a.w);
    }
    const float L = Ls[qr], inv = L > 0.f ? 1.f / L : 0.f;
    const int r = qr / G, h = kvh * G + qr % G;
    *reinterpret_cast<float4*>(z + (size_t(r) * H + h) * HD + c4 * 4) =
        make_float4(a.x * inv, a.y * inv, a.z * inv, a.w * inv);
  }
}

// force: 3 the decode kernel, merged as chosen below; 4 always merged through global memory; 5 one
// block per KV head (no split).
bool use_dec(const AttnDev& p, int force) {
  const bool can = (p.head_dim == 64 || p.head_dim == 128) && p.n_kv > 0 && p.n_heads % p.n_kv == 0 &&
                   long(p.n_new) * (p.n_heads / p.n_kv) <= kDecMaxQR;
  if (force >= 3 && force <= 5) return can;
  return force == 0 && can && p.causal;
}

constexpr int kDecClusterKeys = 512;

// Splits over the context: about 16 keys per block, at most 128 blocks and kDecMaxSplit splits.
int dec_splits(const AttnDev& p, int force) {
  if (force == 5) return 1;
  const int total = p.past + p.n_new;
  const int by_keys = (total + 15) / 16, by_blocks = std::max(1, 128 / p.n_kv);
  return std::max(1, std::min(std::min(by_keys, by_blocks), kDecMaxSplit));
}
// Short contexts (<= 512 keys) on sm_90: up to 8 splits merged inside a thread-block cluster.
int dec_cluster(const AttnDev& p, int sm_major, int force) {
  if (force == 4 || force == 5 || sm_major < 9 || p.past + p.n_new > kDecClusterKeys) return 0;
  const int ns = std::min(dec_splits(p, force), kDecMaxCluster);
  return ns > 1 ? ns : 0;
}

// Keys of one split (an upper bound: the rows' ranges lie within [0, past + n_new)).
int dec_keys_per_split(const AttnDev& p, int ns) {
  const int total = p.past + p.n_new;
  return (total + ns - 1) / ns;
}

size_t dec_scratch(const AttnDev& p, int force) {
  const int ns = dec_splits(p, force);
  if (ns <= 1) return 0;
  const size_t qr = size_t(p.n_new) * (p.n_heads / p.n_kv);
  return size_t(p.n_kv) * ns * qr * (p.head_dim + 2) * sizeof(float);
}

// ---------------- tensor-core prefill kernel ----------------

constexpr int BQ = 128, BK = 64, kMmaThreads = 256;

__device__ __forceinline__ uint32_t smem_u32(const void* p) { return uint32_t(__cvta_generic_to_shared(p)); }

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  const int n = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_u32(dst)), "l"(src), "r"(n));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;"); }
template <int N>
__device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N)); }
__device__ __forceinline__ uint32_t pack_bf16(float a, float b) {
  __nv_bfloat162 v = __floats2bfloat162_rn(a, b);
  return *reinterpret_cast<uint32_t*>(&v);
}

template <int HD>
struct MmaSmem {
  static constexpr int LD = HD + 8;  // padded row (bf16 elements): conflict-free ldmatrix
  static constexpr size_t bytes = size_t(BQ + 4 * BK) * LD * 2;
};

// OutRo's gated rotation (Backend::gate_heads) of a warp's two output rows ra, rb in registers: a
// quad of lanes (t4 = 0..3) holds a row, columns dt * 8 + 2 t4 + {0, 1} in o[dt][0..1] (row ra) and
// o[dt][2..3] (row rb), so the row's dot products are a quad reduction. The rotated count goes to
// the counter with one atomic per warp.
template <int HD>
__device__ __forceinline__ void gate_rows(float (*o)[4], const AttnDev& p, int kvh, int ra, int rb, int lane) {
  if (p.gate_vbar[size_t(p.n_kv) * HD] == 0.f) return;  // no sink at this layer
  const float* v = p.gate_vbar + size_t(kvh) * HD;
  const int t4 = lane & 3;
  float oa = 0.f, ob = 0.f, vv = 0.f, pa = 0.f, pb = 0.f;
#pragma unroll
  for (int dt = 0; dt < HD / 8; ++dt) {
    const float2 w = make_float2(v[dt * 8 + t4 * 2], v[dt * 8 + t4 * 2 + 1]);  // vbar rows are not 8-byte aligned
    oa += o[dt][0] * o[dt][0] + o[dt][1] * o[dt][1];
    ob += o[dt][2] * o[dt][2] + o[dt][3] * o[dt][3];
    vv += w.x * w.x + w.y * w.y;
    pa += o[dt][0] * w.x + o[dt][1] * w.y;
    pb += o[dt][2] * w.x + o[dt][3] * w.y;
  }
#pragma unroll
  for (int x = 1; x <= 2; x <<= 1) {
    oa += __shfl_xor_sync(0xffffffffu, oa, x), ob += __shfl_xor_sync(0xffffffffu, ob, x);
    vv += __shfl_xor_sync(0xffffffffu, vv, x);
    pa += __shfl_xor_sync(0xffffffffu, pa, x), pb += __shfl_xor_sync(0xffffffffu, pb, x);
  }
  auto skip = [&](int r) {
    return r >= p.n_new || (p.gate_excl && r < p.gate_excl_n && p.gate_excl[r] != 0.f);
  };
  const bool xa = skip(ra), xb = skip(rb);
  const float nv = fmaxf(sqrtf(vv), 1e-12f), na = sqrtf(oa), nb = sqrtf(ob);
  const float ca = pa / (fmaxf(na, 1e-12f) * nv), cb = pb / (fmaxf(nb, 1e-12f) * nv);
  const float ka = xa ? 0.f : tanhf(fmaxf(ca, 0.f) / p.gate_temp) * p.gate_gamma * fabsf(pa) / (vv + 1e-8f);
  const float kb = xb ? 0.f : tanhf(fmaxf(cb, 0.f) / p.gate_temp) * p.gate_gamma * fabsf(pb) / (vv + 1e-8f);
  float qa = 0.f, qb = 0.f;
#pragma unroll
  for (int dt = 0; dt < HD / 8; ++dt) {
    const float2 w = make_float2(v[dt * 8 + t4 * 2], v[dt * 8 + t4 * 2 + 1]);
    o[dt][0] += ka * w.x, o[dt][1] += ka * w.y, o[dt][2] += kb * w.x, o[dt][3] += kb * w.y;
    qa += o[dt][0] * o[dt][0] + o[dt][1] * o[dt][1];
    qb += o[dt][2] * o[dt][2] + o[dt][3] * o[dt][3];
  }
  if (p.gate_rescale) {
#pragma unroll
    for (int x = 1; x <= 2; x <<= 1) qa += __shfl_xor_sync(0xffffffffu, qa, x), qb += __shfl_xor_sync(0xffffffffu, qb, x);
    const float sa = xa ? 1.f : na / (sqrtf(qa) + 1e-8f), sb = xb ? 1.f : nb / (sqrtf(qb) + 1e-8f);
#pragma unroll
    for (int dt = 0; dt < HD / 8; ++dt) o[dt][0] *= sa, o[dt][1] *= sa, o[dt][2] *= sb, o[dt][3] *= sb;
  }
  if (p.gate_counter) {
    unsigned c = t4 == 0 ? unsigned(!xa && ca > 0.f) + unsigned(!xb && cb > 0.f) : 0u;
    for (int x = 16; x; x >>= 1) c += __shfl_xor_sync(0xffffffffu, c, x);
    if (lane == 0 && c) atomicAdd(p.gate_counter, float(c));
  }
}

// grid (ceil(n_new / BQ), H). kb, vb: bf16 [total, KV, HD].
template <int HD>
__global__ void __launch_bounds__(kMmaThreads, 2) k_attn_mma(float* z, const float* q, const __nv_bfloat16* kb,
                                                              const __nv_bfloat16* vb, AttnDev p) {
  constexpr int LD = MmaSmem<HD>::LD;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __nv_bfloat16* Qs = reinterpret_cast<__nv_bfloat16*>(smem_raw);
  __nv_bfloat16* Ks = Qs + BQ * LD;       // [2][BK][LD]
  __nv_bfloat16* Vs = Ks + 2 * BK * LD;   // [2][BK][LD]
  __shared__ int s_lo_min, s_lo_max, s_hi_min, s_hi_max;
  pdl_begin();

  // Longest tiles first. With sink-out rows the first tile may be the longest of all (a sink row
  // there, typically token 0, sees every key), so it goes first and the rest follow longest first.
  const int qt = !p.sinkout_mask ? gridDim.x - 1 - blockIdx.x : blockIdx.x == 0 ? 0 : gridDim.x - blockIdx.x;
  const int h = blockIdx.y, H = p.n_heads, KV = p.n_kv, kvh = h / (H / KV);
  const int r0 = qt * BQ, tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int total = p.past + p.n_new;

  if (tid == 0) s_lo_min = INT_MAX, s_lo_max = 0, s_hi_min = INT_MAX, s_hi_max = 0;
  __syncthreads();
  if (tid < BQ && r0 + tid < p.n_new) {
    int lo, hi;
    row_range(p, r0 + tid, lo, hi);
    atomicMin(&s_lo_min, lo), atomicMax(&s_lo_max, lo), atomicMin(&s_hi_min, hi), atomicMax(&s_hi_max, hi);
  }
  // Q tile: float32 -> bf16 in shared memory (rows past n_new are zero).
  for (int e = tid; e < BQ * HD / 4; e += kMmaThreads) {
    const int row = e / (HD / 4), c4 = e % (HD / 4);
    float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
    if (r0 + row < p.n_new) v = *reinterpret_cast<const float4*>(q + (size_t(r0 + row) * H + h) * HD + c4 * 4);
    uint2 u;
    u.x = pack_bf16(v.x, v.y), u.y = pack_bf16(v.z, v.w);
    *reinterpret_cast<uint2*>(Qs + row * LD + c4 * 4) = u;
  }
  __syncthreads();
  const int kv_begin = (s_lo_min / BK) * BK, kv_end = s_hi_max;
  const int lo_max = s_lo_max, hi_min = s_hi_min;

  // This thread's two rows (g and g + 8 of its warp's 16).
  const int g = lane >> 2, t4 = lane & 3;
  int lo_a, hi_a, lo_b, hi_b;
  row_range(p, r0 + warp * 16 + g, lo_a, hi_a);
  row_range(p, r0 + warp * 16 + g + 8, lo_b, hi_b);

  const size_t kstride = size_t(KV) * HD;
  auto load_tile = [&](int kv0, int buf) {
    __nv_bfloat16* ks = Ks + buf * BK * LD;
    __nv_bfloat16* vs = Vs + buf * BK * LD;
    for (int e = tid; e < BK * HD / 8; e += kMmaThreads) {
      const int row = e / (HD / 8), c8 = e % (HD / 8);
      const int key = kv0 + row;
      const bool ok = key < total;
      const size_t off = size_t(ok ? key : 0) * kstride + size_t(kvh) * HD + c8 * 8;
      cp_async16(ks + row * LD + c8 * 8, kb + off, ok);
      cp_async16(vs + row * LD + c8 * 8, vb + off, ok);
    }
  };

  float o[HD / 8][4];
#pragma unroll
  for (int i = 0; i < HD / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m_a = -FLT_MAX, m_b = -FLT_MAX, l_a = 0.f, l_b = 0.f;
  const float sl2 = p.scale * 1.4426950408889634f;

  const int ntiles = kv_end > kv_begin ? (kv_end - kv_begin + BK - 1) / BK : 0;
  if (ntiles > 0) load_tile(kv_begin, 0);
  cp_commit();
  for (int t = 0; t < ntiles; ++t) {
    const int kv0 = kv_begin + t * BK, buf = t & 1;
    if (t + 1 < ntiles) {
      load_tile(kv0 + BK, buf ^ 1);
      cp_commit();
      cp_wait<1>();
    } else {
      cp_wait<0>();
    }
    __syncthreads();
    const __nv_bfloat16* ks = Ks + buf * BK * LD;
    const __nv_bfloat16* vs = Vs + buf * BK * LD;

    // S = Q Kᵀ for this warp's 16 rows x 64 keys.
    float s[BK / 8][4];
#pragma unroll
    for (int i = 0; i < BK / 8; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk) {
      uint32_t a[4];
      {
        const int mi = lane >> 3, i = lane & 7;
        ldsm_x4(a, Qs + (warp * 16 + (mi & 1) * 8 + i) * LD + kk * 16 + (mi >> 1) * 8);
      }
#pragma unroll
      for (int nt = 0; nt < BK / 8; nt += 2) {
        uint32_t b[4];
        const int mi = lane >> 3, i = lane & 7;
        ldsm_x4(b, ks + ((nt + (mi >> 1)) * 8 + i) * LD + kk * 16 + (mi & 1) * 8);
        mma_bf16(s[nt], a, b[0], b[1]);
        mma_bf16(s[nt + 1], a, b[2], b[3]);
      }
    }
    // Mask and online softmax (base 2).
    const bool need_mask = kv0 < lo_max || kv0 + BK > hi_min;
    float mx_a = -FLT_MAX, mx_b = -FLT_MAX;
#pragma unroll
    for (int nt = 0; nt < BK / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float v = s[nt][e] * sl2;
        if (need_mask) {
          const int j = kv0 + nt * 8 + t4 * 2 + (e & 1);
          const bool ok = e < 2 ? (j >= lo_a && j < hi_a) : (j >= lo_b && j < hi_b);
          if (!ok) v = -INFINITY;
        }
        s[nt][e] = v;
      }
      mx_a = fmaxf(mx_a, fmaxf(s[nt][0], s[nt][1]));
      mx_b = fmaxf(mx_b, fmaxf(s[nt][2], s[nt][3]));
    }
#pragma unroll
    for (int o2 = 1; o2 <= 2; o2 <<= 1) {
      mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, o2));
      mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, o2));
    }
    const float mn_a = fmaxf(m_a, mx_a), mn_b = fmaxf(m_b, mx_b);
    const float c_a = exp2f(m_a - mn_a), c_b = exp2f(m_b - mn_b);
    m_a = mn_a, m_b = mn_b;
    float ps_a = 0.f, ps_b = 0.f;
#pragma unroll
    for (int nt = 0; nt < BK / 8; ++nt) {
      s[nt][0] = exp2f(s[nt][0] - mn_a), s[nt][1] = exp2f(s[nt][1] - mn_a);
      s[nt][2] = exp2f(s[nt][2] - mn_b), s[nt][3] = exp2f(s[nt][3] - mn_b);
      ps_a += s[nt][0] + s[nt][1];
      ps_b += s[nt][2] + s[nt][3];
    }
    l_a = l_a * c_a + ps_a, l_b = l_b * c_b + ps_b;
#pragma unroll
    for (int i = 0; i < HD / 8; ++i) o[i][0] *= c_a, o[i][1] *= c_a, o[i][2] *= c_b, o[i][3] *= c_b;
    // O += P V
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) {
      uint32_t a[4];
      a[0] = pack_bf16(s[2 * kk][0], s[2 * kk][1]);
      a[1] = pack_bf16(s[2 * kk][2], s[2 * kk][3]);
      a[2] = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      a[3] = pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
      for (int dt = 0; dt < HD / 8; dt += 2) {
        uint32_t b[4];
        const int mi = lane >> 3, i = lane & 7;
        ldsm_x4_t(b, vs + (kk * 16 + (mi & 1) * 8 + i) * LD + (dt + (mi >> 1)) * 8);
        mma_bf16(o[dt], a, b[0], b[1]);
        mma_bf16(o[dt + 1], a, b[2], b[3]);
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int o2 = 1; o2 <= 2; o2 <<= 1) {
    l_a += __shfl_xor_sync(0xffffffffu, l_a, o2);
    l_b += __shfl_xor_sync(0xffffffffu, l_b, o2);
  }
  const int ra = r0 + warp * 16 + g, rb = ra + 8;
  const float ia = l_a > 0.f ? 1.f / l_a : 0.f, ib = l_b > 0.f ? 1.f / l_b : 0.f;
#pragma unroll
  for (int dt = 0; dt < HD / 8; ++dt) o[dt][0] *= ia, o[dt][1] *= ia, o[dt][2] *= ib, o[dt][3] *= ib;
  if (p.gate_vbar) gate_rows<HD>(o, p, h / (H / KV), ra, rb, lane);
#pragma unroll
  for (int dt = 0; dt < HD / 8; ++dt) {
    const int d = dt * 8 + t4 * 2;
    if (ra < p.n_new)
      *reinterpret_cast<float2*>(z + (size_t(ra) * H + h) * HD + d) = make_float2(o[dt][0], o[dt][1]);
    if (rb < p.n_new)
      *reinterpret_cast<float2*>(z + (size_t(rb) * H + h) * HD + d) = make_float2(o[dt][2], o[dt][3]);
  }
}

__global__ void k_f32_to_bf16_rows(__nv_bfloat16* y, const float* x, size_t n4) {
  pdl_begin();
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n4; i += size_t(gridDim.x) * blockDim.x) {
    const float4 v = reinterpret_cast<const float4*>(x)[i];
    uint2 u;
    u.x = pack_bf16(v.x, v.y), u.y = pack_bf16(v.z, v.w);
    reinterpret_cast<uint2*>(y)[i] = u;
  }
}

bool use_mma(const AttnDev& p, int sm_major, int force) {
  // 80: the Qwen2.5-VL / Omni vision tower (1280 wide, 16 heads)
  const bool can = sm_major >= 8 && (p.head_dim == 64 || p.head_dim == 80 || p.head_dim == 128) &&
                   p.n_heads % p.n_kv == 0;
  if (force == 1 || force >= 3) return false;
  if (force == 2) return can;
  return can && p.n_new >= 32;
}

size_t mma_scratch(const AttnDev& p) {
  const size_t total = size_t(p.past) + p.n_new;
  return 2 * total * size_t(p.n_kv) * p.head_dim * sizeof(__nv_bfloat16);
}

template <int HD>
void launch_mma(cudaStream_t s, float* z, const float* q, const __nv_bfloat16* kb, const __nv_bfloat16* vb,
                const AttnDev& p) {
  const size_t smem = MmaSmem<HD>::bytes;
  static bool configured = false;  // per process: the attribute is per function
  if (!configured) {
    OUTRO_CK(cudaFuncSetAttribute(k_attn_mma<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    configured = true;
  }
  dim3 grid(unsigned((p.n_new + BQ - 1) / BQ), unsigned(p.n_heads));
  launch("attention (mma)", k_attn_mma<HD>, grid, dim3(kMmaThreads), smem, s, z, q, kb, vb, p);
}

// A decode launch whose blocks along x form clusters of `cluster` (sm_90), with programmatic
// dependent launch as launch() gives it.
template <typename K>
void launch_cluster(cudaStream_t s, K k, dim3 grid, int cluster, float* z, const float* q, const float* kc,
                    const float* vc, const AttnDev& p, int ns) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = dim3(kDecThreads);
  cfg.dynamicSmemBytes = 0;
  cfg.stream = s;
  cudaLaunchAttribute at[2];
  at[0].id = cudaLaunchAttributeClusterDimension;
  at[0].val.clusterDim.x = unsigned(cluster);
  at[0].val.clusterDim.y = 1;
  at[0].val.clusterDim.z = 1;
  at[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  at[1].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = at;
  cfg.numAttrs = pdl_enabled() ? 2 : 1;
  float* none = nullptr;
  unsigned* no_ctr = nullptr;
  check(cudaLaunchKernelEx(&cfg, k, z, q, kc, vc, p, ns, none, no_ctr), "attention (dec, cluster)");
}

}  // namespace

size_t attention_scratch_bytes(const AttnDev& p, int sm_major) {
  if (use_mma(p, sm_major, 0) || use_mma(p, sm_major, 2)) {
    // either kernel may be chosen (force): room for both
  }
  const int ns = row_splits(p);
  const size_t rows = ns > 1 ? size_t(p.n_new) * p.n_heads * ns * (p.head_dim + 2) * sizeof(float) : 0;
  const size_t mma = sm_major >= 8 ? mma_scratch(p) : 0;
  const size_t dec = use_dec(p, 3) ? dec_scratch(p, 4) : 0;
  return std::max(std::max(rows, mma), dec);
}

const char* attention(cudaStream_t s, float* z, const float* q, const float* kc, const float* vc, const AttnDev& p,
                      float* pattern, AttnScratch scratch, int sm_major, int force) {
  if (p.n_new <= 0) return "none";
  if (p.head_dim > 256) fail("attention: head_dim ", p.head_dim, " > 256 is not supported by the CUDA backend");
  const char* used;
  if (use_mma(p, sm_major, force)) {
    const size_t total = size_t(p.past) + p.n_new, n = total * size_t(p.n_kv) * p.head_dim;
    if (scratch.bytes < mma_scratch(p)) fail("attention: scratch too small");
    __nv_bfloat16* kb = static_cast<__nv_bfloat16*>(scratch.ptr);
    __nv_bfloat16* vb = kb + n;
    const size_t n4 = n / 4, blocks = (n4 + 255) / 256 < 4096 ? (n4 + 255) / 256 : 4096;
    launch("kv to bf16", k_f32_to_bf16_rows, dim3(unsigned(blocks ? blocks : 1)), dim3(256), 0, s, kb, kc, n4);
    launch("kv to bf16", k_f32_to_bf16_rows, dim3(unsigned(blocks ? blocks : 1)), dim3(256), 0, s, vb, vc, n4);
    if (p.head_dim == 128)
      launch_mma<128>(s, z, q, kb, vb, p);
    else if (p.head_dim == 80)
      launch_mma<80>(s, z, q, kb, vb, p);
    else
      launch_mma<64>(s, z, q, kb, vb, p);
    used = "mma";
  } else if (use_dec(p, force)) {
    const int cluster = dec_cluster(p, sm_major, force);
    if (cluster > 1) {
      const dim3 grid(unsigned(cluster), unsigned(p.n_kv));
      const bool small = dec_keys_per_split(p, cluster) <= 32;
      if (p.head_dim == 128)
        launch_cluster(s, small ? k_attn_dec<128, true, 32> : k_attn_dec<128, true, 64>, grid, cluster, z, q, kc, vc,
                       p, cluster);
      else
        launch_cluster(s, small ? k_attn_dec<64, true, 32> : k_attn_dec<64, true, 64>, grid, cluster, z, q, kc, vc, p,
                       cluster);
      used = "dec-cluster";
    } else {
      const int ns = dec_splits(p, force);
      if (ns > 1 && (scratch.bytes < dec_scratch(p, force) || !scratch.counters || p.n_kv > kAttnCounters))
        fail("attention: scratch too small");
      float* part = ns > 1 ? static_cast<float*>(scratch.ptr) : nullptr;
      const bool small = dec_keys_per_split(p, ns) <= 32;
      const dim3 grid(unsigned(ns), unsigned(p.n_kv)), block(kDecThreads);
      if (p.head_dim == 128)
        launch("attention (dec)", small ? k_attn_dec<128, false, 32> : k_attn_dec<128, false, 64>, grid, block, 0, s, z,
               q, kc, vc, p, ns, part, scratch.counters);
      else
        launch("attention (dec)", small ? k_attn_dec<64, false, 32> : k_attn_dec<64, false, 64>, grid, block, 0, s, z,
               q, kc, vc, p, ns, part, scratch.counters);
      used = ns > 1 ? "dec-split" : "dec";
    }
  } else {
    const int ns = row_splits(p);
    float* part = nullptr;
    if (ns > 1) {
      const size_t need = size_t(p.n_new) * p.n_heads * ns * (p.head_dim + 2) * sizeof(float);
      if (scratch.bytes < need) fail("attention: scratch too small");
      part = static_cast<float*>(scratch.ptr);
    }
    unsigned* ctr = ns > 1 && size_t(p.n_new) * p.n_heads <= size_t(kAttnCounters) ? scratch.counters : nullptr;
    launch("attention (rows)", k_attn_rows, dim3(unsigned(p.n_new) * unsigned(ns), unsigned(p.n_heads)),
           dim3(kRowThreads), 0, s, z, q, kc, vc, p, ns, part, ctr);
    if (ns > 1 && !ctr) {
      const int th = (p.head_dim + 31) / 32 * 32;
      launch("attention (combine)", k_attn_combine, dim3(unsigned(p.n_new), unsigned(p.n_heads)), dim3(th), 0, s, z,
             part, p.n_heads, p.head_dim, ns);
    }
    used = ns > 1 ? "rows-split" : "rows";
  }
  OUTRO_LAUNCHED("attention");
  if (pattern) {
    launch("attention pattern", k_attn_pattern, dim3(unsigned(p.n_new), unsigned(p.n_heads)), dim3(128), 0, s, pattern,
           q, kc, p);
    OUTRO_LAUNCHED("attention pattern");
  }
  return used;
}

}  // namespace outro::cuda
