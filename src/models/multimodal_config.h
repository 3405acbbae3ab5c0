// The non-text parts of a Qwen2.5-Omni / Qwen3-Omni thinker or Qwen2.5-VL config.json: the vision tower, the
// audio tower (Omni) and the special token ids that mark media in a prompt.
#pragma once
#include <string>
#include <vector>

namespace outro {

struct VisionConfig {
  int depth = 0, hidden = 0, intermediate = 0, heads = 0, out_hidden = 0;
  int patch = 14, merge = 2, temporal = 2, window = 112, in_channels = 3;
  std::vector<int> fullatt_blocks;
  std::string act = "silu";
  float rope_theta = 10000.f;
  int tokens_per_second = 2;  // Qwen2.5-VL: temporal position step per second
  // Qwen3-Omni (Qwen3-VL style): the learned position table's size (a square) and the blocks whose
  // outputs feed the DeepStack mergers (merger_list.j after block deepstack[j]).
  int num_position_embeddings = 0;
  std::vector<int> deepstack;
};

struct AudioConfig {
  int d_model = 0, layers = 0, heads = 0, ffn = 0, mel_bins = 128, out_dim = 0;
  int max_positions = 1500, n_window = 100;
  std::string act = "gelu";
  // Qwen3-Omni: Conv2d channels of the downsampling and the attention window in mel frames.
  int downsample_hidden = 0, n_window_infer = 0;
};

// Which processor and towers a multimodal checkpoint has.
enum class MmFamily { None, Qwen2_5VL, Qwen2_5Omni, Qwen3Omni };

struct MultimodalConfig {
  MmFamily family = MmFamily::None;
  bool omni = false;  // Qwen2.5-Omni thinker (TMRoPE, audio); else Qwen2.5-VL (M-RoPE)
  bool has_vision = false, has_audio = false;
  VisionConfig vision;
  AudioConfig audio;
  int image_token = -1, video_token = -1, audio_token = -1;
  int vision_start = -1, vision_end = -1, audio_start = -1, audio_end = -1;
  int position_id_per_seconds = 25;
  // Qwen3-Omni's processor orders a video's tokens against its audio's with its own default (13),
  // apart from the thinker config's position_id_per_seconds that get_rope_index uses.
  double processor_position_id_per_seconds = 13.0;
  // > 0: the fps the processor assumes for a video's second_per_grid (temporal_patch_size / fps)
  // when the caller gives none. Qwen3-Omni's processor: 1.0 (its `fps` default; the Qwen cookbook
  // calls it without fps), so 2 s per grid. 0: the rate the frames were sampled at (Qwen2.5).
  double processor_default_fps = 0;
  double seconds_per_chunk = 2.0;
  // The longest clip the processor passes on, in seconds: Whisper's 30 s window (Qwen2.5-Omni pads
  // every clip to it and cuts longer ones); 0: no limit, a clip's whole log-mel padded to the longest
  // clip of the prompt (Qwen3-Omni's processor calls the feature extractor with padding=True,
  // truncation=False).
  double audio_max_seconds = 30;
  std::string source;
  std::string section;  // where the towers' configs are: "thinker_config." in a released Omni config.json, else ""
};

// Parses config.json text (`source` names the file in errors). A text-only config gives
// has_vision = has_audio = false.
MultimodalConfig parse_multimodal_config(const std::string& text, const std::string& source);
MultimodalConfig load_multimodal_config(const std::string& dir);

}  // namespace outro
