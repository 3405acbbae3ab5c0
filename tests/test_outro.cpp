// OutRo (src/outro): sink-out attention against a dense-mask reference, incremental decoding against
// full recomputation, alignment geometry, bit-identity with every edit off, decode-step cost, the
// presets and config files, the CLI, and parity with the reference implementation's fixtures
// (tools/make_fixtures.py: patched eager attention + residual-stream hooks in transformers).
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <map>

#include "core/error.h"
#include "io/config.h"
#include "io/safetensors.h"
#include "kernels/backend.h"
#include "models/model.h"
#include "models/random_model.h"
#include "outro/outro.h"
#include "runtime/hooks.h"
#include "runtime/session.h"
#include "test_util.h"

namespace outro {
namespace {

namespace fs = std::filesystem;
using test::fixture;
using test::rel_err;

// ---------------------------------------------------------------------------------------- helpers

// Removes the model folder when the test program ends.
struct RemoveRandomModel : ::testing::Environment {
  void TearDown() override {
    if (!dir.empty()) fs::remove_all(dir);
  }
  static inline std::string dir;
};
[[maybe_unused]] ::testing::Environment* const kCleanup = ::testing::AddGlobalTestEnvironment(new RemoveRandomModel);

// A 4-layer random Qwen2 (GQA, biases) shared by the tests below.
const std::string& random_model_dir() {
  static const std::string dir = [] {
    std::string d = test::tmp_dir("outro_model");
    RandomModelSpec s;
    s.hidden = 64;
    s.intermediate = 128;
    s.layers = 4;
    s.heads = 4;
    s.kv_heads = 2;
    s.vocab = 256;
    s.std = 0.15f;
    s.seed = 11;
    write_random_model(d, s);
    RemoveRandomModel::dir = d;
    return d;
  }();
  return dir;
}

const Model& random_model() {
  static std::unique_ptr<Model> m = Model::load(random_model_dir());
  return *m;
}

std::vector<int32_t> some_ids(int n, int vocab, uint32_t seed = 3) {
  std::vector<int32_t> ids;
  uint32_t x = seed;
  for (int i = 0; i < n; ++i) {
    x = x * 1664525u + 1013904223u;
    ids.push_back(int32_t((x >> 8) % uint32_t(vocab)));
  }
  return ids;
}

OutroParams params(std::vector<int> sinks, int l_out, bool sinkout, bool align, AlignTarget t, float lambda) {
  OutroParams p;
  p.strategy = "test";
  p.l_out = l_out;
  p.auto_sinks = sinks.empty();
  p.sinks = std::move(sinks);
  p.sinkout = sinkout;
  p.align = align;
  p.target = t;
  p.lambda = lambda;
  return p;
}

std::vector<float> run_all(const Model& m, Backend& be, const std::vector<int32_t>& ids, std::vector<Intervention*> ivs,
                           Observer* obs = nullptr) {
  Session s(m, be, int(ids.size()) + 4);
  for (auto* iv : ivs) s.add_intervention(iv);
  if (obs) s.add_observer(obs);
  std::vector<float> logits;
  s.forward(ids, &logits, true);
  return logits;
}

std::vector<float> rows(const std::vector<float>& all, int V, int r0, int r1) {
  return std::vector<float>(all.begin() + long(r0) * V, all.begin() + long(r1) * V);
}

// Copies of a hook-point tensor taken by an intervention (attached before OutRo: the unedited values).
class Snoop : public Intervention {
 public:
  std::string name() const override { return "snoop"; }
  void resid_pre(ForwardCtx& ctx, int layer, Buf h) override {
    auto& v = resid[layer];
    std::vector<float> t(size_t(ctx.n) * ctx.cfg->hidden);
    ctx.be->download(h, 0, t.data(), t.size());
    v.insert(v.end(), t.begin(), t.end());
  }
  void qkv(ForwardCtx& ctx, int layer, Buf, Buf, Buf vb) override {
    auto& v = value[layer];
    std::vector<float> t(size_t(ctx.n) * ctx.cfg->kv_heads * ctx.cfg->head_dim);
    ctx.be->download(vb, 0, t.data(), t.size());
    v.insert(v.end(), t.begin(), t.end());
  }
  std::map<int, std::vector<float>> resid, value;
};

double dot(const float* a, const float* b, int n) {
  double s = 0;
  for (int i = 0; i < n; ++i) s += double(a[i]) * b[i];
  return s;
}
double norm(const float* a, int n) { return std::sqrt(dot(a, a, n)); }

// Dense-mask reference: builds the boolean [n, n] mask (causal, sink rows open up to `end`) and runs
// plain masked softmax attention in double. q [n,H,hd], k/v [n,KV,hd]; pattern [H,n,n], z [n,H,hd].
void dense_reference(const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v, int n,
                     int H, int KV, int hd, const std::vector<int>& sinks, int end, std::vector<double>& pattern,
                     std::vector<double>& z) {
  std::vector<uint8_t> allowed(size_t(n) * n, 0);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j <= i; ++j) allowed[size_t(i) * n + j] = 1;
  for (int s : sinks)
    for (int j = 0; j < std::min(end, n); ++j) allowed[size_t(s) * n + j] = 1;
  pattern.assign(size_t(H) * n * n, 0.0);
  z.assign(size_t(n) * H * hd, 0.0);
  const double scale = 1.0 / std::sqrt(double(hd));
  for (int h = 0; h < H; ++h) {
    const int kvh = h / (H / KV);
    for (int i = 0; i < n; ++i) {
      std::vector<double> sc(static_cast<size_t>(n));
      double mx = -1e300;
      for (int j = 0; j < n; ++j) {
        double a = 0;
        for (int c = 0; c < hd; ++c) a += double(q[(size_t(i) * H + h) * hd + c]) * k[(size_t(j) * KV + kvh) * hd + c];
        sc[size_t(j)] = allowed[size_t(i) * n + j] ? a * scale : -INFINITY;
        mx = std::max(mx, sc[size_t(j)]);
      }
      double sum = 0;
      for (int j = 0; j < n; ++j) sum += (sc[size_t(j)] = std::exp(sc[size_t(j)] - mx));
      for (int j = 0; j < n; ++j) {
        const double w = sc[size_t(j)] / sum;
        pattern[(size_t(h) * n + i) * n + j] = w;
        for (int c = 0; c < hd; ++c) z[(size_t(i) * H + h) * hd + c] += w * v[(size_t(j) * KV + kvh) * hd + c];
      }
    }
  }
}

// --------------------------------------------------------------------- sink-out vs dense reference

TEST(OutroSinkOut, KernelPolicyEqualsDenseMaskAttention) {
  const Model& m = random_model();
  auto be = make_cpu_backend();
  const auto& c = m.config();
  const int n = 16, l_out = 1;
  for (auto [sinks, end] : {std::pair{std::vector<int>{0}, 16}, std::pair{std::vector<int>{0, 3, 7}, 16},
                            std::pair{std::vector<int>{2, 5}, 12}}) {
    OutroParams p = params(sinks, l_out, true, false, AlignTarget::Hidden, 0.f);
    p.sinkout_end = end;
    OutRo o(p);
    const std::vector<std::string> names = {hook_name(l_out, Hook::Q), hook_name(l_out, Hook::K),
                                            hook_name(l_out, Hook::V), hook_name(l_out, Hook::Pattern),
                                            hook_name(l_out, Hook::Z), hook_name(0, Hook::Pattern)};
    Recorder rec(names);
    auto ids = some_ids(n, c.vocab);
    run_all(m, *be, ids, {&o}, &rec);
    std::vector<double> pat, z;
    dense_reference(rec.get(names[0])->data, rec.get(names[1])->data, rec.get(names[2])->data, n, c.heads, c.kv_heads,
                    c.head_dim, sinks, end, pat, z);
    const auto& got_p = rec.get(names[3])->data;
    const auto& got_z = rec.get(names[4])->data;
    ASSERT_EQ(got_p.size(), pat.size());
    double ep = 0, ez = 0, opened = 0;
    for (size_t i = 0; i < pat.size(); ++i) ep = std::max(ep, std::fabs(got_p[i] - pat[i]));
    for (size_t i = 0; i < z.size(); ++i) ez = std::max(ez, std::fabs(got_z[i] - z[i]));
    // the sink rows really look ahead
    for (int h = 0; h < c.heads; ++h)
      for (int j = sinks[0] + 1; j < end; ++j) opened += got_p[(size_t(h) * n + sinks[0]) * n + j];
    EXPECT_LT(ep, 1e-5) << "pattern, sinks " << ::testing::PrintToString(sinks);
    EXPECT_LT(ez, 1e-4) << "z, sinks " << ::testing::PrintToString(sinks);
    EXPECT_GT(opened, 0.1) << "the sink rows must attend to later tokens";
    // other layers stay causal
    const auto& p0 = rec.get(names[5])->data;
    for (int h = 0; h < c.heads; ++h)
      for (int i = 0; i < n; ++i)
        for (int j = i + 1; j < n; ++j) ASSERT_EQ(p0[(size_t(h) * n + i) * n + j], 0.f);
  }
}

TEST(OutroSinkOut, ChunkedCacheRowsEqualDenseMask) {
  // Sink rows in a later chunk (past > 0) through the backend directly.
  auto be = make_cpu_backend();
  const int H = 4, KV = 2, hd = 8, n = 14, past = 5, nn = n - past;
  std::vector<float> q(size_t(n) * H * hd), k(size_t(n) * KV * hd), v(size_t(n) * KV * hd);
  uint32_t x = 9;
  for (auto* vec : {&q, &k, &v})
    for (auto& f : *vec) {
      x = x * 1664525u + 1013904223u;
      f = float(int(x >> 9) % 2001 - 1000) / 500.f;
    }
  const std::vector<int> sinks = {1, 6, 9};
  const int end = 12;
  std::vector<double> pat, zr;
  dense_reference(q, k, v, n, H, KV, hd, sinks, end, pat, zr);
  Buf qb = be->alloc(size_t(nn) * H * hd), kb = be->alloc(k.size()), vb = be->alloc(v.size()),
      zb = be->alloc(size_t(nn) * H * hd);
  be->upload(qb, 0, q.data() + size_t(past) * H * hd, size_t(nn) * H * hd);
  be->upload(kb, 0, k.data(), k.size());
  be->upload(vb, 0, v.data(), v.size());
  AttnParams p;
  p.n_heads = H;
  p.n_kv = KV;
  p.head_dim = hd;
  p.scale = 1.f / std::sqrt(float(hd));
  p.n_new = nn;
  p.past = past;
  p.sinkout_rows = sinks.data();
  p.n_sinkout = int(sinks.size());
  p.sinkout_end = end;
  std::vector<float> pattern(size_t(H) * nn * n);
  p.pattern_out = pattern.data();
  be->attention(zb, qb, kb, vb, p);
  std::vector<float> z(size_t(nn) * H * hd);
  be->download(zb, 0, z.data(), z.size());
  double e = 0;
  for (int h = 0; h < H; ++h)
    for (int r = 0; r < nn; ++r)
      for (int j = 0; j < n; ++j)
        e = std::max(e, std::fabs(pattern[(size_t(h) * nn + r) * n + j] - pat[(size_t(h) * n + past + r) * n + j]));
  EXPECT_LT(e, 1e-6);
  e = 0;
  for (size_t i = 0; i < z.size(); ++i) e = std::max(e, std::fabs(z[i] - zr[size_t(past) * H * hd + i]));
  EXPECT_LT(e, 1e-5);
  for (Buf* b : {&qb, &kb, &vb, &zb}) be->release(*b);
}

// ----------------------------------------------------------- incremental decoding == recomputation

struct DecodeCase {
  const char* what;
  std::vector<int> sinks;  // empty: automatic (Φ_LLM, falling back to 0)
  bool sinkout, align;
  AlignTarget target;
};

TEST(OutroDecode, IncrementalEqualsFullRecomputeWithSamePolicy) {
  const Model& m = random_model();
  auto be = make_cpu_backend();
  const int V = m.config().vocab, P = 12, N = 16;
  auto ids = some_ids(N, V, 5);
  auto plain = run_all(m, *be, ids, {});
  for (const DecodeCase& dc : std::vector<DecodeCase>{{"sinkout+hidden, sink 0", {0}, true, true, AlignTarget::Hidden},
                                                      {"sinkout+hidden, sinks 0,3", {0, 3}, true, true, AlignTarget::Hidden},
                                                      {"sinkout+value, sinks 0,3", {0, 3}, true, true, AlignTarget::Value},
                                                      {"hidden only, auto (fallback)", {}, false, true, AlignTarget::Hidden},
                                                      {"sinkout only, sinks 2,5", {2, 5}, true, false, AlignTarget::Hidden},
                                                      {"value only, sink 0", {0}, false, true, AlignTarget::Value}}) {
    OutroParams p = params(dc.sinks, 1, dc.sinkout, dc.align, dc.target, 0.3f);
    // full recompute of 16 tokens, sink-out bounded by the prompt of 12
    OutroParams pf = p;
    pf.sinkout_end = P;
    OutRo full_o(pf);
    auto full = run_all(m, *be, ids, {&full_o});
    EXPECT_GT(rel_err(full, plain), 1e-3) << dc.what << ": the edit must change the logits";
    // prefill 12, then 4 single steps (the same intervention object reused for two sequences)
    OutRo inc_o(p);
    for (int rep = 0; rep < 2; ++rep) {
      Session s(m, *be, N);
      s.add_intervention(&inc_o);
      std::vector<float> lg;
      s.forward(ids.data(), P, &lg, true);
      EXPECT_LT(rel_err(lg, rows(full, V, 0, P)), 1e-5) << dc.what << " prefill";
      for (int i = P; i < N; ++i) {
        s.forward(&ids[size_t(i)], 1, &lg, false);
        EXPECT_LT(rel_err(lg, rows(full, V, i, i + 1)), 1e-5) << dc.what << " position " << i;
      }
      EXPECT_EQ(inc_o.sinks(), full_o.sinks()) << dc.what;
    }
  }
}

// --------------------------------------------------------------------------- alignment geometry

TEST(OutroAlign, HiddenAlignmentIsNormPreservingAndMovesTowardTheSink) {
  const Model& m = random_model();
  auto be = make_cpu_backend();
  const auto& c = m.config();
  const int D = c.hidden, P = 10, L = c.layers;
  auto ids = some_ids(P + 3, c.vocab, 8);
  OutRo o(params({0, 4}, 1, true, true, AlignTarget::Hidden, 0.25f));
  Snoop before;
  std::vector<std::string> names;
  for (int l = 0; l < L; ++l) names.push_back(hook_name(l, Hook::ResidPre));
  Recorder after(names);
  Session s(m, *be, P + 3);
  s.add_intervention(&before);
  s.add_intervention(&o);
  s.add_observer(&after);
  std::vector<float> lg;
  s.forward(ids.data(), P, &lg, false);
  for (int i = P; i < P + 3; ++i) s.forward(&ids[size_t(i)], 1, &lg, false);
  const int n = P + 3;
  int checked = 0;
  for (int l = 0; l < L; ++l) {
    const float* b = before.resid[l].data();
    const float* a = after.get(names[size_t(l)])->data.data();
    ASSERT_EQ(before.resid[l].size(), size_t(n) * D);
    if (l <= 1) {  // not an align layer
      EXPECT_EQ(std::memcmp(a, b, size_t(n) * D * 4), 0) << "layer " << l;
      continue;
    }
    // the sink target: mean of the (unedited) sink rows 0 and 4 of the prefill
    std::vector<float> t(static_cast<size_t>(D));
    for (int k = 0; k < D; ++k) t[size_t(k)] = 0.5f * (b[k] + b[size_t(4) * D + k]);
    for (int i = 0; i < n; ++i) {
      const float* bi = b + size_t(i) * D;
      const float* ai = a + size_t(i) * D;
      if (i == 0 || i == 4) {
        EXPECT_EQ(std::memcmp(ai, bi, size_t(D) * 4), 0) << "sink rows are untouched, layer " << l;
        continue;
      }
      EXPECT_NEAR(norm(ai, D) / norm(bi, D), 1.0, 1e-5) << "layer " << l << " row " << i;
      const double cb = dot(bi, t.data(), D) / (norm(bi, D) * norm(t.data(), D));
      const double ca = dot(ai, t.data(), D) / (norm(ai, D) * norm(t.data(), D));
      EXPECT_GT(ca, cb + 1e-3) << "cosine to the sink must go up, layer " << l << " row " << i;
      ++checked;
    }
  }
  EXPECT_EQ(checked, (L - 2) * (n - 2));
}

TEST(OutroAlign, ValueAlignmentIsNormPreservingPerKvHead) {
  const Model& m = random_model();
  auto be = make_cpu_backend();
  const auto& c = m.config();
  const int KV = c.kv_heads, hd = c.head_dim, P = 9, n = P + 2, l = 3;
  auto ids = some_ids(n, c.vocab, 12);
  OutRo o(params({0}, 1, false, true, AlignTarget::Value, 0.4f));
  Snoop before;
  Recorder after({hook_name(l, Hook::V), hook_name(1, Hook::V)});
  Session s(m, *be, n);
  s.add_intervention(&before);
  s.add_intervention(&o);
  s.add_observer(&after);
  std::vector<float> lg;
  s.forward(ids.data(), P, &lg, false);
  for (int i = P; i < n; ++i) s.forward(&ids[size_t(i)], 1, &lg, false);
  EXPECT_EQ(after.get(hook_name(1, Hook::V))->data, before.value[1]) << "layer 1 is not an align layer";
  const float* b = before.value[l].data();
  const float* a = after.get(hook_name(l, Hook::V))->data.data();
  for (int i = 0; i < n; ++i)
    for (int g = 0; g < KV; ++g) {
      const float* bi = b + (size_t(i) * KV + g) * hd;
      const float* ai = a + (size_t(i) * KV + g) * hd;
      const float* t = b + size_t(g) * hd;  // sink 0's value of this kv head
      if (i == 0) {
        EXPECT_EQ(std::memcmp(ai, bi, size_t(hd) * 4), 0);
        continue;
      }
      EXPECT_NEAR(norm(ai, hd) / norm(bi, hd), 1.0, 1e-5);
      EXPECT_GT(dot(ai, t, hd) / norm(ai, hd), dot(bi, t, hd) / norm(bi, hd) + 1e-4) << "row " << i << " head " << g;
    }
}

// ------------------------------------------------------------------- every edit off: bit-identical

TEST(OutroIdentity, EditsOffGiveBitIdenticalLogits) {
  const Model& m = random_model();
  auto be = make_cpu_backend();
  const int P = 10, N = 14;
  auto ids = some_ids(N, m.config().vocab, 21);
  auto run = [&](Intervention* iv) {
    Session s(m, *be, N);
    if (iv) s.add_intervention(iv);
    std::vector<float> out, lg;
    s.forward(ids.data(), P, &lg, true);
    out = lg;
    for (int i = P; i < N; ++i) {
      s.forward(&ids[size_t(i)], 1, &lg, false);
      out.insert(out.end(), lg.begin(), lg.end());
    }
    return out;
  };
  auto base = run(nullptr);
  for (auto t : {AlignTarget::Hidden, AlignTarget::Value}) {
    OutroParams p = params({}, 2, false, true, t, 0.f);  // auto sinks (read-only), lambda 0, no sink-out
    EXPECT_FALSE(outro_active(p));
    OutRo o(p);
    auto got = run(&o);
    ASSERT_EQ(got.size(), base.size());
    EXPECT_EQ(std::memcmp(got.data(), base.data(), base.size() * 4), 0);
    EXPECT_EQ(o.sinks(), std::vector<int>{0});
  }
  OutRo b(outro_preset("baseline"));
  auto got = run(&b);
  EXPECT_EQ(std::memcmp(got.data(), base.data(), base.size() * 4), 0);
}

// ------------------------------------------------------------------- a decode step costs the same

// Forwards to the CPU backend and counts the calls of each op (and the mask policy it was given).
class CountingBackend : public Backend {
 public:
  explicit CountingBackend(std::unique_ptr<Backend> b) : b_(std::move(b)) {}
  std::map<std::string, int> calls;
  int sinkout_calls = 0;
  const char* name() const override { return b_->name(); }
  Buf alloc(size_t n) override { return ++calls["alloc"], b_->alloc(n); }
  void release(Buf& x) override { ++calls["release"], b_->release(x); }
  void upload(Buf d, size_t o, const float* s, size_t n) override { ++calls["upload"], b_->upload(d, o, s, n); }
  void download(const Buf& s, size_t o, float* d, size_t n) override { ++calls["download"], b_->download(s, o, d, n); }
  void copy(Buf d, size_t a, const Buf& s, size_t b, size_t n) override { ++calls["copy"], b_->copy(d, a, s, b, n); }
  void fill(Buf d, size_t o, size_t n, float v) override { ++calls["fill"], b_->fill(d, o, n, v); }
  Weight weight(const TensorInfo& t) override { return b_->weight(t); }
  void embed(Buf o, const Weight& t, const int32_t* ids, int n) override { ++calls["embed"], b_->embed(o, t, ids, n); }
  void matmul(Buf y, const Buf& x, int n, const Weight& w, const Weight* bias) override {
    ++calls["matmul"], b_->matmul(y, x, n, w, bias);
  }
  void rmsnorm(Buf y, const Buf& x, int n, const Weight& w, float eps) override {
    ++calls["rmsnorm"], b_->rmsnorm(y, x, n, w, eps);
  }
  void rope(Buf x, int n, int h, int hd, const int32_t* pos, const float* f) override {
    ++calls["rope"], b_->rope(x, n, h, hd, pos, f);
  }
  void attention(Buf z, const Buf& q, const Buf& k, const Buf& v, const AttnParams& p) override {
    ++calls["attention"];
    if (p.n_sinkout) ++sinkout_calls;
    b_->attention(z, q, k, v, p);
  }
  void swiglu(Buf o, const Buf& g, const Buf& u, size_t n) override { ++calls["swiglu"], b_->swiglu(o, g, u, n); }
  void add(Buf y, const Buf& x, size_t n) override { ++calls["add"], b_->add(y, x, n); }
  void mean_rows(Buf o, const Buf& x, int d, const int* r, int n) override { ++calls["mean_rows"], b_->mean_rows(o, x, d, r, n); }
  void align_rows(Buf x, int n, int g, int gd, const Buf& t, const uint8_t* s, float l) override {
    ++calls["align_rows"], b_->align_rows(x, n, g, gd, t, s, l);
  }
  void zero_cols(Buf x, int n, int rl, int c0, int nc) override { ++calls["zero_cols"], b_->zero_cols(x, n, rl, c0, nc); }
  void zero_top_dim(Buf x, int r, int g, int gd) override { ++calls["zero_top_dim"], b_->zero_top_dim(x, r, g, gd); }

