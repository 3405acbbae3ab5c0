// The CPU backend: float32 activations in host memory, weights read in place from the mmap.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "core/threadpool.h"
#include "io/safetensors.h"
#include "kernels/backend.h"
#include "kernels/cpu/gemm.h"
#include "kernels/host_ops.h"

namespace outro {

namespace {

inline float* F(const Buf& b) { return static_cast<float*>(b.ptr); }

class CpuBackend final : public Backend {
 public:
  const char* name() const override { return "cpu"; }

  Buf alloc(size_t n) override {
    Buf b;
    b.n = n;
    b.ptr = n ? ::operator new[](n * sizeof(float), std::align_val_t(64)) : nullptr;
    if (n) std::memset(b.ptr, 0, n * sizeof(float));
    return b;
  }
  void release(Buf& b) override {
    if (b.ptr) ::operator delete[](b.ptr, std::align_val_t(64));
    b = Buf{};
  }
  void upload(Buf dst, size_t off, const float* src, size_t n) override {
    if (n) std::memcpy(F(dst) + off, src, n * 4);
  }
  void download(const Buf& src, size_t off, float* dst, size_t n) override {
    if (n) std::memcpy(dst, F(src) + off, n * 4);
  }
  void copy(Buf dst, size_t doff, const Buf& src, size_t soff, size_t n) override {
    if (n) std::memmove(F(dst) + doff, F(src) + soff, n * 4);
  }
  void fill(Buf dst, size_t off, size_t n, float v) override { std::fill(F(dst) + off, F(dst) + off + n, v); }

  Weight weight(const TensorInfo& t) override {
    if (t.dtype != DType::F32 && t.dtype != DType::F16 && t.dtype != DType::BF16)
      fail(t.file, ": tensor ", t.name, ": dtype ", dtype_name(t.dtype), " is not supported for weights (expected F32, F16 or BF16)");
    Weight w;
    w.src = &t;
    w.dtype = t.dtype;
    if (t.shape.size() == 2) {
      w.rows = t.shape[0];
      w.cols = t.shape[1];
    } else if (t.shape.size() == 1) {
      w.rows = 1;
      w.cols = t.shape[0];
    } else if (t.shape.size() > 2 && t.shape[0] > 0) {  // a convolution kernel: [out, rest...]
      w.rows = t.shape[0];
      w.cols = t.numel() / t.shape[0];
    } else {
      fail(t.file, ": tensor ", t.name, ": expected a matrix or vector, found shape ", t.shape_str());
    }
    w.data = t.data;
    return w;
  }

  void embed(Buf out, const Weight& table, const int32_t* ids, int n) override {
    const size_t d = size_t(table.cols);
    for (int i = 0; i < n; ++i) {
      const size_t off = size_t(ids[i]) * d;
      if (table.dtype == DType::F32) {
        std::memcpy(F(out) + size_t(i) * d, static_cast<const float*>(table.data) + off, d * 4);
      } else {
        to_f32(table.dtype, static_cast<const uint8_t*>(table.data) + off * 2, F(out) + size_t(i) * d, d);
      }
    }
  }

  void matmul(Buf y, const Buf& x, int n, const Weight& w, const Weight* bias) override {
    auto& pool = ThreadPool::global();
    const int64_t rows = w.rows, cols = w.cols;
    // Split output rows into blocks of 16 (the kernels' weight tile) so that every thread streams
    // distinct, contiguous weight rows. Each output element's value does not depend on the split.
    // Matrices too small to repay waking the pool run on the calling thread.
    const int64_t blk = 16;
    const size_t nblk = size_t((rows + blk - 1) / blk);
    // Waking the pool costs tens of microseconds: a decode step's small projections (k, v of a
    // GQA model) stream faster on the calling thread than that.
    const double work = double(rows) * double(cols) * (double(n) + double(dtype_size(w.dtype)));
    const auto& K = cpu::kernels();
    if (cpu::uses_bf16(K, n, w.dtype)) {
      // The bf16 matrix path: x rounded and packed once for the whole product (not per thread).
      const cpu::MatPath& mm = *K.mm;
      xpack_.resize(mm.packed_size(n, cols));
      uint16_t* xp = xpack_.data();
      auto pack = [&](size_t i0, size_t i1) { mm.pack(xp, F(x), n, cols, int(i0), int(i1)); };
      if (double(n) * double(cols) < 65536.0)
        pack(0, size_t(n));
      else
        pool.parallel_for(size_t(n), pack);
      auto body = [&](size_t b0, size_t b1) {
        int64_t r0 = int64_t(b0) * blk, r1 = std::min<int64_t>(rows, int64_t(b1) * blk);
        mm.gemm(F(y), xp, n, w.data, w.dtype, rows, cols, r0, r1);
      };
      if (work < 786432.0)
        body(0, nblk);
      else
        pool.parallel_for(nblk, body);
    } else {
      auto body = [&](size_t b0, size_t b1) {
        int64_t r0 = int64_t(b0) * blk, r1 = std::min<int64_t>(rows, int64_t(b1) * blk);
        K.gemm(F(y), F(x), n, w.data, w.dtype, rows, cols, r0, r1);
      };
      if (work < 786432.0)
        body(0, nblk);
      else
        pool.parallel_for(nblk, body);
    }
    if (bias && *bias) {
      std::vector<float> b(size_t(bias->cols));
      to_f32(bias->dtype, bias->data, b.data(), b.size());
      for (int i = 0; i < n; ++i) K.axpy(F(y) + size_t(i) * rows, 1.f, b.data(), rows);  // y += 1·b is exact
    }
  }

