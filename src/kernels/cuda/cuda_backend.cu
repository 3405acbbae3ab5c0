// The CUDA backend: float32 activations in device memory (this first version keeps activations,
// the KV cache included, in float32), weights uploaded once and kept in bf16 (f16 checkpoints are
// converted to bf16; float32 checkpoints stay float32), float32 accumulation everywhere.
// Decode-sized products (n <= 8 rows) run on our own bandwidth-bound GEMV (gemv.cu); larger ones on
// cuBLAS (bf16 inputs, fp32 compute and output, a separate bias pass); with OUTRO_CUDA_LT=1 on
// cuBLASLt with the bias in its epilogue, and with OUTRO_CUDA_GROUP=1 their input rounded to bf16
// once for all the products that share it, by the norm or SwiGLU that wrote it where that was the
// op before (both off by default: not yet run on a GPU). Attention, norms, RoPE, SwiGLU and the
// interventions' ops are our own kernels (attention.cu, ops.cu). All work is ordered on one stream;
// the host waits only where the interface hands data back (download, attention patterns) or a
// staging ring wraps.
#include <cublasLt.h>
#include <cublas_v2.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "io/safetensors.h"
#include "kernels/backend.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_api.h"
#include "kernels/host_ops.h"

namespace outro {

namespace {

using cuda::WType;

const char* cublas_status(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "success";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED: return "allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE: return "invalid value";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "architecture mismatch";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "execution failed";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "not supported";
    default: return "error";
  }
}
void blas_ck(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) fail("cuBLAS: ", what, ": ", cublas_status(s));
}

inline float* F(const Buf& b) { return static_cast<float*>(b.ptr); }
double mib(size_t b) { return double(b) / (1024.0 * 1024.0); }