 private:
  std::unique_ptr<Backend> b_;
};

TEST(OutroCost, DecodeStepAddsOnlyOneAlignPerAlignLayerAndNoHostTraffic) {
  const Model& m = random_model();
  const int P = 12, L = m.config().layers;
  auto ids = some_ids(P + 1, m.config().vocab, 4);
  // The intervention is made after the backend and destroyed before it (it keeps buffers there).
  auto step_calls = [&](const char* preset, AlignTarget t, int* sinkout_prefill, int* sinkout_step) {
    CountingBackend be(make_cpu_backend());
    std::unique_ptr<OutRo> iv;
    if (preset) {
      OutroParams p = outro_preset(preset);
      p.target = t;
      iv = std::make_unique<OutRo>(p);
    }
    Session s(m, be, P + 1);
    if (iv) s.add_intervention(iv.get());
    std::vector<float> lg;
    s.forward(ids.data(), P, &lg, false);
    *sinkout_prefill = be.sinkout_calls;
    be.calls.clear();
    be.sinkout_calls = 0;
    s.forward(&ids[size_t(P)], 1, &lg, false);
    *sinkout_step = be.sinkout_calls;
    return be.calls;
  };
  int sp = 0, ss = 0;
  auto base = step_calls(nullptr, AlignTarget::Hidden, &sp, &ss);
  EXPECT_EQ(sp, 0);
  // outro: auto sinks, l_out 2, hidden alignment on 3..L-1
  auto got = step_calls("outro", AlignTarget::Hidden, &sp, &ss);
  EXPECT_EQ(sp, 1) << "sink-out in the prefill";
  EXPECT_EQ(ss, 0) << "a decode step has no sink rows";
  auto expect = base;
  expect["align_rows"] += L - 3;
  EXPECT_EQ(got, expect);
  EXPECT_EQ(step_calls("outro-sinkout-only", AlignTarget::Hidden, &sp, &ss), base);
  EXPECT_EQ(step_calls("outro", AlignTarget::Value, &sp, &ss), expect);
}

// ------------------------------------------------------------------------ sink set selection

TEST(OutroSinks, PhiLLMAndFallback) {
  const int n = 5, d = 4;
  std::vector<float> h(size_t(n) * d, 0.5f);
  h[size_t(2) * d + 1] = -800.f;  // massive activation in token 2
  auto r = phi_llm(h.data(), n, d, 100, 1000);
  EXPECT_EQ(r.sinks, std::vector<int>{2});
  EXPECT_FLOAT_EQ(r.median, 0.5f);
  EXPECT_TRUE(phi_llm(h.data(), n, d, 1000, 1000).sinks.empty()) << "tau_abs";
  EXPECT_TRUE(phi_llm(h.data(), n, d, 100, 2000).sinks.empty()) << "tau_rel x median";
  // the median is exact (lower middle element) for odd and even counts, with ties, zeros and signs
  uint32_t x = 77;
  for (int rows : {1, 3, 8, 37}) {
    std::vector<float> v(size_t(rows) * 7);
    for (auto& f : v) {
      x = x * 1664525u + 1013904223u;
      f = float(int(x >> 12) % 41 - 20) * (x & 1 ? 0.37f : -1.9e-3f);
    }
    std::vector<float> a(v.size());
    for (size_t i = 0; i < v.size(); ++i) a[i] = std::fabs(v[i]);
    std::sort(a.begin(), a.end());
    EXPECT_EQ(phi_llm(v.data(), rows, 7, 1, 1).median, a[(a.size() - 1) / 2]) << rows;
  }
}

// Puts a massive activation into token `row` at the input of layer `layer` (attached before OutRo).
class Massive : public Intervention {
 public:
  Massive(int layer, int row) : layer_(layer), row_(row) {}
  std::string name() const override { return "massive"; }
  void resid_pre(ForwardCtx& ctx, int layer, Buf h) override {
    if (layer == layer_ && ctx.past == 0) ctx.be->fill(h, size_t(row_) * ctx.cfg->hidden + 7, 1, 5000.f);
  }