  void rmsnorm(Buf y, const Buf& x, int n, const Weight& w, float eps) override {
    const size_t d = size_t(w.cols);
    std::vector<float> g(d);
    to_f32(w.dtype, w.data, g.data(), d);
    const auto& K = cpu::kernels();
    auto body = [&](size_t i0, size_t i1) {
      for (size_t i = i0; i < i1; ++i) {
        const float* xr = F(x) + i * d;
        const double ss = K.sumsq(xr, int64_t(d));
        const float inv = 1.f / std::sqrt(float(ss / double(d)) + eps);
        K.scale_mul(F(y) + i * d, xr, g.data(), inv, int64_t(d));
      }
    };
    if (size_t(n) * d < 32768)
      body(0, size_t(n));
    else
      ThreadPool::global().parallel_for(size_t(n), body);
  }

  void rope(Buf x, int n, int heads, int hd, const int32_t* pos, const float* inv_freq) override {
    const int half = hd / 2;
    for (int i = 0; i < n; ++i) {
      for (int c = 0; c < half; ++c) {
        const float ang = float(pos[i]) * inv_freq[c];
        const float cs = std::cos(ang), sn = std::sin(ang);
        for (int h = 0; h < heads; ++h) {
          float* v = F(x) + (size_t(i) * heads + h) * hd;
          const float a = v[c], b = v[c + half];
          v[c] = a * cs - b * sn;
          v[c + half] = b * cs + a * sn;
        }
      }
    }
  }

  void attention(Buf z, const Buf& q, const Buf& kc, const Buf& vc, const AttnParams& p) override {
    attention_causal(z, q, kc, vc, p);
    if (p.causal && p.gate) {
      const AttnGate& g = *p.gate;
      gate_heads(z, p.n_new, p.n_heads, p.n_kv, p.head_dim, *g.vbar, g.excl, g.excl_n, g.gamma, g.temp, g.rescale,
                 g.counter);
    }
  }
  // K of each KV head transposed, kt[g][c][j] (the layout Kernels::attn reads), keys [0, total),
  // zero-padded to a stride of total rounded up to 64, plus 64.
  int64_t transpose_keys(const Buf& kc, int KV, int hd, int total) {
    const int64_t stride = (int64_t(total) + 63) / 64 * 64 + 64;
    kt_.resize(size_t(KV) * size_t(hd) * size_t(stride));
    for (size_t row = 0; row < size_t(KV) * size_t(hd); ++row)  // the padding reads as zero keys
      std::fill(kt_.begin() + long(row * size_t(stride) + size_t(total)), kt_.begin() + long((row + 1) * size_t(stride)), 0.f);
    const float* k = F(kc);
    auto body = [&](size_t b0, size_t b1) {
      for (size_t b = b0; b < b1; ++b) {  // a block of 64 keys of one KV head
        const int g = int(b % size_t(KV)), j0 = int(b / size_t(KV)) * 64, j1 = std::min(total, j0 + 64);
        float* dst = kt_.data() + size_t(g) * size_t(hd) * size_t(stride);
        for (int j = j0; j < j1; ++j) {
          const float* kr = k + (size_t(j) * KV + g) * hd;
          for (int c = 0; c < hd; ++c) dst[size_t(c) * size_t(stride) + size_t(j)] = kr[c];
        }
      }
    };
    const size_t blocks = size_t(KV) * size_t((total + 63) / 64);
    if (size_t(total) * KV * hd < 65536)
      body(0, blocks);
    else
      ThreadPool::global().parallel_for(blocks, body);
    return stride;
  }

