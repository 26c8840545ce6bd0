#include "kv/virtual_kv_cache.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>

namespace strata {

namespace {
using Clock = std::chrono::steady_clock;
size_t RoundUp(size_t n, size_t a) { return (n + a - 1) / a * a; }
size_t CeilDiv(size_t n, size_t a) { return (n + a - 1) / a; }
double Since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }
}  // namespace

// The engine thread's hold on mu_. It announces itself first, so the mapper
// steps aside after the page row it is mapping, and wakes the mapper again
// when it lets go.
class VirtualKvCache::EngineLock {
 public:
  explicit EngineLock(const VirtualKvCache& c) : c_(c) {
    c_.engine_waiting_.fetch_add(1, std::memory_order_relaxed);
    lock_ = std::unique_lock<std::mutex>(c_.mu_);
    c_.engine_waiting_.fetch_sub(1, std::memory_order_relaxed);
  }
  ~EngineLock() {
    lock_.unlock();
    c_.mapper_cv_.notify_one();
  }
  EngineLock(const EngineLock&) = delete;
  EngineLock& operator=(const EngineLock&) = delete;

 private:
  const VirtualKvCache& c_;
  std::unique_lock<std::mutex> lock_;
};

Expected<std::unique_ptr<VirtualKvCache>> VirtualKvCache::Create(const VirtualKvOptions& o) {
  if (o.n_layers <= 0 || o.kv_dim <= 0 || o.max_seqs <= 0 || o.max_positions <= 0) {
    return Status::InvalidArgument("KV cache dimensions must be positive");
  }
  std::unique_ptr<VirtualKvCache> c(new VirtualKvCache(o));
  c->page_ = o.huge_pages ? (size_t{2} << 20) : static_cast<size_t>(sysconf(_SC_PAGESIZE));
  // Bounds that keep every size below from overflowing: 2^20 rows of
  // 2^20 halves is 2 TiB per plane, far past any real model.
  if (o.kv_dim > (int64_t{1} << 20) || o.max_positions > (int64_t{1} << 26) || o.n_layers > 4096 ||
      o.max_seqs > 65536) {
    return Status::InvalidArgument("KV cache dimensions are out of range (kv_dim " + std::to_string(o.kv_dim) +
                                   ", context " + std::to_string(o.max_positions) + ", layers " +
                                   std::to_string(o.n_layers) + ", slots " + std::to_string(o.max_seqs) + ")");
  }
  c->row_bytes_ = static_cast<size_t>(o.kv_dim) * sizeof(fp16_t);
  c->n_planes_ = 2 * o.n_layers;
  c->plane_bytes_ = RoundUp(static_cast<size_t>(o.max_positions) * c->row_bytes_, c->page_);
  c->n_pages_ = static_cast<int64_t>(o.budget_bytes / c->page_);
  if (c->n_pages_ < c->n_planes_) {
    return Status::InvalidArgument("the KV budget of " + std::to_string(o.budget_bytes) +
                                   " bytes cannot give every layer's K and V one page (" +
                                   std::to_string(c->n_planes_ * c->page_) + " bytes); raise --kv-budget");
  }
  if (c->n_pages_ > (int64_t{1} << 30)) return Status::InvalidArgument("the KV budget holds too many pages");
  c->fd_ = memfd_create("strata-kv", MFD_CLOEXEC | (o.huge_pages ? MFD_HUGETLB : 0u));
  if (c->fd_ < 0) {
    return Status::IoError(std::string("memfd_create for the KV pages failed: ") + std::strerror(errno) +
                           (o.huge_pages ? " (does this kernel support hugetlbfs?)" : ""));
  }
  const size_t budget = static_cast<size_t>(c->n_pages_) * c->page_;
  c->free_pages_ = c->n_pages_;
  c->slots_.resize(static_cast<size_t>(o.max_seqs));
  // One reservation for all slots, aligned to the page size: a huge page can
  // only be mapped at a 2 MiB-aligned address.
  const size_t slot_bytes = c->plane_bytes_ * static_cast<size_t>(c->n_planes_);
  const bool too_big = slot_bytes / static_cast<size_t>(c->n_planes_) != c->plane_bytes_ ||
                       slot_bytes > (size_t{1} << 46) / static_cast<size_t>(o.max_seqs);
  const size_t total = too_big ? 0 : slot_bytes * static_cast<size_t>(o.max_seqs);
  if (too_big) {
    return Status::ResourceExhausted("reserving " + std::to_string(o.max_seqs) + " KV slots of " +
                                     std::to_string(slot_bytes >> 20) + " MiB needs more address space than there is " +
                                     "(lower --parallel or -c)");
  }
  c->region_bytes_ = total + c->page_;
  void* p = mmap(nullptr, c->region_bytes_, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    c->region_ = nullptr;
    return Status::ResourceExhausted("cannot reserve " + std::to_string(total >> 20) +
                                     " MiB of address space for the KV slots: " + std::strerror(errno) +
                                     " (lower --parallel or -c)");
  }
  c->region_ = p;
  // The memfd is as large as the reservation (sparse: memory only where a
  // page is mapped and touched) and every page is mapped at its own offset,
  // so a plane's consecutive pages have consecutive offsets and the kernel
  // merges them into one mapping. Pages taken from a shared free list land at
  // scattered offsets and cost one VMA each, which ran into vm.max_map_count
  // (65530) at a quarter of a 1 GiB budget.
  if (ftruncate(c->fd_, static_cast<off_t>(total)) != 0) {
    return Status::ResourceExhausted("cannot size the KV memory file to " + std::to_string(total >> 20) + " MiB: " +
                                     std::strerror(errno) + (o.huge_pages ? " (are huge pages reserved?)" : ""));
  }
  uint8_t* base = reinterpret_cast<uint8_t*>(RoundUp(reinterpret_cast<uintptr_t>(p), c->page_));
  c->base_ = base;
  for (size_t i = 0; i < c->slots_.size(); ++i) c->slots_[i].base = base + i * slot_bytes;
  c->counters_.budget_bytes = budget;
  if (o.map_ahead) c->mapper_ = std::thread([raw = c.get()] { raw->MapperLoop(); });
  return c;
}