class CudaBackend final : public Backend {
 public:
  // One product of a group that shares its input: y[n, rows] = x · wᵀ (+ bias).
  struct GemmOut {
    float* y;
    const void* w;
    const float* bias;
    int64_t rows;
  };
  explicit CudaBackend(int dev) : dev_(dev) {
    OUTRO_CK(cudaSetDevice(dev));
    cudaDeviceProp prop{};
    OUTRO_CK(cudaGetDeviceProperties(&prop, dev));
    gpu_name_ = prop.name;
    sm_major_ = prop.major;
    OUTRO_CK(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking));
    blas_ck(cublasCreate(&blas_), "cublasCreate");
    blas_ck(cublasSetStream(blas_, s_), "cublasSetStream");
    ring_grow(size_t(8) << 20);
    if (const char* e = std::getenv("OUTRO_CUDA_ATTN")) {
      const std::string v = e;
      force_attn_ = v == "rows" ? 1 : v == "mma" ? 2 : v == "dec" ? 3 : v == "dec-global" ? 4 : v == "dec-one" ? 5 : 0;
    }
    if (const char* e = std::getenv("OUTRO_CUDA_FUSE")) fuse_ = e[0] != '0';
    if (const char* e = std::getenv("OUTRO_CUDA_PINNED_DL")) pinned_dl_ = e[0] != '0';
    if (const char* e = std::getenv("OUTRO_CUDA_LT")) use_lt_ = e[0] == '1';
    if (const char* e = std::getenv("OUTRO_CUDA_LT_TUNE")) lt_tune_ = e[0] == '1';
    if (const char* e = std::getenv("OUTRO_CUDA_GROUP")) group_ = e[0] == '1';
    if (const char* e = std::getenv("OUTRO_CUDA_MOE")) moe_device_ = e[0] != '0';
  }
  ~CudaBackend() override {
    try {
      flush();
    } catch (...) {
    }
    cudaStreamSynchronize(s_);
    for (void* p : owned_) cudaFree(p);
    if (pin_) cudaFreeHost(pin_);
    if (phi_pin_) cudaFreeHost(phi_pin_);
    if (argmax_pin_) cudaFreeHost(argmax_pin_);
    if (dl_pin_) cudaFreeHost(dl_pin_);
    for (auto& e : dl_ev_)
      if (e) cudaEventDestroy(e);
    if (dring_) cudaFree(dring_);
    for (auto& [key, plan] : lt_plans_) plan.destroy();
    if (lt_ws_) cudaFree(lt_ws_);
    if (lt_) cublasLtDestroy(lt_);
    for (void* p : {attn_scratch_, static_cast<void*>(xb_), static_cast<void*>(pattern_dev_), static_cast<void*>(invf_dev_), static_cast<void*>(tmp_), phi_scratch_, static_cast<void*>(attn_ctr_), static_cast<void*>(argmax_dev_), moe_scratch_})
      if (p) cudaFree(p);
    cublasDestroy(blas_);
    cudaStreamDestroy(s_);
  }

  const char* name() const override { return "cuda"; }

  // ---- memory ----
  void* dmalloc(size_t bytes, const char* what) {
    void* p = nullptr;
    if (bytes == 0) return nullptr;
    const cudaError_t e = cudaMalloc(&p, bytes);
    if (e != cudaSuccess) {
      cudaGetLastError();
      size_t fr = 0, tot = 0;
      cudaMemGetInfo(&fr, &tot);
      fail("CUDA: cannot allocate ", mib(bytes), " MiB for ", what, " on ", gpu_name_, " (", mib(fr), " MiB free of ",
           mib(tot), " MiB): the model and its KV cache do not fit on this GPU; use a shorter context or --device cpu");
    }
    return p;
  }

  Buf alloc(size_t n) override {
    flush();
    Buf b;
    b.n = n;
    if (!n) return b;
    b.ptr = dmalloc(n * sizeof(float), "activations / KV cache");
    OUTRO_CK(cudaMemsetAsync(b.ptr, 0, n * sizeof(float), s_));
    return b;
  }
  void release(Buf& b) override {
    flush();
    if (b.ptr) {
      OUTRO_CK(cudaStreamSynchronize(s_));
      OUTRO_CK(cudaFree(b.ptr));
    }
    b = Buf{};
  }
  void upload(Buf dst, size_t off, const float* src, size_t n) override {
    flush();
    if (!n) return;
    const size_t bytes = n * sizeof(float);
    if (bytes <= (size_t(1) << 20)) {
      const void* d = stage(src, bytes);
      OUTRO_CK(cudaMemcpyAsync(F(dst) + off, d, bytes, cudaMemcpyDeviceToDevice, s_));
    } else {
      OUTRO_CK(cudaMemcpyAsync(F(dst) + off, src, bytes, cudaMemcpyHostToDevice, s_));
      OUTRO_CK(cudaStreamSynchronize(s_));  // src may be reused by the caller at once
    }
  }
  void download(const Buf& src, size_t off, float* dst, size_t n) override {
    flush();
    if (!n) return;
    const size_t bytes = n * sizeof(float);
    if (!pinned_dl_ || bytes < kDlMin || bytes > kDlMax) {
      OUTRO_CK(cudaMemcpyAsync(dst, F(src) + off, bytes, cudaMemcpyDeviceToHost, s_));
      OUTRO_CK(cudaStreamSynchronize(s_));
      return;
    }
    // Through pinned memory in chunks (a decode step's logits: 0.6 MB for a 152k vocabulary): the
    // DMA of chunk i + 1 runs while the host copies chunk i out, instead of the driver staging a
    // pageable destination itself.
    if (bytes > dl_pin_bytes_) {
      if (dl_pin_) {
        OUTRO_CK(cudaStreamSynchronize(s_));
        cudaFreeHost(dl_pin_);
        dl_pin_ = nullptr;
      }
      dl_pin_bytes_ = std::max(bytes, size_t(1) << 20);
      OUTRO_CK(cudaHostAlloc(&dl_pin_, dl_pin_bytes_, cudaHostAllocDefault));
    }
    if (!dl_ev_[0])
      for (auto& e : dl_ev_) OUTRO_CK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    const size_t chunk = std::max(kDlChunk, (bytes + kDlEvents - 1) / kDlEvents + 255) & ~size_t(255);
    const char* from = reinterpret_cast<const char*>(F(src) + off);
    char* pin = static_cast<char*>(dl_pin_);
    int k = 0;
    for (size_t a = 0; a < bytes; a += chunk, ++k) {
      OUTRO_CK(cudaMemcpyAsync(pin + a, from + a, std::min(chunk, bytes - a), cudaMemcpyDeviceToHost, s_));
      OUTRO_CK(cudaEventRecord(dl_ev_[k], s_));
    }
    k = 0;
    for (size_t a = 0; a < bytes; a += chunk, ++k) {
      OUTRO_CK(cudaEventSynchronize(dl_ev_[k]));
      std::memcpy(reinterpret_cast<char*>(dst) + a, pin + a, std::min(chunk, bytes - a));
    }
  }
  void copy(Buf dst, size_t doff, const Buf& src, size_t soff, size_t n) override {
    if (!n) return;
    float* d = F(dst) + doff;
    const float* sp = F(src) + soff;
    // The KV-cache writes after rope(q), rope(k): the rotated k's copy, then v's copy (which launches
    // the group as one kernel).
    if (pend_ == Pend::Rope && pr_count_ == 2 && !pr_vdst_) {
      const size_t kn = size_t(pr_n_) * size_t(pr_heads_[1]) * size_t(pr_hd_), kb = kn * 4;
      const size_t qb = size_t(pr_n_) * size_t(pr_heads_[0]) * size_t(pr_hd_) * 4;
      if (n == kn && !pr_kdst_ && sp == pr_x_[1] && !ov(d, kb, pr_x_[0], qb) && !ov(d, kb, pr_x_[1], kb)) {
        pr_kdst_ = d;
        return;
      }
      if (n == kn && pr_kdst_ && !ov(sp, kb, pr_x_[0], qb) && !ov(sp, kb, pr_x_[1], kb) && !ov(sp, kb, pr_kdst_, kb) &&
          !ov(d, kb, pr_x_[0], qb) && !ov(d, kb, pr_x_[1], kb) && !ov(d, kb, pr_kdst_, kb) && !ov(d, kb, sp, kb)) {
        pr_vdst_ = d;
        pr_vsrc_ = sp;
        flush();
        return;
      }
    }
    flush();
    if (d < sp + n && sp < d + n && d != sp) {  // overlapping (memmove semantics): through a temporary
      if (n > tmp_n_) {
        if (tmp_) {
          OUTRO_CK(cudaStreamSynchronize(s_));
          cudaFree(tmp_);
        }
        tmp_n_ = n;
        tmp_ = static_cast<float*>(dmalloc(n * 4, "copy temporary"));
      }
      cuda::copy(s_, tmp_, sp, n);
      cuda::copy(s_, d, tmp_, n);
      return;
    }
    cuda::copy(s_, d, sp, n);  // a kernel: keeps the chain of dependent launches
  }
  void fill(Buf dst, size_t off, size_t n, float v) override {
    flush();
    cuda::fill(s_, F(dst) + off, n, v);
  }
  void synchronize() override {
    flush();
    OUTRO_CK(cudaStreamSynchronize(s_));
  }
  cudaStream_t stream() const { return s_; }

  // ---- weights ----
  Weight weight(const TensorInfo& t) override {
    if (t.dtype != DType::F32 && t.dtype != DType::F16 && t.dtype != DType::BF16)
      fail(t.file, ": tensor ", t.name, ": dtype ", dtype_name(t.dtype),
           " is not supported for weights (expected F32, F16 or BF16)");
    Weight w;
    w.src = &t;
    bool vec = false;
    if (t.shape.size() == 2) {
      w.rows = t.shape[0], w.cols = t.shape[1];
    } else if (t.shape.size() == 1) {
      w.rows = 1, w.cols = t.shape[0], vec = true;
    } else if (t.shape.size() > 2 && t.shape[0] > 0) {
      w.rows = t.shape[0], w.cols = t.numel() / t.shape[0];
    } else {
      fail(t.file, ": tensor ", t.name, ": expected a matrix or vector, found shape ", t.shape_str());
    }
    const size_t n = size_t(w.rows) * size_t(w.cols);
    const std::string sig = signature(t);
    auto it = cache_.find(t.data);
    if (it != cache_.end() && it->second.sig == sig && it->second.w.rows == w.rows && it->second.w.cols == w.cols) {
      Weight c = it->second.w;
      c.src = &t;
      return c;
    }
    // Vectors (norms, biases) as float32; matrices in bf16 (f16 converted) or float32 as stored.
    const bool f32 = vec || t.dtype == DType::F32;
    const size_t bytes = n * (f32 ? 4 : 2);
    size_t fr = 0, tot = 0;
    OUTRO_CK(cudaMemGetInfo(&fr, &tot));
    if (bytes + (size_t(64) << 20) > fr)
      fail("CUDA: the model does not fit on ", gpu_name_, ": tensor ", t.name, " needs ", mib(bytes), " MiB, ",
           mib(fr), " MiB free of ", mib(tot), " MiB (weights already on the GPU: ", mib(weight_bytes_),
           " MiB); use --device cpu");
    void* d = dmalloc(bytes, ("weight " + t.name).c_str());
    owned_.push_back(d);
    weight_bytes_ += bytes;
    if (f32) {
      w.dtype = DType::F32;
      if (t.dtype == DType::F32) {
        OUTRO_CK(cudaMemcpy(d, t.data, bytes, cudaMemcpyHostToDevice));
      } else {
        upload_converted(d, t, n, true);
      }
    } else {
      w.dtype = DType::BF16;
      if (t.dtype == DType::BF16)
        OUTRO_CK(cudaMemcpy(d, t.data, bytes, cudaMemcpyHostToDevice));
      else
        upload_converted(d, t, n, false);
    }
    w.data = d;
    cache_[t.data] = Cached{w, sig};
    return w;
  }

  // ---- ops ----
  void embed(Buf out, const Weight& table, const int32_t* ids, int n) override {
    flush();
    if (n <= 0) return;
    const int32_t* d = static_cast<const int32_t*>(stage(ids, size_t(n) * 4));
    cuda::embed(s_, F(out), table.data, wt(table), table.cols, d, n);
  }

  void matmul(Buf y, const Buf& x, int n, const Weight& w, const Weight* bias) override {
    const float* b = bias && *bias ? static_cast<const float*>(bias->data) : nullptr;
    if (n <= 0) return;
    if (n <= kGemvMaxN) {
      // Products that share x (q, k, v; gate, up) wait to be launched together.
      const WType t = wt(w);
      const size_t yb = size_t(n) * size_t(w.rows) * 4, xb = size_t(n) * size_t(w.cols) * 4;
      if (fuse_ && cuda::gemv_vectorizable(w.data, t, F(x), w.cols) && !ov(y.ptr, yb, x.ptr, xb)) {
        bool join = pend_ == Pend::Gemv && pg_count_ < 3 && pg_x_ == F(x) && pg_n_ == n && pg_cols_ == w.cols &&
                    pg_wt_ == t;
        for (int i = 0; join && i < pg_count_; ++i)
          if (ov(y.ptr, yb, pg_[i].y, size_t(n) * size_t(pg_[i].rows) * 4)) join = false;
        if (!join) {
          flush();
          pend_ = Pend::Gemv;
          pg_count_ = 0;
          pg_x_ = F(x), pg_n_ = n, pg_cols_ = w.cols, pg_wt_ = t;
        }
        pg_[pg_count_++] = cuda::GemvOut{F(y), w.data, b, w.rows};
        return;
      }
      flush();
      cuda::gemv(s_, F(y), F(x), n, w.data, wt(w), w.rows, w.cols, b);
      return;
    }
    if (wt(w) == WType::BF16) {
      // Products that share x (q, k, v; gate, up) wait to be launched together: x is rounded to bf16
      // once, by the norm or SwiGLU waiting before them when that wrote x, else by to_bf16.
      const size_t yb = size_t(n) * size_t(w.rows) * 4, xbytes = size_t(n) * size_t(w.cols) * 4;
      if (fuse_ && group_ && !ov(y.ptr, yb, x.ptr, xbytes)) {
        bool join = pend_ == Pend::Gemm && pm_count_ < 3 && pm_x_ == F(x) && pm_n_ == n && pm_cols_ == w.cols;
        for (int i = 0; join && i < pm_count_; ++i)
          if (ov(y.ptr, yb, pm_[i].y, size_t(n) * size_t(pm_[i].rows) * 4)) join = false;
        if (!join) {
          const size_t nx = size_t(n) * size_t(w.cols);
          bool ready = false;
          if (pend_ == Pend::Norm && pn_y_ == F(x) && pn_n_ == n && pn_d_ == w.cols) {
            pend_ = Pend::None;
            launch_norm(xb_for(nx));
            ready = true;
          } else if (pend_ == Pend::Swiglu && ps_out_ == F(x) && ps_n_ == nx) {
            pend_ = Pend::None;
            cuda::swiglu(s_, ps_out_, ps_g_, ps_u_, ps_n_, xb_for(nx));
            ready = true;
          } else {
            flush();
          }
          pend_ = Pend::Gemm;
          pm_count_ = 0;
          pm_x_ = F(x), pm_n_ = n, pm_cols_ = w.cols, pm_ready_ = ready;
        }
        pm_[pm_count_++] = GemmOut{F(y), w.data, b, w.rows};
        return;
      }
      flush();
      const size_t nx = size_t(n) * size_t(w.cols);
      __nv_bfloat16* xb = xb_for(nx);
      cuda::to_bf16(s_, xb, F(x), nx);
      gemm_bf16(xb, n, w.cols, GemmOut{F(y), w.data, b, w.rows});
      return;
    }
    flush();
    const float one = 1.f, zero = 0.f;
    blas_ck(cublasSgemm(blas_, CUBLAS_OP_T, CUBLAS_OP_N, int(w.rows), n, int(w.cols), &one,
                        static_cast<const float*>(w.data), int(w.cols), F(x), int(w.cols), &zero, F(y), int(w.rows)),
            "cublasSgemm");
    if (b) cuda::add_bias(s_, F(y), b, n, w.rows);
  }

  void rmsnorm(Buf y, const Buf& x, int n, const Weight& w, float eps) override {
    const int d = int(w.cols);
    const float* g = vec_ptr(w);
    // A residual add waiting for this norm of its sum: one kernel.
    const float* add_x = nullptr;
    if (pend_ == Pend::Add && n > 0 && pa_y_ == F(x) && pa_n_ == size_t(n) * size_t(d)) {
      const size_t bytes = pa_n_ * 4;
      if (!ov(pa_x_, bytes, pa_y_, bytes) && !ov(y.ptr, bytes, pa_x_, bytes) &&
          (y.ptr == x.ptr || !ov(y.ptr, bytes, x.ptr, bytes))) {
        pend_ = Pend::None;
        add_x = pa_x_;
      }
    }
    flush();
    // Prefill-sized norms wait for the next op: a matrix product of their output takes a bf16 copy of
    // it from the norm's kernel.
    pend_ = Pend::Norm;
    pn_y_ = F(y), pn_x_ = F(x), pn_a_ = add_x, pn_n_ = n, pn_d_ = d, pn_g_ = g, pn_eps_ = eps;
    if (!(fuse_ && group_ && n > kGemvMaxN)) flush();
  }

  void rope(Buf x, int n, int heads, int hd, const int32_t* pos, const float* inv_freq) override {
    if (n <= 0) return;
    bool contiguous = true;
    for (int i = 1; i < n && contiguous; ++i) contiguous = pos[i] == pos[0] + i;
    if (fuse_ && contiguous) {  // rope(q), rope(k) and the cache writes that follow: one kernel
      const int half = hd / 2;
      const bool same_f = invf_host_.size() == size_t(half) && std::memcmp(invf_host_.data(), inv_freq, size_t(half) * 4) == 0;
      const bool join = pend_ == Pend::Rope && pr_count_ == 1 && same_f && pr_n_ == n && pr_hd_ == hd &&
                        pr_pos0_ == pos[0] &&
                        !ov(x.ptr, size_t(n) * heads * hd * 4, pr_x_[0], size_t(n) * pr_heads_[0] * hd * 4);
      if (!join) flush();
      const float* f = inv_freq_dev(inv_freq, half);
      if (join) {
        pr_x_[1] = F(x), pr_heads_[1] = heads, pr_count_ = 2;
      } else {
        pend_ = Pend::Rope;
        pr_count_ = 1;
        pr_x_[0] = F(x), pr_heads_[0] = heads;
        pr_n_ = n, pr_hd_ = hd, pr_pos0_ = pos[0], pr_f_ = f;
        pr_kdst_ = pr_vdst_ = nullptr;
        pr_vsrc_ = nullptr;
      }
      return;
    }
    flush();
    const float* f = inv_freq_dev(inv_freq, hd / 2);
    const int32_t* dp = contiguous ? nullptr : static_cast<const int32_t*>(stage(pos, size_t(n) * 4));
    cuda::rope(s_, F(x), n, heads, hd, dp, pos[0], f);
  }

  void attention(Buf z, const Buf& q, const Buf& kc, const Buf& vc, const AttnParams& p) override {
    flush();
    cuda::AttnDev d{};
    d.n_heads = p.n_heads, d.n_kv = p.n_kv, d.head_dim = p.head_dim, d.n_new = p.n_new, d.past = p.past;
    d.scale = p.scale;
    d.causal = p.causal;
    if (p.n_heads <= 0 || p.n_kv <= 0 || p.n_heads % p.n_kv)
      fail("attention: ", p.n_heads, " heads are not a multiple of ", p.n_kv, " KV heads");
    if (p.causal) {
      d.sinkout_mask = static_cast<const float*>(p.sinkout_mask);
      d.sinkout_end = p.sinkout_end;
      if (p.gate) {
        const AttnGate& g = *p.gate;
        d.gate_vbar = F(*g.vbar);
        d.gate_excl = g.excl ? F(*g.excl) : nullptr;
        d.gate_excl_n = g.excl_n;
        d.gate_gamma = g.gamma, d.gate_temp = g.temp, d.gate_rescale = g.rescale;
        d.gate_counter = g.counter.ptr ? F(g.counter) : nullptr;
      }
    } else {
      if (p.past != 0) fail("attention: a non-causal (encoder) call needs past == 0, found ", p.past);
      if (p.segments && p.n_segments > 0) {
        if (p.segments[0] != 0 || p.segments[p.n_segments] != p.n_new)
          fail("attention: segments must run from 0 to n_new = ", p.n_new, ", found ", p.segments[0], " .. ",
               p.segments[p.n_segments]);
        for (int s = 0; s < p.n_segments; ++s)
          if (p.segments[s + 1] < p.segments[s]) fail("attention: segments must ascend");
        d.segments = static_cast<const int*>(stage(p.segments, size_t(p.n_segments + 1) * 4));
        d.n_segments = p.n_segments;
      }
    }
    const size_t need = cuda::attention_scratch_bytes(d, sm_major_);
    if (need > attn_bytes_) {
      if (attn_scratch_) {
        OUTRO_CK(cudaStreamSynchronize(s_));
        cudaFree(attn_scratch_);
        attn_scratch_ = nullptr;
      }
      attn_bytes_ = std::max(need, attn_bytes_ + attn_bytes_ / 2);
      attn_scratch_ = dmalloc(attn_bytes_, "attention scratch");
    }
    float* pat = nullptr;
    const size_t total = size_t(p.past) + p.n_new;
    const size_t pat_n = size_t(p.n_heads) * p.n_new * (p.causal ? total : size_t(p.n_new));
    if (p.pattern_out) {
      if (pat_n > pattern_n_) {
        if (pattern_dev_) {
          OUTRO_CK(cudaStreamSynchronize(s_));
          cudaFree(pattern_dev_);
        }
        pattern_n_ = pat_n;
        pattern_dev_ = static_cast<float*>(dmalloc(pat_n * 4, "attention pattern"));
      }
      pat = pattern_dev_;
    }
    if (!attn_ctr_) {
      attn_ctr_ = static_cast<unsigned*>(dmalloc(cuda::kAttnCounters * sizeof(unsigned), "attention counters"));
      OUTRO_CK(cudaMemsetAsync(attn_ctr_, 0, cuda::kAttnCounters * sizeof(unsigned), s_));
    }
    last_attn_ = cuda::attention(s_, F(z), F(q), F(kc), F(vc), d, pat, {attn_scratch_, attn_bytes_, attn_ctr_},
                                 sm_major_, force_attn_);
    if (d.gate_vbar && last_attn_ != std::string("mma"))  // only the tensor-core kernel gates its own rows
      cuda::gate_heads(s_, F(z), p.n_new, p.n_heads, p.n_kv, p.head_dim, d.gate_vbar, d.gate_excl, d.gate_excl_n,
                       d.gate_gamma, d.gate_temp, d.gate_rescale, d.gate_counter);
    if (pat) {
      OUTRO_CK(cudaMemcpyAsync(p.pattern_out, pat, pat_n * 4, cudaMemcpyDeviceToHost, s_));
      OUTRO_CK(cudaStreamSynchronize(s_));
    }
  }

  void swiglu(Buf out, const Buf& gate, const Buf& up, size_t n) override {
    // gate and up products waiting with the same x: one GEMV launch that also writes the SwiGLU.
    if (pend_ == Pend::Gemv && pg_count_ == 2 && pg_[0].y == F(gate) && pg_[1].y == F(up) &&
        pg_[0].rows == pg_[1].rows && size_t(pg_n_) * size_t(pg_[0].rows) == n) {
      const size_t bytes = n * 4, xb = size_t(pg_n_) * size_t(pg_cols_) * 4;
      if (!ov(out.ptr, bytes, pg_x_, xb) &&
          (out.ptr == gate.ptr || out.ptr == up.ptr || (!ov(out.ptr, bytes, gate.ptr, bytes) && !ov(out.ptr, bytes, up.ptr, bytes)))) {
        pend_ = Pend::None;
        cuda::gemv_multi(s_, pg_x_, pg_n_, pg_cols_, pg_wt_, pg_, 2, F(out));
        return;
      }
    }
    flush();
    if (fuse_ && group_ && n > size_t(kGemvMaxN) * 64) {  // waits: a matrix product of out takes a bf16 copy of it
      pend_ = Pend::Swiglu;
      ps_out_ = F(out), ps_g_ = F(gate), ps_u_ = F(up), ps_n_ = n;
      return;
    }
    cuda::swiglu(s_, F(out), F(gate), F(up), n);
  }
  // Waits for the next op: an RMSNorm of the sum takes it into its kernel.
  void add(Buf y, const Buf& x, size_t n) override {
    flush();
    if (fuse_ && n > 0) {
      pend_ = Pend::Add;
      pa_y_ = F(y), pa_x_ = F(x), pa_n_ = n;
      return;
    }
    cuda::add(s_, F(y), F(x), n);
  }

  void phi_detect(Buf rec, const Buf& h, int n, int dim, float abs_thr, float med_mul) override {
    flush();
    if (size_t(n) * size_t(dim) >= (size_t(1) << 32))
      fail("phi_detect: ", n, " x ", dim, " values is more than the CUDA statistics take (< 2^32)");
    cuda::phi_detect(s_, F(rec), F(h), n, dim, abs_thr, med_mul, phi_scratch(n, dim));
  }
  void outro_sets(Buf enh, Buf done, Buf cum, const Buf& rec, int n, bool enhance, bool once) override {
    flush();
    cuda::outro_sets(s_, F(enh), F(done), F(cum), F(rec), n, enhance, once);
  }
  void masked_mean(Buf out, const Buf& x, int n, int dim, const Buf& flags) override {
    flush();
    cuda::masked_mean(s_, F(out), F(x), n, dim, F(flags));
  }
  void gate_heads(Buf z, int n, int heads, int kv_heads, int hd, const Buf& vbar, const Buf* excl, int excl_n,
                  float gamma, float temp, bool rescale, Buf counter) override {
    flush();
    cuda::gate_heads(s_, F(z), n, heads, kv_heads, hd, F(vbar), excl ? F(*excl) : nullptr, excl_n, gamma, temp,
                     rescale, counter.ptr ? F(counter) : nullptr);
  }
  void zero_cols(Buf x, int n, int row_len, int col0, int ncols) override {
    flush();
    cuda::zero_cols(s_, F(x), n, row_len, col0, ncols);
  }
  void zero_top_dim(Buf x, int row, int groups, int gdim) override {
    flush();
    cuda::zero_top_dim(s_, F(x), row, groups, gdim);
  }

  // ---- encoder ops ----
  void layernorm(Buf y, const Buf& x, int n, const Weight& w, const Weight* bias, float eps) override {
    flush();
    cuda::layernorm(s_, F(y), F(x), n, int(w.cols), vec_ptr(w), bias && *bias ? vec_ptr(*bias) : nullptr, eps);
  }
  void gelu(Buf y, const Buf& x, size_t n, bool tanh_approx) override {
    flush();
    cuda::gelu(s_, F(y), F(x), n, tanh_approx);
  }
  void rope_sections(Buf x, int n, int heads, int hd, const int32_t* pos, const int* sections, int n_sections,
                     const float* inv_freq) override {
    flush();
    if (n <= 0) return;
    const int half = hd / 2;
    std::vector<int> sec_of(size_t(half), n_sections - 1);
    int c0 = 0;
    for (int s = 0; s < n_sections; ++s) {
      for (int c = c0; c < std::min(half, c0 + sections[s]); ++c) sec_of[size_t(c)] = s;
      c0 += sections[s];
    }
    if (c0 != half) fail("rope_sections: sections sum to ", c0, ", expected head_dim / 2 = ", half);
    const int* ds = static_cast<const int*>(stage(sec_of.data(), sec_of.size() * 4));
    const int32_t* dp = static_cast<const int32_t*>(stage(pos, size_t(n_sections) * n * 4));
    const float* df = static_cast<const float*>(stage(inv_freq, size_t(half) * 4));
    cuda::rope_sections(s_, F(x), n, heads, hd, dp, ds, df);
  }
  void im2col1d(Buf cols, const Buf& x, int C, int K, int stride, int pad, const int* seg, int nseg) override {
    flush();
    const int rows = host::im2col1d_rows(K, stride, pad, seg, nseg);
    if (rows <= 0 || nseg <= 0) return;
    std::vector<int> a(size_t(nseg) * 3);
    int r = 0;
    for (int s = 0; s < nseg; ++s) {
      const int len = seg[s + 1] - seg[s];
      a[size_t(s)] = seg[s];
      a[size_t(nseg + s)] = len;
      a[size_t(2 * nseg + s)] = r;
      r += len + 2 * pad >= K ? (len + 2 * pad - K) / stride + 1 : 0;
    }
    const int* d = static_cast<const int*>(stage(a.data(), a.size() * 4));
    cuda::im2col1d(s_, F(cols), F(x), C, K, stride, pad, d, d + nseg, d + 2 * nseg, nseg, rows);
  }
  void gather_rows(Buf y, const Buf& x, int dim, const int32_t* idx, int n) override {
    flush();
    if (n <= 0) return;
    const int32_t* d = static_cast<const int32_t*>(stage(idx, size_t(n) * 4));
    cuda::gather_rows(s_, F(y), F(x), dim, d, n);
  }
  // Untested on a GPU here (written and compiled without one); tests/test_cuda.cpp's op checks do not cover it yet.
  void scatter_add_rows(Buf y, const Buf& x, int dim, const int32_t* idx, const float* scale, int n) override {
    flush();
    if (n <= 0) return;
    // One staged copy holds both host arrays (indices, then scales).
    std::vector<uint8_t> host(size_t(n) * 8);
    std::memcpy(host.data(), idx, size_t(n) * 4);
    std::memcpy(host.data() + size_t(n) * 4, scale, size_t(n) * 4);
    const uint8_t* d = static_cast<const uint8_t*>(stage(host.data(), host.size()));
    cuda::scatter_add_rows(s_, F(y), F(x), dim, reinterpret_cast<const int32_t*>(d),
                           reinterpret_cast<const float*>(d + size_t(n) * 4), n);
  }
  void moe_route(Buf route, const Buf& logits, int n, int experts, int k, bool norm) override {
    flush();
    if (n <= 0) return;
    if (k < 1 || k > experts || experts > cuda::kMoeMaxExperts || k > cuda::kMoeMaxK)
      return Backend::moe_route(route, logits, n, experts, k, norm);  // fails for k outside 1 .. experts
    cuda::moe_route(s_, F(route), F(logits), n, experts, k, norm);
  }
  // The experts' products on the device (moe.cu) when every expert is bf16 with dimensions that are
  // multiples of 8; otherwise (float32 checkpoints, odd shapes) Backend's default, which downloads the route.
  void moe_experts(Buf y, const Buf& x, int n, const Buf& route, int k, ExpertSet& ex) override {
    flush();
    if (n <= 0) return;
    const void* const* table = moe_table(ex);
    if (!moe_device_ || !table || k < 1 || k > cuda::kMoeMaxK) return Backend::moe_experts(y, x, n, route, k, ex);
    const int E = int(ex.gate.size()), D = int(ex.gate[0].cols), I = int(ex.gate[0].rows);
    const size_t need = cuda::moe_scratch_bytes(n, k, E, D, I);
    if (need > moe_bytes_) {
      if (moe_scratch_) {
        OUTRO_CK(cudaStreamSynchronize(s_));
        cudaFree(moe_scratch_);
        moe_scratch_ = nullptr;
      }
      moe_scratch_ = dmalloc(need, "mixture-of-experts scratch");
      moe_bytes_ = need;
    }
    cuda::moe_experts(s_, F(y), F(x), n, k, F(route), table, E, D, I, moe_scratch_);
  }
  void avgpool_rows(Buf y, const Buf& x, int n, int dim, int k) override {
    flush();
    if (k <= 0) fail("avgpool_rows: k must be positive, found ", k);
    cuda::avgpool_rows(s_, F(y), F(x), n / k, dim, k);
  }
  // Greedy decoding: the index is found on the GPU and 4 bytes come back (pinned) instead of the row.
  int32_t argmax(const Buf& x, size_t off, int n) override {
    flush();
    if (n <= 0) fail("argmax: expected at least one value, found ", n);
    if (off + size_t(n) > x.n) fail("argmax: ", off, " + ", n, " values is past the buffer's ", x.n);
    if (!argmax_dev_) {
      argmax_dev_ = static_cast<int32_t*>(dmalloc(sizeof(int32_t), "argmax result"));
      OUTRO_CK(cudaHostAlloc(&argmax_pin_, sizeof(int32_t), cudaHostAllocDefault));
    }
    cuda::argmax(s_, F(x) + off, n, argmax_dev_);
    OUTRO_CK(cudaMemcpyAsync(argmax_pin_, argmax_dev_, sizeof(int32_t), cudaMemcpyDeviceToHost, s_));
    OUTRO_CK(cudaStreamSynchronize(s_));
    return *static_cast<const int32_t*>(argmax_pin_);
  }

  // ---- deferred ops ----
  // The decoder's small ops are fused by looking one call ahead: an add waits for the RMSNorm of
  // its sum (add_rmsnorm), GEMVs of the same x wait for each other (q/k/v, gate/up) and for a
  // SwiGLU of their outputs, rope(q) waits for rope(k) and for the KV-cache copies of k and v. Any
  // call that cannot join the waiting group launches it first (flush), so every op still happens in
  // program order; downloads, uploads and releases flush too. OUTRO_CUDA_FUSE=0 turns it off.
  void flush() {
    const Pend p = pend_;
    pend_ = Pend::None;
    switch (p) {
      case Pend::None:
        return;
      case Pend::Add:
        cuda::add(s_, pa_y_, pa_x_, pa_n_);
        return;
      case Pend::Norm:
        launch_norm(nullptr);
        return;
      case Pend::Swiglu:
        cuda::swiglu(s_, ps_out_, ps_g_, ps_u_, ps_n_);
        return;
      case Pend::Gemm: {
        const size_t nx = size_t(pm_n_) * size_t(pm_cols_);
        __nv_bfloat16* xb = xb_for(nx);
        if (!pm_ready_) cuda::to_bf16(s_, xb, pm_x_, nx);
        for (int i = 0; i < pm_count_; ++i) gemm_bf16(xb, pm_n_, pm_cols_, pm_[i]);
        return;
      }
      case Pend::Gemv:
        if (pg_count_ == 1)
          cuda::gemv(s_, pg_[0].y, pg_x_, pg_n_, pg_[0].w, pg_wt_, pg_[0].rows, pg_cols_, pg_[0].bias);
        else
          cuda::gemv_multi(s_, pg_x_, pg_n_, pg_cols_, pg_wt_, pg_, pg_count_, nullptr);
        return;
      case Pend::Rope:
        if (pr_count_ == 1)
          cuda::rope(s_, pr_x_[0], pr_n_, pr_heads_[0], pr_hd_, nullptr, pr_pos0_, pr_f_);
        else
          cuda::rope_qk_cache(s_, pr_x_[0], pr_heads_[0], pr_x_[1], pr_heads_[1], pr_n_, pr_hd_, pr_pos0_, pr_f_,
                              pr_kdst_, pr_vdst_, pr_vsrc_);
        return;
    }
  }
  void launch_norm(__nv_bfloat16* yb) {
    if (pn_a_)
      cuda::add_rmsnorm(s_, pn_y_, pn_x_, pn_a_, pn_n_, pn_d_, pn_g_, pn_eps_, yb);
    else
      cuda::rmsnorm(s_, pn_y_, pn_x_, pn_n_, pn_d_, pn_g_, pn_eps_, yb);
  }
  // The bf16 copy of a matrix product's input (grown on request; one stream orders its reuse).
  __nv_bfloat16* xb_for(size_t nx) {
    if (nx > xb_n_) {
      if (xb_) {
        OUTRO_CK(cudaStreamSynchronize(s_));
        cudaFree(xb_);
        xb_ = nullptr;
      }
      xb_n_ = std::max(nx, xb_n_ * 2);
      xb_ = static_cast<__nv_bfloat16*>(dmalloc(xb_n_ * 2, "matmul input (bf16)"));
    }
    return xb_;
  }
  static unsigned align_of(const void* p) {
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    unsigned al = 256;
    while (al > 1 && a % al) al /= 2;
    return al;
  }
  // o.y[n, rows] = xb[n, cols] · o.wᵀ (+ o.bias): cuBLASLt with the bias in its epilogue, the plan
  // (descriptors and the heuristic's algorithm) kept per shape and alignment; cuBLAS and a separate
  // bias pass where cuBLASLt has no algorithm for it or it is off (use_lt_).
  void gemm_bf16(const __nv_bfloat16* xb, int n, int64_t cols, const GemmOut& o) {
    const float one = 1.f, zero = 0.f;
    const int m = int(o.rows), k = int(cols);
    if (use_lt_) {
      const auto key = std::make_tuple(m, n, k, o.bias != nullptr, align_of(o.w), align_of(xb), align_of(o.y));
      auto it = lt_plans_.find(key);
      if (it == lt_plans_.end()) it = lt_plans_.emplace(key, make_plan(m, n, k, o, xb)).first;
      LtPlan& pl = it->second;
      if (pl.ok) {
        if (o.bias)
          blas_ck(cublasLtMatmulDescSetAttribute(pl.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &o.bias, sizeof(o.bias)),
                  "cublasLt bias pointer");
        const cublasStatus_t st = cublasLtMatmul(lt_, pl.op, &one, o.w, pl.a, xb, pl.b, &zero, o.y, pl.c, o.y, pl.c,
                                                 &pl.algo, lt_ws_, kLtWorkspace, s_);
        if (st == CUBLAS_STATUS_SUCCESS) return;
        if (st != CUBLAS_STATUS_NOT_SUPPORTED) blas_ck(st, "cublasLtMatmul");
        pl.ok = false;  // this shape goes to cuBLAS from now on
      }
    }
    blas_ck(cublasGemmEx(blas_, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &one, o.w, CUDA_R_16BF, k, xb, CUDA_R_16BF, k, &zero,
                         o.y, CUDA_R_32F, m, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
            "cublasGemmEx (bf16)");
    if (o.bias) cuda::add_bias(s_, o.y, o.bias, n, o.rows);
  }
  struct LtPlan {
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
    bool ok = false;
    void destroy() {
      if (a) cublasLtMatrixLayoutDestroy(a);
      if (b) cublasLtMatrixLayoutDestroy(b);
      if (c) cublasLtMatrixLayoutDestroy(c);
      if (op) cublasLtMatmulDescDestroy(op);
      a = b = c = nullptr;
      op = nullptr;
    }
  };
  // Column-major, as cuBLAS sees our row-major arrays: D[m, n] = op(A)[m, k] · B[k, n] with A the
  // weight [rows, cols] read transposed (ld = cols), B = x (ld = cols), D = y (ld = rows).
  // OUTRO_CUDA_LT_TUNE=1: the heuristic's first 8 algorithms are each timed on the call's own
  // operands (3 runs, the host waits) and the fastest is kept; else its first.
  LtPlan make_plan(int m, int n, int k, const GemmOut& o, const __nv_bfloat16* xb) {
    const bool bias = o.bias != nullptr;
    const void* w = o.w;
    const void* y = o.y;
    if (!lt_) blas_ck(cublasLtCreate(&lt_), "cublasLtCreate");  // on first use: the default path needs none
    if (!lt_ws_) lt_ws_ = dmalloc(kLtWorkspace, "cuBLASLt workspace");
    LtPlan p;
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    blas_ck(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
    blas_ck(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)), "cublasLt transa");
    blas_ck(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)), "cublasLt transb");
    if (bias) {
      const cublasLtEpilogue_t ep = CUBLASLT_EPILOGUE_BIAS;
      const cudaDataType_t bt = CUDA_R_32F;
      blas_ck(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &ep, sizeof(ep)), "cublasLt epilogue");
      blas_ck(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof(bt)),
              "cublasLt bias type");
    }
    blas_ck(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_16BF, uint64_t(k), uint64_t(m), int64_t(k)), "cublasLt layout A");
    blas_ck(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_16BF, uint64_t(k), uint64_t(n), int64_t(k)), "cublasLt layout B");
    blas_ck(cublasLtMatrixLayoutCreate(&p.c, CUDA_R_32F, uint64_t(m), uint64_t(n), int64_t(m)), "cublasLt layout D");
    cublasLtMatmulPreference_t pref = nullptr;
    blas_ck(cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate");
    const size_t ws = kLtWorkspace;
    const uint32_t al_a = align_of(w), al_b = align_of(xb), al_d = align_of(y);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof(al_a));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof(al_b));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_d, sizeof(al_d));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_d, sizeof(al_d));
    cublasLtMatmulHeuristicResult_t res[8] = {};
    int found = 0;
    const cublasStatus_t st =
        cublasLtMatmulAlgoGetHeuristic(lt_, p.op, p.a, p.b, p.c, p.c, pref, lt_tune_ ? 8 : 1, res, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (st != CUBLAS_STATUS_SUCCESS || found <= 0 || res[0].state != CUBLAS_STATUS_SUCCESS) return p;
    p.algo = res[0].algo;
    p.ok = true;
    if (lt_tune_ && found > 1) {
      if (bias)
        blas_ck(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &o.bias, sizeof(o.bias)),
                "cublasLt bias pointer");
      cudaEvent_t e0, e1;
      OUTRO_CK(cudaEventCreate(&e0));
      OUTRO_CK(cudaEventCreate(&e1));
      const float one = 1.f, zero = 0.f;
      float best = 1e30f;
      for (int i = 0; i < found; ++i) {
        if (res[i].state != CUBLAS_STATUS_SUCCESS) continue;
        float t = 0;
        bool good = true;
        for (int r = 0; r < 4 && good; ++r) {  // the first run is a warm-up
          OUTRO_CK(cudaEventRecord(e0, s_));
          good = cublasLtMatmul(lt_, p.op, &one, w, p.a, xb, p.b, &zero, o.y, p.c, o.y, p.c, &res[i].algo, lt_ws_,
                                kLtWorkspace, s_) == CUBLAS_STATUS_SUCCESS;
          OUTRO_CK(cudaEventRecord(e1, s_));
          OUTRO_CK(cudaEventSynchronize(e1));
          float ms = 0;
          OUTRO_CK(cudaEventElapsedTime(&ms, e0, e1));
          if (r) t += ms;
        }
        if (good && t < best) best = t, p.algo = res[i].algo;
      }
      cudaEventDestroy(e0);
      cudaEventDestroy(e1);
    }
    return p;
  }
  static bool ov(const void* a, size_t an, const void* b, size_t bn) {
    const char *pa = static_cast<const char*>(a), *pb = static_cast<const char*>(b);
    return an && bn && pa < pb + bn && pb < pa + an;
  }

  // ---- for cuda_api ----
  void set_fusion(bool on) {
    flush();
    fuse_ = on;
  }
  void set_group(bool on) {
    flush();
    group_ = on;
  }
  // Φ_LLM's row maxima and median on the GPU; only n + 1 floats come back.
  // The statistics' scratch, grown on request (the kernels leave their counters zero).
  void* phi_scratch(int n, int dim) {
    const size_t need = cuda::phi_llm_scratch_bytes(n, dim);
    if (need > phi_bytes_) {
      if (phi_scratch_) {
        OUTRO_CK(cudaStreamSynchronize(s_));
        cudaFree(phi_scratch_);
        phi_scratch_ = nullptr;
      }
      phi_bytes_ = std::max(need, size_t(64) << 10);
      phi_scratch_ = dmalloc(phi_bytes_, "phi_llm scratch");
      OUTRO_CK(cudaMemsetAsync(phi_scratch_, 0, phi_bytes_, s_));
    }
    return phi_scratch_;
  }
  void phi_llm_stats(const Buf& h, int n, int dim, std::vector<float>* row_max, float* median) {
    flush();
    phi_scratch(n, dim);
    const float* out = cuda::phi_llm_stats(s_, F(h), n, dim, phi_scratch_, nullptr);
    // The n + 1 floats come back through pinned memory (a direct copy, no staging by the driver).
    const size_t bytes = (size_t(n) + 1) * 4;
    if (bytes > phi_pin_bytes_) {
      if (phi_pin_) cudaFreeHost(phi_pin_);
      phi_pin_ = nullptr;
      phi_pin_bytes_ = std::max(bytes, size_t(16) << 10);
      OUTRO_CK(cudaHostAlloc(&phi_pin_, phi_pin_bytes_, cudaHostAllocDefault));
    }
    OUTRO_CK(cudaMemcpyAsync(phi_pin_, out, bytes, cudaMemcpyDeviceToHost, s_));
    OUTRO_CK(cudaStreamSynchronize(s_));
    const float* host = static_cast<const float*>(phi_pin_);
    *median = host[size_t(n)];
    row_max->assign(host, host + n);
  }
  int force_attn_ = 0;
  bool pinned_dl_ = true;
  bool lt_tune_ = false;  // OUTRO_CUDA_LT_TUNE=1: time the heuristic's first 8 algorithms per shape
  // cuBLASLt with the bias in its epilogue for the prefill's products; off (cublasGemmEx + a bias
  // pass) unless OUTRO_CUDA_LT=1 or cuda_api::set_gemm_lt: not yet run on a GPU.
  bool use_lt_ = false;
  std::string last_attn_;
  size_t weight_bytes_ = 0;

 private:
  static constexpr int kGemvMaxN = 8;

  struct Cached {
    Weight w;
    std::string sig;
  };
  // A sample of the tensor's bytes and its identity, so that a reused address is not mistaken
  // for a tensor already uploaded.
  static std::string signature(const TensorInfo& t) {
    std::string s = t.name + "|" + std::to_string(t.nbytes) + "|" + std::to_string(int(t.dtype)) + "|";
    const size_t nb = t.nbytes, take = 64;
    for (int i = 0; i < 16 && nb; ++i) {
      const size_t at = nb <= take ? 0 : (nb - take) * size_t(i) / 15;
      s.append(reinterpret_cast<const char*>(t.data) + at, std::min(take, nb - at));
    }
    return s;
  }

  // The device table of an expert set's weight pointers (gate of each expert, then up, then down),
  // uploaded on first use; null when the set does not suit the kernels of moe.cu.
  const void* const* moe_table(ExpertSet& ex) {
    struct Table {
      void* dev = nullptr;  // null: the set does not suit the kernels
      ~Table() {
        if (dev) cudaFree(dev);
      }
    };
    if (!ex.state) {
      auto t = std::make_shared<Table>();
      const size_t E = ex.gate.size();
      bool ok = E > 0 && E <= size_t(cuda::kMoeMaxExperts) && ex.up.size() == E && ex.down.size() == E;
      const int64_t I = ok ? ex.gate[0].rows : 0, D = ok ? ex.gate[0].cols : 0;
      ok = ok && D % 8 == 0 && I % 8 == 0 && D > 0 && I > 0;
      std::vector<const void*> ptrs;
      for (size_t e = 0; ok && e < E; ++e)
        for (const Weight* w : {&ex.gate[e], &ex.up[e], &ex.down[e]}) {
          const bool down = w == &ex.down[e];
          ok = ok && w->dtype == DType::BF16 && w->rows == (down ? D : I) && w->cols == (down ? I : D) &&
               reinterpret_cast<uintptr_t>(w->data) % 16 == 0;
        }
      if (ok) {
        for (const auto* v : {&ex.gate, &ex.up, &ex.down})
          for (const Weight& w : *v) ptrs.push_back(w.data);
        t->dev = dmalloc(ptrs.size() * sizeof(void*), "expert pointer table");
        OUTRO_CK(cudaMemcpy(t->dev, ptrs.data(), ptrs.size() * sizeof(void*), cudaMemcpyHostToDevice));
      }
      ex.state = t;
    }
    return static_cast<const void* const*>(static_cast<const Table*>(ex.state.get())->dev);
  }

  static WType wt(const Weight& w) { return w.dtype == DType::BF16 ? WType::BF16 : WType::F32; }
  static const float* vec_ptr(const Weight& w) {
    if (w.dtype != DType::F32) fail("CUDA backend: vector weight ", w.src ? w.src->name : "", " is not float32");
    return static_cast<const float*>(w.data);
  }

  void upload_converted(void* d, const TensorInfo& t, size_t n, bool to_f32_out) {
    const size_t chunk = size_t(1) << 22;
    std::vector<float> f(std::min(n, chunk));
    std::vector<uint16_t> h;
    const size_t es = dtype_size(t.dtype);
    for (size_t i = 0; i < n; i += chunk) {
      const size_t m = std::min(chunk, n - i);
      to_f32(t.dtype, t.data + i * es, f.data(), m);
      if (to_f32_out) {
        OUTRO_CK(cudaMemcpy(static_cast<float*>(d) + i, f.data(), m * 4, cudaMemcpyHostToDevice));
      } else {
        h.resize(m);
        for (size_t j = 0; j < m; ++j) h[j] = f32_to_bf16(f[j]);
        OUTRO_CK(cudaMemcpy(static_cast<uint16_t*>(d) + i, h.data(), m * 2, cudaMemcpyHostToDevice));
      }
    }
  }

  // Host arrays for one call: copied into a pinned ring, then on the stream into a device ring.
  // A slot is reused only after the stream has drained (when the ring wraps).
  void ring_grow(size_t cap) {
    if (pin_) {
      OUTRO_CK(cudaStreamSynchronize(s_));
      cudaFreeHost(pin_);
      cudaFree(dring_);
    }
    ring_cap_ = cap;
    OUTRO_CK(cudaHostAlloc(&pin_, cap, cudaHostAllocDefault));
    dring_ = static_cast<char*>(dmalloc(cap, "staging ring"));
    ring_off_ = 0;
  }
  const void* stage(const void* src, size_t bytes) {
    if (!bytes) return nullptr;
    const size_t need = (bytes + 255) & ~size_t(255);
    if (need > ring_cap_) {
      flush();
      ring_grow(std::max(need, ring_cap_ * 2));
    }
    if (ring_off_ + need > ring_cap_) {
      flush();
      OUTRO_CK(cudaStreamSynchronize(s_));
      ring_off_ = 0;
    }
    char* h = static_cast<char*>(pin_) + ring_off_;
    char* d = dring_ + ring_off_;
    std::memcpy(h, src, bytes);
    OUTRO_CK(cudaMemcpyAsync(d, h, bytes, cudaMemcpyHostToDevice, s_));
    ring_off_ += need;
    return d;
  }

  const float* inv_freq_dev(const float* f, int half) {
    if (invf_host_.size() != size_t(half) || std::memcmp(invf_host_.data(), f, size_t(half) * 4) != 0) {
      if (invf_dev_ && invf_cap_ < size_t(half)) {
        OUTRO_CK(cudaStreamSynchronize(s_));
        cudaFree(invf_dev_);
        invf_dev_ = nullptr;
      }
      if (!invf_dev_) {
        invf_cap_ = std::max<size_t>(size_t(half), 256);
        invf_dev_ = static_cast<float*>(dmalloc(invf_cap_ * 4, "rope frequencies"));
      }
      const void* st = stage(f, size_t(half) * 4);
      OUTRO_CK(cudaMemcpyAsync(invf_dev_, st, size_t(half) * 4, cudaMemcpyDeviceToDevice, s_));
      invf_host_.assign(f, f + half);
    }
    return invf_dev_;
  }

  int dev_;
  std::string gpu_name_;
  int sm_major_ = 0;
  cudaStream_t s_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  cublasLtHandle_t lt_ = nullptr;
  static constexpr size_t kLtWorkspace = size_t(32) << 20;
  void* lt_ws_ = nullptr;
  std::map<std::tuple<int, int, int, bool, unsigned, unsigned, unsigned>, LtPlan> lt_plans_;
  std::vector<void*> owned_;
  std::map<const void*, Cached> cache_;
  void* pin_ = nullptr;
  char* dring_ = nullptr;
  size_t ring_cap_ = 0, ring_off_ = 0;
  void* attn_scratch_ = nullptr;
  unsigned* attn_ctr_ = nullptr;
  size_t attn_bytes_ = 0;
  __nv_bfloat16* xb_ = nullptr;
  size_t xb_n_ = 0;
  float* pattern_dev_ = nullptr;
  size_t pattern_n_ = 0;
  float* invf_dev_ = nullptr;
  size_t invf_cap_ = 0;
  float* tmp_ = nullptr;
  size_t tmp_n_ = 0;
  void* phi_scratch_ = nullptr;
  void* moe_scratch_ = nullptr;
  size_t moe_bytes_ = 0;
  bool moe_device_ = true;  // OUTRO_CUDA_MOE=0: every MoE layer through Backend's default (for comparison)
  size_t phi_bytes_ = 0;
  // Downloads of kDlMin .. kDlMax bytes go through dl_pin_ in chunks of at least kDlChunk, one event
  // each (OUTRO_CUDA_PINNED_DL=0: straight to the destination).
  static constexpr size_t kDlMin = size_t(64) << 10, kDlMax = size_t(64) << 20, kDlChunk = size_t(128) << 10;
  static constexpr int kDlEvents = 16;
  void* dl_pin_ = nullptr;
  size_t dl_pin_bytes_ = 0;
  cudaEvent_t dl_ev_[kDlEvents] = {};
  void* phi_pin_ = nullptr;  // pinned host copy of the statistics
  int32_t* argmax_dev_ = nullptr;  // argmax(): the index on the device
  void* argmax_pin_ = nullptr;     // and its pinned host copy
  size_t phi_pin_bytes_ = 0;
  std::vector<float> invf_host_;

  enum class Pend { None, Add, Gemv, Rope, Norm, Swiglu, Gemm };
  bool fuse_ = true;
  // The prefill's products of one x launched as a group, x rounded to bf16 once (by the norm or
  // SwiGLU before them where they wrote it). Off unless OUTRO_CUDA_GROUP=1 (or cuda_api::
  // set_gemm_group): written without a GPU, tested and timed on none yet.
  bool group_ = false;
  Pend pend_ = Pend::None;
  float* pa_y_ = nullptr;  // Add: y += x over n
  const float* pa_x_ = nullptr;
  size_t pa_n_ = 0;
  // Norm: y = rmsnorm(x (+= a when a is non-null)) over n rows of d
  float* pn_y_ = nullptr;
  float* pn_x_ = nullptr;
  const float* pn_a_ = nullptr;
  const float* pn_g_ = nullptr;
  int pn_n_ = 0;
  int64_t pn_d_ = 0;
  float pn_eps_ = 0;
  // Swiglu: out = silu(g) * u over n
  float* ps_out_ = nullptr;
  const float* ps_g_ = nullptr;
  const float* ps_u_ = nullptr;
  size_t ps_n_ = 0;
  // Gemm: up to 3 products (n > kGemvMaxN rows, bf16 weights) of x [n, cols]; pm_ready_: xb_ already
  // holds x in bf16 (written by the norm or SwiGLU before them)
  GemmOut pm_[3] = {};
  int pm_count_ = 0, pm_n_ = 0;
  const float* pm_x_ = nullptr;
  int64_t pm_cols_ = 0;
  bool pm_ready_ = false;
  cuda::GemvOut pg_[3] = {};  // Gemv: up to 3 products of x [n, cols]
  int pg_count_ = 0, pg_n_ = 0;
  const float* pg_x_ = nullptr;
  int64_t pg_cols_ = 0;
  WType pg_wt_ = WType::F32;
  float* pr_x_[2] = {};  // Rope: q (and k) [n, heads, hd] at positions pos0 + i
  int pr_heads_[2] = {};
  int pr_count_ = 0, pr_n_ = 0, pr_hd_ = 0, pr_pos0_ = 0;
  const float* pr_f_ = nullptr;
  float* pr_kdst_ = nullptr;  // the KV-cache copies of k and v
  float* pr_vdst_ = nullptr;
  const float* pr_vsrc_ = nullptr;
};

}  // namespace

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}

