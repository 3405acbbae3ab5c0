// --video / --audio / --image / --use-audio-in-video for `generate` and `forward`.
#pragma once
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "common.h"
#include "models/multimodal_input.h"

namespace outro::cli {

extern const std::set<std::string> kMediaFlags;

// --audio-max-seconds S: 0 (the default) the model's limit; a negative value is an Error.
double audio_max_seconds_of(const Args& a);

struct MediaPrompt {
  std::unique_ptr<MultimodalModel> mm;
  PreparedPrompt p;
};

// True when a media flag was given; then *out holds the prefill: the chat prompt built from
// --prompt (with --system), or --tokens holding one placeholder id per item.
bool media_prompt(const Args& a, const Loaded& l, MediaPrompt* out);

// A line for stderr: tokens per modality and the media timings.
std::string media_summary(const MediaPrompt& m);

}  // namespace outro::cli