VirtualKvCache::~VirtualKvCache() {
  if (mapper_.joinable()) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    mapper_cv_.notify_all();
    mapper_.join();
  }
  if (region_) munmap(region_, region_bytes_);
  if (fd_ >= 0) close(fd_);
}

int64_t VirtualKvCache::granule_positions() const { return std::max<int64_t>(1, static_cast<int64_t>(page_ / row_bytes_)); }

int64_t VirtualKvCache::PagesFor(int64_t positions) const {
  return static_cast<int64_t>(CeilDiv(static_cast<size_t>(positions) * row_bytes_, page_));
}

int64_t VirtualKvCache::BackedLocked(const Slot& s) const {
  return static_cast<int64_t>(static_cast<size_t>(s.mapped) * page_ / row_bytes_);
}

int64_t VirtualKvCache::free_pages() const {
  const EngineLock lock(*this);
  return free_pages_;
}

int VirtualKvCache::AcquireSlot() {
  const EngineLock lock(*this);
  // Prefer the idle slot with the most pages still mapped: its sequence
  // starts without any mapping call.
  int best = -1;
  for (int i = 0; i < o_.max_seqs; ++i) {
    const Slot& s = slots_[static_cast<size_t>(i)];
    if (s.active) continue;
    if (best < 0 || s.mapped > slots_[static_cast<size_t>(best)].mapped) best = i;
  }
  if (best >= 0) {
    Slot& s = slots_[static_cast<size_t>(best)];
    s.active = true;
    s.view_capacity = BackedLocked(s);
  }
  return best;
}

bool VirtualKvCache::ReclaimIdle(const Slot* except) {
  Slot* victim = nullptr;
  for (Slot& s : slots_) {
    if (s.active || s.mapped == 0 || &s == except) continue;
    if (!victim || s.released_at < victim->released_at) victim = &s;
  }
  if (!victim) return false;
  UnmapAll(*victim);
  ++counters_.evictions;
  return true;
}

bool VirtualKvCache::ReclaimAhead(const Slot* except) {
  // Pages mapped past a live sequence's reservation (by the mapper, or kept
  // from the slot's previous sequence) are not read or written by any pass
  // until a Reserve covers them, so they can go back to the budget.
  bool any = false;
  for (Slot& s : slots_) {
    if (!s.active || &s == except) continue;
    const int64_t keep = PagesFor(s.positions);
    if (s.mapped > keep) {
      UnmapTail(s, keep);
      s.view_capacity = std::min(s.view_capacity, BackedLocked(s));
      any = true;
    }
  }
  return any;
}

