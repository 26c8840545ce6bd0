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
size_t RoundUp(size_t n, size_t a) { return (n + a - 1) / a * a; }
size_t CeilDiv(size_t n, size_t a) { return (n + a - 1) / a; }
}  // namespace

Expected<std::unique_ptr<VirtualKvCache>> VirtualKvCache::Create(const VirtualKvOptions& o) {
  if (o.n_layers <= 0 || o.kv_dim <= 0 || o.max_seqs <= 0 || o.max_positions <= 0) {
    return Status::InvalidArgument("KV cache dimensions must be positive");
  }
  std::unique_ptr<VirtualKvCache> c(new VirtualKvCache(o));
  c->page_ = o.huge_pages ? (size_t{2} << 20) : static_cast<size_t>(sysconf(_SC_PAGESIZE));
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
  if (c->fd_ < 0) return Status::IoError(std::string("memfd_create for the KV page pool failed: ") + std::strerror(errno));
  const size_t pool = static_cast<size_t>(c->n_pages_) * c->page_;
  if (ftruncate(c->fd_, static_cast<off_t>(pool)) != 0) {
    return Status::ResourceExhausted("cannot size the KV page pool to " + std::to_string(pool >> 20) + " MiB: " +
                                     std::strerror(errno) + (o.huge_pages ? " (are huge pages reserved?)" : ""));
  }
  c->free_.reserve(static_cast<size_t>(c->n_pages_));
  for (int64_t i = c->n_pages_; i-- > 0;) c->free_.push_back(static_cast<int32_t>(i));
  c->slots_.resize(static_cast<size_t>(o.max_seqs));
  const size_t slot_bytes = c->plane_bytes_ * static_cast<size_t>(c->n_planes_);
  for (Slot& s : c->slots_) {
    void* p = mmap(nullptr, slot_bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
      return Status::ResourceExhausted("cannot reserve " + std::to_string(slot_bytes >> 20) +
                                       " MiB of address space per KV slot: " + std::strerror(errno) +
                                       " (lower --parallel or -c)");
    }
    s.base = static_cast<uint8_t*>(p);
  }
  c->counters_.budget_bytes = pool;
  return c;
}

VirtualKvCache::~VirtualKvCache() {
  const size_t slot_bytes = plane_bytes_ * static_cast<size_t>(n_planes_);
  for (Slot& s : slots_) {
    if (s.base) munmap(s.base, slot_bytes);
  }
  if (fd_ >= 0) close(fd_);
}

int64_t VirtualKvCache::granule_positions() const { return std::max<int64_t>(1, static_cast<int64_t>(page_ / row_bytes_)); }

