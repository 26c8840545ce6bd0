// ManagedKvCache: the engine's view of KV memory, beyond what the forward
// pass needs (model/kv_memory.h). It hands out sequence slots, bounds all KV
// by one byte budget, reports committed vs used bytes and, where the
// implementation supports it, reuses cached prefix KV across requests.
//
// Two implementations: PagedKvCache (fixed-size blocks, block tables, prefix
// caching) and VirtualKvCache (vAttention: per-slot contiguous virtual
// ranges backed on demand by pages from a memfd pool).
//
// Thread-safety: not thread-safe; owned by the scheduler's engine thread.
// Read-only counters are exported through stats() by that thread. The one
// exception is ProbeCachedPrefix (and the constant shape accessors), which
// any thread may call while the engine thread runs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "model/kv_memory.h"
#include "model/tokenizer.h"

namespace strata {

struct KvMemoryStats {
  size_t budget_bytes = 0;     // the bound on committed_bytes
  size_t committed_bytes = 0;  // memory holding KV (live + kept for reuse)
  size_t used_bytes = 0;       // memory holding live sequences' KV
  size_t cached_bytes = 0;     // kept for reuse: cached prefix blocks / idle slots' pages
  int active_slots = 0;
  // Prefix caching: tokens looked up and tokens served from the cache.
  uint64_t prefix_query_tokens = 0;
  uint64_t prefix_hit_tokens = 0;
  uint64_t evictions = 0;       // cached blocks or idle slots' pages reclaimed under pressure
  // Virtual memory: page mappings made and the time they took, on any
  // thread; how many of them the background mapper made ahead of need; and
  // the time the engine thread itself spent in Reserve (mapping what was not
  // ready, or waiting for the mapper) -- the part on the critical path.
  uint64_t page_maps = 0;
  uint64_t ahead_page_maps = 0;
  double map_seconds = 0;
  double map_wait_seconds = 0;
};

class ManagedKvCache : public KvCache {
 public:
  // A free slot for a new sequence, or -1 when all are taken.
  virtual int AcquireSlot() = 0;
  // Clear(seq) (from KvCache) frees the slot's KV and returns the slot.

  // Positions a new sequence could get now, counting memory that can be
  // reclaimed (cached blocks, idle slots). Admission control compares a
  // prompt against this.
  virtual int64_t AvailablePositions() const = 0;
  // Allocation granularity in positions (a block, or one page per plane).
  virtual int64_t granule_positions() const = 0;
  // A hint, given just before a forward pass: `seq` will soon need
  // `n_positions` (its next step). Memory that is slow to provide may get
  // ready in the background while the pass runs, so the next Reserve finds
  // it. Never fails and never takes memory a Reserve needs: what it
  // prepares beyond a sequence's reservation is given back under pressure.
  virtual void PrepareAhead(int seq, int64_t n_positions) { (void)seq; (void)n_positions; }
  // Positions `seq` can hold without allocating (its blocks, or the pages
  // its slot still has mapped from an earlier sequence).
  virtual int64_t BackedPositions(int seq) const = 0;

  // Prefix caching. Attaches the cached KV of the longest block-aligned
  // prefix of `tokens` (never more than max_positions of it) to the empty
  // slot `seq`, keyed under `cache_salt`; returns how many positions were
  // attached (their KV need not be computed). Implementations without a
  // prefix cache attach nothing.
  virtual int64_t AttachCachedPrefix(int seq, std::span<const TokenId> tokens, const std::string& cache_salt,
                                     int64_t max_positions) {
    (void)seq; (void)tokens; (void)cache_salt; (void)max_positions;
    return 0;
  }
  // Offers the computed KV of tokens [0, tokens.size()) of `seq` for reuse
  // (full blocks only).
  virtual void PublishPrefix(int seq, std::span<const TokenId> tokens) { (void)seq; (void)tokens; }
  // How many leading tokens of `tokens` (under `cache_salt`) the prefix cache
  // holds now: the block-aligned prefix AttachCachedPrefix would find with no
  // max_positions limit. Thread-safe and read-only (no LRU touch, no
  // reference, no counter), so a control API can ask from any thread. The
  // answer is advisory: the blocks may be evicted before a request uses
  // them, and a request reuses at most prompt - 1 tokens (the scheduler
  // computes the last). Implementations without a prefix cache hold nothing.
  virtual int64_t ProbeCachedPrefix(std::span<const TokenId> tokens, const std::string& cache_salt) const {
    (void)tokens; (void)cache_salt;
    return 0;
  }
  // Positions per prefix-cache entry (the granularity of ProbeCachedPrefix),
  // or 0 when this memory keeps no prefix cache. Constant; any thread.
  virtual int64_t prefix_block_positions() const { return 0; }

  // Returns memory kept for reuse (cached blocks, idle slots' pages) so that
  // committed_bytes() drops to used_bytes().
  virtual void Trim() = 0;
  virtual KvMemoryStats stats() const = 0;
  virtual const char* kind() const = 0;  // "paged" or "virtual"
};

}  // namespace strata
