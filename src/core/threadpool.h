// A fixed pool of worker threads with a blocking parallel_for; the kernels' only source of parallelism.
//
// A decode step issues a few hundred short parallel_for calls, so hand-off latency matters: workers
// and the caller spin on atomics for a short while (OUTRO_SPIN_US, default 300 µs) before they
// sleep on a condition variable; an idle pool therefore costs nothing after that.
#pragma once
#include <atomic>
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
  std::atomic<size_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
  long spin_iters_ = 0;
};

}  // namespace outro
