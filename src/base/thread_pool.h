// A fixed pool of worker threads for data-parallel kernels.
//
// Decode runs hundreds of parallel regions per token (one per matmul), so the
// hand-off must cost well under a microsecond: workers spin on a generation
// counter for a short while before sleeping on a condition variable.
//
// Thread-safety: ParallelFor may be called from one thread at a time (the
// thread that owns the pool). Workers never call back into the pool.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace strata {

class ThreadPool {
 public:
  // n_threads counts the calling thread: ThreadPool(2) starts one worker.
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Runs fn(thread_index) on every thread (index 0 is the caller) and waits.
  void Run(const std::function<void(int thread_index)>& fn);

  // Splits [0, n) into contiguous ranges, one per thread, multiples of `grain`
  // except the last: fn(begin, end, thread_index).
  void ParallelFor(int64_t n, int64_t grain,
                   const std::function<void(int64_t, int64_t, int)>& fn);

 private:
  void WorkerLoop(int index);

  int n_threads_;
  std::vector<std::thread> workers_;
  const std::function<void(int)>* job_ = nullptr;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<int> sleepers_{0};
};

// Splits n items into n_parts near-equal contiguous ranges aligned to grain.
inline void SplitRange(int64_t n, int64_t grain, int part, int n_parts, int64_t* begin, int64_t* end) {
  const int64_t blocks = (n + grain - 1) / grain;
  const int64_t b0 = blocks * part / n_parts;
  const int64_t b1 = blocks * (part + 1) / n_parts;
  *begin = b0 * grain < n ? b0 * grain : n;
  *end = b1 * grain < n ? b1 * grain : n;
}

}  // namespace strata
