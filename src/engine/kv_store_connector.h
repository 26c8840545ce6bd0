// KvStoreConnector: the engine's side of the KV cache store (cache/kv_store.h).
//
// It does three things for the scheduler:
//
// 1. Load planning (engine thread, cheap). PlanLoad cuts a prompt into chunk
//    keys (never covering the prompt's last token, which must be computed
//    for its logits) and asks the store which leading chunks some tier holds
//    (KvStore::Lookup, no data moves). If the store holds more than the
//    engine's own prefix cache attached, the scheduler reserves KV memory up
//    to the planned end and StartLoad hands the load to a fetch thread.
//
// 2. Layer-wise loading, overlapped with the forward pass. The fetch thread
//    reads each chunk's prefix (header, tokens, section table: ChunkReader::
//    OpenPrefix checks fingerprint, layout, key and every token), then asks
//    the tier for one layer section at a time, all chunks' layer 0 first,
//    then layer 1, ... (KvStore::FetchRange: the disk tier preads, Redis
//    answers GETRANGE, the host tier hands out views). Each section's
//    checksum is verified as it is decoded straight into the sequence's KV
//    memory. Once layer 0 of every chunk is placed the load is ready(): the
//    sequence joins the next forward pass with pos0 at the end of the
//    planned prefix, and the LayerHooks make layer l's attention wait only
//    until layer l is placed, so layer l+1 travels while layer l computes.
//    Until then the sequence sits in the scheduler's loading state and the
//    engine keeps stepping other sequences.
//
// 3. Fallback. A chunk that is missing, late (fetch_timeout from the load's
//    start), unreadable or corrupt ends the load at that chunk (ReportCorrupt
//    for bad data, ReportFallback always): end() shrinks to it and the rest
//    of the prompt is recomputed; the request never fails because of the
//    store. A failure found before the sequence's first pass costs nothing;
//    one found during it (layer l corrupt after layers < l were computed)
//    makes the scheduler throw that pass's work for the sequence away
//    (CompleteLoad tells it) and recompute from end(): positions before
//    end() are placed in every layer, nothing after it is trusted.
//
// And storing: StoreNewChunks encodes every newly completed full chunk of a
// sequence's KV (EncodeChunk, a copy on the engine thread) and hands it to
// KvStore::Store, which writes in the background.
//
// Concurrency with KV memory: the fetch thread writes only rows
// [begin(), planned_end()) of the load's own slot, which the scheduler has
// reserved and which nothing else touches until the load is completed or
// cancelled; CancelLoad returns only once the fetch thread can write no
// more. The destination (with a private copy of the block table) is taken
// in StartLoad.
//
// Thread-safety: PlanLoad, StartLoad, CancelLoad, PrepareStep, FinishStep,
// CompleteLoad and StoreNewChunks are for the engine thread (the one that
// owns the KV memory). LookupPrefix, KeysFor, MetaFor, counters(), store()
// and WaitForLoads are thread-safe. A StoreLoad's accessors are safe from any
// thread.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "base/status.h"
#include "cache/chunk_format.h"
#include "cache/chunk_key.h"
#include "cache/kv_store.h"
#include "engine/request.h"
#include "model/forward_hooks.h"
#include "model/kv_memory.h"
#include "model/model.h"

