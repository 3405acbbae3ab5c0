#include "kernels/host_ops.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "core/threadpool.h"
#include "io/safetensors.h"
#include "kernels/cpu/gemm.h"

namespace outro::host {

void weight_f32(const Weight& w, float* out) {
  if (!w.src) fail("weight_f32: weight has no checkpoint tensor");
  to_f32(w.src->dtype, w.src->data, out, size_t(w.rows * w.cols));
}

void layernorm(float* y, const float* x, int n, int d, const float* w, const float* b, float eps) {
  for (int i = 0; i < n; ++i) {
    const float* xr = x + size_t(i) * d;
    float* yr = y + size_t(i) * d;
    double s = 0;
    for (int c = 0; c < d; ++c) s += xr[c];
    const float mean = float(s / d);
    double v = 0;
    for (int c = 0; c < d; ++c) {
      const double t = double(xr[c]) - mean;
      v += t * t;
    }
    const float inv = 1.f / std::sqrt(float(v / d) + eps);
    for (int c = 0; c < d; ++c) yr[c] = (xr[c] - mean) * inv * w[c] + (b ? b[c] : 0.f);
  }
}

void gelu(float* y, const float* x, size_t n, bool tanh_approx) {
  if (tanh_approx) {
    const float k = 0.7978845608028654f;  // sqrt(2/pi)
    for (size_t i = 0; i < n; ++i) {
      const float v = x[i];
      y[i] = 0.5f * v * (1.f + std::tanh(k * (v + 0.044715f * v * v * v)));
    }
  } else {
    for (size_t i = 0; i < n; ++i) {
      const float v = x[i];
      y[i] = 0.5f * v * (1.f + std::erf(v * 0.7071067811865476f));
    }
  }
}

void rope_sections(float* x, int n, int heads, int hd, const int32_t* pos, const int* sections, int n_sections,
                   const float* inv_freq) {
  const int half = hd / 2;
  std::vector<int> sec_of(size_t(half), n_sections - 1);
  int c0 = 0;
  for (int s = 0; s < n_sections; ++s) {
    for (int c = c0; c < std::min(half, c0 + sections[s]); ++c) sec_of[size_t(c)] = s;
    c0 += sections[s];
  }
  if (c0 != half) fail("rope_sections: sections sum to ", c0, ", expected head_dim / 2 = ", half);
  for (int i = 0; i < n; ++i) {
    for (int c = 0; c < half; ++c) {
      const float ang = float(pos[size_t(sec_of[size_t(c)]) * n + i]) * inv_freq[c];
      const float cs = std::cos(ang), sn = std::sin(ang);
      for (int h = 0; h < heads; ++h) {
        float* v = x + (size_t(i) * heads + h) * hd;
        const float a = v[c], b = v[c + half];
        v[c] = a * cs - b * sn;
        v[c + half] = b * cs + a * sn;
      }
    }
  }
}

int im2col1d_rows(int kernel, int stride, int pad, const int* seg, int nseg) {
  if (kernel <= 0 || stride <= 0 || pad < 0) fail("im2col1d: bad kernel ", kernel, " / stride ", stride, " / pad ", pad);
  int rows = 0;
  for (int s = 0; s < nseg; ++s) {
    const int len = seg[s + 1] - seg[s];
    if (len < 0) fail("im2col1d: segments must ascend, found ", seg[s], " then ", seg[s + 1]);
    const int out = len + 2 * pad >= kernel ? (len + 2 * pad - kernel) / stride + 1 : 0;
    rows += out;
  }
  return rows;
}

void im2col1d(float* cols, const float* x, int C, int K, int stride, int pad, const int* seg, int nseg) {
  size_t r = 0;
  for (int s = 0; s < nseg; ++s) {
    const int b = seg[s], len = seg[s + 1] - seg[s];
    const int out = len + 2 * pad >= K ? (len + 2 * pad - K) / stride + 1 : 0;
    for (int j = 0; j < out; ++j, ++r) {
      float* row = cols + r * size_t(C) * K;
      for (int k = 0; k < K; ++k) {
        const int t = j * stride + k - pad;
        if (t < 0 || t >= len) {
          for (int c = 0; c < C; ++c) row[size_t(c) * K + k] = 0.f;
        } else {
          const float* xr = x + size_t(b + t) * C;
          for (int c = 0; c < C; ++c) row[size_t(c) * K + k] = xr[c];
        }
      }
    }
  }
}

void gather_rows(float* y, const float* x, int dim, const int32_t* idx, int n) {
  for (int i = 0; i < n; ++i) std::memcpy(y + size_t(i) * dim, x + size_t(idx[i]) * dim, size_t(dim) * 4);
}

void scatter_add_rows(float* y, const float* x, int dim, const int32_t* idx, const float* scale, int n) {
  for (int i = 0; i < n; ++i) {
    float* yr = y + size_t(idx[i]) * dim;
    const float* xr = x + size_t(i) * dim;
    const float s = scale[i];
    for (int c = 0; c < dim; ++c) yr[c] += s * xr[c];
  }
}

void moe_route(float* route, const float* logits, int n, int E, int k, bool norm) {
  std::vector<float> p(static_cast<size_t>(E));
  std::vector<int32_t> order(static_cast<size_t>(E));
  for (int i = 0; i < n; ++i) {
    const float* z = logits + size_t(i) * E;
    const float mx = *std::max_element(z, z + E);
    float sum = 0.f;
    for (int e = 0; e < E; ++e) sum += (p[size_t(e)] = std::exp(z[e] - mx));
    for (int e = 0; e < E; ++e) p[size_t(e)] /= sum;
    for (int e = 0; e < E; ++e) order[size_t(e)] = e;
    std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t a, int32_t b) {
      return p[size_t(a)] > p[size_t(b)] || (p[size_t(a)] == p[size_t(b)] && a < b);
    });
    float tot = 0.f;
    for (int j = 0; j < k; ++j) tot += p[size_t(order[size_t(j)])];
    float* r = route + size_t(i) * 2 * k;
    for (int j = 0; j < k; ++j) {
      const float pj = p[size_t(order[size_t(j)])];
      r[j] = float(order[size_t(j)]);
      r[k + j] = norm ? pj / tot : pj;
    }
  }
}

