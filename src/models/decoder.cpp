// What the decoder families share (models/decoder.h): tensor lookup with shape and dtype checks, the
// Qwen2-style attention tensors, and views of one expert inside a fused expert tensor.
#include "core/error.h"
#include "io/config.h"
#include "io/safetensors.h"
#include "models/decoder.h"
#include "models/model.h"

namespace outro {

namespace {

void check_float(const TensorInfo& t) {
  if (t.dtype != DType::F32 && t.dtype != DType::F16 && t.dtype != DType::BF16)
    fail(t.file, ": tensor ", t.name, ": dtype ", dtype_name(t.dtype), " is not supported (expected F32, F16 or BF16)");
}

}  // namespace

const TensorInfo* TensorLookup::need(const std::string& name, const std::vector<int64_t>& shape) const {
  const TensorInfo& t = store.get(name, shape);
  check_float(t);
  return &t;
}

const TensorInfo* TensorLookup::maybe(const std::string& name, const std::vector<int64_t>& shape) const {
  return store.has(name) ? need(name, shape) : nullptr;
}

bool TensorLookup::has(const std::string& name) const { return store.has(name); }

void bind_attention(const ModelConfig& c, const TensorLookup& t, const std::string& L, LayerTensors* out) {
  const int64_t D = c.hidden, hd = c.head_dim;
  const int64_t qdim = int64_t(c.heads) * hd, kvdim = int64_t(c.kv_heads) * hd;
  out->attn_norm = t.need(L + "input_layernorm.weight", {D});
  out->q = t.need(L + "self_attn.q_proj.weight", {qdim, D});
  out->k = t.need(L + "self_attn.k_proj.weight", {kvdim, D});
  out->v = t.need(L + "self_attn.v_proj.weight", {kvdim, D});
  out->o = t.need(L + "self_attn.o_proj.weight", {D, qdim});
  if (c.qkv_bias) {
    out->q_bias = t.need(L + "self_attn.q_proj.bias", {qdim});
    out->k_bias = t.need(L + "self_attn.k_proj.bias", {kvdim});
    out->v_bias = t.need(L + "self_attn.v_proj.bias", {kvdim});
  }
  if (c.o_bias) out->o_bias = t.need(L + "self_attn.o_proj.bias", {D});
  out->mlp_norm = t.need(L + "post_attention_layernorm.weight", {D});
}

Weight weight_slice(const Weight& w, int64_t off, int64_t rows, int64_t cols) {
  if (off < 0 || rows <= 0 || cols <= 0 || off + rows * cols > w.rows * w.cols)
    fail("weight_slice: [", rows, ", ", cols, "] at element ", off, " is outside ",
         w.src ? w.src->name : std::string("a weight"), " of ", w.rows * w.cols, " elements");
  Weight s = w;
  s.rows = rows;
  s.cols = cols;
  s.data = static_cast<const uint8_t*>(w.data) + size_t(off) * dtype_size(w.dtype);
  return s;
}

}  // namespace outro