  // Attention of n rows against keys [k0[r], k1[r]) on Kernels::attn: tasks of 16 rows of one head.
  void attention_blocked(Buf z, const Buf& q, const Buf& kc, const Buf& vc, const AttnParams& p, int total,
                         const std::vector<int>& k0, const std::vector<int>& k1) {
    const int H = p.n_heads, KV = p.n_kv, hd = p.head_dim, group = H / KV, n = p.n_new;
    const int64_t stride = transpose_keys(kc, KV, hd, total);
    const auto& K = cpu::kernels();
    const size_t per = size_t((n + 15) / 16), tasks = size_t(H) * per;
    auto body = [&](size_t t0, size_t t1) {
      for (size_t t = t0; t < t1; ++t) {
        const int h = int(t / per), r0 = int(t % per) * 16, g = h / group;
        cpu::AttnRows a;
        a.q = F(q) + (size_t(r0) * H + h) * hd, a.q_stride = int64_t(H) * hd;
        a.kt = kt_.data() + size_t(g) * size_t(hd) * size_t(stride), a.kt_stride = stride;
        a.v = F(vc) + size_t(g) * hd, a.v_stride = int64_t(KV) * hd;
        a.z = F(z) + (size_t(r0) * H + h) * hd, a.z_stride = int64_t(H) * hd;
        a.k0 = k0.data() + r0, a.k1 = k1.data() + r0;
        a.rows = std::min(16, n - r0), a.hd = hd, a.scale = p.scale;
        if (p.pattern_out) a.pattern = p.pattern_out + (size_t(h) * n + r0) * total, a.p_stride = total, a.p_len = total;
        K.attn(a);
      }
    };
    ThreadPool::global().parallel_for(tasks, body);
  }

  void attention_causal(Buf z, const Buf& q, const Buf& kc, const Buf& vc, const AttnParams& p) {
    if (!p.causal) return attention_segments(z, q, kc, vc, p);
    const int H = p.n_heads, KV = p.n_kv, hd = p.head_dim, group = H / KV;
    const int total = p.past + p.n_new;
    // Keys [0, keys(r)) for new row r: causal, or to sinkout_end for a flagged sink-out row.
    auto keys = [&](int r) {
      const int nk = p.past + r + 1;
      if (p.sinkout_mask && static_cast<const float*>(p.sinkout_mask)[r] != 0.f)
        return std::max(nk, std::min(p.sinkout_end, total));
      return nk;
    };
    // Prefill-sized calls on the blocked kernel; decode steps row by row.
    if (p.n_new >= 16) {
      std::vector<int> k0(size_t(p.n_new), 0), k1(size_t(p.n_new));
      for (int r = 0; r < p.n_new; ++r) k1[size_t(r)] = keys(r);
      return attention_blocked(z, q, kc, vc, p, total, k0, k1);
    }
    const size_t tasks = size_t(H) * size_t(p.n_new);
    const auto& K = cpu::kernels();
    auto body = [&](size_t t0, size_t t1) {
      std::vector<float> s(static_cast<size_t>(total));
      for (size_t t = t0; t < t1; ++t) {
        const int h = int(t / size_t(p.n_new)), r = int(t % size_t(p.n_new));
        const int kvh = h / group;
        const int nk = keys(r);
        const float* qr = F(q) + (size_t(r) * H + h) * hd;
        float mx = -INFINITY;
        for (int j = 0; j < nk; ++j) {
          const float* kr = F(kc) + (size_t(j) * KV + kvh) * hd;
          s[j] = K.dot(qr, kr, hd) * p.scale;
          mx = std::max(mx, s[j]);
        }
        const float sum = K.exp_shift(s.data(), nk, mx);
        const float inv = 1.f / sum;
        float* zr = F(z) + (size_t(r) * H + h) * hd;
        std::fill(zr, zr + hd, 0.f);
        for (int j = 0; j < nk; ++j) {
          const float* vr = F(vc) + (size_t(j) * KV + kvh) * hd;
          K.axpy(zr, s[j] * inv, vr, hd);
        }
        if (p.pattern_out) {
          float* row = p.pattern_out + (size_t(h) * p.n_new + r) * total;
          for (int j = 0; j < total; ++j) row[j] = j < nk ? s[j] * inv : 0.f;
        }
      }
    };
    // Decode over a short context is cheaper than waking the pool.
    if (double(p.n_new) * double(total) * H * hd < 65536.0)
      body(0, tasks);
    else
      ThreadPool::global().parallel_for(tasks, body);
  }

