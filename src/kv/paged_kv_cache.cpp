#include "kv/paged_kv_cache.h"

#include <sys/mman.h>
#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace strata {

namespace {
BlockKey FromXxh(XXH128_hash_t h) { return BlockKey{h.low64, h.high64}; }
void PutKey(uint8_t* dst, const BlockKey& k) {
  for (int i = 0; i < 8; ++i) dst[i] = static_cast<uint8_t>(k.lo >> (8 * i));
  for (int i = 0; i < 8; ++i) dst[8 + i] = static_cast<uint8_t>(k.hi >> (8 * i));
}
}  // namespace

BlockKey HashBytes(std::string_view bytes) { return FromXxh(XXH3_128bits(bytes.data(), bytes.size())); }

BlockKey ChainBlockKey(const BlockKey& parent, std::span<const TokenId> tokens, const BlockKey& model_fingerprint,
                       const BlockKey& salt) {
  // Serialized explicitly (not hashed as structs) so the key does not depend
  // on padding or host byte order.
  std::vector<uint8_t> buf(48 + 4 * tokens.size());
  PutKey(buf.data(), parent);
  PutKey(buf.data() + 16, model_fingerprint);
  PutKey(buf.data() + 32, salt);
  for (size_t i = 0; i < tokens.size(); ++i) {
    const uint32_t t = static_cast<uint32_t>(tokens[i]);
    for (int b = 0; b < 4; ++b) buf[48 + 4 * i + static_cast<size_t>(b)] = static_cast<uint8_t>(t >> (8 * b));
  }
  return FromXxh(XXH3_128bits(buf.data(), buf.size()));
}

Expected<std::unique_ptr<PagedKvCache>> PagedKvCache::Create(const PagedKvOptions& o) {
  if (o.n_layers <= 0 || o.kv_dim <= 0 || o.max_seqs <= 0 || o.max_positions <= 0) {
    return Status::InvalidArgument("KV cache dimensions must be positive");
  }
  if (o.block_size <= 0 || o.block_size > 4096) return Status::InvalidArgument("KV block size must be in 1..4096");
  std::unique_ptr<PagedKvCache> c(new PagedKvCache(o));
  c->block_stride_ = 2 * static_cast<int64_t>(o.n_layers) * o.block_size * o.kv_dim;
  c->block_bytes_ = static_cast<size_t>(c->block_stride_) * sizeof(fp16_t);
  const size_t n = o.budget_bytes / c->block_bytes_;
  if (n == 0) {
    return Status::InvalidArgument("the KV budget of " + std::to_string(o.budget_bytes) + " bytes is smaller than one block (" +
                                   std::to_string(c->block_bytes_) + " bytes); raise --kv-budget");
  }
  if (n > (1u << 30)) return Status::InvalidArgument("the KV budget holds too many blocks; raise --kv-block-size");
  c->n_blocks_ = static_cast<int>(n);
  c->pool_bytes_ = n * c->block_bytes_;
  // Address space only; the kernel commits pages as blocks are first written.
  void* p = mmap(nullptr, c->pool_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    return Status::ResourceExhausted("cannot reserve " + std::to_string(c->pool_bytes_ >> 20) +
                                     " MiB for the paged KV pool: " + std::strerror(errno));
  }
  c->pool_ = static_cast<fp16_t*>(p);
  c->blocks_.resize(n);
  c->free_.reserve(n);
  // Lowest block ids handed out first (pop_back).
  for (size_t i = n; i-- > 0;) c->free_.push_back(static_cast<int32_t>(i));
  c->seqs_.resize(static_cast<size_t>(o.max_seqs));
  c->fingerprint_ = HashBytes(o.model_fingerprint);
  c->counters_.budget_bytes = c->pool_bytes_;
  return c;
}

PagedKvCache::~PagedKvCache() {
  if (pool_) munmap(pool_, pool_bytes_);
}

int32_t PagedKvCache::TakeBlock() {
  int32_t b = -1;
  if (!free_.empty()) {
    b = free_.back();
    free_.pop_back();
  } else if (!cached_.empty()) {
    b = cached_.front();  // least recently used
    cached_.pop_front();
    Block& blk = blocks_[static_cast<size_t>(b)];
    {
      std::lock_guard<std::mutex> lock(index_mu_);
      index_.erase(blk.key);
    }
    blk.keyed = false;
    ++counters_.evictions;
  } else {
    return -1;
  }
  blocks_[static_cast<size_t>(b)].refs = 1;
  ++used_blocks_;
  return b;
}

