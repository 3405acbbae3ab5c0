// Qwen3-Omni's prompt rules: the processor's placeholder expansion (a video with its own audio
// becomes <|vision_start|><|audio_start|> + video and audio tokens merged by time + <|audio_end|>
// <|vision_end|>) and the thinker's get_rope_index (transformers 5.17), for multimodal.cpp.
#include <algorithm>
#include <array>
#include <cmath>

#include "core/error.h"
#include "models/multimodal.h"
#include "models/qwen3_omni_towers.h"

namespace outro {

namespace {

int vision_tokens(const Grid& g, int merge) { return g.t * (g.h / merge) * (g.w / merge); }

// Temporal position of each temporal slice of a video: t * second_per_grid * position_id_per_seconds
// (float32, as the reference computes it); positions here are integers, so a fractional one is refused.
std::vector<long long> video_t_index(const Grid& g, double pps) {
  std::vector<long long> out;
  for (int t = 0; t < g.t; ++t) {
    const float v = float(t) * float(g.second_per_grid) * float(pps);
    if (std::fabs(v - std::round(v)) > 1e-4f)
      fail("Qwen3-Omni positions: a video's temporal position ", v, " (slice ", t, " x second_per_grid ",
           g.second_per_grid, " x position_id_per_seconds ", pps, ") is not an integer; give a second per grid ",
           "that makes it one (e.g. 1.0: temporal_patch_size 2 at 2 fps)");
    out.push_back((long long)std::lround(v));
  }
  return out;
}

}  // namespace

ExpandedPrompt qwen3_expand_placeholders(const std::vector<int32_t>& ids, const MultimodalConfig& c, const MediaSet& m,
                                         int merge) {
  ExpandedPrompt out;
  size_t ii = 0, vi = 0, ai = 0;
  auto push = [&](int32_t id, Modality k, int count) {
    for (int i = 0; i < count; ++i) {
      out.ids.push_back(id);
      out.modality.push_back(uint8_t(k));
    }
  };
  for (size_t p = 0; p < ids.size(); ++p) {
    const int32_t id = ids[p];
    if (id == c.audio_token) {
      if (ai >= m.audio_frames.size()) fail("prompt: more audio placeholders than audio clips (", m.audio_frames.size(), ")");
      push(id, Modality::Audio, qwen3_audio_tokens(m.audio_frames[ai++], c.audio.n_window));
    } else if (id == c.image_token) {
      if (ii >= m.images.size()) fail("prompt: more image placeholders than images (", m.images.size(), ")");
      push(id, Modality::Image, vision_tokens(m.images[ii++], merge));
    } else if (id == c.video_token) {
      if (vi >= m.videos.size()) fail("prompt: more video placeholders than videos (", m.videos.size(), ")");
      const Grid& g = m.videos[vi++];
      if (!m.use_audio_in_video) {
        push(id, Modality::Video, vision_tokens(g, merge));
        continue;
      }
      if (out.ids.empty() || out.ids.back() != c.vision_start || p + 1 >= ids.size() || ids[p + 1] != c.vision_end)
        fail("prompt: with the video's own audio, each video placeholder must sit between <|vision_start|> and "
             "<|vision_end|>");
      if (ai >= m.audio_frames.size()) fail("prompt: the video has no audio clip to interleave (use_audio_in_video)");
      const int na = qwen3_audio_tokens(m.audio_frames[ai++], c.audio.n_window);
      // The processor's order: a video token (t index * second_per_grid * its position_id_per_seconds)
      // goes before the audio token i when its time is <= i.
      const int per_t = (g.h / merge) * (g.w / merge);
      std::vector<double> vt;
      for (int t = 0; t < g.t; ++t)
        for (int k = 0; k < per_t; ++k) vt.push_back(double(t) * g.second_per_grid * c.processor_position_id_per_seconds);
      push(c.audio_start, Modality::Text, 1);
      size_t a = 0, v = 0;
      while (v < vt.size() && a < size_t(na)) {
        if (vt[v] <= double(a)) {
          push(c.video_token, Modality::Video, 1);
          ++v;
        } else {
          push(c.audio_token, Modality::Audio, 1);
          ++a;
        }
      }
      push(c.video_token, Modality::Video, int(vt.size() - v));
      push(c.audio_token, Modality::Audio, int(size_t(na) - a));
      push(c.audio_end, Modality::Text, 1);
    } else {
      push(id, Modality::Text, 1);
    }
  }
  if (ii != m.images.size()) fail("prompt: ", m.images.size(), " images given but ", ii, " image placeholders");
  if (vi != m.videos.size()) fail("prompt: ", m.videos.size(), " videos given but ", vi, " video placeholders");
  if (ai != m.audio_frames.size())
    fail("prompt: ", m.audio_frames.size(), " audio clips given but ", ai, " audio placeholders");
  return out;
}

std::vector<int32_t> qwen3_positions(const std::vector<int32_t>& ids, const MultimodalConfig& c, const MediaSet& m,
                                     int merge) {
  const long long n = (long long)ids.size();
  std::vector<int32_t> T, Hh, W;
  long long last_max = -1;
  bool any = false;
  auto st_idx = [&] { return any ? last_max + 1 : 0; };
  // One of the reference's llm_pos_ids_list entries: its max is the base of what follows.
  auto piece = [&](const std::vector<std::array<long long, 3>>& cols) {
    if (cols.empty()) return;
    long long mx = -1;
    for (auto& a : cols) {
      T.push_back(int32_t(a[0]));
      Hh.push_back(int32_t(a[1]));
      W.push_back(int32_t(a[2]));
      mx = std::max({mx, a[0], a[1], a[2]});
    }
    last_max = mx;
    any = true;
  };
  auto run = [](long long len, long long base) {
    std::vector<std::array<long long, 3>> v;
    for (long long i = 0; i < len; ++i) v.push_back({base + i, base + i, base + i});
    return v;
  };
  auto vision = [&](const Grid& g, const std::vector<long long>& ti, long long base) {
    std::vector<std::array<long long, 3>> v;
    const int lh = g.h / merge, lw = g.w / merge;
    for (int t = 0; t < g.t; ++t)
      for (int y = 0; y < lh; ++y)
        for (int x = 0; x < lw; ++x) v.push_back({ti[size_t(t)] + base, y + base, x + base});
    return v;
  };
  auto find = [&](int32_t tok, long long from) {
    for (long long i = std::max(0LL, from); i < n; ++i)
      if (ids[size_t(i)] == tok) return i;
    fail("prompt positions: no ", tok == c.vision_start ? "<|vision_start|>" : "<|audio_start|>",
         " after token ", from, " for the remaining media");
  };
  const bool aiv = m.use_audio_in_video;
  int n_img = 0, n_vid = 0, n_aud = 0;
  bool has_iv = false, has_a = false;
  for (long long i = 0; i < n; ++i) {
    const int32_t id = ids[size_t(i)];
    has_iv |= id == c.image_token || id == c.video_token;
    has_a |= id == c.audio_token;
    n_aud += id == c.audio_start;
    if (id == c.vision_start && i + 1 < n) {
      const int32_t nx = ids[size_t(i + 1)];
      n_img += nx == c.image_token;
      n_vid += aiv ? nx == c.audio_start : nx == c.video_token;
    }
  }
  int rem_i = n_img, rem_v = n_vid, rem_a = n_aud;
  size_t ii = 0, vi = 0, ai = 0;
  const double pps = c.position_id_per_seconds;
  auto audio_len = [&]() -> long long {
    if (ai >= m.audio_frames.size()) fail("prompt positions: more audio blocks than audio clips (", m.audio_frames.size(), ")");
    return qwen3_audio_tokens(m.audio_frames[ai++], c.audio.n_window);
  };
  long long st = 0;
  const int total = aiv ? n_img + n_aud : n_img + n_vid + n_aud;
  for (int k = 0; k < total; ++k) {
    const long long ed_v = has_iv && (rem_v > 0 || rem_i > 0) ? find(c.vision_start, st) : n + 1;
    const long long ed_a = has_a && rem_a > 0 ? find(c.audio_start, st) : n + 1;
    const long long ed = std::min(ed_v, ed_a);
    if (ed > n) fail("prompt positions: a media block has no start token");
    const long long text_len = ed - st;
    piece(run(text_len, st_idx()));
    const bool av_block = ed == ed_v && ed_v + 1 == ed_a;
    const long long edge = av_block ? 2 : 1;
    piece(run(edge, st_idx()));
    const long long base = st_idx();
    if (ed == ed_a) {
      const long long na = audio_len();
      piece(run(na, base));
      st += text_len + edge + na + edge;
      --rem_a;
    } else if (ed + 1 < n && ids[size_t(ed + 1)] == c.image_token) {
      if (ii >= m.images.size()) fail("prompt positions: more image blocks than images (", m.images.size(), ")");
      const Grid& g = m.images[ii++];
      std::vector<long long> ti;
      for (int t = 0; t < g.t; ++t) ti.push_back((long long)t * (long long)pps);
      piece(vision(g, ti, base));
      st += text_len + edge + vision_tokens(g, merge) + edge;
      --rem_i;
    } else if (ed + 1 < n && ids[size_t(ed + 1)] == c.video_token) {
      if (vi >= m.videos.size()) fail("prompt positions: more video blocks than videos (", m.videos.size(), ")");
      const Grid& g = m.videos[vi++];
      piece(vision(g, video_t_index(g, pps), base));
      st += text_len + edge + vision_tokens(g, merge) + edge;
      --rem_v;
    } else if (av_block) {
      if (vi >= m.videos.size()) fail("prompt positions: more video blocks than videos (", m.videos.size(), ")");
      const long long na = audio_len();
      const Grid& g = m.videos[vi++];
      auto ap = run(na, base);
      auto vp = vision(g, video_t_index(g, pps), base);
      size_t a = 0, v = 0;
      while (v < vp.size() && a < ap.size()) {
        if (vp[v][0] <= ap[a][0])
          piece({vp[v++]});
        else
          piece({ap[a++]});
      }
      piece(std::vector<std::array<long long, 3>>(vp.begin() + long(v), vp.end()));
      piece(std::vector<std::array<long long, 3>>(ap.begin() + long(a), ap.end()));
      st += text_len + edge + na + (long long)vp.size() + edge;
      --rem_v;
      --rem_a;
    } else {
      fail("prompt positions: the token after <|vision_start|> at ", ed, " is neither an image, a video nor ",
           "<|audio_start|>");
    }
    piece(run(edge, st_idx()));
  }
  if (st < n) piece(run(n - st, st_idx()));
  if ((long long)T.size() != n)
    fail("prompt positions: computed ", T.size(), " positions for ", n, " tokens (placeholders and media disagree)");
  std::vector<int32_t> out;
  out.reserve(size_t(3 * n));
  out.insert(out.end(), T.begin(), T.end());
  out.insert(out.end(), Hh.begin(), Hh.end());
  out.insert(out.end(), W.begin(), W.end());
  return out;
}

}  // namespace outro
