#include "eval/bench.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <set>

#include "core/error.h"

namespace outro::eval {

namespace fs = std::filesystem;
using nlohmann::json;

static std::string lower(std::string s) {
  for (auto& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

static std::string trim(const std::string& s) {
  size_t a = 0, b = s.size();
  while (a < b && std::isspace(static_cast<unsigned char>(s[a]))) ++a;
  while (b > a && std::isspace(static_cast<unsigned char>(s[b - 1]))) --b;
  return s.substr(a, b - a);
}

bool Item::yes_no() const {
  return options.size() == 2 && lower(trim(options[0])) == "yes" && lower(trim(options[1])) == "no";
}

char option_letter(int i) { return char('A' + i); }

std::string media_kind_from_path(const std::string& path) {
  std::string ext = lower(fs::path(path).extension().string());
  static const std::set<std::string> video = {".mp4", ".mkv", ".webm", ".avi", ".mov", ".flv"};
  static const std::set<std::string> audio = {".wav", ".mp3", ".flac", ".ogg", ".m4a", ".aac"};
  static const std::set<std::string> image = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"};
  if (video.count(ext)) return "video";
  if (audio.count(ext)) return "audio";
  if (image.count(ext)) return "image";
  return "other";
}

static std::string str_field(const json& j, const char* k, const std::string& where, bool required) {
  auto it = j.find(k);
  if (it == j.end() || it->is_null()) {
    if (required) fail(where, ": missing field \"", k, "\"");
    return "";
  }
  if (it->is_string()) return it->get<std::string>();
  if (it->is_number_integer()) return std::to_string(it->get<long long>());
  fail(where, ": field \"", k, "\" must be a string");
}

Item item_from_json(const json& j, const std::string& where) {
  if (!j.is_object()) fail(where, ": expected a JSON object");
  Item it;
  it.id = str_field(j, "id", where, true);
  if (it.id.empty()) fail(where, ": empty \"id\"");
  it.question = str_field(j, "question", where, true);
  it.task = str_field(j, "task", where, false);
  it.category = str_field(j, "category", where, false);
  it.context = str_field(j, "context", where, false);
  it.prompt = str_field(j, "prompt", where, false);
  if (auto x = j.find("index"); x != j.end() && !x->is_null()) {
    if (!x->is_number_integer()) fail(where, ": \"index\" must be an integer");
    it.index = x->get<long long>();
  }
  if (auto x = j.find("use_audio_in_video"); x != j.end() && !x->is_null()) {
    if (!x->is_boolean()) fail(where, ": \"use_audio_in_video\" must be true or false");
    it.audio_in_video = x->get<bool>() ? 1 : 0;
  }
  if (auto m = j.find("media"); m != j.end() && !m->is_null()) {
    if (m->is_object()) {
      for (auto& [k, v] : m->items()) {
        if (v.is_string()) {
          it.media.push_back({k, v.get<std::string>()});
        } else if (v.is_array()) {
          for (auto& p : v) {
            if (!p.is_string()) fail(where, ": media \"", k, "\" must hold paths (strings)");
            it.media.push_back({k, p.get<std::string>()});
          }
        } else {
          fail(where, ": media \"", k, "\" must be a path or a list of paths");
        }
      }
    } else if (m->is_array()) {
      for (auto& p : *m) {
        if (!p.is_string()) fail(where, ": \"media\" must list paths (strings)");
        it.media.push_back({media_kind_from_path(p.get<std::string>()), p.get<std::string>()});
      }
    } else if (m->is_string()) {
      it.media.push_back({media_kind_from_path(m->get<std::string>()), m->get<std::string>()});
    } else {
      fail(where, ": \"media\" must be an object kind -> path, a list of paths or a path");
    }
  }
  auto o = j.find("options");
  if (o == j.end() || !o->is_array() || o->size() < 2) fail(where, ": \"options\" must list at least two choices");
  if (o->size() > 26) fail(where, ": more than 26 options");
  for (auto& v : *o) {
    if (!v.is_string()) fail(where, ": every option must be a string");
    it.options.push_back(v.get<std::string>());
  }
  auto a = j.find("answer");
  if (a == j.end() || a->is_null()) fail(where, ": missing field \"answer\"");
  const int n = int(it.options.size());
  if (a->is_number_integer()) {
    long long v = a->get<long long>();
    if (v < 0 || v >= n) fail(where, ": answer index ", v, " is outside the ", n, " options");
    it.answer = int(v);
  } else if (a->is_string()) {
    const std::string s = trim(a->get<std::string>());
    if (s.size() == 1 && std::isupper(static_cast<unsigned char>(s[0])) && s[0] - 'A' < n) {
      it.answer = s[0] - 'A';
    } else {
      for (int i = 0; i < n; ++i)
        if (lower(trim(it.options[i])) == lower(s)) {
          it.answer = i;
          break;
        }
      if (it.answer < 0) fail(where, ": answer \"", s, "\" is neither an option letter nor one of the options");
    }
  } else {
    fail(where, ": \"answer\" must be a letter, an index or an option's text");
  }
  return it;
}

json item_to_json(const Item& it) {
  json j;
  j["id"] = it.id;
  json m = json::object();
  bool list_form = false;
  std::set<std::string> kinds;
  for (auto& x : it.media)
    if (!kinds.insert(x.kind).second) list_form = true;
  if (list_form) {
    m = json::array();
    for (auto& x : it.media) m.push_back(x.path);
  } else {
    for (auto& x : it.media) m[x.kind] = x.path;
  }
  j["media"] = m;
  j["question"] = it.question;
  j["options"] = it.options;
  j["answer"] = std::string(1, option_letter(it.answer));
  if (!it.task.empty()) j["task"] = it.task;
  if (!it.category.empty()) j["category"] = it.category;
  if (!it.context.empty()) j["context"] = it.context;
  if (!it.prompt.empty()) j["prompt"] = it.prompt;
  if (it.index >= 0) j["index"] = it.index;
  if (it.audio_in_video >= 0) j["use_audio_in_video"] = it.audio_in_video == 1;
  return j;
}

std::vector<Item> load_bench(const std::string& path) {
  std::ifstream f(path);
  if (!f) fail(path, ": cannot open the benchmark file");
  std::vector<Item> items;
  std::set<std::string> ids;
  std::string line;
  int lineno = 0;
  while (std::getline(f, line)) {
    ++lineno;
    const std::string t = trim(line);
    if (t.empty() || t[0] == '#') continue;
    const std::string where = path + ":" + std::to_string(lineno);
    json j;
    try {
      j = json::parse(t);
    } catch (const json::exception& e) {
      fail(where, ": not valid JSON (", e.what(), ")");
    }
    Item it = item_from_json(j, where);
    if (!ids.insert(it.id).second) fail(where, ": duplicate id \"", it.id, "\"");
    items.push_back(std::move(it));
  }
  if (items.empty()) fail(path, ": no items");
  return items;
}

void write_bench(const std::string& path, const std::vector<Item>& items) {
  if (auto dir = fs::path(path).parent_path(); !dir.empty()) fs::create_directories(dir);
  std::ofstream f(path, std::ios::trunc);
  if (!f) fail(path, ": cannot write");
  for (auto& it : items) f << item_to_json(it).dump(-1, ' ', false, json::error_handler_t::replace) << "\n";
  if (!f) fail(path, ": write failed");
}

std::string resolve_media(const std::string& root, const std::string& path) {
  fs::path p(path);
  if (p.is_absolute() || root.empty()) return p.string();
  return (fs::path(root) / p).string();
}

std::vector<MissingMedia> find_missing_media(const std::vector<Item>& items, const std::string& root) {
  std::vector<MissingMedia> out;
  for (auto& it : items)
    for (auto& m : it.media) {
      std::string p = resolve_media(root, m.path);
      std::error_code ec;
      if (!fs::is_regular_file(p, ec)) out.push_back({it.id, p});
    }
  return out;
}

}  // namespace outro::eval
