#include "media/media.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <memory>

#include "core/error.h"

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/channel_layout.h>
#include <libavutil/opt.h>
#include <libavutil/pixdesc.h>
#include <libswresample/swresample.h>
#include <libswscale/swscale.h>
}

namespace outro::media {

namespace {

std::string av_error(int err) {
  char buf[AV_ERROR_MAX_STRING_SIZE] = {0};
  av_strerror(err, buf, sizeof buf);
  return buf;
}

struct FormatCloser {
  void operator()(AVFormatContext* f) const { avformat_close_input(&f); }
};
struct CodecCloser {
  void operator()(AVCodecContext* c) const { avcodec_free_context(&c); }
};
struct FrameFree {
  void operator()(AVFrame* f) const { av_frame_free(&f); }
};
struct PacketFree {
  void operator()(AVPacket* p) const { av_packet_free(&p); }
};
struct SwsFree {
  void operator()(SwsContext* s) const { sws_freeContext(s); }
};
struct SwrFree {
  void operator()(SwrContext* s) const { swr_free(&s); }
};
using FormatPtr = std::unique_ptr<AVFormatContext, FormatCloser>;
using CodecPtr = std::unique_ptr<AVCodecContext, CodecCloser>;
using FramePtr = std::unique_ptr<AVFrame, FrameFree>;
using PacketPtr = std::unique_ptr<AVPacket, PacketFree>;

FormatPtr open_input(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::exists(path, ec)) fail(path, ": media file does not exist");
  if (fs::is_directory(path, ec)) fail(path, ": expected a media file, found a folder");
  av_log_set_level(AV_LOG_QUIET);
  AVFormatContext* f = nullptr;
  int err = avformat_open_input(&f, path.c_str(), nullptr, nullptr);
  if (err < 0) fail(path, ": not a media file FFmpeg can read (", av_error(err), ")");
  FormatPtr fp(f);
  err = avformat_find_stream_info(f, nullptr);
  if (err < 0) fail(path, ": cannot read the stream information (", av_error(err), ")");
  return fp;
}

// Opens the decoder of the best stream of a type; returns its index (or -1 when absent and !required).
int open_stream(AVFormatContext* f, AVMediaType type, CodecPtr* codec, const std::string& path, const char* what) {
  const AVCodec* dec = nullptr;
  int idx = av_find_best_stream(f, type, -1, -1, &dec, 0);
  if (idx < 0) {
    if (idx == AVERROR_DECODER_NOT_FOUND) {
      const AVStream* s = nullptr;
      for (unsigned i = 0; i < f->nb_streams; ++i)
        if (f->streams[i]->codecpar->codec_type == type) s = f->streams[i];
      fail(path, ": ", what, " codec '", s ? avcodec_get_name(s->codecpar->codec_id) : "?",
           "' is not supported by this FFmpeg build");
    }
    return -1;
  }
  if (!codec) return idx;
  AVCodecContext* c = avcodec_alloc_context3(dec);
  if (!c) fail(path, ": out of memory opening the ", what, " decoder");
  codec->reset(c);
  int err = avcodec_parameters_to_context(c, f->streams[idx]->codecpar);
  if (err >= 0) err = avcodec_open2(c, dec, nullptr);
  if (err < 0) fail(path, ": cannot open the ", what, " decoder '", dec->name, "' (", av_error(err), ")");
  return idx;
}

// Runs the decoder over the stream's packets; fn(frame) is called per decoded frame and returns
// false to stop early.
template <typename Fn>
void decode_stream(AVFormatContext* f, AVCodecContext* c, int idx, const std::string& path, const char* what, Fn fn) {
  PacketPtr pkt(av_packet_alloc());
  FramePtr frame(av_frame_alloc());
  bool stop = false;
  int bad = 0;
  auto drain = [&]() {
    while (!stop) {
      int err = avcodec_receive_frame(c, frame.get());
      if (err == AVERROR(EAGAIN) || err == AVERROR_EOF) return;
      if (err < 0) {
        if (++bad > 8) fail(path, ": the ", what, " stream is corrupt (", av_error(err), ")");
        return;
      }
      if (!fn(frame.get())) stop = true;
      av_frame_unref(frame.get());
    }
  };
  while (!stop) {
    int err = av_read_frame(f, pkt.get());
    if (err == AVERROR_EOF) break;
    if (err < 0) {
      if (++bad > 8) fail(path, ": cannot read the file (", av_error(err), ")");
      break;
    }
    if (pkt->stream_index == idx) {
      err = avcodec_send_packet(c, pkt.get());
      if (err < 0 && err != AVERROR(EAGAIN) && ++bad > 8)
        fail(path, ": the ", what, " stream is corrupt (", av_error(err), ")");
      drain();
    }
    av_packet_unref(pkt.get());
  }
  if (!stop) {
    avcodec_send_packet(c, nullptr);
    drain();
  }
}

Image to_rgb(AVFrame* fr, std::unique_ptr<SwsContext, SwsFree>* sws, const std::string& path) {
  Image im;
  im.width = fr->width;
  im.height = fr->height;
  if (im.width <= 0 || im.height <= 0) fail(path, ": decoded a frame of size ", im.width, "x", im.height);
  SwsContext* s = sws_getCachedContext(sws->release(), fr->width, fr->height, AVPixelFormat(fr->format), fr->width,
                                       fr->height, AV_PIX_FMT_RGB24, SWS_BICUBIC | SWS_ACCURATE_RND | SWS_FULL_CHR_H_INT,
                                       nullptr, nullptr, nullptr);
  if (!s) fail(path, ": cannot convert pixel format ", av_get_pix_fmt_name(AVPixelFormat(fr->format)), " to RGB");
  sws->reset(s);
  im.rgb.resize(size_t(im.width) * im.height * 3);
  uint8_t* dst[4] = {im.rgb.data(), nullptr, nullptr, nullptr};
  int stride[4] = {im.width * 3, 0, 0, 0};
  sws_scale(s, fr->data, fr->linesize, 0, fr->height, dst, stride);
  return im;
}

}  // namespace

