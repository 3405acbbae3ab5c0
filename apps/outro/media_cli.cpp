#include "media_cli.h"

#include <cstdio>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace outro::cli {

const std::set<std::string> kMediaFlags = {"video", "audio", "image", "use-audio-in-video", "audio-max-seconds"};

double audio_max_seconds_of(const Args& a) {
  const double s = a.number("audio-max-seconds", 0);
  if (!(s >= 0)) fail("--audio-max-seconds: expected 0 (the model's limit) or a length in seconds > 0, found ",
                      a.str("audio-max-seconds"));
  return s;
}

bool media_prompt(const Args& a, const Loaded& l, MediaPrompt* out) {
  MediaRequest r;
  r.video = a.str("video");
  r.audio = a.str("audio");
  r.image = a.str("image");
  r.use_audio_in_video = a.flag("use-audio-in-video");
  r.audio_max_seconds = audio_max_seconds_of(a);
  if (!r.any() && !r.use_audio_in_video) {
    if (a.has("audio-max-seconds")) fail("--audio-max-seconds needs --audio FILE or --video FILE --use-audio-in-video");
    return false;
  }
  const ModelConfig& c = l.model->config();
  if (c.arch != Arch::Qwen2_5OmniThinker && c.arch != Arch::Qwen2_5_VL && c.arch != Arch::Qwen3OmniMoeThinker)
    fail(c.source, ": --video/--audio/--image need a Qwen2.5-Omni or Qwen3-Omni thinker or Qwen2.5-VL checkpoint, found ",
         arch_name(c.arch));
  out->mm = std::make_unique<MultimodalModel>(*l.model, *l.backend);
  std::vector<int32_t> ids;
  if (a.has("tokens")) {
    chat_prompt_of(a, c, l.dir);  // --think is checked, though --tokens are given as they are
    if (a.has("prompt")) fail("give either --prompt or --tokens, not both");
    ids = parse_token_list(a.str("tokens"));
  } else {
    if (!a.has("prompt")) fail("one of --prompt TEXT or --tokens 1,2,3 is required");
    if (!l.tokenizer) fail(l.dir, ": no tokenizer.json in the model folder; --prompt needs one (use --tokens)");
    ids = multimodal_chat_ids(out->mm->config(), *l.tokenizer, r, a.str("prompt"), a.str("system"),
                              chat_prompt_of(a, c, l.dir).media);
  }
  out->p = prepare_multimodal(*out->mm, r, ids);
  return true;
}

std::string media_summary(const MediaPrompt& m) {
  int count[4] = {0, 0, 0, 0};
  for (uint8_t k : m.p.prefill.modality) ++count[k < 4 ? k : 0];
  const MediaTimings& t = m.p.timings;
  char buf[400];
  std::snprintf(buf, sizeof buf,
                "[prompt: %d text, %d video, %d audio, %d image tokens; decode %.3fs video, %.3fs audio, %.3fs image; "
                "encoders %.3fs vision, %.3fs audio]",
                count[0], count[2], count[3], count[1], t.decode_video, t.decode_audio, t.decode_image, t.vision, t.audio);
  return buf;
}

}  // namespace outro::cli
