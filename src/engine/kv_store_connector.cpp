#include "engine/kv_store_connector.h"

#include <algorithm>
#include <cstring>

namespace strata {

namespace {

using Clock = std::chrono::steady_clock;

void AddTierTokens(std::vector<StoreTierTokens>* v, std::string_view tier, int64_t tokens) {
  for (StoreTierTokens& t : *v) {
    if (t.tier == tier) {
      t.tokens += tokens;
      return;
    }
  }
  v->push_back(StoreTierTokens{std::string(tier), tokens});
}

}  // namespace

// The forward pass's view of the step's placements: layer l's attention
// waits until layer l's rows of every loading sequence are in KV memory.
class KvStoreConnector::LayerHooks final : public ForwardHooks {
 public:
  explicit LayerHooks(KvStoreConnector& c) : c_(c) {}
  Status BeforeAttention(int layer) override {
    std::unique_lock<std::mutex> lock(c_.copy_mu_);
    if (c_.copy_layers_done_ > layer) return Status::Ok();
    const auto t0 = Clock::now();
    c_.copy_cv_.wait(lock, [&] { return c_.copy_layers_done_ > layer || c_.copy_stop_; });
    wait_seconds_ += std::chrono::duration<double>(Clock::now() - t0).count();
    if (c_.copy_layers_done_ <= layer) return Status::Internal("the layer loader stopped mid-step");
    return Status::Ok();
  }
  double TakeWaitSeconds() {
    const double w = wait_seconds_;
    wait_seconds_ = 0;
    return w;
  }

 private:
  KvStoreConnector& c_;
  double wait_seconds_ = 0;  // engine thread only
};

KvStoreConnector::KvStoreConnector(const Model& model, KvStore& store, const KvStoreConnectorOptions& options)
    : model_(model), store_(store), options_(options), n_layers_(model.config().n_layers),
      kv_dim_(model.config().kv_dim()) {}

Expected<std::unique_ptr<KvStoreConnector>> KvStoreConnector::Create(const Model& model, KvStore& store,
                                                                     const KvStoreConnectorOptions& options) {
  if (options.chunk_tokens < 1 || options.chunk_tokens > (1 << 20)) {
    return Status::InvalidArgument("chunk size must be in 1..1048576 tokens, got " + std::to_string(options.chunk_tokens));
  }
  if (options.fetch_threads < 1 || options.fetch_threads > 64) {
    return Status::InvalidArgument("fetch thread count must be in 1..64");
  }
  if (options.fetch_timeout.count() <= 0) return Status::InvalidArgument("fetch timeout must be positive");
  std::unique_ptr<KvStoreConnector> c(new KvStoreConnector(model, store, options));
  (void)model.fingerprint();  // computed once here, not on the first request
  c->hooks_ = std::make_unique<LayerHooks>(*c);
  for (int i = 0; i < options.fetch_threads; ++i) c->fetch_threads_.emplace_back([p = c.get()] { p->FetchLoop(); });
  c->copy_thread_ = std::thread([p = c.get()] { p->CopyLoop(); });
  return c;
}

KvStoreConnector::~KvStoreConnector() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  work_cv_.notify_all();
  for (std::thread& t : fetch_threads_) t.join();
  {
    std::lock_guard<std::mutex> lock(copy_mu_);
    copy_stop_ = true;
  }
  copy_cv_.notify_all();
  copy_thread_.join();
  ReapStragglers(/*block=*/true);
  // Loads never started: mark them ready so nobody waits on them.
  for (auto& load : queue_) load->ready_.store(true, std::memory_order_release);
}

ChunkKeyContext KvStoreConnector::KeyContext(const std::string& cache_salt) const {
  ChunkKeyContext ctx;
  ctx.model_fingerprint = model_.fingerprint();
  ctx.kv_format = kKvFormat;
  ctx.cache_salt = cache_salt;
  ctx.chunk_tokens = options_.chunk_tokens;
  return ctx;
}

std::vector<ChunkKey> KvStoreConnector::KeysFor(std::span<const TokenId> tokens, const std::string& cache_salt) const {
  return ComputeChunkKeys(tokens, KeyContext(cache_salt));
}