VideoInfo probe_video(const std::string& path) {
  FormatPtr f = open_input(path);
  int idx = open_stream(f.get(), AVMEDIA_TYPE_VIDEO, nullptr, path, "video");
  if (idx < 0) fail(path, ": no video stream (expected a video file: mp4, mkv, webm, ...)");
  VideoInfo v;
  AVStream* st = f->streams[idx];
  v.width = st->codecpar->width;
  v.height = st->codecpar->height;
  v.codec = avcodec_get_name(st->codecpar->codec_id);
  AVRational r = st->avg_frame_rate.num > 0 ? st->avg_frame_rate : st->r_frame_rate;
  v.fps = r.num > 0 && r.den > 0 ? av_q2d(r) : 0;
  v.has_audio = av_find_best_stream(f.get(), AVMEDIA_TYPE_AUDIO, -1, -1, nullptr, 0) >= 0;
  // Count the frames: packets of the video stream (one frame each for video codecs).
  PacketPtr pkt(av_packet_alloc());
  int64_t n = 0;
  while (av_read_frame(f.get(), pkt.get()) >= 0) {
    if (pkt->stream_index == idx) ++n;
    av_packet_unref(pkt.get());
  }
  v.total_frames = n;
  if (st->duration > 0 && st->time_base.den > 0)
    v.duration = double(st->duration) * av_q2d(st->time_base);
  else if (f->duration > 0)
    v.duration = double(f->duration) / AV_TIME_BASE;
  else if (v.fps > 0)
    v.duration = double(n) / v.fps;
  if (v.fps <= 0 && v.duration > 0) v.fps = double(n) / v.duration;
  if (n == 0) fail(path, ": zero-length clip (the video stream has no frames)");
  if (v.fps <= 0) fail(path, ": cannot tell the frame rate of the video stream");
  return v;
}

