// The project's own small benchmark: scenes that text can describe (a coloured shape moving while
// a sound plays) with questions whose answers are known, plus tiny matching clips made with
// ffmpeg's test sources (a solid frame of the shape's colour, a sine tone). Made at test time.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "eval/bench.h"

namespace outro::eval {

struct SynthOptions {
  int n = 24;
  uint64_t seed = 0;
  bool media = true;  // write clips (needs ffmpeg)
};

// Items only (media paths clips/{id}.mp4 and clips/{id}.wav, relative to the media root).
std::vector<Item> synth_items(const SynthOptions& o);

// Writes DIR/bench.jsonl and, with o.media, DIR/media/clips/*; returns the items.
std::vector<Item> write_synth_benchmark(const std::string& dir, const SynthOptions& o);

// Path of ffmpeg found on PATH, or "".
std::string find_ffmpeg();

}  // namespace outro::eval