ChunkMeta KvStoreConnector::MetaFor(const ChunkKey& key, std::span<const TokenId> tokens, size_t index) const {
  const ModelConfig& c = model_.config();
  const size_t C = static_cast<size_t>(options_.chunk_tokens);
  ChunkMeta m;
  m.key = key;
  m.model_fingerprint = model_.fingerprint();
  m.kv_format = kKvFormat;
  m.n_layers = c.n_layers;
  m.n_kv_heads = c.n_kv_heads;
  m.head_dim = c.head_dim;
  m.first_position = static_cast<int64_t>(index * C);
  m.tokens.assign(tokens.begin() + static_cast<ptrdiff_t>(index * C),
                  tokens.begin() + static_cast<ptrdiff_t>((index + 1) * C));
  return m;
}

StorePrefixLookup KvStoreConnector::LookupPrefix(std::span<const TokenId> tokens, const std::string& cache_salt) {
  const int64_t C = options_.chunk_tokens;
  StorePrefixLookup r;
  const size_t n_full = tokens.size() / static_cast<size_t>(C);
  r.chunk_tokens = static_cast<int64_t>(n_full) * C;
  const auto keys = KeysFor(tokens.first(n_full * static_cast<size_t>(C)), cache_salt);
  const StoreLookup look = store_.Lookup(keys);
  r.tokens = static_cast<int64_t>(look.chunks) * C;
  for (int t = 0; t < store_.n_tiers(); ++t) {
    const size_t n = static_cast<size_t>(t) < look.per_tier.size() ? look.per_tier[static_cast<size_t>(t)] : 0;
    r.per_tier.push_back(StoreTierTokens{std::string(store_.tier_name(t)), static_cast<int64_t>(n) * C});
  }
  return r;
}

KvStoreConnector::LoadPlan KvStoreConnector::PlanLoad(std::span<const TokenId> tokens, const std::string& cache_salt,
                                                      int64_t have) {
  LoadPlan plan;
  const size_t C = static_cast<size_t>(options_.chunk_tokens);
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++counters_.lookups;
  }
  const size_t n_full = tokens.size() / C;
  if (n_full == 0) return plan;
  // The last token is always computed (its logits pick the next token).
  const size_t loadable = tokens.empty() ? 0 : (tokens.size() - 1) / C;
  const auto keys = KeysFor(tokens.first(n_full * C), cache_salt);
  const StoreLookup look = store_.Lookup(keys);
  plan.stored_chunks = look.chunks;

  const size_t first = static_cast<size_t>(std::max<int64_t>(have, 0)) / C;
  size_t avail = std::min(look.chunks, loadable);
  std::vector<int> tier_of(avail);
  for (size_t i = 0; i < avail; ++i) tier_of[i] = i < look.tier_of_chunk.size() ? look.tier_of_chunk[i] : 0;
  if (look.chunks < first && first < loadable) {
    // The engine holds chunks the store lost; the store may still hold the
    // chunks after them (a key names its whole prefix, so this is sound).
    const StoreLookup rest = store_.Lookup(std::span<const ChunkKey>(keys).subspan(first, loadable - first));
    avail = first + rest.chunks;
    tier_of.assign(avail, 0);
    for (size_t i = 0; i < rest.chunks; ++i) tier_of[first + i] = i < rest.tier_of_chunk.size() ? rest.tier_of_chunk[i] : 0;
  }
  if (static_cast<int64_t>(avail * C) <= have) return plan;

  auto load = std::make_shared<StoreLoad>();
  load->begin_ = have;
  load->planned_end_ = static_cast<int64_t>(avail * C);
  load->end_ = have;
  load->first_chunk_ = static_cast<int>(first);
  load->started_ = Clock::now();
  load->chunks_.resize(avail - first);
  for (size_t i = first; i < avail; ++i) {
    StoreLoad::Chunk& ch = load->chunks_[i - first];
    ch.key = keys[i];
    ch.meta = MetaFor(keys[i], tokens, i);
    ch.from_tier = tier_of[i];
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++counters_.loads_started;
    counters_.planned_tokens += static_cast<uint64_t>(load->planned_end_ - have);
    ++pending_loads_;
    queue_.push_back(load);
  }
  work_cv_.notify_one();
  plan.load = std::move(load);
  return plan;
}