 private:
  int layer_, row_;
};

TEST(OutroSinks, ChosenByPhiLLMAtTheInputOfLout) {
  const Model& m = random_model();
  auto be = make_cpu_backend();
  auto ids = some_ids(10, m.config().vocab, 2);
  Massive mass(2, 4);
  OutRo o(outro_preset("outro"));
  run_all(m, *be, ids, {&mass, &o});
  EXPECT_EQ(o.sinks(), std::vector<int>{4});
  EXPECT_EQ(o.sink_rule(), "phi_llm");
  EXPECT_NE(o.explain().find("positions [4] chosen by Φ_LLM at the input of layer 2"), std::string::npos) << o.explain();
  Massive late(3, 4);  // after l_out = 2: not seen when the sinks are chosen
  OutRo o2(outro_preset("outro"));
  run_all(m, *be, ids, {&late, &o2});
  EXPECT_EQ(o2.sink_rule(), "fallback");
  EXPECT_EQ(o2.sinks(), std::vector<int>{0});
  EXPECT_NE(o2.explain().find("first token"), std::string::npos);
}

TEST(OutroSinks, ExplicitSinksMustBePromptPositions) {
  const Model& m = random_model();
  auto be = make_cpu_backend();
  OutRo o(params({0, 20}, 1, true, true, AlignTarget::Hidden, 0.1f));
  try {
    run_all(m, *be, some_ids(8, m.config().vocab), {&o});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("sink position 20 is outside the prompt of 8 tokens"), std::string::npos)
        << e.what();
  }
}

