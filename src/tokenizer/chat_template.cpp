#include "tokenizer/chat_template.h"

namespace outro {

std::string apply_chat_template(const std::vector<ChatMessage>& msgs, bool add_generation_prompt,
                                const std::string& default_system) {
  std::string out;
  if (msgs.empty() || msgs[0].role != "system") out += "<|im_start|>system\n" + default_system + "<|im_end|>\n";
  for (const auto& m : msgs) out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
  if (add_generation_prompt) out += "<|im_start|>assistant\n";
  return out;
}

}  // namespace outro
