#include "models/model.h"

#include <cmath>

#include "core/error.h"

namespace outro {

namespace {

void check_float(const TensorInfo& t) {
  if (t.dtype != DType::F32 && t.dtype != DType::F16 && t.dtype != DType::BF16)
    fail(t.file, ": tensor ", t.name, ": dtype ", dtype_name(t.dtype), " is not supported (expected F32, F16 or BF16)");
}

}  // namespace

std::unique_ptr<Model> Model::load(const std::string& dir) {
  auto m = std::unique_ptr<Model>(new Model());
  m->dir_ = dir;
  m->cfg_ = load_config(dir);
  // A released Qwen2.5-Omni folder also holds the talker and token2wav (speech output), which outro
  // does not run: their tensors are counted from the headers and never loaded.
  std::vector<std::string> leave_out;
  if (m->cfg_.arch == Arch::Qwen2_5OmniThinker) leave_out = {"talker.", "token2wav."};
  m->store_ = WeightStore::open(dir, leave_out);
  const ModelConfig& c = m->cfg_;
  const WeightStore& s = *m->store_;

  // The decoder's weights live under a prefix that depends on the wrapper class.
  static const char* prefixes[] = {"model.", "model.language_model.", "thinker.model.", "language_model.model.",
                                   "language_model.", "thinker.model.language_model."};
  for (const char* p : prefixes)
    if (s.has(std::string(p) + "embed_tokens.weight")) {
      m->prefix_ = p;
      break;
    }
  if (m->prefix_.empty()) {
    if (c.omni_released)
      fail(s.where(), ": missing tensor thinker.model.embed_tokens.weight (config.json is a released Qwen2.5-Omni "
                      "config with thinker_config, whose decoder is stored under thinker.model.)");
    fail(s.where(), ": missing tensor model.embed_tokens.weight (also looked for it under model.language_model., "
                    "thinker.model., language_model.model.)");
  }
  const std::string& P = m->prefix_;
  const int64_t D = c.hidden, I = c.intermediate, hd = c.head_dim;
  const int64_t qdim = int64_t(c.heads) * hd, kvdim = int64_t(c.kv_heads) * hd;

  auto get = [&](const std::string& n, std::vector<int64_t> shape) {
    const TensorInfo& t = s.get(n, shape);
    check_float(t);
    return &t;
  };
  auto opt = [&](const std::string& n, std::vector<int64_t> shape) -> const TensorInfo* {
    if (!s.has(n)) return nullptr;
    return get(n, shape);
  };

  m->embed = get(P + "embed_tokens.weight", {c.vocab, D});
  m->final_norm = get(P + "norm.weight", {D});
  const char* head_first = P.rfind("thinker.", 0) == 0 ? "thinker.lm_head.weight" : "lm_head.weight";
  for (const char* head : {head_first, "lm_head.weight", "thinker.lm_head.weight", "language_model.lm_head.weight"})
    if (s.has(head)) {
      m->lm_head = get(head, {c.vocab, D});
      break;
    }
  if (!m->lm_head) {
    if (!c.tie_embeddings)
      fail(s.where(), ": missing tensor lm_head.weight (config.json says tie_word_embeddings is false)");
    m->lm_head = m->embed;
  }
  for (int l = 0; l < c.layers; ++l) {
    const std::string L = P + "layers." + std::to_string(l) + ".";
    LayerTensors t;
    t.attn_norm = get(L + "input_layernorm.weight", {D});
    t.q = get(L + "self_attn.q_proj.weight", {qdim, D});
    t.k = get(L + "self_attn.k_proj.weight", {kvdim, D});
    t.v = get(L + "self_attn.v_proj.weight", {kvdim, D});
    t.o = get(L + "self_attn.o_proj.weight", {D, qdim});
    if (c.qkv_bias) {
      t.q_bias = get(L + "self_attn.q_proj.bias", {qdim});
      t.k_bias = get(L + "self_attn.k_proj.bias", {kvdim});
      t.v_bias = get(L + "self_attn.v_proj.bias", {kvdim});
    }
    if (c.o_bias) t.o_bias = get(L + "self_attn.o_proj.bias", {D});
    t.mlp_norm = get(L + "post_attention_layernorm.weight", {D});
    t.gate = get(L + "mlp.gate_proj.weight", {I, D});
    t.up = get(L + "mlp.up_proj.weight", {I, D});
    t.down = get(L + "mlp.down_proj.weight", {D, I});
    if (c.mlp_bias) {
      t.gate_bias = get(L + "mlp.gate_proj.bias", {I});
      t.up_bias = get(L + "mlp.up_proj.bias", {I});
      t.down_bias = get(L + "mlp.down_proj.bias", {D});
    }
    (void)opt;
    m->layers.push_back(t);
  }
  m->inv_freq.resize(size_t(hd / 2));
  for (int64_t i = 0; i < hd / 2; ++i)
    m->inv_freq[size_t(i)] = float(1.0 / std::pow(double(c.rope_theta), double(2 * i) / double(hd)));
  return m;
}

}  // namespace outro
