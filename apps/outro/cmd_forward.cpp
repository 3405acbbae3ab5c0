#include <algorithm>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "common.h"
#include "media_cli.h"
#include "core/error.h"
#include "frontend/frontend.h"
#include "io/safetensors.h"
#include "models/chat_prompt.h"
#include "kernels/cpu/gemm.h"

namespace outro::cli {

int cmd_forward(int argc, char** argv) {
  Args a(argc, argv, 2, {"raw", "explain", "use-audio-in-video"});
  std::set<std::string> known = {"tokens", "prompt", "out", "hooks", "raw", "explain", "system", "think"};
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
  auto ivs = build_interventions(a, *l.model);
  std::vector<Intervention*> iv_ptrs;
  for (auto& iv : ivs) iv_ptrs.push_back(iv.get());
  std::vector<std::string> names;
  if (a.has("hooks")) names = check_hook_names(split(a.str("hooks"), ','), c, "--hooks");
  RecordedForward f = record_forward(*l.model, *l.backend, ids, mm ? &media.p.prefill : nullptr, names, iv_ptrs, "--tokens");
  if (a.flag("explain"))
    for (auto& iv : ivs) std::fprintf(stderr, "%s\n", iv->explain().c_str());

  std::vector<TensorOut> tensors;
  tensors.push_back(tensor_f32("logits", {int64_t(ids.size()), c.vocab}, f.logits.data()));
  std::vector<int64_t> id64(ids.begin(), ids.end());
  tensors.push_back(tensor_i64("input_ids", id64));
  // Which modality each token is (0 text, 1 image, 2 video, 3 audio), so hook rows can be split by it.
  std::vector<int64_t> mod64(f.modality.begin(), f.modality.end());
  if (mm) tensors.push_back(tensor_i64("token_modality", mod64));
  if (mm) {
    std::vector<int64_t> pos64(media.p.prefill.positions.begin(), media.p.prefill.positions.end());
    tensors.push_back(tensor_i64("position_ids", pos64));  // [3 * n]: t, h, w rows
  }
  for (size_t i = 0; i < f.names.size(); ++i)
    tensors.push_back(tensor_f32(f.names[i], f.hooks[i].shape, f.hooks[i].data.data()));
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
  nlohmann::json j = config_json(*m);
  const WeightStore& s = m->store();
  j["model_type"] = c.model_type;
  j["weights"] = {{"tensors", s.tensors().size()}, {"bytes", s.kept_bytes()}, {"files_read", s.shard_count()},
                  {"files_mapped", s.mapped_files()}};
  if (c.arch == Arch::Qwen2_5OmniThinker || c.arch == Arch::Qwen3OmniMoeThinker) {
    // The thinker is everything kept: decoder, vision and audio towers.
    const char* name = c.arch == Arch::Qwen3OmniMoeThinker ? "Qwen3-Omni" : "Qwen2.5-Omni";
    j["layout"] = c.omni_released ? std::string("released ") + name + " (thinker_config, thinker.* tensors)"
                                  : std::string(name) + " thinker alone";
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
  // The chat prompt a --prompt gets: the default system turn, the folder's chat template and what
  // --think auto makes of it.
  {
    const ChatPrompt chat = chat_prompt(c, m->dir());
    const ChatTemplateFile tf = chat.thinking_family ? chat.template_file : find_chat_template(m->dir());
    nlohmann::json cj = {{"default_system", chat.text.default_system ? nlohmann::json(*chat.text.default_system)
                                                                       : nlohmann::json(nullptr)},
                         {"template", tf.path.empty() ? nlohmann::json(nullptr) : nlohmann::json(tf.path)}};
    if (chat.thinking_family)
      cj["think_auto"] = chat.thinking ? "on: the template's generation prompt opens <think>"
                                       : (tf.path.empty() ? "off: no chat template in the folder"
                                                          : "off: the template's generation prompt opens no <think>");
    else
      cj["think_auto"] = std::string("n/a: ") + arch_name(c.arch) + " has no thinking block";
    j["chat"] = cj;
  }
  // The CPU backend's kernels: which path products run on here, and why a better one is not used
  // (no AMX, or the kernel refused tile data).
  const cpu::Kernels& k = cpu::kernels();
  j["cpu"] = {{"kernels", k.name},
              {"matmul", k.mm ? std::string(k.mm->name) + " (bf16/f16 weights, n >= " + std::to_string(k.mm->min_n) +
                                    " rows; float32 accumulation)"
                              : std::string("float32")},
              {"note", cpu::isa_note()}};
  std::cout << j.dump(2) << "\n";
  return 0;
}

int cmd_hooks(int argc, char** argv) {
  Args a(argc, argv, 2, {});
  a.check_known({"model"});
  auto c = load_config(model_dir(a));
  for (const auto& n : all_hook_names(c)) std::printf("%s\n", n.c_str());
  return 0;
}

}  // namespace outro::cli
