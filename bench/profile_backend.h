// A Backend that forwards every call to another and times it (the backend synchronised before and
// after), summed per op name: where a forward's time goes, for the benchmarks' --profile. It undoes
// the inner backend's look-ahead fusions, so its total is above an unprofiled run's.
#pragma once
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "kernels/backend.h"

namespace outro {

class ProfileBackend final : public Backend {
 public:
  explicit ProfileBackend(Backend& inner) : in_(inner) {}
  const char* name() const override { return in_.name(); }

  struct Entry {
    double seconds = 0;
    long calls = 0;
  };
  const std::map<std::string, Entry>& table() const { return t_; }
  void clear() { t_.clear(); }
  // Ops by time, largest first, with their share of the total.
  void print(const char* title) const {
    std::vector<std::pair<std::string, Entry>> v(t_.begin(), t_.end());
    std::sort(v.begin(), v.end(), [](auto& a, auto& b) { return a.second.seconds > b.second.seconds; });
    double total = 0;
    for (auto& e : v) total += e.second.seconds;
    std::printf("  %s: %.4f s in %zu kinds of op (each timed alone)\n", title, total, v.size());
    for (auto& [k, e] : v)
      if (e.seconds >= 0.005 * total)
        std::printf("    %-18s %9.4f s %5.1f%%  %6ld calls\n", k.c_str(), e.seconds, 100 * e.seconds / total, e.calls);
  }

  Buf alloc(size_t n) override { return in_.alloc(n); }
  void release(Buf& b) override { in_.release(b); }
  void upload(Buf d, size_t o, const float* s, size_t n) override { T t(*this, "upload"); in_.upload(d, o, s, n); }
  void download(const Buf& s, size_t o, float* d, size_t n) override {
    T t(*this, "download");
    in_.download(s, o, d, n);
  }
  void copy(Buf d, size_t doff, const Buf& s, size_t soff, size_t n) override {
    T t(*this, "copy");
    in_.copy(d, doff, s, soff, n);
  }
  void fill(Buf d, size_t o, size_t n, float v) override { T t(*this, "fill"); in_.fill(d, o, n, v); }
  Weight weight(const TensorInfo& w) override { return in_.weight(w); }
  void embed(Buf out, const Weight& table, const int32_t* ids, int n) override {
    T t(*this, "embed");
    in_.embed(out, table, ids, n);
  }
  void matmul(Buf y, const Buf& x, int n, const Weight& w, const Weight* b) override {
    T t(*this, n > 8 ? "matmul" : "gemv");
    in_.matmul(y, x, n, w, b);
  }
  void rmsnorm(Buf y, const Buf& x, int n, const Weight& w, float eps) override {
    T t(*this, "rmsnorm");
    in_.rmsnorm(y, x, n, w, eps);
  }
  void rope(Buf x, int n, int h, int hd, const int32_t* pos, const float* f) override {
    T t(*this, "rope");
    in_.rope(x, n, h, hd, pos, f);
  }
  void attention(Buf z, const Buf& q, const Buf& k, const Buf& v, const AttnParams& p) override {
    T t(*this, p.causal ? "attention" : "attention (enc)");
    in_.attention(z, q, k, v, p);
  }
  void swiglu(Buf o, const Buf& g, const Buf& u, size_t n) override { T t(*this, "swiglu"); in_.swiglu(o, g, u, n); }
  void add(Buf y, const Buf& x, size_t n) override { T t(*this, "add"); in_.add(y, x, n); }
  void phi_detect(Buf rec, const Buf& h, int n, int dim, float a, float m) override {
    T t(*this, "phi_detect");
    in_.phi_detect(rec, h, n, dim, a, m);
  }
  void outro_sets(Buf e, Buf d, Buf c, const Buf& rec, int n, bool en, bool once) override {
    T t(*this, "outro_sets");
    in_.outro_sets(e, d, c, rec, n, en, once);
  }
  void masked_mean(Buf out, const Buf& x, int n, int dim, const Buf& f) override {
    T t(*this, "masked_mean");
    in_.masked_mean(out, x, n, dim, f);
  }
  void gate_heads(Buf z, int n, int h, int kv, int hd, const Buf& vb, const Buf* ex, int exn, float g, float tmp,
                  bool rs, Buf c) override {
    T t(*this, "gate_heads");
    in_.gate_heads(z, n, h, kv, hd, vb, ex, exn, g, tmp, rs, c);
  }
  void zero_cols(Buf x, int n, int rl, int c0, int nc) override { T t(*this, "zero_cols"); in_.zero_cols(x, n, rl, c0, nc); }
  void zero_top_dim(Buf x, int row, int g, int gd) override { T t(*this, "zero_top_dim"); in_.zero_top_dim(x, row, g, gd); }
  void layernorm(Buf y, const Buf& x, int n, const Weight& w, const Weight* b, float eps) override {
    T t(*this, "layernorm");
    in_.layernorm(y, x, n, w, b, eps);
  }
  void gelu(Buf y, const Buf& x, size_t n, bool th) override { T t(*this, "gelu"); in_.gelu(y, x, n, th); }
  void rope_sections(Buf x, int n, int h, int hd, const int32_t* pos, const int* sec, int ns, const float* f) override {
    T t(*this, "rope_sections");
    in_.rope_sections(x, n, h, hd, pos, sec, ns, f);
  }
  void im2col1d(Buf c, const Buf& x, int ch, int k, int st, int pad, const int* seg, int ns) override {
    T t(*this, "im2col1d");
    in_.im2col1d(c, x, ch, k, st, pad, seg, ns);
  }
  void gather_rows(Buf y, const Buf& x, int dim, const int32_t* idx, int n) override {
    T t(*this, "gather_rows");
    in_.gather_rows(y, x, dim, idx, n);
  }
  void avgpool_rows(Buf y, const Buf& x, int n, int dim, int k) override {
    T t(*this, "avgpool_rows");
    in_.avgpool_rows(y, x, n, dim, k);
  }
  int32_t argmax(const Buf& x, size_t off, int n) override {
    T t(*this, "argmax");
    return in_.argmax(x, off, n);
  }
  void synchronize() override { in_.synchronize(); }

 private:
  struct T {  // times one call: the backend drained before, and after
    T(ProfileBackend& p, const char* op) : p_(p), op_(op) {
      p_.in_.synchronize();
      t0_ = std::chrono::steady_clock::now();
    }
    ~T() {
      p_.in_.synchronize();
      Entry& e = p_.t_[op_];
      e.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
      ++e.calls;
    }
    ProfileBackend& p_;
    const char* op_;
    std::chrono::steady_clock::time_point t0_;
  };
  Backend& in_;
  std::map<std::string, Entry> t_;
};

}  // namespace outro
