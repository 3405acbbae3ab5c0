#include "io/config.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"

namespace outro {

using json = nlohmann::json;

const char* arch_name(Arch a) {
  switch (a) {
    case Arch::Qwen2: return "Qwen2ForCausalLM";
    case Arch::Llama: return "LlamaForCausalLM";
    case Arch::Qwen2_5OmniThinker: return "Qwen2_5OmniThinkerForConditionalGeneration";
    case Arch::Qwen2_5_VL: return "Qwen2_5_VLForConditionalGeneration";
    case Arch::Qwen3OmniMoeThinker: return "Qwen3OmniMoeThinkerForConditionalGeneration";
  }
  return "?";
}

bool ModelConfig::moe_layer(int l) const {
  if (experts <= 0) return false;
  if (std::find(mlp_only_layers.begin(), mlp_only_layers.end(), l) != mlp_only_layers.end()) return false;
  return (l + 1) % sparse_step == 0;
}

namespace {

struct Reader {
  const json& text;   // the decoder's section
  const json& outer;  // the section holding it (the thinker's config), or the whole file
  const json& top;    // the whole file
  const std::string& src;
  const std::string& section;        // "thinker_config.text_config." or ""
  const std::string& outer_section;  // "thinker_config." or ""

  static bool has(const json& j, const char* key) { return j.contains(key) && !j[key].is_null(); }
  const json* lookup(const char* key) const {
    for (const json* j : {&text, &outer, &top})
      if (has(*j, key)) return &(*j)[key];
    return nullptr;
  }
  // Names the field where it was found (or where it belongs when absent).
  std::string where(const char* key) const {
    if (!has(text, key) && has(outer, key)) return src + ": field " + outer_section + key;
    if (!has(text, key) && !has(outer, key) && has(top, key)) return src + ": field " + key;
    return src + ": field " + section + key;
  }
  int req_int(const char* key, int lo) const {
    const json* v = lookup(key);
    if (!v) fail(where(key), " is missing (expected an integer >= ", lo, ")");
    if (!v->is_number_integer()) fail(where(key), ": expected an integer, found ", v->dump());
    long long x = v->get<long long>();
    if (x < lo || x > (1LL << 31) - 1) fail(where(key), ": expected an integer >= ", lo, ", found ", x);
    return int(x);
  }
  int opt_int(const char* key, int def, int lo) const { return lookup(key) ? req_int(key, lo) : def; }
  double opt_num(const char* key, double def, double lo_excl) const {
    const json* v = lookup(key);
    if (!v) return def;
    if (!v->is_number()) fail(where(key), ": expected a number, found ", v->dump());
    double x = v->get<double>();
    if (!(x > lo_excl) || !std::isfinite(x)) fail(where(key), ": expected a number > ", lo_excl, ", found ", x);
    return x;
  }
  bool opt_bool(const char* key, bool def) const {
    const json* v = lookup(key);
    if (!v) return def;
    if (!v->is_boolean()) fail(where(key), ": expected true or false, found ", v->dump());
    return v->get<bool>();
  }
};

void read_token_ids(const json& v, std::vector<int>* out, const std::string& what) {
  if (v.is_number_integer()) {
    out->push_back(v.get<int>());
  } else if (v.is_array()) {
    for (const auto& x : v) {
      if (!x.is_number_integer()) fail(what, ": expected integer token ids, found ", x.dump());
      out->push_back(x.get<int>());
    }
  } else if (!v.is_null()) {
    fail(what, ": expected an integer or a list of integers, found ", v.dump());
  }
}

// Qwen3-MoE's expert settings. Every value is checked here so that a config that contradicts itself
// fails with the field's name; the tensors are checked against them when the weights are bound.
void read_moe(const Reader& r, ModelConfig* c) {
  c->experts = r.req_int("num_experts", 0);
  c->sparse_step = r.opt_int("decoder_sparse_step", 1, 1);
  c->norm_topk = r.opt_bool("norm_topk_prob", true);
  if (const json* v = r.lookup("mlp_only_layers")) {
    if (!v->is_array()) fail(r.where("mlp_only_layers"), ": expected a list of layer indices, found ", v->dump());
    for (const auto& x : *v) {
      if (!x.is_number_integer() || x.get<long long>() < 0 || x.get<long long>() >= c->layers)
        fail(r.where("mlp_only_layers"), ": expected layer indices in [0, ", c->layers, "), found ", x.dump());
      c->mlp_only_layers.push_back(x.get<int>());
    }
  }
  if (c->experts == 0) return;  // every layer dense
  c->experts_per_tok = r.req_int("num_experts_per_tok", 1);
  c->moe_intermediate = r.req_int("moe_intermediate_size", 1);
  if (c->experts_per_tok > c->experts)
    fail(r.where("num_experts_per_tok"), ": ", c->experts_per_tok, " experts per token is more than num_experts ",
         c->experts);
}

}  // namespace

ModelConfig parse_config(const std::string& body, const std::string& source) {
  json top;
  try {
    top = json::parse(body);
  } catch (const json::exception& e) {
    fail(source, ": not valid JSON (", e.what(), ")");
  }
  if (!top.is_object()) fail(source, ": expected a JSON object");
  ModelConfig c;
  c.source = source;
  if (top.contains("architectures") && top["architectures"].is_array() && !top["architectures"].empty() &&
      top["architectures"][0].is_string())
    c.architecture = top["architectures"][0].get<std::string>();
  if (top.contains("model_type") && top["model_type"].is_string()) c.model_type = top["model_type"].get<std::string>();

  const json* text = &top;
  const json* outer = &top;
  std::string section, outer_section;
  auto released_omni = [&] {
    return c.architecture == "Qwen2_5OmniModel" || c.architecture == "Qwen2_5OmniForConditionalGeneration" ||
           c.model_type == "qwen2_5_omni";
  };
  auto released_omni3 = [&] {
    return c.architecture == "Qwen3OmniMoeForConditionalGeneration" || c.model_type == "qwen3_omni_moe";
  };
  const bool omni3 = c.architecture == "Qwen3OmniMoeThinkerForConditionalGeneration" || released_omni3() ||
                     c.model_type == "qwen3_omni_moe_thinker";
  if (c.architecture == "Qwen2ForCausalLM" || (c.architecture.empty() && c.model_type == "qwen2")) {
    c.arch = Arch::Qwen2;
  } else if (c.architecture == "LlamaForCausalLM" || (c.architecture.empty() && c.model_type == "llama")) {
    c.arch = Arch::Llama;
  } else if (c.architecture == "Qwen2_5OmniThinkerForConditionalGeneration" || released_omni() ||
             c.model_type == "qwen2_5_omni_thinker" || omni3) {
    c.arch = omni3 ? Arch::Qwen3OmniMoeThinker : Arch::Qwen2_5OmniThinker;
    // The released checkpoints (Qwen2_5OmniModel, Qwen3OmniMoeForConditionalGeneration) nest the
    // thinker's config in thinker_config and its decoder's fields in thinker_config.text_config; a
    // thinker saved alone has text_config at the top.
    if (top.contains("thinker_config") || released_omni() || released_omni3()) {
      if (!top.contains("thinker_config"))
        fail(source, ": field thinker_config is missing (a ", c.architecture.empty() ? c.model_type : c.architecture,
             " config.json keeps the thinker's config there)");
      if (!top["thinker_config"].is_object())
        fail(source, ": field thinker_config: expected an object, found ", top["thinker_config"].dump());
      c.omni_released = true;
      outer = &top["thinker_config"];
      outer_section = "thinker_config.";
      if (!outer->contains("text_config"))
        fail(source, ": field thinker_config.text_config is missing (expected the thinker's decoder config: "
                     "hidden_size, num_hidden_layers, rope_scaling or rope_parameters, ...)");
      if (!(*outer)["text_config"].is_object())
        fail(source, ": field thinker_config.text_config: expected an object, found ", (*outer)["text_config"].dump());
      text = &(*outer)["text_config"];
      section = "thinker_config.text_config.";
      for (const char* part : {"talker", "token2wav", "code2wav"})
        if (top.contains(std::string(part) + "_config")) c.other_components.push_back(part);
    } else if (top.contains("text_config")) {
      if (!top["text_config"].is_object())
        fail(source, ": field text_config: expected an object, found ", top["text_config"].dump());
      text = &top["text_config"];
      section = "text_config.";
    }
  } else if (c.architecture == "Qwen2_5_VLForConditionalGeneration" || c.model_type == "qwen2_5_vl") {
    c.arch = Arch::Qwen2_5_VL;
    if (top.contains("text_config") && top["text_config"].is_object()) {
      text = &top["text_config"];
      section = "text_config.";
    }
  } else {
    fail(source, ": field architectures: unsupported architecture '",
         c.architecture.empty() ? c.model_type : c.architecture,
         "' (expected Qwen2ForCausalLM, LlamaForCausalLM, Qwen2_5OmniModel, "
         "Qwen2_5OmniThinkerForConditionalGeneration, Qwen2_5_VLForConditionalGeneration, "
         "Qwen3OmniMoeForConditionalGeneration or Qwen3OmniMoeThinkerForConditionalGeneration)");
  }
  c.text_section = section;
  Reader r{*text, *outer, top, source, section, outer_section};
  c.hidden = r.req_int("hidden_size", 1);
  c.intermediate = r.req_int("intermediate_size", 1);
  c.layers = r.req_int("num_hidden_layers", 1);
  c.heads = r.req_int("num_attention_heads", 1);
  c.kv_heads = r.opt_int("num_key_value_heads", c.heads, 1);
  c.vocab = r.req_int("vocab_size", 1);
  c.max_positions = r.opt_int("max_position_embeddings", 4096, 1);
  if (r.lookup("head_dim")) {
    c.head_dim = r.req_int("head_dim", 2);
  } else {
    if (c.hidden % c.heads) fail(r.where("hidden_size"), " ", c.hidden, " is not divisible by num_attention_heads ", c.heads);
    c.head_dim = c.hidden / c.heads;
  }
  if (c.head_dim % 2) fail(r.where("head_dim"), ": expected an even head size for rotary embeddings, found ", c.head_dim);
  if (c.heads % c.kv_heads)
    fail(r.where("num_key_value_heads"), ": ", c.kv_heads, " does not divide num_attention_heads ", c.heads);
  c.rope_theta = float(r.opt_num("rope_theta", 10000.0, 0.0));
  c.rms_eps = float(r.opt_num("rms_norm_eps", 1e-6, 0.0));
  // The wrapper's own flag (the thinker's, or the file's) wins over text_config's.
  c.tie_embeddings = outer->contains("tie_word_embeddings") && (*outer)["tie_word_embeddings"].is_boolean()
                         ? (*outer)["tie_word_embeddings"].get<bool>()
                         : r.opt_bool("tie_word_embeddings", false);
  if (c.arch == Arch::Llama) {
    c.qkv_bias = c.o_bias = r.opt_bool("attention_bias", false);
    c.mlp_bias = r.opt_bool("mlp_bias", false);
  } else if (c.arch == Arch::Qwen3OmniMoeThinker) {
    c.qkv_bias = c.o_bias = r.opt_bool("attention_bias", false);
    c.qk_norm = true;
    read_moe(r, &c);
  } else {
    c.qkv_bias = true;
  }
  std::string act = "silu";
  if (const json* a = r.lookup("hidden_act"); a && a->is_string()) act = a->get<std::string>();
  if (act != "silu" && act != "swish") fail(r.where("hidden_act"), ": expected silu, found ", act);
  // Rotary settings: transformers 4.5x writes rope_theta beside rope_scaling {mrope_section, type};
  // transformers 5 writes rope_parameters {rope_theta, mrope_section, rope_type}. Either or both.
  std::string mrope_from;
  for (const char* key : {"rope_scaling", "rope_parameters"}) {
    const json* rs = r.lookup(key);
    if (!rs) continue;
    const std::string at = r.where(key);
    if (!rs->is_object()) fail(at, ": expected an object, found ", rs->dump());
    if (rs->contains("mrope_section") && !(*rs)["mrope_section"].is_null()) {
      const json& ms = (*rs)["mrope_section"];
      bool ok = ms.is_array() && ms.size() == 3;
      if (ok)
        for (const auto& x : ms) ok = ok && x.is_number_integer() && x.get<long long>() > 0 && x.get<long long>() < (1 << 20);
      if (!ok) fail(at, ".mrope_section: expected 3 integers > 0 (temporal, height, width), found ", ms.dump());
      std::vector<int> sec;
      for (const auto& x : ms) sec.push_back(x.get<int>());
      if (!c.mrope_section.empty() && sec != c.mrope_section)
        fail(at, ".mrope_section ", ms.dump(), " disagrees with ", mrope_from);
      int sum = sec[0] + sec[1] + sec[2];
      if (sum != c.head_dim / 2)
        fail(at, ".mrope_section: ", ms.dump(), " sums to ", sum, ", expected head_dim / 2 = ", c.head_dim / 2);
      c.mrope_section = sec;
      mrope_from = at + ".mrope_section";
    }
    if (rs->contains("rope_theta") && !(*rs)["rope_theta"].is_null()) {
      const json& t = (*rs)["rope_theta"];
      if (!t.is_number() || !(t.get<double>() > 0) || !std::isfinite(t.get<double>()))
        fail(at, ".rope_theta: expected a number > 0, found ", t.dump());
      c.rope_theta = t.get<float>();
    }
    for (const char* ik : {"interleaved", "mrope_interleaved"})
      if (rs->contains(ik) && (*rs)[ik].is_boolean() && (*rs)[ik].get<bool>()) c.mrope_interleaved = true;
    std::string type;
    for (const char* tk : {"rope_type", "type"})
      if (rs->contains(tk) && (*rs)[tk].is_string()) type = (*rs)[tk].get<std::string>();
    if (!type.empty() && type != "default" && type != "mrope")
      fail(at, ": rope type '", type, "' is not supported (expected default or mrope)");
  }
  // The released Omni thinker always rotates with TMRoPE: its three sections must be given.
  if (c.omni_released && c.mrope_section.empty())
    fail(r.where("rope_scaling"), ".mrope_section is missing (expected 3 integers summing to head_dim / 2 = ",
         c.head_dim / 2, "; transformers 5 writes it as rope_parameters.mrope_section)");
  if (const json* b = r.lookup("bos_token_id"); b && b->is_number_integer()) c.bos_token = b->get<int>();
  if (const json* e = r.lookup("eos_token_id")) read_token_ids(*e, &c.eos_tokens, r.where("eos_token_id"));
  return c;
}

ModelConfig load_config(const std::string& dir) {
  namespace fs = std::filesystem;
  if (!fs::exists(dir)) fail(dir, ": model folder does not exist");
  if (!fs::is_directory(dir)) fail(dir, ": expected a model folder (with config.json), found a file");
  std::string path = (fs::path(dir) / "config.json").string();
  std::ifstream f(path);
  if (!f) fail(path, ": missing (every model folder needs config.json)");
  std::stringstream ss;
  ss << f.rdbuf();
  ModelConfig c = parse_config(ss.str(), path);
  std::string gpath = (fs::path(dir) / "generation_config.json").string();
  std::ifstream g(gpath);
  if (g) {
    std::stringstream gs;
    gs << g.rdbuf();
    json gj;
    try {
      gj = json::parse(gs.str());
    } catch (const json::exception& e) {
      fail(gpath, ": not valid JSON (", e.what(), ")");
    }
    if (gj.is_object() && gj.contains("eos_token_id")) {
      std::vector<int> ids;
      read_token_ids(gj["eos_token_id"], &ids, gpath + ": field eos_token_id");
      for (int id : ids)
        if (std::find(c.eos_tokens.begin(), c.eos_tokens.end(), id) == c.eos_tokens.end()) c.eos_tokens.push_back(id);
    }
  }
  // Ids outside the vocabulary (seen in tiny test configs that keep the full model's ids) can never be
  // generated, so they are dropped rather than refused.
  c.eos_tokens.erase(std::remove_if(c.eos_tokens.begin(), c.eos_tokens.end(), [&](int id) { return id < 0 || id >= c.vocab; }),
                     c.eos_tokens.end());
  return c;
}

}  // namespace outro
