#include "models/random_model.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/error.h"
#include "io/safetensors.h"

namespace outro {

namespace {

struct Planned {
  std::string name;
  std::vector<int64_t> shape;
  float mean, sd;
  size_t n = 0, off = 0;  // elements; byte offset in the data section
};

void store(DType dt, uint8_t* dst, size_t i, float v) {
  if (dt == DType::F32) {
    std::memcpy(dst + 4 * i, &v, 4);
  } else {
    const uint16_t h = dt == DType::BF16 ? f32_to_bf16(v) : f32_to_f16(v);
    std::memcpy(dst + 2 * i, &h, 2);
  }
}

// Uniform in mean ± sd·√3 (standard deviation sd) from a counter-based hash of (seed, i).
inline float hashed_value(uint64_t i, uint64_t seed, float mean, float sd) {
  uint64_t z = seed * 0x9e3779b97f4a7c15ull + i;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  const float u = float(z >> 40) * (1.f / 16777216.f) * 2.f - 1.f;
  return mean + u * sd * 1.7320508f;
}

// All threads fill a mapped file: for checkpoints of many GB.
// plant: element index into the first tensor (-1: none) that gets plant_value after the fill.
void write_hashed(const std::string& path, const std::vector<Planned>& ts, DType dt, uint64_t seed, int64_t plant,
                  float plant_value) {
  nlohmann::json hdr = nlohmann::json::object();
  const size_t es = dtype_size(dt);
  size_t data = 0;
  for (const auto& t : ts) {
    hdr[t.name] = {{"dtype", dtype_name(dt)}, {"shape", t.shape}, {"data_offsets", {t.off, t.off + t.n * es}}};
    data = std::max(data, t.off + t.n * es);
  }
  std::string h = hdr.dump();
  while ((h.size() + 8) % 8) h.push_back(' ');
  const size_t data0 = 8 + h.size(), total = data0 + data;
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) fail("cannot create ", path);
  if (::ftruncate(fd, off_t(total)) != 0) {
    ::close(fd);
    fail("cannot size ", path, " to ", total, " bytes");
  }
  void* map = ::mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (map == MAP_FAILED) {
    ::close(fd);
    fail("cannot map ", path);
  }
  uint8_t* base = static_cast<uint8_t*>(map);
  const uint64_t hl = h.size();
  for (int i = 0; i < 8; ++i) base[i] = uint8_t(hl >> (8 * i));
  std::memcpy(base + 8, h.data(), h.size());
  const unsigned nt = std::max(1u, std::thread::hardware_concurrency());
  std::vector<std::thread> th;
  for (unsigned k = 0; k < nt; ++k)
    th.emplace_back([&, k] {
      for (size_t ti = 0; ti < ts.size(); ++ti) {
        const Planned& t = ts[ti];
        const size_t a = t.n * k / nt, b = t.n * (k + 1) / nt;
        uint8_t* p = base + data0 + t.off;
        for (size_t i = a; i < b; ++i) store(dt, p, i, hashed_value(i, seed * 1000003ull + ti + 1, t.mean, t.sd));
      }
    });
  for (auto& t : th) t.join();
  if (plant >= 0) store(dt, base + data0 + ts[0].off, size_t(plant), plant_value);
  ::munmap(map, total);
  ::close(fd);
}

const char* torch_dtype(DType dt) {
  return dt == DType::BF16 ? "bfloat16" : dt == DType::F16 ? "float16" : "float32";
}

}  // namespace

OmniTokenIds omni_token_ids(int vocab) {
  if (vocab > 151656) return {151646, 151655, 151656, 151647, 151648, 151652, 151653};
  const int b = vocab - 7;
  return {b, b + 1, b + 2, b + 3, b + 4, b + 5, b + 6};
}