void VirtualKvCache::ReleaseRange(Slot& s, int plane, int64_t from, int64_t to) {
  uint8_t* addr = Plane(s, plane) + static_cast<size_t>(from) * page_;
  const size_t len = static_cast<size_t>(to - from) * page_;
  // A fresh PROT_NONE reservation drops the shared mapping and keeps the
  // address space ours. Should it fail, the range stays mapped to the file,
  // but nothing reads or writes past a reservation, and the next MapPages
  // there maps over it; the memory itself goes back below either way.
  (void)mmap(addr, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
  // Punching the range out of the memfd returns its memory to the OS.
  fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, FileOffset(addr), static_cast<off_t>(len));
  free_pages_ += to - from;
}

void VirtualKvCache::UnmapTail(Slot& s, int64_t keep) {
  if (s.mapped <= keep) return;
  for (int pl = 0; pl < n_planes_; ++pl) ReleaseRange(s, pl, keep, s.mapped);
  s.mapped = keep;
}

Status VirtualKvCache::MapPages(Slot& s, int64_t want, bool best_effort, bool ahead) {
  if (want <= s.mapped) return Status::Ok();
  const auto t0 = Clock::now();
  int64_t add = want - s.mapped;
  while (free_pages_ < add * n_planes_) {
    if (best_effort || !(ReclaimIdle(&s) || ReclaimAhead(&s))) break;
  }
  if (best_effort) {
    // As far as the free pages go.
    add = std::min(add, free_pages_ / n_planes_);
    if (add == 0) return Status::Ok();
    want = s.mapped + add;
  }
  if (free_pages_ < add * n_planes_) {
    return Status::ResourceExhausted("the KV budget (" + std::to_string((static_cast<size_t>(n_pages_) * page_) >> 20) +
                                     " MiB of pages) is used up");
  }
  const size_t len = static_cast<size_t>(add) * page_;
  for (int pl = 0; pl < n_planes_; ++pl) {
    uint8_t* addr = Plane(s, pl) + static_cast<size_t>(s.mapped) * page_;
    // MAP_POPULATE faults the pages in now, so the pass that first writes
    // them does not take the faults (for the mapper, that is the point).
    if (mmap(addr, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED | MAP_POPULATE, fd_, FileOffset(addr)) ==
        MAP_FAILED) {
      const int err = errno;
      // Put the planes back as they were. A failed MAP_FIXED may already
      // have removed this plane's reservation, so it is reserved again too.
      free_pages_ -= static_cast<int64_t>(pl) * add;  // ReleaseRange gives these back
      for (int q = 0; q < pl; ++q) ReleaseRange(s, q, s.mapped, want);
      mmap(addr, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
      if (best_effort) return Status::Ok();
      return Status::ResourceExhausted(std::string("mapping KV pages failed: ") + std::strerror(err) +
                                       (o_.huge_pages ? " (are enough huge pages reserved?)" : ""));
    }
  }
  free_pages_ -= add * n_planes_;
  const uint64_t n = static_cast<uint64_t>(add) * static_cast<uint64_t>(n_planes_);
  counters_.page_maps += n;
  if (ahead) counters_.ahead_page_maps += n;
  s.mapped = want;
  counters_.map_seconds += Since(t0);
  return Status::Ok();
}

Status VirtualKvCache::Reserve(int seq, int64_t n_positions) {
  if (seq < 0 || seq >= o_.max_seqs) return Status::InvalidArgument("sequence slot " + std::to_string(seq) + " does not exist");
  if (n_positions > o_.max_positions) {
    return Status::OutOfRange("sequence needs " + std::to_string(n_positions) + " positions but the context holds " +
                              std::to_string(o_.max_positions) + " (raise -c / --ctx-size)");
  }
  Slot& s = slots_[static_cast<size_t>(seq)];
  // Already reserved (the forward pass's own Reserve after the scheduler's):
  // no lock, so no wait for the mapper. Only this thread writes these.
  if (s.active && n_positions <= s.positions) return Status::Ok();
  const auto t0 = Clock::now();
  const EngineLock lock(*this);
  s.active = true;
  Status st = MapPages(s, PagesFor(n_positions), false, false);
  if (st.ok() && !o_.map_ahead) {
    const int64_t ahead = o_.lookahead < 0 ? granule_positions() : o_.lookahead;
    st = MapPages(s, PagesFor(std::min(o_.max_positions, n_positions + ahead)), true, false);
  }
  if (st.ok()) s.positions = std::max(s.positions, n_positions);
  s.view_capacity = BackedLocked(s);
  counters_.map_wait_seconds += Since(t0);
  return st;
}

void VirtualKvCache::PrepareAhead(int seq, int64_t n_positions) {
  if (!o_.map_ahead || seq < 0 || seq >= o_.max_seqs) return;
  const int64_t ahead = o_.lookahead < 0 ? granule_positions() : o_.lookahead;
  const EngineLock lock(*this);  // wakes the mapper on release
  ahead_.emplace_back(seq, std::min(o_.max_positions, n_positions + ahead));
}

void VirtualKvCache::WaitForMapper() {
  std::unique_lock<std::mutex> lock(mu_);
  idle_cv_.wait(lock, [&] { return ahead_.empty(); });
}

void VirtualKvCache::MapperLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    // Holding mu_ only while the engine thread does not want it.
    mapper_cv_.wait(lock, [&] {
      return stop_ || (!ahead_.empty() && engine_waiting_.load(std::memory_order_relaxed) == 0);
    });
    if (stop_) return;
    const auto [seq, positions] = ahead_.front();
    Slot& s = slots_[static_cast<size_t>(seq)];
    // One page row per turn, then look again whether the engine is waiting.
    // Best effort, never reclaiming: a hint must not evict anything. A slot
    // cleared since the hint keeps its pages for the next sequence anyway.
    if (s.active && s.mapped < PagesFor(positions)) {
      const int64_t before = s.mapped;
      (void)MapPages(s, s.mapped + 1, true, true);
      if (s.mapped > before) continue;  // the job stays in front until done
    }
    ahead_.pop_front();
    if (ahead_.empty()) idle_cv_.notify_all();
  }
}

