// The narrow kernel interface every backend (CPU, CUDA) implements with the same contract.
// The forward pass (models/) is written once against it; tests compare backends op by op.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace outro {

struct TensorInfo;

// Activations: n elements of the backend's activation type (float32 on CPU) in its memory.
struct Buf {
  void* ptr = nullptr;
  size_t n = 0;
};

// A weight matrix [rows, cols] (rows = outputs) or vector [cols] as the backend keeps it.
struct Weight {
  const TensorInfo* src = nullptr;  // checkpoint tensor it came from
  DType dtype = DType::F32;
  int64_t rows = 0, cols = 0;
  const void* data = nullptr;  // backend memory (CPU: the mmap'd checkpoint bytes)
  explicit operator bool() const { return data != nullptr; }
};

// Attention over a KV cache for n_new query rows at absolute positions past .. past+n_new-1.
// Mask policy: causal, except the sink-out rows flagged in sinkout_mask (backend memory, n_new floats,
// nonzero: row r sees keys [0, sinkout_end)) — OutRo's sink enhancement — without an N x N mask.
// The flags live on the device, so the host need not know which rows they are.
// OutRo's gated rotation (Backend::gate_heads's contract) applied to the rows an attention call
// writes, so that a backend can do it while the rows are still in registers.
struct AttnGate {
  const Buf* vbar = nullptr;   // [kv_heads·hd + 1]: the sink value, then the sink count
  const Buf* excl = nullptr;   // rows i < excl_n with excl[i] != 0 are left alone (may be null)
  int excl_n = 0;
  float gamma = 0.f, temp = 1.f;
  bool rescale = false;
  Buf counter;                 // one float increased by the rotated (row, head) count, or empty
};

struct AttnParams {
  int n_heads = 0, n_kv = 0, head_dim = 0;
  float scale = 1.f;
  int n_new = 0;
  int past = 0;
  const void* sinkout_mask = nullptr;  // backend memory [n_new] floats, or null: plain causal
  int sinkout_end = 0;
  const AttnGate* gate = nullptr;  // causal calls: the output rows gated as gate_heads would (null: none)
  float* pattern_out = nullptr;  // host [n_heads, n_new, past + n_new] when an observer asks
  // Encoder attention (vision and audio towers). When causal is false (with past == 0), row i sees
  // every key of its own segment [segments[s], segments[s+1]); segments is a host array of
  // n_segments + 1 ascending offsets from 0 to n_new. causal false with no segments: all n_new keys.
  // The sink-out fields are ignored when causal is false.
  bool causal = true;
  const int* segments = nullptr;
  int n_segments = 0;
};

// One mixture-of-experts layer's experts as a backend keeps them: expert e is the SwiGLU MLP
// down[e] · (silu(gate[e] · x) * (up[e] · x)), gate and up [I, D], down [D, I]. `state` is the
// backend's own view of the set (the CUDA backend's device pointer table), made on first use.
struct ExpertSet {
  std::vector<Weight> gate, up, down;
  std::shared_ptr<void> state;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;

  virtual Buf alloc(size_t n) = 0;
  virtual void release(Buf& b) = 0;
  virtual void upload(Buf dst, size_t offset, const float* src, size_t n) = 0;
  virtual void download(const Buf& src, size_t offset, float* dst, size_t n) = 0;
  virtual void copy(Buf dst, size_t dst_off, const Buf& src, size_t src_off, size_t n) = 0;
  virtual void fill(Buf dst, size_t offset, size_t n, float value) = 0;

  // Makes a checkpoint tensor usable by the kernels (CPU: zero-copy view; GPU: upload once).
  // A tensor of rank > 2 (convolution kernels) is viewed as [shape[0], product of the rest].
  virtual Weight weight(const TensorInfo& t) = 0;

