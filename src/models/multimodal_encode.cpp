// The towers' half of a multimodal prompt: encodes decoded media (DecodedMedia) on the backend and
// splices them into the prefill. Apart from multimodal_input.cpp so that a program that makes its
// own pixel values and features (bench_item) needs no media decoding libraries.
#include <chrono>

#include "models/multimodal_input.h"

namespace outro {

namespace {
double since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

PreparedPrompt encode_media(MultimodalModel& mm, const DecodedMedia& d, const std::vector<int32_t>& prompt_ids) {
  PreparedPrompt p;
  p.timings = d.timings;
  p.media.use_audio_in_video = d.request.use_audio_in_video;
  std::vector<EncodedMedia> images, videos, audios;
  const int D = mm.config().vision.out_hidden > 0 ? mm.config().vision.out_hidden : mm.config().audio.out_dim;
  using clock = std::chrono::steady_clock;
  auto encode_vision = [&](const media::PixelValues& px, Modality k, std::vector<EncodedMedia>* out) {
    auto t0 = clock::now();
    EncodedMedia e;
    e.kind = k;
    e.embeds = mm.vision().encode(px.data.data(), px.grid_t, px.grid_h, px.grid_w);
    e.tokens = int(e.embeds.size()) / D;
    p.timings.vision += since(t0);
    out->push_back(std::move(e));
  };
  // Items in placeholder order: video (with its audio), image, audio.
  if (d.has_video) {
    p.media.videos.push_back({d.video.grid_t, d.video.grid_h, d.video.grid_w, d.video_second_per_grid});
    encode_vision(d.video, Modality::Video, &videos);
  }
  if (d.has_image) {
    p.media.images.push_back({d.image.grid_t, d.image.grid_h, d.image.grid_w, 0});
    encode_vision(d.image, Modality::Image, &images);
  }
  for (const media::MelFeatures& mel : d.audio) {
    auto t1 = clock::now();
    EncodedMedia e;
    e.kind = Modality::Audio;
    e.embeds = mm.audio().encode(mel.data.data(), mel.n_frames);
    e.tokens = int(e.embeds.size()) / D;
    p.timings.audio += since(t1);
    p.media.audio_frames.push_back(mel.n_frames);
    audios.push_back(std::move(e));
  }
  p.prefill = mm.assemble(prompt_ids, p.media, images, videos, audios);
  return p;
}

}  // namespace outro