std::unique_ptr<Backend> make_cuda_backend(int device, std::string* why) {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    cudaGetLastError();
    if (why)
      *why = e != cudaSuccess ? std::string("no usable CUDA GPU (") + cudaGetErrorString(e) + ")"
                              : std::string("no CUDA GPU found");
    return nullptr;
  }
  if (device < 0 || device >= count) {
    if (why) {
      *why = "cuda:" + std::to_string(device) + " was asked, and this machine has " + std::to_string(count) +
             " CUDA GPU" + (count == 1 ? "" : "s") + ":";
      for (int d = 0; d < count; ++d) {
        cudaDeviceProp p{};
        if (cudaGetDeviceProperties(&p, d) == cudaSuccess)
          *why += " cuda:" + std::to_string(d) + " " + p.name + " (" + std::to_string(p.totalGlobalMem >> 30) + " GiB)" +
                  (d + 1 < count ? "," : "");
      }
    }
    return nullptr;
  }
  {  // the kernels are built for sm_90 (bf16 tensor cores, programmatic launch): older GPUs cannot run them
    cudaDeviceProp p{};
    if (cudaGetDeviceProperties(&p, device) == cudaSuccess && p.major < 9) {
      if (why)
        *why = "cuda:" + std::to_string(device) + " is " + p.name + " (compute capability " + std::to_string(p.major) +
               "." + std::to_string(p.minor) + "); this build's kernels need compute capability 9.0 or newer "
               "(Hopper: bf16 tensor cores, programmatic dependent launch)";
      return nullptr;
    }
  }
  try {
    return std::make_unique<CudaBackend>(device);
  } catch (const std::exception& ex) {
    if (why) *why = ex.what();
    return nullptr;
  }
}

