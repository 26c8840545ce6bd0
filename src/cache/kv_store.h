// KvStore: the tiered KV cache store (LMCache's role in Strata).
//
// Tiers are chained top-down (typically host -> disk -> redis). Lookup asks
// each tier, moving no data, how much of a key chain it holds. Fetch looks a
// key up top-down and promotes a hit into the tiers above it. Store writes a
// new chunk into the top tier and, asynchronously, into every lower tier
// configured write-through (so other processes sharing a disk directory or a
// Redis see it at once); a chunk evicted from a tier is demoted into the next
// tier down if that tier does not already hold it. Each tier keeps chunks in
// its own encoding (raw f16 in RAM, say, zstd or int8 on disk); the store
// transcodes on the way.
//
// The store never decides what KV is right: the engine verifies every chunk
// with ChunkReader against the tokens it expects, and reports bad ones with
// ReportCorrupt, which drops them from that tier and counts them.
//
// Thread-safety: every method is thread-safe. Background work (write-through,
// promotion, demotion) runs on the store's own threads; the destructor waits
// for it.
#pragma once

#include <chrono>
#include <cstdint>
#include <future>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "cache/chunk_format.h"
#include "cache/chunk_key.h"
#include "cache/tier.h"

namespace strata {

struct StoreTier {
  std::unique_ptr<Tier> tier;
  ChunkEncoding encoding;       // how this tier keeps chunks
  bool write_through = true;    // receives every Store (else only demotions)
};

struct KvStoreOptions {
  // Pins without an explicit ttl expire after this.
  std::chrono::milliseconds default_pin_ttl{std::chrono::minutes(10)};
  int background_threads = 2;
};

struct KvStoreTierStats {
  std::string name;
  ChunkEncoding encoding;
  TierStats tier;
  uint64_t promotions_in = 0;   // chunks promoted into this tier
  uint64_t demotions_in = 0;    // chunks demoted into this tier
  uint64_t corrupt = 0;         // chunks from this tier that failed verification
};

struct KvStoreStats {
  std::vector<KvStoreTierStats> tiers;
  uint64_t lookups = 0;
  uint64_t lookup_chunks = 0;   // chunks asked about
  uint64_t hit_chunks = 0;      // of those, found in some tier
  uint64_t stores = 0;
  uint64_t store_failures = 0;  // a tier rejected or failed a write
  uint64_t fallbacks = 0;       // loads the engine gave up on and recomputed (ReportFallback)
};

// Where the chunks of a key chain are: the longest prefix some tier holds
// (chunk i is available if any tier holds key i), per-tier prefix counts,
// and for each available chunk the highest tier holding it.
struct StoreLookup {
  size_t chunks = 0;
  std::vector<size_t> per_tier;   // leading keys held by each tier, in tier order
  std::vector<int> tier_of_chunk; // [chunks]
};

class KvStore {
 public:
  // tiers: top (fastest) first; at least one; names unique.
  static Expected<std::unique_ptr<KvStore>> Create(std::vector<StoreTier> tiers, const KvStoreOptions& options);
  ~KvStore();

  StoreLookup Lookup(std::span<const ChunkKey> keys);

  // The chunk's bytes from the highest tier holding it (starting at
  // `from_tier`, e.g. StoreLookup::tier_of_chunk[i]), in that tier's
  // encoding; promotes it into the tiers above. kNotFound if no tier has it;
  // a failing tier is skipped (counted) and the next one tried.
  // `tier_index`, when given, receives the tier that served it.
  std::future<Expected<ChunkBlob>> Fetch(const ChunkKey& key, const ChunkMeta& expect, int from_tier = 0,
                                         int* tier_index = nullptr);

  // Layer-wise loading: bytes `range` of the chunk as tier `tier` holds it
  // (in that tier's encoding; no other tier is tried, no promotion). The
  // caller verifies what it reads (ChunkReader::OpenPrefix/DecodeSection).
  std::future<Expected<ChunkBlob>> FetchRange(const ChunkKey& key, int tier, ByteRange range);
  // After a range-wise load from `from_tier` verified the chunk: copies it
  // into the tiers above in the background (what Fetch does on a hit).
  void Promote(const ChunkKey& key, const ChunkMeta& expect, int from_tier);

  // Stores a chunk encoded as `blob` (any encoding; usually raw f16 from
  // EncodeChunk). Returns at once; the writes happen in the background.
  void Store(const ChunkKey& key, const ChunkMeta& meta, ChunkBlob blob);
  // Waits for every background write, promotion and demotion issued so far.
  void Flush();

  // A chunk served by tier `tier_index` failed verification: drop it there.
  void ReportCorrupt(const ChunkKey& key, int tier_index);
  // The engine recomputed KV it had planned to load.
  void ReportFallback();

  // Control API. `tier` is a tier name or "" for all tiers.
  Status Pin(const ChunkKey& key, std::chrono::milliseconds ttl, std::string_view tier = "");
  Status Unpin(const ChunkKey& key, std::string_view tier = "");
  Status Clear(std::string_view tier = "");
  // Copies a chunk from one tier into another (transcoding); with
  // `remove_source`, removes it from the source afterwards.
  Status Move(const ChunkKey& key, const ChunkMeta& expect, std::string_view from, std::string_view to,
              bool remove_source = true);

  int n_tiers() const;
  std::string_view tier_name(int i) const;
  const ChunkEncoding& tier_encoding(int i) const;
  int tier_index(std::string_view name) const;  // -1 if none
  KvStoreStats stats() const;
  // Per tier: Ok or why not.
  std::vector<std::pair<std::string, Status>> Health();

 private:
  struct Impl;
  explicit KvStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace strata
