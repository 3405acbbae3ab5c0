// From media files to a multimodal prefill: decodes the video (frames sampled at 2 fps), its audio
// track or a separate audio file, and an image; runs the encoders; builds the chat prompt with
// one placeholder per item (or takes the caller's token ids) and splices everything together.
#pragma once
#include <string>
#include <vector>

#include "models/multimodal.h"
#include "tokenizer/chat_template.h"

namespace outro {

class Tokenizer;

struct MediaRequest {
  std::string video, audio, image;  // empty: not given
  bool use_audio_in_video = false;
  // > 0: the time step of a video position group, in seconds, instead of temporal_patch_size / the
  // sampled fps (transformers' Qwen2.5-Omni processor takes its fps argument, default 2, so 1.0 s).
  double video_second_per_grid = 0;
  // > 0: audio is cut after this many seconds (at most the model's limit); 0: the model's limit
  // (MultimodalConfig::audio_max_seconds: 30 s for Qwen2.5-Omni, none for Qwen3-Omni).
  double audio_max_seconds = 0;
  // true: qwen-omni-utils' video budget (2 fps, 4..768 frames, its pixel budget; media::VisionParams'
  // defaults) whatever the checkpoint's processor files say; false: the checkpoint's settings.
  bool qwen_utils_video_budget = false;
  bool any() const { return !video.empty() || !audio.empty() || !image.empty(); }
};

struct MediaTimings {
  double decode_video = 0, decode_audio = 0, decode_image = 0;  // decoding + preprocessing, seconds
  double vision = 0, audio = 0;                                  // encoders, seconds
};

struct PreparedPrompt {
  MultimodalPrefill prefill;
  MediaSet media;
  MediaTimings timings;
};

// The chat prompt's token ids with one placeholder per item (video, then image, then audio, then
// the text), in the checkpoint's ChatML: a system turn of `system` when non-empty, else of the
// format's default (none for Qwen3-Omni), and the format's generation prompt (chat_prompt(...).media
// of models/chat_prompt.h). Needs a tokenizer.
std::vector<int32_t> multimodal_chat_ids(const MultimodalConfig& c, const Tokenizer& tok, const MediaRequest& r,
                                         const std::string& text, const std::string& system, const ChatFormat& f);

// The same prompt as text, as it goes to the tokenizer: "<|im_start|>system\n{system}<|im_end|>\n
// <|im_start|>user\n<|vision_bos|><|VIDEO|><|vision_eos|>...{text}<|im_end|>\n<|im_start|>assistant\n"
// (the placeholders spelled as the tokenizer spells those ids).
std::string multimodal_chat_text(const MultimodalConfig& c, const Tokenizer& tok, const MediaRequest& r,
                                 const std::string& text, const std::string& system, const ChatFormat& f);

// The media of a request decoded and preprocessed on the CPU, before the towers run: video frames
// as pixel values, the image's, the audio's log-mel features. Making one touches no backend, so
// the next item's can be made on another thread while the current one runs (eval does).
struct DecodedMedia {
  MediaRequest request;
  bool has_video = false, has_image = false;
  media::PixelValues video, image;
  double video_second_per_grid = 0;
  std::vector<media::MelFeatures> audio;  // the video's track first when use_audio_in_video, then --audio
  MediaTimings timings;                   // the decode_* fields
};
DecodedMedia decode_media(const MultimodalModel& mm, const MediaRequest& r);
// Runs the towers on the decoded media and assembles the prefill of prompt_ids (one placeholder
// per item, e.g. from multimodal_chat_ids).
PreparedPrompt encode_media(MultimodalModel& mm, const DecodedMedia& d, const std::vector<int32_t>& prompt_ids);
// Both: decodes and encodes the media of r and assembles the prefill. Errors name the file.
PreparedPrompt prepare_multimodal(MultimodalModel& mm, const MediaRequest& r, const std::vector<int32_t>& prompt_ids);
// Whether a request's video should bring its own audio track when nothing says: it has one, no
// separate audio file is given, and the model has an audio encoder (what `eval` and `analyze` do).
bool video_audio_by_default(const MultimodalModel& mm, const MediaRequest& r);

}  // namespace outro
