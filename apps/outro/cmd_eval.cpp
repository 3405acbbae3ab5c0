// outro eval: multiple-choice benchmarks, baseline vs OutRo and its ablations, with paired
// statistics; `outro eval convert` (benchmark adapters) and `outro eval synth` (the project's own
// synthetic benchmark).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <future>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "common.h"
#include "core/error.h"
#include "eval/adapters.h"
#include "eval/bench.h"
#include "eval/extract.h"
#include "eval/prompt.h"
#include "eval/results.h"
#include "eval/runner.h"
#include "eval/synth.h"
#include "models/chat_prompt.h"
#include "models/multimodal.h"
#include "models/multimodal_input.h"
#include "media/media.h"
#include "models/multimodal_config.h"
#include "runtime/generate.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace outro::cli {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const char* kEvalUsage =
    "usage: outro eval --bench FILE.jsonl --out DIR [--model DIR] [--media-root DIR]\n"
    "                  [--strategies baseline,outro,outro-align-only,outro-sinkout-only] [--seeds N]\n"
    "                  [--temperature T --top-k K --top-p P] [--max-new-tokens N] [--system TEXT] [--raw]\n"
    "                  [--limit N] [--allow-missing-media] [--bootstrap N] [--outro-config FILE]\n"
    "                  [--merge-timeout S] [--no-progress] [--device cpu|cuda[:N]|auto] [--threads N]\n"
    "                  [--text-only]   (Omni/VL checkpoints see the items' media unless --text-only)\n"
    "                  [--protocol harness|outro] [--answer-rule harness|authors|avhbench|dailyomni|omnibench]\n"
    "                  [--audio-in-video auto|on|off] [--video-second-per-grid S] [--audio-max-seconds S]\n"
    "                  [--video-budget checkpoint|qwen-omni-utils] [--skip-special-tokens] [--print-prompts]\n"
    "                  [--think auto|on|off]   (Qwen3 checkpoints: open the thinking block, or write it empty)\n"
    "       outro eval convert --format avhbench|dailyomni|worldsense|videoholmes|omnibench --in PATH\n"
    "                  --out FILE.jsonl [--media-template KIND=TEMPLATE[,KIND=TEMPLATE]] [--text-alternative]\n"
    "                  [--tasks all|TASK[,TASK...]] [--qa qa.json]\n"
    "       outro eval rescore --out DIR --bench FILE.jsonl --answer-rule RULE [--bootstrap N]\n"
    "       outro eval synth --out DIR [--n N] [--seed S] [--no-media]\n"
    "--protocol outro: the OutRo authors' benchmark protocol (docs/eval.md), a bundle of the flags above;\n"
    "flags given explicitly override the bundle. Under mpirun the items are split across the ranks; rank 0\n"
    "merges and reports.\n";

// The settings that decide what is sent and how it is scored; --protocol names a bundle of them.
struct Protocol {
  std::string name = "harness";
  std::string system;  // "" : the chat template's / model's default
  int max_new_tokens = 16;
  eval::AnswerRule rule = eval::AnswerRule::Harness;
  std::string audio_in_video = "auto";  // auto: when the video has a track and the item no audio file
  double video_second_per_grid = 0;     // 0: temporal patch / sampled fps
  double audio_max_seconds = 0;         // 0: the model's limit (30 s for Qwen2.5-Omni, none for Qwen3-Omni)
  bool qwen_utils_video_budget = false;
  bool skip_special = false;
  ThinkMode think = ThinkMode::Auto;
};

// The authors' scripts (docs/eval.md "The protocol"): Qwen2.5-Omni's system prompt, the video with its
// own audio track, qwen-omni-utils' video budget, their processor's 1.0 s per video position group,
// Whisper's 30 s, greedy with one new token, special tokens dropped, their answer readers.
Protocol outro_protocol() {
  Protocol p;
  p.name = "outro";
  p.system =
      "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving auditory and "
      "visual inputs, as well as generating text and speech.";
  p.max_new_tokens = 1;
  p.rule = eval::AnswerRule::Authors;
  p.audio_in_video = "on";
  p.video_second_per_grid = 1.0;
  p.audio_max_seconds = 30;
  p.qwen_utils_video_budget = true;
  p.skip_special = true;
  return p;
}

