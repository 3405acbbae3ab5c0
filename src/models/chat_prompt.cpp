// The per-architecture chat prompt table and --think (chat_prompt.h).
#include "models/chat_prompt.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "core/error.h"

namespace outro {

namespace {

const char* kHelpful = "You are a helpful assistant.";
const char* kQwenOmni =
    "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving auditory and "
    "visual inputs, as well as generating text and speech.";

// What differs between the architectures' released chat templates. Qwen2.5-Omni's media prompts
// carry the system prompt its processor's examples use; Qwen3-Omni's template has no system turn
// of its own and a thinking block.
struct Row {
  Arch arch;
  const char* text_system;   // nullptr: no system turn unless one is given
  const char* media_system;
  bool thinking;
};
const Row kRows[] = {
    {Arch::Qwen2, kHelpful, kHelpful, false},
    {Arch::Llama, kHelpful, kHelpful, false},
    {Arch::Qwen2_5OmniThinker, kHelpful, kQwenOmni, false},
    {Arch::Qwen2_5_VL, kHelpful, kHelpful, false},
    {Arch::Qwen3OmniMoeThinker, nullptr, nullptr, true},
};

std::optional<std::string> opt(const char* s) { return s ? std::optional<std::string>(s) : std::nullopt; }

std::string slurp(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f) fail(p.string(), ": cannot read the file");
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

nlohmann::json parse_json(const std::filesystem::path& p) {
  try {
    return nlohmann::json::parse(slurp(p));
  } catch (const nlohmann::json::exception& e) {
    fail(p.string(), ": expected JSON: ", e.what());
  }
}

// The template text of a "chat_template" value: a string, or a list of {name, template} (all the
// named templates' text together: the default one decides, the others are tool variants).
std::string template_text(const nlohmann::json& v, const std::filesystem::path& p) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_array()) {
    std::string all;
    for (const auto& e : v) {
      if (!e.is_object() || !e.contains("template") || !e["template"].is_string())
        fail(p.string(), ": 'chat_template': expected a string or a list of {\"name\", \"template\"}, found ", e.dump());
      if (e.value("name", "") == "default") return e["template"].get<std::string>();
      all += e["template"].get<std::string>();
    }
    return all;
  }
  fail(p.string(), ": 'chat_template': expected a string or a list of {\"name\", \"template\"}, found ", v.type_name());
}

}  // namespace

ThinkMode parse_think_mode(const std::string& v, const std::string& arg) {
  if (v == "auto") return ThinkMode::Auto;
  if (v == "on") return ThinkMode::On;
  if (v == "off") return ThinkMode::Off;
  fail(arg, ": expected auto, on or off, found '", v, "'");
}

const char* think_mode_name(ThinkMode t) {
  switch (t) {
    case ThinkMode::Auto: return "auto";
    case ThinkMode::On: return "on";
    case ThinkMode::Off: return "off";
  }
  return "?";
}

bool template_opens_thinking(const std::string& text) {
  // Jinja string literals write the newline as \n (in a JSON file already unescaped once).
  std::string t;
  t.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '\\' && i + 1 < text.size() && text[i + 1] == 'n') {
      t += '\n';
      ++i;
    } else {
      t += text[i];
    }
  }
  return t.find("<|im_start|>assistant\n<think>\n") != std::string::npos;
}

ChatTemplateFile find_chat_template(const std::string& dir) {
  namespace fs = std::filesystem;
  ChatTemplateFile out;
  if (dir.empty()) return out;
  const fs::path d(dir);
  std::error_code ec;
  if (fs::is_regular_file(d / "chat_template.jinja", ec)) {
    out.path = (d / "chat_template.jinja").string();
    out.thinking = template_opens_thinking(slurp(d / "chat_template.jinja"));
    return out;
  }
  for (const char* name : {"chat_template.json", "tokenizer_config.json"}) {
    const fs::path p = d / name;
    if (!fs::is_regular_file(p, ec)) continue;
    const nlohmann::json j = parse_json(p);
    if (!j.is_object()) fail(p.string(), ": expected a JSON object, found ", j.type_name());
    if (!j.contains("chat_template") || j["chat_template"].is_null()) {
      if (std::string(name) == "chat_template.json") fail(p.string(), ": expected a 'chat_template' field");
      continue;
    }
    out.path = p.string();
    out.thinking = template_opens_thinking(template_text(j["chat_template"], p));
    return out;
  }
  return out;
}

ChatPrompt chat_prompt(const ModelConfig& c, const std::string& dir, ThinkMode think) {
  const Row* row = nullptr;
  for (const Row& r : kRows)
    if (r.arch == c.arch) row = &r;
  if (!row) fail(c.source, ": no chat prompt is registered for ", arch_name(c.arch));
  ChatPrompt p;
  p.text.default_system = opt(row->text_system);
  p.media.default_system = opt(row->media_system);
  p.thinking_family = row->thinking;
  p.think = think;
  if (!row->thinking) {
    if (think != ThinkMode::Auto)
      fail("--think ", think_mode_name(think), ": ", c.source, " is ", arch_name(c.arch), " (model_type '",
           c.model_type, "'), whose chat template has no thinking block; --think on/off is for Qwen3-family checkpoints");
    return p;
  }
  p.template_file = find_chat_template(dir);
  std::string opening;
  if (think == ThinkMode::On || (think == ThinkMode::Auto && p.template_file.thinking)) {
    p.thinking = true;
    opening = "<think>\n";
  } else if (think == ThinkMode::Off) {
    opening = "<think>\n\n</think>\n\n";
  }
  p.text.assistant_opening = p.media.assistant_opening = opening;
  return p;
}

}  // namespace outro
