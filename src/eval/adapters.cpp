// The benchmark adapters: each published question file, record by record in file order, to items.
#include "eval/adapters.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "eval/extract.h"

namespace outro::eval {

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;  // objects keep the file's key order (WorldSense's videos and tasks)

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

// The keys of a record, for errors: "video_id", "task", ... (or what the record is when not an object).
std::string keys_of(const json& j) {
  if (!j.is_object()) return std::string("no fields (the record is ") + j.type_name() + ", not an object)";
  if (j.empty()) return "no fields (an empty object)";
  std::string out;
  for (auto& [k, v] : j.items()) out += (out.empty() ? "\"" : ", \"") + k + "\"";
  return out;
}

std::string quoted_list(std::initializer_list<const char*> ks) {
  std::string out;
  for (const char* k : ks) out += (out.empty() ? "\"" : ", \"") + std::string(k) + "\"";
  return out;
}

bool has_fields(const json& q, std::initializer_list<const char*> need) {
  if (!q.is_object()) return false;
  for (const char* k : need)
    if (!q.contains(k) || q[k].is_null()) return false;
  return true;
}

// A record of another format than the one named: which fields were expected, which were found.
[[noreturn]] void wrong_format(const std::string& where, const std::string& format, const std::string& expected,
                               const json& q) {
  fail(where, ": not in the ", format, " format: expected the fields ", expected, "; found ", keys_of(q),
       " (is --format right for this file?)");
}

// Python's str.strip(): whitespace off both ends.
std::string py_strip(const std::string& s) { return trim(s); }

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  for (size_t p = s.find(from); p != std::string::npos; p = s.find(from, p + to.size())) s.replace(p, from.size(), to);
  return s;
}

std::vector<std::string> split_lines(const std::string& s) {
  std::vector<std::string> out;
  size_t a = 0;
  for (size_t b = s.find('\n'); ; b = s.find('\n', a)) {
    out.push_back(s.substr(a, b == std::string::npos ? std::string::npos : b - a));
    if (b == std::string::npos) break;
    a = b + 1;
  }
  return out;
}

// Whether a task is to be converted: --tasks names it, or (no --tasks) it is not one of AVHBench's
// single-modality "*_only" variants.
bool single_modality(const std::string& task) { return lower(task).find("_only") != std::string::npos; }
bool keep_task(const std::string& task, const AdapterOptions& o) {
  if (o.tasks.empty()) return !single_modality(task);
  for (auto& t : o.tasks)
    if (t == "all" || t == task) return true;
  return false;
}
void count_left_out(Conversion& out, const std::string& task, const AdapterOptions& o) {
  if (o.tasks.empty())
    out.skipped["single-modality task \"" + task + "\" (the same question with one modality; --tasks names it to convert it)"]++;
  else
    out.skipped["task \"" + task + "\" not in --tasks"]++;
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
      if (!has_fields(q, {"video_id", "text", "label"}))
        wrong_format(where, "avhbench", quoted_list({"video_id", "task", "text", "label"}), q);
      const std::string vid = field(q, "video_id", where);
      const std::string label = lower(trim(field(q, "label", where)));
      Item it;
      it.id = "avh-" + vid + "-" + std::to_string(counter[vid]++);
      it.index = (long long)k;
      it.question = trim(field(q, "text", where));
      it.task = opt_field(q, "task");
      if (label != "yes" && label != "no") {
        out.skipped["not a yes/no question (" + (it.task.empty() ? std::string("no task") : it.task) + ")"]++;
        continue;
      }
      if (!keep_task(it.task, o)) {
        count_left_out(out, it.task, o);
        continue;
      }
      // The authors' script: the stripped text, and " Answer yes or no." unless it already asks so.
      static const std::regex asks(R"(\banswer\s+yes\s+or\s+no\b)", std::regex::icase);
      it.prompt = it.question + (std::regex_search(it.question, asks) ? "" : " Answer yes or no.");
      it.options = {"yes", "no"};
      it.answer = label == "yes" ? 0 : 1;
      it.category = vid.find("_swap") != std::string::npos ? "swapped audio" : "original";
      // a video_id given with its extension names the same file (the authors' script adds ".mp4" otherwise)
      const std::string stem = vid.size() > 4 && lower(vid.substr(vid.size() - 4)) == ".mp4" ? vid.substr(0, vid.size() - 4) : vid;
      const std::map<std::string, std::string> vars = {{"video_id", stem}, {"id", it.id}};
      const std::string lt = lower(it.task);
      if (lt.find("audio_only") != std::string::npos) {
        // the sound alone: the audio template, else the video's own audio track
        auto a = tmpl.find("audio");
        it.media.push_back({"audio", fill(a != tmpl.end() ? a->second : tmpl.at("video"), vars)});
      } else if (lt.find("video_only") != std::string::npos) {
        it.media.push_back({"video", fill(tmpl.at("video"), vars)});
        it.audio_in_video = 0;  // the frames alone
      } else {
        add_media(it, tmpl, vars);
      }
      out.items.push_back(std::move(it));
    }
  }
}