Protocol protocol_from_args(const Args& a) {
  const std::string name = a.str("protocol", "harness");
  Protocol p;
  if (name == "outro") p = outro_protocol();
  else if (name != "harness") fail("--protocol: expected harness or outro, found '", name, "'");
  if (a.has("system")) p.system = a.str("system");
  if (a.has("max-new-tokens")) p.max_new_tokens = a.integer("max-new-tokens", 16);
  if (p.max_new_tokens < 1) fail("--max-new-tokens: expected a positive number");
  if (a.has("answer-rule")) p.rule = eval::parse_answer_rule(a.str("answer-rule"));
  if (a.has("audio-in-video")) p.audio_in_video = a.str("audio-in-video");
  if (p.audio_in_video != "auto" && p.audio_in_video != "on" && p.audio_in_video != "off")
    fail("--audio-in-video: expected auto, on or off, found '", p.audio_in_video, "'");
  if (a.has("video-second-per-grid")) p.video_second_per_grid = a.number("video-second-per-grid", 0);
  if (p.video_second_per_grid < 0 || p.video_second_per_grid > 3600)
    fail("--video-second-per-grid: expected 0 (from the sampled fps) or a time step in seconds");
  if (a.has("audio-max-seconds")) p.audio_max_seconds = a.number("audio-max-seconds", 0);
  if (!(p.audio_max_seconds >= 0))
    fail("--audio-max-seconds: expected 0 (the model's limit) or a length in seconds > 0, found ",
         a.str("audio-max-seconds"));
  if (a.has("think")) p.think = parse_think_mode(a.str("think"), "--think");
  if (a.has("video-budget")) {
    const std::string b = a.str("video-budget");
    if (b != "checkpoint" && b != "qwen-omni-utils")
      fail("--video-budget: expected checkpoint or qwen-omni-utils, found '", b, "'");
    p.qwen_utils_video_budget = b == "qwen-omni-utils";
  }
  if (a.flag("skip-special-tokens")) p.skip_special = true;
  return p;
}

json protocol_json(const Protocol& p) {
  const media::VisionParams d;
  return {{"name", p.name},
          {"system", p.system.empty() ? json("(model default)") : json(p.system)},
          {"max_new_tokens", p.max_new_tokens},
          {"answer_rule", eval::answer_rule_name(p.rule)},
          {"audio_in_video", p.audio_in_video},
          {"video_second_per_grid", p.video_second_per_grid > 0 ? json(p.video_second_per_grid) : json("sampled fps")},
          {"audio_max_seconds", p.audio_max_seconds > 0 ? json(p.audio_max_seconds) : json("model limit")},
          {"think", think_mode_name(p.think)},
          {"video_budget", p.qwen_utils_video_budget
                               ? json{{"source", "qwen-omni-utils"},
                                      {"fps", d.fps},
                                      {"min_frames", d.min_frames},
                                      {"max_frames", d.max_frames},
                                      {"video_min_pixels", d.video_min_pixels},
                                      {"video_max_pixels", d.video_max_pixels},
                                      {"video_total_pixels", d.video_total_pixels}}
                               : json{{"source", "checkpoint processor files (else qwen-omni-utils defaults)"}}},
          {"skip_special_tokens", p.skip_special},
          {"prompt", "an item's own `prompt` verbatim, else \"Question: ... Options: ...\""}};
}

// An Args object from a list of strings (argv[0..1] are placeholders; flags from index 2).
struct OwnedArgs {
  std::vector<std::string> store;
  std::vector<char*> ptrs;
  Args make(const std::set<std::string>& bool_flags) {
    ptrs.clear();
    for (auto& s : store) ptrs.push_back(s.data());
    ptrs.push_back(nullptr);
    return Args(int(store.size()), ptrs.data(), 2, bool_flags);
  }
};

bool valid_strategy_name(const std::string& s) {
  if (s.empty() || s.size() > 64) return false;
  for (char c : s)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.')) return false;
  return s[0] != '.';
}

// The interventions of a named strategy: a --strategy preset of build_interventions(), with the
// user's --outro-config applied on top of it.
std::vector<std::unique_ptr<Intervention>> strategy_interventions(const std::string& name, const Args& user,
                                                                  const Model& m) {
  OwnedArgs o{{"outro", "eval", "--strategy", name}, {}};
  if (user.has("outro-config")) {
    o.store.push_back("--outro-config");
    o.store.push_back(user.str("outro-config"));
  }
  return build_interventions(o.make({"explain"}), m);
}

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

