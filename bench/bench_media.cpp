// Multimodal input benchmark: media decoding, the vision and audio towers and the prefill of a
// Qwen2.5-Omni-3B-shaped thinker (random bf16 weights) on a 10-second clip made with ffmpeg
// (640x360 test pattern at 30 fps with a tone; the video's own audio is used).
//   bench_media [--layers-text N] [--depth-vision N] [--layers-audio N] [--seconds S] [--device cpu|cuda]
// Depths default to 2 so a CPU run stays short; every figure is also extrapolated to the full
// 3B depths (36 text layers, 32 vision blocks, 32 audio layers). It prints figures, never fails.
// On the CPU, OUTRO_ISA picks the kernel set (e.g. avx512 for float32 products, avx512bf16, amx).
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include "core/dtype.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "kernels/backend.h"
#include "kernels/cpu/gemm.h"
#include "models/model.h"
#include "models/multimodal_input.h"
#include "runtime/session.h"

using namespace outro;
namespace fs = std::filesystem;

namespace {

struct Writer {
  std::vector<TensorOut> t;
  std::mt19937_64 rng{7};
  void add(const std::string& name, std::vector<int64_t> shape, float std_ = 0.02f, float mean = 0.f) {
    int64_t n = 1;
    for (auto d : shape) n *= d;
    TensorOut o;
    o.name = name;
    o.dtype = DType::BF16;
    o.shape = shape;
    o.bytes.resize(size_t(n) * 2);
    std::normal_distribution<float> nd(mean, std_);
    for (int64_t i = 0; i < n; ++i) {
      float v = nd(rng);
      uint32_t u;
      std::memcpy(&u, &v, 4);
      uint16_t h = uint16_t((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
      std::memcpy(&o.bytes[size_t(i) * 2], &h, 2);
    }
    t.push_back(std::move(o));
  }
};

void write_model(const std::string& dir, int Lt, int Lv, int La) {
  fs::create_directories(dir);
  const int D = 2048, I = 11008, H = 16, KV = 2, hd = 128, V = 8192;
  const int Dv = 1280, Iv = 3420, Da = 1280, Fa = 5120;
  std::ofstream(dir + "/config.json") << R"({"architectures":["Qwen2_5OmniThinkerForConditionalGeneration"],
  "model_type":"qwen2_5_omni_thinker","audio_token_index":8000,"image_token_index":8001,"video_token_index":8002,
  "audio_start_token_id":8003,"audio_end_token_id":8004,"vision_start_token_id":8005,"vision_end_token_id":8006,
  "position_id_per_seconds":25,"seconds_per_chunk":2,
  "text_config":{"hidden_size":2048,"intermediate_size":11008,"num_hidden_layers":)" << Lt << R"(,
   "num_attention_heads":16,"num_key_value_heads":2,"vocab_size":8192,"max_position_embeddings":32768,
   "rms_norm_eps":1e-6,"rope_theta":1000000.0,"tie_word_embeddings":false,
   "rope_scaling":{"type":"mrope","mrope_section":[16,24,24]}},
  "vision_config":{"depth":)" << Lv << R"(,"hidden_size":1280,"intermediate_size":3420,"num_heads":16,
   "out_hidden_size":2048,"patch_size":14,"spatial_merge_size":2,"temporal_patch_size":2,"window_size":112,
   "fullatt_block_indexes":[7,15,23,31],"in_channels":3,"hidden_act":"silu"},
  "audio_config":{"d_model":1280,"encoder_layers":)" << La << R"(,"encoder_attention_heads":20,"encoder_ffn_dim":5120,
   "num_mel_bins":128,"output_dim":2048,"max_source_positions":1500,"n_window":100}})";
  Writer w;
  w.add("model.embed_tokens.weight", {V, D});
  w.add("model.norm.weight", {D}, 0.02f, 1.f);
  w.add("lm_head.weight", {V, D});
  for (int l = 0; l < Lt; ++l) {
    std::string p = "model.layers." + std::to_string(l) + ".";
    w.add(p + "input_layernorm.weight", {D}, 0.02f, 1.f);
    w.add(p + "post_attention_layernorm.weight", {D}, 0.02f, 1.f);
    w.add(p + "self_attn.q_proj.weight", {H * hd, D});
    w.add(p + "self_attn.q_proj.bias", {H * hd});
    w.add(p + "self_attn.k_proj.weight", {KV * hd, D});
    w.add(p + "self_attn.k_proj.bias", {KV * hd});
    w.add(p + "self_attn.v_proj.weight", {KV * hd, D});
    w.add(p + "self_attn.v_proj.bias", {KV * hd});
    w.add(p + "self_attn.o_proj.weight", {D, H * hd});
    w.add(p + "mlp.gate_proj.weight", {I, D});
    w.add(p + "mlp.up_proj.weight", {I, D});
    w.add(p + "mlp.down_proj.weight", {D, I});
  }
  w.add("visual.patch_embed.proj.weight", {Dv, 3, 2, 14, 14});
  for (int l = 0; l < Lv; ++l) {
    std::string p = "visual.blocks." + std::to_string(l) + ".";
    w.add(p + "norm1.weight", {Dv}, 0.02f, 1.f);
    w.add(p + "norm2.weight", {Dv}, 0.02f, 1.f);
    for (const char* k : {"q", "k", "v", "proj"}) {
      w.add(p + "attn." + k + ".weight", {Dv, Dv});
      w.add(p + "attn." + k + ".bias", {Dv});
    }
    w.add(p + "mlp.gate_proj.weight", {Iv, Dv});
    w.add(p + "mlp.gate_proj.bias", {Iv});
    w.add(p + "mlp.up_proj.weight", {Iv, Dv});
    w.add(p + "mlp.up_proj.bias", {Iv});
    w.add(p + "mlp.down_proj.weight", {Dv, Iv});
    w.add(p + "mlp.down_proj.bias", {Dv});
  }
  w.add("visual.merger.ln_q.weight", {Dv}, 0.02f, 1.f);
  w.add("visual.merger.mlp.0.weight", {4 * Dv, 4 * Dv});
  w.add("visual.merger.mlp.0.bias", {4 * Dv});
  w.add("visual.merger.mlp.2.weight", {D, 4 * Dv});
  w.add("visual.merger.mlp.2.bias", {D});
  w.add("audio_tower.conv1.weight", {Da, 128, 3});
  w.add("audio_tower.conv1.bias", {Da});
  w.add("audio_tower.conv2.weight", {Da, Da, 3});
  w.add("audio_tower.conv2.bias", {Da});
  for (int l = 0; l < La; ++l) {
    std::string p = "audio_tower.layers." + std::to_string(l) + ".";
    for (const char* n : {"self_attn_layer_norm", "final_layer_norm"}) {
      w.add(p + n + ".weight", {Da}, 0.02f, 1.f);
      w.add(p + n + ".bias", {Da});
    }
    for (const char* k : {"q_proj", "k_proj", "v_proj", "out_proj"}) w.add(p + "self_attn." + k + ".weight", {Da, Da});
    for (const char* k : {"q_proj", "v_proj", "out_proj"}) w.add(p + "self_attn." + k + ".bias", {Da});
    w.add(p + "fc1.weight", {Fa, Da});
    w.add(p + "fc1.bias", {Fa});
    w.add(p + "fc2.weight", {Da, Fa});
    w.add(p + "fc2.bias", {Da});
  }
  w.add("audio_tower.ln_post.weight", {Da}, 0.02f, 1.f);
  w.add("audio_tower.ln_post.bias", {Da});
  w.add("audio_tower.proj.weight", {D, Da});
  w.add("audio_tower.proj.bias", {D});
  write_safetensors(dir + "/model.safetensors", w.t);
}

}  // namespace

