#include "cache/host_tier.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <vector>

#include "cache/eviction_policy.h"

namespace strata {

namespace {

using Clock = std::chrono::steady_clock;

template <typename T>
std::future<T> Ready(T value) {
  std::promise<T> p;
  p.set_value(std::move(value));
  return p.get_future();
}

double SecondsSince(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

}  // namespace

// One stored chunk: a run of pages. A slot is "indexed" while the key maps
// to it; `holds` counts what keeps its pages from reuse (live blobs, a Put
// still copying in, an evicted chunk on its way to the listener). Pages
// return to the free map only when the slot is neither indexed nor held.
struct HostSlot {
  ChunkKey key;
  uint32_t first_page = 0;
  uint32_t n_pages = 0;
  size_t bytes = 0;
  int holds = 0;
  bool indexed = false;
  bool ready = false;  // bytes fully copied in; visible to Contains/Get/eviction
  Clock::time_point pinned_until = Clock::time_point::min();
};

struct HostTier::Core {
  HostTierOptions opt;
  size_t n_pages = 0;
  std::unique_ptr<uint8_t[]> pool;

  mutable std::mutex mu;
  std::vector<HostSlot> slots;           // never resized: holds refer to slots by index
  std::vector<uint32_t> free_slots;
  std::map<uint32_t, uint32_t> free_extents;  // first page -> page count, coalesced
  std::unordered_map<ChunkKey, uint32_t, ChunkKeyHash> index;
  std::unique_ptr<EvictionPolicy> policy;
  std::shared_ptr<const EvictionListener> listener;
  TierStats st;

  uint8_t* Page(uint32_t p) { return pool.get() + static_cast<size_t>(p) * opt.page_bytes; }

  // REQUIRES: mu held.
  std::optional<uint32_t> AllocRun(uint32_t n) {
    for (auto it = free_extents.begin(); it != free_extents.end(); ++it) {
      if (it->second < n) continue;
      const uint32_t first = it->first, len = it->second;
      free_extents.erase(it);
      if (len > n) free_extents.emplace(first + n, len - n);
      return first;
    }
    return std::nullopt;
  }

  // REQUIRES: mu held.
  bool HasRun(uint32_t n) const {
    for (const auto& [first, len] : free_extents) {
      if (len >= n) return true;
    }
    return false;
  }

  // REQUIRES: mu held.
  void FreeRun(uint32_t first, uint32_t n) {
    auto next = free_extents.lower_bound(first);
    if (next != free_extents.end() && next->first == first + n) {
      n += next->second;
      next = free_extents.erase(next);
    }
    if (next != free_extents.begin()) {
      auto prev = std::prev(next);
      if (prev->first + prev->second == first) {
        prev->second += n;
        return;
      }
    }
    free_extents.emplace(first, n);
  }

  // REQUIRES: mu held.
  void MaybeFree(uint32_t s) {
    HostSlot& slot = slots[s];
    if (slot.indexed || slot.holds > 0) return;
    FreeRun(slot.first_page, slot.n_pages);
    slot = HostSlot{};
    free_slots.push_back(s);
  }

  // Drops a key from the index and policy; its pages go once unheld.
  // REQUIRES: mu held.
  void Detach(uint32_t s) {
    HostSlot& slot = slots[s];
    if (!slot.indexed) return;
    slot.indexed = false;
    index.erase(slot.key);
    if (slot.ready) {
      policy->Erase(slot.key);
      st.used_bytes -= slot.bytes;
    }
    MaybeFree(s);
  }

  void Release(uint32_t s) {
    std::lock_guard<std::mutex> lock(mu);
    --slots[s].holds;
    MaybeFree(s);
  }