namespace strata {

struct KvStoreConnectorOptions {
  int chunk_tokens = 256;                          // tokens per chunk (every process sharing a store must agree)
  std::chrono::milliseconds fetch_timeout{5000};   // a chunk later than this is recomputed
  int fetch_threads = 2;                           // loads fetched and verified in parallel
  ChunkEncoding encoding;                          // what EncodeChunk produces (the store transcodes per tier)
};

// How many leading prompt tokens the store can serve (control API, CLI).
struct StorePrefixLookup {
  int64_t chunk_tokens = 0;       // tokens covered by the prompt's full chunks
  int64_t tokens = 0;             // longest prefix some tier holds
  std::vector<StoreTierTokens> per_tier;  // leading tokens each tier holds, in tier order
};

struct KvStoreConnectorCounters {
  uint64_t lookups = 0;            // PlanLoad calls
  uint64_t loads_started = 0;
  uint64_t loads_completed = 0;    // ran to the end, not cancelled (fully or partly loaded)
  uint64_t loads_cancelled = 0;    // cancelled or preempted before use
  uint64_t planned_tokens = 0;     // tokens loads set out to bring
  uint64_t loaded_tokens = 0;      // tokens verified and placed in KV memory
  std::vector<StoreTierTokens> loaded_tokens_per_tier;
  uint64_t fallbacks = 0;          // loads that ended early; the rest was recomputed
  uint64_t fallback_tokens = 0;    // planned tokens recomputed instead
  uint64_t corrupt_chunks = 0;     // failed verification (reported to the store)
  uint64_t missing_chunks = 0;     // looked up but gone by the time of the fetch
  uint64_t failed_fetches = 0;     // the tier failed (I/O error, unavailable)
  uint64_t timed_out_fetches = 0;
  uint64_t stored_chunks = 0;      // handed to KvStore::Store
  uint64_t store_encode_failures = 0;
  uint64_t stored_decode_chunks = 0;  // of stored_chunks, holding generated tokens (save_decode_cache)
  double fetch_seconds = 0;        // summed time from load start to ready (layer 0 placed)
  double load_seconds = 0;         // summed time from load start to finished (every layer)
  double layer_wait_seconds = 0;   // engine thread time spent waiting in BeforeAttention
  uint64_t discarded_passes = 0;   // forward passes thrown away: a layer failed mid-pass
};

// One sequence's load. Created by PlanLoad; the scheduler polls ready().
class StoreLoad {
 public:
  // The sequence can take part in a forward pass: every chunk's prefix is
  // verified and layer 0 placed (or the load is over).
  bool ready() const { return ready_.load(std::memory_order_acquire); }
  // Every layer is placed or given up on: end() is final.
  bool finished() const { return finished_.load(std::memory_order_acquire); }
  // Positions [0, begin()) are already in KV memory (engine prefix cache).
  int64_t begin() const { return begin_; }
  // What the load set out to bring: positions [begin(), planned_end()).
  int64_t planned_end() const { return planned_end_; }
  // Positions [begin(), end()) are placed, or on their way, in every layer.
  // Shrinks (never grows) while a failure is found, until finished().
  int64_t end() const { return end_.load(std::memory_order_acquire); }
  // REQUIRES: finished(). Loaded tokens by the tier that served them.
  const std::vector<StoreTierTokens>& per_tier() const { return per_tier_; }

 private:
  friend class KvStoreConnector;
  struct Chunk {
    ChunkKey key;
    ChunkMeta meta;
    int tier = 0;  // the tier read from
  };
  int64_t begin_ = 0;
  int64_t planned_end_ = 0;
  int first_chunk_ = 0;  // index of chunks_[0] in the prompt's chunk chain
  std::vector<Chunk> chunks_;
  std::vector<StoreTierTokens> per_tier_;  // written before finished_
  std::vector<KvLayerView> dst_;           // per layer, the slot's rows
  std::vector<int32_t> table_;             // dst_'s block table (a copy)
  std::chrono::steady_clock::time_point started_;
  std::atomic<int64_t> end_{0};
  std::atomic<bool> cancelled_{false};
  std::atomic<bool> ready_{false};
  std::atomic<bool> finished_{false};
  // Held while the fetch thread writes KV memory, so CancelLoad can wait
  // for the last write.
  std::mutex write_mu_;
  // Layer progress for the forward pass's hooks.
  mutable std::mutex mu_;
  std::condition_variable cv_;
  int layers_done_ = 0;  // guarded by mu_: layers [0, layers_done_) placed up to end()
};

class KvStoreConnector {
 public:
  // `store` must outlive the connector.
  static Expected<std::unique_ptr<KvStoreConnector>> Create(const Model& model, KvStore& store,
                                                            const KvStoreConnectorOptions& options);
  ~KvStoreConnector();  // stops the threads; waits for fetches still in flight

  // ---- engine thread ----

  // What PlanLoad decided for a sequence.
  struct LoadPlan {
    std::shared_ptr<StoreLoad> load;  // null: nothing to load
    size_t stored_chunks = 0;         // leading chunks of `tokens` the store already holds
  };
  // `tokens`: the sequence's tokens (prompt, or prompt + output on
  // readmission); positions [0, have) are in KV memory already. Loads at most
  // tokens.size() - 1 positions. The load does not start until StartLoad.
  LoadPlan PlanLoad(std::span<const TokenId> tokens, const std::string& cache_salt, int64_t have);
  // Starts fetching into slot `seq` of `kv`. REQUIRES: kv.Reserve(seq)
  // covered load->planned_end().
  Status StartLoad(const std::shared_ptr<StoreLoad>& load, KvCache& kv, int seq);
  // Abandons a load (cancellation, preemption). On return nothing more is
  // written to KV memory for it.
  void CancelLoad(const std::shared_ptr<StoreLoad>& load);