// --- Daily-Omni, two forms:
//   Daily-Omni's qa.json = [{"video_id", "Question", "Choice": [...], "Answer": "B", "Type", "video_duration", ...}]
//   the OutRo authors' dailyomni.json = [{"video", "audio", "conversations": [{"from": "human", "value":
//     "<image>\n{instruction}\n{question}\n{4 options, no letters}\n{answer instruction}"}, {"from": "gpt",
//     "value": "B. ..."}], "id"}]
// The instruction lines of the authors' file; a qa.json item gets the same user text around its question.
const char* kDailyOmniHead =
    "Select the best answer to the following multiple-choice question based on the video and audio. Respond with "
    "only the letter (A, B, C, or D) of the correct option.";
const char* kDailyOmniTail =
    "Answer with the option's letter from the given choices directly and only give the best option. The best answer "
    "is:";

std::string dailyomni_key(const std::string& vid, const std::string& question) { return vid + "\n" + trim(question); }

// qa.json's Type of each (video_id, question), for the authors' file, which has none.
std::map<std::string, std::string> dailyomni_types(const std::string& qa) {
  std::map<std::string, std::string> out;
  auto recs = parse_records(qa);
  for (size_t k = 0; k < recs.size(); ++k) {
    const json& q = recs[k];
    if (!has_fields(q, {"video_id", "Question", "Type"}))
      wrong_format(qa + " [" + std::to_string(k) + "]", "Daily-Omni qa.json (--qa)",
                   quoted_list({"video_id", "Question", "Type"}), q);
    out[dailyomni_key(field(q, "video_id", qa), field(q, "Question", qa))] = field(q, "Type", qa);
  }
  return out;
}

void dailyomni(const std::string& input, const AdapterOptions& o, Conversion& out) {
  auto tmpl = templates_for("dailyomni", o);
  auto recs = parse_records(input);
  std::map<std::string, std::string> types;
  if (!o.qa_file.empty()) types = dailyomni_types(o.qa_file);
  std::map<std::string, int> counter;
  for (size_t k = 0; k < recs.size(); ++k) {
    const std::string where = input + " [" + std::to_string(k) + "]";
    const json& q = recs[k];
    Item it;
    it.index = (long long)k;
    std::string vid;
    if (has_fields(q, {"video", "conversations"})) {
      // the authors' form: the human turn is the prompt, the gpt turn starts with the letter
      const json& c = q["conversations"];
      if (!c.is_array() || c.size() < 2 || !c[0].is_object() || !c[1].is_object() || !c[0].contains("value") ||
          !c[1].contains("value") || !c[0]["value"].is_string() || !c[1]["value"].is_string())
        fail(where, ": \"conversations\" must hold the human turn and the gpt turn, each with a \"value\" string");
      const std::string video = field(q, "video", where);
      vid = fs::path(video).parent_path().filename().string();
      if (vid.empty()) vid = fs::path(video).stem().string();
      it.id = "dailyomni-" + (q.contains("id") ? field(q, "id", where) : std::to_string(k));
      it.prompt = py_strip(replace_all(replace_all(c[0]["value"].get<std::string>(), "<image>\n", ""), "<image>", ""));
      const auto lines = split_lines(it.prompt);
      if (lines.size() < 7)
        fail(where, ": the human turn has ", lines.size(),
             " lines; expected an instruction, the question, four options and the answer instruction");
      const size_t n = lines.size();
      for (size_t i = 1; i + 5 < n; ++i) it.question += (i > 1 ? "\n" : "") + lines[i];
      for (size_t i = n - 5; i + 1 < n; ++i) it.options.push_back(trim(lines[i]));
      const std::string gold = py_strip(c[1]["value"].get<std::string>());
      const char letter = gold.empty() ? 0 : char(std::toupper(static_cast<unsigned char>(gold[0])));
      if (letter < 'A' || letter > 'D') fail(where, ": the gpt turn \"", gold, "\" does not start with a letter A-D");
      it.answer = letter - 'A';
      if (!types.empty()) {
        auto t = types.find(dailyomni_key(vid, it.question));
        if (t != types.end()) it.task = t->second;
        else out.notes["questions not found in --qa (no task)"]++;
      }
      std::map<std::string, std::string> vars = {{"video_id", vid}, {"id", it.id}, {"video", video},
                                                 {"audio", opt_field(q, "audio")}};
      if (o.media_templates.empty()) it.media.push_back({"video", video});  // the release's path
      else add_media(it, tmpl, vars);
    } else if (has_fields(q, {"video_id", "Question", "Choice", "Answer"})) {
      vid = field(q, "video_id", where);
      it.id = "dailyomni-" + vid + "-" + std::to_string(counter[vid]++);
      it.question = trim(field(q, "Question", where));
      auto c = q.find("Choice");
      if (!c->is_array() || c->size() < 2) fail(where, ": \"Choice\" must list the options");
      for (size_t i = 0; i < c->size(); ++i) {
        if (!(*c)[i].is_string()) fail(where, ": \"Choice\" [", i, "] is not a string");
        it.options.push_back(strip_label((*c)[i].get<std::string>(), char('A' + i)));
      }
      it.answer = letter_index(field(q, "Answer", where), int(it.options.size()), where);
      it.task = opt_field(q, "Type");
      it.category = opt_field(q, "video_duration");
      if (it.category.empty()) it.category = opt_field(q, "video_category");
      // the user text of the authors' file, built around this question
      it.prompt = std::string(kDailyOmniHead) + "\n" + it.question;
      for (auto& x : it.options) it.prompt += "\n" + x;
      it.prompt += std::string("\n") + kDailyOmniTail;
      add_media(it, tmpl, {{"video_id", vid}, {"id", it.id}, {"video", ""}, {"audio", ""}});
    } else {
      wrong_format(where, "dailyomni",
                   quoted_list({"video", "conversations"}) + " (the OutRo authors' dailyomni.json) or " +
                       quoted_list({"video_id", "Question", "Choice", "Answer"}) + " (Daily-Omni's qa.json)",
                   q);
    }
    out.items.push_back(std::move(it));
  }
}

