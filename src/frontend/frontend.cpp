// The pieces the CLI and the Python module share (frontend.h).
#include "frontend/frontend.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "core/dtype.h"
#include "core/error.h"
#include "runtime/session.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace outro {

int launcher_local_rank() {
  for (const char* v : {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID", "LOCAL_RANK"})
    if (const char* e = std::getenv(v)) {
      char* end = nullptr;
      const long r = std::strtol(e, &end, 10);
      if (end != e && *end == '\0' && r >= 0 && r < 1 << 20) return int(r);
    }
  return -1;
}

std::unique_ptr<Backend> make_backend(const std::string& device, const std::string& arg) {
  std::unique_ptr<Backend> be;
  const bool indexed = device.rfind("cuda:", 0) == 0;
  if (device == "cuda" || device == "auto" || indexed) {
    int index = 0;
    std::string why;
    if (indexed) {
      const std::string num = device.substr(5);
      char* end = nullptr;
      const long v = std::strtol(num.c_str(), &end, 10);
      if (num.empty() || *end != '\0' || v < 0 || v > 1 << 20)
        fail(arg, ": expected cuda:N with N a GPU index (0, 1, ...), found '", device, "'");
      index = int(v);
    } else if (const int r = launcher_local_rank(); r > 0) {
      // Under mpirun (or srun, torchrun) each process of a host takes its own GPU; more processes
      // than GPUs share them round-robin.
      const int count = cuda_device_count();
      if (count > 0) {
        index = r % count;
        if (r >= count)
          std::fprintf(stderr, "outro: local rank %d shares cuda:%d (%d GPU%s on this host)\n", r, index, count,
                       count == 1 ? "" : "s");
      }
    }
    be = make_cuda_backend(index, &why);
    if (!be && device != "auto") fail(arg, " ", device, ": ", why);
  } else if (device != "cpu") {
    fail(arg, ": expected cpu, cuda, cuda:N or auto, found '", device, "'");
  }
  if (!be) be = make_cpu_backend();
  return be;
}

std::vector<int32_t> text_prompt_ids(const Tokenizer& tok, const std::string& text,
                                     const std::optional<std::string>& system, bool raw, const ChatFormat& format) {
  std::string t = text;
  const bool chat = !raw && tok.token_id("<|im_start|>").has_value();
  if (chat) {
    std::vector<ChatMessage> msgs;
    if (system) msgs.push_back({"system", *system});
    msgs.push_back({"user", text});
    t = apply_chat_template(msgs, true, format);
  }
  // Outside the chat template the tokenizer's post-processor adds what the reference adds by
  // default (LLaMA's <s>); the chat template already holds every special token it needs.
  auto ids = tok.encode(t, true, !chat);
  return std::vector<int32_t>(ids.begin(), ids.end());
}

std::string describe_hook_names(int layers) {
  std::string s = std::string(kHookEmbed) + ", " + kHookLnFinal;
  for (int h = 0; h < kEveryLayerHooks; ++h)
    s += ", blocks.{0.." + std::to_string(layers - 1) + "}." + hook_suffix(Hook(h));
  return s;
}

std::string describe_hook_names(const ModelConfig& c) {
  std::string s = describe_hook_names(c.layers), sparse;
  for (int l = 0; l < c.layers; ++l)
    if (c.moe_layer(l)) sparse += (sparse.empty() ? "" : ",") + std::to_string(l);
  if (!sparse.empty())
    for (Hook h : {Hook::Router, Hook::Experts}) s += ", blocks.{" + sparse + "}." + hook_suffix(h);
  return s;
}

std::vector<std::string> check_hook_names(const std::vector<std::string>& names, const ModelConfig& c,
                                          const std::string& arg) {
  const auto all = all_hook_names(c);
  for (const auto& n : names)
    if (std::find(all.begin(), all.end(), n) == all.end())
      fail(arg, ": unknown hook point '", n, "'; accepted: ", describe_hook_names(c));
  return names;
}

std::vector<std::string> check_hook_names(const std::vector<std::string>& names, int layers, const std::string& arg) {
  const auto all = all_hook_names(layers);
  for (const auto& n : names)
    if (std::find(all.begin(), all.end(), n) == all.end())
      fail(arg, ": unknown hook point '", n, "'; accepted: ", describe_hook_names(layers));
  return names;
}

RecordedForward record_forward(const Model& m, Backend& be, const std::vector<int32_t>& ids,
                               const MultimodalPrefill* prefill, const std::vector<std::string>& hooks,
                               const std::vector<Intervention*>& ivs, const std::string& arg) {
  const ModelConfig& c = m.config();
  if (ids.empty()) fail(arg, ": expected at least one token");
  if (int(ids.size()) > c.max_positions)
    fail(arg, ": ", ids.size(), " tokens is longer than the model's context of ", c.max_positions,
         " tokens (max_position_embeddings in ", c.source, ")");
  Session s(m, be, int(ids.size()));
  for (auto* iv : ivs) s.add_intervention(iv);
  Recorder rec(hooks);
  if (!hooks.empty()) s.add_observer(&rec);
  RecordedForward out;
  if (prefill && !prefill->deepstack.empty()) s.set_deepstack(prefill->deepstack, prefill->deepstack_rows);
  if (prefill)
    s.forward_embeds(ids.data(), int(ids.size()), prefill->embeds.data(), prefill->modality.data(),
                     prefill->positions.data(), &out.logits, true);
  else
    s.forward(ids, &out.logits, true);
  out.modality = s.modalities();
  for (const auto& n : hooks) {
    const Recorder::Entry* e = rec.get(n);
    if (!e) fail("hook point ", n, " did not fire");
    out.names.push_back(n);
    out.hooks.push_back(*e);
  }
  return out;
}

std::vector<int> default_stop_ids(const ModelConfig& c, const Tokenizer* tok) {
  std::vector<int> ids = c.eos_tokens;
  if (tok)
    for (const char* t : {"<|im_end|>", "<|endoftext|>"})
      if (auto id = tok->token_id(t); id && std::find(ids.begin(), ids.end(), *id) == ids.end()) ids.push_back(*id);
  return ids;
}

nlohmann::json config_json(const Model& m) {
  const ModelConfig& c = m.config();
  nlohmann::json j = {{"architecture", c.architecture}, {"hidden_size", c.hidden}, {"intermediate_size", c.intermediate},
          {"layers", c.layers}, {"heads", c.heads}, {"kv_heads", c.kv_heads}, {"head_dim", c.head_dim},
          {"vocab_size", c.vocab}, {"rope_theta", c.rope_theta}, {"rms_norm_eps", c.rms_eps},
          {"tie_word_embeddings", c.tie_embeddings}, {"weight_prefix", m.prefix()},
          {"max_position_embeddings", c.max_positions}, {"eos_token_ids", c.eos_tokens},
          {"weight_dtype", dtype_name(m.layers[0].q->dtype)}};
  if (c.experts > 0) {
    std::vector<int> sparse;
    for (int l = 0; l < c.layers; ++l)
      if (c.moe_layer(l)) sparse.push_back(l);
    j["moe"] = {{"experts", c.experts}, {"experts_per_token", c.experts_per_tok},
                {"moe_intermediate_size", c.moe_intermediate}, {"norm_topk_prob", c.norm_topk},
                {"sparse_layers", sparse}};
  }
  return j;
}

}  // namespace outro
