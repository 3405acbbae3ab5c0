// Benchmark items in the harness's own JSONL format (one object a line) and media checks.
//
//   {"id": "avh-00191-3", "media": {"video": "video/00191.mp4"}, "question": "Is the couch making
//    sound in the audio?", "options": ["yes", "no"], "answer": "no", "task": "Video-driven Audio
//    Hallucination", "category": "...", "context": "optional text standing in for the media"}
//
// - media: an object kind -> path ("video", "audio", "image", ...) or a list of paths (kind from
//   the extension); paths are relative to --media-root (absolute paths are kept).
// - prompt (optional): the exact user text a benchmark's own script sends after the media; the
//   harness then sends it verbatim instead of building "Question: ... Options: ...".
// - index (optional): the record's 0-based index in the question file it was converted from.
// - use_audio_in_video (optional, false): a video-only question; the video's audio track is not used.
// - options: the choices in order; they are shown as A., B., ... . Two options "yes"/"no" make a
//   yes/no question.
// - answer: an option letter ("B"), a 0-based index (1), or the option's text ("no").
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace outro::eval {

struct Media {
  std::string kind;  // video, audio, image, other
  std::string path;  // as written in the item (relative to the media root unless absolute)
};

struct Item {
  std::string id;
  std::vector<Media> media;
  std::string question;
  std::vector<std::string> options;
  int answer = -1;  // index into options
  std::string task, category;
  std::string context;  // optional textual stand-in for the media (synthetic items, OmniBench text alternative)
  std::string prompt;   // the benchmark's own user text, sent verbatim when non-empty
  long long index = -1;  // index of the record in its source question file (-1: none)
  int audio_in_video = -1;  // -1: as the run decides; 0: never use the video's own audio track
  bool yes_no() const;
};

// Parses one item; throws outro::Error naming `where` (e.g. "bench.jsonl:12") on a bad field.
Item item_from_json(const nlohmann::json& j, const std::string& where);
nlohmann::json item_to_json(const Item& it);

// Reads a JSONL file (blank lines and lines starting with '#' are skipped); ids must be unique.
std::vector<Item> load_bench(const std::string& path);
void write_bench(const std::string& path, const std::vector<Item>& items);

// Letter of option i: A, B, ..., Z.
char option_letter(int i);
// Kind of a media file from its extension.
std::string media_kind_from_path(const std::string& path);

struct MissingMedia {
  std::string item_id, path;  // path as resolved
};
// Every media file of every item that does not exist under root.
std::vector<MissingMedia> find_missing_media(const std::vector<Item>& items, const std::string& root);
std::string resolve_media(const std::string& root, const std::string& path);

}  // namespace outro::eval
