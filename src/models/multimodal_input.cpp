#include "models/multimodal_input.h"

#include <chrono>

#include "core/error.h"
#include "media/media.h"
#include "tokenizer/tokenizer.h"

namespace outro {

namespace {
double since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

std::string default_multimodal_system(const MultimodalConfig& c) {
  if (c.family == MmFamily::Qwen3Omni) return "";  // Qwen3-Omni's template adds no system turn of its own
  return c.omni ? "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable "
                  "of perceiving auditory and visual inputs, as well as generating text and speech."
                : "You are a helpful assistant.";
}

std::string multimodal_chat_text(const MultimodalConfig& c, const Tokenizer& tok, const MediaRequest& r,
                                 const std::string& text, const std::string& system) {
  const std::string sys = !system.empty() ? system : default_multimodal_system(c);
  std::string s = (sys.empty() ? "" : "<|im_start|>system\n" + sys + "<|im_end|>\n") + "<|im_start|>user\n";
  auto slot = [&](int a, int b, int z) { s += tok.token_bytes(a) + tok.token_bytes(b) + tok.token_bytes(z); };
  if (!r.video.empty()) slot(c.vision_start, c.video_token, c.vision_end);
  if (!r.image.empty()) slot(c.vision_start, c.image_token, c.vision_end);
  if (!r.audio.empty()) slot(c.audio_start, c.audio_token, c.audio_end);
  return s + text + "<|im_end|>\n<|im_start|>assistant\n";
}

std::vector<int32_t> multimodal_chat_ids(const MultimodalConfig& c, const Tokenizer& tok, const MediaRequest& r,
                                         const std::string& text, const std::string& system) {
  const std::string sys = !system.empty() ? system : default_multimodal_system(c);
  std::vector<int32_t> ids;
  auto add_text = [&](const std::string& s) {
    for (int id : tok.encode(s, true)) ids.push_back(id);
  };
  add_text((sys.empty() ? "" : "<|im_start|>system\n" + sys + "<|im_end|>\n") + "<|im_start|>user\n");
  if (!r.video.empty()) ids.insert(ids.end(), {c.vision_start, c.video_token, c.vision_end});
  if (!r.image.empty()) ids.insert(ids.end(), {c.vision_start, c.image_token, c.vision_end});
  if (!r.audio.empty()) ids.insert(ids.end(), {c.audio_start, c.audio_token, c.audio_end});
  add_text(text + "<|im_end|>\n<|im_start|>assistant\n");
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
    if (r.audio_max_seconds <= 0 || r.audio_max_seconds > 30)
      fail("audio cut: expected 0 < seconds <= 30 (one Whisper window), found ", r.audio_max_seconds);
    const size_t keep = size_t(r.audio_max_seconds * 16000.0);
    if (pcm.size() > keep) pcm.resize(keep);
    d.audio.push_back(media::whisper_log_mel(pcm.data(), pcm.size()));
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
  return d;
}

PreparedPrompt prepare_multimodal(MultimodalModel& mm, const MediaRequest& r, const std::vector<int32_t>& prompt_ids) {
  return encode_media(mm, decode_media(mm, r), prompt_ids);
}

}  // namespace outro
