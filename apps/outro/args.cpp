#include "args.h"

#include <cerrno>
#include <cstdlib>
#include <filesystem>

#include "core/error.h"

namespace outro::cli {

Args::Args(int argc, char** argv, int first, const std::set<std::string>& bool_flags) {
  cmd_ = first > 0 ? argv[first - 1] : "outro";
  for (int i = first; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--", 0) != 0 || a.size() < 3) fail(cmd_, ": unexpected argument '", a, "' (flags start with --)");
    std::string k = a.substr(2), v;
    auto eq = k.find('=');
    if (eq != std::string::npos) {
      v = k.substr(eq + 1);
      k = k.substr(0, eq);
    } else if (!bool_flags.count(k)) {
      if (i + 1 >= argc) fail(cmd_, ": flag --", k, " needs a value");
      v = argv[++i];
    } else {
      v = "1";
    }
    kv_[k] = v;
  }
}

std::string Args::str(const std::string& k, const std::string& def) const {
  auto it = kv_.find(k);
  return it == kv_.end() ? def : it->second;
}

std::string Args::required(const std::string& k) const {
  auto it = kv_.find(k);
  if (it == kv_.end()) fail(cmd_, ": flag --", k, " is required");
  return it->second;
}

int Args::integer(const std::string& k, int def) const {
  auto it = kv_.find(k);
  if (it == kv_.end()) return def;
  char* end = nullptr;
  errno = 0;
  long v = std::strtol(it->second.c_str(), &end, 10);
  if (errno || end == it->second.c_str() || *end || v < -2147483647L || v > 2147483647L)
    fail(cmd_, ": flag --", k, ": expected an integer, found '", it->second, "'");
  return int(v);
}

double Args::number(const std::string& k, double def) const {
  auto it = kv_.find(k);
  if (it == kv_.end()) return def;
  char* end = nullptr;
  double v = std::strtod(it->second.c_str(), &end);
  if (end == it->second.c_str() || *end) fail(cmd_, ": flag --", k, ": expected a number, found '", it->second, "'");
  return v;
}

void Args::check_known(const std::set<std::string>& known) const {
  for (const auto& [k, v] : kv_)
    if (!known.count(k)) fail(cmd_, ": unknown flag --", k);
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t b = 0;
  while (b <= s.size()) {
    size_t e = s.find(sep, b);
    if (e == std::string::npos) e = s.size();
    out.push_back(s.substr(b, e - b));
    b = e + 1;
  }
  return out;
}

std::vector<int32_t> parse_token_list(const std::string& s) {
  std::vector<int32_t> out;
  for (const auto& part : split(s, ',')) {
    std::string t = part;
    while (!t.empty() && t.front() == ' ') t.erase(t.begin());
    while (!t.empty() && t.back() == ' ') t.pop_back();
    char* end = nullptr;
    errno = 0;
    long v = std::strtol(t.c_str(), &end, 10);
    if (t.empty() || errno || *end || v < 0 || v > 2147483647L)
      fail("--tokens: expected comma-separated non-negative integers, found '", part, "'");
    out.push_back(int32_t(v));
  }
  return out;
}

std::string model_dir(const Args& a) {
  if (a.has("model")) return a.str("model");
  if (const char* e = std::getenv("OUTRO_MODEL")) return e;
  namespace fs = std::filesystem;
  // The embedded default: models/outro-omni-demo (the small trained Qwen2.5-Omni thinker) in the
  // source tree the binary was built from. The text-only demo model stays at models/outro-demo.
  fs::path p = fs::path(OUTRO_SOURCE_DIR) / "models" / "outro-omni-demo";
  return p.string();
}

}  // namespace outro::cli
