#include "tokenizer/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <queue>
#include <sstream>
#include <unordered_map>

#include "core/error.h"
#include "tokenizer/text.h"

namespace outro {

using json = nlohmann::json;

namespace {

const char* kReplacementChar = "\xEF\xBF\xBD";
const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// GPT-2's byte -> printable code point table (the alphabet of byte-level vocabularies).
struct ByteAlphabet {
  std::string of_byte[256];          // UTF-8 of the code point standing for each byte
  std::vector<int> byte_of_cp;       // inverse, -1 where none
  ByteAlphabet() : byte_of_cp(0x144, -1) {
    int cp[256];
    for (int b = 0; b < 256; ++b) cp[b] = -1;
    for (int b = '!'; b <= '~'; ++b) cp[b] = b;
    for (int b = 0xA1; b <= 0xAC; ++b) cp[b] = b;
    for (int b = 0xAE; b <= 0xFF; ++b) cp[b] = b;
    int n = 0;
    for (int b = 0; b < 256; ++b)
      if (cp[b] < 0) cp[b] = 256 + n++;
    for (int b = 0; b < 256; ++b) {
      text::append_utf8(&of_byte[b], cp[b]);
      byte_of_cp[size_t(cp[b])] = b;
    }
  }
};
const ByteAlphabet& alphabet() {
  static const ByteAlphabet a;
  return a;
}

// A compiled PCRE2 pattern.
struct Regex {
  pcre2_code* code = nullptr;
  ~Regex() {
    if (code) pcre2_code_free(code);
  }
};
using RegexPtr = std::shared_ptr<Regex>;

RegexPtr compile_regex(const std::string& pattern, bool literal, const std::string& where) {
  int err = 0;
  PCRE2_SIZE off = 0;
  uint32_t opts = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
  pcre2_code* re = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), opts, &err, &off, nullptr);
  if (!re) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    fail(where, ": the pattern does not compile at offset ", off, " (", reinterpret_cast<const char*>(msg), ")");
  }
  pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
  auto r = std::make_shared<Regex>();
  r->code = re;
  return r;
}

// Every non-empty, non-overlapping match [begin, end) of re in s (valid UTF-8), left to right.
std::vector<std::pair<size_t, size_t>> find_all(const Regex& re, const std::string& s) {
  std::vector<std::pair<size_t, size_t>> out;
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(re.code, nullptr);
  size_t start = 0;
  while (start < s.size()) {
    int rc = pcre2_match(re.code, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), start, PCRE2_NO_UTF_CHECK, md, nullptr);
    if (rc < 0 && rc != PCRE2_ERROR_NOMATCH)  // JIT stack exhausted: the interpreter keeps its frames on the heap
      rc = pcre2_match(re.code, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), start, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md, nullptr);
    if (rc < 0) break;
    PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    if (ov[1] <= ov[0]) {  // empty match: step over one character
      size_t i = std::max<size_t>(ov[0], start) + 1;
      while (i < s.size() && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) ++i;
      start = i;
      continue;
    }
    out.push_back({ov[0], ov[1]});
    start = ov[1];
  }
  pcre2_match_data_free(md);
  return out;
}

std::string replace_all(const std::string& s, const std::string& from, const std::string& to) {
  if (from.empty()) return s;
  std::string out;
  size_t pos = 0;
  for (size_t f; (f = s.find(from, pos)) != std::string::npos; pos = f + from.size()) {
    out.append(s, pos, f - pos);
    out += to;
  }
  out.append(s, pos);
  return out;
}

// A Replace step's pattern: {"String": "..."} or {"Regex": "..."}.
struct Pattern {
  std::string literal;
  RegexPtr regex;
  std::string apply(const std::string& s, const std::string& content) const {
    if (!regex) return replace_all(s, literal, content);
    std::string out;
    size_t pos = 0;
    for (auto [b, e] : find_all(*regex, s)) {
      out.append(s, pos, b - pos);
      out += content;
      pos = e;
    }
    out.append(s, pos);
    return out;
  }
};

enum class SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

struct Span {
  size_t b, e;
  bool match;
};

// Splits [0, n) by the matches into pieces per the behavior (the pieces' [b, e), in order).
std::vector<Span> split_spans(size_t n, const std::vector<std::pair<size_t, size_t>>& matches, bool invert,
                              SplitBehavior how) {
  std::vector<Span> spans;
  size_t pos = 0;
  for (auto [b, e] : matches) {
    if (b > pos) spans.push_back({pos, b, invert});
    spans.push_back({b, e, !invert});
    pos = e;
  }
  if (pos < n) spans.push_back({pos, n, invert});
  std::vector<Span> out;
  switch (how) {
    case SplitBehavior::Removed:
      for (const auto& s : spans)
        if (!s.match) out.push_back(s);
      break;
    case SplitBehavior::Isolated:
      out = spans;
      break;
    case SplitBehavior::MergedWithPrevious: {
      bool prev_match = false;
      for (const auto& s : spans) {
        if (s.match && !prev_match && !out.empty())
          out.back().e = s.e;
        else
          out.push_back(s);
        prev_match = s.match;
      }
      break;
    }
    case SplitBehavior::MergedWithNext: {
      bool next_match = false;
      for (size_t i = spans.size(); i-- > 0;) {
        const auto& s = spans[i];
        if (s.match && !next_match && !out.empty())
          out.back().b = s.b;
        else
          out.push_back(s);
        next_match = s.match;
      }
      std::reverse(out.begin(), out.end());
      break;
    }
    case SplitBehavior::Contiguous: {
      bool prev_match = false;
      for (const auto& s : spans) {
        if (s.match && prev_match)
          out.back().e = s.e;
        else
          out.push_back(s);
        prev_match = s.match;
      }
      break;
    }
  }
  return out;
}

struct Piece {
  std::string s;
  bool at_start;  // begins at offset 0 of the input text (Metaspace's prepend_scheme "first")
};

enum class Prepend { Always, First, Never };

