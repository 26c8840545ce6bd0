// EvictionPolicy: which key a bounded tier gives up next.
//
// The tier owns the bytes and the locking; the policy only orders keys. The
// tier calls Insert on a store, Touch on a hit, Erase on removal, and asks
// for a Victim when it needs room, skipping keys it reports as pinned.
//
// Two policies: LRU (default) and S3-FIFO (a small probationary FIFO, a main
// FIFO with one-bit reinsertion, and a ghost queue of recently evicted keys;
// resists scans of one-time chunks better than LRU).
//
// Thread-safety: not thread-safe; the owning tier serializes calls.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string_view>

#include "base/status.h"
#include "cache/chunk_key.h"

namespace strata {

class EvictionPolicy {
 public:
  virtual ~EvictionPolicy() = default;
  virtual void Insert(const ChunkKey& key, size_t bytes) = 0;
  virtual void Touch(const ChunkKey& key) = 0;
  virtual void Erase(const ChunkKey& key) = 0;
  // The next key to evict, skipping keys for which `pinned` returns true;
  // nullopt when every key is pinned or there are none. Does not remove it:
  // the tier calls Erase once the key is gone.
  virtual std::optional<ChunkKey> Victim(const std::function<bool(const ChunkKey&)>& pinned) = 0;
  virtual size_t size() const = 0;
};

// "lru" or "s3fifo"; kInvalidArgument otherwise.
Expected<std::unique_ptr<EvictionPolicy>> MakeEvictionPolicy(std::string_view name);

}  // namespace strata
