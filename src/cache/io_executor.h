// IoExecutor: a few threads that run blocking I/O jobs for a tier (disk
// reads/writes, Redis round trips) so that Tier::Get/Put can hand back a
// future at once.
//
// Unlike base/ThreadPool (tuned for sub-microsecond data-parallel hand-off),
// this is a plain FIFO task queue: jobs are milliseconds of I/O, so a mutex
// and a condition variable cost nothing that matters.
//
// Thread-safety: Submit may be called from any thread. The destructor runs
// every job already submitted, then joins.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

namespace strata {

class IoExecutor {
 public:
  explicit IoExecutor(int threads) {
    if (threads < 1) threads = 1;
    for (int i = 0; i < threads; ++i) workers_.emplace_back([this] { Loop(); });
  }
  ~IoExecutor() {
    {
      std::lock_guard<std::mutex> l(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }
  IoExecutor(const IoExecutor&) = delete;
  IoExecutor& operator=(const IoExecutor&) = delete;

  void Submit(std::function<void()> job) {
    {
      std::lock_guard<std::mutex> l(mu_);
      queue_.push_back(std::move(job));
    }
    cv_.notify_one();
  }

  // Runs fn() on a worker and returns its result through a future.
  // fn must not throw (errors are values in Strata).
  template <typename T, typename Fn>
  std::future<T> Async(Fn fn) {
    auto promise = std::make_shared<std::promise<T>>();
    std::future<T> f = promise->get_future();
    Submit([promise, fn = std::move(fn)]() mutable { promise->set_value(fn()); });
    return f;
  }

 private:
  void Loop() {
    for (;;) {
      std::function<void()> job;
      {
        std::unique_lock<std::mutex> l(mu_);
        cv_.wait(l, [this] { return stop_ || !queue_.empty(); });
        // Drain before stopping: a queued Put must still land (or fail
        // visibly) so its future is never abandoned.
        if (queue_.empty()) return;
        job = std::move(queue_.front());
        queue_.pop_front();
      }
      job();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  bool stop_ = false;
  std::vector<std::thread> workers_;
};

// A future that is already satisfied.
template <typename T>
std::future<T> ReadyFuture(T value) {
  std::promise<T> p;
  p.set_value(std::move(value));
  return p.get_future();
}

}  // namespace strata