std::vector<Image> decode_frames(const std::string& path, const std::vector<int64_t>& indices) {
  FormatPtr f = open_input(path);
  CodecPtr c;
  int idx = open_stream(f.get(), AVMEDIA_TYPE_VIDEO, &c, path, "video");
  if (idx < 0) fail(path, ": no video stream (expected a video file: mp4, mkv, webm, ...)");
  std::vector<Image> out;
  out.reserve(indices.size());
  std::unique_ptr<SwsContext, SwsFree> sws;
  int64_t k = 0;
  size_t next = 0;
  Image last;
  decode_stream(f.get(), c.get(), idx, path, "video", [&](AVFrame* fr) {
    bool need = next < indices.size() && indices[next] == k;
    if (need) {
      Image im = to_rgb(fr, &sws, path);
      while (next < indices.size() && indices[next] == k) {
        out.push_back(im);
        ++next;
      }
    }
    ++k;
    return next < indices.size();
  });
  if (k == 0) fail(path, ": zero-length clip (no video frame could be decoded)");
  // Fewer decodable frames than packets (a truncated file): repeat the last decoded frame.
  while (out.size() < indices.size()) {
    if (out.empty()) fail(path, ": no video frame could be decoded");
    out.push_back(out.back());
  }
  return out;
}

std::vector<float> decode_audio(const std::string& path, int rate) {
  FormatPtr f = open_input(path);
  CodecPtr c;
  int idx = open_stream(f.get(), AVMEDIA_TYPE_AUDIO, &c, path, "audio");
  if (idx < 0) fail(path, ": no audio track (audio was asked for; expected a file with an audio stream)");
  std::unique_ptr<SwrContext, SwrFree> swr;
  AVChannelLayout mono = AV_CHANNEL_LAYOUT_MONO;
  std::vector<float> out;
  auto ensure = [&](AVFrame* fr) {
    if (swr) return;
    SwrContext* s = nullptr;
    AVChannelLayout in_layout;
    if (fr->ch_layout.nb_channels > 0)
      av_channel_layout_copy(&in_layout, &fr->ch_layout);
    else
      av_channel_layout_default(&in_layout, c->ch_layout.nb_channels > 0 ? c->ch_layout.nb_channels : 1);
    int err = swr_alloc_set_opts2(&s, &mono, AV_SAMPLE_FMT_FLT, rate, &in_layout, AVSampleFormat(fr->format),
                                  fr->sample_rate, 0, nullptr);
    av_channel_layout_uninit(&in_layout);
    if (err < 0 || !s || swr_init(s) < 0) {
      swr_free(&s);
      fail(path, ": cannot resample the audio track (", fr->sample_rate, " Hz, ",
           av_get_sample_fmt_name(AVSampleFormat(fr->format)), ") to ", rate, " Hz mono");
    }
    swr.reset(s);
  };
  decode_stream(f.get(), c.get(), idx, path, "audio", [&](AVFrame* fr) {
    ensure(fr);
    const int cap = swr_get_out_samples(swr.get(), fr->nb_samples);
    if (cap <= 0) return true;
    const size_t old = out.size();
    out.resize(old + size_t(cap));
    uint8_t* dst = reinterpret_cast<uint8_t*>(out.data() + old);
    int got = swr_convert(swr.get(), &dst, cap, const_cast<const uint8_t**>(fr->extended_data), fr->nb_samples);
    if (got < 0) fail(path, ": audio resampling failed (", av_error(got), ")");
    out.resize(old + size_t(got));
    return true;
  });
  if (swr) {  // flush the resampler
    const int cap = swr_get_out_samples(swr.get(), 0) + 64;
    const size_t old = out.size();
    out.resize(old + size_t(cap));
    uint8_t* dst = reinterpret_cast<uint8_t*>(out.data() + old);
    int got = swr_convert(swr.get(), &dst, cap, nullptr, 0);
    out.resize(old + size_t(std::max(got, 0)));
  }
  if (out.empty()) fail(path, ": zero-length audio (the audio track has no samples)");
  return out;
}

Image load_image(const std::string& path) {
  FormatPtr f = open_input(path);
  CodecPtr c;
  int idx = open_stream(f.get(), AVMEDIA_TYPE_VIDEO, &c, path, "image");
  if (idx < 0) fail(path, ": not an image (expected png, jpg, ...)");
  std::unique_ptr<SwsContext, SwsFree> sws;
  Image im;
  bool got = false;
  decode_stream(f.get(), c.get(), idx, path, "image", [&](AVFrame* fr) {
    im = to_rgb(fr, &sws, path);
    got = true;
    return false;
  });
  if (!got) fail(path, ": no picture could be decoded (corrupt or empty image)");
  return im;
}

}  // namespace outro::media
