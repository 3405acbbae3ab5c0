// How each architecture writes its chat prompt, in one table: the default system turn of a text
// prompt and of a prompt with media, and whether Qwen3's thinking block applies; with --think
// resolved against the folder's chat template (auto: what the template's generation prompt writes).
#pragma once
#include <string>

#include "io/config.h"
#include "tokenizer/chat_template.h"

namespace outro {

// --think: auto (the folder's chat template decides), on (open a thinking block), off (the empty
// block, as Qwen3's enable_thinking=False writes it).
enum class ThinkMode { Auto, On, Off };
// Throws Error "ARG: expected auto, on or off, found 'V'".
ThinkMode parse_think_mode(const std::string& v, const std::string& arg);
const char* think_mode_name(ThinkMode t);

// The folder's chat template: chat_template.jinja, chat_template.json ("chat_template"), else
// tokenizer_config.json's "chat_template" (a string, or a list of {name, template}), the first found.
struct ChatTemplateFile {
  std::string path;       // empty: the folder has none
  bool thinking = false;  // its generation prompt is "<|im_start|>assistant\n<think>\n"
};
// Throws Error naming the file for one that is not the JSON expected.
ChatTemplateFile find_chat_template(const std::string& dir);
// Whether template text writes "<|im_start|>assistant\n<think>\n", with its newlines written as
// they are or as the escape \n of a Jinja string literal.
bool template_opens_thinking(const std::string& text);

struct ChatPrompt {
  ChatFormat text;   // prompts without media
  ChatFormat media;  // prompts with media placeholders (models/multimodal_input.h)
  bool thinking_family = false;  // the architecture's templates have a thinking block (Qwen3)
  ThinkMode think = ThinkMode::Auto;
  bool thinking = false;  // what think resolved to: the generation prompt opens <think>
  ChatTemplateFile template_file;
};

// The architecture's chat prompt for the folder `dir` (empty: no folder to read, auto is off).
// --think on/off for an architecture without a thinking block is an Error naming the model type.
ChatPrompt chat_prompt(const ModelConfig& c, const std::string& dir, ThinkMode think = ThinkMode::Auto);

}  // namespace outro