  // Around one Forward: `loads` are the unfinished ready loads of sequences
  // in the batch. Returns the hooks to pass to Forward (null when there are
  // none). FinishStep waits until those loads are finished; call it after
  // Forward even when Forward failed.
  ForwardHooks* PrepareStep(std::span<const std::shared_ptr<StoreLoad>> loads);
  void FinishStep();
  // Accounts a finished load that the scheduler is done with (counters).
  // REQUIRES: load->finished().
  void CompleteLoad(const StoreLoad& load);
  // The scheduler threw a pass away for a load that failed during it.
  void NoteDiscardedPass();

  // Encodes and stores every full chunk of `tokens` whose KV is in slot
  // `seq` (positions [0, n_valid)), from chunk *next_chunk on; advances
  // *next_chunk. `first_decode_position`: tokens at or after it were
  // generated (counted apart).
  void StoreNewChunks(KvCache& kv, int seq, std::span<const TokenId> tokens, int64_t n_valid,
                      const std::string& cache_salt, size_t* next_chunk, int64_t first_decode_position);

  // ---- any thread ----

  // Called (on a fetch thread) whenever a load becomes ready, e.g. to wake
  // the engine loop. Returns only when no call into the previous listener
  // is running (so its owner may go away after SetReadyListener(nullptr)).
  // The listener must not call into the connector.
  void SetReadyListener(std::function<void()> listener);
  // Waits until some load finishes or `timeout` passes.
  void WaitForLoads(std::chrono::milliseconds timeout);
  bool HasPendingLoads() const;

  // How many leading tokens of `tokens` the store holds, per tier (full
  // chunks only). Moves no data.
  StorePrefixLookup LookupPrefix(std::span<const TokenId> tokens, const std::string& cache_salt);
  ChunkKeyContext KeyContext(const std::string& cache_salt) const;
  std::vector<ChunkKey> KeysFor(std::span<const TokenId> tokens, const std::string& cache_salt) const;
  // What a reader must insist on for chunk `index` of `tokens`.
  ChunkMeta MetaFor(const ChunkKey& key, std::span<const TokenId> tokens, size_t index) const;

  KvStoreConnectorCounters counters() const;
  KvStore& store() { return store_; }
  int chunk_tokens() const { return options_.chunk_tokens; }
  // The KV format chunk keys and headers name: kKvFormat, or kLossyKvFormat
  // when this store keeps (or this connector writes) chunks in a lossy
  // encoding. Lossy chunks change the KV, so they live under other keys: a
  // process configured for exact KV never loads another process's int8 chunks
  // from a shared directory or Redis, and lossy processes still share theirs.
  const std::string& kv_format() const { return kv_format_; }
  static constexpr const char* kKvFormat = "f16";
  static constexpr const char* kLossyKvFormat = "f16+lossy";

 private:
  class LayerHooks;
  KvStoreConnector(const Model& model, KvStore& store, const KvStoreConnectorOptions& options);
  void FetchLoop();
  void RunLoad(StoreLoad& load);
  // Marks the load ready (once) and wakes whoever waits for loads.
  void MarkReady(StoreLoad& load);

  const Model& model_;
  KvStore& store_;
  KvStoreConnectorOptions options_;
  int n_layers_ = 0;
  int64_t kv_dim_ = 0;
  std::string kv_format_;

  // Fetch queue and threads.
  mutable std::mutex mu_;
  std::condition_variable work_cv_;    // fetch threads wait for loads
  std::condition_variable ready_cv_;   // WaitForLoads
  std::deque<std::shared_ptr<StoreLoad>> queue_;
  int pending_loads_ = 0;              // started, not yet ready
  bool stop_ = false;
  // Held while the listener runs, so SetReadyListener(nullptr) returns only
  // when no call into the old listener is in progress.
  std::mutex listener_mu_;
  std::function<void()> ready_listener_;  // guarded by listener_mu_
  KvStoreConnectorCounters counters_;  // guarded by mu_
  std::vector<std::thread> fetch_threads_;

  // The loads of the forward pass in progress (engine thread only).
  std::vector<std::shared_ptr<StoreLoad>> step_loads_;
  std::unique_ptr<LayerHooks> hooks_;
};

}  // namespace strata
