// VirtualKvCache (vAttention): every slot owns one contiguous virtual range
// per layer for K and one for V, reserved up front with PROT_NONE and
// MAP_NORESERVE, so attention uses the plain contiguous kernel unchanged.
// Physical memory comes from one memfd-backed pool of pages (4 KiB, or 2 MiB
// huge pages when asked), mapped MAP_FIXED|MAP_SHARED into a slot's ranges
// as its sequence grows.
//
// - Mapping runs ahead of the forward pass: the scheduler reserves each
//   step's positions before calling Forward, and Reserve maps `lookahead`
//   positions past what is needed, so most decode steps map nothing.
// - Deferred reclamation: Clear() leaves a slot's pages mapped; the next
//   sequence in that slot reuses them without any mapping call.
// - When the pool runs short, pages are reclaimed from idle slots (least
//   recently used first).
// Stale KV in a reused slot is never read: attention reads only positions the
// current sequence has written.
// No prefix cache: a slot's pages belong to whichever sequence takes the slot
// next, so AttachCachedPrefix and ProbeCachedPrefix keep the base class's
// answer (nothing held).
//
// Thread-safety: not thread-safe (one engine thread).
#pragma once

#include <memory>
#include <vector>

#include "kv/managed_kv_cache.h"

namespace strata {

struct VirtualKvOptions {
  int n_layers = 0;
  int64_t kv_dim = 0;
  int max_seqs = 1;
  int64_t max_positions = 0;  // per sequence
  size_t budget_bytes = 0;    // the page pool; rounded down to whole pages
  bool huge_pages = false;    // 2 MiB pages (needs hugetlbfs pages reserved by the OS)
  int64_t lookahead = -1;     // positions mapped beyond need; -1: one page's worth
};

class VirtualKvCache final : public ManagedKvCache {
 public:
  static Expected<std::unique_ptr<VirtualKvCache>> Create(const VirtualKvOptions& options);
  ~VirtualKvCache() override;

  int n_layers() const override { return o_.n_layers; }
  int64_t kv_dim() const override { return o_.kv_dim; }
  int max_seqs() const override { return o_.max_seqs; }
  int64_t max_positions() const override { return o_.max_positions; }
  // Maps pages until positions [0, n_positions) are backed in every plane
  // (plus best-effort lookahead). kResourceExhausted when the pool, after
  // reclaiming idle slots, has too few pages; pages mapped so far stay.
  Status Reserve(int seq, int64_t n_positions) override;
  KvLayerView View(int seq, int layer) override;
  void Clear(int seq) override;
  size_t committed_bytes() const override;
  size_t used_bytes() const override;

  int AcquireSlot() override;
  int64_t AvailablePositions() const override;
  int64_t granule_positions() const override;
  int64_t BackedPositions(int seq) const override;
  void Trim() override;
  KvMemoryStats stats() const override;
  const char* kind() const override { return "virtual"; }

  size_t page_bytes() const { return page_; }
  int64_t pool_pages() const { return n_pages_; }
  int64_t free_pages() const { return static_cast<int64_t>(free_.size()); }

 private:
  struct Slot {
    bool active = false;
    uint8_t* base = nullptr;        // 2 * n_layers planes of plane_bytes_
    int64_t mapped = 0;             // pages mapped per plane
    std::vector<int32_t> pages;     // [plane][i], plane-major, capacity grows
    int64_t positions = 0;          // positions the current sequence reserved
    uint64_t released_at = 0;       // LRU stamp for reclamation
  };

  explicit VirtualKvCache(const VirtualKvOptions& o) : o_(o) {}
  Status MapPages(Slot& s, int64_t pages_per_plane, bool best_effort);
  void UnmapAll(Slot& s);
  bool ReclaimIdle(const Slot* except);
  uint8_t* Plane(const Slot& s, int plane) const { return s.base + static_cast<size_t>(plane) * plane_bytes_; }

  VirtualKvOptions o_;
  int fd_ = -1;
  size_t page_ = 4096;
  int64_t n_pages_ = 0;
  size_t plane_bytes_ = 0;
  size_t row_bytes_ = 0;
  int n_planes_ = 0;
  std::vector<int32_t> free_;
  std::vector<Slot> slots_;
  uint64_t clock_ = 0;
  KvMemoryStats counters_;
};

}  // namespace strata
