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

// The forward pass's view of the step's loads: layer l's attention waits
// until layer l of every loading sequence in the batch is placed (or its
// load is over: a failure is dealt with after the pass).
class KvStoreConnector::LayerHooks final : public ForwardHooks {
 public:
  explicit LayerHooks(KvStoreConnector& c) : c_(c) {}
  Status BeforeAttention(int layer) override {
    for (const std::shared_ptr<StoreLoad>& load : c_.step_loads_) {
      std::unique_lock<std::mutex> lock(load->mu_);
      if (load->layers_done_ > layer || load->finished()) continue;
      const auto t0 = Clock::now();
      load->cv_.wait(lock, [&] { return load->layers_done_ > layer || load->finished(); });
      wait_seconds_ += std::chrono::duration<double>(Clock::now() - t0).count();
    }
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
      kv_dim_(model.config().kv_dim()) {
  bool lossy = options.encoding.dtype == ChunkDType::kInt8;
  for (int i = 0; i < store.n_tiers(); ++i) lossy = lossy || store.tier_encoding(i).dtype == ChunkDType::kInt8;
  kv_format_ = lossy ? kLossyKvFormat : kKvFormat;
}

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
  return c;
}

KvStoreConnector::~KvStoreConnector() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  work_cv_.notify_all();
  for (std::thread& t : fetch_threads_) t.join();
  // Loads never started: over, nothing placed, so nobody waits on them.
  for (auto& load : queue_) {
    load->end_.store(load->begin_, std::memory_order_release);
    load->finished_.store(true, std::memory_order_release);
    load->ready_.store(true, std::memory_order_release);
  }
}

ChunkKeyContext KvStoreConnector::KeyContext(const std::string& cache_salt) const {
  ChunkKeyContext ctx;
  ctx.model_fingerprint = model_.fingerprint();
  ctx.kv_format = kv_format_;
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
  m.kv_format = kv_format_;
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
  load->end_.store(load->planned_end_);
  load->first_chunk_ = static_cast<int>(first);
  load->chunks_.resize(avail - first);
  for (size_t i = first; i < avail; ++i) {
    StoreLoad::Chunk& ch = load->chunks_[i - first];
    ch.key = keys[i];
    ch.meta = MetaFor(keys[i], tokens, i);
    ch.tier = tier_of[i];
  }
  plan.load = std::move(load);
  return plan;
}

Status KvStoreConnector::StartLoad(const std::shared_ptr<StoreLoad>& load, KvCache& kv, int seq) {
  if (!load) return Status::InvalidArgument("no load to start");
  if (seq < 0 || seq >= kv.max_seqs()) return Status::InvalidArgument("KV slot " + std::to_string(seq) + " out of range");
  if (kv.n_layers() != n_layers_ || kv.kv_dim() != kv_dim_) {
    return Status::InvalidArgument("the KV memory's shape does not match the model");
  }
  load->dst_.clear();
  for (int l = 0; l < n_layers_; ++l) {
    KvLayerView v = kv.View(seq, l);
    if (v.capacity < load->planned_end_) {
      return Status::Internal("KV slot " + std::to_string(seq) + " holds " + std::to_string(v.capacity) +
                              " positions, the load ends at " + std::to_string(load->planned_end_));
    }
    load->dst_.push_back(v);
  }
  // The fetch thread must not read the KV memory's own structures while the
  // engine thread may change them (a Reserve can move a block table): it
  // gets its own copy of the table; the blocks themselves stay put.
  if (load->dst_[0].block_table != nullptr) {
    const int64_t bs = load->dst_[0].block_size;
    load->table_.assign(load->dst_[0].block_table, load->dst_[0].block_table + (load->planned_end_ + bs - 1) / bs);
    for (KvLayerView& v : load->dst_) v.block_table = load->table_.data();
  }
  load->started_ = Clock::now();
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++counters_.loads_started;
    counters_.planned_tokens += static_cast<uint64_t>(load->planned_end_ - load->begin_);
    ++pending_loads_;
    queue_.push_back(load);
  }
  work_cv_.notify_one();
  return Status::Ok();
}

