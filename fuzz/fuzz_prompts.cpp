// libFuzzer target: an `outro analyze` prompts file (src/sink/tasks.h). Any text must parse into
// items or throw outro::Error naming the file and line; never crash. Every item that parses holds
// token ids inside the vocabulary, an answer index inside its options, and (for a media item) a
// prompt still to be built and media paths that name existing files. The first byte picks the tokenizer: none
// (token ids only) or the omni demo's (text prompts through the chat template); media paths are
// resolved under tests/fixtures/omni_demo, so "clips/h0000.mp4" is a real file.
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>

#include "core/error.h"
#include "sink/tasks.h"
#include "tokenizer/tokenizer.h"

namespace {

const outro::Tokenizer& demo_tokenizer() {
  static const std::unique_ptr<outro::Tokenizer> t = outro::Tokenizer::load(OUTRO_SOURCE_DIR "/models/outro-omni-demo");
  return *t;
}

void check(bool ok) {
  if (!ok) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const bool with_tok = data[0] & 1;
  const std::string text(reinterpret_cast<const char*>(data) + 1, size - 1);
  const outro::Tokenizer* tok = with_tok ? &demo_tokenizer() : nullptr;
  const int vocab = with_tok ? int(demo_tokenizer().vocab_size()) : 64;
  outro::sink::TaskLoadOptions o;
  o.max_positions = 256;
  o.max_items = 16;
  o.media_root = OUTRO_SOURCE_DIR "/tests/fixtures/omni_demo";
  try {
    auto items = outro::sink::parse_tasks(text, "fuzz.jsonl", tok, vocab, o);
    check(!items.empty());
    for (const auto& it : items) {
      for (int32_t t : it.prompt) check(t >= 0 && t < vocab);
      for (int32_t t : it.answer) check(t >= 0 && t < vocab);
      if (!it.options.empty()) check(it.correct >= 0 && it.correct < int(it.options.size()));
      if (it.media.any()) {
        check(it.prompt.empty());  // attach_media builds it from the text and the media
        for (const std::string* p : {&it.media.video, &it.media.audio, &it.media.image})
          if (!p->empty()) check(std::filesystem::is_regular_file(*p));
      } else {
        check(!it.prompt.empty());
      }
    }
  } catch (const outro::Error&) {
  }
  return 0;
}
