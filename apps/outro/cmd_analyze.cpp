// outro analyze: the sink criteria and the paper's analyses on a prompts file, as report.json and
// a self-contained report.html (src/sink/analysis.h, src/report/sink_report.h).
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "common.h"
#include "core/error.h"
#include "eval/runner.h"
#include "models/multimodal.h"
#include "report/sink_report.h"
#include "outro/outro.h"
#include "sink/analysis.h"

namespace outro::cli {

int cmd_analyze(int argc, char** argv) {
  const std::set<std::string> bools = {"raw", "no-tsne", "no-pruning", "no-single-head", "no-zeroing", "quiet",
                                       "include-sink-rows", "no-fallback"};
  Args a(argc, argv, 2, bools);
  std::set<std::string> known = {"prompts", "tokens", "out", "tau-abs", "tau-rel", "vlm-tau", "dim-tau", "dsink-top",
                                 "eps", "score-sinks", "metric", "geometry-layer", "geometry-head", "max-points",
                                 "perplexity", "tsne-iters", "prune-step", "prune-max-frac", "seeds", "max-prompts",
                                 "media-root", "system", "think"};
  known.insert(bools.begin(), bools.end());
  known.insert(kLoadFlags.begin(), kLoadFlags.end());
  a.check_known(known);
  const std::string out = a.required("out");
  if (a.has("prompts") == a.has("tokens")) fail("analyze: give --prompts FILE.jsonl or --tokens 1,2,3 (one of them)");

  sink::AnalysisParams p;
  p.sinks.llm.tau_abs = a.number("tau-abs", p.sinks.llm.tau_abs);
  p.sinks.llm.tau_rel = a.number("tau-rel", p.sinks.llm.tau_rel);
  p.sinks.vlm.tau = a.number("vlm-tau", p.sinks.vlm.tau);
  p.sinks.vlm.dim_tau = a.number("dim-tau", p.sinks.vlm.dim_tau);
  p.sinks.vlm.fallback_top = a.integer("dsink-top", p.sinks.vlm.fallback_top);
  p.sinks.attn.eps = a.number("eps", p.sinks.attn.eps);
  p.sinks.score_sinks = sink::parse_score_sinks(a.str("score-sinks", "phi_llm"));
  p.sinks.fallback_first = !a.flag("no-fallback");
  p.sinks.exclude_sink_rows = !a.flag("include-sink-rows");
  p.metric = a.str("metric", "auto");
  p.geometry_layer = a.integer("geometry-layer", -1);
  p.geometry_head = a.integer("geometry-head", -1);
  p.max_points = a.integer("max-points", p.max_points);
  p.tsne = !a.flag("no-tsne");
  p.tsne_params.perplexity = a.number("perplexity", p.tsne_params.perplexity);
  p.tsne_params.iterations = a.integer("tsne-iters", p.tsne_params.iterations);
  p.pruning = !a.flag("no-pruning");
  p.single_head = !a.flag("no-single-head");
  p.zeroing = !a.flag("no-zeroing");
  p.prune_step = a.integer("prune-step", 0);
  p.prune_max_frac = a.number("prune-max-frac", p.prune_max_frac);
  if (a.has("seeds")) {
    p.seeds.clear();
    for (int s : parse_token_list(a.str("seeds"))) p.seeds.push_back(uint64_t(s));
  }
  if (p.sinks.vlm.fallback_top < 0) fail("--dsink-top: expected a count >= 0, found ", p.sinks.vlm.fallback_top);
  if (p.max_points < 3) fail("--max-points: expected at least 3, found ", p.max_points);
  if (p.tsne_params.perplexity <= 0) fail("--perplexity: expected a positive number, found ", p.tsne_params.perplexity);
  if (p.tsne_params.iterations < 1) fail("--tsne-iters: expected at least 1, found ", p.tsne_params.iterations);
  if (!(p.prune_max_frac > 0 && p.prune_max_frac <= 1)) fail("--prune-max-frac: expected a fraction in (0, 1], found ", p.prune_max_frac);
  if (p.prune_step < 0) fail("--prune-step: expected a count >= 1, found ", p.prune_step);
  if (p.pruning && p.seeds.empty()) fail("--seeds: expected at least one seed");

  Loaded l = load(a, false);
  const ModelConfig& c = l.model->config();
  if (!a.has("tau-abs") && !a.has("tau-rel")) {  // a model's own calibrated thresholds, when it has them
    const ModelSinkThresholds t = read_model_thresholds(l.dir);
    if (t.present) p.sinks.llm.tau_abs = t.abs_thr, p.sinks.llm.tau_rel = t.med_mul, p.sinks.llm.from = t.file;
  }
  if (p.geometry_layer >= c.layers) fail("--geometry-layer: ", p.geometry_layer, " is outside [0, ", c.layers, ")");
  if (p.geometry_head >= c.heads) fail("--geometry-head: ", p.geometry_head, " is outside [0, ", c.heads, ")");
  const ChatPrompt chat = chat_prompt_of(a, c, l.dir);
  std::vector<sink::TaskItem> items;
  if (a.has("prompts")) {
    sink::TaskLoadOptions o;
    o.chat = !a.flag("raw");
    o.chat_format = chat.text;
    o.max_items = a.integer("max-prompts", 0);
    o.max_positions = c.max_positions;
    o.media_root = a.str("media-root", "");
    items = sink::load_tasks(a.str("prompts"), l.tokenizer.get(), c.vocab, o);
    if (sink::any_media(items)) {
      if (c.arch != Arch::Qwen2_5OmniThinker && c.arch != Arch::Qwen2_5_VL && c.arch != Arch::Qwen3OmniMoeThinker)
        fail(a.str("prompts"), ": items with video/audio/image need a Qwen2.5-Omni or Qwen3-Omni thinker or Qwen2.5-VL checkpoint, ",
             l.dir, " is ", arch_name(c.arch));
      MultimodalModel mm(*l.model, *l.backend);
      sink::attach_media(items, mm, *l.tokenizer, a.str("system", ""), chat.media, c.max_positions,
                         a.str("prompts"));
    }
  } else {
    sink::TaskItem it;
    it.id = "--tokens";
    it.prompt = parse_token_list(a.str("tokens"));
    if (it.prompt.empty()) fail("--tokens: expected at least one token id");
    for (int32_t t : it.prompt)
      if (t < 0 || t >= c.vocab) fail("--tokens: token id ", t, " is outside the vocabulary [0, ", c.vocab, ") of ", l.dir);
    if (int(it.prompt.size()) > c.max_positions)
      fail("--tokens: ", it.prompt.size(), " tokens is longer than the model's context of ", c.max_positions);
    items.push_back(std::move(it));
  }

  const bool show = !a.flag("quiet") && ::isatty(2);
  std::unique_ptr<eval::Progress> bar;
  sink::ProgressSink ps;
  ps.stage = [&](const std::string& name, size_t n) { bar = std::make_unique<eval::Progress>(n, name, show); };
  ps.tick = [&] {
    if (bar) bar->tick();
  };
  ps.done = [&] {
    if (bar) bar->finish();
    bar.reset();
  };
  nlohmann::json r = sink::run_analysis(*l.model, *l.backend, items, p, ps);
  r["model"]["dir"] = l.dir;
  r["prompts"]["file"] = a.has("prompts") ? a.str("prompts") : std::string("--tokens");
  report::write_sink_report(out, r);

  const auto& f = r["fig1a"];
  std::fprintf(stderr, "wrote %s/report.json and %s/report.html (%zu prompts, %.1f s)\n", out.c_str(), out.c_str(),
               items.size(), r["timing"]["total_s"].get<double>());
  std::fprintf(stderr, "phi_llm sinks: %d over all layers and prompts, %d of them token 0; D_sink %s (%s)\n",
               f["phi_llm_total"].get<int>(), f["phi_llm_total_first_token"].get<int>(), r["d_sink"]["dims"].dump().c_str(),
               r["d_sink"]["rule"].get<std::string>().c_str());
  const auto& hf = r["head_focus"];
  std::fprintf(stderr, "heads near uniform (row entropy >= %.2f of an even spread's): %d of %d\n",
               hf["near_uniform_threshold"].get<double>(), hf["near_uniform_heads"].get<int>(),
               r["model"]["layers"].get<int>() * r["model"]["heads"].get<int>());
  if (sink::any_media(items))
    std::fprintf(stderr, "by modality (text, image, video, audio): tokens %s, phi_llm %s, phi_vlm %s\n",
                 f["tokens_by_modality"].dump().c_str(), f["phi_llm_by_modality"].dump().c_str(),
                 f["phi_vlm_by_modality"].dump().c_str());
  return 0;
}

}  // namespace outro::cli