void KvStoreConnector::CancelLoad(const std::shared_ptr<StoreLoad>& load) {
  if (!load || load->finished()) return;  // over already: nothing to stop
  load->cancelled_.store(true, std::memory_order_release);
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++counters_.loads_cancelled;
    // Not started yet: drop it from the queue.
    auto it = std::find(queue_.begin(), queue_.end(), load);
    if (it != queue_.end()) {
      queue_.erase(it);
      --pending_loads_;
      load->end_.store(load->begin_, std::memory_order_release);
      load->finished_.store(true, std::memory_order_release);
      load->ready_.store(true, std::memory_order_release);
    }
  }
  // A write in progress finishes; the fetch thread checks cancelled_ under
  // this lock before every write, so none follows.
  std::lock_guard<std::mutex> wait_for_writer(load->write_mu_);
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
    RunLoad(*load);
  }
}

void KvStoreConnector::MarkReady(StoreLoad& load) {
  if (load.ready_.exchange(true, std::memory_order_acq_rel)) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    --pending_loads_;
    counters_.fetch_seconds += std::chrono::duration<double>(Clock::now() - load.started_).count();
  }
  ready_cv_.notify_all();
  std::lock_guard<std::mutex> lock(listener_mu_);
  if (ready_listener_) ready_listener_();
}

void KvStoreConnector::RunLoad(StoreLoad& load) {
  const int64_t C = options_.chunk_tokens;
  const size_t n = load.chunks_.size();
  const auto deadline = load.started_ + options_.fetch_timeout;
  uint64_t missing = 0, failed = 0, timed_out = 0, corrupt = 0;
  bool late = false;  // the deadline passed: nothing more is waited for
  // Chunks [0, good) are still trusted; a failure at chunk i sets good = i
  // and end() to its first position.
  size_t good = n;
  auto fail = [&](size_t i, const Status& st, int tier) {
    if (i >= good) return;
    good = i;
    load.end_.store(std::max<int64_t>(load.begin_, (load.first_chunk_ + static_cast<int64_t>(i)) * C),
                    std::memory_order_release);
    if (late) {
      ++timed_out;
    } else if (st.code() == StatusCode::kNotFound) {
      ++missing;
    } else if (st.code() == StatusCode::kCorrupt) {
      ++corrupt;
      store_.ReportCorrupt(load.chunks_[i].key, tier);
    } else {
      ++failed;
    }
  };
  // A range, waited for until the load's deadline.
  auto take = [&](std::future<Expected<ChunkBlob>>& f) -> Expected<ChunkBlob> {
    if (late || f.wait_until(deadline) == std::future_status::timeout) {
      late = true;
      return Status::Unavailable("the fetch took longer than the store timeout");
    }
    return f.get();
  };

  // Every chunk's prefix, all in flight at once. A chunk gone from the tier
  // the lookup named (evicted, say) is looked for in the tiers below it.
  std::vector<std::future<Expected<ChunkBlob>>> heads(n);
  for (size_t i = 0; i < n; ++i) {
    const StoreLoad::Chunk& ch = load.chunks_[i];
    heads[i] = store_.FetchRange(ch.key, ch.tier, ByteRange{0, ChunkPrefixBytes(ch.meta)});
  }
  std::vector<ChunkReader> readers;
  readers.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    if (load.cancelled_.load(std::memory_order_acquire)) break;
    StoreLoad::Chunk& ch = load.chunks_[i];
    Expected<ChunkBlob> head = take(heads[i]);
    while (!head.ok() && !late && head.status().code() != StatusCode::kCorrupt && ch.tier + 1 < store_.n_tiers()) {
      ++ch.tier;
      auto f = store_.FetchRange(ch.key, ch.tier, ByteRange{0, ChunkPrefixBytes(ch.meta)});
      head = take(f);
    }
    if (!head.ok()) {
      fail(i, head.status(), ch.tier);
      break;
    }
    auto reader = ChunkReader::OpenPrefix(head->bytes(), ch.meta);
    if (!reader.ok()) {
      fail(i, reader.status(), ch.tier);
      break;
    }
    readers.push_back(std::move(*reader));
  }
  good = std::min(good, readers.size());  // (a cancel stops short of n)

  // Sections, layer-major: every chunk's layer 0 is requested before any
  // chunk's layer 1, so tiers that serve requests in order (I/O queues,
  // Redis connections) deliver layer 0 first.
  std::vector<std::vector<std::future<Expected<ChunkBlob>>>> sections(static_cast<size_t>(n_layers_));
  for (int l = 0; l < n_layers_; ++l) {
    for (size_t i = 0; i < good; ++i) {
      const StoreLoad::Chunk& ch = load.chunks_[i];
      sections[static_cast<size_t>(l)].push_back(store_.FetchRange(ch.key, ch.tier, readers[i].SectionRange(l)));
    }
  }
  for (int l = 0; l < n_layers_ && good > 0; ++l) {
    for (size_t i = 0; i < good; ++i) {
      if (load.cancelled_.load(std::memory_order_acquire)) break;
      Expected<ChunkBlob> sec = take(sections[static_cast<size_t>(l)][i]);
      Status st = sec.ok() ? Status::Ok() : sec.status();
      if (st.ok()) {
        const int64_t chunk_begin = (load.first_chunk_ + static_cast<int64_t>(i)) * C;
        const int64_t skip = std::max<int64_t>(load.begin_ - chunk_begin, 0);
        std::lock_guard<std::mutex> w(load.write_mu_);
        if (load.cancelled_.load(std::memory_order_acquire)) break;
        st = readers[i].DecodeSection(l, sec->bytes(), load.dst_[static_cast<size_t>(l)], skip);
      }
      if (!st.ok()) {
        fail(i, st, load.chunks_[i].tier);
        break;
      }
    }
    if (load.cancelled_.load(std::memory_order_acquire)) break;
    {
      std::lock_guard<std::mutex> lock(load.mu_);
      load.layers_done_ = l + 1;
    }
    load.cv_.notify_all();
    if (l == 0) MarkReady(load);
  }

  // Over: per-tier accounting, promotion of chunks read from a lower tier.
  const bool cancelled = load.cancelled_.load(std::memory_order_acquire);
  if (!cancelled) {
    for (size_t i = 0; i < good; ++i) {
      const StoreLoad::Chunk& ch = load.chunks_[i];
      const int64_t chunk_begin = (load.first_chunk_ + static_cast<int64_t>(i)) * C;
      AddTierTokens(&load.per_tier_, store_.tier_name(ch.tier), C - std::max<int64_t>(load.begin_ - chunk_begin, 0));
      if (ch.tier > 0) store_.Promote(ch.key, ch.meta, ch.tier);
    }
  }
  const bool fell_back = !cancelled && load.end() < load.planned_end_;
  if (fell_back) store_.ReportFallback();
  {
    std::lock_guard<std::mutex> lock(mu_);
    counters_.missing_chunks += missing;
    counters_.failed_fetches += failed;
    counters_.timed_out_fetches += timed_out;
    counters_.corrupt_chunks += corrupt;
    if (!cancelled) ++counters_.loads_completed;
    if (fell_back) {
      ++counters_.fallbacks;
      counters_.fallback_tokens += static_cast<uint64_t>(load.planned_end_ - load.end());
    }
    counters_.load_seconds += std::chrono::duration<double>(Clock::now() - load.started_).count();
  }
  {
    std::lock_guard<std::mutex> lock(load.mu_);
    load.finished_.store(true, std::memory_order_release);
  }
  load.cv_.notify_all();
  MarkReady(load);
  // Ranges still in flight (after a timeout or a failure) complete into
  // futures nobody reads; they hold no reference to the load.
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

