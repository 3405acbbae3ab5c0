// Multimodal prompts for the Qwen2.5-Omni and Qwen3-Omni thinkers and Qwen2.5-VL: placeholder expansion (one
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
#include "models/qwen3_omni_towers.h"
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
// Qwen3-Omni's rules (models/qwen3_omni_prompt.cpp; expand_placeholders and multimodal_positions
// hand a Qwen3-Omni config to these).
ExpandedPrompt qwen3_expand_placeholders(const std::vector<int32_t>& ids, const MultimodalConfig& c, const MediaSet& m,
                                         int merge);
std::vector<int32_t> qwen3_positions(const std::vector<int32_t>& ids, const MultimodalConfig& c, const MediaSet& m,
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
  std::vector<std::vector<float>> deepstack;  // Qwen3-Omni vision: per DeepStack merger, [tokens, hidden]
};

// What Session::forward_multimodal takes for a prefill.
struct MultimodalPrefill {
  std::vector<int32_t> ids;
  std::vector<uint8_t> modality;
  std::vector<float> embeds;   // [n, hidden] rows for the non-text tokens (text rows unused)
  std::vector<int32_t> positions;  // [3, n]
  // Qwen3-Omni: DeepStack features per decoder layer k < deepstack.size(), [rows, hidden], added
  // after layer k at the image and video rows (deepstack_rows, ascending) for Session::set_deepstack.
  std::vector<std::vector<float>> deepstack;
  std::vector<int32_t> deepstack_rows;
};

// Whether m's weights hold a vision or audio tower (a Qwen3-Omni decoder saved alone has neither).
bool has_media_towers(const Model& m);

class Session;
// The prefill of p on s (set_deepstack when p has DeepStack features, then forward_embeds).
void feed_prefill(Session& s, const MultimodalPrefill& p, std::vector<float>* logits, bool all_rows);

// The encoders of a multimodal checkpoint.
class MultimodalModel {
 public:
  MultimodalModel(const Model& m, Backend& be);
  const MultimodalConfig& config() const { return c_; }
  bool has_vision() const { return vision_ != nullptr || vision3_ != nullptr; }
  bool has_audio() const { return audio_ != nullptr || audio3_ != nullptr; }
  // The Qwen2.5 towers (Qwen2.5-VL, Qwen2.5-Omni); fail on a Qwen3-Omni checkpoint.
  VisionEncoder& vision();
  AudioEncoder& audio();
  // Whichever towers the checkpoint has: one picture or clip (pixels [t*h*w, C*T*P*P]); the audio
  // clips of one prompt together (Qwen3-Omni's tower pads them as one batch).
  EncodedMedia encode_vision(const float* pixels, int grid_t, int grid_h, int grid_w, Modality kind);
  std::vector<EncodedMedia> encode_audio(const std::vector<const media::MelFeatures*>& clips);
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
  std::unique_ptr<Qwen3VisionEncoder> vision3_;
  std::unique_ptr<Qwen3AudioEncoder> audio3_;
};

}  // namespace outro