// ---------------------------------------------------------------- pipeline steps

struct NormStep {
  enum Kind { NFC, NFD, NFKC, NFKD, Lowercase, StripAccents, Strip, Prepend, Replace } kind;
  std::string a;  // Prepend: the text; Replace: the content
  Pattern pattern;
  bool left = false, right = false;
};

struct PreStep {
  enum Kind { Split, ByteLevel, Metaspace, Whitespace, WhitespaceSplit, Digits } kind;
  RegexPtr regex;
  SplitBehavior behavior = SplitBehavior::Isolated;
  bool invert = false;
  bool add_prefix_space = false, use_regex = false, split = true;
  std::string replacement;
  Prepend scheme = Prepend::Always;
};

struct DecStep {
  enum Kind { ByteLevel, ByteFallback, Fuse, Strip, Replace, Metaspace } kind;
  std::string a;  // Strip: the content character; Replace: the content; Metaspace: the replacement
  Pattern pattern;
  size_t start = 0, stop = 0;
  Prepend scheme = Prepend::Always;
};

struct Added {
  std::string content;
  int id;
  bool special, normalized, lstrip, rstrip, single_word;
};

struct Seg {
  bool token;
  int id;
  size_t b, e;
};

std::string type_of(const json& o, const std::string& src, const std::string& path) {
  if (!o.is_object()) fail(src, ": field ", path, ": expected an object");
  auto it = o.find("type");
  if (it == o.end() || !it->is_string()) fail(src, ": field ", path, ".type is missing or not a string");
  return it->get<std::string>();
}

std::string str_field(const json& o, const char* key, const std::string& dflt, const std::string& src,
                      const std::string& path) {
  auto it = o.find(key);
  if (it == o.end() || it->is_null()) return dflt;
  if (!it->is_string()) fail(src, ": field ", path, ".", key, ": expected a string");
  return it->get<std::string>();
}

bool bool_field(const json& o, const char* key, bool dflt, const std::string& src, const std::string& path) {
  auto it = o.find(key);
  if (it == o.end() || it->is_null()) return dflt;
  if (!it->is_boolean()) fail(src, ": field ", path, ".", key, ": expected true or false");
  return it->get<bool>();
}

size_t count_field(const json& o, const char* key, const std::string& src, const std::string& path) {
  auto it = o.find(key);
  if (it == o.end() || it->is_null()) return 0;
  if (!it->is_number_unsigned() || it->get<uint64_t>() > 1000000) fail(src, ": field ", path, ".", key, ": expected a small count");
  return size_t(it->get<uint64_t>());
}

Pattern pattern_field(const json& o, const std::string& src, const std::string& path) {
  auto it = o.find("pattern");
  if (it == o.end() || !it->is_object()) fail(src, ": field ", path, ".pattern: expected {\"String\": ...} or {\"Regex\": ...}");
  Pattern p;
  if (auto s = it->find("String"); s != it->end() && s->is_string()) {
    p.literal = s->get<std::string>();
  } else if (auto r = it->find("Regex"); r != it->end() && r->is_string()) {
    p.regex = compile_regex(r->get<std::string>(), false, src + ": field " + path + ".pattern.Regex");
  } else {
    fail(src, ": field ", path, ".pattern: expected {\"String\": ...} or {\"Regex\": ...}");
  }
  return p;
}

Prepend scheme_field(const json& o, const std::string& src, const std::string& path) {
  if (o.contains("prepend_scheme")) {
    std::string s = str_field(o, "prepend_scheme", "always", src, path);
    if (s == "always") return Prepend::Always;
    if (s == "first") return Prepend::First;
    if (s == "never") return Prepend::Never;
    fail(src, ": field ", path, ".prepend_scheme: expected always, first or never, found '", s, "'");
  }
  return bool_field(o, "add_prefix_space", true, src, path) ? Prepend::Always : Prepend::Never;
}

std::string char_field(const json& o, const char* key, const std::string& dflt, const std::string& src,
                       const std::string& path) {
  std::string s = str_field(o, key, dflt, src, path);
  size_t i = 0;
  int cp;
  if (!text::next_cp(s, i, &cp) || i != s.size()) fail(src, ": field ", path, ".", key, ": expected one character, found '", s, "'");
  return s;
}

}  // namespace

// ---------------------------------------------------------------- the tokenizer's state

struct Tokenizer::Impl {
  std::string src;
  // model
  std::unordered_map<std::string, int> vocab;     // model token string -> id
  std::vector<std::string> id_to_token;           // model string, or an added token's content
  std::vector<uint8_t> has_token, special;
  std::unordered_map<uint64_t, std::pair<int, int>> merges;  // (left, right) -> (rank, merged id)
  bool byte_fallback = false, fuse_unk = false, ignore_merges = false;
  int unk = -1;
  int byte_token[256];
  // pipeline
  std::vector<Added> added;                        // longest content first
  std::vector<NormStep> normalizers;
  std::vector<PreStep> pre_tokenizers;
  std::vector<DecStep> decoders;
  bool has_decoder = false, byte_level = false;
  std::vector<int> prefix_ids, suffix_ids;         // post-processor
  // per-word BPE cache
  mutable std::mutex cache_mu;
  mutable std::unordered_map<std::string, std::vector<int>> cache;

  void parse_normalizer(const json& n, const std::string& path);
  void parse_pre_tokenizer(const json& p, const std::string& path);
  void parse_decoder(const json& d, const std::string& path);
  void parse_post_processor(const json& p, const std::string& path);
  int id_of_special(const std::string& content, const std::string& path) const;

  std::string normalize(std::string s) const;
  std::vector<Piece> pre_tokenize(const std::string& s, bool at_start) const;
  void bpe(const std::string& word, std::vector<int>* out) const;
  void bpe_uncached(const std::string& word, std::vector<int>* out) const;
  std::vector<Seg> split_added(const std::string& s, bool normalized_pass, bool parse_special) const;
  std::string decode(const std::vector<int>& ids, bool skip, bool* incomplete) const;
};

