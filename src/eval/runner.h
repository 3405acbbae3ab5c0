// Running an evaluation over several processes and showing progress.
//
// Distribution uses mpirun (Open MPI) as the launcher, without linking MPI: every process reads
// its rank and the world size from Open MPI's environment (OMPI_COMM_WORLD_RANK / _SIZE), takes
// the items whose index i satisfies i % size == rank, appends its records to its own files, and
// writes a done-marker; rank 0 then waits for every marker of the same launch and merges. The
// output folder must be shared by all hosts (e.g. NFS) when mpirun spans machines.
#pragma once
#include <chrono>
#include <cstddef>
#include <string>

namespace outro::eval {

struct World {
  int rank = 0, size = 1;
  std::string job;  // identifies one mpirun launch ("" when not under mpirun)
};
// From OMPI_COMM_WORLD_RANK/SIZE (also PMIX_RANK, PMI_RANK/PMI_SIZE); a single process otherwise.
World world_from_env();

// Writes text to path under another name and renames it over path: a reader, another rank too, finds
// no file or the whole of it. Throws naming the file when the write fails.
void write_whole(const std::string& path, const std::string& text);

// ranks/done.rank{r}.json: {"job", "size", "ok", "error"}.
void write_done_marker(const std::string& out_dir, const World& w, bool ok, const std::string& error);
void remove_done_marker(const std::string& out_dir, const World& w);
// Rank 0: waits until every rank of this launch has written its marker; throws when one reports
// an error or timeout_s passes.
void wait_for_ranks(const std::string& out_dir, const World& w, double timeout_s);

// A one-line progress bar with rate and ETA on a terminal (stderr); on a pipe, a line every 10%.
class Progress {
 public:
  Progress(size_t total, std::string label, bool enabled = true);
  void tick(const std::string& note = "");
  void finish();

 private:
  size_t total_, done_ = 0;
  std::string label_;
  bool tty_, enabled_;
  int last_decile_ = -1;
  std::chrono::steady_clock::time_point start_;
};

std::string format_duration(double seconds);

}  // namespace outro::eval