// --------------------------------------------------------------------------- presets and configs

TEST(OutroConfig, Presets) {
  auto o = outro_preset("outro");
  EXPECT_TRUE(o.sinkout && o.align && o.auto_sinks);
  EXPECT_EQ(o.l_out, 2);
  EXPECT_FLOAT_EQ(o.lambda, 0.1f);
  EXPECT_EQ(o.target, AlignTarget::Hidden);
  EXPECT_EQ(o.tau_abs, 100.0);
  EXPECT_EQ(o.tau_rel, 1000.0);
  EXPECT_EQ(o.first_align_layer(), 3);
  EXPECT_EQ(o.last_align_layer(8), 7);
  auto a = outro_preset("outro-align-only");
  EXPECT_TRUE(!a.sinkout && a.align);
  auto s = outro_preset("outro-sinkout-only");
  EXPECT_TRUE(s.sinkout && !s.align);
  auto b = outro_preset("baseline");
  EXPECT_FALSE(outro_active(b));
  try {
    outro_preset("outr0");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("outro-sinkout-only"), std::string::npos) << e.what();
  }
}

TEST(OutroConfig, JsonAndTomlSetEveryParameter) {
  const std::string toml =
      "# OutRo parameters\n"
      "strategy = \"outro-align-only\"  # base preset\n"
      "l_out = 1\n"
      "sinks = [0, 3]\n"
      "tau_abs = 50\n"
      "tau_rel = 2.5e2\n"
      "sinkout = true\n"
      "sinkout_end = 12\n"
      "align = true\n"
      "align_target = \"value\"\n"
      "lambda = 0.3\n"
      "align_layers = [2, 3]\n";
  const std::string js =
      R"({"preset": "outro-align-only", "l_out": 1, "sinks": [0, 3], "tau_abs": 50, "tau_rel": 250,
          "sinkout": true, "sinkout_end": 12, "align": true, "align_target": "value", "lambda": 0.3,
          "align_layers": [2, 3]})";
  for (auto [text, is_json] : {std::pair{toml, false}, std::pair{js, true}}) {
    OutroParams p = parse_outro_config(text, "cfg", is_json, outro_preset("outro"), false);
    EXPECT_EQ(p.strategy, "outro-align-only");
    EXPECT_EQ(p.l_out, 1);
    EXPECT_FALSE(p.auto_sinks);
    EXPECT_EQ(p.sinks, (std::vector<int>{0, 3}));
    EXPECT_EQ(p.tau_abs, 50.0);
    EXPECT_EQ(p.tau_rel, 250.0);
    EXPECT_TRUE(p.sinkout);
    EXPECT_EQ(p.sinkout_end, 12);
    EXPECT_TRUE(p.align);
    EXPECT_EQ(p.target, AlignTarget::Value);
    EXPECT_FLOAT_EQ(p.lambda, 0.3f);
    EXPECT_EQ(p.align_begin, 2);
    EXPECT_EQ(p.align_end, 3);
  }
  // an explicit --strategy wins over the file's, and the file's other keys still apply
  OutroParams p = parse_outro_config("strategy = \"outro\"\nsinkout = false\nsinks = \"auto\"\n", "c.toml", false,
                                     outro_preset("outro-sinkout-only"), true);
  EXPECT_EQ(p.strategy, "outro-sinkout-only");
  EXPECT_FALSE(p.sinkout);
  EXPECT_FALSE(p.align);
  EXPECT_TRUE(p.auto_sinks);
}

