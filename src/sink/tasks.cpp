#include "sink/tasks.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "kernels/backend.h"
#include "models/model.h"
#include "models/multimodal_input.h"
#include "runtime/session.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace outro::sink {

using nlohmann::json;

namespace {

struct LineCtx {
  const std::string& path;
  int line;
  const Tokenizer* tok;
  int vocab;
  const ChatFormat* format;
};

std::vector<int32_t> token_array(const json& j, const LineCtx& c, const std::string& field) {
  std::vector<int32_t> out;
  for (const auto& e : j) {
    if (!e.is_number_integer()) fail(c.path, ":", c.line, ": field '", field, "': expected integer token ids, found ", e.dump());
    const int64_t v = e.get<int64_t>();
    if (v < 0 || v >= c.vocab)
      fail(c.path, ":", c.line, ": field '", field, "': token id ", v, " is outside the vocabulary [0, ", c.vocab, ")");
    out.push_back(int32_t(v));
  }
  return out;
}

// A prompt (special tokens parsed, chat template when asked and available) or a continuation (plain text).
std::vector<int32_t> encode_text(const std::string& text, const LineCtx& c, const std::string& field, bool prompt,
                                 bool chat) {
  if (!c.tok)
    fail(c.path, ":", c.line, ": field '", field, "' is text but the model folder has no tokenizer.json (give token ids)");
  std::string t = text;
  if (prompt && chat && c.tok->token_id("<|im_start|>").has_value()) t = apply_chat_template({{"user", text}}, true, *c.format);
  auto ids = c.tok->encode(t, prompt);
  std::vector<int32_t> out(ids.begin(), ids.end());
  for (int32_t v : out)
    if (v < 0 || v >= c.vocab)
      fail(c.path, ":", c.line, ": field '", field, "': the tokenizer gave id ", v, " outside the model's vocabulary [0, ",
           c.vocab, ")");
  return out;
}

std::vector<int32_t> continuation(const json& j, const LineCtx& c, const std::string& field) {
  if (j.is_string()) {
    auto v = encode_text(j.get<std::string>(), c, field, false, false);
    if (v.empty()) fail(c.path, ":", c.line, ": field '", field, "': encodes to no tokens");
    return v;
  }
  if (j.is_array()) {
    auto v = token_array(j, c, field);
    if (v.empty()) fail(c.path, ":", c.line, ": field '", field, "': expected at least one token");
    return v;
  }
  fail(c.path, ":", c.line, ": field '", field, "': expected text or an array of token ids, found ", j.dump());
}

// Tokens an item's scoring adds after its prompt: its answer or its longest option.
size_t longest_continuation(const TaskItem& it) {
  size_t longest = it.answer.size();
  for (const auto& op : it.options) longest = std::max(longest, op.size());
  return longest;
}

// "video" / "audio" / "image" (or "media": {...}) and "use_audio_in_video" of one line.
TaskMedia media_fields(const json& j, const LineCtx& c, const std::string& root) {
  TaskMedia m;
  const json* src = &j;
  if (j.contains("media")) {
    if (!j["media"].is_object())
      fail(c.path, ":", c.line, ": field 'media': expected an object {\"video\": path, ...}, found ", j["media"].dump());
    for (const char* k : {"video", "audio", "image"})
      if (j.contains(k)) fail(c.path, ":", c.line, ": give '", k, "' either at the top level or inside 'media', not both");
    src = &j["media"];
  }
  for (const char* k : {"video", "audio", "image"}) {
    if (!src->contains(k)) continue;
    const json& v = (*src)[k];
    if (!v.is_string() || v.get<std::string>().empty())
      fail(c.path, ":", c.line, ": field '", k, "': expected a file path, found ", v.dump());
    std::filesystem::path p = v.get<std::string>();
    if (p.is_relative()) p = std::filesystem::path(root) / p;
    std::error_code ec;
    if (!std::filesystem::is_regular_file(p, ec)) fail(c.path, ":", c.line, ": field '", k, "': no such file ", p.string());
    (std::string(k) == "video" ? m.video : std::string(k) == "audio" ? m.audio : m.image) = p.string();
  }
  if (j.contains("use_audio_in_video")) {
    if (!j["use_audio_in_video"].is_boolean())
      fail(c.path, ":", c.line, ": field 'use_audio_in_video': expected true or false, found ", j["use_audio_in_video"].dump());
    if (m.video.empty()) fail(c.path, ":", c.line, ": field 'use_audio_in_video' needs a 'video'");
    m.use_audio_in_video = j["use_audio_in_video"].get<bool>() ? 1 : 0;
  }
  return m;
}

}  // namespace

