// Whole forwards on the CPU's bf16 matrix paths (AVX-512 BF16, AMX: whichever this CPU has; the
// others are reported as skipped) against float32 math on the same weights: every decoder fixture
// (the float32 ones converted to bf16 first, since float32 weights keep float32 products), the omni
// fixture's vision and audio towers, and transformers' own float32-math logits where the fixture
// has them.
//
// Tolerance. The kernel tests bound each product by 2^-8 of Σ|x·w| (x rounded to bf16). A forward
// chains a few such products per layer; the norms between them rescale, so relative errors add
// rather than multiply, and these fixtures are 2-4 layers deep: a few parts in a thousand of the
// largest logit is expected. We allow kTol = 2e-2, the tolerance test_parity.cpp already grants
// transformers' own 16-bit run against its float32 one: the bf16 path must be no worse than that.
// Argmax must agree wherever float32's top-1 margin is more than twice that tolerance (a position
// closer than that may legitimately flip).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>

#include "kernels/backend.h"
#include "models/model.h"
#include "models/multimodal_input.h"
#include "runtime/session.h"
#include "test_util.h"

namespace outro {
namespace {

namespace fs = std::filesystem;
using test::fixture;
using test::rel_err;

constexpr double kTol = 2e-2;

std::vector<cpu::Isa> bf16_paths() {
  std::vector<cpu::Isa> v;
  for (cpu::Isa i : {cpu::Isa::Avx512Bf16, cpu::Isa::Amx}) {
    if (cpu::isa_supported(i)) {
      v.push_back(i);
    } else {
      const char* why = "";
      if (i == cpu::Isa::Amx) cpu::cpu_amx_usable(&why);
      std::printf("[  skipped ] %s path: not available on this CPU%s%s\n", cpu::isa_name(i), *why ? ": " : "", why);
    }
  }
  return v;
}

// A copy of a checkpoint folder with its float32 tensors stored as bf16 (one file; the JSON files
// other than the shard index and the reference copied as they are).
std::string bf16_copy(const std::string& src, const std::string& name) {
  const std::string dst = test::tmp_dir("bf16_" + name);
  auto store = WeightStore::open(src);
  std::vector<TensorOut> out;
  for (const auto& [n, t] : store->tensors()) {
    TensorOut o;
    o.name = n;
    o.shape = t.shape;
    if (t.dtype == DType::F32) {
      o.dtype = DType::BF16;
      const auto f = read_f32(t);
      o.bytes.resize(f.size() * 2);
      for (size_t i = 0; i < f.size(); ++i) {
        const uint16_t h = f32_to_bf16(f[i]);
        std::memcpy(o.bytes.data() + 2 * i, &h, 2);
      }
    } else {
      o.dtype = t.dtype;
      o.bytes.assign(t.data, t.data + t.nbytes);
    }
    out.push_back(std::move(o));
  }
  write_safetensors(dst + "/model.safetensors", out);
  for (const auto& e : fs::directory_iterator(src)) {
    const std::string f = e.path().filename().string();
    if (e.path().extension() == ".json" && f != "model.safetensors.index.json" && f != "ref.json")
      fs::copy_file(e.path(), dst + "/" + f, fs::copy_options::overwrite_existing);
  }
  return dst;
}

std::vector<float> logits_all(const Model& m, Backend& be, const std::vector<int32_t>& ids) {
  Session s(m, be, int(ids.size()) + 1);
  std::vector<float> logits;
  s.forward(ids, &logits, true);
  return logits;
}

// Positions whose argmax differs although float32's top-1 margin exceeds 2·kTol·max|logit|.
int confident_flips(const std::vector<float>& got, const std::vector<float>& want, int V) {
  float scale = 0;
  for (float v : want) scale = std::max(scale, std::fabs(v));
  int flips = 0;
  for (size_t p = 0; p + size_t(V) <= want.size(); p += size_t(V)) {
    const float* w = want.data() + p;
    const float* g = got.data() + p;
    const int a = int(std::max_element(w, w + V) - w);
    float second = -INFINITY;
    for (int i = 0; i < V; ++i)
      if (i != a) second = std::max(second, w[i]);
    const int b = int(std::max_element(g, g + V) - g);
    if (a != b && w[a] - second > 2 * kTol * scale) ++flips;
  }
  return flips;
}

const std::vector<std::string> kModels = {"qwen2_gqa_f32",    "qwen2_tied_f32", "qwen2_mqa_bf16",
                                          "llama_gqa_f32",    "llama_bias_f16", "qwen2_sharded_f32",
                                          "omni_thinker_f32", "vl_f32"};

TEST(Bf16Forward, DecoderFixturesMatchFloat32MathOnTheSameWeights) {
  const auto paths = bf16_paths();
  if (paths.empty()) GTEST_SKIP() << "no bf16 matrix path on this CPU";
  for (const std::string& name : kModels) {
    SCOPED_TRACE(name);
    const std::string src = fixture("models/" + name);
    auto ref = WeightStore::open(src + "/ref.safetensors");
    auto ids64 = read_i64(ref->get("input_ids"));
    const std::vector<int32_t> ids(ids64.begin(), ids64.end());
    auto probe = Model::load(src);
    const bool f32 = probe->layers[0].q->dtype == DType::F32;
    const std::string dir = f32 ? bf16_copy(src, name) : src;
    auto m = Model::load(dir);
    auto be = make_cpu_backend();
    const int V = m->config().vocab;
    ASSERT_GE(int(ids.size()), cpu::kernels_for(paths[0])->mm->min_n) << "too short to reach the bf16 path";
    std::vector<float> want;
    {
      test::F32Products pin;
      want = logits_all(*m, *be, ids);
    }
    for (cpu::Isa isa : paths) {
      test::F32Products restore;  // restores the set after the switch below
      ASSERT_TRUE(cpu::set_isa(isa));
      const auto got = logits_all(*m, *be, ids);
      const double err = rel_err(got, want);
      EXPECT_LT(err, kTol) << cpu::isa_name(isa);
      EXPECT_GT(err, 0.0) << cpu::isa_name(isa) << ": identical to float32, so the bf16 path did not run";
      EXPECT_EQ(confident_flips(got, want, V), 0) << cpu::isa_name(isa);
      double ref_err = -1;
      if (!f32 && ref->has("logits_f32math")) {
        ref_err = rel_err(got, read_f32(ref->get("logits_f32math")));
        EXPECT_LT(ref_err, kTol) << cpu::isa_name(isa) << " against transformers (float32 math)";
      }
      std::printf("[ bf16 fwd ] %-18s %-10s logits rel err %.2g vs float32 math on the same weights%s\n",
                  name.c_str(), cpu::isa_name(isa), err,
                  ref_err >= 0 ? (", " + std::to_string(ref_err) + " vs transformers").c_str() : "");
    }
    if (f32) fs::remove_all(dir);
  }
}

TEST(Bf16Forward, OmniTowersMatchFloat32MathOnTheSameWeights) {
  const auto paths = bf16_paths();
  if (paths.empty()) GTEST_SKIP() << "no bf16 matrix path on this CPU";
  auto px = WeightStore::open(fixture("omni/omni_mm/ref.safetensors"));
  const auto video = read_f32(px->get("pixel_values_videos"));
  const auto mel = read_f32(px->get("input_features"));
  const std::string dir = bf16_copy(fixture("omni/omni_mm"), "omni_mm");
  auto model = Model::load(dir);
  auto be = make_cpu_backend();
  MultimodalModel mm(*model, *be);
  std::vector<float> want_v, want_a;
  {
    test::F32Products pin;
    want_v = mm.vision().encode(video.data(), 3, 4, 6);
    want_a = mm.audio().encode(mel.data(), 220);
  }
  for (cpu::Isa isa : paths) {
    test::F32Products restore;
    ASSERT_TRUE(cpu::set_isa(isa));
    const auto v = mm.vision().encode(video.data(), 3, 4, 6);
    const auto a = mm.audio().encode(mel.data(), 220);
    const double ev = rel_err(v, want_v), ea = rel_err(a, want_a);
    EXPECT_LT(ev, kTol) << cpu::isa_name(isa) << " vision tower";
    EXPECT_LT(ea, kTol) << cpu::isa_name(isa) << " audio tower";
    EXPECT_GT(ev, 0.0) << cpu::isa_name(isa) << " vision tower identical to float32: the bf16 path did not run";
    EXPECT_GT(ea, 0.0) << cpu::isa_name(isa) << " audio tower identical to float32: the bf16 path did not run";
    std::printf("[ bf16 fwd ] omni towers %-10s vision rel err %.2g, audio rel err %.2g\n", cpu::isa_name(isa), ev, ea);
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace outro