  // Non-causal attention within segments (encoders): row r sees the keys of its own segment.
  void attention_segments(Buf z, const Buf& q, const Buf& kc, const Buf& vc, const AttnParams& p) {
    const int H = p.n_heads, KV = p.n_kv, hd = p.head_dim, group = H / KV, n = p.n_new;
    if (p.past != 0) fail("attention: a non-causal (encoder) call needs past == 0, found ", p.past);
    std::vector<int> sb(size_t(n), 0), se(size_t(n), n);
    if (p.segments && p.n_segments > 0) {
      if (p.segments[0] != 0 || p.segments[p.n_segments] != n)
        fail("attention: segments must run from 0 to n_new = ", n, ", found ", p.segments[0], " .. ",
             p.segments[p.n_segments]);
      for (int s = 0; s < p.n_segments; ++s) {
        if (p.segments[s + 1] < p.segments[s]) fail("attention: segments must ascend");
        for (int i = p.segments[s]; i < p.segments[s + 1]; ++i) {
          sb[size_t(i)] = p.segments[s];
          se[size_t(i)] = p.segments[s + 1];
        }
      }
    }
    if (n >= 16) return attention_blocked(z, q, kc, vc, p, n, sb, se);
    const auto& K = cpu::kernels();
    const size_t tasks = size_t(H) * size_t(n);
    auto body = [&](size_t t0, size_t t1) {
      std::vector<float> s(static_cast<size_t>(n));
      for (size_t t = t0; t < t1; ++t) {
        const int h = int(t / size_t(n)), r = int(t % size_t(n));
        const int kvh = h / group, b = sb[size_t(r)], e = se[size_t(r)];
        const float* qr = F(q) + (size_t(r) * H + h) * hd;
        float mx = -INFINITY;
        for (int j = b; j < e; ++j) {
          float& sj = s[size_t(j - b)];
          sj = K.dot(qr, F(kc) + (size_t(j) * KV + kvh) * hd, hd) * p.scale;
          mx = std::max(mx, sj);
        }
        const float inv = 1.f / K.exp_shift(s.data(), e - b, mx);
        float* zr = F(z) + (size_t(r) * H + h) * hd;
        std::fill(zr, zr + hd, 0.f);
        for (int j = b; j < e; ++j) K.axpy(zr, s[size_t(j - b)] * inv, F(vc) + (size_t(j) * KV + kvh) * hd, hd);
        if (p.pattern_out) {
          float* row = p.pattern_out + (size_t(h) * n + r) * n;
          for (int j = 0; j < n; ++j) row[j] = j >= b && j < e ? s[size_t(j - b)] * inv : 0.f;
        }
      }
    };
    if (double(n) * double(n) * H * hd < 65536.0)
      body(0, tasks);
    else
      ThreadPool::global().parallel_for(tasks, body);
  }

  void layernorm(Buf y, const Buf& x, int n, const Weight& w, const Weight* bias, float eps) override {
    const int d = int(w.cols);
    std::vector<float> g(static_cast<size_t>(d)), b;
    to_f32(w.dtype, w.data, g.data(), size_t(d));
    if (bias && *bias) {
      b.resize(size_t(d));
      to_f32(bias->dtype, bias->data, b.data(), size_t(d));
    }
    const float* bp = b.empty() ? nullptr : b.data();
    auto body = [&](size_t i0, size_t i1) {
      host::layernorm(F(y) + i0 * d, F(x) + i0 * d, int(i1 - i0), d, g.data(), bp, eps);
    };
    if (size_t(n) * d < 32768)
      body(0, size_t(n));
    else
      ThreadPool::global().parallel_for(size_t(n), body);
  }

  void gelu(Buf y, const Buf& x, size_t n, bool tanh_approx) override {
    const size_t blk = 8192, nb = (n + blk - 1) / blk;
    auto body = [&](size_t b0, size_t b1) {
      const size_t i0 = b0 * blk, i1 = std::min(n, b1 * blk);
      if (i0 < i1) host::gelu(F(y) + i0, F(x) + i0, i1 - i0, tanh_approx);
    };
    if (n < 32768)
      body(0, nb);
    else
      ThreadPool::global().parallel_for(nb, body);
  }

