// The prompts file of `outro analyze` and the task metric of the pruning analyses.
//
// JSONL, one object per line (blank lines are skipped):
//   "prompt": "text"  (alias "question")   or   "tokens": [ids]          the prompt (one is required)
//   "answer": "text" | [ids]                the continuation whose log-likelihood is scored
//   "options": ["A", "B", ...] | [[ids], ...] with "answer" naming one of them (the option's text,
//            its letter A, B, ... or its 0-based index): a multiple-choice item, scored by accuracy
//            (the option of highest summed log-probability as the continuation of the prompt)
//   "id": any                               a name for the item in the report
//   "video" / "audio" / "image": "path"     media (alias: "media": {"video": ..., ...}), relative to the
//            media root (default: the prompts file's folder); needs a Qwen2.5-Omni / -VL checkpoint and a
//            text prompt; attach_media() decodes and encodes it and builds the chat prompt with the
//            placeholders, as `outro generate --video` does
//   "use_audio_in_video": true | false      default: true when the video has an audio track (Omni)
// Text prompts are encoded with the model's tokenizer.json, through the Qwen2 chat template when
// the tokenizer has <|im_start|> (unless chat is off); answers and options are encoded as plain
// text. An item without "answer" is scored by the log-likelihood of its own tokens 1 .. n-1.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "runtime/intervention.h"
#include "tokenizer/chat_template.h"

namespace outro {
class Model;
class Backend;
class Tokenizer;
class Session;
class MultimodalModel;
struct MultimodalPrefill;
}  // namespace outro

namespace outro::sink {

struct TaskMedia {
  std::string video, audio, image;  // resolved paths; empty: not given
  int use_audio_in_video = -1;      // -1: when the video has an audio track and the model an audio tower
  bool any() const { return !video.empty() || !audio.empty() || !image.empty(); }
};

struct TaskItem {
  std::string id;
  int line = 0;
  std::string text;                 // the prompt's text (media items: turned into `prompt` by attach_media)
  TaskMedia media;
  std::shared_ptr<const MultimodalPrefill> prefill;  // set by attach_media; prompt == prefill->ids
  std::vector<int32_t> prompt;
  std::vector<int32_t> answer;                // empty: the prompt's own tokens are scored
  std::vector<std::vector<int32_t>> options;  // multiple choice when non-empty
  std::vector<std::string> option_labels;
  int correct = -1;                           // index into options
};

struct TaskLoadOptions {
  bool chat = true;       // apply the chat template to text prompts when the tokenizer has one
  ChatFormat chat_format; // the model's (chat_prompt(...).text of models/chat_prompt.h)
  int max_items = 0;      // 0: all
  int max_positions = 0;  // the model's context; 0: unchecked
  std::string media_root; // relative media paths start here; empty: the prompts file's folder
};

// Throws Error "FILE:LINE: field 'NAME': ..." for a bad line, a text field without a tokenizer,
// a token id outside [0, vocab), or a sequence longer than the context.
std::vector<TaskItem> load_tasks(const std::string& path, const Tokenizer* tok, int vocab, const TaskLoadOptions& o);
// Same, from text (path names it in messages).
std::vector<TaskItem> parse_tasks(const std::string& text, const std::string& path, const Tokenizer* tok, int vocab,
                                  const TaskLoadOptions& o);

// Decodes and encodes every media item's files and builds its prompt (chat template with the
// placeholders; `system` when non-empty, else the format's default). Errors name the item's
// FILE:LINE and the file. Items without media are left as they are.
void attach_media(std::vector<TaskItem>& items, MultimodalModel& mm, const Tokenizer& tok, const std::string& system,
                  const ChatFormat& format, int max_positions, const std::string& path);
bool any_media(const std::vector<TaskItem>& items);

// Feeds an item's prompt into s (its multimodal prefill when it has one).
void feed_prompt(Session& s, const TaskItem& it, std::vector<float>* logits, bool all_rows);

enum class Metric { LogLik, Accuracy };
// "auto": accuracy when every item is multiple choice, else log-likelihood.
Metric choose_metric(const std::string& name, const std::vector<TaskItem>& items);
const char* metric_name(Metric m);

struct MetricValue {
  double loglik = 0;    // mean over items of the mean log-probability per scored token (nats)
  double accuracy = -1; // fraction of multiple-choice items right; -1 when there are none
  double value(Metric m) const { return m == Metric::Accuracy ? accuracy : loglik; }
};

// Runs every item with the given heads ablated (HeadAblation before o_proj). Items of several
// options score each option as a continuation of one prompt prefill (Session::rewind).
MetricValue evaluate_tasks(const Model& m, Backend& be, const std::vector<TaskItem>& items,
                           const std::vector<HeadAblation::Target>& ablate);

// log softmax(logits)[id]
double log_prob(const float* logits, int vocab, int id);

}  // namespace outro::sink