void PagedKvCache::ReleaseBlock(int32_t b) {
  Block& blk = blocks_[static_cast<size_t>(b)];
  if (--blk.refs > 0) return;
  --used_blocks_;
  if (blk.keyed) {
    blk.lru = cached_.insert(cached_.end(), b);
  } else {
    free_.push_back(b);
  }
}

int PagedKvCache::AcquireSlot() {
  for (int s = 0; s < o_.max_seqs; ++s) {
    Seq& q = seqs_[static_cast<size_t>(s)];
    if (!q.active) {
      q.active = true;
      q.salt = BlockKey{};
      return s;
    }
  }
  return -1;
}

Status PagedKvCache::Reserve(int seq, int64_t n_positions) {
  if (seq < 0 || seq >= o_.max_seqs) return Status::InvalidArgument("sequence slot " + std::to_string(seq) + " does not exist");
  if (n_positions > o_.max_positions) {
    return Status::OutOfRange("sequence needs " + std::to_string(n_positions) + " positions but the context holds " +
                              std::to_string(o_.max_positions) + " (raise -c / --ctx-size)");
  }
  Seq& q = seqs_[static_cast<size_t>(seq)];
  q.active = true;
  const size_t need = static_cast<size_t>((n_positions + o_.block_size - 1) / o_.block_size);
  while (q.table.size() < need) {
    const int32_t b = TakeBlock();
    if (b < 0) {
      return Status::ResourceExhausted("the KV budget (" + std::to_string(pool_bytes_ >> 20) + " MiB, " +
                                       std::to_string(n_blocks_) + " blocks) is used up");
    }
    q.table.push_back(b);
  }
  return Status::Ok();
}

KvLayerView PagedKvCache::View(int seq, int layer) {
  const Seq& q = seqs_[static_cast<size_t>(seq)];
  KvLayerView v;
  // Block layout: [layer][K, V][block_size][kv_dim].
  v.k = pool_ + static_cast<int64_t>(layer) * 2 * o_.block_size * o_.kv_dim;
  v.v = v.k + static_cast<int64_t>(o_.block_size) * o_.kv_dim;
  v.stride = o_.kv_dim;
  v.capacity = static_cast<int64_t>(q.table.size()) * o_.block_size;
  v.block_table = q.table.data();
  v.block_size = o_.block_size;
  v.block_stride = block_stride_;
  return v;
}

void PagedKvCache::Clear(int seq) {
  if (seq < 0 || seq >= o_.max_seqs) return;
  Seq& q = seqs_[static_cast<size_t>(seq)];
  // Last blocks first, so a prompt's tail is evicted before its head (the
  // head is the part other requests are likely to share).
  for (size_t i = q.table.size(); i-- > 0;) ReleaseBlock(q.table[i]);
  q.table.clear();
  q.keys.clear();
  q.active = false;
}

BlockKey PagedKvCache::Root(const BlockKey& salt) const { return ChainBlockKey(BlockKey{}, {}, fingerprint_, salt); }

int64_t PagedKvCache::AttachCachedPrefix(int seq, std::span<const TokenId> tokens, const std::string& cache_salt,
                                         int64_t max_positions) {
  Seq& q = seqs_[static_cast<size_t>(seq)];
  q.salt = HashBytes(cache_salt);
  if (!o_.prefix_caching || !q.table.empty()) return 0;
  const int64_t limit = std::min<int64_t>(max_positions, static_cast<int64_t>(tokens.size()));
  counters_.prefix_query_tokens += static_cast<uint64_t>(std::max<int64_t>(limit, 0));
  BlockKey parent = Root(q.salt);
  const size_t bs = static_cast<size_t>(o_.block_size);
  for (size_t i = 0; static_cast<int64_t>((i + 1) * bs) <= limit; ++i) {
    const auto block_tokens = tokens.subspan(i * bs, bs);
    const BlockKey key = ChainBlockKey(parent, block_tokens, fingerprint_, q.salt);
    auto it = index_.find(key);
    if (it == index_.end()) break;
    Block& blk = blocks_[static_cast<size_t>(it->second)];
    if (!(blk.parent == parent) || !std::equal(blk.tokens.begin(), blk.tokens.end(), block_tokens.begin())) break;
    if (blk.refs++ == 0) {
      cached_.erase(blk.lru);
      ++used_blocks_;
    }
    q.table.push_back(it->second);
    q.keys.push_back(key);
    parent = key;
  }
  const int64_t hit = static_cast<int64_t>(q.table.size() * bs);
  counters_.prefix_hit_tokens += static_cast<uint64_t>(hit);
  return hit;
}