TEST(OutroConfig, ErrorsNameTheFileAndTheKey) {
  struct Bad {
    std::string text;
    bool json;
    std::vector<std::string> mention;
  };
  for (const Bad& b : std::vector<Bad>{
           {"lambda = 0.1\nlamda = 0.2\n", false, {"my.toml:2", "unknown key 'lamda'"}},
           {R"({"l_outt": 2})", true, {"my.toml", "unknown key 'l_outt'"}},
           {"lambda = 1.5\n", false, {"my.toml:1", "'lambda'", "[0, 1]"}},
           {"lambda = \"big\"\n", false, {"'lambda'"}},
           {"align_target = \"keys\"\n", false, {"'align_target'", "\"hidden\" or \"value\""}},
           {"sinks = [0, -1]\n", false, {"'sinks'"}},
           // a string that is not UTF-8 (found by fuzz_outro_config) is reported, not thrown past us
           {"sinks = \"valu\xd1\"\n", false, {"my.toml:1", "'sinks'"}},
           {"sinks = \"first\"\n", false, {"'sinks'", "auto"}},
           {"sinkout = 1\n", false, {"'sinkout'", "true or false"}},
           {"l_out = 1.5\n", false, {"'l_out'"}},
           {"align_layers = [3, 1]\n", false, {"'align_layers'"}},
           {"strategy = \"fast\"\n", false, {"'strategy'", "unknown strategy 'fast'"}},
           {"lambda = 0.1\nlambda = 0.2\n", false, {"my.toml:2", "set twice"}},
           {"[outro]\nlambda = 0.1\n", false, {"my.toml:1", "tables"}},
           {"lambda 0.1\n", false, {"my.toml:1", "key = value"}},
           {"sinks = [0,\n 1]\n", false, {"my.toml:1", "one line"}},
           {"{\"lambda\": }", true, {"my.toml", "not valid JSON"}},
       }) {
    try {
      parse_outro_config(b.text, "my.toml", b.json, outro_preset("outro"), false);
      ADD_FAILURE() << "no error for: " << b.text;
    } catch (const Error& e) {
      for (const auto& s : b.mention)
        EXPECT_NE(std::string(e.what()).find(s), std::string::npos) << "'" << e.what() << "' lacks '" << s << "'";
    }
  }
}

