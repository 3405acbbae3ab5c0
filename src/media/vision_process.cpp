#include "media/vision_process.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace outro::media {

namespace {
int64_t round_by(double x, int f) { return int64_t(std::nearbyint(x / f)) * f; }  // Python round: half to even
int64_t floor_by(double x, int f) { return int64_t(std::floor(x / f)) * f; }
int64_t ceil_by(double x, int f) { return int64_t(std::ceil(x / f)) * f; }
}  // namespace

std::pair<int, int> smart_resize(int height, int width, int factor, int64_t min_pixels, int64_t max_pixels,
                                 const std::string& what) {
  if (height <= 0 || width <= 0) fail(what, ": picture of size ", width, "x", height, " (expected a non-empty picture)");
  if (double(std::max(height, width)) / std::min(height, width) > 200)
    fail(what, ": aspect ratio ", width, "x", height, " is more extreme than 200:1");
  int64_t h = std::max<int64_t>(factor, round_by(height, factor));
  int64_t w = std::max<int64_t>(factor, round_by(width, factor));
  if (h * w > max_pixels) {
    const double beta = std::sqrt(double(height) * width / double(max_pixels));
    h = std::max<int64_t>(factor, floor_by(height / beta, factor));
    w = std::max<int64_t>(factor, floor_by(width / beta, factor));
  } else if (h * w < min_pixels) {
    const double beta = std::sqrt(double(min_pixels) / (double(height) * width));
    h = ceil_by(height * beta, factor);
    w = ceil_by(width * beta, factor);
  }
  return {int(h), int(w)};
}

std::vector<int64_t> sample_frame_indices(int64_t total, double video_fps, const VisionParams& p) {
  if (total <= 0) fail("video: zero-length clip (no frames)");
  const int ff = 2;  // FRAME_FACTOR
  const int64_t min_f = ceil_by(p.min_frames, ff);
  const int64_t max_f = floor_by(double(std::min<int64_t>(p.max_frames, total)), ff);
  int64_t n = round_by(double(total) / video_fps * p.fps, ff);
  n = std::min(std::max(n, min_f), max_f);
  if (n < ff) n = std::min<int64_t>(total, ff);
  if (n <= 0) fail("video: too few frames (", total, ") to sample");
  std::vector<int64_t> idx(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    // torch.linspace(0, total - 1, n) in float32, then round (half to even)
    const float step = n > 1 ? float(total - 1) / float(n - 1) : 0.f;
    float v = i == n - 1 ? float(total - 1) : float(i) * step;
    idx[size_t(i)] = int64_t(std::nearbyint(v));
  }
  return idx;
}

double sampled_fps(int64_t nframes, int64_t total, double video_fps) {
  return double(nframes) / std::max<double>(double(total), 1e-6) * video_fps;
}

FloatImage to_float(const Image& im) {
  FloatImage f;
  f.width = im.width;
  f.height = im.height;
  const size_t hw = size_t(im.width) * im.height;
  f.chw.resize(hw * 3);
  for (size_t i = 0; i < hw; ++i)
    for (int c = 0; c < 3; ++c) f.chw[size_t(c) * hw + i] = float(im.rgb[i * 3 + size_t(c)]);
  return f;
}

namespace {

double cubic(double x) {
  const double a = -0.5;
  x = std::fabs(x);
  if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
  return 0;
}

// Per output index: first input index and normalised weights (PIL's precompute_coeffs).
struct Coeffs {
  std::vector<int> start;
  std::vector<std::vector<double>> w;
};
Coeffs coeffs(int in, int out) {
  Coeffs c;
  const double scale = double(in) / out;
  const double fs = std::max(scale, 1.0);
  const double support = 2.0 * fs;
  for (int i = 0; i < out; ++i) {
    const double center = (i + 0.5) * scale;
    int x0 = std::max(0, int(std::floor(center - support + 0.5)));
    int x1 = std::min(in, int(std::floor(center + support + 0.5)));
    std::vector<double> w;
    double total = 0;
    for (int x = x0; x < x1; ++x) {
      const double v = cubic((x - center + 0.5) / fs);
      w.push_back(v);
      total += v;
    }
    if (total != 0)
      for (auto& v : w) v /= total;
    c.start.push_back(x0);
    c.w.push_back(std::move(w));
  }
  return c;
}

}  // namespace

FloatImage resize_bicubic(const Image& im, int height, int width) {
  if (im.width == width && im.height == height) return to_float(im);
  FloatImage src = to_float(im);
  const Coeffs cx = coeffs(im.width, width), cy = coeffs(im.height, height);
  const size_t shw = size_t(im.width) * im.height;
  std::vector<float> tmp(size_t(3) * im.height * width);  // horizontal pass
  for (int c = 0; c < 3; ++c)
    for (int y = 0; y < im.height; ++y) {
      const float* row = src.chw.data() + size_t(c) * shw + size_t(y) * im.width;
      float* o = tmp.data() + (size_t(c) * im.height + y) * width;
      for (int x = 0; x < width; ++x) {
        double s = 0;
        const auto& w = cx.w[size_t(x)];
        for (size_t k = 0; k < w.size(); ++k) s += w[k] * row[cx.start[size_t(x)] + int(k)];
        o[x] = float(s);
      }
    }
  FloatImage out;
  out.width = width;
  out.height = height;
  out.chw.resize(size_t(3) * height * width);
  for (int c = 0; c < 3; ++c)
    for (int y = 0; y < height; ++y) {
      const auto& w = cy.w[size_t(y)];
      float* o = out.chw.data() + (size_t(c) * height + y) * width;
      for (int x = 0; x < width; ++x) {
        double s = 0;
        for (size_t k = 0; k < w.size(); ++k)
          s += w[k] * tmp[(size_t(c) * im.height + size_t(cy.start[size_t(y)] + int(k))) * width + x];
        o[x] = float(s);
      }
    }
  return out;
}