void KvStoreConnector::CancelLoad(const std::shared_ptr<StoreLoad>& load) {
  if (!load) return;
  load->cancelled_.store(true, std::memory_order_release);
  std::lock_guard<std::mutex> lock(mu_);
  ++counters_.loads_cancelled;
  // Not started yet: drop it from the queue.
  auto it = std::find(queue_.begin(), queue_.end(), load);
  if (it != queue_.end()) {
    queue_.erase(it);
    --pending_loads_;
    load->ready_.store(true, std::memory_order_release);
  }
}

void KvStoreConnector::FetchLoop() {
  for (;;) {
    std::shared_ptr<StoreLoad> load;
    {
      std::unique_lock<std::mutex> lock(mu_);
      work_cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (stop_) return;
      load = std::move(queue_.front());
      queue_.pop_front();
    }
    ReapStragglers(/*block=*/false);
    RunLoad(*load);
    bool straggles = false;
    for (const StoreLoad::Chunk& ch : load->chunks_) {
      if (ch.fetch.valid() && ch.fetch.wait_for(std::chrono::seconds(0)) != std::future_status::ready) straggles = true;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (straggles) stragglers_.push_back(load);
      --pending_loads_;
    }
    load->ready_.store(true, std::memory_order_release);
    ready_cv_.notify_all();
    std::lock_guard<std::mutex> lock(listener_mu_);
    if (ready_listener_) ready_listener_();
  }
}

void KvStoreConnector::RunLoad(StoreLoad& load) {
  const int64_t C = options_.chunk_tokens;
  const size_t n = load.chunks_.size();
  const auto deadline = Clock::now() + options_.fetch_timeout;
  for (StoreLoad::Chunk& ch : load.chunks_) ch.fetch = store_.Fetch(ch.key, ch.meta, ch.from_tier, &ch.served_by);

  // Staging: one block of C rows per chunk, addressed like paged KV memory
  // (block_table[p / C] = chunk index within the load).
  const int64_t plane = static_cast<int64_t>(n) * C * kv_dim_;
  load.staging_.resize(static_cast<size_t>(plane) * 2 * static_cast<size_t>(n_layers_));
  load.staging_table_.assign(static_cast<size_t>(load.first_chunk_) + n, 0);
  for (size_t i = 0; i < n; ++i) load.staging_table_[static_cast<size_t>(load.first_chunk_) + i] = static_cast<int32_t>(i);
  auto staging_view = [&](int layer) {
    KvLayerView v;
    v.k = load.staging_.data() + static_cast<int64_t>(2 * layer) * plane;
    v.v = load.staging_.data() + static_cast<int64_t>(2 * layer + 1) * plane;
    v.stride = kv_dim_;
    v.capacity = (load.first_chunk_ + static_cast<int64_t>(n)) * C;
    v.block_table = load.staging_table_.data();
    v.block_size = static_cast<int>(C);
    v.block_stride = C * kv_dim_;
    return v;
  };

  uint64_t missing = 0, failed = 0, timed_out = 0, corrupt = 0;
  for (size_t i = 0; i < n; ++i) {
    if (load.cancelled_.load(std::memory_order_acquire)) break;
    StoreLoad::Chunk& ch = load.chunks_[i];
    if (ch.fetch.wait_until(deadline) == std::future_status::timeout) {
      ++timed_out;
      break;
    }
    Expected<ChunkBlob> blob = ch.fetch.get();
    if (!blob.ok()) {
      if (blob.status().code() == StatusCode::kNotFound) {
        ++missing;
      } else if (blob.status().code() == StatusCode::kCorrupt) {
        ++corrupt;  // the tier's own checksum caught it
        if (ch.served_by >= 0) store_.ReportCorrupt(ch.key, ch.served_by);
      } else {
        ++failed;
      }
      break;
    }
    auto reader = ChunkReader::Open(std::move(*blob), ch.meta);
    Status st = reader.ok() ? Status::Ok() : reader.status();
    const int64_t chunk_begin = (load.first_chunk_ + static_cast<int64_t>(i)) * C;
    const int64_t skip = std::max<int64_t>(load.begin_ - chunk_begin, 0);
    for (int l = 0; l < n_layers_ && st.ok(); ++l) st = reader->DecodeLayer(l, staging_view(l), skip);
    if (!st.ok()) {
      ++corrupt;
      if (ch.served_by >= 0) store_.ReportCorrupt(ch.key, ch.served_by);
      break;
    }
    load.end_ = chunk_begin + C;
    const std::string_view tier = ch.served_by >= 0 ? store_.tier_name(ch.served_by) : std::string_view("?");
    AddTierTokens(&load.per_tier_, tier, C - skip);
  }
  const bool cancelled = load.cancelled_.load(std::memory_order_acquire);
  const bool fell_back = !cancelled && load.end_ < load.planned_end_;
  if (fell_back) store_.ReportFallback();
  if (load.end_ <= load.begin_) {
    load.staging_ = {};
    load.staging_table_ = {};
  }
  std::lock_guard<std::mutex> lock(mu_);
  counters_.missing_chunks += missing;
  counters_.failed_fetches += failed;
  counters_.timed_out_fetches += timed_out;
  counters_.corrupt_chunks += corrupt;
  if (!cancelled) ++counters_.loads_completed;
  if (fell_back) {
    ++counters_.fallbacks;
    counters_.fallback_tokens += static_cast<uint64_t>(load.planned_end_ - load.end_);
  }
  counters_.fetch_seconds += std::chrono::duration<double>(Clock::now() - load.started_).count();
}

