// Scheduler: continuous batching over one ManagedKvCache.
//
// Every step is one ForwardContext::Forward call holding the next token of
// every decoding sequence plus prefill chunks, under a per-step token budget
// (chunked prefill: a long prompt is spread over several steps so running
// streams keep getting a token per step). Decodes are planned first, then
// unfinished prefills, then new requests in arrival order.
//
// - Admission control: a request is admitted (FIFO) only when a slot is free
//   and the KV memory can hold its prompt; otherwise it waits, and nothing
//   behind it jumps ahead (no starvation).
// - Preemption: when a running sequence cannot grow, the most recently
//   arrived other sequence loses its KV and goes back to the queue; it is
//   recomputed (prompt + tokens so far) when readmitted, keeping its sampler
//   and text state, so its output continues seamlessly.
// - Prefix caching: at admission the longest cached prefix is attached from
//   the KV memory; computed full blocks are published after every step.
// - Cancellation: Cancel(id) from any thread; the sequence is dropped at the
//   start of the next step and its callback gets stop reason "cancelled".
// - KV cache store (optional, SchedulerOptions::kv_store): at admission,
//   after the engine prefix attach, the store is asked for more of the
//   prompt. On a hit the sequence enters the loading state: it keeps its
//   slot and a KV reservation for the loaded prefix but is not planned while
//   its chunks are fetched and verified in the background (other sequences
//   keep stepping). When the load is ready it joins prefill at the end of
//   the loaded prefix, and the connector's hooks place the loaded rows layer
//   by layer during that forward pass. A load that fails part way is a
//   shorter prefix: the rest is recomputed. A loading sequence can be
//   cancelled or preempted like any other (the load is abandoned). After
//   every step, newly completed full prompt chunks are stored; generated
//   tokens' chunks too at finish when the request sets save_decode_cache.
//
// Thread-safety: Submit, Cancel, counters() and Start/Stop are thread-safe.
// Step() and RunUntilIdle() are for a single driving thread and must not be
// mixed with Start().
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_set>
#include <vector>

#include "engine/kv_store_connector.h"
#include "engine/request.h"
#include "kv/managed_kv_cache.h"
#include "model/model.h"

namespace strata {

struct SchedulerOptions {
  int64_t step_tokens = 256;  // token budget of one forward pass (>= the KV's slot count)
  int n_threads = 1;
  // The KV cache store's connector, or null for none. Not owned; must
  // outlive the scheduler, and serve only this scheduler.
  KvStoreConnector* kv_store = nullptr;
};

// Monotonic counters and gauges, safe to read from any thread.
struct SchedulerCounters {
  uint64_t requests_submitted = 0;
  uint64_t requests_finished = 0;
  uint64_t requests_cancelled = 0;
  uint64_t prompt_tokens = 0;
  uint64_t generated_tokens = 0;
  uint64_t cached_prompt_tokens = 0;
  uint64_t preemptions = 0;
  uint64_t steps = 0;
  uint64_t store_cached_prompt_tokens = 0;  // prompt tokens loaded from the KV cache store
  int running = 0;                          // including loading
  int waiting = 0;
  int loading = 0;                          // waiting for a KV cache store load
  KvMemoryStats kv;
};

class Scheduler {
 public:
  // kv's shape must match the model; the scheduler uses kv exclusively.
  static Expected<std::unique_ptr<Scheduler>> Create(const Model& model, ManagedKvCache& kv,
                                                     const SchedulerOptions& options);
  ~Scheduler();

  // Queues a request; returns its id. Fails (nothing queued) on an empty
  // prompt, one that leaves no room for output in the context, or bad
  // sampling parameters. The callback runs on the engine thread.
  Expected<uint64_t> Submit(std::vector<TokenId> prompt, const RequestOptions& options, RequestCallback callback);
  // Drops a queued or running request; unknown or finished ids are ignored.
  void Cancel(uint64_t id);

  // One engine step; returns true if a forward pass ran.
  Expected<bool> Step();
  // Steps until nothing is queued or running.
  Status RunUntilIdle();

  // A background engine thread that steps while there is work.
  void Start();
  void Stop();

  SchedulerCounters counters() const;
  const Model& model() const { return model_; }
  ManagedKvCache& kv() { return kv_; }
  KvStoreConnector* kv_store() { return options_.kv_store; }

 private:
  struct Sequence;
  Scheduler(const Model& model, ManagedKvCache& kv, const SchedulerOptions& options);
  void TakeSubmissions();
  void Finish(Sequence& s, StopReason reason, Status error = Status::Ok());
  void Preempt(Sequence& s);
  // Drops s's store load, if any (nothing of it reaches KV memory).
  void DropLoad(Sequence& s);
  // Loading sequences whose load finished join prefill.
  void PollLoads();
  // Reports a finished load (usage, counters) and lets go of it.
  void ConsumeLoad(Sequence& s);
  // Appends a sampled token; returns true when the sequence is finished.
  bool Accept(Sequence& s, TokenId token);
  void PublishCounters();

  const Model& model_;
  ManagedKvCache& kv_;
  SchedulerOptions options_;
  ForwardContext ctx_;

  // Engine-thread state.
  std::vector<std::unique_ptr<Sequence>> running_;   // admission order
  std::deque<std::unique_ptr<Sequence>> waiting_;    // arrival order
  std::vector<BatchSeq> batch_;

  // Shared with submitting threads.
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::unique_ptr<Sequence>> submitted_;
  std::unordered_set<uint64_t> cancelled_;
  uint64_t next_id_ = 1;
  bool stop_ = false;
  std::thread thread_;
  SchedulerCounters counters_;  // guarded by mu_
  SchedulerCounters local_;     // engine thread's copy
};

}  // namespace strata