PixelValues patchify(const std::vector<FloatImage>& frames_in, const VisionParams& p) {
  if (frames_in.empty()) fail("patchify: no frames");
  const int H = frames_in[0].height, W = frames_in[0].width, P = p.patch, M = p.merge, T = p.temporal;
  for (const auto& f : frames_in)
    if (f.height != H || f.width != W) fail("patchify: frames of different sizes (", W, "x", H, " and ", f.width, "x", f.height, ")");
  if (H % (P * M) || W % (P * M)) fail("patchify: size ", W, "x", H, " is not a multiple of ", P * M);
  std::vector<const FloatImage*> frames;
  for (const auto& f : frames_in) frames.push_back(&f);
  while (frames.size() % size_t(T)) frames.push_back(frames.back());
  PixelValues pv;
  pv.grid_t = int(frames.size()) / T;
  pv.grid_h = H / P;
  pv.grid_w = W / P;
  pv.cols = int64_t(3) * T * P * P;
  pv.rows = int64_t(pv.grid_t) * pv.grid_h * pv.grid_w;
  pv.data.resize(size_t(pv.rows * pv.cols));
  float scale[3], shift[3];
  for (int c = 0; c < 3; ++c) {
    scale[c] = 1.f / p.std[c];
    shift[c] = p.mean[c];
  }
  const size_t hw = size_t(H) * W;
  size_t r = 0;
  // Row order: (t, h-block, w-block, h-in-block, w-in-block); column order: (c, t', y, x).
  for (int t = 0; t < pv.grid_t; ++t)
    for (int hb = 0; hb < pv.grid_h / M; ++hb)
      for (int wb = 0; wb < pv.grid_w / M; ++wb)
        for (int hm = 0; hm < M; ++hm)
          for (int wm = 0; wm < M; ++wm, ++r) {
            float* row = pv.data.data() + r * size_t(pv.cols);
            const int y0 = (hb * M + hm) * P, x0 = (wb * M + wm) * P;
            size_t k = 0;
            for (int c = 0; c < 3; ++c)
              for (int tt = 0; tt < T; ++tt) {
                const float* plane = frames[size_t(t * T + tt)]->chw.data() + size_t(c) * hw;
                for (int y = 0; y < P; ++y)
                  for (int x = 0; x < P; ++x, ++k)
                    row[k] = (plane[size_t(y0 + y) * W + size_t(x0 + x)] / 255.f - shift[c]) * scale[c];
              }
          }
  return pv;
}

PixelValues process_video_frames(const std::vector<Image>& frames, const VisionParams& p, const std::string& what) {
  if (frames.empty()) fail(what, ": zero-length clip (no frames)");
  const int64_t n = int64_t(frames.size());
  const int64_t max_pixels = std::max<int64_t>(
      std::min<int64_t>(p.video_max_pixels, int64_t(double(p.video_total_pixels) / double(n) * 2)),
      int64_t(double(p.video_min_pixels) * 1.05));
  auto [h, w] = smart_resize(frames[0].height, frames[0].width, p.factor(), p.video_min_pixels, max_pixels, what);
  std::vector<FloatImage> fl;
  fl.reserve(frames.size());
  for (const auto& f : frames) {
    if (f.width != frames[0].width || f.height != frames[0].height)
      fail(what, ": frames change size within the clip (", frames[0].width, "x", frames[0].height, " then ", f.width,
           "x", f.height, ")");
    fl.push_back(resize_bicubic(f, h, w));
  }
  return patchify(fl, p);
}

PixelValues process_image(const Image& im, const VisionParams& p, const std::string& what) {
  auto [h, w] = smart_resize(im.height, im.width, p.factor(), p.image_min_pixels, p.image_max_pixels, what);
  FloatImage f = resize_bicubic(im, h, w);
  if (f.width != im.width || f.height != im.height)  // PIL returns 8-bit pixels
    for (auto& v : f.chw) v = std::nearbyint(std::clamp(v, 0.f, 255.f));
  return patchify({f}, p);
}

VideoInput process_video(const std::string& path, const VisionParams& p) {
  VideoInput v;
  v.info = probe_video(path);
  v.indices = sample_frame_indices(v.info.total_frames, v.info.fps, p);
  std::vector<Image> frames = decode_frames(path, v.indices);
  v.pixels = process_video_frames(frames, p, path);
  const double fps = sampled_fps(int64_t(v.indices.size()), v.info.total_frames, v.info.fps);
  v.second_per_grid = double(p.temporal) / fps;
  return v;
}

}  // namespace outro::media
