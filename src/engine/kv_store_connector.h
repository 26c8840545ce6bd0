// KvStoreConnector: the engine's side of the KV cache store (cache/kv_store.h).
//
// It does three things for the scheduler:
//
// 1. Load planning (engine thread, cheap). PlanLoad cuts a prompt into chunk
//    keys (never covering the prompt's last token, which must be computed
//    for its logits), asks the store which leading chunks some tier holds
//    (KvStore::Lookup, no data moves) and, if the store holds more than the
//    engine's own prefix cache attached, starts a StoreLoad.
//
// 2. Fetch and verify (background fetch threads). Every planned chunk is
//    fetched (KvStore::Fetch, all in flight at once), opened with
//    ChunkReader::Open (header, layout, fingerprint, key, every token) and
//    decoded layer by layer into the load's staging memory, which verifies
//    every section checksum. So when a load is ready, every byte the forward
//    pass will rely on has been verified. The first chunk that is missing,
//    late, unreadable or corrupt ends the load there (ReportCorrupt for bad
//    data) and the rest of the prompt is recomputed (ReportFallback); the
//    request never fails because of the store. The engine thread never
//    waits for a fetch: the sequence sits in the scheduler's loading state
//    and other sequences keep stepping.
//
// 3. Layer-wise placement during the forward pass. In the first step a
//    loaded sequence takes part in (with pos0 at the end of its loaded
//    prefix), PrepareStep hands the staged rows to the layer loader thread,
//    which copies layer 0, 1, ... into the sequence's KV memory while the
//    forward pass runs; the returned ForwardHooks' BeforeAttention(l) waits
//    until layer l of every loading sequence in the batch is in place. Only
//    rows beyond what the engine prefix cache attached are written.
//
// And storing: StoreNewChunks encodes every newly completed full chunk of a
// sequence's KV (EncodeChunk, a copy on the engine thread) and hands it to
// KvStore::Store, which writes in the background.
//
// Why staging and not decoding straight into KV memory during the forward
// pass: ChunkReader verifies a section's checksum only when it decodes it,
// and a section found corrupt at layer l after layers < l were computed
// cannot be undone without throwing the step away. Decoding into staging in
// the loading stage makes a bad chunk an ordinary fallback and leaves a
// plain copy for the overlapped part.
//
// Thread-safety: PlanLoad, CancelLoad, PrepareStep, FinishStep and
// StoreNewChunks are for the engine thread (the one that owns the KV
// memory). LookupPrefix, KeysFor, MetaFor, counters(), store() and
// WaitForLoads are thread-safe. A StoreLoad's ready()/result are safe to
// read from the engine thread at any time.
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
  uint64_t loads_completed = 0;    // became ready (fully or partly loaded)
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
  double fetch_seconds = 0;        // summed time from load start to ready
  double layer_wait_seconds = 0;   // engine thread time spent waiting in BeforeAttention
};

// One sequence's load. Created by PlanLoad; the scheduler polls ready().
class StoreLoad {
 public:
  // The load has finished fetching and verifying (successfully or not).
  bool ready() const { return ready_.load(std::memory_order_acquire); }
  // Positions [0, begin()) are already in KV memory (engine prefix cache).
  int64_t begin() const { return begin_; }
  // What the load set out to bring: positions [begin(), planned_end()).
  int64_t planned_end() const { return planned_end_; }
  // REQUIRES: ready(). Positions [begin(), end()) are verified and will be
  // in KV memory once the sequence's next forward pass has run (end() ==
  // begin() when nothing could be loaded).
  int64_t end() const { return end_; }
  // REQUIRES: ready(). Loaded tokens by the tier that served them.
  const std::vector<StoreTierTokens>& per_tier() const { return per_tier_; }

 private:
  friend class KvStoreConnector;
  struct Chunk {
    ChunkKey key;
    ChunkMeta meta;
    int from_tier = 0;
    int served_by = -1;  // written by the store when the fetch completes
    std::future<Expected<ChunkBlob>> fetch;
  };
  int64_t begin_ = 0;
  int64_t planned_end_ = 0;
  int64_t end_ = 0;
  int first_chunk_ = 0;  // index of chunks_[0] in the prompt's chunk chain
  std::vector<Chunk> chunks_;
  std::vector<StoreTierTokens> per_tier_;
  // Verified rows [first_chunk * C, end), [layer][K|V][chunk][C][kv_dim].
  std::vector<fp16_t> staging_;
  std::vector<int32_t> staging_table_;
  std::chrono::steady_clock::time_point started_;
  std::atomic<bool> cancelled_{false};
  std::atomic<bool> ready_{false};
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
  // tokens.size() - 1 positions.
  LoadPlan PlanLoad(std::span<const TokenId> tokens, const std::string& cache_salt, int64_t have);
  // Abandons a load (cancellation, preemption). Its staging is freed once
  // the fetch threads let go of it; nothing is written to KV memory.
  void CancelLoad(const std::shared_ptr<StoreLoad>& load);

  // Around one Forward: `loads[i]` is the ready load of batch[i] whose rows
  // must be placed during this pass, or null. Returns the hooks to pass to
  // Forward (null when nothing is placed). FinishStep waits until every row
  // is placed and releases the loads' staging; call it after Forward even
  // when Forward failed. REQUIRES: kv.Reserve covered each load's end().
  Expected<ForwardHooks*> PrepareStep(std::span<const BatchSeq> batch,
                                      std::span<const std::shared_ptr<StoreLoad>> loads, KvCache& kv);
  void FinishStep();

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
  static constexpr const char* kKvFormat = "f16";

 private:
  class LayerHooks;
  KvStoreConnector(const Model& model, KvStore& store, const KvStoreConnectorOptions& options);
  void FetchLoop();
  void RunLoad(StoreLoad& load);
  void CopyLoop();
  // Waits (forever) for the futures of chunks a load abandoned.
  void ReapStragglers(bool block);

  const Model& model_;
  KvStore& store_;
  KvStoreConnectorOptions options_;
  int n_layers_ = 0;
  int64_t kv_dim_ = 0;

  // Fetch queue and threads.
  mutable std::mutex mu_;
  std::condition_variable work_cv_;    // fetch threads wait for loads
  std::condition_variable ready_cv_;   // WaitForLoads
  std::deque<std::shared_ptr<StoreLoad>> queue_;
  // Loads with fetches still in flight after they were abandoned (timeout,
  // failure earlier in the chain, cancel): kept alive until those complete.
  std::vector<std::shared_ptr<StoreLoad>> stragglers_;
  int pending_loads_ = 0;
  bool stop_ = false;
  // Held while the listener runs, so SetReadyListener(nullptr) returns only
  // when no call into the old listener is in progress.
  std::mutex listener_mu_;
  std::function<void()> ready_listener_;  // guarded by listener_mu_
  KvStoreConnectorCounters counters_;  // guarded by mu_
  std::vector<std::thread> fetch_threads_;

  // Layer-wise placement (one step at a time).
  struct CopyItem {
    std::shared_ptr<StoreLoad> load;
    std::vector<KvLayerView> dst;            // per layer, block_table pointing into `table`
    std::vector<int32_t> table;
  };
  std::mutex copy_mu_;
  std::condition_variable copy_cv_;
  std::vector<CopyItem> copy_items_;
  int copy_layers_done_ = 0;
  bool copy_active_ = false;
  bool copy_stop_ = false;
  std::thread copy_thread_;
  std::unique_ptr<LayerHooks> hooks_;
};

}  // namespace strata