TEST(OutroConfig, LayersBeyondTheModelAreRejected) {
  const ModelConfig& c = random_model().config();  // 4 layers
  auto expect_error = [&](OutroParams p, const std::string& what) {
    try {
      validate_outro(p, c, "x.toml");
      ADD_FAILURE() << "no error for " << what;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("x.toml"), std::string::npos) << e.what();
    }
  };
  OutroParams p = outro_preset("outro");
  p.l_out = 4;
  expect_error(p, "l_out = 4 is not a layer of the model");
  p = outro_preset("outro");
  p.align_begin = 2;
  p.align_end = 9;
  expect_error(p, "align_layers");
  p = outro_preset("outro");
  p.align_begin = 1;  // before l_out = 2 with automatic sinks
  p.align_end = 3;
  expect_error(p, "before l_out");
  p.auto_sinks = false;
  p.sinks = {0};
  EXPECT_NO_THROW(validate_outro(p, c, "x.toml"));
}

// ----------------------------------------------------------------------------------------- CLI

std::string write_file(const std::string& dir, const std::string& name, const std::string& text) {
  std::ofstream(dir + "/" + name) << text;
  return dir + "/" + name;
}

std::vector<float> read_logits(const std::string& path) {
  auto ws = WeightStore::open(path);
  return read_f32(ws->get("logits"));
}

