#include "tokenizer/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <climits>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"

namespace outro {

using json = nlohmann::json;

namespace {

// GPT-2's byte -> printable code point table (the alphabet of byte-level vocabularies).
const std::vector<int>& byte_to_cp() {
  static const std::vector<int> t = [] {
    std::vector<int> m(256, -1);
    for (int b = '!'; b <= '~'; ++b) m[size_t(b)] = b;
    for (int b = 0xA1; b <= 0xAC; ++b) m[size_t(b)] = b;
    for (int b = 0xAE; b <= 0xFF; ++b) m[size_t(b)] = b;
    int n = 0;
    for (int b = 0; b < 256; ++b)
      if (m[size_t(b)] < 0) m[size_t(b)] = 256 + n++;
    return m;
  }();
  return t;
}

// Decodes UTF-8 into code points; false on malformed input.
bool utf8_cps(const std::string& s, std::vector<int>* out) {
  for (size_t i = 0; i < s.size();) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (!len || i + size_t(len) > s.size()) return false;
    int cp = len == 1 ? c : c & (0x7F >> len);
    for (int k = 1; k < len; ++k) {
      unsigned char d = static_cast<unsigned char>(s[i + size_t(k)]);
      if ((d & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (d & 0x3F);
    }
    out->push_back(cp);
    i += size_t(len);
  }
  return true;
}

const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

const json* find_split_regex(const json& pt) {
  if (!pt.is_object()) return nullptr;
  if (pt.value("type", "") == "Split" && pt.contains("pattern") && pt["pattern"].is_object() &&
      pt["pattern"].contains("Regex"))
    return &pt["pattern"]["Regex"];
  if (pt.contains("pretokenizers") && pt["pretokenizers"].is_array())
    for (const auto& p : pt["pretokenizers"])
      if (const json* r = find_split_regex(p)) return r;
  return nullptr;
}

}  // namespace

Tokenizer::~Tokenizer() {
  if (regex_) pcre2_code_free(static_cast<pcre2_code*>(regex_));
}

std::unique_ptr<Tokenizer> Tokenizer::load(const std::string& path) {
  namespace fs = std::filesystem;
  std::string p = fs::is_directory(path) ? (fs::path(path) / "tokenizer.json").string() : path;
  std::ifstream f(p);
  if (!f) fail(p, ": missing or unreadable (expected a tokenizer.json)");
  std::stringstream ss;
  ss << f.rdbuf();
  return from_json(ss.str(), p);
}

std::unique_ptr<Tokenizer> Tokenizer::from_json(const std::string& text, const std::string& src) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    fail(src, ": not valid JSON (", e.what(), ")");
  }
  if (!j.is_object() || !j.contains("model") || !j["model"].is_object()) fail(src, ": field model is missing");
  const json& m = j["model"];
  const std::string type = m.value("type", "BPE");
  if (type != "BPE") fail(src, ": field model.type: only BPE is supported, found ", type);
  if (!m.contains("vocab") || !m["vocab"].is_object()) fail(src, ": field model.vocab is missing or not an object");
  auto t = std::unique_ptr<Tokenizer>(new Tokenizer());
  t->source_ = src;
  std::vector<int> inv(0x200, -1);
  for (int b = 0; b < 256; ++b) inv[size_t(byte_to_cp()[size_t(b)])] = b;
  auto set_id = [&](int id, const std::string& bytes, bool special) {
    if (id < 0 || id > 10'000'000) fail(src, ": token id ", id, " is out of range");
    if (size_t(id) >= t->id_to_bytes_.size()) {
      t->id_to_bytes_.resize(size_t(id) + 1);
      t->special_.resize(size_t(id) + 1, false);
    }
    t->id_to_bytes_[size_t(id)] = bytes;
    t->special_[size_t(id)] = special;
  };
  for (auto& [tok, idv] : m["vocab"].items()) {
    if (!idv.is_number_integer()) fail(src, ": model.vocab[", tok, "]: expected an integer id");
    std::vector<int> cps;
    if (!utf8_cps(tok, &cps)) fail(src, ": model.vocab: token is not valid UTF-8");
    std::string bytes;
    for (int cp : cps) {
      if (cp >= int(inv.size()) || inv[size_t(cp)] < 0)
        fail(src, ": model.vocab[", tok, "]: not a byte-level token (code point ", cp, " outside the byte alphabet)");
      bytes.push_back(char(inv[size_t(cp)]));
    }
    set_id(idv.get<int>(), bytes, false);
    t->bytes_to_id_[bytes] = idv.get<int>();
  }
  if (j.contains("added_tokens") && j["added_tokens"].is_array())
    for (const auto& a : j["added_tokens"]) {
      if (!a.is_object() || !a.contains("content") || !a.contains("id")) fail(src, ": added_tokens: entry without content/id");
      std::string c = a["content"].get<std::string>();
      int id = a["id"].get<int>();
      set_id(id, c, a.value("special", false));
      if (!c.empty()) t->added_.push_back({c, id});
    }
  std::sort(t->added_.begin(), t->added_.end(), [](const auto& x, const auto& y) { return x.first.size() > y.first.size(); });
  if (m.contains("merges") && m["merges"].is_array()) {
    int rank = 0;
    for (const auto& mg : m["merges"]) {
      std::string a, b;
      if (mg.is_string()) {
        std::string s = mg.get<std::string>();
        auto sp = s.find(' ');
        if (sp == std::string::npos) fail(src, ": model.merges[", rank, "]: expected \"a b\", found ", s);
        a = s.substr(0, sp);
        b = s.substr(sp + 1);
      } else if (mg.is_array() && mg.size() == 2 && mg[0].is_string() && mg[1].is_string()) {
        a = mg[0].get<std::string>();
        b = mg[1].get<std::string>();
      } else {
        fail(src, ": model.merges[", rank, "]: expected a string or a pair of strings");
      }
      auto ia = m["vocab"].find(a), ib = m["vocab"].find(b);
      if (ia == m["vocab"].end() || ib == m["vocab"].end())
        fail(src, ": model.merges[", rank, "]: token '", ia == m["vocab"].end() ? a : b, "' is not in model.vocab");
      t->merge_rank_.emplace(std::make_pair(ia->get<int>(), ib->get<int>()), rank);
      ++rank;
    }
  }
  for (int b = 0; b < 256; ++b)
    if (!t->bytes_to_id_.count(std::string(1, char(b))))
      fail(src, ": model.vocab: byte ", b, " has no token (a byte-level vocabulary needs all 256)");
  std::string pattern = kGpt2Pattern;
  if (j.contains("pre_tokenizer"))
    if (const json* r = find_split_regex(j["pre_tokenizer"]); r && r->is_string()) pattern = r->get<std::string>();
  int err = 0;
  PCRE2_SIZE off = 0;
  pcre2_code* re = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.c_str()), pattern.size(),
                                 PCRE2_UTF | PCRE2_UCP, &err, &off, nullptr);
  if (!re) fail(src, ": pre_tokenizer regex does not compile at offset ", off);
  pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
  t->regex_ = re;
  return t;
}