std::vector<TaskItem> parse_tasks(const std::string& text, const std::string& path, const Tokenizer* tok, int vocab,
                                  const TaskLoadOptions& o) {
  std::vector<TaskItem> items;
  const std::string root =
      !o.media_root.empty() ? o.media_root : std::filesystem::path(path).parent_path().string();
  std::istringstream is(text);
  std::string line;
  int ln = 0;
  while (std::getline(is, line)) {
    ++ln;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    LineCtx c{path, ln, tok, vocab, &o.chat_format};
    json j;
    try {
      j = json::parse(line);
    } catch (const json::exception& e) {
      fail(path, ":", ln, ": not valid JSON (", e.what(), ")");
    }
    if (!j.is_object()) fail(path, ":", ln, ": expected a JSON object, found ", j.type_name());
    TaskItem it;
    it.line = ln;
    if (j.contains("id")) it.id = j["id"].is_string() ? j["id"].get<std::string>() : j["id"].dump();
    else it.id = "line " + std::to_string(ln);
    const bool has_text = j.contains("prompt") || j.contains("question");
    if (has_text && j.contains("tokens")) fail(path, ":", ln, ": give either 'prompt' or 'tokens', not both");
    it.media = media_fields(j, c, root);
    if (it.media.any()) {
      if (!has_text) fail(path, ":", ln, ": an item with media needs a text 'prompt' (its chat prompt holds the placeholders)");
      const char* f = j.contains("prompt") ? "prompt" : "question";
      if (!j[f].is_string()) fail(path, ":", ln, ": field '", f, "': expected text, found ", j[f].dump());
      if (!tok) fail(path, ":", ln, ": field '", f, "' is text but the model folder has no tokenizer.json");
      it.text = j[f].get<std::string>();
    } else if (j.contains("tokens")) {
      if (!j["tokens"].is_array()) fail(path, ":", ln, ": field 'tokens': expected an array of token ids");
      it.prompt = token_array(j["tokens"], c, "tokens");
    } else if (has_text) {
      const char* f = j.contains("prompt") ? "prompt" : "question";
      if (!j[f].is_string()) fail(path, ":", ln, ": field '", f, "': expected text, found ", j[f].dump());
      it.prompt = encode_text(j[f].get<std::string>(), c, f, true, o.chat);
    } else {
      fail(path, ":", ln, ": expected a field 'prompt' (text) or 'tokens' (token ids)");
    }
    if (it.prompt.empty() && !it.media.any()) fail(path, ":", ln, ": the prompt has no tokens");
    if (j.contains("options")) {
      const json& op = j["options"];
      if (!op.is_array() || op.size() < 2) fail(path, ":", ln, ": field 'options': expected an array of at least 2 options");
      for (size_t k = 0; k < op.size(); ++k) {
        it.options.push_back(continuation(op[k], c, "options"));
        it.option_labels.push_back(op[k].is_string() ? op[k].get<std::string>() : op[k].dump());
      }
      if (!j.contains("answer")) fail(path, ":", ln, ": field 'answer' is required with 'options'");
      const json& a = j["answer"];
      const int K = int(op.size());
      if (a.is_number_integer()) {
        it.correct = a.get<int>();
      } else if (a.is_string()) {
        const std::string s = a.get<std::string>();
        for (int k = 0; k < K && it.correct < 0; ++k)
          if (op[size_t(k)].is_string() && op[size_t(k)].get<std::string>() == s) it.correct = k;
        if (it.correct < 0 && s.size() == 1 && s[0] >= 'A' && s[0] <= 'Z') it.correct = s[0] - 'A';
        if (it.correct < 0) it.correct = K;  // reported below
      } else if (a.is_array()) {
        auto v = token_array(a, c, "answer");
        for (int k = 0; k < K && it.correct < 0; ++k)
          if (it.options[size_t(k)] == v) it.correct = k;
        if (it.correct < 0) it.correct = K;
      } else {
        fail(path, ":", ln, ": field 'answer': expected an option's text, letter or index, found ", a.dump());
      }
      if (it.correct < 0 || it.correct >= K)
        fail(path, ":", ln, ": field 'answer': ", a.dump(), " names none of the ", K, " options");
    } else if (j.contains("answer")) {
      it.answer = continuation(j["answer"], c, "answer");
    }
    const size_t longest = longest_continuation(it);
    if (!it.media.any() && o.max_positions > 0 && it.prompt.size() + longest > size_t(o.max_positions))
      fail(path, ":", ln, ": ", it.prompt.size() + longest, " tokens is longer than the model's context of ",
           o.max_positions, " tokens");
    items.push_back(std::move(it));
    if (o.max_items > 0 && int(items.size()) >= o.max_items) break;
  }
  if (items.empty()) fail(path, ": no prompts (expected one JSON object per line)");
  return items;
}