void Tokenizer::Impl::parse_normalizer(const json& n, const std::string& path) {
  if (n.is_null()) return;
  const std::string t = type_of(n, src, path);
  NormStep s{};
  if (t == "Sequence") {
    auto it = n.find("normalizers");
    if (it == n.end() || !it->is_array()) fail(src, ": field ", path, ".normalizers: expected an array");
    for (size_t i = 0; i < it->size(); ++i) parse_normalizer((*it)[i], path + ".normalizers[" + std::to_string(i) + "]");
    return;
  } else if (t == "NFC") {
    s.kind = NormStep::NFC;
  } else if (t == "NFD") {
    s.kind = NormStep::NFD;
  } else if (t == "NFKC") {
    s.kind = NormStep::NFKC;
  } else if (t == "NFKD") {
    s.kind = NormStep::NFKD;
  } else if (t == "Lowercase") {
    s.kind = NormStep::Lowercase;
  } else if (t == "StripAccents") {
    s.kind = NormStep::StripAccents;
  } else if (t == "Strip") {
    s.kind = NormStep::Strip;
    s.left = bool_field(n, "strip_left", true, src, path);
    s.right = bool_field(n, "strip_right", true, src, path);
  } else if (t == "Prepend") {
    s.kind = NormStep::Prepend;
    s.a = str_field(n, "prepend", "", src, path);
  } else if (t == "Replace") {
    s.kind = NormStep::Replace;
    s.pattern = pattern_field(n, src, path);
    s.a = str_field(n, "content", "", src, path);
  } else {
    fail(src, ": field ", path, ".type: unsupported normalizer '", t,
         "' (supported: NFC, NFD, NFKC, NFKD, Lowercase, StripAccents, Strip, Prepend, Replace, Sequence)");
  }
  normalizers.push_back(std::move(s));
}

void Tokenizer::Impl::parse_pre_tokenizer(const json& p, const std::string& path) {
  if (p.is_null()) return;
  const std::string t = type_of(p, src, path);
  PreStep s{};
  if (t == "Sequence") {
    auto it = p.find("pretokenizers");
    if (it == p.end() || !it->is_array()) fail(src, ": field ", path, ".pretokenizers: expected an array");
    for (size_t i = 0; i < it->size(); ++i) parse_pre_tokenizer((*it)[i], path + ".pretokenizers[" + std::to_string(i) + "]");
    return;
  } else if (t == "Split") {
    s.kind = PreStep::Split;
    Pattern pat = pattern_field(p, src, path);
    s.regex = pat.regex ? pat.regex : compile_regex(pat.literal, true, src + ": field " + path + ".pattern.String");
    const std::string b = str_field(p, "behavior", "Isolated", src, path);
    if (b == "Removed") s.behavior = SplitBehavior::Removed;
    else if (b == "Isolated") s.behavior = SplitBehavior::Isolated;
    else if (b == "MergedWithPrevious") s.behavior = SplitBehavior::MergedWithPrevious;
    else if (b == "MergedWithNext") s.behavior = SplitBehavior::MergedWithNext;
    else if (b == "Contiguous") s.behavior = SplitBehavior::Contiguous;
    else fail(src, ": field ", path, ".behavior: unsupported split behavior '", b, "'");
    s.invert = bool_field(p, "invert", false, src, path);
  } else if (t == "ByteLevel") {
    s.kind = PreStep::ByteLevel;
    s.add_prefix_space = bool_field(p, "add_prefix_space", true, src, path);
    s.use_regex = bool_field(p, "use_regex", true, src, path);
    if (s.use_regex) s.regex = compile_regex(kGpt2Pattern, false, src + ": field " + path);
    byte_level = true;
  } else if (t == "Metaspace") {
    s.kind = PreStep::Metaspace;
    s.replacement = char_field(p, "replacement", "\u2581", src, path);
    s.scheme = scheme_field(p, src, path);
    s.split = bool_field(p, "split", true, src, path);
    s.regex = compile_regex(s.replacement, true, src + ": field " + path);
  } else if (t == "Whitespace") {
    s.kind = PreStep::Whitespace;
    s.regex = compile_regex(R"(\w+|[^\w\s]+)", false, src + ": field " + path);
  } else if (t == "WhitespaceSplit") {
    s.kind = PreStep::WhitespaceSplit;
    s.regex = compile_regex(R"(\s+)", false, src + ": field " + path);
  } else if (t == "Digits") {
    s.kind = PreStep::Digits;
    s.regex = compile_regex(bool_field(p, "individual_digits", false, src, path) ? R"(\p{N})" : R"(\p{N}+)", false,
                            src + ": field " + path);
  } else {
    fail(src, ": field ", path, ".type: unsupported pre-tokenizer '", t,
         "' (supported: Split, ByteLevel, Metaspace, Digits, Whitespace, WhitespaceSplit, Sequence)");
  }
  pre_tokenizers.push_back(std::move(s));
}

void Tokenizer::Impl::parse_decoder(const json& d, const std::string& path) {
  if (d.is_null()) return;
  has_decoder = true;
  const std::string t = type_of(d, src, path);
  DecStep s{};
  if (t == "Sequence") {
    auto it = d.find("decoders");
    if (it == d.end() || !it->is_array()) fail(src, ": field ", path, ".decoders: expected an array");
    for (size_t i = 0; i < it->size(); ++i) parse_decoder((*it)[i], path + ".decoders[" + std::to_string(i) + "]");
    return;
  } else if (t == "ByteLevel") {
    s.kind = DecStep::ByteLevel;
  } else if (t == "ByteFallback") {
    s.kind = DecStep::ByteFallback;
  } else if (t == "Fuse") {
    s.kind = DecStep::Fuse;
  } else if (t == "Strip") {
    s.kind = DecStep::Strip;
    s.a = char_field(d, "content", " ", src, path);
    s.start = count_field(d, "start", src, path);
    s.stop = count_field(d, "stop", src, path);
  } else if (t == "Replace") {
    s.kind = DecStep::Replace;
    s.pattern = pattern_field(d, src, path);
    s.a = str_field(d, "content", "", src, path);
  } else if (t == "Metaspace") {
    s.kind = DecStep::Metaspace;
    s.a = char_field(d, "replacement", "\u2581", src, path);
    s.scheme = scheme_field(d, src, path);
  } else {
    fail(src, ": field ", path, ".type: unsupported decoder '", t,
         "' (supported: ByteLevel, ByteFallback, Fuse, Strip, Replace, Metaspace, Sequence)");
  }
  decoders.push_back(std::move(s));
}