namespace cuda_api {

bool device_info(int device, DeviceInfo* out, std::string* why) {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count <= device) {
    cudaGetLastError();
    if (why) *why = e != cudaSuccess ? cudaGetErrorString(e) : "no such CUDA device";
    return false;
  }
  cudaDeviceProp p{};
  OUTRO_CK(cudaGetDeviceProperties(&p, device));
  out->name = p.name;
  out->sm_major = p.major, out->sm_minor = p.minor, out->sms = p.multiProcessorCount;
  OUTRO_CK(cudaSetDevice(device));
  OUTRO_CK(cudaMemGetInfo(&out->mem_free, &out->mem_total));
  return true;
}

double copy_bandwidth(int device, size_t bytes, int reps) {
  OUTRO_CK(cudaSetDevice(device));
  void *a = nullptr, *b = nullptr;
  OUTRO_CK(cudaMalloc(&a, bytes));
  OUTRO_CK(cudaMalloc(&b, bytes));
  OUTRO_CK(cudaMemset(a, 1, bytes));
  OUTRO_CK(cudaMemset(b, 2, bytes));
  cudaEvent_t e0, e1;
  OUTRO_CK(cudaEventCreate(&e0));
  OUTRO_CK(cudaEventCreate(&e1));
  OUTRO_CK(cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice));  // warm-up
  double best = 0;
  for (int r = 0; r < reps; ++r) {
    OUTRO_CK(cudaEventRecord(e0));
    OUTRO_CK(cudaMemcpyAsync(r % 2 ? a : b, r % 2 ? b : a, bytes, cudaMemcpyDeviceToDevice));
    OUTRO_CK(cudaEventRecord(e1));
    OUTRO_CK(cudaEventSynchronize(e1));
    float ms = 0;
    OUTRO_CK(cudaEventElapsedTime(&ms, e0, e1));
    best = std::max(best, 2.0 * double(bytes) / (double(ms) * 1e-3));
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaFree(a);
  cudaFree(b);
  return best;
}