ForwardHooks* KvStoreConnector::PrepareStep(std::span<const std::shared_ptr<StoreLoad>> loads) {
  step_loads_.clear();
  for (const std::shared_ptr<StoreLoad>& load : loads) {
    if (load && !load->finished()) step_loads_.push_back(load);
  }
  return step_loads_.empty() ? nullptr : hooks_.get();
}

void KvStoreConnector::FinishStep() {
  // Forward may have stopped early (an error): the loads must still be over
  // before the scheduler looks at their end().
  for (const std::shared_ptr<StoreLoad>& load : step_loads_) {
    std::unique_lock<std::mutex> lock(load->mu_);
    load->cv_.wait(lock, [&] { return load->finished(); });
  }
  step_loads_.clear();
  const double waited = hooks_->TakeWaitSeconds();
  std::lock_guard<std::mutex> lock(mu_);
  counters_.layer_wait_seconds += waited;
}

void KvStoreConnector::CompleteLoad(const StoreLoad& load) {
  std::lock_guard<std::mutex> lock(mu_);
  counters_.loaded_tokens += static_cast<uint64_t>(load.end() - load.begin());
  for (const StoreTierTokens& t : load.per_tier()) AddTierTokens(&counters_.loaded_tokens_per_tier, t.tier, t.tokens);
}

void KvStoreConnector::NoteDiscardedPass() {
  std::lock_guard<std::mutex> lock(mu_);
  ++counters_.discarded_passes;
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