int main(int argc, char** argv) {
  int Lt = 2, Lv = 2, La = 2;
  double seconds = 10;
  std::string device = "cpu";
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i];
    if (k == "--layers-text") Lt = std::atoi(argv[i + 1]);
    else if (k == "--depth-vision") Lv = std::atoi(argv[i + 1]);
    else if (k == "--layers-audio") La = std::atoi(argv[i + 1]);
    else if (k == "--seconds") seconds = std::atof(argv[i + 1]);
    else if (k == "--device") device = argv[i + 1];
  }
  try {
    const std::string dir = (fs::temp_directory_path() / ("outro_bench_media_" + std::to_string(::getpid()))).string();
    fs::create_directories(dir);
    const std::string clip = dir + "/clip.mp4";
    std::string cmd = "ffmpeg -nostdin -v error -y -f lavfi -i testsrc=size=640x360:rate=30 -f lavfi -i "
                      "sine=frequency=440:sample_rate=44100 -t " + std::to_string(seconds) +
                      " -c:v mpeg4 -q:v 4 -c:a aac -shortest " + clip + " >/dev/null 2>&1";
    if (std::system(cmd.c_str()) != 0) fail("bench_media: the ffmpeg command could not make the clip");
    write_model(dir + "/model", Lt, Lv, La);
    auto model = Model::load(dir + "/model");
    std::unique_ptr<Backend> be;
    if (device == "cuda") {
      std::string why;
      be = make_cuda_backend(0, &why);
      if (!be) fail("bench_media: no CUDA backend (", why, ")");
    } else {
      be = make_cpu_backend();
    }
    MultimodalModel mm(*model, *be);
    const auto& c = mm.config();
    std::vector<int32_t> ids = {1, 2, 3, c.vision_start, c.video_token, c.vision_end, 4, 5, 6, 7};
    MediaRequest r;
    r.video = clip;
    r.use_audio_in_video = true;
    PreparedPrompt p = prepare_multimodal(mm, r, ids);
    Session s(*model, *be, int(p.prefill.ids.size()) + 1);
    std::vector<float> logits;
    auto t0 = std::chrono::steady_clock::now();
    s.forward_embeds(p.prefill.ids.data(), int(p.prefill.ids.size()), p.prefill.embeds.data(), p.prefill.modality.data(),
                     p.prefill.positions.data(), &logits, false);
    be->synchronize();
    const double prefill = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    int nv = 0, na = 0;
    for (auto k : p.prefill.modality) nv += k == 2, na += k == 3;
    const auto& g = p.media.videos[0];
    std::printf("bench_media: %.0f s clip 640x360 @30 fps (mpeg4 + aac), backend %s%s%s\n", seconds, be->name(),
                device == "cuda" ? "" : ", CPU kernels ", device == "cuda" ? "" : cpu::gemm_isa());
    std::printf("  video: %d frames sampled -> grid %dx%dx%d (%d patches, %d tokens); audio: %d mel frames (%d tokens)\n",
                g.t * 2, g.t, g.h, g.w, g.t * g.h * g.w, nv, p.media.audio_frames[0], na);
    std::printf("  decode+preprocess video  %8.3f s\n", p.timings.decode_video);
    std::printf("  decode+log-mel audio     %8.3f s\n", p.timings.decode_audio);
    std::printf("  vision tower (%2d blocks) %8.3f s   (x%.0f for 32 blocks: ~%.1f s)\n", Lv, p.timings.vision, 32.0 / Lv,
                p.timings.vision * 32.0 / Lv);
    std::printf("  audio tower  (%2d layers) %8.3f s   (x%.0f for 32 layers: ~%.1f s)\n", La, p.timings.audio, 32.0 / La,
                p.timings.audio * 32.0 / La);
    std::printf("  prefill %4zu tokens (%2d layers) %8.3f s   (x%.0f for 36 layers: ~%.1f s)\n", p.prefill.ids.size(), Lt,
                prefill, 36.0 / Lt, prefill * 36.0 / Lt);
    fs::remove_all(dir);
  } catch (const Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