std::vector<TaskItem> load_tasks(const std::string& path, const Tokenizer* tok, int vocab, const TaskLoadOptions& o) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(path, ": cannot open the prompts file");
  std::stringstream ss;
  ss << f.rdbuf();
  return parse_tasks(ss.str(), path, tok, vocab, o);
}

bool any_media(const std::vector<TaskItem>& items) {
  return std::any_of(items.begin(), items.end(), [](const TaskItem& t) { return t.media.any(); });
}

void attach_media(std::vector<TaskItem>& items, MultimodalModel& mm, const Tokenizer& tok, const std::string& system,
                  const ChatFormat& format, int max_positions, const std::string& path) {
  for (auto& it : items) {
    if (!it.media.any()) continue;
    const std::string where = path + ":" + std::to_string(it.line);
    MediaRequest r;
    r.video = it.media.video;
    r.audio = it.media.audio;
    r.image = it.media.image;
    if (!r.video.empty() || !r.image.empty())
      if (!mm.has_vision()) fail(where, ": the item has a video or an image but the model has no vision encoder");
    if (!r.audio.empty() && !mm.has_audio()) fail(where, ": the item has audio but the model has no audio encoder");
    if (it.media.use_audio_in_video >= 0) {
      r.use_audio_in_video = it.media.use_audio_in_video == 1;
      if (r.use_audio_in_video && !mm.has_audio())
        fail(where, ": 'use_audio_in_video' is true but the model has no audio encoder");
    } else {
      r.use_audio_in_video = video_audio_by_default(mm, r);
    }
    try {
      PreparedPrompt p = prepare_multimodal(mm, r, multimodal_chat_ids(mm.config(), tok, r, it.text, system, format));
      it.prefill = std::make_shared<const MultimodalPrefill>(std::move(p.prefill));
    } catch (const Error& e) {
      fail(where, ": ", e.what());
    }
    it.prompt = it.prefill->ids;
    const size_t longest = longest_continuation(it);
    if (max_positions > 0 && it.prompt.size() + longest > size_t(max_positions))
      fail(where, ": the prompt with its media is ", it.prompt.size() + longest, " tokens, longer than the model's context of ",
           max_positions, " tokens");
  }
}

void feed_prompt(Session& s, const TaskItem& it, std::vector<float>* logits, bool all_rows) {
  if (!it.prefill) {
    s.forward(it.prompt, logits, all_rows);
    return;
  }
  const MultimodalPrefill& p = *it.prefill;
  if (!p.deepstack.empty()) s.set_deepstack(p.deepstack, p.deepstack_rows);
  s.forward_embeds(p.ids.data(), int(p.ids.size()), p.embeds.data(), p.modality.data(), p.positions.data(), logits,
                   all_rows);
}

