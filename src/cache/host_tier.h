// HostTier: the host-RAM level of the KV cache store.
//
// All payload memory is one pool allocated at construction (capacity_bytes,
// rounded down to whole pages). A chunk occupies a contiguous run of pages,
// found first-fit in a free-extent map that coalesces on free, so storing a
// chunk never allocates payload memory (only small index bookkeeping).
//
// Get returns a zero-copy ChunkBlob::View into the pool. The view pins its
// slot: while any copy of that blob lives, the slot is neither evicted nor
// reused, even if the chunk is removed or cleared meanwhile (its pages are
// freed when the last copy goes). The pool itself outlives the tier if
// blobs do.
//
// Put copies the bytes in and, when the pool has no run of free pages long
// enough, evicts by the EvictionPolicy, skipping chunks pinned by Pin (until
// their ttl passes), by live blobs, or still being written. The eviction
// listener receives a view of each evicted chunk and is called without locks
// held, on the thread doing the Put; the view is only valid for the call's
// purposes until the listener returns and drops it: the Put is waiting for
// those pages. A listener that keeps the bytes must copy them.
//
// Get and Put complete before they return (the futures are ready): a host
// copy is faster than a hand-off to another thread.
//
// Thread-safety: every method is thread-safe.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <string>

#include "base/status.h"
#include "cache/tier.h"

namespace strata {

struct HostTierOptions {
  size_t capacity_bytes = size_t{1} << 30;
  std::string policy = "lru";        // "lru" or "s3fifo"
  size_t page_bytes = 64 * 1024;     // allocation granule of the pool
  std::string name = "host";         // the tier's name in the store, CLI and metrics
};

class HostTier final : public Tier {
 public:
  static Expected<std::unique_ptr<HostTier>> Create(const HostTierOptions& options);
  ~HostTier() override;

  std::string_view name() const override;
  bool Contains(const ChunkKey& key) override;
  size_t CountPrefix(std::span<const ChunkKey> keys) override;
  std::future<Expected<ChunkBlob>> Get(const ChunkKey& key) override;
  std::future<Expected<ChunkBlob>> GetRange(const ChunkKey& key, ByteRange range) override;
  std::future<Status> Put(const ChunkKey& key, ChunkBlob blob) override;
  Status Remove(const ChunkKey& key) override;
  Status Clear() override;
  Status Pin(const ChunkKey& key, std::chrono::milliseconds ttl) override;
  Status Unpin(const ChunkKey& key) override;
  void SetEvictionListener(EvictionListener listener) override;
  Status Health() override;
  TierStats stats() const override;

  struct Core;  // the pool and index, shared with live blobs

 private:
  explicit HostTier(std::shared_ptr<Core> core);
  Status PutNow(const ChunkKey& key, const ChunkBlob& blob);
  Expected<ChunkBlob> Read(const ChunkKey& key, std::optional<ByteRange> range);
  std::shared_ptr<Core> core_;
};

}  // namespace strata