  void rope_sections(Buf x, int n, int heads, int hd, const int32_t* pos, const int* sections, int n_sections,
                     const float* inv_freq) override {
    host::rope_sections(F(x), n, heads, hd, pos, sections, n_sections, inv_freq);
  }

  void im2col1d(Buf cols, const Buf& x, int C, int K, int stride, int pad, const int* seg, int nseg) override {
    host::im2col1d_rows(K, stride, pad, seg, nseg);
    host::im2col1d(F(cols), F(x), C, K, stride, pad, seg, nseg);
  }

  void gather_rows(Buf y, const Buf& x, int dim, const int32_t* idx, int n) override {
    host::gather_rows(F(y), F(x), dim, idx, n);
  }

  void scatter_add_rows(Buf y, const Buf& x, int dim, const int32_t* idx, const float* scale, int n) override {
    host::scatter_add_rows(F(y), F(x), dim, idx, scale, n);
  }

  void avgpool_rows(Buf y, const Buf& x, int n, int dim, int k) override {
    host::avgpool_rows(F(y), F(x), n, dim, k);
  }

  void swiglu(Buf out, const Buf& gate, const Buf& up, size_t n) override {
    const auto& K = cpu::kernels();
    const size_t blk = 8192;
    auto body = [&](size_t b0, size_t b1) {
      const size_t i0 = b0 * blk, i1 = std::min(n, b1 * blk);
      if (i0 < i1) K.swiglu(F(out) + i0, F(gate) + i0, F(up) + i0, int64_t(i1 - i0));
    };
    const size_t nb = (n + blk - 1) / blk;
    if (n < 32768)
      body(0, nb);
    else
      ThreadPool::global().parallel_for(nb, body);
  }

  void add(Buf y, const Buf& x, size_t n) override {
    cpu::kernels().axpy(F(y), 1.f, F(x), int64_t(n));  // y + 1·x: exact, same as y += x
  }

  void phi_detect(Buf rec, const Buf& h, int n, int dim, float abs_thr, float med_mul) override {
    host::phi_detect(F(rec), F(h), n, dim, abs_thr, med_mul);
  }
  void outro_sets(Buf enh, Buf done, Buf cum, const Buf& rec, int n, bool enhance, bool once) override {
    host::outro_sets(F(enh), F(done), F(cum), F(rec), n, enhance, once);
  }
  void masked_mean(Buf out, const Buf& x, int n, int dim, const Buf& flags) override {
    host::masked_mean(F(out), F(x), n, dim, F(flags));
  }
  void gate_heads(Buf z, int n, int heads, int kv_heads, int hd, const Buf& vbar, const Buf* excl, int excl_n,
                  float gamma, float temp, bool rescale, Buf counter) override {
    host::gate_heads(F(z), n, heads, kv_heads, hd, F(vbar), excl ? F(*excl) : nullptr, excl_n, gamma, temp, rescale,
                     counter.ptr ? F(counter) : nullptr);
  }

  void zero_cols(Buf x, int n, int row_len, int col0, int ncols) override {
    for (int i = 0; i < n; ++i) std::fill_n(F(x) + size_t(i) * row_len + col0, ncols, 0.f);
  }

  void zero_top_dim(Buf x, int row, int groups, int gdim) override {
    for (int g = 0; g < groups; ++g) {
      float* v = F(x) + (size_t(row) * groups + g) * gdim;
      int best = 0;
      for (int c = 1; c < gdim; ++c)
        if (std::fabs(v[c]) > std::fabs(v[best])) best = c;
      v[best] = 0.f;
    }
  }

 private:
  std::vector<uint16_t> xpack_;  // the bf16 matrix path's packed x, reused across products
  std::vector<float> kt_;        // transposed keys for Kernels::attn, reused across calls
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend() { return std::make_unique<CpuBackend>(); }

#ifndef OUTRO_HAVE_CUDA
std::unique_ptr<Backend> make_cuda_backend(int, std::string* why) {
  if (why) *why = "this build has no CUDA backend (nvcc was not found at configure time)";
  return nullptr;
}
int cuda_device_count() { return 0; }
#endif

}  // namespace outro
