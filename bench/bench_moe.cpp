// Mixture-of-experts speed benchmark: writes a random Qwen3-Omni thinker checkpoint with the decoder
// shape of Qwen3-Omni-30B-A3B (hidden 2048, 32 heads of 128, 4 KV heads, 128 experts of 768, 8 per
// token, every layer sparse, q/k norm, vocab 151936) and a few of its 48 layers, loads it and times a
// prefill and decode steps through Session on the CPU or the GPU. A decode step reads the attention
// matrices, the router and only the 8 chosen experts of each layer, so its speed is also given as
// the bandwidth those bytes imply; per-layer times give the whole model's estimate. On a GPU it also
// prints that bandwidth as a fraction of the measured copy bandwidth, and whether all 48 layers fit in bf16.
//
//   bench_moe [--device cpu|cuda] [--layers N] [--experts E] [--top-k K] [--dtype bf16|f16|f32]
//             [--prefill N] [--decode N] [--reps N] [--vocab V] [--keep DIR]
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include <unistd.h>

#include "bench_util.h"
#include "core/dtype.h"
#include "core/threadpool.h"
#include "io/safetensors.h"
#include "kernels/backend.h"
#include "models/model.h"
#include "runtime/session.h"
#ifdef OUTRO_HAVE_CUDA
#include "kernels/cuda/cuda_api.h"
#endif

using namespace outro;
namespace fs = std::filesystem;
using bench::Clock;
using bench::since;

