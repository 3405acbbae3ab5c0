// ChatML as the Qwen families write it (chat_template.h).
#include "tokenizer/chat_template.h"

namespace outro {

std::string chat_generation_prompt(const ChatFormat& format) {
  return "<|im_start|>assistant\n" + format.assistant_opening;
}

std::string apply_chat_template(const std::vector<ChatMessage>& msgs, bool add_generation_prompt,
                                const ChatFormat& format) {
  std::string out;
  if ((msgs.empty() || msgs[0].role != "system") && format.default_system)
    out += "<|im_start|>system\n" + *format.default_system + "<|im_end|>\n";
  for (const auto& m : msgs) out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
  if (add_generation_prompt) out += chat_generation_prompt(format);
  return out;
}

}  // namespace outro