namespace {
__global__ void k_rand_bf16(__nv_bfloat16* p, size_t n, uint64_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    uint64_t z = seed + i * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    p[i] = __float2bfloat16(float(z >> 40) * (1.f / 16777216.f) - 0.5f);
  }
}
}  // namespace

double bf16_gemm_tflops(int device, int m, int n, int k, int reps) {
  OUTRO_CK(cudaSetDevice(device));
  __nv_bfloat16 *a = nullptr, *b = nullptr;
  float* c = nullptr;
  OUTRO_CK(cudaMalloc(&a, size_t(m) * k * 2));
  OUTRO_CK(cudaMalloc(&b, size_t(n) * k * 2));
  OUTRO_CK(cudaMalloc(&c, size_t(m) * n * 4));
  k_rand_bf16<<<4096, 256>>>(a, size_t(m) * k, 1);
  k_rand_bf16<<<4096, 256>>>(b, size_t(n) * k, 2);
  cublasHandle_t h;
  blas_ck(cublasCreate(&h), "cublasCreate");
  const float one = 1.f, zero = 0.f;
  auto run = [&] {
    blas_ck(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &one, a, CUDA_R_16BF, k, b, CUDA_R_16BF, k, &zero, c,
                         CUDA_R_32F, m, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
            "cublasGemmEx");
  };
  run();
  OUTRO_CK(cudaDeviceSynchronize());
  cudaEvent_t e0, e1;
  OUTRO_CK(cudaEventCreate(&e0));
  OUTRO_CK(cudaEventCreate(&e1));
  double best = 0;
  for (int r = 0; r < reps; ++r) {
    OUTRO_CK(cudaEventRecord(e0));
    run();
    OUTRO_CK(cudaEventRecord(e1));
    OUTRO_CK(cudaEventSynchronize(e1));
    float ms = 0;
    OUTRO_CK(cudaEventElapsedTime(&ms, e0, e1));
    best = std::max(best, 2.0 * m * double(n) * k / (double(ms) * 1e-3) / 1e12);
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cublasDestroy(h);
  cudaFree(a);
  cudaFree(b);
  cudaFree(c);
  return best;
}

bool set_attention_kernel(Backend& be, int force) {
  auto* c = dynamic_cast<CudaBackend*>(&be);
  if (!c) return false;
  c->force_attn_ = force;
  return true;
}
std::string last_attention_kernel(Backend& be) {
  auto* c = dynamic_cast<CudaBackend*>(&be);
  return c ? c->last_attn_ : std::string();
}
size_t weight_bytes(Backend& be) {
  auto* c = dynamic_cast<CudaBackend*>(&be);
  return c ? c->weight_bytes_ : 0;
}
bool set_pinned_download(Backend& be, bool on) {
  auto* c = dynamic_cast<CudaBackend*>(&be);
  if (!c) return false;
  c->pinned_dl_ = on;
  return true;
}
bool set_gemm_lt(Backend& be, bool on) {
  auto* c = dynamic_cast<CudaBackend*>(&be);
  if (!c) return false;
  c->synchronize();
  c->use_lt_ = on;
  return true;
}
bool set_gemm_group(Backend& be, bool on) {
  auto* c = dynamic_cast<CudaBackend*>(&be);
  if (!c) return false;
  c->set_group(on);
  return true;
}

// Each step of a prefill-sized product alone, by events (median of reps), on random data: what the
// backend's two paths cost per shape (to_bf16, cublasGemmEx, the separate bias pass; cuBLASLt with
// the bias in its epilogue, fp32 out; cuBLASLt with bf16 out, no bias, for comparison).
std::vector<GemmShapeTimes> gemm_shape_times(int device, const std::vector<GemmShape>& shapes, int reps) {
  OUTRO_CK(cudaSetDevice(device));
  std::vector<GemmShapeTimes> out;
  cudaStream_t st;
  OUTRO_CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  cublasHandle_t h;
  cublasLtHandle_t lt;
  blas_ck(cublasCreate(&h), "cublasCreate");
  blas_ck(cublasSetStream(h, st), "cublasSetStream");
  blas_ck(cublasLtCreate(&lt), "cublasLtCreate");
  const size_t wsb = size_t(32) << 20;
  void* ws = nullptr;
  OUTRO_CK(cudaMalloc(&ws, wsb));
  cudaEvent_t e0, e1;
  OUTRO_CK(cudaEventCreate(&e0));
  OUTRO_CK(cudaEventCreate(&e1));
  for (const GemmShape& g : shapes) {
    const int m = g.rows, n = g.n, k = g.cols;
    __nv_bfloat16 *w = nullptr, *xb = nullptr, *xb2 = nullptr, *yb = nullptr;
    float *x = nullptr, *y = nullptr, *bias = nullptr;
    OUTRO_CK(cudaMalloc(&w, size_t(m) * k * 2));
    OUTRO_CK(cudaMalloc(&xb, size_t(n) * k * 2));
    OUTRO_CK(cudaMalloc(&xb2, size_t(n) * k * 2));
    OUTRO_CK(cudaMalloc(&yb, size_t(n) * m * 2));
    OUTRO_CK(cudaMalloc(&x, size_t(n) * k * 4));
    OUTRO_CK(cudaMalloc(&y, size_t(n) * m * 4));
    OUTRO_CK(cudaMalloc(&bias, size_t(m) * 4));
    k_rand_bf16<<<4096, 256, 0, st>>>(w, size_t(m) * k, 1);
    k_rand_bf16<<<4096, 256, 0, st>>>(xb, size_t(n) * k, 2);
    OUTRO_CK(cudaMemsetAsync(x, 0x3c, size_t(n) * k * 4, st));
    OUTRO_CK(cudaMemsetAsync(bias, 0x3c, size_t(m) * 4, st));
    const float one = 1.f, zero = 0.f;
    auto lt_run = [&](bool bf16_out, bool with_bias) {
      cublasLtMatmulDesc_t op;
      cublasLtMatrixLayout_t la, lb, lc;
      const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
      blas_ck(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "desc");
      cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta));
      cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb));
      if (with_bias) {
        const cublasLtEpilogue_t ep = CUBLASLT_EPILOGUE_BIAS;
        const cudaDataType_t bt = CUDA_R_32F;
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &ep, sizeof(ep));
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof(bt));
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias));
      }
      cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, k, m, k);
      cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, k, n, k);
      cublasLtMatrixLayoutCreate(&lc, bf16_out ? CUDA_R_16BF : CUDA_R_32F, m, n, m);
      cublasLtMatmulPreference_t pref;
      cublasLtMatmulPreferenceCreate(&pref);
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb, sizeof(wsb));
      cublasLtMatmulHeuristicResult_t res{};
      int found = 0;
      cublasLtMatmulAlgoGetHeuristic(lt, op, la, lb, lc, lc, pref, 1, &res, &found);
      std::vector<float> ms;
      void* d = bf16_out ? static_cast<void*>(yb) : static_cast<void*>(y);
      for (int r = 0; found > 0 && r <= reps; ++r) {
        OUTRO_CK(cudaEventRecord(e0, st));
        blas_ck(cublasLtMatmul(lt, op, &one, w, la, xb, lb, &zero, d, lc, d, lc, &res.algo, ws, wsb, st), "cublasLtMatmul");
        OUTRO_CK(cudaEventRecord(e1, st));
        OUTRO_CK(cudaEventSynchronize(e1));
        float t = 0;
        OUTRO_CK(cudaEventElapsedTime(&t, e0, e1));
        if (r) ms.push_back(t);  // the first is a warm-up
      }
      cublasLtMatmulPreferenceDestroy(pref);
      cublasLtMatrixLayoutDestroy(la);
      cublasLtMatrixLayoutDestroy(lb);
      cublasLtMatrixLayoutDestroy(lc);
      cublasLtMatmulDescDestroy(op);
      std::sort(ms.begin(), ms.end());
      return ms.empty() ? -1.0 : double(ms[ms.size() / 2]);
    };
    auto timed = [&](auto&& f) {
      std::vector<float> ms;
      for (int r = 0; r <= reps; ++r) {
        OUTRO_CK(cudaEventRecord(e0, st));
        f();
        OUTRO_CK(cudaEventRecord(e1, st));
        OUTRO_CK(cudaEventSynchronize(e1));
        float t = 0;
        OUTRO_CK(cudaEventElapsedTime(&t, e0, e1));
        if (r) ms.push_back(t);
      }
      std::sort(ms.begin(), ms.end());
      return double(ms[ms.size() / 2]);
    };
    GemmShapeTimes t;
    t.shape = g;
    t.to_bf16_ms = timed([&] { cuda::to_bf16(st, xb2, x, size_t(n) * k); });
    t.gemmex_ms = timed([&] {
      blas_ck(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &one, w, CUDA_R_16BF, k, xb, CUDA_R_16BF, k, &zero, y,
                           CUDA_R_32F, m, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
              "cublasGemmEx");
    });
    t.bias_ms = timed([&] { cuda::add_bias(st, y, bias, n, m); });
    t.lt_bias_ms = lt_run(false, true);
    t.lt_bf16_ms = lt_run(true, false);
    out.push_back(t);
    OUTRO_CK(cudaStreamSynchronize(st));
    for (void* p : {static_cast<void*>(w), static_cast<void*>(xb), static_cast<void*>(xb2), static_cast<void*>(yb), static_cast<void*>(x),
                    static_cast<void*>(y), static_cast<void*>(bias)})
      cudaFree(p);
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaFree(ws);
  cublasLtDestroy(lt);
  cublasDestroy(h);
  cudaStreamDestroy(st);
  return out;
}
bool set_fusion(Backend& be, bool on) {
  auto* c = dynamic_cast<CudaBackend*>(&be);
  if (!c) return false;
  c->set_fusion(on);
  return true;
}
bool phi_llm_profile(Backend& be, const Buf& h, int n, int dim, std::vector<float>* kernel_ms, int* mode) {
  auto* c = dynamic_cast<CudaBackend*>(&be);
  const size_t N = size_t(n > 0 ? n : 0) * size_t(dim > 0 ? dim : 0);
  if (!c || N == 0 || N >= (size_t(1) << 32) || h.n < N) return false;
  c->synchronize();
  cudaEvent_t ev[6];
  for (auto& e : ev) OUTRO_CK(cudaEventCreate(&e));
  void* scratch = c->phi_scratch(n, dim);
  cuda::phi_llm_stats(c->stream(), F(h), n, dim, scratch, ev);
  OUTRO_CK(cudaEventSynchronize(ev[5]));
  kernel_ms->assign(5, 0.f);
  for (int i = 0; i < 5; ++i) OUTRO_CK(cudaEventElapsedTime(&(*kernel_ms)[size_t(i)], ev[i], ev[i + 1]));
  *mode = int(cuda::phi_llm_last_mode(scratch));
  for (auto& e : ev) cudaEventDestroy(e);
  return true;
}
bool phi_llm_stats(Backend& be, const Buf& h, int n, int dim, std::vector<float>* row_max, float* median) {
  auto* c = dynamic_cast<CudaBackend*>(&be);
  const size_t N = size_t(n > 0 ? n : 0) * size_t(dim > 0 ? dim : 0);
  if (!c || N == 0 || N >= (size_t(1) << 32) || h.n < N) return false;
  c->phi_llm_stats(h, n, dim, row_max, median);
  return true;
}

}  // namespace cuda_api

}  // namespace outro