int Tokenizer::Impl::id_of_special(const std::string& content, const std::string& path) const {
  for (const auto& a : added)
    if (a.content == content) return a.id;
  auto it = vocab.find(content);
  if (it == vocab.end()) fail(src, ": field ", path, ": token '", content, "' is not in the vocabulary");
  return it->second;
}

void Tokenizer::Impl::parse_post_processor(const json& p, const std::string& path) {
  if (p.is_null()) return;
  const std::string t = type_of(p, src, path);
  if (t == "Sequence") {
    auto it = p.find("processors");
    if (it == p.end() || !it->is_array()) fail(src, ": field ", path, ".processors: expected an array");
    for (size_t i = 0; i < it->size(); ++i) parse_post_processor((*it)[i], path + ".processors[" + std::to_string(i) + "]");
  } else if (t == "ByteLevel") {
    // offsets only
  } else if (t == "BertProcessing" || t == "RobertaProcessing") {
    for (const char* k : {"cls", "sep"}) {
      auto it = p.find(k);
      if (it == p.end() || !it->is_array() || it->size() != 2 || !(*it)[1].is_number_integer())
        fail(src, ": field ", path, ".", k, ": expected [token, id]");
      (k[0] == 'c' ? prefix_ids : suffix_ids).push_back((*it)[1].get<int>());
    }
  } else if (t == "TemplateProcessing") {
    auto single = p.find("single");
    if (single == p.end() || !single->is_array()) fail(src, ": field ", path, ".single: expected an array");
    auto specials = p.find("special_tokens");
    bool after = false;
    for (size_t i = 0; i < single->size(); ++i) {
      const json& item = (*single)[i];
      const std::string ip = path + ".single[" + std::to_string(i) + "]";
      if (item.is_object() && item.contains("Sequence")) {
        after = true;
      } else if (item.is_object() && item.contains("SpecialToken") && item["SpecialToken"].is_object()) {
        const std::string name = str_field(item["SpecialToken"], "id", "", src, ip + ".SpecialToken");
        std::vector<int> ids;
        if (specials != p.end() && specials->is_object() && specials->contains(name)) {
          const json& st = (*specials)[name];
          if (!st.is_object() || !st.contains("ids") || !st["ids"].is_array())
            fail(src, ": field ", path, ".special_tokens[", name, "].ids: expected an array of ids");
          for (const auto& v : st["ids"]) {
            if (!v.is_number_integer()) fail(src, ": field ", path, ".special_tokens[", name, "].ids: expected integers");
            ids.push_back(v.get<int>());
          }
        } else {
          ids.push_back(id_of_special(name, ip));
        }
        auto& dst = after ? suffix_ids : prefix_ids;
        dst.insert(dst.end(), ids.begin(), ids.end());
      } else {
        fail(src, ": field ", ip, ": expected {\"SpecialToken\": ...} or {\"Sequence\": ...}");
      }
    }
  } else {
    fail(src, ": field ", path, ".type: unsupported post-processor '", t,
         "' (supported: TemplateProcessing, ByteLevel, BertProcessing, RobertaProcessing, Sequence)");
  }
}

// ---------------------------------------------------------------- loading

Tokenizer::Tokenizer() : impl_(std::make_unique<Impl>()) {}
Tokenizer::~Tokenizer() = default;

