// The Qwen2-VL / Qwen2.5-VL / Qwen2.5-Omni visual preprocessing: frame sampling (fps), smart_resize
// (sides multiples of patch * merge, pixel count within [min_pixels, max_pixels]), bicubic resize,
// CLIP mean/std normalisation and patchify into pixel_values [patches, C * T * P * P] with grid_thw.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "media/media.h"

namespace outro::media {

struct VisionParams {
  int patch = 14, merge = 2, temporal = 2;
  int64_t image_min_pixels = 56 * 56, image_max_pixels = 28 * 28 * 1280;
  int64_t video_min_pixels = 128 * 28 * 28, video_max_pixels = 768 * 28 * 28;
  int64_t video_total_pixels = int64_t(128000) * 28 * 28 * 9 / 10;  // qwen-vl-utils' VIDEO_TOTAL_PIXELS
  double fps = 2.0;
  int min_frames = 4, max_frames = 768;
  float mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
  float std[3] = {0.26862954f, 0.26130258f, 0.27577711f};
  int factor() const { return patch * merge; }
};

// (height, width) rounded to multiples of factor with min_pixels <= h * w <= max_pixels; the
// aspect ratio is kept as well as it can be. `what` names the input in errors.
std::pair<int, int> smart_resize(int height, int width, int factor, int64_t min_pixels, int64_t max_pixels,
                                 const std::string& what);

// Frame indices sampled at p.fps (an even count, between min_frames and max_frames, at most
// total_frames), evenly spaced over [0, total_frames - 1] and rounded.
std::vector<int64_t> sample_frame_indices(int64_t total_frames, double video_fps, const VisionParams& p);
// The fps the sampled frames represent (nframes / total_frames * video_fps).
double sampled_fps(int64_t nframes, int64_t total_frames, double video_fps);

// A float RGB picture [3, h, w] (channel planes), values on the 0..255 scale.
struct FloatImage {
  int width = 0, height = 0;
  std::vector<float> chw;
};
// Separable bicubic resize (a = -0.5, support widened when downscaling: antialiased, like PIL and
// torchvision's antialias=True); identity when the size does not change.
FloatImage resize_bicubic(const Image& im, int height, int width);
FloatImage to_float(const Image& im);

struct PixelValues {
  std::vector<float> data;  // [rows, cols]
  int64_t rows = 0, cols = 0;
  int grid_t = 0, grid_h = 0, grid_w = 0;  // in patches
  int tokens(int merge) const { return grid_t * (grid_h / merge) * (grid_w / merge); }
};
// Normalises (x / 255 - mean) / std and cuts the frames (all of one size) into patches; the frame
// count is padded to a multiple of p.temporal by repeating the last frame.
PixelValues patchify(const std::vector<FloatImage>& frames, const VisionParams& p);

// Whole pipelines.
struct VideoInput {
  PixelValues pixels;
  double second_per_grid = 1.0;  // p.temporal / sampled fps
  std::vector<int64_t> indices;
  VideoInfo info;
};
VideoInput process_video(const std::string& path, const VisionParams& p);
// Frames already decoded (tests, the fixture script's frames): resize + patchify.
PixelValues process_video_frames(const std::vector<Image>& frames, const VisionParams& p, const std::string& what);
PixelValues process_image(const Image& im, const VisionParams& p, const std::string& what);

}  // namespace outro::media
