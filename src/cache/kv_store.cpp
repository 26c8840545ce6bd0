#include "cache/kv_store.h"

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <unordered_set>

#include "cache/io_executor.h"

namespace strata {

namespace {

// Counters the store keeps per tier (the tier keeps its own TierStats).
struct TierCounters {
  std::atomic<uint64_t> promotions_in{0};
  std::atomic<uint64_t> demotions_in{0};
  std::atomic<uint64_t> corrupt{0};
};

}  // namespace

// Background work runs on a small queue of the store's own threads (the base
// ThreadPool is a fork-join pool for kernels, not a task queue). Fetches go
// ahead of writes: a request is waiting on them.
//
// Locking: `mu` guards the queues and the list of outstanding tier writes;
// it is never held while calling into a tier, so tier locks and the store's
// never nest, and eviction listeners (called by tiers without their locks)
// may enter the store freely.
struct KvStore::Impl {
  std::vector<StoreTier> tiers;
  KvStoreOptions options;
  std::unique_ptr<TierCounters[]> counters;

  std::mutex mu;
  std::condition_variable work_cv;   // workers: work arrived or stopping
  std::condition_variable idle_cv;   // Flush: a task finished
  std::deque<std::function<void()>> fetch_queue;
  std::deque<std::function<void()>> write_queue;
  int running = 0;
  bool stopping = false;
  std::vector<std::future<Status>> outstanding;  // tier writes not yet waited on
  std::vector<std::thread> workers;

  std::atomic<uint64_t> lookups{0}, lookup_chunks{0}, hit_chunks{0};
  std::atomic<uint64_t> stores{0}, store_failures{0}, fallbacks{0};

  void Submit(std::function<void()> task, bool fetch) {
    {
      std::lock_guard<std::mutex> lock(mu);
      (fetch ? fetch_queue : write_queue).push_back(std::move(task));
    }
    work_cv.notify_one();
  }

  void WorkerLoop() {
    std::unique_lock<std::mutex> lock(mu);
    for (;;) {
      work_cv.wait(lock, [&] { return stopping || !fetch_queue.empty() || !write_queue.empty(); });
      if (fetch_queue.empty() && write_queue.empty()) return;  // stopping and drained
      auto& q = fetch_queue.empty() ? write_queue : fetch_queue;
      std::function<void()> task = std::move(q.front());
      q.pop_front();
      ++running;
      lock.unlock();
      task();
      task = nullptr;  // destroy captures (blobs) outside the lock
      lock.lock();
      --running;
      idle_cv.notify_all();
    }
  }

  // Remembers a tier write for Flush, and counts its failure when it lands.
  void Track(std::future<Status> f) {
    std::lock_guard<std::mutex> lock(mu);
    // Drop writes that finished so the list stays short without a Flush.
    std::erase_if(outstanding, [&](std::future<Status>& o) {
      if (o.wait_for(std::chrono::seconds(0)) != std::future_status::ready) return false;
      if (!o.get().ok()) store_failures.fetch_add(1, std::memory_order_relaxed);
      return true;
    });
    outstanding.push_back(std::move(f));
  }

  // Writes `blob` (verified against `meta`) into tier t in t's encoding.
  Status PutInto(int t, const ChunkKey& key, const ChunkMeta& meta, const ChunkBlob& blob, bool wait) {
    Expected<ChunkBlob> enc = TranscodeChunk(blob, meta, tiers[t].encoding);
    if (!enc.ok()) return enc.take_status();
    std::future<Status> f = tiers[t].tier->Put(key, std::move(*enc));
    if (wait) return f.get();
    Track(std::move(f));
    return Status::Ok();
  }