namespace {

struct Shape {  // Qwen3-Omni-30B-A3B's thinker decoder (thinker_config.text_config)
  int hidden = 2048, heads = 32, kv_heads = 4, head_dim = 128, experts = 128, top_k = 8, moe_inter = 768;
  int layers = 2, full_layers = 48, vocab = 151936;
};

uint64_t mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Uniform values of the given mean and standard deviation from a counter hash, in dtype.
TensorOut random_tensor(const std::string& name, std::vector<int64_t> shape, DType dt, float mean, float sd,
                        uint64_t seed) {
  TensorOut t;
  t.name = name;
  t.dtype = dt;
  t.shape = std::move(shape);
  size_t n = 1;
  for (auto d : t.shape) n *= size_t(d);
  t.bytes.resize(n * dtype_size(dt));
  const float a = sd * 1.7320508f;
  const size_t chunk = size_t(1) << 20;
  ThreadPool::global().parallel_for((n + chunk - 1) / chunk, [&](size_t c0, size_t c1) {
    for (size_t i = c0 * chunk; i < std::min(n, c1 * chunk); ++i) {
      const float u = float(mix(seed * 0x9e3779b97f4a7c15ull + i) >> 40) * (1.f / 16777216.f);
      const float v = mean + a * (2.f * u - 1.f);
      if (dt == DType::F32) {
        std::memcpy(t.bytes.data() + 4 * i, &v, 4);
      } else {
        const uint16_t h = dt == DType::BF16 ? f32_to_bf16(v) : f32_to_f16(v);
        std::memcpy(t.bytes.data() + 2 * i, &h, 2);
      }
    }
  });
  return t;
}

void write_model(const std::string& dir, const Shape& s, DType dt) {
  fs::create_directories(dir);
  const int hd = s.head_dim;
  nlohmann::json text = {{"hidden_size", s.hidden}, {"intermediate_size", 6144}, {"num_hidden_layers", s.layers},
                         {"num_attention_heads", s.heads}, {"num_key_value_heads", s.kv_heads}, {"head_dim", hd},
                         {"vocab_size", s.vocab}, {"max_position_embeddings", 65536}, {"rms_norm_eps", 1e-6},
                         {"num_experts", s.experts}, {"num_experts_per_tok", s.top_k},
                         {"moe_intermediate_size", s.moe_inter}, {"decoder_sparse_step", 1},
                         {"mlp_only_layers", nlohmann::json::array()}, {"norm_topk_prob", true},
                         {"hidden_act", "silu"}, {"attention_bias", false},
                         {"rope_parameters", {{"rope_type", "default"}, {"rope_theta", 1e6},
                                              {"mrope_section", {hd / 2 - 2 * (hd * 5 / 32), hd * 5 / 32, hd * 5 / 32}},
                                              {"interleaved", true}}}};
  nlohmann::json cfg = {{"architectures", {"Qwen3OmniMoeThinkerForConditionalGeneration"}},
                        {"model_type", "qwen3_omni_moe_thinker"}, {"text_config", text},
                        {"tie_word_embeddings", false}};
  std::ofstream(dir + "/config.json") << cfg.dump(1);
  const int64_t D = s.hidden, E = s.experts, I = s.moe_inter;
  const int64_t q = int64_t(s.heads) * hd, kv = int64_t(s.kv_heads) * hd;
  const float sd = 0.02f;
  uint64_t seed = 1;
  std::vector<TensorOut> ts;
  ts.push_back(random_tensor("model.embed_tokens.weight", {s.vocab, D}, dt, 0, sd, seed++));
  ts.push_back(random_tensor("lm_head.weight", {s.vocab, D}, dt, 0, sd, seed++));
  ts.push_back(random_tensor("model.norm.weight", {D}, dt, 1, 0.05f, seed++));
  for (int l = 0; l < s.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    ts.push_back(random_tensor(p + "input_layernorm.weight", {D}, dt, 1, 0.05f, seed++));
    ts.push_back(random_tensor(p + "self_attn.q_proj.weight", {q, D}, dt, 0, sd, seed++));
    ts.push_back(random_tensor(p + "self_attn.k_proj.weight", {kv, D}, dt, 0, sd, seed++));
    ts.push_back(random_tensor(p + "self_attn.v_proj.weight", {kv, D}, dt, 0, sd, seed++));
    ts.push_back(random_tensor(p + "self_attn.o_proj.weight", {D, q}, dt, 0, sd, seed++));
    ts.push_back(random_tensor(p + "self_attn.q_norm.weight", {hd}, dt, 1, 0.05f, seed++));
    ts.push_back(random_tensor(p + "self_attn.k_norm.weight", {hd}, dt, 1, 0.05f, seed++));
    ts.push_back(random_tensor(p + "post_attention_layernorm.weight", {D}, dt, 1, 0.05f, seed++));
    ts.push_back(random_tensor(p + "mlp.gate.weight", {E, D}, dt, 0, 0.5f, seed++));
    ts.push_back(random_tensor(p + "mlp.experts.gate_up_proj", {E, 2 * I, D}, dt, 0, sd, seed++));
    ts.push_back(random_tensor(p + "mlp.experts.down_proj", {E, D, I}, dt, 0, sd, seed++));
  }
  write_safetensors(dir + "/model.safetensors", ts);
}

[[noreturn]] void usage(const std::string& why) {
  std::fprintf(stderr,
               "bench_moe: %s\nusage: bench_moe [--device cpu|cuda] [--layers N] [--experts E] [--top-k K] "
               "[--dtype bf16|f16|f32] [--prefill N] [--decode N] [--reps N] [--vocab V] [--keep DIR]\n",
               why.c_str());
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  Shape s;
  DType dt = DType::BF16;
  int prefill = 128, decode = 16, reps = 3;
  std::string device = "cpu", keep;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) usage("missing value after " + a);
      return argv[++i];
    };
    auto num = [&](int lo) {
      const std::string v = val();
      char* end = nullptr;
      const long x = std::strtol(v.c_str(), &end, 10);
      if (v.empty() || *end || x < lo || x > (1 << 30)) usage(a + ": expected an integer >= " + std::to_string(lo));
      return int(x);
    };
    if (a == "--layers") s.layers = num(1);
    else if (a == "--experts") s.experts = num(1);
    else if (a == "--top-k") s.top_k = num(1);
    else if (a == "--vocab") s.vocab = num(2);
    else if (a == "--prefill") prefill = num(1);
    else if (a == "--decode") decode = num(1);
    else if (a == "--reps") reps = num(1);
    else if (a == "--device") device = val();
    else if (a == "--keep") keep = val();
    else if (a == "--dtype") {
      const std::string v = val();
      dt = v == "f32" ? DType::F32 : v == "f16" ? DType::F16 : v == "bf16" ? DType::BF16 : (usage("--dtype: " + v), dt);
    } else {
      usage("unknown argument '" + a + "'");
    }
  }
  if (s.top_k > s.experts) usage("--top-k is larger than --experts");
  try {
    std::unique_ptr<Backend> be;
    if (device == "cuda") {
      std::string why;
      be = make_cuda_backend(0, &why);
      if (!be) throw std::runtime_error("no CUDA backend: " + why);
    } else if (device == "cpu") {
      be = make_cpu_backend();
    } else {
      usage("--device: expected cpu or cuda, found '" + device + "'");
    }
    const std::string dir =
        keep.empty() ? (fs::temp_directory_path() / ("outro_bench_moe_" + std::to_string(::getpid()))).string() : keep;
    auto t = Clock::now();
    if (!fs::exists(dir + "/model.safetensors")) write_model(dir, s, dt);
    std::printf("random Qwen3-Omni thinker: %s (%d of %d layers, %d experts, top-%d, %s) ready in %.1f s\n",
                dir.c_str(), s.layers, s.full_layers, s.experts, s.top_k, dtype_name(dt), since(t));
    double best_p = 1e30, best_d = 1e30, layer_bytes = 0, head_bytes = 0, device_bytes = 0, layer_all = 0;
    {
      auto model = Model::load(dir);
      const ModelConfig& c = model->config();
      // Weights a decode step reads: attention, router, k experts of each layer; the lm_head.
      const double esz = double(dtype_size(dt));
      const auto& l0 = model->layers[0];
      layer_bytes = double(l0.q->nbytes + l0.k->nbytes + l0.v->nbytes + l0.o->nbytes + l0.router->nbytes) +
                    double(c.experts_per_tok) * 3.0 * double(c.hidden) * double(c.moe_intermediate) * esz;
      head_bytes = double(model->lm_head->nbytes);
      // Every tensor of one layer (all its experts): the whole model's size is the loaded one's plus
      // the missing layers'.
      for (const auto& [name, t] : WeightStore::open(dir + "/model.safetensors")->tensors())
        if (name.rfind("model.layers.0.", 0) == 0) layer_all += double(t.nbytes);
      Session sess(*model, *be, prefill + decode + 1);
      std::vector<int32_t> prompt(static_cast<size_t>(prefill)), next(static_cast<size_t>(decode));
      for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = int32_t(mix(i + 7) % uint64_t(c.vocab));
      for (size_t i = 0; i < next.size(); ++i) next[i] = int32_t(mix(i + 1000) % uint64_t(c.vocab));
      for (int r = 0; r < reps; ++r) {
        sess.reset();
        auto t0 = Clock::now();
        sess.forward_argmax(prompt.data(), prefill);
        be->synchronize();
        const double tp = since(t0);
        auto t1 = Clock::now();
        for (int i = 0; i < decode; ++i) sess.forward_argmax(&next[size_t(i)], 1);
        be->synchronize();
        const double td = since(t1);
        std::printf("  rep %d: prefill %.3f s (%.1f tok/s), decode %.3f s (%.2f tok/s)\n", r + 1, tp, prefill / tp, td,
                    decode / td);
        best_p = std::min(best_p, tp);
        best_d = std::min(best_d, td);
      }
#ifdef OUTRO_HAVE_CUDA
      if (device == "cuda") device_bytes = double(cuda_api::weight_bytes(*be));
#endif
    }
    if (keep.empty()) fs::remove_all(dir);
    const double dstep = best_d / decode, bytes = layer_bytes * s.layers + head_bytes;
    std::printf("\nweights read per decode token: %.1f MB (%.1f MB per layer: attention, router, %d experts)\n",
                bytes / 1e6, layer_bytes / 1e6, s.top_k);
    std::printf("| model | device | dtype | layers | prefill tok/s | decode tok/s | decode GB/s |\n|---|---|---|---|---|---|---|\n");
    std::printf("| qwen3-omni-30b-a3b-shape | %s | %s | %d | %.1f | %.2f | %.2f |\n", be->name(), dtype_name(dt),
                s.layers, prefill / best_p, decode / best_d, bytes / dstep / 1e9);
    // The layers take the time less the lm_head's share, which decode reads at the same rate.
    const double per_layer = dstep * (layer_bytes * s.layers) / bytes / s.layers;
    std::printf("estimate for all %d layers: decode %.2f tok/s (%.2f ms per layer, the lm_head's share counted once)\n",
                s.full_layers, 1.0 / (per_layer * s.full_layers + dstep - per_layer * s.layers), per_layer * 1e3);
#ifdef OUTRO_HAVE_CUDA
    if (device == "cuda") {
      // The decode's weight stream against the device's copy rate (read + written bytes per second,
      // as cudaMemcpy moves them), and whether the whole thinker's decoder fits in bf16.
      const double copy = cuda_api::copy_bandwidth(0, size_t(1) << 30, 5);
      cuda_api::DeviceInfo info;
      std::string why;
      cuda_api::device_info(0, &info, &why);
      std::printf("%s: copy bandwidth %.0f GB/s; decode streams %.2f GB/s of weights = %.1f%% of it\n",
                  info.name.c_str(), copy / 1e9, bytes / dstep / 1e9, 100.0 * bytes / dstep / copy);
      const double full = device_bytes + layer_all * (s.full_layers - s.layers) * 2.0 / double(dtype_size(dt));
      std::printf("all %d layers in bf16: %.1f GB of decoder weights on the device (measured %.2f GB for %d layers, "
                  "+ %d x %.2f GB); device memory %.1f GB: %s (vision and audio towers not counted)\n",
                  s.full_layers, full / 1e9, device_bytes / 1e9, s.layers, s.full_layers - s.layers,
                  layer_all * 2.0 / double(dtype_size(dt)) / 1e9, double(info.mem_total) / 1e9,
                  full < double(info.mem_total) ? "fits" : "does NOT fit");
    }
#endif
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_moe: %s\n", e.what());
    return 1;
  }
  return 0;
}
