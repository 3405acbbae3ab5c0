// The chat prompt per architecture (models/chat_prompt.h): Qwen3-Omni's missing default system turn,
// --think against a folder's chat template file, the errors for bad template files and modes.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "frontend/frontend.h"
#include "io/config.h"
#include "models/chat_prompt.h"
#include "test_util.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace outro {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string q3_dir() { return test::fixture("qwen3_omni/e4k2_mha"); }
std::string q2_dir() { return test::fixture("models/qwen2_gqa_f32"); }
std::string omni_dir() { return test::fixture("models/omni_thinker_f32"); }

// A folder holding only `file` with `text` (the template files are read without config.json).
std::string template_folder(const std::string& tag, const std::string& file, const std::string& text) {
  const std::string d = test::tmp_dir("chat_" + tag);
  fs::remove_all(d);
  fs::create_directories(d);
  std::ofstream(d + "/" + file) << text;
  return d;
}

// Qwen3-Omni's Thinking template's generation prompt and the Instruct one's, as the released
// templates write them (a Jinja string literal with \n escapes).
const char* kThinkingJinja =
    "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n<think>\\n' }}{%- endif %}";
const char* kInstructJinja =
    "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";

TEST(ChatPrompt, Qwen3OmniHasNoDefaultSystemTurnQwen2Keeps) {
  const ChatPrompt q3 = chat_prompt(load_config(q3_dir()), q3_dir());
  const ChatPrompt q2 = chat_prompt(load_config(q2_dir()), q2_dir());
  const ChatPrompt omni = chat_prompt(load_config(omni_dir()), omni_dir());
  const std::vector<ChatMessage> user = {{"user", "Hi"}};
  EXPECT_EQ(apply_chat_template(user, true, q3.text), "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(apply_chat_template(user, true, q2.text),
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\n");
  EXPECT_EQ(apply_chat_template(user, true, omni.text), apply_chat_template(user, true, q2.text));
  EXPECT_FALSE(q3.media.default_system.has_value());
  ASSERT_TRUE(omni.media.default_system.has_value());
  EXPECT_NE(omni.media.default_system->find("You are Qwen, a virtual human"), std::string::npos);
  EXPECT_TRUE(q3.thinking_family);
  EXPECT_FALSE(q2.thinking_family);
  EXPECT_FALSE(q3.thinking);  // the fixture folder has no chat template

  // The ids: a tokenizer with the ChatML tokens; the Qwen2 prompt is the Qwen3 one after a system turn.
  auto tok = Tokenizer::load(test::fixture("tokenizer/qwen2style.tokenizer.json"));
  const auto ids3 = text_prompt_ids(*tok, "Hi", std::nullopt, false, q3.text);
  const auto ids2 = text_prompt_ids(*tok, "Hi", std::nullopt, false, q2.text);
  const auto head = tok->encode("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n", true, false);
  ASSERT_EQ(ids2.size(), head.size() + ids3.size());
  EXPECT_TRUE(std::equal(head.begin(), head.end(), ids2.begin()));
  EXPECT_TRUE(std::equal(ids3.begin(), ids3.end(), ids2.begin() + long(head.size())));
  EXPECT_EQ(ids3.front(), *tok->token_id("<|im_start|>"));
  // --system gives Qwen3-Omni a system turn, even an empty one.
  const auto sys3 = text_prompt_ids(*tok, "Hi", std::string("S"), false, q3.text);
  const auto want = tok->encode("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
                                true, false);
  EXPECT_EQ(std::vector<int32_t>(want.begin(), want.end()), sys3);
  EXPECT_GT(text_prompt_ids(*tok, "Hi", std::string(""), false, q3.text).size(), ids3.size());
}

TEST(ChatPrompt, TemplateDetectionAllowsForEscaping) {
  EXPECT_TRUE(template_opens_thinking(kThinkingJinja));
  EXPECT_FALSE(template_opens_thinking(kInstructJinja));
  EXPECT_TRUE(template_opens_thinking("{{ \"<|im_start|>assistant\n<think>\n\" }}"));  // literal newlines
  // Qwen3's hybrid template writes the empty block only when thinking is off: not a thinking prompt.
  EXPECT_FALSE(template_opens_thinking(
      "{{- '<|im_start|>assistant\\n' }}{%- if enable_thinking is defined and enable_thinking is false %}"
      "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"));
  // A history turn's '<think>' after another role is not the generation prompt.
  EXPECT_FALSE(template_opens_thinking("'<|im_start|>' + message.role + '\\n<think>\\n'"));
}

TEST(ChatPrompt, ThinkModesWithATemplateFile) {
  ModelConfig c = load_config(q3_dir());
  const std::vector<ChatMessage> user = {{"user", "Hi"}};
  const std::string base = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n";
  // The three files a template can come in, each Thinking and Instruct.
  struct Case {
    std::string file, thinking, instruct;
  };
  const std::vector<Case> cases = {
      {"chat_template.jinja", kThinkingJinja, kInstructJinja},
      {"chat_template.json", json{{"chat_template", kThinkingJinja}}.dump(), json{{"chat_template", kInstructJinja}}.dump()},
      {"tokenizer_config.json", json{{"chat_template", kThinkingJinja}, {"model_max_length", 32768}}.dump(),
       json{{"chat_template", json::array({{{"name", "default"}, {"template", kInstructJinja}},
                                           {{"name", "tool_use"}, {"template", kThinkingJinja}}})}}
           .dump()}};
  for (const Case& k : cases) {
    SCOPED_TRACE(k.file);
    const std::string th = template_folder("th", k.file, k.thinking), in = template_folder("in", k.file, k.instruct);
    const ChatPrompt auto_th = chat_prompt(c, th, ThinkMode::Auto), auto_in = chat_prompt(c, in, ThinkMode::Auto);
    EXPECT_EQ(auto_th.template_file.path, th + "/" + k.file);
    EXPECT_TRUE(auto_th.thinking);
    EXPECT_FALSE(auto_in.thinking);
    EXPECT_EQ(apply_chat_template(user, true, auto_th.text), base + "<think>\n");
    EXPECT_EQ(apply_chat_template(user, true, auto_in.text), base);
    for (const std::string& d : {th, in}) {
      EXPECT_EQ(apply_chat_template(user, true, chat_prompt(c, d, ThinkMode::On).text), base + "<think>\n");
      EXPECT_EQ(apply_chat_template(user, true, chat_prompt(c, d, ThinkMode::Off).text),
                base + "<think>\n\n</think>\n\n");
    }
    EXPECT_EQ(chat_prompt(c, th, ThinkMode::Off).media.assistant_opening, "<think>\n\n</think>\n\n");
  }
  // The .jinja file goes before the JSON ones.
  const std::string both = template_folder("both", "chat_template.jinja", kInstructJinja);
  std::ofstream(both + "/tokenizer_config.json") << json{{"chat_template", kThinkingJinja}}.dump();
  EXPECT_FALSE(chat_prompt(c, both).thinking);
  // No template: auto is off; on still opens the block.
  EXPECT_FALSE(chat_prompt(c, q3_dir()).thinking);
  EXPECT_EQ(chat_prompt(c, q3_dir(), ThinkMode::On).text.assistant_opening, "<think>\n");
}

TEST(ChatPrompt, ClearErrors) {
  EXPECT_EQ(parse_think_mode("on", "--think"), ThinkMode::On);
  std::string e = test::error_of([] { parse_think_mode("yes", "--think"); });
  EXPECT_NE(e.find("--think: expected auto, on or off, found 'yes'"), std::string::npos) << e;
  // Qwen2 families have no thinking block: on / off name the model type; auto is their template.
  const ModelConfig q2 = load_config(q2_dir());
  for (ThinkMode m : {ThinkMode::On, ThinkMode::Off}) {
    e = test::error_of([&] { chat_prompt(q2, q2_dir(), m); });
    EXPECT_NE(e.find("--think "), std::string::npos) << e;
    EXPECT_NE(e.find("Qwen2ForCausalLM"), std::string::npos) << e;
    EXPECT_NE(e.find("model_type '" + q2.model_type + "'"), std::string::npos) << e;
  }
  EXPECT_NO_THROW(chat_prompt(q2, q2_dir(), ThinkMode::Auto));
  const ModelConfig q3 = load_config(q3_dir());
  const std::string bad = template_folder("bad", "chat_template.json", "{not json");
  e = test::error_of([&] { chat_prompt(q3, bad); });
  EXPECT_NE(e.find(bad + "/chat_template.json: expected JSON"), std::string::npos) << e;
  const std::string nofield = template_folder("nofield", "chat_template.json", "{\"template\": \"x\"}");
  e = test::error_of([&] { chat_prompt(q3, nofield); });
  EXPECT_NE(e.find("expected a 'chat_template' field"), std::string::npos) << e;
  const std::string num = template_folder("num", "tokenizer_config.json", "{\"chat_template\": 3}");
  e = test::error_of([&] { chat_prompt(q3, num); });
  EXPECT_NE(e.find("tokenizer_config.json: 'chat_template': expected a string or a list"), std::string::npos) << e;
  // A tokenizer_config.json without a template is no template.
  const std::string plain = template_folder("plain", "tokenizer_config.json", "{\"model_max_length\": 8}");
  EXPECT_TRUE(chat_prompt(q3, plain).template_file.path.empty());
}

}  // namespace
}  // namespace outro