  // REQUIRES: mu held.
  bool Unevictable(const HostSlot& slot, Clock::time_point now) const {
    return slot.holds > 0 || !slot.ready || slot.pinned_until > now;
  }
};

namespace {

// The keepalive of a blob viewing a slot: releases the hold when the last
// copy of the blob goes.
struct SlotHold {
  SlotHold(std::shared_ptr<HostTier::Core> c, uint32_t s) : core(std::move(c)), slot(s) {}
  SlotHold(const SlotHold&) = delete;
  SlotHold& operator=(const SlotHold&) = delete;
  ~SlotHold() { core->Release(slot); }
  std::shared_ptr<HostTier::Core> core;
  uint32_t slot;
};

// REQUIRES: core->mu held; takes a hold on `s`.
ChunkBlob HoldBlob(const std::shared_ptr<HostTier::Core>& core, uint32_t s) {
  HostSlot& slot = core->slots[s];
  ++slot.holds;
  return ChunkBlob::View(std::span<const uint8_t>(core->Page(slot.first_page), slot.bytes),
                         std::make_shared<SlotHold>(core, s));
}

}  // namespace

Expected<std::unique_ptr<HostTier>> HostTier::Create(const HostTierOptions& options) {
  if (options.page_bytes == 0) return Status::InvalidArgument("host tier page size must be positive");
  const size_t n_pages = options.capacity_bytes / options.page_bytes;
  if (n_pages == 0) {
    return Status::InvalidArgument("host tier capacity " + std::to_string(options.capacity_bytes) +
                                   " bytes is less than one page of " + std::to_string(options.page_bytes));
  }
  if (n_pages > UINT32_MAX) return Status::InvalidArgument("host tier has too many pages; use larger pages");
  STRATA_ASSIGN_OR_RETURN(std::unique_ptr<EvictionPolicy> policy, MakeEvictionPolicy(options.policy));
  auto core = std::make_shared<Core>();
  core->opt = options;
  core->n_pages = n_pages;
  // One allocation for the whole budget, up front; nothing later allocates
  // payload memory. The OS commits pages as they are first written.
  core->pool.reset(new (std::nothrow) uint8_t[n_pages * options.page_bytes]);
  if (!core->pool) {
    return Status::ResourceExhausted("cannot allocate a host tier pool of " +
                                     std::to_string(n_pages * options.page_bytes) + " bytes");
  }
  // Every chunk takes at least one page, so n_pages slots always suffice.
  core->slots.resize(n_pages);
  core->free_slots.reserve(n_pages);
  for (size_t i = n_pages; i-- > 0;) core->free_slots.push_back(static_cast<uint32_t>(i));
  core->free_extents.emplace(0, static_cast<uint32_t>(n_pages));
  core->index.reserve(std::min<size_t>(n_pages, 1 << 16));
  core->policy = std::move(policy);
  core->st.capacity_bytes = n_pages * options.page_bytes;
  return std::unique_ptr<HostTier>(new HostTier(std::move(core)));
}

HostTier::HostTier(std::shared_ptr<Core> core) : core_(std::move(core)) {}

HostTier::~HostTier() {
  // Live blobs keep the pool; they must not call back into a listener that
  // belongs to whoever owned this tier.
  std::lock_guard<std::mutex> lock(core_->mu);
  core_->listener.reset();
}

std::string_view HostTier::name() const { return core_->opt.name; }

bool HostTier::Contains(const ChunkKey& key) {
  std::lock_guard<std::mutex> lock(core_->mu);
  auto it = core_->index.find(key);
  return it != core_->index.end() && core_->slots[it->second].ready;
}

size_t HostTier::CountPrefix(std::span<const ChunkKey> keys) {
  std::lock_guard<std::mutex> lock(core_->mu);
  size_t n = 0;
  for (; n < keys.size(); ++n) {
    auto it = core_->index.find(keys[n]);
    if (it == core_->index.end() || !core_->slots[it->second].ready) break;
  }
  return n;
}

std::future<Expected<ChunkBlob>> HostTier::Get(const ChunkKey& key) { return Ready(Read(key, std::nullopt)); }

std::future<Expected<ChunkBlob>> HostTier::GetRange(const ChunkKey& key, ByteRange range) {
  return Ready(Read(key, range));
}

Expected<ChunkBlob> HostTier::Read(const ChunkKey& key, std::optional<ByteRange> range) {
  const auto t0 = Clock::now();
  std::lock_guard<std::mutex> lock(core_->mu);
  auto it = core_->index.find(key);
  if (it == core_->index.end() || !core_->slots[it->second].ready) {
    ++core_->st.misses;
    return Status::NotFound("chunk " + key.Hex() + " is not in the " + core_->opt.name + " tier");
  }
  const uint32_t s = it->second;
  ChunkBlob blob = HoldBlob(core_, s);
  if (range) {
    Expected<ChunkBlob> part = SliceBlob(blob, *range, key);
    if (!part.ok()) {
      ++core_->st.get_failures;
      return part;
    }
    blob = std::move(*part);
  }
  // A chunk read range by range counts once, and is touched once.
  if (!range || range->offset == 0) {
    core_->policy->Touch(key);
    ++core_->st.hits;
  }
  core_->st.bytes_read += blob.size();
  core_->st.get_seconds += SecondsSince(t0);
  return blob;
}

std::future<Status> HostTier::Put(const ChunkKey& key, ChunkBlob blob) { return Ready(PutNow(key, blob)); }

Status HostTier::PutNow(const ChunkKey& key, const ChunkBlob& blob) {
  const auto t0 = Clock::now();
  Core& c = *core_;
  const size_t page = c.opt.page_bytes;
  const size_t need64 = std::max<size_t>(1, (blob.size() + page - 1) / page);
  std::unique_lock<std::mutex> lock(c.mu);
  if (c.index.count(key) != 0) return Status::Ok();  // kept; a concurrent Put of the same key wins
  if (need64 > c.n_pages) {
    ++c.st.put_failures;
    return Status::ResourceExhausted("chunk of " + std::to_string(blob.size()) + " bytes exceeds the " +
                                     c.opt.name + " tier's capacity of " + std::to_string(c.st.capacity_bytes));
  }
  const uint32_t need = static_cast<uint32_t>(need64);
  std::optional<uint32_t> run;
  // Evict until a long enough run of free pages exists. Evicted chunks go to
  // the listener with the lock released; their pages return when the
  // listener drops the view, so each round re-checks for a run.
  for (;;) {
    run = c.AllocRun(need);
    if (run) break;
    std::vector<std::pair<ChunkKey, ChunkBlob>> evicted;
    auto listener = c.listener;
    const auto now = Clock::now();
    bool freed_any = false;
    for (;;) {
      auto victim = c.policy->Victim([&](const ChunkKey& k) {
        auto it = c.index.find(k);
        return it == c.index.end() || c.Unevictable(c.slots[it->second], now);
      });
      if (!victim) break;
      const uint32_t s = c.index.at(*victim);
      ++c.st.evictions;
      freed_any = true;
      if (listener) evicted.emplace_back(*victim, HoldBlob(core_, s));
      c.Detach(s);
      if (!listener && c.HasRun(need)) break;
      if (listener) {
        // Stop once the held pages plus the free ones could make a run;
        // fragmentation may need another round.
        size_t pending = 0;
        for (const auto& [k, b] : evicted) pending += (b.size() + page - 1) / page;
        size_t free_now = 0;
        for (const auto& [first, len] : c.free_extents) free_now += len;
        if (pending + free_now >= need) break;
      }
    }
    if (!freed_any) {
      ++c.st.put_failures;
      return Status::ResourceExhausted("the " + c.opt.name + " tier cannot make room for " +
                                       std::to_string(blob.size()) + " bytes: every chunk is pinned or in use");
    }
    if (!evicted.empty()) {
      lock.unlock();
      for (auto& [k, b] : evicted) (*listener)(k, std::move(b));
      evicted.clear();  // drops the views: their pages return
      lock.lock();
      if (c.index.count(key) != 0) return Status::Ok();
    }
  }
  // Reserve the slot, then copy with the lock released (a chunk is
  // megabytes); the hold keeps a concurrent Remove/Clear from freeing the
  // pages under the copy.
  const uint32_t s = c.free_slots.back();
  c.free_slots.pop_back();
  HostSlot& slot = c.slots[s];
  slot = HostSlot{};
  slot.key = key;
  slot.first_page = *run;
  slot.n_pages = need;
  slot.bytes = blob.size();
  slot.holds = 1;
  slot.indexed = true;
  c.index.emplace(key, s);
  uint8_t* dst = c.Page(*run);
  lock.unlock();
  if (!blob.empty()) std::memcpy(dst, blob.bytes().data(), blob.size());
  lock.lock();
  if (slot.indexed) {
    slot.ready = true;
    c.policy->Insert(key, slot.bytes);
    c.st.used_bytes += slot.bytes;
  }
  --slot.holds;
  c.MaybeFree(s);
  ++c.st.puts;
  c.st.bytes_written += blob.size();
  c.st.put_seconds += SecondsSince(t0);
  return Status::Ok();
}

Status HostTier::Remove(const ChunkKey& key) {
  std::lock_guard<std::mutex> lock(core_->mu);
  auto it = core_->index.find(key);
  if (it == core_->index.end()) return Status::NotFound("chunk " + key.Hex() + " is not in the " + core_->opt.name + " tier");
  core_->Detach(it->second);
  return Status::Ok();
}

Status HostTier::Clear() {
  std::lock_guard<std::mutex> lock(core_->mu);
  std::vector<uint32_t> all;
  all.reserve(core_->index.size());
  for (const auto& [k, s] : core_->index) all.push_back(s);
  for (uint32_t s : all) core_->Detach(s);
  return Status::Ok();
}

Status HostTier::Pin(const ChunkKey& key, std::chrono::milliseconds ttl) {
  std::lock_guard<std::mutex> lock(core_->mu);
  auto it = core_->index.find(key);
  if (it == core_->index.end() || !core_->slots[it->second].ready) {
    return Status::NotFound("chunk " + key.Hex() + " is not in the " + core_->opt.name + " tier");
  }
  HostSlot& slot = core_->slots[it->second];
  slot.pinned_until = std::max(slot.pinned_until, Clock::now() + ttl);
  return Status::Ok();
}

Status HostTier::Unpin(const ChunkKey& key) {
  std::lock_guard<std::mutex> lock(core_->mu);
  auto it = core_->index.find(key);
  if (it == core_->index.end()) return Status::NotFound("chunk " + key.Hex() + " is not in the " + core_->opt.name + " tier");
  core_->slots[it->second].pinned_until = Clock::time_point::min();
  return Status::Ok();
}

void HostTier::SetEvictionListener(EvictionListener listener) {
  std::lock_guard<std::mutex> lock(core_->mu);
  core_->listener = listener ? std::make_shared<const EvictionListener>(std::move(listener)) : nullptr;
}

Status HostTier::Health() { return Status::Ok(); }

TierStats HostTier::stats() const {
  std::lock_guard<std::mutex> lock(core_->mu);
  TierStats s = core_->st;
  s.chunks = 0;
  s.pinned = 0;
  const auto now = Clock::now();
  for (const auto& [k, i] : core_->index) {
    const HostSlot& slot = core_->slots[i];
    if (!slot.ready) continue;
    ++s.chunks;
    if (slot.pinned_until > now) ++s.pinned;
  }
  return s;
}

}  // namespace strata
