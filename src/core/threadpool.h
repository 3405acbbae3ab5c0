// A fixed pool of worker threads with a blocking parallel_for; the kernels' only source of parallelism.
#pragma once
#include <condition_variable>
#include <cstddef>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace outro {

class ThreadPool {
 public:
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return int(workers_.size()) + 1; }
  // Calls fn(begin, end) on disjoint chunks covering [0, n); returns when all are done.
  // Chunks are contiguous, one per thread (static split: the kernels are balanced).
  void parallel_for(size_t n, const std::function<void(size_t, size_t)>& fn);

  // The process-wide pool (OUTRO_THREADS or the hardware concurrency).
  static ThreadPool& global();

 private:
  void worker(int idx);
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_start_, cv_done_;
  const std::function<void(size_t, size_t)>* job_ = nullptr;
  size_t job_n_ = 0;
  size_t generation_ = 0;
  int pending_ = 0;
  bool stop_ = false;
};

}  // namespace outro
