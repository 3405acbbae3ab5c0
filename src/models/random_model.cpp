#include "models/random_model.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "core/error.h"
#include "io/safetensors.h"

namespace outro {

void write_random_model(const std::string& dir, const RandomModelSpec& s) {
  std::filesystem::create_directories(dir);
  const bool qwen = s.architecture == "Qwen2ForCausalLM";
  const int hd = s.hidden / s.heads;
  nlohmann::json cfg = {{"architectures", {s.architecture}},
                        {"model_type", qwen ? "qwen2" : "llama"},
                        {"hidden_size", s.hidden},
                        {"intermediate_size", s.intermediate},
                        {"num_hidden_layers", s.layers},
                        {"num_attention_heads", s.heads},
                        {"num_key_value_heads", s.kv_heads},
                        {"vocab_size", s.vocab},
                        {"max_position_embeddings", s.max_positions},
                        {"rope_theta", s.rope_theta},
                        {"rms_norm_eps", 1e-6},
                        {"tie_word_embeddings", s.tied},
                        {"hidden_act", "silu"},
                        {"eos_token_id", s.vocab - 1}};
  std::ofstream(dir + "/config.json") << cfg.dump(2);
  std::mt19937_64 rng(s.seed);
  std::normal_distribution<float> nd(0.f, s.std);
  std::vector<TensorOut> ts;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, float mean, float sd) {
    size_t n = 1;
    for (auto d : shape) n *= size_t(d);
    TensorOut t;
    t.name = name;
    t.shape = std::move(shape);
    t.dtype = s.dtype;
    t.bytes.resize(n * dtype_size(s.dtype));
    for (size_t i = 0; i < n; ++i) {
      float v = mean + sd * nd(rng) / s.std;
      if (s.dtype == DType::F32) {
        std::memcpy(t.bytes.data() + 4 * i, &v, 4);
      } else {
        uint16_t h = s.dtype == DType::BF16 ? f32_to_bf16(v) : f32_to_f16(v);
        std::memcpy(t.bytes.data() + 2 * i, &h, 2);
      }
    }
    ts.push_back(std::move(t));
  };
  const int64_t D = s.hidden, I = s.intermediate, q = int64_t(s.heads) * hd, kv = int64_t(s.kv_heads) * hd;
  add("model.embed_tokens.weight", {s.vocab, D}, 0, s.std);
  for (int l = 0; l < s.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {D}, 1, 0.1f);
    add(p + "self_attn.q_proj.weight", {q, D}, 0, s.std);
    add(p + "self_attn.k_proj.weight", {kv, D}, 0, s.std);
    add(p + "self_attn.v_proj.weight", {kv, D}, 0, s.std);
    add(p + "self_attn.o_proj.weight", {D, q}, 0, s.std);
    if (qwen) {
      add(p + "self_attn.q_proj.bias", {q}, 0, s.std);
      add(p + "self_attn.k_proj.bias", {kv}, 0, s.std);
      add(p + "self_attn.v_proj.bias", {kv}, 0, s.std);
    }
    add(p + "post_attention_layernorm.weight", {D}, 1, 0.1f);
    add(p + "mlp.gate_proj.weight", {I, D}, 0, s.std);
    add(p + "mlp.up_proj.weight", {I, D}, 0, s.std);
    add(p + "mlp.down_proj.weight", {D, I}, 0, s.std);
  }
  add("model.norm.weight", {D}, 1, 0.1f);
  if (!s.tied) add("lm_head.weight", {s.vocab, D}, 0, s.std);
  write_safetensors(dir + "/model.safetensors", ts);
}

}  // namespace outro