void Tokenizer::bpe(const std::string& piece, std::vector<int>* out) const {
  auto whole = bytes_to_id_.find(piece);
  if (whole != bytes_to_id_.end() && piece.size() > 1 && merge_rank_.empty()) {
    out->push_back(whole->second);
    return;
  }
  std::vector<int> ids;
  for (char c : piece) ids.push_back(bytes_to_id_.at(std::string(1, c)));
  while (ids.size() > 1) {
    int best = INT_MAX;
    size_t at = 0;
    for (size_t i = 0; i + 1 < ids.size(); ++i) {
      auto it = merge_rank_.find({ids[i], ids[i + 1]});
      if (it != merge_rank_.end() && it->second < best) {
        best = it->second;
        at = i;
      }
    }
    if (best == INT_MAX) break;
    const int l = ids[at], r = ids[at + 1];
    auto merged = bytes_to_id_.find(id_to_bytes_[size_t(l)] + id_to_bytes_[size_t(r)]);
    if (merged == bytes_to_id_.end()) break;
    std::vector<int> next;
    for (size_t i = 0; i < ids.size(); ++i) {
      if (i + 1 < ids.size() && ids[i] == l && ids[i + 1] == r) {
        next.push_back(merged->second);
        ++i;
      } else {
        next.push_back(ids[i]);
      }
    }
    ids.swap(next);
  }
  out->insert(out->end(), ids.begin(), ids.end());
}

