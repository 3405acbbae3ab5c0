// The Qwen families' chat template (ChatML), with what differs between them as a ChatFormat
// (models/chat_prompt.h picks it per architecture and folder).
#pragma once
#include <optional>
#include <string>
#include <vector>

namespace outro {

struct ChatMessage {
  std::string role, content;
};

struct ChatFormat {
  // The system turn written when the conversation has none; nullopt: none (Qwen3's templates).
  std::optional<std::string> default_system = std::string("You are a helpful assistant.");
  // Written after "<|im_start|>assistant\n" in the generation prompt: "" or Qwen3's thinking
  // block's opening ("<think>\n", or the empty block "<think>\n\n</think>\n\n").
  std::string assistant_opening;
};

// "<|im_start|>role\ncontent<|im_end|>\n" per message, the format's default system message first
// when the conversation has none, and "<|im_start|>assistant\n" + the opening when
// add_generation_prompt.
std::string apply_chat_template(const std::vector<ChatMessage>& msgs, bool add_generation_prompt,
                                const ChatFormat& format = {});

// The generation prompt alone: "<|im_start|>assistant\n" + the format's opening.
std::string chat_generation_prompt(const ChatFormat& format);

}  // namespace outro
