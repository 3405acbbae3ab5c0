// The decode loop: prefill the prompt, then sample token by token until EOS, a stop string or the
// token budget, streaming text as it becomes complete UTF-8.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "runtime/sampler.h"
#include "runtime/session.h"

namespace outro {

class Tokenizer;

struct GenerateOptions {
  int max_new_tokens = 64;
  SamplingOptions sampling;
  std::vector<int> stop_ids;             // EOS ids
  std::vector<std::string> stop_strings;  // text that ends the answer (not included)
  // Multimodal prefill (Session::forward_embeds): host rows [prompt, hidden], modality per token,
  // 3-D positions [3, prompt]; all null for a text prompt.
  const float* prefill_embeds = nullptr;
  const uint8_t* prefill_modality = nullptr;
  const int32_t* prefill_positions = nullptr;
  // Qwen3-Omni's DeepStack features of the prefill (Session::set_deepstack); null or empty: none.
  const std::vector<std::vector<float>>* prefill_deepstack = nullptr;
  const std::vector<int32_t>* prefill_deepstack_rows = nullptr;
};

struct GenerateResult {
  std::vector<int> tokens;  // generated ids (the stop id, if any, included)
  std::string text;         // decoded text, stop string removed
  std::string stop_reason;  // "eos", "stop_string", "max_tokens", "context"
  int prompt_tokens = 0;
  double prefill_seconds = 0, decode_seconds = 0;
};

// on_text receives text pieces as they are final (may be empty function).
GenerateResult generate(Session& s, const std::vector<int32_t>& prompt, const GenerateOptions& o,
                        const Tokenizer* tok, const std::function<void(const std::string&)>& on_text);

}  // namespace outro
