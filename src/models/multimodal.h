// Multimodal prompts for Qwen2.5-Omni thinker and Qwen2.5-VL: placeholder expansion (one
// <|IMAGE|> / <|VIDEO|> / <|AUDIO|> per item in, the right number of copies out, with the
// video's own audio interleaved in time chunks when asked), the 3-D rotary positions (M-RoPE for
// Qwen2.5-VL, TMRoPE for Qwen2.5-Omni) and the embeddings of the prefill (token embeddings with
// the encoders' outputs spliced in at the placeholders).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "media/audio_features.h"
#include "media/vision_process.h"
#include "models/audio_encoder.h"
#include "models/model.h"
#include "models/multimodal_config.h"
#include "models/vision_encoder.h"

namespace outro {

enum class Modality : uint8_t { Text = 0, Image = 1, Video = 2, Audio = 3 };
const char* modality_name(Modality m);

struct Grid {
  int t = 0, h = 0, w = 0;  // in patches
  double second_per_grid = 0;  // videos: temporal_patch_size / sampled fps
};

// The media of one prompt, in the order of their placeholders.
struct MediaSet {
  std::vector<Grid> images, videos;
  std::vector<int> audio_frames;  // mel frames per audio (a video's own audio included)
  bool use_audio_in_video = false;
};

struct ExpandedPrompt {
  std::vector<int32_t> ids;
  std::vector<uint8_t> modality;  // Modality per token
};

// Expands the placeholders of `ids` (the Qwen2.5-Omni processor's rules; Qwen2.5-VL: no audio).
// Throws when the placeholders and the media do not match (counts named).
ExpandedPrompt expand_placeholders(const std::vector<int32_t>& ids, const MultimodalConfig& c, const MediaSet& m,
                                   int merge);

// Rotary positions [3, n] (t, h, w rows) of an expanded prompt, as transformers 5.17 computes them
// (Qwen2.5-Omni: get_rope_index with TMRoPE; Qwen2.5-VL: text after a vision block continues at
// its start + max(h, w) / merge).
std::vector<int32_t> multimodal_positions(const std::vector<int32_t>& ids, const MultimodalConfig& c,
                                          const MediaSet& m, int merge);

// One encoded media item.
struct EncodedMedia {
  Modality kind = Modality::Text;
  std::vector<float> embeds;  // [tokens, hidden]
  int tokens = 0;
};

// What Session::forward_multimodal takes for a prefill.
struct MultimodalPrefill {
  std::vector<int32_t> ids;
  std::vector<uint8_t> modality;
  std::vector<float> embeds;   // [n, hidden] rows for the non-text tokens (text rows unused)
  std::vector<int32_t> positions;  // [3, n]
};

// The encoders of a multimodal checkpoint.
class MultimodalModel {
 public:
  MultimodalModel(const Model& m, Backend& be);
  const MultimodalConfig& config() const { return c_; }
  bool has_vision() const { return vision_ != nullptr; }
  bool has_audio() const { return audio_ != nullptr; }
  VisionEncoder& vision();
  AudioEncoder& audio();
  media::VisionParams vision_params() const;

  // Splices the encoded media (images, videos and audios each in placeholder order) into the
  // expanded prompt and computes the positions.
  MultimodalPrefill assemble(const std::vector<int32_t>& prompt_ids, const MediaSet& media,
                             const std::vector<EncodedMedia>& images, const std::vector<EncodedMedia>& videos,
                             const std::vector<EncodedMedia>& audios) const;

 private:
  const Model& model_;
  MultimodalConfig c_;
  std::unique_ptr<VisionEncoder> vision_;
  std::unique_ptr<AudioEncoder> audio_;
};

}  // namespace outro