  // out[i, :] = table[ids[i], :]
  virtual void embed(Buf out, const Weight& table, const int32_t* ids, int n) = 0;
  // y[n, rows] = x[n, cols] · wᵀ (+ bias)
  virtual void matmul(Buf y, const Buf& x, int n, const Weight& w, const Weight* bias) = 0;
  // y[i] = x[i] / rms(x[i]) * w, rows of length w.cols
  virtual void rmsnorm(Buf y, const Buf& x, int n, const Weight& w, float eps) = 0;
  // Rotary embedding, half-split pairs (c, c + d/2), in place on x[n, heads, head_dim];
  // angle of pair c for row i = pos[i] * inv_freq[c]; pos and inv_freq are host arrays.
  virtual void rope(Buf x, int n, int heads, int head_dim, const int32_t* pos, const float* inv_freq) = 0;
  // z[n_new, n_heads * head_dim]; q[n_new, n_heads, hd]; caches [ctx, n_kv, hd].
  virtual void attention(Buf z, const Buf& q, const Buf& kcache, const Buf& vcache, const AttnParams& p) = 0;
  // out = silu(gate) * up, elementwise over n
  virtual void swiglu(Buf out, const Buf& gate, const Buf& up, size_t n) = 0;
  // y += x over n
  virtual void add(Buf y, const Buf& x, size_t n) = 0;

  // Interventions' ops.
  // OutRo (src/outro). Flag buffers hold 0 or 1 per row, as floats in backend memory.
  // Φ_LLM of the rows h[n, dim]: rec[i] = 1 when max_c |h[i,c]| >= tau, else 0 (i < n), with
  // tau = max(abs_thr, med_mul * m) and m the ((n·dim − 1) / 2)-th smallest |h| (the lower median);
  // then rec[n] = tau, rec[n+1] = m, rec[n+2] = the number of sinks, rec[n+3] = the largest max|h|.
  virtual void phi_detect(Buf rec, const Buf& h, int n, int dim, float abs_thr, float med_mul) = 0;
  // The per-prompt sets after a layer's detection rec (flags [n]): enh[i] = rec[i] && !done[i] when
  // `enhance`, else 0; then done[i] |= enh[i] when `once`; cum[i] |= rec[i].
  virtual void outro_sets(Buf enh, Buf done, Buf cum, const Buf& rec, int n, bool enhance, bool once) = 0;
  // out[c] = mean over the rows i < n with flags[i] != 0 of x[i, c] (c < dim); out[dim] = how many
  // rows that is (none: out[0 .. dim) = 0).
  virtual void masked_mean(Buf out, const Buf& x, int n, int dim, const Buf& flags) = 0;
  // OutRo's gated rotation of the per-head outputs z[n, heads, hd] toward v = vbar[kv_heads, hd]
  // (head h reads KV head h / (heads / kv_heads)); nothing when vbar[kv_heads·hd] (the sink count)
  // is 0, and rows i < excl_n with excl[i] != 0 are left alone (excl may be null). Per (row, head):
  // c = cos(o, v); g = tanh(relu(c) / temp); p = |o·v| / (|v|² + 1e-8) v; o' = o + g·gamma·p;
  // with rescale o' ← o' |o| / (|o'| + 1e-8). Norms in the cosine use max(|x|, 1e-12).
  // counter (one float, or null) is increased by the number of (row, head) outputs with c > 0.
  virtual void gate_heads(Buf z, int n, int heads, int kv_heads, int hd, const Buf& vbar, const Buf* excl,
                          int excl_n, float gamma, float temp, bool rescale, Buf counter) = 0;
  // x[i, col0 .. col0+ncols) = 0 for every row i of x[n, row_len]
  virtual void zero_cols(Buf x, int n, int row_len, int col0, int ncols) = 0;
  // In row `row` of x[*, groups, gdim]: for each group, zero the channel with the largest |value|.
  virtual void zero_top_dim(Buf x, int row, int groups, int gdim) = 0;