int cmd_eval_convert(int argc, char** argv) {
  Args a(argc, argv, 3, {"text-alternative"});
  a.check_known({"format", "in", "out", "media-template", "text-alternative", "tasks", "qa"});
  eval::AdapterOptions o;
  o.text_alternative = a.flag("text-alternative");
  if (a.has("tasks")) o.tasks = split(a.str("tasks"), ',');
  o.qa_file = a.str("qa");
  if (!o.qa_file.empty() && a.str("format") != "dailyomni") fail("--qa: only for --format dailyomni (Daily-Omni's qa.json)");
  if (a.has("media-template"))
    for (auto& kv : split(a.str("media-template"), ',')) {
      auto eq = kv.find('=');
      if (eq == std::string::npos || eq == 0) fail("--media-template: expected KIND=TEMPLATE, found '", kv, "'");
      o.media_templates[kv.substr(0, eq)] = kv.substr(eq + 1);
    }
  const std::string format = a.required("format");
  eval::Conversion c = eval::convert_benchmark(format, a.required("in"), o);
  eval::write_bench(a.required("out"), c.items);
  std::fprintf(stderr, "eval convert: %zu items (%s) written to %s\n", c.items.size(), format.c_str(),
               a.str("out").c_str());
  for (auto& [why, n] : c.skipped) std::fprintf(stderr, "  skipped %d: %s\n", n, why.c_str());
  for (auto& [why, n] : c.notes) std::fprintf(stderr, "  note %d: %s\n", n, why.c_str());
  return 0;
}

// Scores a finished run again from its records' response text with other answer rules:
// DIR/rescore-{rule}/summary.json and the table; the run's own files are left as they are.
int cmd_eval_rescore(int argc, char** argv) {
  Args a(argc, argv, 3, {});
  a.check_known({"out", "bench", "answer-rule", "bootstrap"});
  const std::string out = a.required("out");
  const eval::AnswerRule rule = eval::parse_answer_rule(a.required("answer-rule"));
  std::vector<eval::Item> all = eval::load_bench(a.required("bench"));
  auto recs = eval::read_all_records(out);
  if (recs.empty()) fail(out, ": no records under results/ (is this the --out folder of a run?)");
  std::vector<std::string> strategies;
  std::set<int> seed_set;
  for (auto& [k, r] : recs) {
    if (std::find(strategies.begin(), strategies.end(), r.strategy) == strategies.end()) strategies.push_back(r.strategy);
    seed_set.insert(r.seed);
  }
  std::stable_sort(strategies.begin(), strategies.end(),
                   [](const std::string& x, const std::string& y) { return x == "baseline" && y != "baseline"; });
  const std::vector<int> seeds(seed_set.begin(), seed_set.end());
  // the items the run covered (a run with --limit covers a prefix): every strategy and seed recorded
  std::vector<eval::Item> items;
  std::map<std::string, const eval::Item*> by_id;
  for (auto& it : all) {
    bool have = true;
    for (auto& st : strategies)
      for (int sd : seeds) have = have && recs.count({st, sd, it.id});
    if (have) items.push_back(it);
  }
  if (items.empty()) fail(out, ": no item of ", a.str("bench"), " has a record of every strategy and seed");
  for (auto& it : items) by_id[it.id] = &it;
  size_t changed = 0;
  for (auto& [k, r] : recs) {
    auto f = by_id.find(r.id);
    if (f == by_id.end()) continue;
    const eval::Extraction e = eval::read_answer(rule, r.response, *f->second);
    const bool c = e.index == f->second->answer;
    changed += c != r.correct;
    r.pred = e.index;
    r.method = e.method;
    r.correct = c;
  }
  eval::SummaryConfig sc;
  sc.strategies = strategies;
  sc.seeds = seeds;
  sc.bootstrap_resamples = a.integer("bootstrap", 10000);
  if (sc.bootstrap_resamples < 100) fail("--bootstrap: expected at least 100 resamples");
  json meta = json::object();
  try {
    std::ifstream(fs::path(out) / "config.json") >> meta;
  } catch (const std::exception&) {
    meta = json::object();
  }
  meta["rescored"] = {{"answer_rule", eval::answer_rule_name(rule)}, {"from", out}};
  if (meta.contains("protocol") && meta["protocol"].is_object())
    meta["protocol"]["answer_rule"] = eval::answer_rule_name(rule);
  sc.meta = meta;
  json summary = eval::summarize(items, recs, sc);
  const fs::path dir = fs::path(out) / (std::string("rescore-") + eval::answer_rule_name(rule));
  fs::create_directories(dir);
  eval::write_whole((dir / "summary.json").string(), summary.dump(2) + "\n");
  std::cout << eval::format_table(summary) << "\nrescored " << items.size() << " items with the " << eval::answer_rule_name(rule)
            << " answer rule (" << changed << " records changed correctness); written: " << (dir / "summary.json").string()
            << "\n";
  return 0;
}