std::unique_ptr<Tokenizer> Tokenizer::load(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  std::string p = fs::is_directory(path, ec) ? (fs::path(path) / "tokenizer.json").string() : path;
  std::ifstream f(p, std::ios::binary);
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
  auto t = std::unique_ptr<Tokenizer>(new Tokenizer());
  Impl& I = *t->impl_;
  I.src = src;
  try {
    if (!j.is_object() || !j.contains("model") || !j["model"].is_object()) fail(src, ": field model is missing");
    const json& m = j["model"];
    const std::string type = str_field(m, "type", "BPE", src, "model");
    if (type != "BPE") fail(src, ": field model.type: unsupported model '", type, "' (supported: BPE)");
    if (!m.contains("vocab") || !m["vocab"].is_object()) fail(src, ": field model.vocab is missing or not an object");
    for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"})
      if (!str_field(m, k, "", src, "model").empty()) fail(src, ": field model.", k, ": not supported (only empty or null)");
    I.byte_fallback = bool_field(m, "byte_fallback", false, src, "model");
    I.fuse_unk = bool_field(m, "fuse_unk", false, src, "model");
    I.ignore_merges = bool_field(m, "ignore_merges", false, src, "model");

    const json& vocab = m["vocab"];
    const json* added = j.contains("added_tokens") && !j["added_tokens"].is_null() ? &j["added_tokens"] : nullptr;
    if (added && !added->is_array()) fail(src, ": field added_tokens: expected an array");
    const int64_t max_id = 2 * int64_t(vocab.size() + (added ? added->size() : 0)) + 1024;
    auto set_id = [&](int64_t id, const std::string& tok, const std::string& where) {
      if (id < 0 || id > max_id) fail(src, ": field ", where, ": token id ", id, " is out of range");
      if (size_t(id) >= I.id_to_token.size()) {
        I.id_to_token.resize(size_t(id) + 1);
        I.has_token.resize(size_t(id) + 1, 0);
        I.special.resize(size_t(id) + 1, 0);
      }
      I.id_to_token[size_t(id)] = tok;
      I.has_token[size_t(id)] = 1;
    };
    for (auto it = vocab.begin(); it != vocab.end(); ++it) {
      if (!it.value().is_number_integer()) fail(src, ": field model.vocab[", it.key(), "]: expected an integer id");
      if (!text::is_valid_utf8(it.key())) fail(src, ": field model.vocab: a token is not valid UTF-8");
      const int64_t id = it.value().get<int64_t>();
      set_id(id, it.key(), "model.vocab[" + it.key() + "]");
      I.vocab[it.key()] = int(id);
    }
    if (added)
      for (size_t i = 0; i < added->size(); ++i) {
        const json& a = (*added)[i];
        const std::string ap = "added_tokens[" + std::to_string(i) + "]";
        if (!a.is_object() || !a.contains("content") || !a["content"].is_string() || !a.contains("id") ||
            !a["id"].is_number_integer())
          fail(src, ": field ", ap, ": expected an object with content (a string) and id (an integer)");
        Added x;
        x.content = a["content"].get<std::string>();
        const int64_t id = a["id"].get<int64_t>();
        set_id(id, x.content, ap);
        x.id = int(id);
        x.special = bool_field(a, "special", false, src, ap);
        x.normalized = bool_field(a, "normalized", !x.special, src, ap);
        x.lstrip = bool_field(a, "lstrip", false, src, ap);
        x.rstrip = bool_field(a, "rstrip", false, src, ap);
        x.single_word = bool_field(a, "single_word", false, src, ap);
        I.special[size_t(id)] = x.special;
        if (!x.content.empty() && text::is_valid_utf8(x.content)) I.added.push_back(x);
      }
    std::stable_sort(I.added.begin(), I.added.end(),
                     [](const Added& x, const Added& y) { return x.content.size() > y.content.size(); });

    const std::string unk = str_field(m, "unk_token", "", src, "model");
    if (!unk.empty()) {
      auto it = I.vocab.find(unk);
      if (it == I.vocab.end()) fail(src, ": field model.unk_token: '", unk, "' is not in model.vocab");
      I.unk = it->second;
    }
    for (int b = 0; b < 256; ++b) {
      char name[8];
      std::snprintf(name, sizeof name, "<0x%02X>", b);
      auto it = I.vocab.find(name);
      I.byte_token[b] = it == I.vocab.end() ? -1 : it->second;
    }

    if (m.contains("merges") && !m["merges"].is_null()) {
      const json& merges = m["merges"];
      if (!merges.is_array()) fail(src, ": field model.merges: expected an array");
      int rank = 0;
      for (const auto& mg : merges) {
        std::string a, b;
        if (mg.is_string()) {
          const std::string s = mg.get<std::string>();
          auto sp = s.find(' ');
          if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
            fail(src, ": field model.merges[", rank, "]: expected \"a b\", found '", s, "'");
          a = s.substr(0, sp);
          b = s.substr(sp + 1);
        } else if (mg.is_array() && mg.size() == 2 && mg[0].is_string() && mg[1].is_string()) {
          a = mg[0].get<std::string>();
          b = mg[1].get<std::string>();
        } else {
          fail(src, ": field model.merges[", rank, "]: expected \"a b\" or [\"a\", \"b\"]");
        }
        auto ia = I.vocab.find(a), ib = I.vocab.find(b), ic = I.vocab.find(a + b);
        if (ia == I.vocab.end() || ib == I.vocab.end())
          fail(src, ": field model.merges[", rank, "]: token '", ia == I.vocab.end() ? a : b, "' is not in model.vocab");
        if (ic == I.vocab.end()) fail(src, ": field model.merges[", rank, "]: the merged token '", a + b, "' is not in model.vocab");
        const uint64_t key = (uint64_t(uint32_t(ia->second)) << 32) | uint32_t(ib->second);
        I.merges.emplace(key, std::make_pair(rank, ic->second));
        ++rank;
      }
    }

    if (j.contains("normalizer")) I.parse_normalizer(j["normalizer"], "normalizer");
    if (j.contains("pre_tokenizer")) I.parse_pre_tokenizer(j["pre_tokenizer"], "pre_tokenizer");
    if (j.contains("decoder")) I.parse_decoder(j["decoder"], "decoder");
    if (j.contains("post_processor")) I.parse_post_processor(j["post_processor"], "post_processor");
    for (const auto& d : I.decoders)
      if (d.kind == DecStep::ByteLevel) I.byte_level = true;
  } catch (const json::exception& e) {
    fail(src, ": unexpected content (", e.what(), ")");
  }
  return t;
}

// ---------------------------------------------------------------- encoding

std::string Tokenizer::Impl::normalize(std::string s) const {
  for (const auto& n : normalizers) {
    switch (n.kind) {
      case NormStep::NFC: s = text::normalize(s, text::NormalForm::NFC); break;
      case NormStep::NFD: s = text::normalize(s, text::NormalForm::NFD); break;
      case NormStep::NFKC: s = text::normalize(s, text::NormalForm::NFKC); break;
      case NormStep::NFKD: s = text::normalize(s, text::NormalForm::NFKD); break;
      case NormStep::Lowercase: s = text::lowercase(s); break;
      case NormStep::StripAccents: s = text::strip_accents(s); break;
      case NormStep::Prepend:
        if (!s.empty()) s = n.a + s;
        break;
      case NormStep::Replace: s = n.pattern.apply(s, n.a); break;
      case NormStep::Strip: {
        size_t b = 0, e = s.size();
        if (n.left)
          for (size_t i = 0; i < s.size();) {
            int cp;
            if (!text::next_cp(s, i, &cp) || !text::is_whitespace(cp)) break;
            b = i;
          }
        if (n.right)
          while (e > b) {
            size_t k = e - 1;
            while (k > b && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80) --k;
            size_t i = k;
            int cp;
            if (!text::next_cp(s, i, &cp) || !text::is_whitespace(cp)) break;
            e = k;
          }
        s = s.substr(b, e - b);
        break;
      }
    }
  }
  return s;
}