  // Encoder ops (vision / audio towers). Each has a portable default that downloads, computes on
  // the host (kernels/host_ops.h) and uploads; backends override them with their own kernels.
  // y[i] = (x[i] - mean(x[i])) / sqrt(var(x[i]) + eps) * w (+ bias), rows of length w.cols
  virtual void layernorm(Buf y, const Buf& x, int n, const Weight& w, const Weight* bias, float eps);
  // y = gelu(x) over n elements: the exact erf form, or the tanh approximation (gelu_pytorch_tanh)
  virtual void gelu(Buf y, const Buf& x, size_t n, bool tanh_approx);
  // Rotary embedding with per-section positions (M-RoPE, and the vision tower's 2-D rotary), in
  // place on x[n, heads, head_dim], half-split pairs (c, c + head_dim/2). Pair c belongs to section
  // s when sections[0] + .. + sections[s-1] <= c < sections[0] + .. + sections[s]; its angle for
  // row i is pos[s * n + i] * inv_freq[c]. The sections sum to head_dim / 2; pos is a host array
  // [n_sections, n]; inv_freq a host array [head_dim / 2]. With equal positions in every section
  // this is rope() exactly.
  virtual void rope_sections(Buf x, int n, int heads, int head_dim, const int32_t* pos, const int* sections,
                             int n_sections, const float* inv_freq);
  // 1-D convolution as im2col: x is [rows, channels] (time-major) split in segments
  // [segments[s], segments[s+1]) (host array, n_segments + 1 offsets) that are convolved apart, each
  // zero-padded by pad on both sides. cols receives, for each segment in turn, its
  // (len + 2 pad - kernel) / stride + 1 output rows of channels * kernel values, index ci * kernel + k
  // (the layout of a Conv1d weight [out, channels, kernel] viewed as [out, channels * kernel]).
  virtual void im2col1d(Buf cols, const Buf& x, int channels, int kernel, int stride, int pad, const int* segments,
                        int n_segments);
  // y[i, :] = x[idx[i], :] for i < n; rows of dim floats; idx a host array.
  virtual void gather_rows(Buf y, const Buf& x, int dim, const int32_t* idx, int n);
  // y[idx[i], :] += scale[i] * x[i, :] for i < n, in that order (rows of dim floats; idx and scale
  // host arrays; an index may repeat). A mixture-of-experts layer adds each expert's weighted output
  // to the rows that chose it.
  virtual void scatter_add_rows(Buf y, const Buf& x, int dim, const int32_t* idx, const float* scale, int n);
  // y[i, :] = mean of x[k i .. k i + k) for i < n / k (average pooling over rows; a tail is dropped).
  virtual void avgpool_rows(Buf y, const Buf& x, int n, int dim, int k);
  // Mixture of experts. route[n, 2k] receives, for each row i of logits[n, experts]: the k experts of
  // largest softmax (float32) probability in descending order, the lower index first among equals,
  // as floats (route[i, 0 .. k)), then their weights (route[i, k .. 2k)): the probabilities,
  // divided by their sum when `norm`. The default downloads, routes on the host and uploads.
  virtual void moe_route(Buf route, const Buf& logits, int n, int experts, int k, bool norm);
  // y[i, :] = the sum over the k experts of row i in ascending expert index of weight · expert(x[i]),
  // with route as moe_route writes it and x [n, D]. Only the chosen experts' weights are read. The
  // default downloads route and runs each chosen expert once over the rows that chose it through
  // the other ops (gather_rows, matmul, swiglu, scatter_add_rows).
  virtual void moe_experts(Buf y, const Buf& x, int n, const Buf& route, int k, ExpertSet& experts);

  // Index of the largest of x[off .. off + n): the first one scanning up, as the greedy sampler
  // picks it (for rows without NaN). Greedy decoding on a GPU copies back this index instead of
  // the vocabulary's logits. The default downloads the row.
  virtual int32_t argmax(const Buf& x, size_t off, int n);

  virtual void synchronize() {}
};

// Buffers allocated for one computation and released together when it goes out of scope.
struct ScopedBufs {
  Backend& be;
  std::vector<Buf> bufs;
  explicit ScopedBufs(Backend& b) : be(b) {}
  ScopedBufs(const ScopedBufs&) = delete;
  ScopedBufs& operator=(const ScopedBufs&) = delete;
  Buf get(size_t n) {
    bufs.push_back(be.alloc(n));
    return bufs.back();
  }
  ~ScopedBufs() {
    for (auto& b : bufs) be.release(b);
  }
};

std::unique_ptr<Backend> make_cpu_backend();
// nullptr when the CUDA backend is not compiled in or no GPU is present; `why` says which.
std::unique_ptr<Backend> make_cuda_backend(int device, std::string* why);
// CUDA GPUs present (0 without the CUDA backend or a driver).
int cuda_device_count();

}  // namespace outro