void avgpool_rows(float* y, const float* x, int n, int dim, int k) {
  const int m = n / k;
  for (int i = 0; i < m; ++i) {
    float* yr = y + size_t(i) * dim;
    for (int c = 0; c < dim; ++c) {
      float s = 0.f;
      for (int j = 0; j < k; ++j) s += x[(size_t(i) * k + j) * dim + c];
      yr[c] = s / float(k);
    }
  }
}


namespace {
// The k-th smallest (0-based) of |h[i]| over n values, exactly, in two counting passes: the bit
// pattern of a non-negative float orders like its value, so select on the top 16 bits, then on the
// low 16 bits among the values that share the top half.
float kth_abs(const float* h, size_t n, size_t k) {
  auto bits = [](float v) {
    uint32_t b;
    std::memcpy(&b, &v, 4);
    return b & 0x7fffffffu;
  };
  std::vector<uint32_t> hist(65536, 0);
  for (size_t i = 0; i < n; ++i) ++hist[bits(h[i]) >> 16];
  uint32_t hi = 0;
  for (size_t acc = 0;; ++hi) {
    if (acc + hist[hi] > k) {
      k -= acc;
      break;
    }
    acc += hist[hi];
  }
  std::fill(hist.begin(), hist.end(), 0u);
  for (size_t i = 0; i < n; ++i) {
    const uint32_t b = bits(h[i]);
    if ((b >> 16) == hi) ++hist[b & 0xffffu];
  }
  uint32_t lo = 0;
  for (size_t acc = 0;; ++lo) {
    if (acc + hist[lo] > k) break;
    acc += hist[lo];
  }
  const uint32_t b = (hi << 16) | lo;
  float v;
  std::memcpy(&v, &b, 4);
  return v;
}
}  // namespace