void KvStoreConnector::ReapStragglers(bool block) {
  std::vector<std::shared_ptr<StoreLoad>> done;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stragglers_.empty()) return;
    if (block) {
      done.swap(stragglers_);
    } else {
      std::erase_if(stragglers_, [&](const std::shared_ptr<StoreLoad>& l) {
        for (const StoreLoad::Chunk& ch : l->chunks_) {
          if (ch.fetch.valid() && ch.fetch.wait_for(std::chrono::seconds(0)) != std::future_status::ready) return false;
        }
        done.push_back(l);
        return true;
      });
    }
  }
  // The store writes Chunk::served_by when a fetch completes: wait for it
  // before the chunk's memory goes away.
  for (auto& l : done) {
    for (StoreLoad::Chunk& ch : l->chunks_) {
      if (ch.fetch.valid()) ch.fetch.wait();
    }
  }
}

void KvStoreConnector::SetReadyListener(std::function<void()> listener) {
  std::lock_guard<std::mutex> lock(listener_mu_);
  ready_listener_ = std::move(listener);
}

void KvStoreConnector::WaitForLoads(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  if (pending_loads_ == 0) return;
  const int before = pending_loads_;
  ready_cv_.wait_for(lock, timeout, [&] { return pending_loads_ < before || stop_; });
}

bool KvStoreConnector::HasPendingLoads() const {
  std::lock_guard<std::mutex> lock(mu_);
  return pending_loads_ > 0;
}

Expected<ForwardHooks*> KvStoreConnector::PrepareStep(std::span<const BatchSeq> batch,
                                                      std::span<const std::shared_ptr<StoreLoad>> loads, KvCache& kv) {
  std::vector<CopyItem> items;
  for (size_t i = 0; i < batch.size() && i < loads.size(); ++i) {
    const std::shared_ptr<StoreLoad>& load = loads[i];
    if (!load || !load->ready() || load->end_ <= load->begin_) continue;
    CopyItem item;
    item.load = load;
    item.dst.reserve(static_cast<size_t>(n_layers_));
    for (int l = 0; l < n_layers_; ++l) {
      KvLayerView v = kv.View(batch[static_cast<size_t>(i)].seq, l);
      if (v.capacity < load->end_) {
        return Status::Internal("KV slot " + std::to_string(batch[i].seq) + " holds " + std::to_string(v.capacity) +
                                " positions, the loaded prefix ends at " + std::to_string(load->end_));
      }
      item.dst.push_back(v);
    }
    // The layer loader must not read the KV memory's own structures while
    // the engine thread may change them: it gets its own copy of the table.
    if (item.dst[0].block_table != nullptr) {
      const int64_t bs = item.dst[0].block_size;
      item.table.assign(item.dst[0].block_table, item.dst[0].block_table + (load->end_ + bs - 1) / bs);
    }
    items.push_back(std::move(item));
  }
  if (items.empty()) return static_cast<ForwardHooks*>(nullptr);
  for (CopyItem& item : items) {
    if (!item.table.empty()) {
      for (KvLayerView& v : item.dst) v.block_table = item.table.data();
    }
  }
  {
    std::lock_guard<std::mutex> lock(copy_mu_);
    copy_items_ = std::move(items);
    copy_layers_done_ = 0;
    copy_active_ = true;
  }
  copy_cv_.notify_all();
  return static_cast<ForwardHooks*>(hooks_.get());
}

