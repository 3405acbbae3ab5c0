#include "eval/adapters.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace outro::eval {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string trim(const std::string& s) {
  size_t a = 0, b = s.size();
  while (a < b && std::isspace(static_cast<unsigned char>(s[a]))) ++a;
  while (b > a && std::isspace(static_cast<unsigned char>(s[b - 1]))) --b;
  return s.substr(a, b - a);
}

std::string lower(std::string s) {
  for (auto& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// Strips a leading option label ("A. ", "A) ", "(A) ", "A: ") whose letter is `expect`.
std::string strip_label(const std::string& s, char expect) {
  std::string t = trim(s);
  size_t p = 0;
  if (p < t.size() && t[p] == '(') ++p;
  if (p < t.size() && std::toupper(static_cast<unsigned char>(t[p])) == expect) {
    size_t q = p + 1;
    if (q < t.size() && (t[q] == '.' || t[q] == ')' || t[q] == ':')) {
      ++q;
      if (p == 1 && q < t.size() && t[q] == ')') ++q;
      if (q == t.size() || std::isspace(static_cast<unsigned char>(t[q]))) return trim(t.substr(q));
    }
  }
  return t;
}

std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(path, ": cannot open");
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

json parse_file(const std::string& path) {
  try {
    return json::parse(read_text(path));
  } catch (const json::exception& e) {
    fail(path, ": not valid JSON (", e.what(), ")");
  }
}

// A JSON array, or JSON Lines (one object a line).
std::vector<json> parse_records(const std::string& path) {
  const std::string text = read_text(path);
  size_t p = 0;
  while (p < text.size() && std::isspace(static_cast<unsigned char>(text[p]))) ++p;
  std::vector<json> out;
  if (p < text.size() && text[p] == '[') {
    json j;
    try {
      j = json::parse(text);
    } catch (const json::exception& e) {
      fail(path, ": not valid JSON (", e.what(), ")");
    }
    for (auto& x : j) out.push_back(x);
    return out;
  }
  std::istringstream in(text);
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (trim(line).empty()) continue;
    try {
      out.push_back(json::parse(line));
    } catch (const json::exception& e) {
      fail(path, ":", n, ": not valid JSON (", e.what(), ")");
    }
  }
  return out;
}

std::string field(const json& j, const char* k, const std::string& where) {
  auto it = j.find(k);
  if (it == j.end() || it->is_null()) fail(where, ": missing field \"", k, "\"");
  if (it->is_string()) return it->get<std::string>();
  if (it->is_number_integer()) return std::to_string(it->get<long long>());
  fail(where, ": field \"", k, "\" is not a string");
}

std::string opt_field(const json& j, const char* k) {
  auto it = j.find(k);
  if (it == j.end() || it->is_null()) return "";
  if (it->is_string()) return it->get<std::string>();
  if (it->is_number()) return it->dump();
  return "";
}

std::string fill(std::string t, const std::map<std::string, std::string>& vars) {
  for (auto& [k, v] : vars) {
    const std::string key = "{" + k + "}";
    for (size_t p = t.find(key); p != std::string::npos; p = t.find(key, p + v.size())) t.replace(p, key.size(), v);
  }
  return t;
}

void add_media(Item& it, const std::map<std::string, std::string>& templates, const std::map<std::string, std::string>& vars) {
  for (auto& [kind, t] : templates) {
    if (t.empty()) continue;
    bool have = true;  // skip a template whose variable the record lacks (e.g. no image_path)
    for (auto& [k, v] : vars)
      if (t.find("{" + k + "}") != std::string::npos && v.empty()) have = false;
    if (have) it.media.push_back({kind, fill(t, vars)});
  }
}

int letter_index(const std::string& a, int n, const std::string& where) {
  std::string t = trim(a);
  if (!t.empty() && t[0] == '(') t = t.substr(1);
  if (t.empty() || !std::isalpha(static_cast<unsigned char>(t[0])) ||
      (t.size() > 1 && std::isalnum(static_cast<unsigned char>(t[1]))))
    fail(where, ": answer \"", a, "\" is not an option letter");
  int k = std::toupper(static_cast<unsigned char>(t[0])) - 'A';
  if (k < 0 || k >= n) fail(where, ": answer \"", a, "\" is outside the ", n, " options");
  return k;
}

std::map<std::string, std::string> templates_for(const std::string& format, const AdapterOptions& o) {
  auto t = default_media_templates(format);
  for (auto& [k, v] : o.media_templates) t[k] = v;
  return t;
}

// --- AVHBench: json/{video_id}.json = [{"video_id", "task", "text", "label": "Yes"|"No"}, ...]
void avhbench(const std::string& input, const AdapterOptions& o, Conversion& out) {
  std::vector<std::string> files;
  if (fs::is_directory(input)) {
    for (auto& e : fs::directory_iterator(input))
      if (e.is_regular_file() && e.path().extension() == ".json") files.push_back(e.path().string());
    std::sort(files.begin(), files.end());
    if (files.empty()) fail(input, ": no .json files (expected AVHBench's json/{video_id}.json)");
  } else {
    files.push_back(input);
  }
  const auto tmpl = templates_for("avhbench", o);
  for (auto& f : files) {
    json j = parse_file(f);
    if (j.is_object()) j = json::array({j});
    if (!j.is_array()) fail(f, ": expected a list of question objects");
    std::map<std::string, int> counter;
    for (size_t k = 0; k < j.size(); ++k) {
      const std::string where = f + " [" + std::to_string(k) + "]";
      const json& q = j[k];
      const std::string vid = field(q, "video_id", where);
      const std::string label = lower(trim(field(q, "label", where)));
      Item it;
      it.id = "avh-" + vid + "-" + std::to_string(counter[vid]++);
      it.question = trim(field(q, "text", where));
      it.task = opt_field(q, "task");
      if (label != "yes" && label != "no") {
        out.skipped["not a yes/no question (" + (it.task.empty() ? std::string("no task") : it.task) + ")"]++;
        continue;
      }
      it.options = {"yes", "no"};
      it.answer = label == "yes" ? 0 : 1;
      it.category = vid.find("_swap") != std::string::npos ? "swapped audio" : "original";
      add_media(it, tmpl, {{"video_id", vid}, {"id", it.id}});
      out.items.push_back(std::move(it));
    }
  }
}

// --- Daily-Omni: qa.json = [{"video_id", "Question", "Choice": [...], "Answer": "B", "Type", "video_duration", ...}]
void dailyomni(const std::string& input, const AdapterOptions& o, Conversion& out) {
  const auto tmpl = templates_for("dailyomni", o);
  auto recs = parse_records(input);
  std::map<std::string, int> counter;
  for (size_t k = 0; k < recs.size(); ++k) {
    const std::string where = input + " [" + std::to_string(k) + "]";
    const json& q = recs[k];
    const std::string vid = field(q, "video_id", where);
    Item it;
    it.id = "dailyomni-" + vid + "-" + std::to_string(counter[vid]++);
    it.question = trim(field(q, "Question", where));
    auto c = q.find("Choice");
    if (c == q.end() || !c->is_array() || c->size() < 2) fail(where, ": \"Choice\" must list the options");
    for (size_t i = 0; i < c->size(); ++i) it.options.push_back(strip_label((*c)[i].get<std::string>(), char('A' + i)));
    it.answer = letter_index(field(q, "Answer", where), int(it.options.size()), where);
    it.task = opt_field(q, "Type");
    it.category = opt_field(q, "video_duration");
    if (it.category.empty()) it.category = opt_field(q, "video_category");
    add_media(it, tmpl, {{"video_id", vid}, {"id", it.id}});
    out.items.push_back(std::move(it));
  }
}

// --- WorldSense: worldsense_qa.json = {video_key: {"video_id", "domain", "sub_category", "audio_class",
//     "task1": {"question", "candidates": ["A. ...", ...], "answer": "A", "task_domain", "task_type"}, ...}}
void worldsense(const std::string& input, const AdapterOptions& o, Conversion& out) {
  const auto tmpl = templates_for("worldsense", o);
  json j = parse_file(input);
  if (!j.is_object()) fail(input, ": expected an object video -> tasks (worldsense_qa.json)");
  for (auto& [key, v] : j.items()) {
    if (!v.is_object()) continue;
    std::string vid = opt_field(v, "video_id");
    if (vid.empty()) vid = key;
    std::vector<std::string> tasks;
    for (auto& [tk, tv] : v.items())
      if (tk.rfind("task", 0) == 0 && tv.is_object()) tasks.push_back(tk);
    std::sort(tasks.begin(), tasks.end(), [](const std::string& a, const std::string& b) {
      return a.size() != b.size() ? a.size() < b.size() : a < b;
    });
    for (auto& tk : tasks) {
      const json& q = v[tk];
      const std::string where = input + " [" + key + "." + tk + "]";
      Item it;
      it.id = "worldsense-" + vid + "-" + tk;
      it.question = trim(field(q, "question", where));
      auto c = q.find("candidates");
      if (c == q.end() || !c->is_array() || c->size() < 2) fail(where, ": \"candidates\" must list the options");
      for (size_t i = 0; i < c->size(); ++i) it.options.push_back(strip_label((*c)[i].get<std::string>(), char('A' + i)));
      it.answer = letter_index(field(q, "answer", where), int(it.options.size()), where);
      it.task = opt_field(q, "task_type");
      it.category = opt_field(v, "domain");
      add_media(it, tmpl, {{"video_id", vid}, {"id", it.id}});
      out.items.push_back(std::move(it));
    }
  }
}

// --- Video-Holmes: test_Video-Holmes.json = [{"video ID", "Question ID", "Question Type", "Question",
//     "Options": {"A": ..., ...}, "Answer": "C", "Explanation"}]
void videoholmes(const std::string& input, const AdapterOptions& o, Conversion& out) {
  const auto tmpl = templates_for("videoholmes", o);
  auto recs = parse_records(input);
  for (size_t k = 0; k < recs.size(); ++k) {
    const std::string where = input + " [" + std::to_string(k) + "]";
    const json& q = recs[k];
    const std::string vid = field(q, "video ID", where);
    Item it;
    it.id = "holmes-" + vid + "-" + field(q, "Question ID", where);
    it.question = trim(field(q, "Question", where));
    auto c = q.find("Options");
    if (c == q.end()) fail(where, ": missing field \"Options\"");
    if (c->is_object()) {
      std::vector<std::string> keys;
      for (auto& [l, t] : c->items()) keys.push_back(l);
      std::sort(keys.begin(), keys.end());
      for (size_t i = 0; i < keys.size(); ++i) {
        if (keys[i].size() != 1 || keys[i][0] != char('A' + i)) fail(where, ": option letters are not A, B, C, ...");
        it.options.push_back(trim((*c)[keys[i]].get<std::string>()));
      }
    } else if (c->is_array()) {
      for (size_t i = 0; i < c->size(); ++i) it.options.push_back(strip_label((*c)[i].get<std::string>(), char('A' + i)));
    } else {
      fail(where, ": \"Options\" must be an object letter -> text or a list");
    }
    if (it.options.size() < 2) fail(where, ": fewer than two options");
    it.answer = letter_index(field(q, "Answer", where), int(it.options.size()), where);
    it.task = opt_field(q, "Question Type");
    add_media(it, tmpl, {{"video_id", vid}, {"id", it.id}});
    out.items.push_back(std::move(it));
  }
}

// --- OmniBench: [{"index", "task type", "audio type", "question", "options": [4], "answer": text,
//     "audio_path", "image_path", "audio content", "image content"}] (JSON Lines or a JSON list)
void omnibench(const std::string& input, const AdapterOptions& o, Conversion& out) {
  const auto tmpl = templates_for("omnibench", o);
  auto recs = parse_records(input);
  for (size_t k = 0; k < recs.size(); ++k) {
    const std::string where = input + " [" + std::to_string(k) + "]";
    const json& q = recs[k];
    Item it;
    it.id = "omnibench-" + field(q, "index", where);
    it.question = trim(field(q, "question", where));
    auto c = q.find("options");
    if (c == q.end() || !c->is_array() || c->size() < 2) fail(where, ": \"options\" must list the choices");
    for (auto& x : *c) it.options.push_back(trim(x.get<std::string>()));
    const std::string ans = trim(field(q, "answer", where));
    for (size_t i = 0; i < it.options.size(); ++i)
      if (it.options[i] == ans) it.answer = int(i);
    if (it.answer < 0)
      for (size_t i = 0; i < it.options.size(); ++i)
        if (lower(it.options[i]) == lower(ans)) it.answer = int(i);
    if (it.answer < 0) fail(where, ": answer \"", ans, "\" is not one of the options");
    it.task = opt_field(q, "task type");
    it.category = opt_field(q, "audio type");
    if (o.text_alternative) {
      const std::string img = opt_field(q, "image content"), aud = opt_field(q, "audio content");
      if (!img.empty()) it.context += "Image: " + trim(img) + "\n";
      if (!aud.empty()) it.context += "Audio: " + trim(aud) + "\n";
    }
    add_media(it, tmpl,
              {{"id", it.id}, {"audio_path", opt_field(q, "audio_path")}, {"image_path", opt_field(q, "image_path")}});
    out.items.push_back(std::move(it));
  }
}

}  // namespace

