// libFuzzer target: the tokenizers.
//   Input starting with '{': a tokenizer.json. It must load or throw outro::Error; when it loads,
//   encoding and decoding must not crash.
//   Otherwise the first byte picks a fixture tokenizer (tests/fixtures/tokenizer/) and the rest is
//   text, or token ids. Checked: decode(encode(text)) gives the text back (up to NFC for the
//   Qwen2-style one; "▁" reads as a space for the LLaMA-style one), every decode and every piece a
//   StreamDecoder emits is valid UTF-8, and the pieces concatenate to decode(ids).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/error.h"
#include "tokenizer/text.h"
#include "tokenizer/tokenizer.h"

namespace {

using outro::StreamDecoder;
using outro::Tokenizer;

const Tokenizer& fixture(int k) {
  static const std::unique_ptr<Tokenizer> t[3] = {
      Tokenizer::load(OUTRO_SOURCE_DIR "/tests/fixtures/tokenizer/qwen2style.tokenizer.json"),
      Tokenizer::load(OUTRO_SOURCE_DIR "/tests/fixtures/tokenizer/llamastyle.tokenizer.json"),
      Tokenizer::load(OUTRO_SOURCE_DIR "/tests/fixtures/tokenizer/metaspace.tokenizer.json"),
  };
  return *t[k];
}

void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz_tokenizer: %s\n", what);
    std::abort();
  }
}

// Decodes ids whole and streamed: valid UTF-8 everywhere; when `same`, the pieces add up to the whole.
std::string decode_both(const Tokenizer& t, const std::vector<int>& ids, bool skip, bool same) {
  std::string whole = t.decode(ids, skip);
  check(outro::text::is_valid_utf8(whole), "decode gave ill-formed UTF-8");
  StreamDecoder d(t, skip);
  std::string all;
  for (int id : ids) {
    std::string p = d.push(id);
    check(outro::text::is_valid_utf8(p), "a streamed piece is ill-formed UTF-8");
    all += p;
  }
  std::string f = d.flush();
  check(outro::text::is_valid_utf8(f), "the stream's flush is ill-formed UTF-8");
  all += f;
  if (same) check(all == whole, "the streamed pieces differ from decode(ids)");
  return whole;
}

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  for (size_t p = 0; (p = s.find(from, p)) != std::string::npos; p += to.size()) s.replace(p, from.size(), to);
  return s;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string in(reinterpret_cast<const char*>(data), size);
  if (in[0] == '{') {
    try {
      auto t = Tokenizer::from_json(in, "fuzz/tokenizer.json");
      auto ids = t->encode("Hello, 世界! 😀 e\u0301  <s> x1234\n", true, true);
      for (int id : ids) check(id >= 0 && id < t->vocab_size(), "encode gave an id outside the vocabulary");
      decode_both(*t, ids, false, false);
      std::vector<int> all;
      for (int i = 0; i < std::min(t->vocab_size(), 300); ++i) all.push_back(i);
      decode_both(*t, all, true, false);
    } catch (const outro::Error&) {
    }
    return 0;
  }
  const int mode = static_cast<unsigned char>(in[0]) % 4;
  const std::string text = in.substr(1);
  if (mode == 3) {  // token ids, two bytes each, for every fixture
    for (int k = 0; k < 3; ++k) {
      const Tokenizer& t = fixture(k);
      std::vector<int> ids;
      for (size_t i = 0; i + 1 < text.size(); i += 2)
        ids.push_back(int((static_cast<unsigned char>(text[i]) << 8) | static_cast<unsigned char>(text[i + 1])) %
                      (t.vocab_size() + 8));
      decode_both(t, ids, false, false);
      decode_both(t, ids, true, false);
    }
    return 0;
  }
  const Tokenizer& t = fixture(mode);
  const std::string valid = outro::text::to_valid_utf8(text);
  const std::vector<int> ids = t.encode(text, mode == 0);
  for (int id : ids) check(id >= 0 && id < t.vocab_size(), "encode gave an id outside the vocabulary");
  const std::string back = decode_both(t, ids, false, true);
  if (mode == 0) {
    using outro::text::NormalForm;
    check(outro::text::normalize(back, NormalForm::NFC) == outro::text::normalize(valid, NormalForm::NFC),
          "qwen2style: decode(encode(text)) is not the text (up to NFC)");
  } else if (mode == 1) {
    check(back == replace_all(valid, "\u2581", " "), "llamastyle: decode(encode(text)) is not the text");
  }
  return 0;
}
