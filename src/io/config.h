// config.json of a Hugging Face checkpoint: the decoder's hyper-parameters, for every supported
// architecture (Qwen2, LLaMA, the Qwen2 decoder inside Qwen2.5-Omni thinker / Qwen2.5-VL, and the
// Qwen3-MoE decoder inside Qwen3-Omni's thinker).
#pragma once
#include <string>
#include <vector>

namespace outro {

enum class Arch { Qwen2, Llama, Qwen2_5OmniThinker, Qwen2_5_VL, Qwen3OmniMoeThinker };
const char* arch_name(Arch a);

struct ModelConfig {
  Arch arch = Arch::Llama;
  std::string architecture;  // the string from config.json
  std::string model_type;
  int hidden = 0;
  int intermediate = 0;
  int layers = 0;
  int heads = 0;
  int kv_heads = 0;
  int head_dim = 0;
  int vocab = 0;
  int max_positions = 0;
  float rope_theta = 10000.f;
  float rms_eps = 1e-6f;
  bool tie_embeddings = false;
  bool qkv_bias = false;  // Qwen2: q/k/v have biases
  bool o_bias = false;    // LLaMA attention_bias also gives o_proj a bias
  bool mlp_bias = false;
  std::vector<int> mrope_section;  // Qwen2.5-VL/Omni: rotary sections (t, h, w); empty otherwise
  // Qwen3-VL / Qwen3-Omni interleave the sections (pair c: h when c % 3 == 1 and c < 3 h, w when
  // c % 3 == 2 and c < 3 w, else t) instead of laying them end to end.
  bool mrope_interleaved = false;
  bool qk_norm = false;  // Qwen3: RMSNorm over head_dim on every q and k head, before the rotary
  // Qwen3-MoE (Qwen3-Omni's thinker): layer l is a sparse mixture of experts when experts > 0,
  // l is not in mlp_only_layers and (l + 1) % sparse_step == 0; the other layers are dense
  // (intermediate). The router's softmax picks experts_per_tok experts, renormalised when norm_topk.
  int experts = 0;
  int experts_per_tok = 0;
  int moe_intermediate = 0;
  int sparse_step = 1;
  std::vector<int> mlp_only_layers;
  bool norm_topk = false;
  bool moe_layer(int l) const;
  int bos_token = -1;
  std::vector<int> eos_tokens;
  std::string source;  // path of config.json, for messages
  // Qwen2.5-Omni / Qwen3-Omni as released (Qwen2_5OmniModel, Qwen3OmniMoeForConditionalGeneration): the
  // thinker's config sits in thinker_config and the talker / token2wav (code2wav) configs beside it. text_section is where the decoder's fields were read,
  // e.g. "thinker_config.text_config." ("" for a flat config).
  bool omni_released = false;
  std::string text_section;
  std::vector<std::string> other_components;  // "talker", "token2wav", "code2wav": configured, not run by outro
};

// Parses config.json text; `source` names the file in errors.
ModelConfig parse_config(const std::string& text, const std::string& source);
// Reads DIR/config.json (and eos ids from DIR/generation_config.json when present).
ModelConfig load_config(const std::string& dir);

}  // namespace outro
