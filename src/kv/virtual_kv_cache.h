// VirtualKvCache (vAttention): every slot owns one contiguous virtual range
// per layer for K and one for V, reserved up front with PROT_NONE and
// MAP_NORESERVE, so attention uses the plain contiguous kernel unchanged.
// Physical memory comes from one memfd (4 KiB pages, or 2 MiB huge pages
// when asked), mapped MAP_FIXED|MAP_SHARED into a slot's ranges as its
// sequence grows, under a budget of pages. Each page is mapped at the file
// offset of its own address, so a plane's mapped pages form one mapping
// (VMA): the count per process stays near 2 per plane and slot, far from
// vm.max_map_count however large the budget.
//
// - Mapping runs ahead of the forward pass, off its critical path: before
//   each pass the scheduler says what every sequence in it will need next
//   (PrepareAhead), and a background mapper thread maps and pre-faults those
//   pages (plus `lookahead` positions) while the pass computes. The next
//   Reserve then finds them mapped; it maps synchronously only what the
//   mapper has not reached. Pages mapped ahead are not yet reserved: a
//   Reserve that runs short takes them back.
// - Deferred reclamation: Clear() leaves a slot's pages mapped; the next
//   sequence in that slot reuses them without any mapping call.
// - When the budget runs short, pages are reclaimed from idle slots (least
//   recently used first).
// Stale KV in a reused slot is never read: attention reads only positions the
// current sequence has written.
// No prefix cache: a slot's pages belong to whichever sequence takes the slot
// next, so AttachCachedPrefix and ProbeCachedPrefix keep the base class's
// answer (nothing held).
//
// Thread-safety: the interface is the engine thread's (one thread), as for
// every ManagedKvCache. Inside, mu_ guards the page budget and the slots' page
// lists against the mapper thread. View, and a Reserve of positions already
// reserved (the forward pass's own), take no lock; any other engine call
// waits at most for the one page row (a page in every plane) the mapper is
// mapping, because the mapper steps aside whenever the engine wants mu_.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "kv/managed_kv_cache.h"

namespace strata {

struct VirtualKvOptions {
  int n_layers = 0;
  int64_t kv_dim = 0;
  int max_seqs = 1;
  int64_t max_positions = 0;  // per sequence
  size_t budget_bytes = 0;    // physical memory mapped at most; rounded down to whole pages
  bool huge_pages = false;    // 2 MiB pages (needs hugetlbfs pages reserved by the OS)
  int64_t lookahead = -1;     // positions mapped beyond need; -1: one page's worth
  // true: a background thread maps PrepareAhead's targets while the forward
  // pass runs. false: Reserve maps `lookahead` past need inline (the
  // synchronous baseline the benchmark compares against).
  bool map_ahead = true;
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
  // (plus best-effort lookahead). kResourceExhausted when the budget, after
  // reclaiming idle slots, has too few pages; pages mapped so far stay.
  Status Reserve(int seq, int64_t n_positions) override;
  // Queues `n_positions` (+ lookahead) of `seq` for the mapper thread.
  // Without map_ahead, does nothing.
  void PrepareAhead(int seq, int64_t n_positions) override;
  // Blocks until the mapper has finished everything queued (tests, benches).
  void WaitForMapper();
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
  int64_t budget_pages() const { return n_pages_; }
  int64_t free_pages() const;

 private:
  struct Slot {
    bool active = false;
    uint8_t* base = nullptr;        // 2 * n_layers planes of plane_bytes_
    int64_t mapped = 0;             // pages mapped per plane
    int64_t positions = 0;          // positions the current sequence reserved
    int64_t view_capacity = 0;      // positions View reports; engine thread only
    uint64_t released_at = 0;       // LRU stamp for reclamation
  };

  explicit VirtualKvCache(const VirtualKvOptions& o) : o_(o) {}
  // All below run with mu_ held.
  Status MapPages(Slot& s, int64_t pages_per_plane, bool best_effort, bool ahead);
  void UnmapAll(Slot& s) { UnmapTail(s, 0); }
  void UnmapTail(Slot& s, int64_t keep_pages);
  bool ReclaimIdle(const Slot* except);
  bool ReclaimAhead(const Slot* except);
  // Unmaps pages [from, to) of one plane and returns them to the budget.
  void ReleaseRange(Slot& s, int plane, int64_t from, int64_t to);
  off_t FileOffset(const uint8_t* addr) const { return static_cast<off_t>(addr - base_); }
  size_t CommittedLocked() const;
  size_t UsedLocked() const;
  int64_t PagesFor(int64_t positions) const;
  int64_t BackedLocked(const Slot& s) const;
  void MapperLoop();
  class EngineLock;  // the engine thread's hold on mu_ (see the .cpp)
  uint8_t* Plane(const Slot& s, int plane) const { return s.base + static_cast<size_t>(plane) * plane_bytes_; }

  VirtualKvOptions o_;
  int fd_ = -1;
  void* region_ = nullptr;  // every slot's reservation, aligned to page_
  size_t region_bytes_ = 0;
  size_t page_ = 4096;
  int64_t n_pages_ = 0;
  size_t plane_bytes_ = 0;
  size_t row_bytes_ = 0;
  int n_planes_ = 0;
  uint8_t* base_ = nullptr;  // slot 0's planes; the memfd maps 1:1 onto [base_, ...)
  int64_t free_pages_ = 0;   // budget pages not mapped anywhere
  std::vector<Slot> slots_;
  uint64_t clock_ = 0;
  KvMemoryStats counters_;

  mutable std::mutex mu_;
  mutable std::condition_variable mapper_cv_;  // work queued, the engine let go of mu_, or stopping
  std::condition_variable idle_cv_;            // the mapper ran out of work
  mutable std::atomic<int> engine_waiting_{0};  // the engine thread wants mu_
  std::deque<std::pair<int, int64_t>> ahead_;  // (slot, target positions)
  bool stop_ = false;
  std::thread mapper_;
};

}  // namespace strata