int VirtualKvCache::AcquireSlot() {
  // Prefer the idle slot with the most pages still mapped: its sequence
  // starts without any mapping call.
  int best = -1;
  for (int i = 0; i < o_.max_seqs; ++i) {
    const Slot& s = slots_[static_cast<size_t>(i)];
    if (s.active) continue;
    if (best < 0 || s.mapped > slots_[static_cast<size_t>(best)].mapped) best = i;
  }
  if (best >= 0) slots_[static_cast<size_t>(best)].active = true;
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

void VirtualKvCache::UnmapAll(Slot& s) {
  if (s.mapped == 0) return;
  for (int pl = 0; pl < n_planes_; ++pl) {
    // Replacing the range with a fresh PROT_NONE reservation drops the
    // shared mapping and keeps the address space ours.
    void* p = mmap(Plane(s, pl), static_cast<size_t>(s.mapped) * page_, PROT_NONE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
    (void)p;
    for (int64_t i = 0; i < s.mapped; ++i) {
      const int32_t page = s.pages[static_cast<size_t>(pl) * static_cast<size_t>(s.pages.size() / n_planes_) + static_cast<size_t>(i)];
      // Punching the page out of the memfd returns its memory to the OS.
      fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(page) * static_cast<off_t>(page_),
                static_cast<off_t>(page_));
      free_.push_back(page);
    }
  }
  s.mapped = 0;
  s.pages.clear();
}

Status VirtualKvCache::MapPages(Slot& s, int64_t want, bool best_effort) {
  if (want <= s.mapped) return Status::Ok();
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t add = want - s.mapped;
  while (static_cast<int64_t>(free_.size()) < add * n_planes_) {
    if (best_effort || !ReclaimIdle(&s)) break;
  }
  if (static_cast<int64_t>(free_.size()) < add * n_planes_) {
    if (best_effort) return Status::Ok();
    return Status::ResourceExhausted("the KV budget (" + std::to_string((static_cast<size_t>(n_pages_) * page_) >> 20) +
                                     " MiB of pages) is used up");
  }
  // pages is plane-major with a per-plane capacity; regrow it to `want`.
  const size_t old_cap = s.pages.size() / static_cast<size_t>(n_planes_);
  if (static_cast<size_t>(want) > old_cap) {
    const size_t cap = std::max(static_cast<size_t>(want), old_cap * 2);
    std::vector<int32_t> grown(cap * static_cast<size_t>(n_planes_), -1);
    for (int pl = 0; pl < n_planes_; ++pl) {
      std::copy_n(s.pages.begin() + static_cast<ptrdiff_t>(static_cast<size_t>(pl) * old_cap), s.mapped,
                  grown.begin() + static_cast<ptrdiff_t>(static_cast<size_t>(pl) * cap));
    }
    s.pages.swap(grown);
  }
  const size_t cap = s.pages.size() / static_cast<size_t>(n_planes_);
  for (int pl = 0; pl < n_planes_; ++pl) {
    for (int64_t i = s.mapped; i < want; ++i) {
      const int32_t page = free_.back();
      uint8_t* addr = Plane(s, pl) + static_cast<size_t>(i) * page_;
      void* p = mmap(addr, page_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd_,
                     static_cast<off_t>(page) * static_cast<off_t>(page_));
      if (p == MAP_FAILED) {
        return Status::ResourceExhausted(std::string("mapping a KV page failed: ") + std::strerror(errno));
      }
      free_.pop_back();
      s.pages[static_cast<size_t>(pl) * cap + static_cast<size_t>(i)] = page;
      ++counters_.page_maps;
    }
  }
  s.mapped = want;
  counters_.map_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return Status::Ok();
}

Status VirtualKvCache::Reserve(int seq, int64_t n_positions) {
  if (seq < 0 || seq >= o_.max_seqs) return Status::InvalidArgument("sequence slot " + std::to_string(seq) + " does not exist");
  if (n_positions > o_.max_positions) {
    return Status::OutOfRange("sequence needs " + std::to_string(n_positions) + " positions but the context holds " +
                              std::to_string(o_.max_positions) + " (raise -c / --ctx-size)");
  }
  Slot& s = slots_[static_cast<size_t>(seq)];
  s.active = true;
  const int64_t need = static_cast<int64_t>(CeilDiv(static_cast<size_t>(n_positions) * row_bytes_, page_));
  STRATA_RETURN_IF_ERROR(MapPages(s, need, false));
  const int64_t ahead = o_.lookahead < 0 ? granule_positions() : o_.lookahead;
  const int64_t ahead_pos = std::min(o_.max_positions, n_positions + ahead);
  const int64_t want = static_cast<int64_t>(CeilDiv(static_cast<size_t>(ahead_pos) * row_bytes_, page_));
  STRATA_RETURN_IF_ERROR(MapPages(s, want, true));
  s.positions = std::max(s.positions, n_positions);
  return Status::Ok();
}

int64_t VirtualKvCache::BackedPositions(int seq) const {
  return static_cast<int64_t>(static_cast<size_t>(slots_[static_cast<size_t>(seq)].mapped) * page_ / row_bytes_);
}

KvLayerView VirtualKvCache::View(int seq, int layer) {
  const Slot& s = slots_[static_cast<size_t>(seq)];
  KvLayerView v;
  v.k = reinterpret_cast<fp16_t*>(Plane(s, 2 * layer));
  v.v = reinterpret_cast<fp16_t*>(Plane(s, 2 * layer + 1));
  v.stride = o_.kv_dim;
  v.capacity = BackedPositions(seq);
  return v;
}

void VirtualKvCache::Clear(int seq) {
  if (seq < 0 || seq >= o_.max_seqs) return;
  Slot& s = slots_[static_cast<size_t>(seq)];
  s.active = false;
  s.positions = 0;
  s.released_at = ++clock_;
}

void VirtualKvCache::Trim() {
  for (Slot& s : slots_) {
    if (!s.active) UnmapAll(s);
  }
}

int64_t VirtualKvCache::AvailablePositions() const {
  int64_t pages = static_cast<int64_t>(free_.size());
  for (const Slot& s : slots_) {
    if (!s.active) pages += s.mapped * n_planes_;
  }
  return pages / n_planes_ * static_cast<int64_t>(page_) / static_cast<int64_t>(row_bytes_);
}

size_t VirtualKvCache::committed_bytes() const {
  return (static_cast<size_t>(n_pages_) - free_.size()) * page_;
}

size_t VirtualKvCache::used_bytes() const {
  size_t pages = 0;
  for (const Slot& s : slots_) {
    if (s.active) pages += static_cast<size_t>(s.mapped) * static_cast<size_t>(n_planes_);
  }
  return pages * page_;
}

KvMemoryStats VirtualKvCache::stats() const {
  KvMemoryStats st = counters_;
  st.committed_bytes = committed_bytes();
  st.used_bytes = used_bytes();
  st.cached_bytes = st.committed_bytes - st.used_bytes;
  st.active_slots = static_cast<int>(std::count_if(slots_.begin(), slots_.end(), [](const Slot& s) { return s.active; }));
  return st;
}

}  // namespace strata