TEST(OutroCli, GenerateExplainPrintsSinksAndLayers) {
  const std::string m = random_model_dir();
  auto r = test::run_cli("generate --model " + m + " --tokens 5,17,33,90,2,41,7,8 --max-new-tokens 3 --greedy "
                         "--strategy outro --explain");
  ASSERT_EQ(r.code, 0) << r.out;
  for (const char* s : {"outro (strategy outro)", "sinks: position [0], the first token", "Φ_LLM at the input of layer 2",
                        "sink-out: at layer 2, the sink rows see keys [0, 8)", "lambda 0.1", "layers 3..3",
                        "edited layers [3]", "7 non-sink prompt rows", "2 decode step(s)"})
    EXPECT_NE(r.out.find(s), std::string::npos) << "missing '" << s << "' in:\n" << r.out;
  for (const char* strat : {"baseline", "outro-align-only", "outro-sinkout-only"}) {
    auto q = test::run_cli("generate --model " + m + " --tokens 5,17,33 --max-new-tokens 2 --strategy " + strat +
                           " --explain");
    EXPECT_EQ(q.code, 0) << strat << q.out;
  }
  auto bad = test::run_cli("generate --model " + m + " --tokens 5,17 --strategy outr0");
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.out.find("unknown strategy 'outr0'"), std::string::npos) << bad.out;
}

TEST(OutroCli, ForwardWithEditsOffIsBitIdenticalAndConfigErrorsAreClear) {
  const std::string m = random_model_dir();
  const std::string d = test::tmp_dir("outro_cli");
  const std::string toks = " --tokens 5,17,33,90,2,41,7,8,100,3";
  auto base = test::run_cli("forward --model " + m + toks + " --out " + d + "/base.safetensors");
  ASSERT_EQ(base.code, 0) << base.out;
  auto off = write_file(d, "off.toml", "lambda = 0\nsinkout = false\n");
  auto r = test::run_cli("forward --model " + m + toks + " --strategy outro --outro-config " + off + " --out " + d +
                         "/off.safetensors --explain");
  ASSERT_EQ(r.code, 0) << r.out;
  auto a = read_logits(d + "/base.safetensors"), b = read_logits(d + "/off.safetensors");
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * 4), 0);
  EXPECT_NE(r.out.find("sink-out: off"), std::string::npos) << r.out;
  // a config switching everything on changes the logits
  auto on = write_file(d, "on.json", R"({"strategy": "outro", "l_out": 1, "sinks": [0, 2], "lambda": 0.3})");
  r = test::run_cli("forward --model " + m + toks + " --outro-config " + on + " --out " + d + "/on.safetensors");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_GT(rel_err(read_logits(d + "/on.safetensors"), a), 1e-3);
  // errors name the file and the key
  auto bad = write_file(d, "bad.toml", "lambda = 0.2\nl_out = 9\n");
  r = test::run_cli("forward --model " + m + toks + " --strategy outro --outro-config " + bad + " --out " + d + "/x");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("bad.toml"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("l_out = 9 is not a layer"), std::string::npos) << r.out;
  auto unk = write_file(d, "unk.toml", "lambada = 0.2\n");
  r = test::run_cli("generate --model " + m + toks + " --outro-config " + unk);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("unk.toml:1: unknown key 'lambada'"), std::string::npos) << r.out;
  fs::remove_all(d);
}

