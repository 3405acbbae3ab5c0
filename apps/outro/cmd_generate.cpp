#include <algorithm>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "common.h"
#include "media_cli.h"
#include "core/error.h"
#include "frontend/frontend.h"
#include "runtime/generate.h"

namespace outro::cli {

int cmd_generate(int argc, char** argv) {
  Args a(argc, argv, 2, {"greedy", "json", "raw", "explain", "use-audio-in-video"});
  std::set<std::string> known = {"prompt", "tokens", "max-new-tokens", "greedy", "temperature", "top-k", "top-p",
                                 "seed", "stop", "raw", "json", "system", "max-context", "explain", "think"};
  known.insert(kLoadFlags.begin(), kLoadFlags.end());
  known.insert(kInterventionFlags.begin(), kInterventionFlags.end());
  known.insert(kMediaFlags.begin(), kMediaFlags.end());
  a.check_known(known);
  Loaded l = load(a, false);
  const ModelConfig& c = l.model->config();
  MediaPrompt media;
  const bool mm = media_prompt(a, l, &media);
  std::vector<int32_t> prompt = mm ? media.p.prefill.ids : prompt_tokens(a, l);

  GenerateOptions o;
  o.max_new_tokens = a.integer("max-new-tokens", 64);
  const bool sampling = a.has("temperature") || a.has("top-k") || a.has("top-p") || a.has("seed");
  o.sampling.greedy = a.flag("greedy") || !sampling;
  o.sampling.temperature = float(a.number("temperature", 1.0));
  o.sampling.top_k = a.integer("top-k", 0);
  o.sampling.top_p = float(a.number("top-p", 1.0));
  o.sampling.seed = uint64_t(a.integer("seed", 0));
  o.stop_ids = default_stop_ids(c, l.tokenizer.get());
  if (a.has("stop")) o.stop_strings.push_back(a.str("stop"));
  if (mm) {
    o.prefill_embeds = media.p.prefill.embeds.data();
    o.prefill_modality = media.p.prefill.modality.data();
    o.prefill_positions = media.p.prefill.positions.data();
    o.prefill_deepstack = &media.p.prefill.deepstack;
    o.prefill_deepstack_rows = &media.p.prefill.deepstack_rows;
    if (!a.flag("json")) std::fprintf(stderr, "%s\n", media_summary(media).c_str());
  }

  int ctx = a.integer("max-context", 0);
  if (ctx <= 0) ctx = std::min<int>(c.max_positions, int(prompt.size()) + o.max_new_tokens + 1);
  if (int(prompt.size()) > c.max_positions)
    fail("prompt of ", prompt.size(), " tokens is longer than the model's context of ", c.max_positions,
         " tokens (max_position_embeddings in ", c.source, ")");
  Session s(*l.model, *l.backend, ctx);
  auto ivs = build_interventions(a, *l.model);
  for (auto& iv : ivs) s.add_intervention(iv.get());

  const bool json_out = a.flag("json");
  auto on_text = [&](const std::string& t) {
    if (!json_out) {
      std::fwrite(t.data(), 1, t.size(), stdout);
      std::fflush(stdout);
    }
  };
  GenerateResult r = generate(s, prompt, o, l.tokenizer.get(), on_text);
  if (a.flag("explain"))
    for (auto& iv : ivs) std::fprintf(stderr, "%s\n", iv->explain().c_str());
  const double pf = r.prefill_seconds > 0 ? r.prompt_tokens / r.prefill_seconds : 0;
  const int decoded = int(r.tokens.size()) > 0 ? int(r.tokens.size()) - 1 : 0;
  const double dc = r.decode_seconds > 0 && decoded > 0 ? decoded / r.decode_seconds : 0;
  if (json_out) {
    nlohmann::json j;
    j["tokens"] = r.tokens;
    j["text"] = r.text;
    j["prompt_tokens"] = r.prompt_tokens;
    j["stop_reason"] = r.stop_reason;
    j["prefill_tokens_per_s"] = pf;
    j["decode_tokens_per_s"] = dc;
    j["backend"] = l.backend->name();
    std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  } else {
    if (!l.tokenizer) {
      for (size_t i = 0; i < r.tokens.size(); ++i) std::printf("%s%d", i ? "," : "", r.tokens[i]);
    }
    std::printf("\n");
    std::fprintf(stderr, "[%d prompt tokens, %.1f tok/s prefill; %zu new tokens, %.1f tok/s decode; stop: %s; %s]\n",
                 r.prompt_tokens, pf, r.tokens.size(), dc, r.stop_reason.c_str(), l.backend->name());
  }
  return 0;
}

}  // namespace outro::cli