Metric choose_metric(const std::string& name, const std::vector<TaskItem>& items) {
  const bool all_mc = !items.empty() && std::all_of(items.begin(), items.end(), [](const TaskItem& t) {
    return !t.options.empty();
  });
  if (name == "auto") return all_mc ? Metric::Accuracy : Metric::LogLik;
  if (name == "loglik") return Metric::LogLik;
  if (name == "accuracy") {
    if (!all_mc) fail("--metric accuracy: every prompt needs 'options' and 'answer' (some have none)");
    return Metric::Accuracy;
  }
  fail("--metric: expected auto, loglik or accuracy, found '", name, "'");
}

const char* metric_name(Metric m) { return m == Metric::Accuracy ? "accuracy" : "loglik"; }

double log_prob(const float* logits, int vocab, int id) {
  float mx = logits[0];
  for (int i = 1; i < vocab; ++i) mx = std::max(mx, logits[i]);
  double s = 0;
  for (int i = 0; i < vocab; ++i) s += std::exp(double(logits[i]) - mx);
  return double(logits[id]) - mx - std::log(s);
}

MetricValue evaluate_tasks(const Model& m, Backend& be, const std::vector<TaskItem>& items,
                           const std::vector<HeadAblation::Target>& ablate) {
  const int V = m.config().vocab;
  size_t ctx = 1;
  for (const auto& it : items) {
    ctx = std::max(ctx, it.prompt.size() + longest_continuation(it));
  }
  Session s(m, be, int(ctx));
  HeadAblation ab(ablate);
  if (!ablate.empty()) s.add_intervention(&ab);
  MetricValue r;
  double ll_sum = 0;
  int mc = 0, right = 0;
  std::vector<float> logits, last;
  for (const auto& it : items) {
    s.reset();
    const int P = int(it.prompt.size());
    if (!it.options.empty()) {
      feed_prompt(s, it, &last, false);
      double best = -INFINITY;
      int arg = -1;
      double gold = 0;
      for (size_t k = 0; k < it.options.size(); ++k) {
        const auto& op = it.options[k];
        s.rewind(P);
        s.forward(op, &logits, true);
        double lp = log_prob(last.data(), V, op[0]);
        for (size_t t = 1; t < op.size(); ++t) lp += log_prob(logits.data() + (t - 1) * size_t(V), V, op[t]);
        if (lp > best) {
          best = lp;
          arg = int(k);
        }
        if (int(k) == it.correct) gold = lp / double(op.size());
      }
      ll_sum += gold;
      ++mc;
      if (arg == it.correct) ++right;
    } else if (!it.answer.empty() && it.prefill) {
      feed_prompt(s, it, &last, false);
      s.forward(it.answer, &logits, true);
      double lp = log_prob(last.data(), V, it.answer[0]);
      for (size_t t = 1; t < it.answer.size(); ++t) lp += log_prob(logits.data() + (t - 1) * size_t(V), V, it.answer[t]);
      ll_sum += lp / double(it.answer.size());
    } else if (!it.answer.empty()) {
      std::vector<int32_t> seq = it.prompt;
      seq.insert(seq.end(), it.answer.begin(), it.answer.end());
      s.forward(seq, &logits, true);
      double lp = 0;
      for (size_t t = 0; t < it.answer.size(); ++t)
        lp += log_prob(logits.data() + (size_t(P) + t - 1) * size_t(V), V, it.answer[t]);
      ll_sum += lp / double(it.answer.size());
    } else {
      feed_prompt(s, it, &logits, true);
      double lp = 0;
      int scored = 0;
      for (int t = 1; t < P; ++t) {
        if (it.prefill && it.prefill->modality[size_t(t)] != 0) continue;  // media rows have no token to predict
        lp += log_prob(logits.data() + size_t(t - 1) * size_t(V), V, it.prompt[size_t(t)]);
        ++scored;
      }
      ll_sum += scored ? lp / double(scored) : 0.0;
    }
  }
  r.loglik = items.empty() ? 0 : ll_sum / double(items.size());
  r.accuracy = mc ? double(right) / mc : -1;
  return r;
}

}  // namespace outro::sink
