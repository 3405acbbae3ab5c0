// OutRo config files: JSON, or a minimal TOML subset, both read into one JSON object and applied
// key by key with errors that name the file, the line (TOML) and the key.
#include <cctype>
#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "outro/outro.h"

namespace outro {

namespace {

using json = nlohmann::json;

std::string trim(const std::string& s) {
  size_t a = 0, b = s.size();
  while (a < b && std::isspace(static_cast<unsigned char>(s[a]))) ++a;
  while (b > a && std::isspace(static_cast<unsigned char>(s[b - 1]))) --b;
  return s.substr(a, b - a);
}

// Where a key came from, for messages: "file" or "file:line".
struct Where {
  std::string source;
  std::map<std::string, int> line;
  std::string at(const std::string& key) const {
    auto it = line.find(key);
    return it == line.end() ? source : source + ":" + std::to_string(it->second);
  }
};

// The value of one TOML line: "string", true/false, integer or float, [int, int, ...].
json toml_value(const std::string& v, const std::string& where, const std::string& key) {
  auto bad = [&](const std::string& why) -> json {
    fail(where, ": key '", key, "': ", why, " (found '", v, "'; this TOML subset has strings, numbers, true/false and "
         "one-line arrays of integers)");
  };
  if (v.empty()) return bad("missing value");
  if (v[0] == '"') {
    std::string out;
    size_t i = 1;
    for (; i < v.size() && v[i] != '"'; ++i) {
      if (v[i] == '\\' && i + 1 < v.size()) {
        const char e = v[++i];
        out += e == 'n' ? '\n' : e == 't' ? '\t' : e;
      } else {
        out += v[i];
      }
    }
    if (i >= v.size()) return bad("unterminated string");
    if (!trim(v.substr(i + 1)).empty()) return bad("text after the closing quote");
    return out;
  }
  if (v == "true") return true;
  if (v == "false") return false;
  if (v[0] == '[') {
    if (v.back() != ']') return bad("arrays must open and close on one line");
    json arr = json::array();
    std::string body = v.substr(1, v.size() - 2), item;
    std::stringstream ss(body);
    std::vector<std::string> items;
    while (std::getline(ss, item, ',')) items.push_back(trim(item));
    if (!items.empty() && items.back().empty()) items.pop_back();  // trailing comma
    for (const auto& it : items) {
      if (it.empty()) return bad("empty array element");
      size_t used = 0;
      long long x = 0;
      try {
        x = std::stoll(it, &used, 10);
      } catch (...) {
        used = 0;
      }
      if (used != it.size()) return bad("array elements must be integers");
      arr.push_back(x);
    }
    return arr;
  }
  // A number.
  std::string num;
  for (char c : v)
    if (c != '_') num += c;
  size_t used = 0;
  try {
    const bool is_int = num.find_first_of(".eE") == std::string::npos && num != "inf" && num != "nan";
    if (is_int) {
      long long x = std::stoll(num, &used, 10);
      if (used == num.size()) return x;
    } else {
      double x = std::stod(num, &used);
      if (used == num.size()) return x;
    }
  } catch (...) {
  }
  return bad("not a string, number, boolean or array");
}

json parse_toml(const std::string& text, Where& w) {
  json obj = json::object();
  std::istringstream in(text);
  std::string raw;
  int ln = 0;
  while (std::getline(in, raw)) {
    ++ln;
    // Strip a comment that is not inside a string.
    bool str = false;
    std::string line;
    for (size_t i = 0; i < raw.size(); ++i) {
      const char c = raw[i];
      if (c == '\\' && str && i + 1 < raw.size()) {
        line += c;
        line += raw[++i];
        continue;
      }
      if (c == '"') str = !str;
      if (c == '#' && !str) break;
      line += c;
    }
    line = trim(line);
    if (line.empty()) continue;
    const std::string here = w.source + ":" + std::to_string(ln);
    if (line[0] == '[')
      fail(here, ": tables ('", line, "') are not supported; write the keys at the top level (key = value)");
    const size_t eq = line.find('=');
    if (eq == std::string::npos) fail(here, ": expected 'key = value', found '", line, "'");
    std::string key = trim(line.substr(0, eq));
    if (key.size() >= 2 && key.front() == '"' && key.back() == '"') key = key.substr(1, key.size() - 2);
    if (key.empty()) fail(here, ": missing key before '='");
    for (char c : key)
      if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-'))
        fail(here, ": '", key, "' is not a key (letters, digits, _ and -)");
    if (obj.contains(key)) fail(here, ": key '", key, "' is set twice (first on line ", w.line[key], ")");
    obj[key] = toml_value(trim(line.substr(eq + 1)), here, key);
    w.line[key] = ln;
  }
  return obj;
}

const std::vector<std::string>& known_keys() {
  static const std::vector<std::string> k = {
      "strategy", "preset",  "start_layer", "end_layer", "apply_interval",   "apply_once",    "abs_thr",
      "med_mul",  "gamma",   "temp",        "rescale",   "enhance",          "gate",          "enable_relu_tanh",
      "decode_gating", "override_sinks"};
  return k;
}

OutroParams apply(const json& obj, const Where& w, const OutroParams& base, bool keep_strategy) {
  if (!obj.is_object()) fail(w.source, ": expected an object of OutRo parameters, found ", obj.type_name());
  auto bad = [&](const std::string& key, const std::string& expected) {
    fail(w.at(key), ": key '", key, "': expected ", expected, ", found ", obj.at(key).dump(-1, ' ', false, json::error_handler_t::replace));
  };
  for (auto it = obj.begin(); it != obj.end(); ++it) {
    bool ok = false;
    for (const auto& k : known_keys()) ok |= k == it.key();
    if (!ok) {
      std::string list;
      for (const auto& k : known_keys()) list += (list.empty() ? "" : ", ") + k;
      fail(w.at(it.key()), ": unknown key '", it.key(), "' (known keys: ", list, ")");
    }
  }
  if (obj.contains("strategy") && obj.contains("preset"))
    fail(w.source, ": keys 'strategy' and 'preset' name the same thing; set only one");
  OutroParams p = base;
  for (const char* key : {"strategy", "preset"}) {
    if (!obj.contains(key)) continue;
    if (!obj.at(key).is_string()) bad(key, "a strategy name (string)");
    if (keep_strategy) continue;
    try {
      p = outro_preset(obj.at(key).get<std::string>());
    } catch (const Error& e) {
      fail(w.at(key), ": key '", key, "': ", e.what());
    }
  }
  auto integer = [&](const std::string& key, long lo, const std::string& expected) -> int {
    const json& v = obj.at(key);
    if (v.is_number_integer() || v.is_number_unsigned()) {
      const long long x = v.get<long long>();
      if (x >= lo && x <= 1000000000LL) return int(x);
    } else if (v.is_number_float()) {
      const double x = v.get<double>();
      if (std::floor(x) == x && x >= double(lo) && x <= 1e9) return int(x);
    }
    bad(key, expected);
    return 0;
  };
  auto number = [&](const std::string& key, double lo, double hi, const std::string& expected) -> double {
    const json& v = obj.at(key);
    if (v.is_number()) {
      const double x = v.get<double>();
      if (std::isfinite(x) && x >= lo && x <= hi) return x;
    }
    bad(key, expected);
    return 0;
  };
  auto boolean = [&](const std::string& key) -> bool {
    if (!obj.at(key).is_boolean()) bad(key, "true or false");
    return obj.at(key).get<bool>();
  };
  if (obj.contains("gate") && obj.contains("enable_relu_tanh"))
    fail(w.source, ": keys 'gate' and 'enable_relu_tanh' name the same thing; set only one");
  if (obj.contains("start_layer")) p.start_layer = integer("start_layer", 0, "a layer index (integer >= 0)");
  if (obj.contains("end_layer")) {
    const json& v = obj.at("end_layer");
    if (v.is_string() && v.get<std::string>() == "auto")
      p.end_layer = -1;
    else
      p.end_layer = integer("end_layer", 0, "a layer index (integer >= 0, exclusive), or \"auto\" (L - 2)");
  }
  if (obj.contains("apply_interval")) {
    const json& v = obj.at("apply_interval");
    if (v.is_string() && v.get<std::string>() == "auto")
      p.apply_interval = 0;
    else
      p.apply_interval = integer("apply_interval", 1, "an integer >= 1, or \"auto\" (max(1, L // 7))");
  }
  if (obj.contains("apply_once")) p.apply_once = boolean("apply_once");
  if (obj.contains("abs_thr")) p.abs_thr = number("abs_thr", 0, 1e30, "a number >= 0");
  if (obj.contains("med_mul")) p.med_mul = number("med_mul", 0, 1e30, "a number >= 0");
  if (obj.contains("abs_thr") || obj.contains("med_mul")) p.thresholds_from = w.source;
  if (obj.contains("gamma")) p.gamma = float(number("gamma", -1e6, 1e6, "a finite number"));
  if (obj.contains("temp")) {
    const json& v = obj.at("temp");
    if (!v.is_number() || !(v.get<double>() > 0) || !std::isfinite(v.get<double>())) bad("temp", "a number > 0");
    p.temp = float(v.get<double>());
  }
  if (obj.contains("rescale")) p.rescale = boolean("rescale");
  if (obj.contains("enhance")) p.enhance = boolean("enhance");
  if (obj.contains("gate")) p.gate = boolean("gate");
  if (obj.contains("enable_relu_tanh")) p.gate = boolean("enable_relu_tanh");
  if (obj.contains("decode_gating")) {
    const json& v = obj.at("decode_gating");
    const std::string s = v.is_string() ? v.get<std::string>() : "";
    if (s == "official")
      p.decode = DecodeGating::Official;
    else if (s == "on")
      p.decode = DecodeGating::On;
    else if (s == "off")
      p.decode = DecodeGating::Off;
    else
      bad("decode_gating", "\"official\", \"on\" or \"off\"");
  }
  if (obj.contains("override_sinks")) {
    const json& v = obj.at("override_sinks");
    p.override_sinks.clear();
    if (!v.is_array()) bad("override_sinks", "a list of prompt positions (integers >= 0; [] for Φ_LLM detection)");
    for (const auto& e : v) {
      if (!e.is_number_integer() || e.get<long long>() < 0 || e.get<long long>() > 1000000000LL)
        bad("override_sinks", "a list of prompt positions (integers >= 0; [] for Φ_LLM detection)");
      p.override_sinks.push_back(int(e.get<long long>()));
    }
  }
  return p;
}

}  // namespace

OutroParams parse_outro_config(const std::string& text, const std::string& source, bool is_json,
                               const OutroParams& base, bool keep_strategy) {
  Where w{source, {}};
  json obj;
  if (is_json) {
    try {
      obj = json::parse(text, nullptr, true, /*ignore_comments=*/true);
    } catch (const json::exception& e) {
      fail(source, ": not valid JSON: ", e.what());
    }
  } else {
    obj = parse_toml(text, w);
  }
  return apply(obj, w, base, keep_strategy);
}

OutroParams load_outro_config(const std::string& path, const OutroParams& base, bool keep_strategy) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(path, ": cannot open the OutRo config file");
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string text = ss.str();
  const std::string t = trim(text);
  const bool ends_json = path.size() >= 5 && path.compare(path.size() - 5, 5, ".json") == 0;
  const bool ends_toml = path.size() >= 5 && path.compare(path.size() - 5, 5, ".toml") == 0;
  const bool is_json = ends_json || (!ends_toml && !t.empty() && t[0] == '{');
  return parse_outro_config(text, path, is_json, base, keep_strategy);
}