// --- WorldSense: worldsense_qa.json = {video_key: {"video_id", "domain", "sub_category", "audio_class",
//     "task1": {"question", "candidates": ["A. ...", ...], "answer": "A", "task_domain", "task_type"}, ...}}
void worldsense(const std::string& input, const AdapterOptions& o, Conversion& out) {
  const auto tmpl = templates_for("worldsense", o);
  json j = parse_file(input);
  if (j.is_array() && !j.empty())
    wrong_format(input + " [0]", "worldsense",
                 "of an object video -> {\"video_id\", \"domain\", \"task1\": {\"question\", \"candidates\", \"answer\"}, ...}",
                 j[0]);
  if (!j.is_object()) fail(input, ": expected an object video -> tasks (worldsense_qa.json); found a JSON ", j.type_name());
  long long index = 0;
  for (auto& [key, v] : j.items()) {
    if (!v.is_object()) continue;
    std::string vid = opt_field(v, "video_id");
    if (vid.empty()) vid = key;
    std::vector<std::string> tasks;
    for (auto& [tk, tv] : v.items())
      if (tk.rfind("task", 0) == 0 && tv.is_object()) tasks.push_back(tk);
    for (auto& tk : tasks) {
      const json& q = v[tk];
      const std::string where = input + " [" + key + "." + tk + "]";
      if (!has_fields(q, {"question", "candidates", "answer"}))
        wrong_format(where, "worldsense", quoted_list({"question", "candidates", "answer", "task_type"}), q);
      Item it;
      it.index = index++;
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
    if (!has_fields(q, {"video ID", "Question ID", "Question", "Options", "Answer"}))
      wrong_format(where, "videoholmes", quoted_list({"video ID", "Question ID", "Question Type", "Question", "Options", "Answer"}), q);
    const std::string vid = field(q, "video ID", where);
    Item it;
    it.index = (long long)k;
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
    if (!has_fields(q, {"index", "question", "options", "answer"}))
      wrong_format(where, "omnibench", quoted_list({"index", "task type", "question", "options", "answer", "audio_path", "image_path"}), q);
    Item it;
    it.index = (long long)k;
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
    if (it.answer < 0) {
      // OmniBench's scorer reads the gold answer with its own choice parser; where that finds no
      // option either, the record cannot be scored there: left out and counted.
      it.answer = omnibench_choice(ans, it.options);
      if (it.answer >= 0) {
        out.notes["answers matched as OmniBench's scorer reads them (no option's text equals them)"]++;
      } else {
        out.skipped["answer matches none of the options (nor OmniBench's parser)"]++;
        continue;
      }
    }
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
  if (format != "avhbench" && !o.tasks.empty()) {  // avhbench filters as it reads (its *_only tasks)
    std::vector<Item> kept;
    for (auto& it : out.items) {
      if (keep_task(it.task, o)) kept.push_back(std::move(it));
      else count_left_out(out, it.task, o);
    }
    out.items = std::move(kept);
  }
  std::set<std::string> ids;
  for (auto& it : out.items)
    if (!ids.insert(it.id).second) fail(input, ": two questions map to the same id \"", it.id, "\"");
  if (out.items.empty()) fail(input, ": no multiple-choice or yes/no questions found");
  return out;
}

}  // namespace outro::eval
