// The prompt of a benchmark item: media slots, then the user text (the item's own `prompt`
// verbatim, or the question and its options).
//
// The prompt is built as segments: kind Media marks where the media go (the run puts the
// checkpoint's placeholders there, multimodal_chat_ids); rendered as text those segments
// contribute nothing, and the item's optional `context` (a text stand-in for the media) is placed
// right after them.
#pragma once
#include <string>
#include <vector>

#include "eval/bench.h"

namespace outro::eval {

struct PromptSegment {
  enum Kind { Text, Media } kind = Text;
  std::string text;     // Text
  int media_index = -1;  // Media: index into Item::media
};

// An item with a `prompt` (a benchmark's own user text): "<media slots><prompt>", verbatim.
// Otherwise "<media slots><context> Question: <q> Options: A. x B. y C. z" or, for yes/no items,
// "<media slots><context> Question: <q> Answer yes or no." (the form the demo model was trained on).
std::vector<PromptSegment> build_prompt(const Item& item);

// The text-only rendering: text segments joined, media slots dropped.
std::string render_text_only(const std::vector<PromptSegment>& segs);

}  // namespace outro::eval