std::vector<int> Tokenizer::encode(const std::string& text, bool parse_special) const {
  std::vector<int> out;
  auto* re = static_cast<pcre2_code*>(regex_);
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(re, nullptr);
  auto split = [&](const std::string& seg) {
    PCRE2_SIZE start = 0;
    while (start < seg.size()) {
      int rc = pcre2_match(re, reinterpret_cast<PCRE2_SPTR>(seg.data()), seg.size(), start, PCRE2_NO_UTF_CHECK, md, nullptr);
      if (rc < 0) {
        bpe(seg.substr(start), &out);
        break;
      }
      PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      if (ov[0] > start) bpe(seg.substr(start, ov[0] - start), &out);
      if (ov[1] == ov[0]) {  // empty match: take one byte to make progress
        bpe(seg.substr(ov[0], 1), &out);
        start = ov[0] + 1;
      } else {
        bpe(seg.substr(ov[0], ov[1] - ov[0]), &out);
        start = ov[1];
      }
    }
  };
  std::vector<int> cps;
  const bool valid = utf8_cps(text, &cps);
  size_t pos = 0;
  while (pos < text.size()) {
    size_t best = std::string::npos;
    const std::pair<std::string, int>* tok = nullptr;
    if (parse_special)
      for (const auto& a : added_) {
        size_t f = text.find(a.first, pos);
        if (f < best) {
          best = f;
          tok = &a;
        }
      }
    std::string seg = text.substr(pos, best == std::string::npos ? std::string::npos : best - pos);
    if (!seg.empty()) {
      if (valid) {
        split(seg);
      } else {
        for (size_t i = 0; i < seg.size(); ++i) bpe(seg.substr(i, 1), &out);
      }
    }
    if (!tok) break;
    out.push_back(tok->second);
    pos = best + tok->first.size();
  }
  pcre2_match_data_free(md);
  return out;
}

std::string Tokenizer::token_bytes(int id) const {
  if (id < 0 || size_t(id) >= id_to_bytes_.size()) fail(source_, ": token id ", id, " is outside the vocabulary of ", id_to_bytes_.size());
  return id_to_bytes_[size_t(id)];
}

std::string Tokenizer::decode(const std::vector<int>& ids, bool skip_special) const {
  std::string s;
  for (int id : ids)
    if (!(skip_special && is_special(id))) s += token_bytes(id);
  return s;
}

std::optional<int> Tokenizer::token_id(const std::string& token) const {
  for (const auto& a : added_)
    if (a.first == token) return a.second;
  auto it = bytes_to_id_.find(token);
  if (it != bytes_to_id_.end()) return it->second;
  return std::nullopt;
}

bool Tokenizer::is_special(int id) const { return id >= 0 && size_t(id) < special_.size() && special_[size_t(id)]; }

std::string StreamDecoder::push(int id) {
  pending_ += t_.token_bytes(id);
  // emit up to the last complete UTF-8 character
  size_t end = pending_.size(), i = end;
  size_t back = 0;
  while (i > 0 && back < 4) {
    --i;
    ++back;
    unsigned char c = static_cast<unsigned char>(pending_[i]);
    if ((c & 0xC0) != 0x80) {
      int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
      if (i + size_t(len) > end) end = i;
      break;
    }
  }
  std::string out = pending_.substr(0, end);
  pending_.erase(0, end);
  return out;
}

std::string StreamDecoder::flush() {
  std::string out;
  out.swap(pending_);
  return out;
}

}  // namespace outro
