#include "eval/runner.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/error.h"

namespace outro::eval {

namespace fs = std::filesystem;
using nlohmann::json;

static int env_int(const char* name, int def) {
  const char* v = std::getenv(name);
  if (!v || !*v) return def;
  char* end = nullptr;
  long x = std::strtol(v, &end, 10);
  if (*end || x < 0 || x > 1000000) fail("environment variable ", name, "='", v, "' is not a rank/size");
  return int(x);
}

World world_from_env() {
  World w;
  if (std::getenv("OMPI_COMM_WORLD_SIZE")) {
    w.rank = env_int("OMPI_COMM_WORLD_RANK", 0);
    w.size = env_int("OMPI_COMM_WORLD_SIZE", 1);
  } else if (std::getenv("PMI_SIZE")) {
    w.rank = env_int("PMI_RANK", 0);
    w.size = env_int("PMI_SIZE", 1);
  }
  for (const char* k : {"PMIX_NAMESPACE", "OMPI_MCA_ess_base_jobid", "OMPI_MCA_orte_ess_jobid", "PMI_JOBID"})
    if (const char* v = std::getenv(k); v && *v) {
      w.job = v;
      break;
    }
  if (w.size < 1 || w.rank >= w.size) fail("rank ", w.rank, " is outside a world of size ", w.size);
  return w;
}

static fs::path marker(const std::string& dir, int rank) {
  return fs::path(dir) / "ranks" / ("done.rank" + std::to_string(rank) + ".json");
}

void write_whole(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::trunc | std::ios::binary);
    f << text;
    f.flush();
    if (!f) fail(tmp, ": write failed");
  }
  fs::rename(tmp, path);
}

void write_done_marker(const std::string& out_dir, const World& w, bool ok, const std::string& error) {
  fs::create_directories(fs::path(out_dir) / "ranks");
  write_whole(marker(out_dir, w.rank).string(),
              json{{"job", w.job}, {"size", w.size}, {"rank", w.rank}, {"ok", ok}, {"error", error}}.dump(
                  -1, ' ', false, json::error_handler_t::replace) + "\n");
}

void remove_done_marker(const std::string& out_dir, const World& w) {
  std::error_code ec;
  fs::remove(marker(out_dir, w.rank), ec);
}

void wait_for_ranks(const std::string& out_dir, const World& w, double timeout_s) {
  const auto start = std::chrono::steady_clock::now();
  bool said = false;
  for (;;) {
    int ready = 0;
    for (int r = 0; r < w.size; ++r) {
      std::ifstream f(marker(out_dir, r));
      if (!f) continue;
      json j;
      try {
        f >> j;
      } catch (const std::exception&) {
        continue;
      }
      if (j.value("job", "") != w.job || j.value("size", 0) != w.size) continue;  // a marker of an earlier launch
      if (!j.value("ok", false)) fail("rank ", r, " failed: ", j.value("error", std::string("(no message)")));
      ++ready;
    }
    if (ready == w.size) return;
    const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (waited > timeout_s)
      fail("rank 0 waited ", int(waited), " s for the other ranks (", ready, " of ", w.size,
           " done); their results are kept in ", out_dir, "/results, run again to resume");
    if (!said && waited > 2) {
      std::fprintf(stderr, "eval: rank 0 finished its share; waiting for %d other rank(s)\n", w.size - ready);
      said = true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
}

std::string format_duration(double s) {
  if (!(s >= 0) || s > 1e7) return "--:--";
  long t = long(s + 0.5);
  char b[32];
  if (t >= 3600) std::snprintf(b, sizeof b, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
  else std::snprintf(b, sizeof b, "%02ld:%02ld", t / 60, t % 60);
  return b;
}

Progress::Progress(size_t total, std::string label, bool enabled)
    : total_(total), label_(std::move(label)), tty_(::isatty(2)), enabled_(enabled),
      start_(std::chrono::steady_clock::now()) {}

void Progress::tick(const std::string& note) {
  ++done_;
  if (!enabled_ || total_ == 0) return;
  const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double rate = el > 0 ? double(done_) / el : 0;
  const double eta = rate > 0 ? double(total_ - done_) / rate : -1;
  const int pct = int(100.0 * double(done_) / double(total_));
  if (tty_) {
    const int width = 28, fill = int(double(width) * double(done_) / double(total_));
    std::string bar(size_t(fill), '=');
    if (fill < width) bar += '>' + std::string(size_t(width - fill - 1), ' ');
    std::fprintf(stderr, "\r\033[K%s [%s] %zu/%zu %3d%% %.2f it/s ETA %s %s", label_.c_str(), bar.c_str(), done_, total_,
                 pct, rate, format_duration(eta).c_str(), note.c_str());
    std::fflush(stderr);
  } else if (pct / 10 != last_decile_ || done_ == total_) {
    last_decile_ = pct / 10;
    std::fprintf(stderr, "%s %zu/%zu (%d%%) %.2f it/s ETA %s\n", label_.c_str(), done_, total_, pct, rate,
                 format_duration(eta).c_str());
  }
}

void Progress::finish() {
  if (enabled_ && tty_ && total_ > 0) std::fprintf(stderr, "\n");
}

}  // namespace outro::eval
