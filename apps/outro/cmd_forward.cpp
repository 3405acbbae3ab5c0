#include <algorithm>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "common.h"
#include "media_cli.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "runtime/session.h"

namespace outro::cli {

int cmd_forward(int argc, char** argv) {
  Args a(argc, argv, 2, {"raw", "explain", "use-audio-in-video"});
  std::set<std::string> known = {"tokens", "prompt", "out", "hooks", "raw", "explain", "system"};
  known.insert(kLoadFlags.begin(), kLoadFlags.end());
  known.insert(kInterventionFlags.begin(), kInterventionFlags.end());
  known.insert(kMediaFlags.begin(), kMediaFlags.end());
  a.check_known(known);
  const std::string out = a.required("out");
  Loaded l = load(a, false);
  const ModelConfig& c = l.model->config();
  MediaPrompt media;
  const bool mm = media_prompt(a, l, &media);
  std::vector<int32_t> ids = mm ? media.p.prefill.ids : prompt_tokens(a, l);
  if (int(ids.size()) > c.max_positions)
    fail("--tokens: ", ids.size(), " tokens is longer than the model's context of ", c.max_positions,
         " tokens (max_position_embeddings in ", c.source, ")");
  Session s(*l.model, *l.backend, int(ids.size()));
  auto ivs = build_interventions(a, *l.model);
  for (auto& iv : ivs) s.add_intervention(iv.get());

  std::vector<std::string> names;
  if (a.has("hooks")) {
    auto all = all_hook_names(c.layers);
    for (const auto& n : split(a.str("hooks"), ',')) {
      if (std::find(all.begin(), all.end(), n) == all.end())
        fail("--hooks: unknown hook point '", n, "' (see `outro hooks --model DIR`; e.g. blocks.0.attn.hook_pattern)");
      names.push_back(n);
    }
  }
  Recorder rec(names);
  if (!names.empty()) s.add_observer(&rec);
  std::vector<float> logits;
  if (mm)
    s.forward_embeds(ids.data(), int(ids.size()), media.p.prefill.embeds.data(), media.p.prefill.modality.data(),
                     media.p.prefill.positions.data(), &logits, true);
  else
    s.forward(ids, &logits, true);
  if (a.flag("explain"))
    for (auto& iv : ivs) std::fprintf(stderr, "%s\n", iv->explain().c_str());

  std::vector<TensorOut> tensors;
  tensors.push_back(tensor_f32("logits", {int64_t(ids.size()), c.vocab}, logits.data()));
  std::vector<int64_t> id64(ids.begin(), ids.end());
  tensors.push_back(tensor_i64("input_ids", id64));
  // Which modality each token is (0 text, 1 image, 2 video, 3 audio), so hook rows can be split by it.
  std::vector<int64_t> mod64(s.modalities().begin(), s.modalities().end());
  if (mm) tensors.push_back(tensor_i64("token_modality", mod64));
  if (mm) {
    std::vector<int64_t> pos64(media.p.prefill.positions.begin(), media.p.prefill.positions.end());
    tensors.push_back(tensor_i64("position_ids", pos64));  // [3 * n]: t, h, w rows
  }
  for (const auto& n : names) {
    const Recorder::Entry* e = rec.get(n);
    if (!e) fail("hook point ", n, " did not fire");
    tensors.push_back(tensor_f32(n, e->shape, e->data.data()));
  }
  write_safetensors(out, tensors, {{"model", l.dir}, {"backend", l.backend->name()}});
  std::fprintf(stderr, "wrote %s: logits [%zu, %d]%s\n", out.c_str(), ids.size(), c.vocab,
               names.empty() ? "" : (" and " + std::to_string(names.size()) + " hook tensors").c_str());
  return 0;
}

int cmd_info(int argc, char** argv) {
  Args a(argc, argv, 2, {});
  a.check_known({"model"});
  auto m = Model::load(model_dir(a));
  const ModelConfig& c = m->config();
  nlohmann::json j = {{"architecture", c.architecture}, {"hidden_size", c.hidden}, {"intermediate_size", c.intermediate},
                      {"layers", c.layers}, {"heads", c.heads}, {"kv_heads", c.kv_heads}, {"head_dim", c.head_dim},
                      {"vocab_size", c.vocab}, {"rope_theta", c.rope_theta}, {"rms_norm_eps", c.rms_eps},
                      {"tie_word_embeddings", c.tie_embeddings}, {"weight_prefix", m->prefix()},
                      {"max_position_embeddings", c.max_positions}, {"eos_token_ids", c.eos_tokens},
                      {"weight_dtype", dtype_name(m->layers[0].q->dtype)}};
  const WeightStore& s = m->store();
  j["model_type"] = c.model_type;
  j["weights"] = {{"tensors", s.tensors().size()}, {"bytes", s.kept_bytes()}, {"files_read", s.shard_count()},
                  {"files_mapped", s.mapped_files()}};
  if (c.arch == Arch::Qwen2_5OmniThinker) {
    // The thinker is everything kept: decoder, vision and audio towers.
    j["layout"] = c.omni_released ? "released Qwen2.5-Omni (thinker_config, thinker.* tensors)" : "Qwen2.5-Omni thinker alone";
    j["config_section"] = c.text_section;
    j["thinker_weight_bytes"] = s.kept_bytes();
    nlohmann::json lo = nlohmann::json::object();
    for (const auto& l : s.left_out()) {
      std::string part = l.prefix.substr(0, l.prefix.size() - 1);
      bool configured = std::find(c.other_components.begin(), c.other_components.end(), part) != c.other_components.end();
      lo[part] = {{"tensors", l.tensors}, {"bytes", l.bytes}, {"in_config", configured}};
    }
    j["left_out"] = lo;
    for (const auto& l : s.left_out())
      if (l.tensors)
        std::fprintf(stderr, "left out %zu %s tensors (%llu bytes): outro runs the thinker only\n", l.tensors,
                     l.prefix.substr(0, l.prefix.size() - 1).c_str(), (unsigned long long)l.bytes);
  }
  std::cout << j.dump(2) << "\n";
  return 0;
}

int cmd_hooks(int argc, char** argv) {
  Args a(argc, argv, 2, {});
  a.check_known({"model"});
  auto c = load_config(model_dir(a));
  for (const auto& n : all_hook_names(c.layers)) std::printf("%s\n", n.c_str());
  return 0;
}

}  // namespace outro::cli