void KvStoreConnector::FinishStep() {
  std::vector<CopyItem> items;
  {
    std::unique_lock<std::mutex> lock(copy_mu_);
    if (!copy_active_ && copy_items_.empty()) return;
    copy_cv_.wait(lock, [&] { return !copy_active_ || copy_stop_; });
    items.swap(copy_items_);
  }
  const double waited = hooks_->TakeWaitSeconds();
  std::lock_guard<std::mutex> lock(mu_);
  counters_.layer_wait_seconds += waited;
  for (CopyItem& item : items) {
    StoreLoad& load = *item.load;
    counters_.loaded_tokens += static_cast<uint64_t>(load.end_ - load.begin_);
    for (const StoreTierTokens& t : load.per_tier_) AddTierTokens(&counters_.loaded_tokens_per_tier, t.tier, t.tokens);
    load.staging_ = {};
    load.staging_table_ = {};
  }
}

void KvStoreConnector::CopyLoop() {
  const int64_t C = options_.chunk_tokens;
  const size_t row_bytes = static_cast<size_t>(kv_dim_) * sizeof(fp16_t);
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(copy_mu_);
      copy_cv_.wait(lock, [&] { return copy_stop_ || (copy_active_ && copy_layers_done_ == 0); });
      if (copy_stop_) return;
    }
    // copy_items_ is not touched by the engine thread while copy_active_.
    for (int l = 0; l < n_layers_; ++l) {
      for (CopyItem& item : copy_items_) {
        StoreLoad& load = *item.load;
        const int64_t n = static_cast<int64_t>(load.chunks_.size());
        const int64_t plane = n * C * kv_dim_;
        const fp16_t* sk = load.staging_.data() + static_cast<int64_t>(2 * l) * plane;
        const fp16_t* sv = load.staging_.data() + static_cast<int64_t>(2 * l + 1) * plane;
        const int64_t base = static_cast<int64_t>(load.first_chunk_) * C;
        const KvLayerView& dst = item.dst[static_cast<size_t>(l)];
        for (int64_t p = load.begin_; p < load.end_; ++p) {
          const int64_t off = (p - base) * kv_dim_;  // chunks are consecutive blocks of staging
          std::memcpy(dst.KRow(p), sk + off, row_bytes);
          std::memcpy(dst.VRow(p), sv + off, row_bytes);
        }
      }
      std::lock_guard<std::mutex> lock(copy_mu_);
      copy_layers_done_ = l + 1;
      if (l + 1 == n_layers_) copy_active_ = false;
      copy_cv_.notify_all();
    }
  }
}

void KvStoreConnector::StoreNewChunks(KvCache& kv, int seq, std::span<const TokenId> tokens, int64_t n_valid,
                                      const std::string& cache_salt, size_t* next_chunk,
                                      int64_t first_decode_position) {
  const size_t C = static_cast<size_t>(options_.chunk_tokens);
  const size_t valid = static_cast<size_t>(std::clamp<int64_t>(n_valid, 0, static_cast<int64_t>(tokens.size())));
  const size_t n_full = valid / C;
  if (*next_chunk >= n_full) return;
  const auto keys = KeysFor(tokens.first(n_full * C), cache_salt);
  uint64_t stored = 0, decode = 0, failures = 0;
  for (size_t i = *next_chunk; i < n_full; ++i) {
    ChunkMeta meta = MetaFor(keys[i], tokens, i);
    auto blob = EncodeChunk(meta, kv, seq, options_.encoding);
    if (!blob.ok()) {
      ++failures;
      continue;
    }
    store_.Store(keys[i], meta, std::move(*blob));
    ++stored;
    if (static_cast<int64_t>((i + 1) * C) > first_decode_position) ++decode;
  }
  *next_chunk = n_full;
  std::lock_guard<std::mutex> lock(mu_);
  counters_.stored_chunks += stored;
  counters_.stored_decode_chunks += decode;
  counters_.store_encode_failures += failures;
}

KvStoreConnectorCounters KvStoreConnector::counters() const {
  std::lock_guard<std::mutex> lock(mu_);
  return counters_;
}

}  // namespace strata