const std::vector<std::string>& adapter_formats() {
  static const std::vector<std::string> f = {"avhbench", "dailyomni", "worldsense", "videoholmes", "omnibench"};
  return f;
}

std::map<std::string, std::string> default_media_templates(const std::string& format) {
  if (format == "avhbench") return {{"video", "video/{video_id}.mp4"}};
  if (format == "dailyomni") return {{"video", "Videos/{video_id}/{video_id}_video.mp4"}};
  if (format == "worldsense") return {{"video", "videos/{video_id}.mp4"}};
  if (format == "videoholmes") return {{"video", "videos_cropped/{video_id}.mp4"}};
  if (format == "omnibench") return {{"audio", "mm_data/audio/{audio_path}"}, {"image", "mm_data/image/{image_path}"}};
  return {};
}

Conversion convert_benchmark(const std::string& format, const std::string& input, const AdapterOptions& o) {
  if (!fs::exists(input)) fail(input, ": no such file or folder");
  Conversion out;
  if (format == "avhbench") avhbench(input, o, out);
  else if (format == "dailyomni") dailyomni(input, o, out);
  else if (format == "worldsense") worldsense(input, o, out);
  else if (format == "videoholmes") videoholmes(input, o, out);
  else if (format == "omnibench") omnibench(input, o, out);
  else fail("unknown benchmark format '", format, "' (known: avhbench, dailyomni, worldsense, videoholmes, omnibench)");
  std::set<std::string> ids;
  for (auto& it : out.items)
    if (!ids.insert(it.id).second) fail(input, ": two questions map to the same id \"", it.id, "\"");
  if (out.items.empty()) fail(input, ": no multiple-choice or yes/no questions found");
  return out;
}

}  // namespace outro::eval