void write_random_model(const std::string& dir, const RandomModelSpec& s) {
  std::filesystem::create_directories(dir);
  const bool omni = s.architecture == "Qwen2_5OmniThinkerForConditionalGeneration";
  const bool qwen = s.architecture == "Qwen2ForCausalLM" || omni;
  const int hd = s.hidden / s.heads;
  nlohmann::json cfg = {{"architectures", {s.architecture}},
                        {"model_type", qwen ? "qwen2" : "llama"},
                        {"hidden_size", s.hidden},
                        {"intermediate_size", s.intermediate},
                        {"num_hidden_layers", s.layers},
                        {"num_attention_heads", s.heads},
                        {"num_key_value_heads", s.kv_heads},
                        {"vocab_size", s.vocab},
                        {"max_position_embeddings", s.max_positions},
                        {"rope_theta", s.rope_theta},
                        {"rms_norm_eps", 1e-6},
                        {"tie_word_embeddings", s.tied},
                        {"hidden_act", "silu"},
                        {"torch_dtype", torch_dtype(s.dtype)},
                        {"eos_token_id", s.vocab - 1}};
  const int Dv = 1280, Iv = 3420, Da = 1280, Fa = 5120;
  if (omni) {
    const OmniTokenIds t = omni_token_ids(s.vocab);
    nlohmann::json text = cfg;
    text.erase("architectures");
    text["model_type"] = "qwen2_5_omni_text";
    text["rope_scaling"] = {{"type", "mrope"}, {"mrope_section", s.mrope_section}};
    cfg = {{"architectures", {s.architecture}},
           {"model_type", "qwen2_5_omni_thinker"},
           {"torch_dtype", torch_dtype(s.dtype)},
           {"audio_token_index", t.audio},
           {"image_token_index", t.image},
           {"video_token_index", t.video},
           {"audio_start_token_id", t.audio_start},
           {"audio_end_token_id", t.audio_end},
           {"vision_start_token_id", t.vision_start},
           {"vision_end_token_id", t.vision_end},
           {"position_id_per_seconds", 25},
           {"seconds_per_chunk", 2},
           {"text_config", text},
           {"vision_config", {{"depth", s.vision_depth}, {"hidden_size", Dv}, {"intermediate_size", Iv},
                              {"num_heads", 16}, {"out_hidden_size", s.hidden}, {"patch_size", 14},
                              {"spatial_merge_size", 2}, {"temporal_patch_size", 2}, {"window_size", 112},
                              {"fullatt_block_indexes", {7, 15, 23, 31}}, {"in_channels", 3},
                              {"hidden_act", "silu"}}},
           {"audio_config", {{"d_model", Da}, {"encoder_layers", s.audio_layers}, {"encoder_attention_heads", 20},
                             {"encoder_ffn_dim", Fa}, {"num_mel_bins", 128}, {"output_dim", s.hidden},
                             {"max_source_positions", 1500}, {"n_window", 100}}}};
  }
  std::ofstream(dir + "/config.json") << cfg.dump(2);
  std::vector<Planned> ts;
  size_t off = 0;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, float mean, float sd) {
    Planned t{name, std::move(shape), mean, sd};
    t.n = 1;
    for (auto d : t.shape) t.n *= size_t(d);
    t.off = off;
    off += t.n * dtype_size(s.dtype);
    ts.push_back(std::move(t));
  };
  const int64_t D = s.hidden, I = s.intermediate, q = int64_t(s.heads) * hd, kv = int64_t(s.kv_heads) * hd;
  add("model.embed_tokens.weight", {s.vocab, D}, 0, s.std);
  for (int l = 0; l < s.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {D}, 1, 0.1f);
    add(p + "self_attn.q_proj.weight", {q, D}, 0, s.std);
    add(p + "self_attn.k_proj.weight", {kv, D}, 0, s.std);
    add(p + "self_attn.v_proj.weight", {kv, D}, 0, s.std);
    add(p + "self_attn.o_proj.weight", {D, q}, 0, s.std);
    if (qwen) {
      add(p + "self_attn.q_proj.bias", {q}, 0, s.std);
      add(p + "self_attn.k_proj.bias", {kv}, 0, s.std);
      add(p + "self_attn.v_proj.bias", {kv}, 0, s.std);
    }
    add(p + "post_attention_layernorm.weight", {D}, 1, 0.1f);
    add(p + "mlp.gate_proj.weight", {I, D}, 0, s.std);
    add(p + "mlp.up_proj.weight", {I, D}, 0, s.std);
    add(p + "mlp.down_proj.weight", {D, I}, 0, s.std);
  }
  add("model.norm.weight", {D}, 1, 0.1f);
  if (!s.tied) add("lm_head.weight", {s.vocab, D}, 0, s.std);
  if (omni) {
    const float sd = 0.02f;
    add("visual.patch_embed.proj.weight", {Dv, 3, 2, 14, 14}, 0, sd);
    for (int l = 0; l < s.vision_depth; ++l) {
      const std::string p = "visual.blocks." + std::to_string(l) + ".";
      add(p + "norm1.weight", {Dv}, 1, 0.02f);
      add(p + "norm2.weight", {Dv}, 1, 0.02f);
      for (const char* k : {"q", "k", "v", "proj"}) {
        add(p + "attn." + k + ".weight", {Dv, Dv}, 0, sd);
        add(p + "attn." + k + ".bias", {Dv}, 0, sd);
      }
      add(p + "mlp.gate_proj.weight", {Iv, Dv}, 0, sd);
      add(p + "mlp.gate_proj.bias", {Iv}, 0, sd);
      add(p + "mlp.up_proj.weight", {Iv, Dv}, 0, sd);
      add(p + "mlp.up_proj.bias", {Iv}, 0, sd);
      add(p + "mlp.down_proj.weight", {Dv, Iv}, 0, sd);
      add(p + "mlp.down_proj.bias", {Dv}, 0, sd);
    }
    add("visual.merger.ln_q.weight", {Dv}, 1, 0.02f);
    add("visual.merger.mlp.0.weight", {4 * Dv, 4 * Dv}, 0, sd);
    add("visual.merger.mlp.0.bias", {4 * Dv}, 0, sd);
    add("visual.merger.mlp.2.weight", {D, 4 * Dv}, 0, sd);
    add("visual.merger.mlp.2.bias", {D}, 0, sd);
    add("audio_tower.conv1.weight", {Da, 128, 3}, 0, sd);
    add("audio_tower.conv1.bias", {Da}, 0, sd);
    add("audio_tower.conv2.weight", {Da, Da, 3}, 0, sd);
    add("audio_tower.conv2.bias", {Da}, 0, sd);
    for (int l = 0; l < s.audio_layers; ++l) {
      const std::string p = "audio_tower.layers." + std::to_string(l) + ".";
      for (const char* n : {"self_attn_layer_norm", "final_layer_norm"}) {
        add(p + n + ".weight", {Da}, 1, 0.02f);
        add(p + n + ".bias", {Da}, 0, sd);
      }
      for (const char* k : {"q_proj", "k_proj", "v_proj", "out_proj"}) add(p + "self_attn." + k + ".weight", {Da, Da}, 0, sd);
      for (const char* k : {"q_proj", "v_proj", "out_proj"}) add(p + "self_attn." + k + ".bias", {Da}, 0, sd);
      add(p + "fc1.weight", {Fa, Da}, 0, sd);
      add(p + "fc1.bias", {Fa}, 0, sd);
      add(p + "fc2.weight", {Da, Fa}, 0, sd);
      add(p + "fc2.bias", {Da}, 0, sd);
    }
    add("audio_tower.ln_post.weight", {Da}, 1, 0.02f);
    add("audio_tower.ln_post.bias", {Da}, 0, sd);
    add("audio_tower.proj.weight", {D, Da}, 0, sd);
    add("audio_tower.proj.bias", {D}, 0, sd);
  }
  const std::string path = dir + "/model.safetensors";
  if (s.plant_token >= s.vocab || (s.plant_token >= 0 && D <= 7))
    fail("random model: plant_token ", s.plant_token, " needs a vocabulary above it and hidden > 7");
  const int64_t plant = s.plant_token >= 0 ? int64_t(s.plant_token) * D + 7 : -1;
  if (s.hashed) return write_hashed(path, ts, s.dtype, s.seed, plant, s.plant_value);
  // Normal values from one generator, in the order of the tensors (the tests' models).
  std::mt19937_64 rng(s.seed);
  std::normal_distribution<float> nd(0.f, s.std);
  std::vector<TensorOut> out;
  for (const auto& t : ts) {
    TensorOut o;
    o.name = t.name;
    o.shape = t.shape;
    o.dtype = s.dtype;
    o.bytes.resize(t.n * dtype_size(s.dtype));
    for (size_t i = 0; i < t.n; ++i) store(s.dtype, o.bytes.data(), i, t.mean + t.sd * nd(rng) / s.std);
    if (&t == &ts[0] && plant >= 0) store(s.dtype, o.bytes.data(), size_t(plant), s.plant_value);
    out.push_back(std::move(o));
  }
  write_safetensors(path, out);
}

}  // namespace outro