  // A chunk tier t evicted: demote it into tier t+1 unless that tier holds
  // it. Runs on the evicting thread with no tier lock held; `blob` may be a
  // view into t's memory, valid only during this call, so it is transcoded
  // (or copied) before returning.
  void Demote(int t, const ChunkKey& key, const ChunkBlob& blob) {
    const int lower = t + 1;
    if (lower >= static_cast<int>(tiers.size())) return;
    Tier& dst = *tiers[lower].tier;
    if (dst.Contains(key)) return;
    Expected<ChunkMeta> meta = PeekChunkMeta(blob.bytes());
    if (!meta.ok() || !(meta->key == key)) {
      // A chunk that no longer reads back is not worth keeping anywhere.
      counters[t].corrupt.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    Expected<ChunkBlob> enc = TranscodeChunk(blob, *meta, tiers[lower].encoding);
    if (!enc.ok()) {
      counters[t].corrupt.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    // A same-encoding transcode returns the input itself: copy it out of
    // the upper tier's memory, which is about to be reused.
    ChunkBlob owned = enc->bytes().data() == blob.bytes().data() ? ChunkBlob::Copy(blob.bytes()) : std::move(*enc);
    counters[lower].demotions_in.fetch_add(1, std::memory_order_relaxed);
    Track(dst.Put(key, std::move(owned)));
  }

  int IndexOf(std::string_view name) const {
    for (size_t i = 0; i < tiers.size(); ++i) {
      if (tiers[i].tier->name() == name) return static_cast<int>(i);
    }
    return -1;
  }

  // The tiers a control call names: all for "", else the one named.
  Expected<std::vector<int>> Select(std::string_view name) const {
    std::vector<int> out;
    if (name.empty()) {
      for (size_t i = 0; i < tiers.size(); ++i) out.push_back(static_cast<int>(i));
      return out;
    }
    const int i = IndexOf(name);
    if (i < 0) return Status::NotFound("no cache tier named '" + std::string(name) + "'");
    out.push_back(i);
    return out;
  }

  void WaitIdle() {
    for (;;) {
      std::vector<std::future<Status>> pending;
      {
        std::unique_lock<std::mutex> lock(mu);
        idle_cv.wait(lock, [&] { return fetch_queue.empty() && write_queue.empty() && running == 0; });
        if (outstanding.empty()) return;
        pending.swap(outstanding);
      }
      // A tier's write may evict and demote, which queues more writes: loop
      // until a round finds nothing new.
      for (auto& f : pending) {
        if (!f.get().ok()) store_failures.fetch_add(1, std::memory_order_relaxed);
      }
    }
  }
};

Expected<std::unique_ptr<KvStore>> KvStore::Create(std::vector<StoreTier> tiers, const KvStoreOptions& options) {
  if (tiers.empty()) return Status::InvalidArgument("a KV store needs at least one tier");
  std::unordered_set<std::string> names;
  for (const StoreTier& t : tiers) {
    if (!t.tier) return Status::InvalidArgument("a KV store tier is null");
    if (!names.insert(std::string(t.tier->name())).second) {
      return Status::InvalidArgument("two KV store tiers are named '" + std::string(t.tier->name()) + "'");
    }
  }
  if (options.background_threads < 1) return Status::InvalidArgument("a KV store needs at least one background thread");
  auto impl = std::make_unique<Impl>();
  impl->tiers = std::move(tiers);
  impl->options = options;
  impl->counters = std::make_unique<TierCounters[]>(impl->tiers.size());
  Impl* raw = impl.get();
  for (size_t i = 0; i < raw->tiers.size(); ++i) {
    const int t = static_cast<int>(i);
    raw->tiers[i].tier->SetEvictionListener([raw, t](const ChunkKey& key, ChunkBlob blob) { raw->Demote(t, key, blob); });
  }
  for (int i = 0; i < options.background_threads; ++i) raw->workers.emplace_back([raw] { raw->WorkerLoop(); });
  return std::unique_ptr<KvStore>(new KvStore(std::move(impl)));
}

KvStore::KvStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

KvStore::~KvStore() {
  impl_->WaitIdle();
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->stopping = true;
  }
  impl_->work_cv.notify_all();
  for (std::thread& w : impl_->workers) w.join();
  // Tiers may outlive their listeners' targets only if they still call
  // them; detach first, then let the tiers go with impl_.
  for (StoreTier& t : impl_->tiers) t.tier->SetEvictionListener(nullptr);
  impl_->WaitIdle();
}

StoreLookup KvStore::Lookup(std::span<const ChunkKey> keys) {
  Impl& m = *impl_;
  StoreLookup out;
  out.per_tier.resize(m.tiers.size());
  for (size_t t = 0; t < m.tiers.size(); ++t) out.per_tier[t] = m.tiers[t].tier->CountPrefix(keys);
  for (size_t i = 0; i < keys.size(); ++i) {
    int found = -1;
    for (size_t t = 0; t < m.tiers.size() && found < 0; ++t) {
      if (out.per_tier[t] > i) found = static_cast<int>(t);
    }
    // Past every tier's leading run a chunk may still sit in some tier
    // (say host holds 0..3 and disk 4..7): ask each, cheapest first.
    for (size_t t = 0; t < m.tiers.size() && found < 0; ++t) {
      if (m.tiers[t].tier->Contains(keys[i])) found = static_cast<int>(t);
    }
    if (found < 0) break;
    out.tier_of_chunk.push_back(found);
  }
  out.chunks = out.tier_of_chunk.size();
  m.lookups.fetch_add(1, std::memory_order_relaxed);
  m.lookup_chunks.fetch_add(keys.size(), std::memory_order_relaxed);
  m.hit_chunks.fetch_add(out.chunks, std::memory_order_relaxed);
  return out;
}

std::future<Expected<ChunkBlob>> KvStore::Fetch(const ChunkKey& key, const ChunkMeta& expect, int from_tier,
                                                int* tier_index) {
  auto promise = std::make_shared<std::promise<Expected<ChunkBlob>>>();
  std::future<Expected<ChunkBlob>> result = promise->get_future();
  Impl* m = impl_.get();
  const int n = static_cast<int>(m->tiers.size());
  if (from_tier < 0 || from_tier >= n) {
    promise->set_value(Status::InvalidArgument("tier " + std::to_string(from_tier) + " out of range"));
    return result;
  }
  m->Submit(
      [m, n, key, expect, from_tier, tier_index, promise] {
        Status last = Status::NotFound("chunk " + key.Hex() + " is in no cache tier");
        for (int t = from_tier; t < n; ++t) {
          Expected<ChunkBlob> got = m->tiers[t].tier->Get(key).get();
          if (!got.ok()) {
            // Absent here, or the tier failed (counted by the tier): try
            // the next one down.
            if (got.status().code() != StatusCode::kNotFound) last = got.status();
            continue;
          }
          // Promote into every tier above. Transcoding verifies the header
          // and tokens against `expect`; a chunk that fails is dropped from
          // this tier (counted) and the next tier is tried.
          bool bad = false;
          for (int u = t - 1; u >= 0; --u) {
            if (m->tiers[u].tier->Contains(key)) continue;
            const Status st = m->PutInto(u, key, expect, *got, /*wait=*/false);
            if (st.code() == StatusCode::kCorrupt) {
              bad = true;
              break;
            }
            if (st.ok()) m->counters[u].promotions_in.fetch_add(1, std::memory_order_relaxed);
          }
          if (bad) {
            m->counters[t].corrupt.fetch_add(1, std::memory_order_relaxed);
            (void)m->tiers[t].tier->Remove(key);
            last = Status::Corrupt("chunk " + key.Hex() + " in tier " + std::string(m->tiers[t].tier->name()) +
                                   " failed verification");
            continue;
          }
          if (tier_index != nullptr) *tier_index = t;
          promise->set_value(std::move(got));
          return;
        }
        promise->set_value(std::move(last));
      },
      /*fetch=*/true);
  return result;
}

std::future<Expected<ChunkBlob>> KvStore::FetchRange(const ChunkKey& key, int tier, ByteRange range) {
  Impl* m = impl_.get();
  if (tier < 0 || tier >= static_cast<int>(m->tiers.size())) {
    return ReadyFuture<Expected<ChunkBlob>>(Status::InvalidArgument("tier " + std::to_string(tier) + " out of range"));
  }
  return m->tiers[static_cast<size_t>(tier)].tier->GetRange(key, range);
}

void KvStore::Promote(const ChunkKey& key, const ChunkMeta& expect, int from_tier) {
  Impl* m = impl_.get();
  if (from_tier <= 0 || from_tier >= static_cast<int>(m->tiers.size())) return;
  m->Submit(
      [m, key, expect, from_tier] {
        bool needed = false;
        for (int u = 0; u < from_tier && !needed; ++u) needed = !m->tiers[u].tier->Contains(key);
        if (!needed) return;
        // The whole chunk, read again (the loader had it in layer-sized
        // pieces); a second read of the same bytes is cheap next to the
        // recompute the promotion saves later.
        Expected<ChunkBlob> got = m->tiers[from_tier].tier->Get(key).get();
        if (!got.ok()) return;
        for (int u = from_tier - 1; u >= 0; --u) {
          if (m->tiers[u].tier->Contains(key)) continue;
          if (m->PutInto(u, key, expect, *got, /*wait=*/false).ok()) {
            m->counters[u].promotions_in.fetch_add(1, std::memory_order_relaxed);
          }
        }
      },
      /*fetch=*/false);
}

void KvStore::Store(const ChunkKey& key, const ChunkMeta& meta, ChunkBlob blob) {
  Impl* m = impl_.get();
  m->stores.fetch_add(1, std::memory_order_relaxed);
  m->Submit(
      [m, key, meta, blob = std::move(blob)] {
        for (size_t t = 0; t < m->tiers.size(); ++t) {
          if (t != 0 && !m->tiers[t].write_through) continue;
          const Status st = m->PutInto(static_cast<int>(t), key, meta, blob, /*wait=*/t == 0);
          if (!st.ok()) m->store_failures.fetch_add(1, std::memory_order_relaxed);
        }
      },
      /*fetch=*/false);
}

void KvStore::Flush() { impl_->WaitIdle(); }

void KvStore::ReportCorrupt(const ChunkKey& key, int tier_index) {
  Impl& m = *impl_;
  if (tier_index < 0 || tier_index >= static_cast<int>(m.tiers.size())) return;
  m.counters[tier_index].corrupt.fetch_add(1, std::memory_order_relaxed);
  (void)m.tiers[tier_index].tier->Remove(key);
}

void KvStore::ReportFallback() { impl_->fallbacks.fetch_add(1, std::memory_order_relaxed); }

Status KvStore::Pin(const ChunkKey& key, std::chrono::milliseconds ttl, std::string_view tier) {
  STRATA_ASSIGN_OR_RETURN(const std::vector<int> sel, impl_->Select(tier));
  if (ttl.count() <= 0) ttl = impl_->options.default_pin_ttl;
  bool any = false;
  for (int t : sel) {
    const Status st = impl_->tiers[t].tier->Pin(key, ttl);
    if (st.ok()) {
      any = true;
    } else if (st.code() != StatusCode::kNotFound) {
      return st;
    }
  }
  if (!any) return Status::NotFound("chunk " + key.Hex() + " is not in " + (tier.empty() ? "any tier" : std::string(tier)));
  return Status::Ok();
}

Status KvStore::Unpin(const ChunkKey& key, std::string_view tier) {
  STRATA_ASSIGN_OR_RETURN(const std::vector<int> sel, impl_->Select(tier));
  bool any = false;
  for (int t : sel) {
    const Status st = impl_->tiers[t].tier->Unpin(key);
    if (st.ok()) {
      any = true;
    } else if (st.code() != StatusCode::kNotFound) {
      return st;
    }
  }
  if (!any) return Status::NotFound("chunk " + key.Hex() + " is not in " + (tier.empty() ? "any tier" : std::string(tier)));
  return Status::Ok();
}

Status KvStore::Clear(std::string_view tier) {
  STRATA_ASSIGN_OR_RETURN(const std::vector<int> sel, impl_->Select(tier));
  // Writes already queued would refill what we clear; let them land first.
  impl_->WaitIdle();
  for (int t : sel) STRATA_RETURN_IF_ERROR(impl_->tiers[t].tier->Clear());
  return Status::Ok();
}

Status KvStore::Move(const ChunkKey& key, const ChunkMeta& expect, std::string_view from, std::string_view to,
                     bool remove_source) {
  Impl& m = *impl_;
  const int src = m.IndexOf(from), dst = m.IndexOf(to);
  if (src < 0) return Status::NotFound("no cache tier named '" + std::string(from) + "'");
  if (dst < 0) return Status::NotFound("no cache tier named '" + std::string(to) + "'");
  if (src == dst) return Status::InvalidArgument("cannot move a chunk from tier '" + std::string(from) + "' to itself");
  Expected<ChunkBlob> got = m.tiers[src].tier->Get(key).get();
  if (!got.ok()) return got.take_status();
  const Status put = m.PutInto(dst, key, expect, *got, /*wait=*/true);
  if (put.code() == StatusCode::kCorrupt) {
    m.counters[src].corrupt.fetch_add(1, std::memory_order_relaxed);
    (void)m.tiers[src].tier->Remove(key);
  }
  STRATA_RETURN_IF_ERROR(put);
  if (remove_source) STRATA_RETURN_IF_ERROR(m.tiers[src].tier->Remove(key));
  return Status::Ok();
}

int KvStore::n_tiers() const { return static_cast<int>(impl_->tiers.size()); }

std::string_view KvStore::tier_name(int i) const { return impl_->tiers.at(static_cast<size_t>(i)).tier->name(); }

const ChunkEncoding& KvStore::tier_encoding(int i) const { return impl_->tiers.at(static_cast<size_t>(i)).encoding; }

int KvStore::tier_index(std::string_view name) const { return impl_->IndexOf(name); }

KvStoreStats KvStore::stats() const {
  const Impl& m = *impl_;
  KvStoreStats s;
  for (size_t i = 0; i < m.tiers.size(); ++i) {
    KvStoreTierStats t;
    t.name = std::string(m.tiers[i].tier->name());
    t.encoding = m.tiers[i].encoding;
    t.tier = m.tiers[i].tier->stats();
    t.promotions_in = m.counters[i].promotions_in.load(std::memory_order_relaxed);
    t.demotions_in = m.counters[i].demotions_in.load(std::memory_order_relaxed);
    t.corrupt = m.counters[i].corrupt.load(std::memory_order_relaxed);
    s.tiers.push_back(std::move(t));
  }
  s.lookups = m.lookups.load(std::memory_order_relaxed);
  s.lookup_chunks = m.lookup_chunks.load(std::memory_order_relaxed);
  s.hit_chunks = m.hit_chunks.load(std::memory_order_relaxed);
  s.stores = m.stores.load(std::memory_order_relaxed);
  s.store_failures = m.store_failures.load(std::memory_order_relaxed);
  s.fallbacks = m.fallbacks.load(std::memory_order_relaxed);
  return s;
}

std::vector<std::pair<std::string, Status>> KvStore::Health() {
  std::vector<std::pair<std::string, Status>> out;
  for (StoreTier& t : impl_->tiers) out.emplace_back(std::string(t.tier->name()), t.tier->Health());
  return out;
}

}  // namespace strata
