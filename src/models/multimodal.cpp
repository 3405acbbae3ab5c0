#include "models/multimodal.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "runtime/session.h"

namespace outro {

const char* modality_name(Modality m) {
  switch (m) {
    case Modality::Text: return "text";
    case Modality::Image: return "image";
    case Modality::Video: return "video";
    case Modality::Audio: return "audio";
  }
  return "?";
}

namespace {

// [start, end) index ranges of a monotone list split where values cross multiples of per_chunk
// (the reference's get_chunked_index: one boundary per crossing token).
std::vector<std::pair<int, int>> chunked(const std::vector<double>& v, int per_chunk) {
  std::vector<std::pair<int, int>> out;
  int start = 0, cur = 1;
  for (int i = 0; i < int(v.size()); ++i)
    if (v[size_t(i)] >= double(cur) * per_chunk) {
      out.push_back({start, i});
      start = i;
      ++cur;
    }
  out.push_back({start, int(v.size())});
  return out;
}

int vision_tokens(const Grid& g, int merge) { return g.t * (g.h / merge) * (g.w / merge); }

// Temporal index of each merged video token (t-major), in position-id units (not truncated).
std::vector<double> video_time(const Grid& g, int merge, double per_second) {
  std::vector<double> v;
  const int per_t = (g.h / merge) * (g.w / merge);
  for (int t = 0; t < g.t; ++t)
    for (int k = 0; k < per_t; ++k) v.push_back(double(t) * g.second_per_grid * per_second);
  return v;
}

}  // namespace

ExpandedPrompt expand_placeholders(const std::vector<int32_t>& ids, const MultimodalConfig& c, const MediaSet& m,
                                   int merge) {
  if (c.family == MmFamily::Qwen3Omni) return qwen3_expand_placeholders(ids, c, m, merge);
  ExpandedPrompt out;
  size_t ii = 0, vi = 0, ai = 0;
  auto push = [&](int32_t id, Modality k, int count) {
    for (int i = 0; i < count; ++i) {
      out.ids.push_back(id);
      out.modality.push_back(uint8_t(k));
    }
  };
  const int per_chunk = int(c.position_id_per_seconds * c.seconds_per_chunk);
  for (size_t p = 0; p < ids.size(); ++p) {
    const int32_t id = ids[p];
    if (c.omni && id == c.audio_token) {
      if (ai >= m.audio_frames.size())
        fail("prompt: more audio placeholders than audio clips (", m.audio_frames.size(), ")");
      push(id, Modality::Audio, media::audio_tokens(m.audio_frames[ai++]));
    } else if (id == c.image_token) {
      if (ii >= m.images.size()) fail("prompt: more image placeholders than images (", m.images.size(), ")");
      push(id, Modality::Image, vision_tokens(m.images[ii++], merge));
    } else if (id == c.video_token) {
      if (vi >= m.videos.size()) fail("prompt: more video placeholders than videos (", m.videos.size(), ")");
      const Grid& g = m.videos[vi++];
      if (!c.omni || !m.use_audio_in_video) {
        push(id, Modality::Video, vision_tokens(g, merge));
        continue;
      }
      if (out.ids.empty() || out.ids.back() != c.vision_start || p + 1 >= ids.size() || ids[p + 1] != c.vision_end)
        fail("prompt: with the video's own audio, each video placeholder must sit between <|vision_bos|> and <|vision_eos|>");
      if (ai >= m.audio_frames.size()) fail("prompt: the video has no audio clip to interleave (use_audio_in_video)");
      const int na = media::audio_tokens(m.audio_frames[ai++]);
      std::vector<double> at(static_cast<size_t>(na));
      for (int i = 0; i < na; ++i) at[size_t(i)] = i;
      auto vch = chunked(video_time(g, merge, c.position_id_per_seconds), per_chunk), ach = chunked(at, per_chunk);
      push(c.audio_start, Modality::Text, 1);
      for (size_t j = 0; j < std::max(vch.size(), ach.size()); ++j) {
        if (j < vch.size()) push(c.video_token, Modality::Video, vch[j].second - vch[j].first);
        if (j < ach.size()) push(c.audio_token, Modality::Audio, ach[j].second - ach[j].first);
      }
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

namespace {

struct Pos {
  std::vector<int32_t> t, h, w;
  long long last_max = -1;
  bool any = false;
  long long st_idx() const { return any ? last_max + 1 : 0; }
  void add(long long a, long long b, long long c) {
    t.push_back(int32_t(a));
    h.push_back(int32_t(b));
    w.push_back(int32_t(c));
  }
  // A chunk: its max becomes the base of the next one (the reference's llm_pos_ids_list[-1].max()).
  void chunk_done(long long mx) {
    last_max = mx;
    any = true;
  }
  void text(long long len, long long base) {
    if (len <= 0) return;
    for (long long i = 0; i < len; ++i) add(base + i, base + i, base + i);
    chunk_done(base + len - 1);
  }
};

// Vision positions (t, h, w) + base for a grid; t_index per temporal slice.
void vision_positions(const Grid& g, int merge, const std::vector<long long>& t_index, long long base,
                      std::vector<std::array<long long, 3>>* out) {
  const int lh = g.h / merge, lw = g.w / merge;
  for (int t = 0; t < g.t; ++t)
    for (int y = 0; y < lh; ++y)
      for (int x = 0; x < lw; ++x) out->push_back({t_index[size_t(t)] + base, y + base, x + base});
}

long long find_from(const std::vector<int32_t>& ids, int32_t tok, long long st) {
  for (long long i = std::max(0LL, st); i < (long long)ids.size(); ++i)
    if (ids[size_t(i)] == tok) return i;
  return (long long)ids.size() + 1;
}

}  // namespace

std::vector<int32_t> multimodal_positions(const std::vector<int32_t>& ids, const MultimodalConfig& c, const MediaSet& m,
                                          int merge) {
  if (c.family == MmFamily::Qwen3Omni) return qwen3_positions(ids, c, m, merge);
  const long long n = (long long)ids.size();
  Pos P;
  long long st = 0;
  int n_img = 0, n_vid = 0, n_aud = 0;
  for (long long i = 0; i + 1 < n; ++i)
    if (ids[size_t(i)] == c.vision_start) {
      const int32_t nx = ids[size_t(i + 1)];
      if (nx == c.image_token) ++n_img;
      if (c.omni && m.use_audio_in_video ? nx == c.audio_start : nx == c.video_token) ++n_vid;
    }
  if (c.omni)
    for (auto id : ids)
      if (id == c.audio_start) ++n_aud;
  size_t ii = 0, vi = 0, ai = 0;
  int rem_i = n_img, rem_v = n_vid, rem_a = n_aud;
  auto bad = [&](const char* what, size_t have) {
    fail("prompt positions: more ", what, " blocks than ", what, " inputs (", have, ")");
  };
  if (!c.omni) {  // Qwen2.5-VL (M-RoPE)
    for (int k = 0; k < n_img + n_vid; ++k) {
      const long long ed_i = rem_i > 0 ? find_from(ids, c.image_token, st) : n + 1;
      const long long ed_v = rem_v > 0 ? find_from(ids, c.video_token, st) : n + 1;
      Grid g;
      double spg = 0;
      long long ed;
      if (ed_i < ed_v) {
        if (ii >= m.images.size()) bad("image", m.images.size());
        g = m.images[ii++];
        --rem_i;
        ed = ed_i;
      } else {
        if (vi >= m.videos.size()) bad("video", m.videos.size());
        g = m.videos[vi++];
        spg = g.second_per_grid;
        --rem_v;
        ed = ed_v;
      }
      if (ed > n) fail("prompt positions: a vision block has no placeholder token");
      const long long text_len = ed - st;
      const long long base0 = P.st_idx();
      P.text(text_len, base0);
      std::vector<long long> ti(size_t(g.t));
      for (int t = 0; t < g.t; ++t) ti[size_t(t)] = (long long)(double(t) * spg * c.vision.tokens_per_second);
      std::vector<std::array<long long, 3>> vp;
      vision_positions(g, merge, ti, text_len + base0, &vp);
      for (auto& a : vp) P.add(a[0], a[1], a[2]);
      // transformers 5.17: the text after a picture or clip starts max(h, w) / merge past its
      // start (the original Qwen2.5-VL code used the block's largest position + 1, which differs
      // for videos whose temporal index outgrows the spatial ones).
      if (!vp.empty()) P.chunk_done(text_len + base0 + std::max(g.h, g.w) / merge - 1);
      st = ed + (long long)vp.size();
    }
  } else {  // Qwen2.5-Omni (TMRoPE)
    const bool uav = m.use_audio_in_video;
    const int total = uav ? n_img + n_aud : n_img + n_vid + n_aud;
    const double pps = c.position_id_per_seconds;
    const int per_chunk = int(pps * c.seconds_per_chunk);
    for (int k = 0; k < total; ++k) {
      const long long ed_i = rem_i > 0 ? find_from(ids, c.image_token, st) : n + 1;
      const long long ed_v = rem_v > 0 ? find_from(ids, c.video_token, st) : n + 1;
      const long long ed_a = rem_a > 0 ? find_from(ids, c.audio_token, st) : n + 1;
      const long long ed = std::min({ed_i, ed_v, ed_a});
      if (ed > n) fail("prompt positions: a media block has no placeholder token");
      auto one = [&](long long base) {
        P.add(base, base, base);
        P.chunk_done(base);
      };
      auto add_chunk = [&](const std::vector<std::array<long long, 3>>& v, int b, int e) {
        long long mx = -1;
        for (int i = b; i < e; ++i) {
          P.add(v[size_t(i)][0], v[size_t(i)][1], v[size_t(i)][2]);
          mx = std::max({mx, v[size_t(i)][0], v[size_t(i)][1], v[size_t(i)][2]});
        }
        if (e > b) P.chunk_done(mx);
      };
      if (ed == ed_a) {
        if (ai >= m.audio_frames.size()) bad("audio", m.audio_frames.size());
        const long long text_len = ed - st - 1;
        P.text(text_len, P.st_idx());
        one(P.st_idx());
        const long long na = media::audio_tokens(m.audio_frames[ai++]);
        P.text(na, P.st_idx());
        one(P.st_idx());
        st += text_len + 2 + na;
        --rem_a;
      } else if (ed == ed_i || !uav) {
        const bool img = ed == ed_i;
        if (img && ii >= m.images.size()) bad("image", m.images.size());
        if (!img && vi >= m.videos.size()) bad("video", m.videos.size());
        const Grid g = img ? m.images[ii++] : m.videos[vi++];
        const long long text_len = ed - st - 1;
        P.text(text_len, P.st_idx());
        one(P.st_idx());
        std::vector<long long> ti(size_t(g.t));
        for (int t = 0; t < g.t; ++t)
          ti[size_t(t)] = img ? (long long)t * (long long)pps
                              : (long long)(float(t) * float(g.second_per_grid) * float(pps));
        std::vector<std::array<long long, 3>> vp;
        vision_positions(g, merge, ti, P.st_idx(), &vp);
        add_chunk(vp, 0, int(vp.size()));
        one(P.st_idx());
        st += text_len + 2 + (long long)vp.size();
        if (img)
          --rem_i;
        else
          --rem_v;
      } else {  // a video with its own audio, interleaved in time chunks
        if (vi >= m.videos.size()) bad("video", m.videos.size());
        if (ai >= m.audio_frames.size()) bad("audio", m.audio_frames.size());
        const Grid g = m.videos[vi++];
        const long long text_len = ed - st - 2;
        P.text(text_len, P.st_idx());
        const long long b0 = P.st_idx();
        one(b0);
        one(b0);
        const long long base = P.st_idx();
        const long long na = media::audio_tokens(m.audio_frames[ai++]);
        std::vector<std::array<long long, 3>> ap;
        std::vector<double> av;
        for (long long i = 0; i < na; ++i) {
          ap.push_back({base + i, base + i, base + i});
          av.push_back(double(i));
        }
        std::vector<long long> ti(size_t(g.t));
        for (int t = 0; t < g.t; ++t) ti[size_t(t)] = (long long)(float(t) * float(g.second_per_grid) * float(pps));
        std::vector<std::array<long long, 3>> vp;
        vision_positions(g, merge, ti, base, &vp);
        std::vector<double> vt;
        for (auto& a : vp) vt.push_back(double(a[0] - base));
        auto vch = chunked(vt, per_chunk), ach = chunked(av, per_chunk);
        for (size_t j = 0; j < std::max(vch.size(), ach.size()); ++j) {
          if (j < vch.size()) add_chunk(vp, vch[j].first, vch[j].second);
          if (j < ach.size()) add_chunk(ap, ach[j].first, ach[j].second);
        }
        const long long e0 = P.st_idx();
        one(e0);
        one(e0);
        st += text_len + 4 + na + (long long)vp.size();
        --rem_a;
        --rem_v;
      }
    }
  }
  if (st < n) P.text(n - st, P.st_idx());
  if ((long long)P.t.size() != n)
    fail("prompt positions: computed ", P.t.size(), " positions for ", n, " tokens (placeholders and media disagree)");
  std::vector<int32_t> out;
  out.reserve(size_t(3 * n));
  out.insert(out.end(), P.t.begin(), P.t.end());
  out.insert(out.end(), P.h.begin(), P.h.end());
  out.insert(out.end(), P.w.begin(), P.w.end());
  return out;
}

MultimodalModel::MultimodalModel(const Model& m, Backend& be) : model_(m) {
  c_ = load_multimodal_config(m.dir());
  const int D = m.config().hidden;
  if (c_.has_vision) {
    if (c_.vision.out_hidden != D)
      fail(c_.source, ": field ", c_.section, "vision_config.out_hidden_size: expected the decoder's hidden_size ", D, ", found ",
           c_.vision.out_hidden);
    if (c_.family == MmFamily::Qwen3Omni) {
      if (c_.vision.deepstack.size() > size_t(m.config().layers))
        fail(c_.source, ": field ", c_.section, "vision_config.deepstack_visual_indexes: ", c_.vision.deepstack.size(),
             " DeepStack features but the decoder has ", m.config().layers, " layers");
      vision3_ = std::make_unique<Qwen3VisionEncoder>(c_.vision, m.store(), be);
    } else {
      vision_ = std::make_unique<VisionEncoder>(c_.vision, m.store(), be);
    }
  }
  if (c_.has_audio) {
    if (c_.audio.out_dim != D)
      fail(c_.source, ": field ", c_.section, "audio_config.output_dim: expected the decoder's hidden_size ", D, ", found ", c_.audio.out_dim);
    if (c_.family == MmFamily::Qwen3Omni)
      audio3_ = std::make_unique<Qwen3AudioEncoder>(c_.audio, m.store(), be);
    else
      audio_ = std::make_unique<AudioEncoder>(c_.audio, m.store(), be);
  }
}

EncodedMedia MultimodalModel::encode_vision(const float* px, int t, int h, int w, Modality kind) {
  EncodedMedia e;
  e.kind = kind;
  if (vision3_) {
    Qwen3VisionOut o = vision3_->encode(px, t, h, w);
    e.embeds = std::move(o.embeds);
    e.deepstack = std::move(o.deepstack);
  } else {
    e.embeds = vision().encode(px, t, h, w);
  }
  e.tokens = int(e.embeds.size() / size_t(model_.config().hidden));
  return e;
}

std::vector<EncodedMedia> MultimodalModel::encode_audio(const std::vector<const media::MelFeatures*>& clips) {
  std::vector<EncodedMedia> out;
  const size_t D = size_t(model_.config().hidden);
  auto add = [&](std::vector<float> v) {
    EncodedMedia e;
    e.kind = Modality::Audio;
    e.tokens = int(v.size() / D);
    e.embeds = std::move(v);
    out.push_back(std::move(e));
  };
  if (audio3_) {
    std::vector<Qwen3AudioEncoder::Clip> cl;
    for (const auto* m : clips) cl.push_back({m->data.data(), m->n_frames, m->n_mels});
    for (auto& v : audio3_->encode(cl)) add(std::move(v));
  } else {
    for (const auto* m : clips) add(audio().encode(m->data.data(), m->n_frames));
  }
  return out;
}

bool has_media_towers(const Model& m) {
  for (const char* p : {"", "model.", "thinker."})
    for (const char* t : {"visual.patch_embed.proj.weight", "audio_tower.conv1.weight", "audio_tower.conv2d1.weight"})
      if (m.store().has(std::string(p) + t)) return true;
  return false;
}

void feed_prefill(Session& s, const MultimodalPrefill& p, std::vector<float>* logits, bool all_rows) {
  if (!p.deepstack.empty()) s.set_deepstack(p.deepstack, p.deepstack_rows);
  s.forward_embeds(p.ids.data(), int(p.ids.size()), p.embeds.data(), p.modality.data(), p.positions.data(), logits,
                   all_rows);
}

VisionEncoder& MultimodalModel::vision() {
  if (vision3_) fail(model_.dir(), ": Qwen3-Omni's vision tower is not the Qwen2.5 one (use encode_vision)");
  if (!vision_) fail(model_.dir(), ": this model has no vision tower (config.json has no vision_config)");
  return *vision_;
}
AudioEncoder& MultimodalModel::audio() {
  if (audio3_) fail(model_.dir(), ": Qwen3-Omni's audio tower is not the Qwen2.5 one (use encode_audio)");
  if (!audio_) fail(model_.dir(), ": this model has no audio tower (Qwen2.5-Omni thinker checkpoints have one)");
  return *audio_;
}

namespace {

// Reads a processor section's pixel budget, frame limits and normalisation into p (image or
// video side). Accepts both spellings the Qwen processors save: size.{shortest,longest}_edge
// (pixel counts, transformers 5) and top-level min_pixels / max_pixels.
void read_processor_section(const nlohmann::json& j, const std::string& where, bool video, media::VisionParams& p) {
  if (!j.is_object()) fail(where, ": expected an object, found ", j.type_name());
  auto count = [&](const nlohmann::json& v, const std::string& key) -> int64_t {
    if (!v.is_number() || v.get<double>() < 1 || v.get<double>() > 1e12)
      fail(where, ": '", key, "' must be a positive pixel count, found ", v.dump());
    return int64_t(v.get<double>());
  };
  int64_t lo = -1, hi = -1;
  if (j.contains("size") && j["size"].is_object()) {
    const auto& s = j["size"];
    if (s.contains("shortest_edge")) lo = count(s["shortest_edge"], "size.shortest_edge");
    if (s.contains("longest_edge")) hi = count(s["longest_edge"], "size.longest_edge");
  }
  if (j.contains("min_pixels") && !j["min_pixels"].is_null()) lo = count(j["min_pixels"], "min_pixels");
  if (j.contains("max_pixels") && !j["max_pixels"].is_null()) hi = count(j["max_pixels"], "max_pixels");
  int64_t& dlo = video ? p.video_min_pixels : p.image_min_pixels;
  int64_t& dhi = video ? p.video_max_pixels : p.image_max_pixels;
  if (lo > 0) dlo = lo;
  if (hi > 0) dhi = hi;
  if (dlo > dhi) fail(where, ": min pixels ", dlo, " is larger than max pixels ", dhi);
  for (const char* k : {"image_mean", "image_std"}) {
    if (!j.contains(k)) continue;
    const auto& v = j[k];
    if (!v.is_array() || v.size() != 3 || !v[0].is_number() || !v[1].is_number() || !v[2].is_number())
      fail(where, ": '", k, "' must be 3 numbers, found ", v.dump());
    float* dst = std::string(k) == "image_mean" ? p.mean : p.std;
    for (int c = 0; c < 3; ++c) dst[c] = v[size_t(c)].get<float>();
    if (dst == p.std)
      for (int c = 0; c < 3; ++c)
        if (!(p.std[c] > 0)) fail(where, ": 'image_std' must be positive, found ", v.dump());
  }
  if (video) {
    auto frames = [&](const char* k, int& dst) {
      if (!j.contains(k) || j[k].is_null()) return;
      if (!j[k].is_number_integer() || j[k].get<int64_t>() < 1 || j[k].get<int64_t>() > 100000)
        fail(where, ": '", k, "' must be a positive frame count, found ", j[k].dump());
      dst = j[k].get<int>();
    };
    frames("min_frames", p.min_frames);
    frames("max_frames", p.max_frames);
    if (j.contains("fps") && j["fps"].is_number()) {
      if (!(j["fps"].get<double>() > 0)) fail(where, ": 'fps' must be positive, found ", j["fps"].dump());
      p.fps = j["fps"].get<double>();
    }
  }
}

nlohmann::json read_json_file(const std::filesystem::path& f) {
  std::ifstream in(f);
  if (!in) fail(f.string(), ": cannot be read");
  auto j = nlohmann::json::parse(in, nullptr, false);
  if (j.is_discarded()) fail(f.string(), ": not valid JSON");
  if (!j.is_object()) fail(f.string(), ": expected a JSON object");
  return j;
}

}  // namespace

media::VisionParams MultimodalModel::vision_params() const {
  media::VisionParams p;
  p.patch = c_.vision.patch;
  p.merge = c_.vision.merge;
  p.temporal = c_.vision.temporal;
  // The checkpoint's own processor settings, where it ships them (otherwise the defaults of the
  // Qwen video utilities): preprocessor_config.json (image processor, flat),
  // video_preprocessor_config.json (flat), processor_config.json (transformers 5: nested sections).
  namespace fs = std::filesystem;
  const fs::path dir(model_.dir());
  const fs::path pre = dir / "preprocessor_config.json", vid = dir / "video_preprocessor_config.json",
                 proc = dir / "processor_config.json";
  if (fs::exists(pre)) read_processor_section(read_json_file(pre), pre.string(), false, p);
  if (fs::exists(vid)) read_processor_section(read_json_file(vid), vid.string(), true, p);
  if (fs::exists(proc)) {
    const auto j = read_json_file(proc);
    if (j.contains("image_processor"))
      read_processor_section(j["image_processor"], proc.string() + ": image_processor", false, p);
    if (j.contains("video_processor"))
      read_processor_section(j["video_processor"], proc.string() + ": video_processor", true, p);
  }
  return p;
}

MultimodalPrefill MultimodalModel::assemble(const std::vector<int32_t>& prompt_ids, const MediaSet& media,
                                            const std::vector<EncodedMedia>& images,
                                            const std::vector<EncodedMedia>& videos,
                                            const std::vector<EncodedMedia>& audios) const {
  const int merge = c_.vision.merge > 0 ? c_.vision.merge : 2;
  ExpandedPrompt e = expand_placeholders(prompt_ids, c_, media, merge);
  MultimodalPrefill p;
  p.positions = multimodal_positions(e.ids, c_, media, merge);
  const int D = model_.config().hidden;
  const size_t n = e.ids.size();
  p.embeds.assign(n * size_t(D), 0.f);
  const std::vector<EncodedMedia>* lists[4] = {nullptr, &images, &videos, &audios};
  size_t item[4] = {0, 0, 0, 0}, row[4] = {0, 0, 0, 0};
  for (size_t i = 0; i < n; ++i) {
    const int k = e.modality[i];
    if (k == 0) continue;
    const auto& L = *lists[k];
    while (item[k] < L.size() && row[k] >= size_t(L[item[k]].tokens)) {
      ++item[k];
      row[k] = 0;
    }
    if (item[k] >= L.size())
      fail("prompt: more ", modality_name(Modality(k)), " tokens than the encoders produced");
    const auto& em = L[item[k]];
    std::copy_n(em.embeds.begin() + long(row[k]) * D, D, p.embeds.begin() + long(i) * D);
    // DeepStack: the image and video rows, in order, take their item's features of each merger.
    if (!em.deepstack.empty() && (k == int(Modality::Image) || k == int(Modality::Video))) {
      if (p.deepstack.empty()) p.deepstack.resize(em.deepstack.size());
      if (em.deepstack.size() != p.deepstack.size())
        fail("prompt: media items with different DeepStack depths (", em.deepstack.size(), " and ", p.deepstack.size(), ")");
      for (size_t j = 0; j < em.deepstack.size(); ++j)
        p.deepstack[j].insert(p.deepstack[j].end(), em.deepstack[j].begin() + long(row[k]) * D,
                              em.deepstack[j].begin() + long(row[k] + 1) * D);
      p.deepstack_rows.push_back(int32_t(i));
    }
    ++row[k];
  }
  for (int k = 1; k < 4; ++k) {
    size_t total = 0, used = 0;
    for (size_t j = 0; j < lists[k]->size(); ++j) total += size_t((*lists[k])[j].tokens);
    for (size_t i = 0; i < n; ++i) used += e.modality[i] == k;
    if (total != used)
      fail("prompt: ", used, " ", modality_name(Modality(k)), " tokens but the encoders produced ", total, " embeddings");
  }
  p.ids = std::move(e.ids);
  p.modality = std::move(e.modality);
  return p;
}

}  // namespace outro