// ------------------------------------------------------- parity with the reference implementation

const std::vector<std::string> kFixtures = {"qwen2_gqa_f32", "qwen2_tied_f32"};

struct Ref {
  std::unique_ptr<WeightStore> store;
  std::vector<float> f(const std::string& n) const {
    if (!store->has(n)) ADD_FAILURE() << "fixture tensor '" << n << "' is missing (tools/make_fixtures.py)";
    return store->has(n) ? read_f32(store->get(n)) : std::vector<float>{};
  }
  bool has(const std::string& n) const { return store->has(n); }
  std::vector<int32_t> ids(const std::string& n) const {
    auto v = read_i64(store->get(n));
    return std::vector<int32_t>(v.begin(), v.end());
  }
};

// The fixtures' setting: sinks {0}, l_out 1, lambda 0.3, align layers l_out < l < L.
OutroParams fixture_params(bool sinkout, bool align, AlignTarget t) {
  return params({0}, 1, sinkout, align, t, 0.3f);
}

class OutroParity : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    const std::string dir = fixture("models/" + GetParam());
    ASSERT_TRUE(fs::exists(dir + "/ref.safetensors")) << "missing fixture " << dir;
    m = Model::load(dir);
    be = make_cpu_backend();
    ref.store = WeightStore::open(dir + "/ref.safetensors");
    for (const char* k : {"outro_sinkout.logits", "outro_align_hidden.logits", "outro_align_value.logits",
                          "outro_full.logits", "outro_prompt.input_ids", "outro_prompt.logits"})
      ASSERT_TRUE(ref.has(k)) << GetParam() << ": fixture tensor '" << k
                              << "' is missing (regenerate with tools/make_fixtures.py)";
    ids = ref.ids("input_ids");
  }
  std::unique_ptr<Model> m;
  std::unique_ptr<Backend> be;
  Ref ref;
  std::vector<int32_t> ids;
};

TEST_P(OutroParity, SinkOutLogitsAndPatterns) {
  const int L = m->config().layers;
  std::vector<std::string> names;
  for (int l = 0; l < L; ++l) names.push_back(hook_name(l, Hook::Pattern));
  Recorder rec(names);
  OutRo o(fixture_params(true, false, AlignTarget::Hidden));
  auto logits = run_all(*m, *be, ids, {&o}, &rec);
  EXPECT_LT(rel_err(logits, ref.f("outro_sinkout.logits")), 1e-4);
  EXPECT_GT(rel_err(logits, ref.f("logits")), 1e-4) << "sink-out must change the logits";
  for (int l = 0; l < L; ++l) {
    auto want = ref.f("outro_sinkout.attn." + std::to_string(l));
    const auto& got = rec.get(names[size_t(l)])->data;
    ASSERT_EQ(got.size(), want.size()) << "layer " << l;
    EXPECT_LT(test::max_abs_diff(got.data(), want.data(), got.size()), 1e-4) << "outro_sinkout.attn." << l;
  }
}

TEST_P(OutroParity, AlignHiddenValueAndFull) {
  for (auto [key, p] : {std::pair{"outro_align_hidden.logits", fixture_params(false, true, AlignTarget::Hidden)},
                        std::pair{"outro_align_value.logits", fixture_params(false, true, AlignTarget::Value)},
                        std::pair{"outro_full.logits", fixture_params(true, true, AlignTarget::Hidden)}}) {
    OutRo o(p);
    auto logits = run_all(*m, *be, ids, {&o});
    EXPECT_LT(rel_err(logits, ref.f(key)), 1e-4) << GetParam() << " " << key;
    if (m->config().layers > 2) {  // there is an align layer (l_out 1 < l < L): the edit shows
      EXPECT_GT(rel_err(logits, ref.f("logits")), 1e-4) << GetParam() << " " << key << " must differ from the plain run";
    }
  }
}

TEST_P(OutroParity, PromptThenDecodeStepsAndFullRecompute) {
  const int V = m->config().vocab, P = int(ids.size());
  auto ids16 = ref.ids("outro_prompt.input_ids");
  ASSERT_EQ(int(ids16.size()), P + 4);
  auto want = ref.f("outro_prompt.logits");
  ASSERT_EQ(want.size(), ids16.size() * size_t(V));
  const OutroParams p = fixture_params(true, true, AlignTarget::Hidden);
  // incremental: prefill 12, then 4 single steps
  OutRo o(p);
  Session s(*m, *be, int(ids16.size()));
  s.add_intervention(&o);
  std::vector<float> lg;
  s.forward(ids16.data(), P, &lg, true);
  EXPECT_LT(rel_err(lg, rows(want, V, 0, P)), 1e-4) << "prefill";
  for (int i = P; i < int(ids16.size()); ++i) {
    s.forward(&ids16[size_t(i)], 1, &lg, false);
    EXPECT_LT(rel_err(lg, rows(want, V, i, i + 1)), 1e-4) << "decode position " << i;
  }
  // full forward of the 16 ids with sink-out bounded by the prompt
  OutroParams pf = p;
  pf.sinkout_end = P;
  OutRo of(pf);
  EXPECT_LT(rel_err(run_all(*m, *be, ids16, {&of}), want), 1e-4) << "full recompute";
}

INSTANTIATE_TEST_SUITE_P(Fixtures, OutroParity, ::testing::ValuesIn(kFixtures),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace outro
