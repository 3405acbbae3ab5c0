#include "models/multimodal_config.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"

namespace outro {

using json = nlohmann::json;

namespace {

struct R {
  const json& j;
  std::string where;  // "FILE: field section."
  const json* get(const char* k) const { return j.contains(k) && !j[k].is_null() ? &j[k] : nullptr; }
  int i(const char* k, int def, int lo = 0) const {
    const json* v = get(k);
    if (!v) {
      if (def == -999) fail(where, k, " is missing (expected an integer >= ", lo, ")");
      return def;
    }
    if (!v->is_number_integer()) fail(where, k, ": expected an integer, found ", v->dump());
    long long x = v->get<long long>();
    if (x < lo || x > (1LL << 31) - 1) fail(where, k, ": expected an integer >= ", lo, ", found ", x);
    return int(x);
  }
  std::string s(const char* k, const std::string& def) const {
    const json* v = get(k);
    if (!v) return def;
    if (!v->is_string()) fail(where, k, ": expected a string, found ", v->dump());
    return v->get<std::string>();
  }
};

int token_id(const json& a, const json& b, std::initializer_list<const char*> keys, int def) {
  for (const json* j : {&a, &b})
    for (const char* k : keys)
      if (j->contains(k) && (*j)[k].is_number_integer()) return (*j)[k].get<int>();
  return def;
}

}  // namespace

MultimodalConfig parse_multimodal_config(const std::string& text, const std::string& source) {
  json top;
  try {
    top = json::parse(text);
  } catch (const json::exception& e) {
    fail(source, ": not valid JSON (", e.what(), ")");
  }
  if (!top.is_object()) fail(source, ": expected a JSON object");
  MultimodalConfig c;
  c.source = source;
  std::string arch = top.contains("architectures") && top["architectures"].is_array() && !top["architectures"].empty() &&
                             top["architectures"][0].is_string()
                         ? top["architectures"][0].get<std::string>()
                         : "";
  std::string mt = top.contains("model_type") && top["model_type"].is_string() ? top["model_type"].get<std::string>() : "";
  const json* root = &top;
  std::string sec;
  const bool omni3 = arch.rfind("Qwen3OmniMoe", 0) == 0 || mt.rfind("qwen3_omni_moe", 0) == 0;
  if (omni3 || arch.rfind("Qwen2_5Omni", 0) == 0 || mt.rfind("qwen2_5_omni", 0) == 0) {
    c.omni = true;
    c.family = omni3 ? MmFamily::Qwen3Omni : MmFamily::Qwen2_5Omni;
    if (omni3) c.audio_max_seconds = 0;  // its processor: padding=True, truncation=False
    if (top.contains("thinker_config") && top["thinker_config"].is_object()) {
      root = &top["thinker_config"];
      sec = "thinker_config.";
    }
  } else if (!(arch == "Qwen2_5_VLForConditionalGeneration" || mt == "qwen2_5_vl")) {
    return c;  // a text-only model
  } else {
    c.family = MmFamily::Qwen2_5VL;
  }
  c.section = sec;
  const json& r = *root;
  const json& tc = r.contains("text_config") && r["text_config"].is_object() ? r["text_config"] : r;
  if (r.contains("vision_config") && r["vision_config"].is_object()) {
    R v{r["vision_config"], source + ": field " + sec + "vision_config."};
    VisionConfig& vc = c.vision;
    vc.depth = v.i("depth", -999, 1);
    vc.hidden = v.i("hidden_size", -999, 2);
    vc.intermediate = v.i("intermediate_size", -999, 1);
    vc.heads = v.i("num_heads", -999, 1);
    vc.out_hidden = v.i("out_hidden_size", -999, 1);
    vc.patch = v.i("patch_size", 14, 1);
    vc.merge = v.i("spatial_merge_size", 2, 1);
    vc.temporal = v.i("temporal_patch_size", 2, 1);
    vc.window = v.i("window_size", 112, 1);
    vc.in_channels = v.i("in_channels", v.i("in_chans", 3, 1), 1);
    vc.tokens_per_second = v.i("tokens_per_second", 2, 0);
    vc.act = v.s("hidden_act", omni3 ? "gelu_pytorch_tanh" : "silu");
    if (omni3) {
      if (vc.act != "gelu_pytorch_tanh" && vc.act != "gelu")
        fail(v.where, "hidden_act: expected gelu_pytorch_tanh, found ", vc.act);
      vc.num_position_embeddings = v.i("num_position_embeddings", -999, 1);
      const json* ds = v.get("deepstack_visual_indexes");
      if (ds && !ds->is_array()) fail(v.where, "deepstack_visual_indexes: expected a list of integers");
      if (ds)
        for (const auto& x : *ds) {
          if (!x.is_number_integer()) fail(v.where, "deepstack_visual_indexes: expected integers, found ", x.dump());
          vc.deepstack.push_back(x.get<int>());
        }
    } else if (vc.act != "silu" && vc.act != "swish") {
      fail(v.where, "hidden_act: expected silu, found ", vc.act);
    }
    if (vc.in_channels != 3) fail(v.where, "in_channels: expected 3 (RGB), found ", vc.in_channels);
    if (vc.hidden % vc.heads) fail(v.where, "hidden_size ", vc.hidden, " is not divisible by num_heads ", vc.heads);
    if ((vc.hidden / vc.heads) % 4) fail(v.where, "num_heads: head size ", vc.hidden / vc.heads, " is not a multiple of 4 (2-D rotary)");
    if (const json* f = v.get("fullatt_block_indexes")) {
      if (!f->is_array()) fail(v.where, "fullatt_block_indexes: expected a list of integers");
      for (const auto& x : *f) {
        if (!x.is_number_integer()) fail(v.where, "fullatt_block_indexes: expected integers, found ", x.dump());
        vc.fullatt_blocks.push_back(x.get<int>());
      }
    }
    if (const json* rp = v.get("rope_parameters"); rp && rp->is_object() && rp->contains("rope_theta") &&
                                                    (*rp)["rope_theta"].is_number())
      vc.rope_theta = (*rp)["rope_theta"].get<float>();
    c.has_vision = true;
  }
  if (c.omni && r.contains("audio_config") && r["audio_config"].is_object()) {
    R a{r["audio_config"], source + ": field " + sec + "audio_config."};
    AudioConfig& ac = c.audio;
    ac.d_model = a.i("d_model", -999, 2);
    ac.layers = a.i("encoder_layers", -999, 1);
    ac.heads = a.i("encoder_attention_heads", -999, 1);
    ac.ffn = a.i("encoder_ffn_dim", -999, 1);
    ac.mel_bins = a.i("num_mel_bins", 128, 1);
    ac.out_dim = a.i("output_dim", -999, 1);
    ac.max_positions = a.i("max_source_positions", 1500, 1);
    ac.n_window = a.i("n_window", 100, 1);
    ac.act = a.s("activation_function", "gelu");
    if (omni3) {
      ac.downsample_hidden = a.i("downsample_hidden_size", -999, 1);
      ac.n_window = a.i("n_window", 50, 1);
      ac.n_window_infer = a.i("n_window_infer", 800, 1);
      if (ac.n_window_infer < 2 * ac.n_window)
        fail(a.where, "n_window_infer: expected at least 2 * n_window = ", 2 * ac.n_window, ", found ", ac.n_window_infer);
    }
    if (ac.act != "gelu" && ac.act != "gelu_new" && ac.act != "gelu_pytorch_tanh")
      fail(a.where, "activation_function: expected gelu, found ", ac.act);
    if (ac.d_model % ac.heads) fail(a.where, "d_model ", ac.d_model, " is not divisible by encoder_attention_heads ", ac.heads);
    if (ac.d_model % 2) fail(a.where, "d_model: expected an even size (sinusoidal positions), found ", ac.d_model);
    c.has_audio = true;
  }
  c.image_token = token_id(r, tc, {"image_token_id", "image_token_index"}, 151655);
  c.video_token = token_id(r, tc, {"video_token_id", "video_token_index"}, 151656);
  c.vision_start = token_id(r, tc, {"vision_start_token_id"}, 151652);
  c.vision_end = token_id(r, tc, {"vision_end_token_id"}, 151653);
  if (c.omni) {
    c.audio_token = token_id(r, tc, {"audio_token_id", "audio_token_index"}, 151646);
    c.audio_start = token_id(r, tc, {"audio_start_token_id"}, 151647);
    c.audio_end = token_id(r, tc, {"audio_end_token_id"}, 151648);
    R t{r, source + ": field " + sec};
    c.position_id_per_seconds = t.i("position_id_per_seconds", omni3 ? 13 : 25, 1);
    if (omni3) c.processor_default_fps = 1.0;
    if (const json* s = t.get("seconds_per_chunk")) {
      if (!s->is_number() || s->get<double>() <= 0) fail(t.where, "seconds_per_chunk: expected a number > 0, found ", s->dump());
      c.seconds_per_chunk = s->get<double>();
    }
  }
  return c;
}

MultimodalConfig load_multimodal_config(const std::string& dir) {
  std::string path = (std::filesystem::path(dir) / "config.json").string();
  std::ifstream f(path);
  if (!f) fail(path, ": missing (every model folder needs config.json)");
  std::stringstream ss;
  ss << f.rdbuf();
  return parse_multimodal_config(ss.str(), path);
}

}  // namespace outro