ModelSinkThresholds read_model_thresholds(const std::string& model_dir) {
  ModelSinkThresholds t;
  const std::string path = model_dir + "/sink_thresholds.json";
  std::ifstream f(path, std::ios::binary);
  if (!f) return t;
  std::stringstream ss;
  ss << f.rdbuf();
  json obj;
  try {
    obj = json::parse(ss.str());
  } catch (const json::exception& e) {
    fail(path, ": not valid JSON: ", e.what());
  }
  if (!obj.is_object()) fail(path, ": expected an object {\"abs_thr\": ..., \"med_mul\": ..., \"note\": ...}");
  for (auto it = obj.begin(); it != obj.end(); ++it)
    if (it.key() != "abs_thr" && it.key() != "med_mul" && it.key() != "note")
      fail(path, ": unknown key '", it.key(), "' (known keys: abs_thr, med_mul, note)");
  auto number = [&](const char* key) {
    if (!obj.contains(key)) fail(path, ": key '", key, "' is missing (expected a number >= 0)");
    const json& v = obj.at(key);
    if (!v.is_number() || !std::isfinite(v.get<double>()) || v.get<double>() < 0)
      fail(path, ": key '", key, "': expected a number >= 0, found ", v.dump());
    return v.get<double>();
  };
  t.abs_thr = number("abs_thr"), t.med_mul = number("med_mul");
  if (obj.contains("note")) {
    if (!obj.at("note").is_string()) fail(path, ": key 'note': expected a string, found ", obj.at("note").dump());
    t.note = obj.at("note").get<std::string>();
  }
  t.present = true;
  t.file = path;
  return t;
}

void apply_model_thresholds(OutroParams& p, const ModelSinkThresholds& t) {
  if (!t.present || !p.thresholds_from.empty()) return;
  p.abs_thr = t.abs_thr, p.med_mul = t.med_mul;
  p.thresholds_from = t.file;
}

}  // namespace outro
