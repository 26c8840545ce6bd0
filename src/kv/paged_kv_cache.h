// PagedKvCache: KV in fixed-size blocks (block_size positions of every layer's
// K and V) from one preallocated pool; each sequence has a block table.
// Attention reads through the table (kernels/attention_paged.h).
//
// Prefix caching: a full block is keyed by a chained xxh3-128 hash of
// (parent key, its token ids, model fingerprint, cache salt), so equal
// prefixes under the same salt get equal keys in any process. Blocks are
// reference-counted; a block nobody references stays cached (LRU) until its
// memory is needed. Every hit is verified against the stored parent key and
// token ids, so a hash collision costs a miss, never wrong KV. Shared blocks
// are always full and never written again, so no copy-on-write is needed.
//
// Thread-safety: not thread-safe (one engine thread), except
// ProbeCachedPrefix, which any thread may call concurrently with the engine.
// It reads the prefix index under index_mu_; the engine thread takes that
// mutex only where it inserts or erases index entries (publishing a block,
// evicting a cached block for reuse, Trim). Attaching, and reserving from
// free blocks, take no lock.
#pragma once

#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "kv/managed_kv_cache.h"

namespace strata {

struct BlockKey {
  uint64_t lo = 0, hi = 0;
  bool operator==(const BlockKey&) const = default;
};
struct BlockKeyHash {
  size_t operator()(const BlockKey& k) const { return static_cast<size_t>(k.lo ^ (k.hi * 0x9e3779b97f4a7c15ull)); }
};

// The chained key of one full block. Token ids are hashed as little-endian
// int32; the same inputs give the same key on every machine.
BlockKey ChainBlockKey(const BlockKey& parent, std::span<const TokenId> tokens, const BlockKey& model_fingerprint,
                       const BlockKey& salt);
// xxh3-128 of arbitrary bytes (fingerprints, salts).
BlockKey HashBytes(std::string_view bytes);

struct PagedKvOptions {
  int n_layers = 0;
  int64_t kv_dim = 0;
  int max_seqs = 1;
  int64_t max_positions = 0;  // per sequence
  int block_size = 16;
  size_t budget_bytes = 0;    // pool size; rounded down to whole blocks
  bool prefix_caching = true;
  std::string model_fingerprint;  // distinguishes models in prefix keys
};

class PagedKvCache final : public ManagedKvCache {
 public:
  static Expected<std::unique_ptr<PagedKvCache>> Create(const PagedKvOptions& options);
  ~PagedKvCache() override;

  // KvCache
  int n_layers() const override { return o_.n_layers; }
  int64_t kv_dim() const override { return o_.kv_dim; }
  int max_seqs() const override { return o_.max_seqs; }
  int64_t max_positions() const override { return o_.max_positions; }
  // Fails with kResourceExhausted when the pool (after evicting cached
  // blocks) has no block left; blocks already added stay with the sequence.
  Status Reserve(int seq, int64_t n_positions) override;
  KvLayerView View(int seq, int layer) override;
  void Clear(int seq) override;
  size_t committed_bytes() const override;
  size_t used_bytes() const override;

  // ManagedKvCache
  int AcquireSlot() override;
  int64_t AvailablePositions() const override;
  int64_t granule_positions() const override { return o_.block_size; }
  int64_t BackedPositions(int seq) const override {
    return static_cast<int64_t>(seqs_[static_cast<size_t>(seq)].table.size()) * o_.block_size;
  }
  int64_t AttachCachedPrefix(int seq, std::span<const TokenId> tokens, const std::string& cache_salt,
                             int64_t max_positions) override;
  void PublishPrefix(int seq, std::span<const TokenId> tokens) override;
  // Counts leading full blocks whose chained key is in the index and whose
  // stored parent key and token ids match (the verification a hit gets).
  int64_t ProbeCachedPrefix(std::span<const TokenId> tokens, const std::string& cache_salt) const override;
  int64_t prefix_block_positions() const override { return o_.prefix_caching ? o_.block_size : 0; }
  void Trim() override;
  KvMemoryStats stats() const override;
  const char* kind() const override { return "paged"; }

  int n_blocks() const { return n_blocks_; }
  size_t block_bytes() const { return block_bytes_; }
  const std::vector<int32_t>& block_table(int seq) const { return seqs_[static_cast<size_t>(seq)].table; }

 private:
  // key, parent and tokens are written only while the block is out of
  // index_, so a prober that found the block under index_mu_ may read them
  // for as long as it holds that lock.
  struct Block {
    int refs = 0;
    bool keyed = false;          // in index_: holds a published prefix block
    BlockKey key, parent;
    std::vector<TokenId> tokens;  // the block's token ids, to verify hits
    std::list<int32_t>::iterator lru;  // valid while keyed && refs == 0
  };
  struct Seq {
    bool active = false;
    std::vector<int32_t> table;
    std::vector<BlockKey> keys;  // chained key of each published/attached block
    BlockKey salt;
  };

  explicit PagedKvCache(const PagedKvOptions& o) : o_(o) {}
  int32_t TakeBlock();
  void ReleaseBlock(int32_t b);
  BlockKey Root(const BlockKey& salt) const;

  PagedKvOptions o_;
  BlockKey fingerprint_;
  int n_blocks_ = 0;
  size_t block_bytes_ = 0;
  int64_t block_stride_ = 0;  // elements
  fp16_t* pool_ = nullptr;
  size_t pool_bytes_ = 0;
  std::vector<Block> blocks_;
  std::vector<int32_t> free_;     // unreferenced, holding nothing worth keeping
  std::list<int32_t> cached_;     // unreferenced keyed blocks, least recently used first
  // Written only by the engine thread, under index_mu_; the engine thread
  // reads it without the lock (no other writer), probers read it with it.
  std::unordered_map<BlockKey, int32_t, BlockKeyHash> index_;
  mutable std::mutex index_mu_;
  std::vector<Seq> seqs_;
  int used_blocks_ = 0;
  KvMemoryStats counters_;
};

}  // namespace strata
