// The Qwen2 family's chat template (ChatML).
#pragma once
#include <string>
#include <vector>

namespace outro {

struct ChatMessage {
  std::string role, content;
};

// "<|im_start|>role\ncontent<|im_end|>\n" per message, a default system message first when the
// conversation has none, and "<|im_start|>assistant\n" when add_generation_prompt.
std::string apply_chat_template(const std::vector<ChatMessage>& msgs, bool add_generation_prompt,
                                const std::string& default_system = "You are a helpful assistant.");

}  // namespace outro
