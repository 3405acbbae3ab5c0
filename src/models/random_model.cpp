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
void write_hashed(const std::string& path, const std::vector<Planned>& ts, DType dt, uint64_t seed) {
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
  ::munmap(map, total);
  ::close(fd);
}

const char* torch_dtype(DType dt) {
  return dt == DType::BF16 ? "bfloat16" : dt == DType::F16 ? "float16" : "float32";
}

}  // namespace

void write_random_model(const std::string& dir, const RandomModelSpec& s) {
  std::filesystem::create_directories(dir);
  const bool qwen = s.architecture == "Qwen2ForCausalLM";
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
  const std::string path = dir + "/model.safetensors";
  if (s.hashed) return write_hashed(path, ts, s.dtype, s.seed);
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
    out.push_back(std::move(o));
  }
  write_safetensors(path, out);
}

}  // namespace outro