// On the thread pool, for large prompts: one pass takes the row maxima and a histogram of the top
// 12 bits of every key (the bits of |h|, bits 30..19), a second the next 12 bits (18..7) of the keys
// in the median's bin, a third copies the keys that share those 24 bits (a few hundred), and
// nth_element picks among them. Each thread has its own histograms (4096 counters), summed after.
float phi_stats_parallel(const float* h, int n, int dim, float* row_max) {
  auto key = [](float v) {
    uint32_t b;
    std::memcpy(&b, &v, 4);
    return b & 0x7fffffffu;
  };
  ThreadPool& pool = ThreadPool::global();
  const size_t P = size_t(pool.size()), N = size_t(n) * size_t(dim);
  size_t k = (N - 1) / 2;
  std::vector<uint32_t> hist(P * 4096, 0);
  pool.parallel_for(P, [&](size_t p0, size_t p1) {
    for (size_t p = p0; p < p1; ++p) {
      uint32_t* hp = hist.data() + p * 4096;
      for (size_t i = size_t(n) * p / P; i < size_t(n) * (p + 1) / P; ++i) {
        const float* row = h + i * size_t(dim);
        float m = 0.f;
        for (int c = 0; c < dim; ++c) {
          m = std::max(m, std::fabs(row[c]));
          ++hp[key(row[c]) >> 19];
        }
        row_max[i] = m;
      }
    }
  });
  // The bin (of 4096) holding the k-th key; k becomes its rank inside the bin.
  auto pick = [&](const std::vector<uint32_t>& hs) {
    uint32_t bin = 0;
    for (;; ++bin) {
      size_t c = 0;
      for (size_t p = 0; p < P; ++p) c += hs[p * 4096 + bin];
      if (k < c || bin == 4095) return bin;
      k -= c;
    }
  };
  const uint32_t top = pick(hist);
  std::fill(hist.begin(), hist.end(), 0u);
  pool.parallel_for(P, [&](size_t p0, size_t p1) {
    for (size_t p = p0; p < p1; ++p) {
      uint32_t* hp = hist.data() + p * 4096;
      for (size_t i = N * p / P; i < N * (p + 1) / P; ++i) {
        const uint32_t b = key(h[i]);
        if ((b >> 19) == top) ++hp[(b >> 7) & 4095u];
      }
    }
  });
  const uint32_t prefix = (top << 12) | pick(hist);
  std::vector<std::vector<uint32_t>> in(P);
  pool.parallel_for(P, [&](size_t p0, size_t p1) {
    for (size_t p = p0; p < p1; ++p)
      for (size_t i = N * p / P; i < N * (p + 1) / P; ++i) {
        const uint32_t b = key(h[i]);
        if ((b >> 7) == prefix) in[p].push_back(b);
      }
  });
  std::vector<uint32_t> all;
  for (auto& v : in) all.insert(all.end(), v.begin(), v.end());
  std::nth_element(all.begin(), all.begin() + long(k), all.end());
  float v;
  std::memcpy(&v, &all[k], 4);
  return v;
}

namespace {
uint32_t abs_key(float v) {
  uint32_t b;
  std::memcpy(&b, &v, 4);
  return b & 0x7fffffffu;
}
float key_value(uint32_t b) {
  float v;
  std::memcpy(&v, &b, 4);
  return v;
}
}  // namespace

// One pass on the thread pool: the row maxima, the count of keys below lo, and a copy of the keys in
// [lo, hi] (each thread into the span of the buffer its rows occupy). When the median's rank falls
// inside the copied keys, nth_element among them gives it; otherwise the radix select decides.
float phi_stats_bracket(const float* h, int n, int dim, float* row_max, uint32_t lo, uint32_t hi) {
  const size_t N = size_t(n) * size_t(dim), k = (N - 1) / 2;
  ThreadPool& pool = ThreadPool::global();
  const size_t P = std::min(size_t(pool.size()), size_t(n));
  // Each thread keeps up to an eighth of its keys (a sampled bracket holds about 6% of them), with
  // room for one more row, since the bracket pass writes up to a row past what it keeps.
  std::vector<size_t> cap(P + 1, 0), below(P, 0), inside(P, 0);
  for (size_t p = 0; p < P; ++p) cap[p + 1] = cap[p] + (size_t(n) * (p + 1) / P - size_t(n) * p / P) * size_t(dim) / 8 + size_t(dim) + 16;
  std::vector<uint32_t> buf(cap[P]);
  uint32_t* const keys = buf.data();
  std::atomic<bool> full{false};
  const cpu::Kernels& K = cpu::kernels();
  pool.parallel_for(P, [&](size_t p0, size_t p1) {
    for (size_t p = p0; p < p1; ++p) {
      const size_t r0 = size_t(n) * p / P, r1 = size_t(n) * (p + 1) / P, room = cap[p + 1] - cap[p];
      uint32_t* out = keys + cap[p];
      int64_t b = 0, c = 0;
      for (size_t i = r0; i < r1; ++i) {
        if (size_t(c) + size_t(dim) + 16 > room) {  // more inside than an eighth: the radix select decides
          full = true;
          return;
        }
        row_max[i] = key_value(K.bracket(h + i * size_t(dim), dim, lo, hi, out + c, &b, &c));
      }
      below[p] = size_t(b), inside[p] = size_t(c);
    }
  });
  size_t nb = 0, ni = 0;
  for (size_t p = 0; p < P; ++p) nb += below[p], ni += inside[p];
  if (full || hi < lo || k < nb || k >= nb + ni) return phi_stats_parallel(h, n, dim, row_max);
  // Gather the spans to the front, then select.
  size_t at = inside[0];
  for (size_t p = 1; p < P; ++p) {
    std::memmove(keys + at, keys + cap[p], inside[p] * sizeof(uint32_t));
    at += inside[p];
  }
  // Among them, a 4096-bin histogram of the offsets from lo, then the few keys of the median's bin.
  size_t r = k - nb;
  const uint32_t width = hi - lo;
  int shift = 0;
  while ((uint64_t(width) >> shift) >= 4096) ++shift;
  std::vector<uint32_t> hist(4096, 0);
  for (size_t i = 0; i < ni; ++i) ++hist[(keys[i] - lo) >> shift];
  uint32_t bin = 0;
  while (r >= hist[bin]) r -= hist[bin++];
  size_t m = 0;
  for (size_t i = 0; i < ni; ++i) {
    keys[m] = keys[i];
    m += ((keys[i] - lo) >> shift) == bin;
  }
  std::nth_element(keys, keys + r, keys + m);
  return key_value(keys[r]);
}

