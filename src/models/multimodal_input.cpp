#include "models/multimodal_input.h"

#include <algorithm>
#include <chrono>
#include <optional>

#include "core/error.h"
#include "media/media.h"
#include "tokenizer/tokenizer.h"

namespace outro {

namespace {
double since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

namespace {
// The system turn and the user turn's opening, as text: `system` when non-empty, else the format's
// default (none for Qwen3-Omni).
std::string chat_head(const ChatFormat& f, const std::string& system) {
  const std::optional<std::string> sys = !system.empty() ? std::optional<std::string>(system) : f.default_system;
  return (sys ? "<|im_start|>system\n" + *sys + "<|im_end|>\n" : std::string()) + "<|im_start|>user\n";
}
}  // namespace

std::string multimodal_chat_text(const MultimodalConfig& c, const Tokenizer& tok, const MediaRequest& r,
                                 const std::string& text, const std::string& system, const ChatFormat& f) {
  std::string s = chat_head(f, system);
  auto slot = [&](int a, int b, int z) { s += tok.token_bytes(a) + tok.token_bytes(b) + tok.token_bytes(z); };
  if (!r.video.empty()) slot(c.vision_start, c.video_token, c.vision_end);
  if (!r.image.empty()) slot(c.vision_start, c.image_token, c.vision_end);
  if (!r.audio.empty()) slot(c.audio_start, c.audio_token, c.audio_end);
  return s + text + "<|im_end|>\n" + chat_generation_prompt(f);
}

std::vector<int32_t> multimodal_chat_ids(const MultimodalConfig& c, const Tokenizer& tok, const MediaRequest& r,
                                         const std::string& text, const std::string& system, const ChatFormat& f) {
  std::vector<int32_t> ids;
  auto add_text = [&](const std::string& s) {
    for (int id : tok.encode(s, true)) ids.push_back(id);
  };
  add_text(chat_head(f, system));
  if (!r.video.empty()) ids.insert(ids.end(), {c.vision_start, c.video_token, c.vision_end});
  if (!r.image.empty()) ids.insert(ids.end(), {c.vision_start, c.image_token, c.vision_end});
  if (!r.audio.empty()) ids.insert(ids.end(), {c.audio_start, c.audio_token, c.audio_end});
  add_text(text + "<|im_end|>\n" + chat_generation_prompt(f));
  return ids;
}

bool video_audio_by_default(const MultimodalModel& mm, const MediaRequest& r) {
  return !r.video.empty() && r.audio.empty() && mm.has_audio() && media::probe_video(r.video).has_audio;
}

DecodedMedia decode_media(const MultimodalModel& mm, const MediaRequest& r) {
  const MultimodalConfig& c = mm.config();
  if (!r.audio.empty() && r.use_audio_in_video) fail("give either --audio FILE or --use-audio-in-video, not both");
  if (r.use_audio_in_video && r.video.empty()) fail("--use-audio-in-video needs --video FILE");
  if ((!r.audio.empty() || r.use_audio_in_video) && !mm.has_audio())
    fail(c.source, ": this model has no audio tower (audio input needs a Qwen2.5-Omni or Qwen3-Omni thinker checkpoint)");
  if ((!r.video.empty() || !r.image.empty()) && !mm.has_vision())
    fail(c.source, ": this model has no vision tower (config.json has no vision_config)");
  DecodedMedia d;
  d.request = r;
  media::VisionParams vp = mm.vision_params();
  if (r.qwen_utils_video_budget) {
    const media::VisionParams def;
    vp.fps = def.fps;
    vp.min_frames = def.min_frames;
    vp.max_frames = def.max_frames;
    vp.video_min_pixels = def.video_min_pixels;
    vp.video_max_pixels = def.video_max_pixels;
    vp.video_total_pixels = def.video_total_pixels;
  }
  using clock = std::chrono::steady_clock;
  // The clips' samples, cut at the request's or the model's limit; their log-mel features are made
  // once all are decoded (padded to the limit, or without one to the longest clip of the prompt).
  const double limit = c.audio_max_seconds;  // 0: none
  if (!(r.audio_max_seconds >= 0)) fail("audio cut: expected 0 (the model's limit) or seconds > 0, found ", r.audio_max_seconds);
  if (limit > 0 && r.audio_max_seconds > limit)
    fail("--audio-max-seconds: ", r.audio_max_seconds, " s is past the ", limit, " s this model's processor takes (",
         c.source, "; its Whisper features cover one ", limit, " s window); expected 0 < S <= ", limit,
         " or 0 for the model's limit");
  const double cut = r.audio_max_seconds > 0 ? r.audio_max_seconds : limit;
  std::vector<std::vector<float>> clips;
  auto audio_of = [&](const std::string& path, bool from_video) {
    auto t0 = clock::now();
    std::vector<float> pcm;
    try {
      pcm = media::decode_audio(path);
    } catch (const Error& e) {
      if (from_video && std::string(e.what()).find("no audio track") != std::string::npos)
        fail(path, ": the video has no audio track (--use-audio-in-video needs one; give --audio FILE instead)");
      throw;
    }
    if (cut > 0) {
      const size_t keep = size_t(cut * 16000.0);
      if (pcm.size() > keep) pcm.resize(keep);
    }
    clips.push_back(std::move(pcm));
    d.timings.decode_audio += since(t0);
  };
  auto mel_of_clips = [&] {
    auto t0 = clock::now();
    media::MelParams mp;
    if (limit <= 0) {
      mp.max_samples = 0;
      for (const auto& p : clips) mp.max_samples = std::max(mp.max_samples, p.size());
    }
    for (const auto& p : clips) d.audio.push_back(media::whisper_log_mel(p.data(), p.size(), mp));
    d.timings.decode_audio += since(t0);
  };
  if (!r.video.empty()) {
    auto t0 = clock::now();
    media::VideoInput v = media::process_video(r.video, vp);
    d.timings.decode_video += since(t0);
    d.has_video = true;
    d.video_second_per_grid = r.video_second_per_grid > 0     ? r.video_second_per_grid
                              : c.processor_default_fps > 0 ? double(c.vision.temporal) / c.processor_default_fps
                                                            : v.second_per_grid;
    d.video = std::move(v.pixels);
    if (r.use_audio_in_video) audio_of(r.video, true);
  }
  if (!r.image.empty()) {
    auto t0 = clock::now();
    media::Image im = media::load_image(r.image);
    d.image = media::process_image(im, vp, r.image);
    d.timings.decode_image += since(t0);
    d.has_image = true;
  }
  if (!r.audio.empty()) audio_of(r.audio, false);
  mel_of_clips();
  return d;
}

PreparedPrompt prepare_multimodal(MultimodalModel& mm, const MediaRequest& r, const std::vector<int32_t>& prompt_ids) {
  return encode_media(mm, decode_media(mm, r), prompt_ids);
}

}  // namespace outro