std::vector<Piece> Tokenizer::Impl::pre_tokenize(const std::string& s, bool at_start) const {
  std::vector<Piece> pieces{{s, at_start}};
  for (const auto& p : pre_tokenizers) {
    std::vector<Piece> next;
    auto split_into = [&](const Piece& pc, const Regex& re, bool invert, SplitBehavior how) {
      for (const Span& sp : split_spans(pc.s.size(), find_all(re, pc.s), invert, how))
        next.push_back({pc.s.substr(sp.b, sp.e - sp.b), pc.at_start && sp.b == 0});
    };
    for (Piece& pc : pieces) {
      switch (p.kind) {
        case PreStep::Split: split_into(pc, *p.regex, p.invert, p.behavior); break;
        case PreStep::Whitespace: split_into(pc, *p.regex, true, SplitBehavior::Removed); break;
        case PreStep::WhitespaceSplit: split_into(pc, *p.regex, false, SplitBehavior::Removed); break;
        case PreStep::Digits: split_into(pc, *p.regex, false, SplitBehavior::Isolated); break;
        case PreStep::Metaspace: {
          Piece q{replace_all(pc.s, " ", p.replacement), pc.at_start};
          const bool prepend = p.scheme == Prepend::Always || (p.scheme == Prepend::First && pc.at_start);
          if (prepend && q.s.compare(0, p.replacement.size(), p.replacement) != 0) q.s = p.replacement + q.s;
          if (p.split)
            split_into(q, *p.regex, false, SplitBehavior::MergedWithNext);
          else
            next.push_back(std::move(q));
          break;
        }
        case PreStep::ByteLevel: {
          if (p.add_prefix_space && pc.s.compare(0, 1, " ") != 0) pc.s = " " + pc.s;
          std::vector<Piece> parts;
          if (p.use_regex) {
            for (const Span& sp : split_spans(pc.s.size(), find_all(*p.regex, pc.s), false, SplitBehavior::Isolated))
              parts.push_back({pc.s.substr(sp.b, sp.e - sp.b), pc.at_start && sp.b == 0});
          } else {
            parts.push_back(std::move(pc));
          }
          const auto& ab = alphabet();
          for (const Piece& q : parts) {
            std::string mapped;
            mapped.reserve(q.s.size() * 2);
            for (char c : q.s) mapped += ab.of_byte[static_cast<unsigned char>(c)];
            next.push_back({std::move(mapped), q.at_start});
          }
          break;
        }
      }
    }
    pieces.swap(next);
  }
  return pieces;
}