void PagedKvCache::PublishPrefix(int seq, std::span<const TokenId> tokens) {
  if (!o_.prefix_caching) return;
  Seq& q = seqs_[static_cast<size_t>(seq)];
  const size_t bs = static_cast<size_t>(o_.block_size);
  const size_t full = std::min(tokens.size() / bs, q.table.size());
  while (q.keys.size() < full) {
    const size_t i = q.keys.size();
    const BlockKey parent = i == 0 ? Root(q.salt) : q.keys.back();
    const auto block_tokens = tokens.subspan(i * bs, bs);
    const BlockKey key = ChainBlockKey(parent, block_tokens, fingerprint_, q.salt);
    q.keys.push_back(key);
    Block& blk = blocks_[static_cast<size_t>(q.table[i])];
    // Another sequence may have published the same block first; this copy
    // then stays private and is freed with its sequence.
    if (blk.keyed || index_.count(key) != 0) continue;
    blk.keyed = true;
    blk.key = key;
    blk.parent = parent;
    blk.tokens.assign(block_tokens.begin(), block_tokens.end());
    // The fields above are set before the block becomes reachable through
    // index_, and the lock publishes them to probers.
    std::lock_guard<std::mutex> lock(index_mu_);
    index_.emplace(key, q.table[i]);
  }
}

int64_t PagedKvCache::ProbeCachedPrefix(std::span<const TokenId> tokens, const std::string& cache_salt) const {
  if (!o_.prefix_caching) return 0;
  const BlockKey salt = HashBytes(cache_salt);
  const size_t bs = static_cast<size_t>(o_.block_size);
  BlockKey parent = Root(salt);
  size_t hits = 0;
  for (size_t i = 0; (i + 1) * bs <= tokens.size(); ++i) {
    const auto block_tokens = tokens.subspan(i * bs, bs);
    // Hashing is the costly part; it needs no shared state, so it stays
    // outside the lock, and the lock is taken per block so the engine thread
    // never waits for more than one lookup and compare.
    const BlockKey key = ChainBlockKey(parent, block_tokens, fingerprint_, salt);
    {
      std::lock_guard<std::mutex> lock(index_mu_);
      auto it = index_.find(key);
      if (it == index_.end()) break;
      const Block& blk = blocks_[static_cast<size_t>(it->second)];
      if (!(blk.parent == parent) || !std::equal(blk.tokens.begin(), blk.tokens.end(), block_tokens.begin())) break;
    }
    ++hits;
    parent = key;
  }
  return static_cast<int64_t>(hits * bs);
}

void PagedKvCache::Trim() {
  std::lock_guard<std::mutex> lock(index_mu_);
  for (int32_t b : cached_) {
    Block& blk = blocks_[static_cast<size_t>(b)];
    index_.erase(blk.key);
    blk.keyed = false;
    free_.push_back(b);
  }
  cached_.clear();
}

int64_t PagedKvCache::AvailablePositions() const {
  return static_cast<int64_t>(free_.size() + cached_.size()) * o_.block_size;
}

size_t PagedKvCache::used_bytes() const { return static_cast<size_t>(used_blocks_) * block_bytes_; }
size_t PagedKvCache::committed_bytes() const { return (static_cast<size_t>(used_blocks_) + cached_.size()) * block_bytes_; }

KvMemoryStats PagedKvCache::stats() const {
  KvMemoryStats s = counters_;
  s.used_bytes = used_bytes();
  s.cached_bytes = cached_.size() * block_bytes_;
  s.committed_bytes = committed_bytes();
  s.active_slots = static_cast<int>(std::count_if(seqs_.begin(), seqs_.end(), [](const Seq& q) { return q.active; }));
  return s;
}

}  // namespace strata