float phi_stats(const float* h, int n, int dim, float* row_max) {
  const size_t N = size_t(n) * size_t(dim);
  if (N == 0) return 0.f;
  // Below ~64K values the pool's hand-off costs more than the work.
  if (N >= 65536) {
    // A bracket for the median from 4096 keys at scattered positions: the ranks 4 standard
    // deviations of a sample quantile either side of the median's (about 6% of all keys inside).
    constexpr size_t S = 4096, M = 130;
    std::vector<uint32_t> sample(S);
    for (size_t j = 0; j < S; ++j) sample[j] = abs_key(h[(j * 2654435761ull + 12345u) % N]);
    const size_t mid = S / 2, a = mid - M, b = mid + M;
    std::nth_element(sample.begin(), sample.begin() + long(a), sample.end());
    std::nth_element(sample.begin() + long(a) + 1, sample.begin() + long(b), sample.end());
    return phi_stats_bracket(h, n, dim, row_max, sample[a], sample[b]);
  }
  for (int i = 0; i < n; ++i) {
    float m = 0.f;
    const float* row = h + size_t(i) * dim;
    for (int c = 0; c < dim; ++c) m = std::max(m, std::fabs(row[c]));
    row_max[i] = m;
  }
  return kth_abs(h, N, (N - 1) / 2);
}

void phi_detect(float* rec, const float* h, int n, int dim, float abs_thr, float med_mul, float* row_max) {
  std::vector<float> own(row_max ? 0 : size_t(std::max(n, 0)));
  float* mx = row_max ? row_max : own.data();
  const float m = phi_stats(h, n, dim, mx);
  const float tau = std::max(abs_thr, med_mul * m);
  int count = 0;
  float top = 0.f;
  for (int i = 0; i < n; ++i) {
    rec[i] = mx[i] >= tau ? 1.f : 0.f;
    count += rec[i] != 0.f;
    top = std::max(top, mx[i]);
  }
  rec[n] = tau, rec[n + 1] = m, rec[n + 2] = float(count), rec[n + 3] = top;
}

void outro_sets(float* enh, float* done, float* cum, const float* rec, int n, bool enhance, bool once) {
  for (int i = 0; i < n; ++i) {
    const bool s = rec[i] != 0.f;
    enh[i] = enhance && s && done[i] == 0.f ? 1.f : 0.f;
    if (once && enh[i] != 0.f) done[i] = 1.f;
    if (s) cum[i] = 1.f;
  }
}

