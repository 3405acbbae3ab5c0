// What every subcommand sets up: the model, the backend, the tokenizer, the interventions.
#pragma once
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "args.h"
#include "kernels/backend.h"
#include "models/chat_prompt.h"
#include "models/model.h"
#include "runtime/intervention.h"
#include "tokenizer/tokenizer.h"

namespace outro::cli {

struct Loaded {
  std::string dir;
  std::unique_ptr<Model> model;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<Tokenizer> tokenizer;  // null when the folder has no tokenizer.json
};

// Flags understood by load(): --model --device --threads
extern const std::set<std::string> kLoadFlags;
Loaded load(const Args& a, bool need_tokenizer);

// Flags understood by build_interventions(): --strategy --outro-config --ablate-heads --explain
extern const std::set<std::string> kInterventionFlags;
std::vector<std::unique_ptr<Intervention>> build_interventions(const Args& a, const Model& m);

// --think auto|on|off resolved for the folder (models/chat_prompt.h): the chat prompt's format.
ChatPrompt chat_prompt_of(const Args& a, const ModelConfig& c, const std::string& dir);

// The prompt's token ids: --tokens, or --prompt encoded (with the chat template unless --raw).
std::vector<int32_t> prompt_tokens(const Args& a, const Loaded& l);

}  // namespace outro::cli
