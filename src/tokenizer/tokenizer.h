// Byte-level BPE tokenizers read from tokenizer.json (the Qwen2 family's layout), streaming decode.
#pragma once
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace outro {

class Tokenizer {
 public:
  // path: a tokenizer.json file or a folder holding one.
  static std::unique_ptr<Tokenizer> load(const std::string& path);
  static std::unique_ptr<Tokenizer> from_json(const std::string& text, const std::string& source);
  ~Tokenizer();

  std::vector<int> encode(const std::string& text, bool parse_special = true) const;
  std::string decode(const std::vector<int>& ids, bool skip_special = false) const;
  // The raw bytes token id stands for (special tokens: their text).
  std::string token_bytes(int id) const;
  std::optional<int> token_id(const std::string& token) const;
  bool is_special(int id) const;
  int vocab_size() const { return int(id_to_bytes_.size()); }

 private:
  Tokenizer() = default;
  void bpe(const std::string& piece, std::vector<int>* out) const;
  std::unordered_map<std::string, int> bytes_to_id_;      // token bytes -> id
  std::vector<std::string> id_to_bytes_;
  std::vector<bool> special_;
  std::map<std::pair<int, int>, int> merge_rank_;         // (left id, right id) -> rank
  std::vector<std::pair<std::string, int>> added_;        // added tokens, longest first
  void* regex_ = nullptr;                                 // pcre2_code*
  std::string source_;
};

// Push ids one at a time; returns only complete UTF-8 text.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& t) : t_(t) {}
  std::string push(int id);
  std::string flush();

 private:
  const Tokenizer& t_;
  std::string pending_;
};

}  // namespace outro