void masked_mean(float* out, const float* x, int n, int dim, const float* flags) {
  std::vector<double> acc(size_t(dim), 0.0);
  int count = 0;
  for (int i = 0; i < n; ++i) {
    if (flags[i] == 0.f) continue;
    ++count;
    const float* r = x + size_t(i) * dim;
    for (int c = 0; c < dim; ++c) acc[size_t(c)] += r[c];
  }
  for (int c = 0; c < dim; ++c) out[c] = count ? float(acc[size_t(c)] / count) : 0.f;
  out[dim] = float(count);
}

void gate_heads(float* z, int n, int heads, int kv_heads, int hd, const float* vbar, const float* excl, int excl_n,
                float gamma, float temp, bool rescale, float* counter) {
  if (vbar[size_t(kv_heads) * hd] == 0.f) return;
  const int group = heads / kv_heads;
  // float32 sums on the CPU's vector kernels (as the GPU's float32 sums); |v|² once per KV head.
  const cpu::Kernels& K = cpu::kernels();
  std::vector<float> vvs(static_cast<size_t>(kv_heads)), nvs(static_cast<size_t>(kv_heads));
  for (int g = 0; g < kv_heads; ++g) {
    vvs[size_t(g)] = K.dot(vbar + size_t(g) * hd, vbar + size_t(g) * hd, hd);
    nvs[size_t(g)] = std::sqrt(vvs[size_t(g)]);
  }
  std::atomic<long> total{0};
  auto body = [&](size_t i0, size_t i1) {
    long rotated = 0;
    for (size_t i = i0; i < i1; ++i) {
      if (excl && int(i) < excl_n && excl[i] != 0.f) continue;
      for (int h = 0; h < heads; ++h) {
        const size_t g = size_t(h / group);
        rotated += K.gate(z + (i * size_t(heads) + size_t(h)) * size_t(hd), vbar + g * size_t(hd), hd, vvs[g], nvs[g],
                          gamma, temp, rescale) > 0.f;
      }
    }
    total += rotated;
  };
  if (size_t(n) * heads * hd < 65536)
    body(0, size_t(n));
  else
    ThreadPool::global().parallel_for(size_t(n), body);
  const long rotated = total;
  if (counter) *counter += float(rotated);
}

}  // namespace outro::host

