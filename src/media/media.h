// Media input: video frames (RGB) and audio (float PCM, 16 kHz mono) decoded with FFmpeg's
// libraries, and still images (png, jpg, anything FFmpeg's image decoders read).
// Errors name the file and say what was expected and what was found.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace outro::media {

// An 8-bit RGB picture, row-major, 3 bytes per pixel.
struct Image {
  int width = 0, height = 0;
  std::vector<uint8_t> rgb;
};

struct VideoInfo {
  double fps = 0;            // average frame rate of the video stream
  int64_t total_frames = 0;  // frames in the video stream
  double duration = 0;       // seconds
  int width = 0, height = 0;
  bool has_audio = false;
  std::string codec;
};

// Probes a video file (counts its frames by reading packets; no decoding).
VideoInfo probe_video(const std::string& path);

// Decodes the frames with the given indices (ascending, < total_frames) as RGB.
std::vector<Image> decode_frames(const std::string& path, const std::vector<int64_t>& indices);

// Decodes the first audio track (of a video or an audio file), resampled to `rate` Hz mono float
// in [-1, 1]. Throws when the file has no audio track ("FILE: no audio track ...").
std::vector<float> decode_audio(const std::string& path, int rate = 16000);

// Loads a still image (png, jpg, ...) as RGB.
Image load_image(const std::string& path);

}  // namespace outro::media
