// Shared helpers of the tests: fixture paths, reference tensors, error measures, running the CLI.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/safetensors.h"
#include "kernels/cpu/gemm.h"

namespace outro::test {

inline std::string source_dir() { return OUTRO_SOURCE_DIR; }
inline std::string fixture(const std::string& rel) { return source_dir() + "/tests/fixtures/" + rel; }
inline std::string shared_model(const std::string& name) { return source_dir() + "/../shared/models/" + name; }

// max |a - b| / max |ref|
inline double rel_err(const std::vector<float>& a, const std::vector<float>& ref) {
  EXPECT_EQ(a.size(), ref.size());
  double m = 0, scale = 1e-30;
  for (size_t i = 0; i < std::min(a.size(), ref.size()); ++i) {
    m = std::max(m, double(std::fabs(a[i] - ref[i])));
    scale = std::max(scale, double(std::fabs(ref[i])));
  }
  return m / scale;
}

inline double max_abs_diff(const float* a, const float* b, size_t n) {
  double m = 0;
  for (size_t i = 0; i < n; ++i) m = std::max(m, double(std::fabs(a[i] - b[i])));
  return m;
}

struct RunResult {
  int code = 0;
  std::string out;  // stdout and stderr together
};

// Runs the built CLI with the given argument string (shell-quoted by the caller).
inline RunResult run_cli(const std::string& args) {
  const char* bin = std::getenv("OUTRO_BIN");
  std::string b = bin ? bin : std::string(OUTRO_BINARY_DIR) + "/outro";
  std::string cmd = b + " " + args + " 2>&1";
  RunResult r;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return {-1, "popen failed"};
  char buf[4096];
  size_t k;
  while ((k = fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, k);
  int st = pclose(p);
  r.code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
  return r;
}

inline std::string tmp_dir(const std::string& name) {
  auto p = std::filesystem::temp_directory_path() / ("outro_test_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p.string();
}

// Pins the CPU backend to float32 products (the best float32-only kernel set here) for its lifetime:
// parity tests against float32 references at 1e-4 need it, since the default on a CPU with bf16
// units rounds x to bf16 in the products of n >= min_n rows (tests/test_bf16_forward.cpp covers
// that path against its own tolerances). The previous set is restored on destruction.
struct F32Products {
  cpu::Isa saved = cpu::kernels().isa;
  F32Products() { cpu::set_isa(cpu::best_f32_isa()); }
  ~F32Products() { cpu::set_isa(saved); }
  F32Products(const F32Products&) = delete;
  F32Products& operator=(const F32Products&) = delete;
};

// The message of the outro::Error that f throws, or "<no error>".
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

}  // namespace outro::test
