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
  using clock = std::chrono::steady_clock;
  auto encode_vision = [&](const media::PixelValues& px, Modality k, std::vector<EncodedMedia>* out) {
    auto t0 = clock::now();
    out->push_back(mm.encode_vision(px.data.data(), px.grid_t, px.grid_h, px.grid_w, k));
    p.timings.vision += since(t0);
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
  if (!d.audio.empty()) {
    auto t1 = clock::now();
    std::vector<const media::MelFeatures*> clips;
    for (const media::MelFeatures& mel : d.audio) {
      clips.push_back(&mel);
      p.media.audio_frames.push_back(mel.n_frames);
    }
    audios = mm.encode_audio(clips);
    p.timings.audio += since(t1);
  }
  p.prefill = mm.assemble(prompt_ids, p.media, images, videos, audios);
  return p;
}

}  // namespace outro
