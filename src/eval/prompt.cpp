// The user text of a benchmark item: its own prompt verbatim, or the harness's question form.
#include "eval/prompt.h"

namespace outro::eval {

std::vector<PromptSegment> build_prompt(const Item& item) {
  std::vector<PromptSegment> segs;
  for (int i = 0; i < int(item.media.size()); ++i) segs.push_back({PromptSegment::Media, "", i});
  if (!item.prompt.empty()) {  // the benchmark's own user text, verbatim (no "Question:" wrapper)
    segs.push_back({PromptSegment::Text, item.prompt, -1});
    return segs;
  }
  std::string t;
  if (!item.context.empty()) t = item.context + " ";
  t += "Question: " + item.question;
  if (item.yes_no()) {
    const bool asks = item.question.find("yes or no") != std::string::npos;
    if (!asks) t += " Answer yes or no.";
  } else {
    t += " Options:";
    for (int i = 0; i < int(item.options.size()); ++i) t += std::string(" ") + option_letter(i) + ". " + item.options[i];
  }
  segs.push_back({PromptSegment::Text, t, -1});
  return segs;
}

std::string render_text_only(const std::vector<PromptSegment>& segs) {
  std::string out;
  for (auto& s : segs)
    if (s.kind == PromptSegment::Text) out += s.text;
  return out;
}

}  // namespace outro::eval
