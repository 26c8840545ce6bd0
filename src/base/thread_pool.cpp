#include "base/thread_pool.h"

#include <immintrin.h>

namespace strata {

namespace {
// ~50 µs of spinning before a worker sleeps: long enough to bridge the gap
// between two matmuls of one forward pass, short enough not to burn a core
// while the engine is idle.
constexpr int kSpinIterations = 20000;
}  // namespace

ThreadPool::ThreadPool(int n_threads) : n_threads_(n_threads < 1 ? 1 : n_threads) {
  for (int i = 1; i < n_threads_; ++i) workers_.emplace_back([this, i] { WorkerLoop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_.store(true);
    generation_.fetch_add(1);
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::WorkerLoop(int index) {
  uint64_t seen = 0;
  for (;;) {
    int spins = 0;
    uint64_t gen;
    while ((gen = generation_.load(std::memory_order_acquire)) == seen) {
      if (++spins < kSpinIterations) {
        // Yield now and then: when cores are oversubscribed the thread that
        // will publish work may be waiting for this core.
        if ((spins & 1023) == 0) std::this_thread::yield();
        _mm_pause();
        continue;
      }
      std::unique_lock<std::mutex> lock(mu_);
      sleepers_.fetch_add(1);
      cv_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
      sleepers_.fetch_sub(1);
    }
    seen = gen;
    if (stop_.load()) return;
    (*job_)(index);
    pending_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

void ThreadPool::Run(const std::function<void(int)>& fn) {
  if (n_threads_ == 1) {
    fn(0);
    return;
  }
  job_ = &fn;
  pending_.store(n_threads_ - 1, std::memory_order_release);
  {
    // Publishing under the lock closes the race with a worker that is about
    // to sleep; notify only when someone actually sleeps.
    std::lock_guard<std::mutex> lock(mu_);
    generation_.fetch_add(1, std::memory_order_acq_rel);
  }
  if (sleepers_.load() > 0) cv_.notify_all();
  fn(0);
  // On an oversubscribed machine a worker may be descheduled; after a short
  // spin, yield so it can run on this core instead of burning the slice.
  for (int spins = 0; pending_.load(std::memory_order_acquire) != 0; ++spins) {
    if (spins < 2000) {
      _mm_pause();
    } else {
      std::this_thread::yield();
    }
  }
  job_ = nullptr;
}

void ThreadPool::ParallelFor(int64_t n, int64_t grain,
                             const std::function<void(int64_t, int64_t, int)>& fn) {
  if (n <= 0) return;
  if (grain < 1) grain = 1;
  const int64_t blocks = (n + grain - 1) / grain;
  const int parts = blocks < n_threads_ ? static_cast<int>(blocks) : n_threads_;
  if (parts <= 1) {
    fn(0, n, 0);
    return;
  }
  Run([&](int t) {
    if (t >= parts) return;
    int64_t b, e;
    SplitRange(n, grain, t, parts, &b, &e);
    if (b < e) fn(b, e, t);
  });
}

}  // namespace strata