int cmd_eval_synth(int argc, char** argv) {
  Args a(argc, argv, 3, {"no-media"});
  a.check_known({"out", "n", "seed", "no-media"});
  eval::SynthOptions o;
  o.n = a.integer("n", 24);
  if (o.n < 1 || o.n > 100000) fail("--n: expected 1..100000 items");
  o.seed = uint64_t(a.integer("seed", 0));
  o.media = !a.flag("no-media");
  const std::string dir = a.required("out");
  auto items = eval::write_synth_benchmark(dir, o);
  std::fprintf(stderr, "eval synth: %zu items in %s/bench.jsonl%s\n", items.size(), dir.c_str(),
               o.media ? (", clips in " + dir + "/media/clips (use --media-root " + dir + "/media)").c_str() : "");
  return 0;
}

std::string trim_ws(const std::string& s) {
  size_t a = 0, b = s.size();
  while (a < b && std::isspace(static_cast<unsigned char>(s[a]))) ++a;
  while (b > a && std::isspace(static_cast<unsigned char>(s[b - 1]))) --b;
  return s.substr(a, b - a);
}

// The media an item sends: its video / image / audio the model has a tower for, and the video's
// own audio track as the protocol says. probe: look at the files (skip missing ones, read whether
// the video has a track); without it the request is built from the paths alone (--print-prompts).
MediaRequest media_request_for(const eval::Item& it, const std::string& media_root, bool vision, bool audio,
                               const Protocol& p, bool probe) {
  MediaRequest r;
  for (auto& m : it.media) {
    const std::string path = eval::resolve_media(media_root, m.path);
    std::error_code ec;
    if (probe && !fs::is_regular_file(path, ec)) continue;  // only with --allow-missing-media
    if (m.kind == "video" && r.video.empty() && vision) r.video = path;
    if (m.kind == "image" && r.image.empty() && vision) r.image = path;
    if (m.kind == "audio" && r.audio.empty() && audio) r.audio = path;
  }
  bool track = false;
  if (!r.video.empty() && audio && it.audio_in_video != 0) {
    if (p.audio_in_video == "on") track = true;  // the video's own track, a separate audio file aside
    else if (p.audio_in_video == "auto") track = r.audio.empty() && (!probe || media::probe_video(r.video).has_audio);
  }
  if (track) r.audio.clear();
  r.use_audio_in_video = track;
  r.video_second_per_grid = p.video_second_per_grid;
  r.audio_max_seconds = p.audio_max_seconds;
  r.qwen_utils_video_budget = p.qwen_utils_video_budget;
  return r;
}

// The whole conversation text of a text-only prompt, as it goes to the tokenizer.
std::string text_conversation(const Tokenizer* tok, const std::string& user, const Protocol& p, bool raw,
                              const ChatFormat& format) {
  if (!tok || raw || !tok->token_id("<|im_start|>").has_value()) return user;
  std::vector<ChatMessage> msgs;
  if (!p.system.empty()) msgs.push_back({"system", p.system});
  msgs.push_back({"user", user});
  return apply_chat_template(msgs, true, format);
}

// --print-prompts: one JSON line per item with the conversation text the run would tokenize; the
// model's weights are not read and no media is decoded.
int print_prompts(const Args& a, const std::vector<eval::Item>& items, const std::string& media_root,
                  const Protocol& p) {
  const std::string dir = model_dir(a);
  std::unique_ptr<Tokenizer> tok;
  if (fs::exists(fs::path(dir) / "tokenizer.json")) tok = Tokenizer::load(dir);
  const MultimodalConfig mc = load_multimodal_config(dir);
  const ChatPrompt chat = chat_prompt(load_config(dir), dir, p.think);
  const bool media = (mc.has_vision || mc.has_audio) && tok && !a.flag("text-only");
  for (auto& it : items) {
    const std::string user = eval::render_text_only(eval::build_prompt(it));
    json j = {{"id", it.id}};
    if (it.index >= 0) j["index"] = it.index;
    if (media) {
      MediaRequest r = media_request_for(it, media_root, mc.has_vision, mc.has_audio, p, false);
      j["text"] = multimodal_chat_text(mc, *tok, r, user, p.system, chat.media);
      json m = json::object();
      if (!r.video.empty()) m["video"] = r.video;
      if (!r.image.empty()) m["image"] = r.image;
      if (!r.audio.empty()) m["audio"] = r.audio;
      j["media"] = m;
      j["use_audio_in_video"] = r.use_audio_in_video;
    } else {
      j["text"] = text_conversation(tok.get(), user, p, a.flag("raw"), chat.text);
    }
    std::cout << j.dump(-1, ' ', false, json::error_handler_t::replace) << "\n";
  }
  return 0;
}

