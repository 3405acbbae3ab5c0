// BPE tokenizers read from a Hugging Face tokenizer.json: the byte-level BPE of the Qwen2 / GPT-2 /
// LLaMA-3 families and the LLaMA-2 / SentencePiece-style BPE with byte fallback. The pipeline is the
// file's own: added tokens -> normalizer -> pre-tokenizer -> BPE model -> (post-processor), and
// decoding through its decoder chain. Streaming decode never emits part of a UTF-8 character.
//
// Supported parts (anything else is refused with an error naming the file and the field):
//   normalizer     NFC NFD NFKC NFKD Lowercase StripAccents Strip Prepend Replace Sequence
//   pre_tokenizer  Split ByteLevel Metaspace Digits Whitespace WhitespaceSplit Sequence
//   model          BPE (merges as "a b" strings or ["a","b"] pairs, byte_fallback, unk_token,
//                  fuse_unk, ignore_merges; dropout is ignored: encoding is deterministic)
//   decoder        ByteLevel ByteFallback Fuse Strip Replace Metaspace Sequence
//   post_processor TemplateProcessing ByteLevel BertProcessing RobertaProcessing Sequence
#pragma once
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace outro {

class Tokenizer {
 public:
  // path: a tokenizer.json file or a folder holding one.
  static std::unique_ptr<Tokenizer> load(const std::string& path);
  static std::unique_ptr<Tokenizer> from_json(const std::string& text, const std::string& source);
  ~Tokenizer();

  // Ill-formed UTF-8 in text is read as U+FFFD. parse_special: match special added tokens in the
  // text (non-special added tokens are always matched). add_special_tokens: apply the
  // post-processor (e.g. LLaMA's leading <s>).
  std::vector<int> encode(const std::string& text, bool parse_special = true, bool add_special_tokens = false) const;
  // Always valid UTF-8 (ill-formed byte sequences become U+FFFD); ids without a token are skipped.
  std::string decode(const std::vector<int>& ids, bool skip_special = false) const;
  // The normalizer alone, applied to the whole text.
  std::string normalize(const std::string& text) const;
  // The bytes token id stands for inside a sequence (special tokens: their text).
  std::string token_bytes(int id) const;
  // The id of an added token's content, of a vocabulary entry, or of the byte-level token for these bytes.
  std::optional<int> token_id(const std::string& token) const;
  bool is_special(int id) const;
  int vocab_size() const;

  struct Impl;

 private:
  friend class StreamDecoder;
  Tokenizer();
  std::string decode_window(const std::vector<int>& ids, bool skip_special, bool* incomplete) const;
  std::unique_ptr<Impl> impl_;
};

// Push ids one at a time; returns only complete UTF-8 text, and the pieces concatenate to
// decode(all ids) (for any ids that encode() produces).
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& t, bool skip_special = false) : t_(t), skip_(skip_special) {}
  std::string push(int id);
  std::string flush();

 private:
  std::string emit(bool force);
  const Tokenizer& t_;
  bool skip_;
  std::vector<int> ctx_, pending_;  // ids already emitted (the last group), ids held back
  std::string ctx_text_;            // decode of ctx_ alone
};

}  // namespace outro
