// Converters from the published question files of audio-visual benchmarks to the harness's JSONL
// format (eval/bench.h). Field names are those of the public releases as documented by their
// authors; where a release leaves something open (where the media files lie), the default is a
// template that --media-template KIND=TEMPLATE overrides. README "Benchmarks" lists them.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "eval/bench.h"

namespace outro::eval {

struct AdapterOptions {
  // media kind -> path template; {video_id}, {id}, {audio_path}, {image_path} are replaced.
  std::map<std::string, std::string> media_templates;
  bool text_alternative = false;  // OmniBench: put the annotated audio/image content in `context`
  // Tasks to keep; empty: every task except AVHBench's single-modality "*_only" ones; {"all"}: every task.
  std::vector<std::string> tasks;
  std::string qa_file;  // Daily-Omni: qa.json, whose `Type` becomes the task of the authors' dailyomni.json items
};

struct Conversion {
  std::vector<Item> items;
  std::map<std::string, int> skipped;  // reason -> count
  std::map<std::string, int> notes;    // items kept with something worth saying (e.g. no task found in --qa)
};

// format: avhbench, dailyomni, worldsense, videoholmes, omnibench. input: a file, or for avhbench
// also the folder of per-video JSON files. Items come out in file order (a folder: files by name).
// A record of another format than the one named fails naming the file, its index, the fields
// expected and the fields found.
Conversion convert_benchmark(const std::string& format, const std::string& input, const AdapterOptions& o = {});
const std::vector<std::string>& adapter_formats();
// The default media templates of a format (for --help and the README).
std::map<std::string, std::string> default_media_templates(const std::string& format);

}  // namespace outro::eval
