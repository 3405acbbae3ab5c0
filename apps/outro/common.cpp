#include "common.h"

#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "core/error.h"
#include "frontend/frontend.h"

namespace outro::cli {

const std::set<std::string> kLoadFlags = {"model", "device", "threads"};

Loaded load(const Args& a, bool need_tokenizer) {
  Loaded l;
  l.dir = model_dir(a);
  if (a.has("threads")) setenv("OUTRO_THREADS", a.str("threads").c_str(), 1);
  l.model = Model::load(l.dir);
  for (const auto& lo : l.model->store().left_out())
    if (lo.tensors)
      std::fprintf(stderr, "%s: left out %zu %s tensors (%llu bytes); outro runs the thinker only\n", l.dir.c_str(),
                   lo.tensors, lo.prefix.substr(0, lo.prefix.size() - 1).c_str(), (unsigned long long)lo.bytes);
  l.backend = make_backend(a.str("device", "auto"), "--device");
  namespace fs = std::filesystem;
  if (fs::exists(fs::path(l.dir) / "tokenizer.json")) {
    l.tokenizer = Tokenizer::load(l.dir);
  } else if (need_tokenizer) {
    fail(l.dir, ": no tokenizer.json in the model folder (use --tokens to give token ids)");
  }
  return l;
}

ChatPrompt chat_prompt_of(const Args& a, const ModelConfig& c, const std::string& dir) {
  return chat_prompt(c, dir, parse_think_mode(a.str("think", "auto"), "--think"));
}

std::vector<int32_t> prompt_tokens(const Args& a, const Loaded& l) {
  const ChatPrompt chat = chat_prompt_of(a, l.model->config(), l.dir);
  if (a.has("tokens") && a.has("prompt")) fail("give either --prompt or --tokens, not both");
  if (a.has("tokens")) return parse_token_list(a.str("tokens"));
  if (!a.has("prompt")) fail("one of --prompt TEXT or --tokens 1,2,3 is required");
  if (!l.tokenizer) fail(l.dir, ": no tokenizer.json in the model folder; --prompt needs one (use --tokens)");
  return text_prompt_ids(*l.tokenizer, a.str("prompt"),
                         a.has("system") ? std::optional<std::string>(a.str("system")) : std::nullopt, a.flag("raw"),
                         chat.text);
}

}  // namespace outro::cli