void Tokenizer::Impl::bpe(const std::string& word, std::vector<int>* out) const {
  if (word.empty()) return;
  if (ignore_merges) {
    auto it = vocab.find(word);
    if (it != vocab.end()) {
      out->push_back(it->second);
      return;
    }
  }
  constexpr size_t kMaxCachedWord = 256, kMaxCacheEntries = 1 << 16;
  if (word.size() > kMaxCachedWord) return bpe_uncached(word, out);
  {
    std::lock_guard<std::mutex> lock(cache_mu);
    auto it = cache.find(word);
    if (it != cache.end()) {
      out->insert(out->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int> ids;
  bpe_uncached(word, &ids);
  out->insert(out->end(), ids.begin(), ids.end());
  std::lock_guard<std::mutex> lock(cache_mu);
  if (cache.size() >= kMaxCacheEntries) cache.clear();
  cache.emplace(word, std::move(ids));
}

// Symbols start as the word's characters (or their <0xNN> byte tokens, or <unk>); then the
// lowest-ranked adjacent pair is merged, leftmost first, until no pair has a merge: a min-heap
// of candidate pairs over a linked list of symbols, O(n log n).
void Tokenizer::Impl::bpe_uncached(const std::string& word, std::vector<int>* out) const {
  struct Sym {
    int id, prev, next;
    bool alive;
  };
  std::vector<Sym> sy;
  sy.reserve(word.size());
  bool last_unk = false;
  for (size_t i = 0; i < word.size();) {
    size_t b = i;
    int cp;
    if (!text::next_cp(word, i, &cp)) i = b + 1;  // cannot happen: words are valid UTF-8
    const std::string ch = word.substr(b, i - b);
    auto it = vocab.find(ch);
    if (it != vocab.end()) {
      sy.push_back({it->second, 0, 0, true});
      last_unk = false;
      continue;
    }
    if (byte_fallback) {
      bool all = true;
      for (char c : ch) all = all && byte_token[static_cast<unsigned char>(c)] >= 0;
      if (all) {
        for (char c : ch) sy.push_back({byte_token[static_cast<unsigned char>(c)], 0, 0, true});
        last_unk = false;
        continue;
      }
    }
    if (unk >= 0) {
      if (!(fuse_unk && last_unk)) sy.push_back({unk, 0, 0, true});
      last_unk = true;
    }
  }
  const int n = int(sy.size());
  for (int i = 0; i < n; ++i) {
    sy[size_t(i)].prev = i - 1;
    sy[size_t(i)].next = i + 1 < n ? i + 1 : -1;
  }
  struct Cand {
    int rank, pos, merged;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  auto lookup = [&](int l, int r) -> const std::pair<int, int>* {
    auto it = merges.find((uint64_t(uint32_t(l)) << 32) | uint32_t(r));
    return it == merges.end() ? nullptr : &it->second;
  };
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
  auto consider = [&](int pos) {
    if (pos < 0) return;
    int nx = sy[size_t(pos)].next;
    if (nx < 0) return;
    if (auto m = lookup(sy[size_t(pos)].id, sy[size_t(nx)].id)) heap.push({m->first, pos, m->second});
  };
  for (int i = 0; i + 1 < n; ++i) consider(i);
  while (!heap.empty()) {
    Cand c = heap.top();
    heap.pop();
    Sym& l = sy[size_t(c.pos)];
    if (!l.alive || l.next < 0) continue;
    Sym& r = sy[size_t(l.next)];
    auto m = lookup(l.id, r.id);
    if (!m || m->second != c.merged || m->first != c.rank) continue;
    l.id = c.merged;
    r.alive = false;
    l.next = r.next;
    if (r.next >= 0) sy[size_t(r.next)].prev = c.pos;
    consider(l.prev);
    consider(c.pos);
  }
  for (int i = n > 0 ? 0 : -1; i >= 0; i = sy[size_t(i)].next) out->push_back(sy[size_t(i)].id);
}

// The text split at added tokens (leftmost, longest first): in the raw text the tokens with
// normalized=false, in normalized text those with normalized=true.
std::vector<Seg> Tokenizer::Impl::split_added(const std::string& s, bool normalized_pass, bool parse_special) const {
  std::vector<const Added*> toks;
  for (const auto& a : added)
    if (a.normalized == normalized_pass && (parse_special || !a.special)) toks.push_back(&a);
  std::vector<Seg> out;
  if (toks.empty()) {
    if (!s.empty()) out.push_back({false, -1, 0, s.size()});
    return out;
  }
  std::vector<size_t> next(toks.size(), 0);
  std::vector<bool> fresh(toks.size(), false);
  auto cp_before = [&](size_t i) {
    size_t k = i - 1;
    while (k > 0 && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80) --k;
    size_t j = k;
    int cp = 0;
    text::next_cp(s, j, &cp);
    return std::make_pair(k, cp);
  };
  auto cp_at = [&](size_t i) {
    int cp = 0;
    size_t j = i;
    text::next_cp(s, j, &cp);
    return std::make_pair(j, cp);
  };
  size_t pos = 0, search = 0;
  while (pos < s.size()) {
    size_t best = std::string::npos;
    int which = -1;
    for (size_t k = 0; k < toks.size(); ++k) {
      if (!fresh[k] || next[k] < search) {
        next[k] = s.find(toks[k]->content, search);
        fresh[k] = true;
      }
      if (next[k] < best) {
        best = next[k];
        which = int(k);
      }
    }
    if (which < 0) break;
    const Added& a = *toks[size_t(which)];
    size_t b = best, e = best + a.content.size();
    if (a.single_word) {
      bool ok = (b == 0 || !text::is_word_char(cp_before(b).second)) && (e >= s.size() || !text::is_word_char(cp_at(e).second));
      if (!ok) {  // look for this token again further on
        next[size_t(which)] = s.find(a.content, best + 1);
        continue;
      }
    }
    if (a.lstrip)
      while (b > pos) {
        auto [k, cp] = cp_before(b);
        if (!text::is_whitespace(cp)) break;
        b = k;
      }
    if (a.rstrip)
      while (e < s.size()) {
        auto [j, cp] = cp_at(e);
        if (!text::is_whitespace(cp)) break;
        e = j;
      }
    if (b > pos) out.push_back({false, -1, pos, b});
    out.push_back({true, a.id, b, e});
    pos = search = e;
  }
  if (pos < s.size()) out.push_back({false, -1, pos, s.size()});
  return out;
}

std::vector<int> Tokenizer::encode(const std::string& text_in, bool parse_special, bool add_special_tokens) const {
  const Impl& I = *impl_;
  const std::string text = text::is_valid_utf8(text_in) ? text_in : text::to_valid_utf8(text_in);
  std::vector<int> out;
  if (add_special_tokens) out = I.prefix_ids;
  for (const Seg& raw : I.split_added(text, false, parse_special)) {
    if (raw.token) {
      out.push_back(raw.id);
      continue;
    }
    const std::string norm = I.normalize(text.substr(raw.b, raw.e - raw.b));
    for (const Seg& seg : I.split_added(norm, true, parse_special)) {
      if (seg.token) {
        out.push_back(seg.id);
        continue;
      }
      for (const Piece& p : I.pre_tokenize(norm.substr(seg.b, seg.e - seg.b), raw.b == 0 && seg.b == 0)) I.bpe(p.s, &out);
    }
  }
  if (add_special_tokens) out.insert(out.end(), I.suffix_ids.begin(), I.suffix_ids.end());
  return out;
}

std::string Tokenizer::normalize(const std::string& text) const {
  return impl_->normalize(text::is_valid_utf8(text) ? text : text::to_valid_utf8(text));
}

// ---------------------------------------------------------------- decoding

namespace {

// A run of byte tokens: its text if the bytes are valid UTF-8, else one U+FFFD per byte.
void flush_bytes(std::string* run, bool at_end, std::vector<std::string>* out, bool* incomplete) {
  if (run->empty()) return;
  if (text::is_valid_utf8(*run)) {
    out->push_back(*run);
  } else {
    if (at_end) {
      size_t tail = text::truncated_tail(*run);
      if (tail && text::is_valid_utf8(std::string_view(*run).substr(0, run->size() - tail))) *incomplete = true;
    }
    for (size_t i = 0; i < run->size(); ++i) out->push_back(kReplacementChar);
  }
  run->clear();
}

int byte_token_value(const std::string& t) {
  if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
  auto hex = [](char c) { return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1; };
  int h = hex(t[3]), l = hex(t[4]);
  return h < 0 || l < 0 ? -1 : h * 16 + l;
}

// Removes up to `start` leading and `stop` trailing copies of the character c.
std::string strip_chars(const std::string& t, const std::string& c, size_t start, size_t stop) {
  size_t b = 0, e = t.size();
  for (size_t k = 0; k < start && t.compare(b, c.size(), c) == 0 && b + c.size() <= e; ++k) b += c.size();
  for (size_t k = 0; k < stop && e >= b + c.size() && t.compare(e - c.size(), c.size(), c) == 0; ++k) e -= c.size();
  return t.substr(b, e - b);
}

}  // namespace

std::string Tokenizer::Impl::decode(const std::vector<int>& ids, bool skip, bool* incomplete) const {
  *incomplete = false;
  std::vector<std::string> toks;
  toks.reserve(ids.size());
  for (int id : ids) {
    if (id < 0 || size_t(id) >= has_token.size() || !has_token[size_t(id)]) continue;
    if (skip && special[size_t(id)]) continue;
    toks.push_back(id_to_token[size_t(id)]);
  }
  if (!has_decoder) {
    std::string s;
    for (size_t i = 0; i < toks.size(); ++i) s += (i ? " " : "") + toks[i];
    return s;
  }
  const auto& ab = alphabet();
  for (const DecStep& d : decoders) {
    switch (d.kind) {
      case DecStep::ByteLevel: {
        std::string bytes;
        for (const std::string& t : toks) {
          std::string b;
          bool ok = true;
          for (size_t i = 0; i < t.size() && ok;) {
            int cp;
            ok = text::next_cp(t, i, &cp) && cp < int(ab.byte_of_cp.size()) && ab.byte_of_cp[size_t(cp)] >= 0;
            if (ok) b.push_back(char(ab.byte_of_cp[size_t(cp)]));
          }
          bytes += ok ? b : t;
        }
        *incomplete = text::truncated_tail(bytes) > 0;
        toks.assign(1, text::to_valid_utf8(bytes));
        break;
      }
      case DecStep::ByteFallback: {
        std::vector<std::string> next;
        std::string run;
        for (const std::string& t : toks) {
          int v = byte_token_value(t);
          if (v >= 0) {
            run.push_back(char(v));
          } else {
            flush_bytes(&run, false, &next, incomplete);
            next.push_back(t);
          }
        }
        flush_bytes(&run, true, &next, incomplete);
        toks.swap(next);
        break;
      }
      case DecStep::Fuse: {
        std::string all;
        for (const std::string& t : toks) all += t;
        toks.assign(1, all);
        break;
      }
      case DecStep::Strip:
        for (std::string& t : toks) t = strip_chars(t, d.a, d.start, d.stop);
        break;
      case DecStep::Replace:
        for (std::string& t : toks) t = d.pattern.apply(t, d.a);
        break;
      case DecStep::Metaspace:
        for (size_t i = 0; i < toks.size(); ++i)
          toks[i] = replace_all(toks[i], d.a, i == 0 && d.scheme != Prepend::Never ? "" : " ");
        break;
    }
  }
  std::string s;
  for (const std::string& t : toks) s += t;
  return text::is_valid_utf8(s) ? s : text::to_valid_utf8(s);
}

std::string Tokenizer::decode(const std::vector<int>& ids, bool skip_special) const {
  bool inc;
  return impl_->decode(ids, skip_special, &inc);
}

std::string Tokenizer::decode_window(const std::vector<int>& ids, bool skip_special, bool* incomplete) const {
  return impl_->decode(ids, skip_special, incomplete);
}

std::string Tokenizer::token_bytes(int id) const {
  const Impl& I = *impl_;
  if (id < 0 || size_t(id) >= I.has_token.size())
    fail(I.src, ": token id ", id, " is outside the vocabulary of ", I.has_token.size());
  std::string t = I.id_to_token[size_t(id)];
  if (I.special[size_t(id)]) return t;
  const auto& ab = alphabet();
  for (const DecStep& d : I.decoders) {
    if (d.kind == DecStep::ByteLevel) {
      std::string b;
      bool ok = true;
      for (size_t i = 0; i < t.size() && ok;) {
        int cp;
        ok = text::next_cp(t, i, &cp) && cp < int(ab.byte_of_cp.size()) && ab.byte_of_cp[size_t(cp)] >= 0;
        if (ok) b.push_back(char(ab.byte_of_cp[size_t(cp)]));
      }
      if (ok) t = b;
    } else if (d.kind == DecStep::ByteFallback) {
      int v = byte_token_value(t);
      if (v >= 0) t = std::string(1, char(v));
    } else if (d.kind == DecStep::Replace) {
      t = d.pattern.apply(t, d.a);
    } else if (d.kind == DecStep::Metaspace) {
      t = replace_all(t, d.a, " ");
    }
  }
  return t;
}

std::optional<int> Tokenizer::token_id(const std::string& token) const {
  const Impl& I = *impl_;
  for (const auto& a : I.added)
    if (a.content == token) return a.id;
  if (auto it = I.vocab.find(token); it != I.vocab.end()) return it->second;
  if (I.byte_level) {
    std::string mapped;
    for (char c : token) mapped += alphabet().of_byte[static_cast<unsigned char>(c)];
    if (auto it = I.vocab.find(mapped); it != I.vocab.end()) return it->second;
  }
  return std::nullopt;
}

bool Tokenizer::is_special(int id) const {
  return id >= 0 && size_t(id) < impl_->special.size() && impl_->special[size_t(id)];
}

int Tokenizer::vocab_size() const { return int(impl_->id_to_token.size()); }

// ---------------------------------------------------------------- streaming

// The new text is decode(ctx + pending) minus decode(ctx): the context (the ids emitted last)
// keeps what depends on the neighbours (a leading space that only the first token loses) right.
std::string StreamDecoder::emit(bool force) {
  std::vector<int> w = ctx_;
  w.insert(w.end(), pending_.begin(), pending_.end());
  bool incomplete = false;
  std::string s = t_.decode_window(w, skip_, &incomplete);
  if (incomplete && !force) return "";
  std::string out = s.compare(0, ctx_text_.size(), ctx_text_) == 0 ? s.substr(ctx_text_.size()) : t_.decode(pending_, skip_);
  ctx_.swap(pending_);
  pending_.clear();
  ctx_text_ = t_.decode(ctx_, skip_);
  return out;
}

std::string StreamDecoder::push(int id) {
  if (skip_ && t_.is_special(id)) return "";
  if (id < 0 || id >= t_.vocab_size()) return "";
  pending_.push_back(id);
  return emit(false);
}

std::string StreamDecoder::flush() { return pending_.empty() ? "" : emit(true); }

}  // namespace outro
