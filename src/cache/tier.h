// Tier: one level of the KV cache store (host RAM, local disk, Redis).
//
// A tier maps ChunkKey -> an encoded chunk (chunk_format.h), opaque bytes to
// the tier. Operations that move data are asynchronous: they return a
// std::future the caller waits on, so the engine can keep computing while a
// chunk travels. Lookups that move no data (Contains, CountPrefix) are cheap
// and synchronous.
//
// Tiers never interpret or verify payloads; the store verifies every chunk it
// decodes. A tier that cannot serve (disk full, Redis down or slow) returns
// an error value, never blocks past its timeout, and never throws.
//
// Eviction: a tier with a byte budget evicts by its policy (eviction_policy.h)
// when a Put needs room; pinned keys are never evicted until their pin
// expires. Evicted chunks are handed to the eviction listener (the store
// demotes them to the next tier down).
//
// Thread-safety: every method is thread-safe.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "cache/chunk_key.h"

namespace strata {

// Immutable bytes of one encoded chunk. Cheap to copy (shared ownership):
// a host-tier hit is a view into the tier's pool that keeps the slot pinned
// (not evictable, not reused) for as long as any copy of the blob lives.
class ChunkBlob {
 public:
  ChunkBlob() = default;
  static ChunkBlob Adopt(std::vector<uint8_t> bytes);
  static ChunkBlob Copy(std::span<const uint8_t> bytes);
  // A view whose memory stays valid while `keepalive` lives.
  static ChunkBlob View(std::span<const uint8_t> bytes, std::shared_ptr<const void> keepalive);

  std::span<const uint8_t> bytes() const { return bytes_; }
  size_t size() const { return bytes_.size(); }
  bool empty() const { return bytes_.empty(); }
  // What keeps the bytes alive (for views of part of them).
  const std::shared_ptr<const void>& keepalive() const { return owner_; }

 private:
  std::span<const uint8_t> bytes_;
  std::shared_ptr<const void> owner_;
};

// A byte range of a stored chunk (one layer's section, say).
struct ByteRange {
  uint64_t offset = 0;
  uint64_t length = 0;
};

struct TierStats {
  uint64_t hits = 0;          // Get found the key
  uint64_t misses = 0;        // Get did not
  uint64_t puts = 0;          // chunks stored
  uint64_t put_failures = 0;  // stores that failed (full, I/O error, timeout)
  uint64_t get_failures = 0;  // reads that failed for a reason other than absence
  uint64_t evictions = 0;
  uint64_t bytes_read = 0;
  uint64_t bytes_written = 0;
  double get_seconds = 0;     // summed wall time of completed Gets
  double put_seconds = 0;     // summed wall time of completed Puts
  size_t used_bytes = 0;      // bytes held now (payloads)
  size_t capacity_bytes = 0;  // the tier's budget (0 = unbounded / managed remotely)
  size_t chunks = 0;          // chunks held now (best effort for remote tiers)
  size_t pinned = 0;
};

// The part `range` of `whole` (sharing its memory), or kCorrupt when the
// range runs past it.
Expected<ChunkBlob> SliceBlob(const ChunkBlob& whole, ByteRange range, const ChunkKey& key);

class Tier {
 public:
  virtual ~Tier() = default;

  // "host", "disk" or "redis": the name used by the CLI, control API and metrics.
  virtual std::string_view name() const = 0;

  // Whether the tier holds `key`, moving no payload. Shared tiers (disk
  // directory, Redis) may change under us, so a later Get can still miss.
  virtual bool Contains(const ChunkKey& key) = 0;
  // How many leading keys of `keys` the tier holds (stops at the first
  // absent one). Remote tiers answer in one round trip.
  virtual size_t CountPrefix(std::span<const ChunkKey> keys) {
    size_t n = 0;
    while (n < keys.size() && Contains(keys[n])) ++n;
    return n;
  }

  // The stored bytes; kNotFound when absent, kUnavailable/kIoError when the
  // tier failed. A hit refreshes the key in the eviction policy.
  virtual std::future<Expected<ChunkBlob>> Get(const ChunkKey& key) = 0;
  // Bytes [range.offset, + range.length) of the stored chunk, so a loader
  // can fetch a chunk layer by layer and start on layer 0 while later layers
  // are still on their way. kNotFound when absent; kCorrupt when the range
  // runs past the stored bytes (a truncated chunk). Counts a hit only for a
  // range at offset 0 (one per chunk read). The default serves views of
  // Get()'s bytes: right for tiers whose Get is a zero-copy view (host);
  // tiers that move bytes override it to move only the range.
  virtual std::future<Expected<ChunkBlob>> GetRange(const ChunkKey& key, ByteRange range);
  // Stores `blob` under `key` (replacing nothing: an existing key is kept
  // and the Put succeeds). kResourceExhausted when it cannot make room
  // (everything pinned, or larger than the budget).
  virtual std::future<Status> Put(const ChunkKey& key, ChunkBlob blob) = 0;
  virtual Status Remove(const ChunkKey& key) = 0;
  // Drops every chunk (pins included).
  virtual Status Clear() = 0;

  // Keeps `key` from eviction until `ttl` has passed (a later Pin extends
  // it). kNotFound if the tier does not hold the key.
  virtual Status Pin(const ChunkKey& key, std::chrono::milliseconds ttl) = 0;
  virtual Status Unpin(const ChunkKey& key) = 0;

  // Called (on the evicting thread, without the tier's locks held) with every
  // chunk the tier evicts to make room.
  using EvictionListener = std::function<void(const ChunkKey&, ChunkBlob)>;
  virtual void SetEvictionListener(EvictionListener listener) = 0;

  // Ok when the tier can serve now (the Redis server answers PING, the disk
  // directory is writable).
  virtual Status Health() = 0;
  virtual TierStats stats() const = 0;
};

}  // namespace strata