namespace outro {

// Portable defaults of Backend's encoder ops: through host memory.
namespace {
std::vector<float> down(Backend& be, const Buf& b, size_t n) {
  std::vector<float> h(n);
  be.download(b, 0, h.data(), n);
  return h;
}
}  // namespace

void Backend::layernorm(Buf y, const Buf& x, int n, const Weight& w, const Weight* bias, float eps) {
  const int d = int(w.cols);
  auto hx = down(*this, x, size_t(n) * d);
  std::vector<float> g(static_cast<size_t>(d)), b;
  host::weight_f32(w, g.data());
  if (bias && *bias) {
    b.resize(size_t(d));
    host::weight_f32(*bias, b.data());
  }
  std::vector<float> hy(hx.size());
  host::layernorm(hy.data(), hx.data(), n, d, g.data(), b.empty() ? nullptr : b.data(), eps);
  upload(y, 0, hy.data(), hy.size());
}

void Backend::gelu(Buf y, const Buf& x, size_t n, bool tanh_approx) {
  auto h = down(*this, x, n);
  host::gelu(h.data(), h.data(), n, tanh_approx);
  upload(y, 0, h.data(), n);
}

void Backend::rope_sections(Buf x, int n, int heads, int hd, const int32_t* pos, const int* sections, int n_sections,
                            const float* inv_freq) {
  auto h = down(*this, x, size_t(n) * heads * hd);
  host::rope_sections(h.data(), n, heads, hd, pos, sections, n_sections, inv_freq);
  upload(x, 0, h.data(), h.size());
}

void Backend::im2col1d(Buf cols, const Buf& x, int C, int K, int stride, int pad, const int* seg, int nseg) {
  const int rows = host::im2col1d_rows(K, stride, pad, seg, nseg);
  auto h = down(*this, x, size_t(seg[nseg]) * C);
  std::vector<float> o(size_t(rows) * C * K);
  host::im2col1d(o.data(), h.data(), C, K, stride, pad, seg, nseg);
  upload(cols, 0, o.data(), o.size());
}

void Backend::gather_rows(Buf y, const Buf& x, int dim, const int32_t* idx, int n) {
  auto h = down(*this, x, x.n);
  std::vector<float> o(size_t(n) * dim);
  host::gather_rows(o.data(), h.data(), dim, idx, n);
  upload(y, 0, o.data(), o.size());
}

void Backend::scatter_add_rows(Buf y, const Buf& x, int dim, const int32_t* idx, const float* scale, int n) {
  if (n <= 0) return;
  auto hy = down(*this, y, y.n);
  auto hx = down(*this, x, size_t(n) * dim);
  host::scatter_add_rows(hy.data(), hx.data(), dim, idx, scale, n);
  upload(y, 0, hy.data(), hy.size());
}

void Backend::moe_route(Buf route, const Buf& logits, int n, int experts, int k, bool norm) {
  if (n <= 0) return;
  if (k < 1 || k > experts) fail("moe_route: expected 1 <= k <= experts (", experts, "), found k ", k);
  auto hl = down(*this, logits, size_t(n) * experts);
  std::vector<float> hr(size_t(n) * 2 * k);
  host::moe_route(hr.data(), hl.data(), n, experts, k, norm);
  upload(route, 0, hr.data(), hr.size());
}

void Backend::moe_experts(Buf y, const Buf& x, int n, const Buf& route, int k, ExpertSet& ex) {
  if (n <= 0) return;
  const int E = int(ex.gate.size());
  if (E == 0 || ex.up.size() != size_t(E) || ex.down.size() != size_t(E))
    fail("moe_experts: expected as many gate, up and down matrices, found ", ex.gate.size(), ", ", ex.up.size(),
         ", ", ex.down.size());
  const int D = int(ex.gate[0].cols), I = int(ex.gate[0].rows);
  auto hr = down(*this, route, size_t(n) * 2 * k);
  // Rows grouped by expert (a counting sort: rows ascending within each expert), experts in index
  // order: every row's outputs are then added in ascending expert index.
  std::vector<int32_t> start(size_t(E) + 1, 0), rows(size_t(n) * k);
  std::vector<float> scale(size_t(n) * k);
  for (size_t j = 0; j < size_t(n) * k; ++j) {
    const float f = hr[j / k * 2 * k + j % k];
    if (!(f >= 0.f && f < float(E)))
      fail("moe_experts: route names expert ", f, ", expected 0 .. ", E - 1);
    ++start[size_t(f) + 1];
  }
  for (int e = 0; e < E; ++e) start[size_t(e) + 1] += start[size_t(e)];
  std::vector<int32_t> next(start.begin(), start.end() - 1);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < k; ++j) {
      const size_t at = size_t(i) * 2 * k;
      const int32_t slot = next[size_t(hr[at + size_t(j)])]++;
      rows[size_t(slot)] = i;
      scale[size_t(slot)] = hr[at + size_t(k + j)];
    }
  ScopedBufs tmp(*this);
  const size_t most = size_t(n);
  Buf xg = tmp.get(most * size_t(D)), g = tmp.get(most * size_t(I)), u = tmp.get(most * size_t(I)),
      o = tmp.get(most * size_t(D));
  fill(y, 0, size_t(n) * size_t(D), 0.f);
  for (int e = 0; e < E; ++e) {
    const int32_t a = start[size_t(e)], m = start[size_t(e) + 1] - a;
    if (!m) continue;
    gather_rows(xg, x, D, rows.data() + a, m);
    matmul(g, xg, m, ex.gate[size_t(e)], nullptr);
    matmul(u, xg, m, ex.up[size_t(e)], nullptr);
    swiglu(g, g, u, size_t(m) * size_t(I));
    matmul(o, g, m, ex.down[size_t(e)], nullptr);
    scatter_add_rows(y, o, D, rows.data() + a, scale.data() + a, m);
  }
}

int32_t Backend::argmax(const Buf& x, size_t off, int n) {
  if (n <= 0) fail("argmax: expected at least one value, found ", n);
  std::vector<float> h(static_cast<size_t>(n));
  download(x, off, h.data(), h.size());
  int32_t best = 0;
  for (int i = 1; i < n; ++i)
    if (h[size_t(i)] > h[size_t(best)]) best = i;
  return best;
}

void Backend::avgpool_rows(Buf y, const Buf& x, int n, int dim, int k) {
  auto h = down(*this, x, size_t(n) * dim);
  std::vector<float> o(size_t(n / k) * dim);
  host::avgpool_rows(o.data(), h.data(), n, dim, k);
  upload(y, 0, o.data(), o.size());
}

}  // namespace outro
