#include "core/threadpool.h"

#include <chrono>
#include <cstdlib>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace outro {

namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#endif
}

// How many cpu_relax() iterations take about `us` microseconds on this machine.
long calibrate_spin(double us) {
  if (us <= 0) return 0;
  const auto t0 = std::chrono::steady_clock::now();
  const long probe = 20000;
  for (long i = 0; i < probe; ++i) cpu_relax();
  const double ns = double(std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count());
  const double per = ns > 0 ? ns / double(probe) : 1.0;
  return long(us * 1000.0 / per) + 1;
}

void chunk(size_t n, int parts, int idx, size_t* b, size_t* e) {
  size_t base = n / size_t(parts), rem = n % size_t(parts);
  *b = size_t(idx) * base + (size_t(idx) < rem ? size_t(idx) : rem);
  *e = *b + base + (size_t(idx) < rem ? 1 : 0);
}

}  // namespace

ThreadPool::ThreadPool(int n_threads) {
  if (n_threads < 1) n_threads = 1;
  double us = 300;
  if (const char* s = std::getenv("OUTRO_SPIN_US")) us = std::atof(s);
  if (n_threads > 1) spin_iters_ = calibrate_spin(us);
  for (int i = 1; i < n_threads; ++i) workers_.emplace_back([this, i] { worker(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_.store(true);
  }
  cv_start_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::worker(int idx) {
  size_t seen = 0;
  for (;;) {
    // Spin for a while for the next job, then sleep.
    bool ready = false;
    for (long i = 0; i < spin_iters_; ++i) {
      if (generation_.load(std::memory_order_acquire) != seen || stop_.load(std::memory_order_relaxed)) {
        ready = true;
        break;
      }
      cpu_relax();
    }
    if (!ready) {
      std::unique_lock<std::mutex> lk(mu_);
      cv_start_.wait(lk, [&] { return stop_.load() || generation_.load() != seen; });
    }
    if (stop_.load()) return;
    seen = generation_.load(std::memory_order_acquire);
    const std::function<void(size_t, size_t)>* job = job_;
    const size_t n = job_n_;
    size_t b, e;
    chunk(n, size(), idx, &b, &e);
    if (b < e) (*job)(b, e);
    if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      std::lock_guard<std::mutex> lk(mu_);
      cv_done_.notify_one();
    }
  }
}

void ThreadPool::parallel_for(size_t n, const std::function<void(size_t, size_t)>& fn) {
  if (n == 0) return;
  if (workers_.empty() || n == 1) {
    fn(0, n);
    return;
  }
  {
    std::lock_guard<std::mutex> lk(mu_);
    job_ = &fn;
    job_n_ = n;
    pending_.store(int(workers_.size()), std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_release);
  }
  cv_start_.notify_all();
  size_t b, e;
  chunk(n, size(), 0, &b, &e);
  if (b < e) fn(b, e);
  for (long i = 0; i < spin_iters_; ++i) {
    if (pending_.load(std::memory_order_acquire) == 0) return;
    cpu_relax();
  }
  std::unique_lock<std::mutex> lk(mu_);
  cv_done_.wait(lk, [&] { return pending_.load(std::memory_order_acquire) == 0; });
}

ThreadPool& ThreadPool::global() {
  static ThreadPool pool([] {
    if (const char* s = std::getenv("OUTRO_THREADS")) {
      int v = std::atoi(s);
      if (v > 0) return v;
    }
    unsigned hc = std::thread::hardware_concurrency();
    return hc ? int(hc) : 1;
  }());
  return pool;
}

}  // namespace outro