int cmd_eval_run(int argc, char** argv) {
  Args a(argc, argv, 2, {"raw", "allow-missing-media", "no-progress", "text-only", "skip-special-tokens", "print-prompts"});
  std::set<std::string> known = {"bench",          "media-root", "strategies", "seeds",   "temperature",
                                 "top-k",          "top-p",      "max-new-tokens", "system", "raw",
                                 "limit",          "allow-missing-media", "bootstrap", "out", "merge-timeout",
                                 "no-progress",    "max-context", "outro-config", "stop-after", "text-only",
                                 "protocol", "answer-rule", "audio-in-video", "video-second-per-grid",
                                 "audio-max-seconds", "video-budget", "skip-special-tokens", "print-prompts", "think"};
  known.insert(kLoadFlags.begin(), kLoadFlags.end());
  a.check_known(known);
  const eval::World w = eval::world_from_env();
  const bool lead = w.rank == 0;
  const auto t0 = std::chrono::steady_clock::now();

  // --- the benchmark and its media
  const std::string bench = a.required("bench");
  const std::string out = a.flag("print-prompts") ? a.str("out") : a.required("out");  // --print-prompts writes nothing
  std::vector<eval::Item> items = eval::load_bench(bench);
  if (a.has("limit")) {
    const int lim = a.integer("limit", 0);
    if (lim < 1) fail("--limit: expected a positive number of items");
    if (size_t(lim) < items.size()) items.resize(size_t(lim));
  }
  const std::string media_root = a.str("media-root", fs::path(bench).parent_path().string());
  const Protocol proto = protocol_from_args(a);
  if (a.flag("print-prompts")) return print_prompts(a, items, media_root, proto);
  if (lead) std::fprintf(stderr, "eval: protocol %s: %s\n", proto.name.c_str(), protocol_json(proto).dump().c_str());
  auto missing = eval::find_missing_media(items, media_root);
  if (!missing.empty()) {
    std::set<std::string> ids;
    for (auto& m : missing) ids.insert(m.item_id);
    if (lead) {
      std::fprintf(stderr, "eval: %zu media file(s) of %zu item(s) not found under --media-root %s:\n", missing.size(),
                   ids.size(), media_root.empty() ? "." : media_root.c_str());
      for (size_t i = 0; i < missing.size() && i < 10; ++i)
        std::fprintf(stderr, "  %s: %s\n", missing[i].item_id.c_str(), missing[i].path.c_str());
      if (missing.size() > 10) std::fprintf(stderr, "  ... and %zu more\n", missing.size() - 10);
    }
    if (!a.flag("allow-missing-media"))
      fail(missing.size(), " media file(s) missing (listed above); fix --media-root or pass --allow-missing-media");
  }

  // --- strategies, seeds, decoding
  std::vector<std::string> strategies =
      split(a.str("strategies", "baseline,outro,outro-align-only,outro-sinkout-only"), ',');
  std::set<std::string> seen;
  for (auto& s : strategies) {
    if (!valid_strategy_name(s)) fail("--strategies: '", s, "' is not a strategy name (letters, digits, - _ .)");
    if (!seen.insert(s).second) fail("--strategies: '", s, "' is listed twice");
  }
  const int nseeds = a.integer("seeds", 1);
  if (nseeds < 1 || nseeds > 1000) fail("--seeds: expected 1..1000");
  const bool sampling = nseeds > 1 || a.has("temperature") || a.has("top-k") || a.has("top-p");
  std::vector<int> seeds;
  if (sampling)
    for (int s = 1; s <= nseeds; ++s) seeds.push_back(s);
  else
    seeds.push_back(0);
  GenerateOptions go;
  go.max_new_tokens = proto.max_new_tokens;
  go.sampling.greedy = !sampling;
  go.sampling.temperature = float(a.number("temperature", sampling ? 0.7 : 1.0));
  go.sampling.top_k = a.integer("top-k", 0);
  go.sampling.top_p = float(a.number("top-p", 1.0));

  Loaded l = load(a, false);
  const ModelConfig& cfg = l.model->config();
  const ChatPrompt chat_style = chat_prompt(cfg, l.dir, proto.think);
  go.stop_ids = cfg.eos_tokens;
  if (l.tokenizer)
    for (const char* t : {"<|im_end|>", "<|endoftext|>"})
      if (auto id = l.tokenizer->token_id(t); id && std::find(go.stop_ids.begin(), go.stop_ids.end(), *id) == go.stop_ids.end())
        go.stop_ids.push_back(*id);

  std::map<std::string, std::vector<std::unique_ptr<Intervention>>> ivs;
  for (auto& s : strategies) ivs[s] = strategy_interventions(s, a, *l.model);

  // Media: a Qwen2.5-Omni / Qwen2.5-VL checkpoint sees each item's video (with its own audio track
  // on Omni when the item gives no separate audio), audio and image, decoded and encoded as
  // `outro generate --video ...` does. --text-only (or a text-only model) keeps the text prompt.
  // Qwen3-Omni too, when its folder has the towers (a decoder saved alone is fed text).
  const bool media_input = (cfg.arch == Arch::Qwen2_5OmniThinker || cfg.arch == Arch::Qwen2_5_VL ||
                            (cfg.arch == Arch::Qwen3OmniMoeThinker && has_media_towers(*l.model))) &&
                           l.tokenizer && !a.flag("text-only");
  std::unique_ptr<MultimodalModel> mmodel;
  if (media_input) mmodel = std::make_unique<MultimodalModel>(*l.model, *l.backend);
  auto media_request = [&](const eval::Item& it) {
    return media_request_for(it, media_root, mmodel->has_vision(), mmodel->has_audio(), proto, true);
  };

  json meta = {{"bench", bench},
               {"model", l.dir},
               {"media_root", media_root},
               {"media_mode", media_input ? "encoded" : "text-only"},
               {"protocol", protocol_json(proto)},
               {"tokenization", l.tokenizer ? "tokenizer.json" : "bytes (no tokenizer.json)"},
               {"max_new_tokens", go.max_new_tokens},
               {"sampling", sampling ? json{{"temperature", go.sampling.temperature},
                                            {"top_k", go.sampling.top_k},
                                            {"top_p", go.sampling.top_p}}
                                     : json("greedy")},
               {"system", proto.system},
               {"raw", a.flag("raw")},
               {"strategies", strategies},
               {"device", l.backend->name()}};
  meta["chat"] = {{"default_system", chat_style.text.default_system ? json(*chat_style.text.default_system) : json(nullptr)},
                  {"template", chat_style.template_file.path.empty() ? json(nullptr) : json(chat_style.template_file.path)},
                  {"thinking", chat_style.thinking}};
  if (a.has("outro-config")) {
    // the OutRo parameters on top of the presets affect the numbers: their text goes with the results
    std::ifstream f(a.str("outro-config"), std::ios::binary);
    meta["outro_config"] = {{"path", a.str("outro-config")},
                            {"text", std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>())}};
  }

  // --- the output folder: resume, and refuse to mix runs made with other settings
  fs::create_directories(out);
  const fs::path cfg_path = fs::path(out) / "config.json";
  if (fs::exists(cfg_path)) {
    json old;
    try {
      std::ifstream(cfg_path) >> old;
    } catch (const std::exception& e) {
      fail(cfg_path.string(), " is not a whole JSON object (", e.what(), "); it records the settings of the run in ", out,
           ": remove it only if that folder holds no results");
    }
    for (auto& k : {"bench", "model", "max_new_tokens", "sampling", "system", "raw", "tokenization", "protocol",
                    "outro_config"})
      if (old.contains(k) && old[k] != meta[k])
        fail(out, " holds results of a run with another ", k, " (", old[k].dump(), ", now ", meta[k].dump(),
             "); use another --out");
  } else if (lead) {
    eval::write_whole(cfg_path.string(), meta.dump(2) + "\n");  // another rank that finds it reads all of it
  }
  eval::ResultStore store(out, w.rank);
  eval::remove_done_marker(out, w);

  // --- this rank's share: items i with i % size == rank, every strategy and seed not yet done
  struct Job {
    size_t item;
    std::string strategy;
    int seed;
  };
  std::vector<Job> jobs;
  size_t share = 0;
  for (size_t i = w.rank; i < items.size(); i += size_t(w.size)) {
    ++share;
    for (auto& s : strategies)
      for (int seed : seeds)
        if (!store.done(s, seed, items[i].id)) jobs.push_back({i, s, seed});
  }
  const size_t total = share * strategies.size() * seeds.size();
  if (lead || w.size > 1)
    std::fprintf(stderr, "eval%s: %zu items x %zu strategies x %zu seed(s); %zu of this rank's %zu runs left%s\n",
                 w.size > 1 ? (" [rank " + std::to_string(w.rank) + "/" + std::to_string(w.size) + "]").c_str() : "",
                 items.size(), strategies.size(), seeds.size(), jobs.size(), total,
                 jobs.size() < total ? " (resuming)" : "");
  if (lead && !l.tokenizer)
    std::fprintf(stderr, "eval: %s has no tokenizer.json: prompts are fed as bytes (id = byte %% vocab)\n",
                 l.dir.c_str());

  auto tokens_of = [&](const eval::Item& it) {
    const std::string text = eval::render_text_only(eval::build_prompt(it));
    if (!l.tokenizer) {
      std::vector<int32_t> ids;
      for (unsigned char c : text) ids.push_back(int32_t(c % unsigned(cfg.vocab)));
      return ids;
    }
    const bool chat = !a.flag("raw") && l.tokenizer->token_id("<|im_start|>").has_value();
    auto ids = l.tokenizer->encode(text_conversation(l.tokenizer.get(), text, proto, a.flag("raw"), chat_style.text), true, !chat);
    return std::vector<int32_t>(ids.begin(), ids.end());
  };

  std::string error;
  try {
    std::map<size_t, std::vector<int32_t>> prompts;
    int longest = 1;
    for (auto& j : jobs)
      if (!prompts.count(j.item)) {
        prompts[j.item] = tokens_of(items[j.item]);
        longest = std::max(longest, int(prompts[j.item].size()));
      }
    if (longest > cfg.max_positions)
      fail("a prompt of ", longest, " tokens is longer than the model's context of ", cfg.max_positions, " tokens");
    int ctx = a.integer("max-context", 0);
    if (ctx <= 0) ctx = std::min(cfg.max_positions, longest + go.max_new_tokens + 1);
    std::unique_ptr<Session> session;
    if (!jobs.empty()) session = std::make_unique<Session>(*l.model, *l.backend, ctx);
    eval::Progress bar(jobs.size(), w.size > 1 ? "[rank " + std::to_string(w.rank) + "]" : "eval",
                       !a.flag("no-progress"));
    const int stop_after = a.integer("stop-after", -1);  // testing: behave like a run killed after N records
    int written = 0;
    size_t prepared_item = size_t(-1);
    PreparedPrompt prepared;
    bool prepared_media = false;
    // The next item's media are decoded on a CPU thread while this item's towers and prompts run
    // (on a GPU the decoding would otherwise leave it idle): `ahead` holds that item's decode.
    std::vector<size_t> item_order;  // distinct items in job order
    for (auto& j : jobs)
      if (item_order.empty() || item_order.back() != j.item) item_order.push_back(j.item);
    size_t order_pos = 0, ahead_item = size_t(-1);
    std::future<DecodedMedia> ahead;
    auto start_ahead = [&](size_t pos) {
      ahead_item = size_t(-1);
      if (pos >= item_order.size()) return;
      MediaRequest r = media_request(items[item_order[pos]]);
      if (!r.any()) return;
      ahead_item = item_order[pos];
      ahead = std::async(std::launch::async, [&mm = *mmodel, r] { return decode_media(mm, r); });
    };
    for (auto& j : jobs) {
      const eval::Item& it = items[j.item];
      if (media_input && prepared_item != j.item) {
        MediaRequest r = media_request(it);
        prepared_media = r.any();
        while (order_pos < item_order.size() && item_order[order_pos] != j.item) ++order_pos;
        DecodedMedia dm;
        if (prepared_media) dm = ahead_item == j.item ? ahead.get() : decode_media(*mmodel, r);
        start_ahead(order_pos + 1);
        if (prepared_media) {
          const std::string text = eval::render_text_only(eval::build_prompt(it));
          prepared = encode_media(*mmodel, dm,
                                  multimodal_chat_ids(mmodel->config(), *l.tokenizer, r, text, proto.system, chat_style.media));
          const int need = int(prepared.prefill.ids.size()) + go.max_new_tokens + 1;
          if (int(prepared.prefill.ids.size()) > cfg.max_positions)
            fail(it.id, ": the prompt with its media is ", prepared.prefill.ids.size(),
                 " tokens, longer than the model's context of ", cfg.max_positions, " tokens");
          if (need > session->capacity()) session = std::make_unique<Session>(*l.model, *l.backend, std::min(need, cfg.max_positions));
        }
        prepared_item = j.item;
      }
      session->reset();
      session->clear_interventions();
      for (auto& iv : ivs[j.strategy]) session->add_intervention(iv.get());
      GenerateOptions o = go;
      o.sampling.seed = (uint64_t(j.seed) * 0x9E3779B97F4A7C15ull) ^ fnv1a(it.id);
      const bool with_media = media_input && prepared_media;
      if (with_media) {
        o.prefill_embeds = prepared.prefill.embeds.data();
        o.prefill_modality = prepared.prefill.modality.data();
        o.prefill_positions = prepared.prefill.positions.data();
        o.prefill_deepstack = &prepared.prefill.deepstack;
        o.prefill_deepstack_rows = &prepared.prefill.deepstack_rows;
      }
      GenerateResult r = generate(*session, with_media ? prepared.prefill.ids : prompts[j.item], o, l.tokenizer.get(), {});
      eval::Record rec;
      rec.id = it.id;
      rec.strategy = j.strategy;
      rec.seed = j.seed;
      if (l.tokenizer && proto.skip_special) {
        // the authors' batch_decode(skip_special_tokens=True) and .strip()
        rec.response = trim_ws(l.tokenizer->decode(std::vector<int>(r.tokens.begin(), r.tokens.end()), true));
      } else if (l.tokenizer) {
        rec.response = r.text;
      } else {
        for (int t : r.tokens) rec.response += (t >= 32 && t < 127) ? char(t) : ' ';
      }
      eval::Extraction e = eval::read_answer(proto.rule, rec.response, it);
      rec.pred = e.index;
      rec.method = e.method;
      rec.correct = e.index == it.answer;
      rec.prompt_tokens = r.prompt_tokens;
      rec.new_tokens = int(r.tokens.size());
      rec.seconds = r.prefill_seconds + r.decode_seconds;
      rec.rank = w.rank;
      store.append(rec, it);
      bar.tick(j.strategy);
      if (stop_after >= 0 && ++written >= stop_after) {
        bar.finish();
        std::fprintf(stderr, "eval: stopping after %d records (--stop-after)\n", written);
        return 3;
      }
    }
    bar.finish();
  } catch (const std::exception& e) {
    error = e.what();
  }
  eval::write_done_marker(out, w, error.empty(), error);
  if (!error.empty()) fail(error);
  if (!lead) return 0;

  // --- rank 0: merge, summarise, report
  eval::wait_for_ranks(out, w, a.number("merge-timeout", 24 * 3600));
  auto recs = eval::read_all_records(out);
  eval::SummaryConfig sc;
  sc.strategies = strategies;
  sc.seeds = seeds;
  sc.bootstrap_resamples = a.integer("bootstrap", 10000);
  if (sc.bootstrap_resamples < 100) fail("--bootstrap: expected at least 100 resamples");
  sc.meta = meta;
  json summary = eval::summarize(items, recs, sc);
  summary["run"] = {{"ranks", w.size},
                    {"wall_seconds", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()}};
  eval::write_merged(out, items, recs, sc);
  {
    std::ofstream f(fs::path(out) / "summary.json", std::ios::trunc);
    f << summary.dump(2) << "\n";
    std::ofstream h(fs::path(out) / "report.html", std::ios::trunc);
    h << eval::render_html(summary);
  }
  std::cout << eval::format_table(summary) << "\nwritten: " << out << "/summary.json, " << out << "/report.html, "
            << out << "/merged/\n";
  return 0;
}

}  // namespace

int cmd_eval(int argc, char** argv) {
  if (argc >= 3 && std::string(argv[2]) == "convert") return cmd_eval_convert(argc, argv);
  if (argc >= 3 && std::string(argv[2]) == "synth") return cmd_eval_synth(argc, argv);
  if (argc >= 3 && std::string(argv[2]) == "rescore") return cmd_eval_rescore(argc, argv);
  if (argc >= 3 && (std::string(argv[2]) == "--help" || std::string(argv[2]) == "-h")) {
    std::fputs(kEvalUsage, stdout);
    return 0;
  }
  if (argc < 3) {
    std::fputs(kEvalUsage, stderr);
    return 2;
  }
  return cmd_eval_run(argc, argv);
}

}  // namespace outro::cli