int64_t VirtualKvCache::BackedPositions(int seq) const {
  const EngineLock lock(*this);
  return BackedLocked(slots_[static_cast<size_t>(seq)]);
}

KvLayerView VirtualKvCache::View(int seq, int layer) {
  const Slot& s = slots_[static_cast<size_t>(seq)];
  KvLayerView v;
  v.k = reinterpret_cast<fp16_t*>(Plane(s, 2 * layer));
  v.v = reinterpret_cast<fp16_t*>(Plane(s, 2 * layer + 1));
  v.stride = o_.kv_dim;
  v.capacity = s.view_capacity;
  return v;
}

void VirtualKvCache::Clear(int seq) {
  if (seq < 0 || seq >= o_.max_seqs) return;
  const EngineLock lock(*this);
  Slot& s = slots_[static_cast<size_t>(seq)];
  s.active = false;
  s.positions = 0;
  s.view_capacity = 0;
  s.released_at = ++clock_;
  std::erase_if(ahead_, [seq](const auto& job) { return job.first == seq; });
}

void VirtualKvCache::Trim() {
  const EngineLock lock(*this);
  for (Slot& s : slots_) {
    if (!s.active) UnmapAll(s);
  }
}

int64_t VirtualKvCache::AvailablePositions() const {
  const EngineLock lock(*this);
  int64_t pages = free_pages_;
  for (const Slot& s : slots_) {
    if (!s.active) {
      pages += s.mapped * n_planes_;
    } else if (s.positions > 0) {
      // Mapped ahead of the reservation: ReclaimAhead can take it. (A slot
      // just acquired reports its warm pages as its own BackedPositions.)
      pages += std::max<int64_t>(0, s.mapped - PagesFor(s.positions)) * n_planes_;
    }
  }
  return pages / n_planes_ * static_cast<int64_t>(page_) / static_cast<int64_t>(row_bytes_);
}

size_t VirtualKvCache::CommittedLocked() const { return static_cast<size_t>(n_pages_ - free_pages_) * page_; }

size_t VirtualKvCache::UsedLocked() const {
  size_t pages = 0;
  for (const Slot& s : slots_) {
    // Pages mapped past the reservation (ahead, or kept from the slot's
    // last sequence) count as cached, not used, until a Reserve covers them.
    if (s.active) pages += static_cast<size_t>(std::min(s.mapped, PagesFor(s.positions))) * static_cast<size_t>(n_planes_);
  }
  return pages * page_;
}

size_t VirtualKvCache::committed_bytes() const {
  const EngineLock lock(*this);
  return CommittedLocked();
}

size_t VirtualKvCache::used_bytes() const {
  const EngineLock lock(*this);
  return UsedLocked();
}

KvMemoryStats VirtualKvCache::stats() const {
  const EngineLock lock(*this);
  KvMemoryStats st = counters_;
  st.committed_bytes = CommittedLocked();
  st.used_bytes = UsedLocked();
  st.cached_bytes = st.committed_bytes - st.used_bytes;
  st.active_slots = static_cast<int>(std::count_if(slots_.begin(), slots_.end(), [](const Slot& s) { return s.active; }));
  return st;
}

}  // namespace strata
