#include "cache/eviction_policy.h"

#include <cstdint>
#include <iterator>
#include <list>
#include <string>
#include <unordered_map>

namespace strata {

namespace {

// Least recently used: a list ordered by last use (front = most recent) and
// an index into it. Victim walks from the back, skipping pinned keys.
class LruPolicy final : public EvictionPolicy {
 public:
  void Insert(const ChunkKey& key, size_t /*bytes*/) override {
    auto it = index_.find(key);
    if (it != index_.end()) {
      order_.splice(order_.begin(), order_, it->second);
      return;
    }
    order_.push_front(key);
    index_.emplace(key, order_.begin());
  }

  void Touch(const ChunkKey& key) override {
    auto it = index_.find(key);
    if (it != index_.end()) order_.splice(order_.begin(), order_, it->second);
  }

  void Erase(const ChunkKey& key) override {
    auto it = index_.find(key);
    if (it == index_.end()) return;
    order_.erase(it->second);
    index_.erase(it);
  }

  std::optional<ChunkKey> Victim(const std::function<bool(const ChunkKey&)>& pinned) override {
    for (auto it = order_.rbegin(); it != order_.rend(); ++it) {
      if (!pinned || !pinned(*it)) return *it;
    }
    return std::nullopt;
  }

  size_t size() const override { return index_.size(); }

 private:
  std::list<ChunkKey> order_;
  std::unordered_map<ChunkKey, std::list<ChunkKey>::iterator, ChunkKeyHash> index_;
};

// S3-FIFO (Yang et al., SOSP'23). New keys enter a small probationary FIFO
// (S, ~10% of the bytes); a key hit while in S moves to the main FIFO (M)
// when it reaches S's tail, otherwise it is evicted and remembered in a ghost
// FIFO (G). A key inserted again while in G was evicted too early and goes
// straight to M. M is a FIFO whose keys carry a small hit counter: a key with
// hits left is reinserted at M's head (counter decremented) instead of being
// evicted. A scan of one-time chunks therefore cycles through S only and
// never displaces the hot set in M, where LRU would flush it.
//
// Victim only reorganizes the queues (S->M moves, reinsertions); the victim
// itself stays until the tier calls Erase, which is when a key evicted from
// S enters the ghost queue.
class S3FifoPolicy final : public EvictionPolicy {
 public:
  void Insert(const ChunkKey& key, size_t bytes) override {
    if (auto it = index_.find(key); it != index_.end()) {
      Touch(key);
      return;
    }
    if (auto g = ghost_index_.find(key); g != ghost_index_.end()) {
      ghost_.erase(g->second);
      ghost_index_.erase(g);
      main_.push_front(key);
      index_.emplace(key, Entry{main_.begin(), bytes, 0, /*in_main=*/true});
      main_bytes_ += bytes;
    } else {
      small_.push_front(key);
      index_.emplace(key, Entry{small_.begin(), bytes, 0, /*in_main=*/false});
      small_bytes_ += bytes;
    }
  }

  void Touch(const ChunkKey& key) override {
    auto it = index_.find(key);
    if (it != index_.end() && it->second.freq < kMaxFreq) ++it->second.freq;
  }

  void Erase(const ChunkKey& key) override {
    auto it = index_.find(key);
    if (it == index_.end()) return;
    Entry& e = it->second;
    if (e.in_main) {
      main_.erase(e.pos);
      main_bytes_ -= e.bytes;
    } else {
      small_.erase(e.pos);
      small_bytes_ -= e.bytes;
      // Only a key we chose to evict from S is a ghost; a key the tier
      // removed for other reasons (Remove, corrupt) is simply forgotten.
      if (last_victim_ && *last_victim_ == key) AddGhost(key);
    }
    if (last_victim_ && *last_victim_ == key) last_victim_.reset();
    index_.erase(it);
  }

  std::optional<ChunkKey> Victim(const std::function<bool(const ChunkKey&)>& pinned) override {
    auto is_pinned = [&](const ChunkKey& k) { return pinned && pinned(k); };
    const size_t total = small_bytes_ + main_bytes_;
    const bool prefer_small = main_.empty() || small_bytes_ * 10 >= total;
    std::optional<ChunkKey> v = prefer_small ? FromSmall(is_pinned) : FromMain(is_pinned);
    if (!v) v = prefer_small ? FromMain(is_pinned) : FromSmall(is_pinned);
    last_victim_ = v;
    return v;
  }

  size_t size() const override { return index_.size(); }

 private:
  static constexpr uint8_t kMaxFreq = 3;

  struct Entry {
    std::list<ChunkKey>::iterator pos;
    size_t bytes;
    uint8_t freq;
    bool in_main;
  };

  template <typename Pinned>
  std::optional<ChunkKey> FromSmall(const Pinned& is_pinned) {
    // Walk S oldest first; keys hit while on probation graduate to M.
    size_t n = small_.size();
    auto it = small_.end();
    while (n-- > 0) {
      --it;
      const ChunkKey key = *it;
      Entry& e = index_.at(key);
      if (is_pinned(key)) continue;
      if (e.freq > 0) {
        auto next = it;  // the element after `it` toward the back, already visited
        ++next;
        main_.splice(main_.begin(), small_, it);
        e.pos = main_.begin();
        e.in_main = true;
        e.freq = 0;
        small_bytes_ -= e.bytes;
        main_bytes_ += e.bytes;
        it = next;
        continue;
      }
      return key;
    }
    return std::nullopt;
  }

  template <typename Pinned>
  std::optional<ChunkKey> FromMain(const Pinned& is_pinned) {
    // Each pass visits every key of M once, oldest first, moving keys with
    // hits left to the head. After kMaxFreq passes every unpinned key has
    // run out of hits, so kMaxFreq + 1 passes always find one if any exists.
    for (int pass = 0; pass <= kMaxFreq; ++pass) {
      size_t n = main_.size();
      auto it = main_.end();
      while (n-- > 0) {
        --it;
        const ChunkKey key = *it;
        Entry& e = index_.at(key);
        if (is_pinned(key)) continue;
        if (e.freq > 0) {
          --e.freq;
          auto next = it;
          ++next;
          main_.splice(main_.begin(), main_, it);
          e.pos = main_.begin();
          it = next;
          continue;
        }
        return key;
      }
    }
    return std::nullopt;
  }

  void AddGhost(const ChunkKey& key) {
    if (ghost_index_.count(key) != 0) return;
    ghost_.push_back(key);
    ghost_index_.emplace(key, std::prev(ghost_.end()));
    // Remember about as many evicted keys as we hold live ones (the paper
    // sizes G like M); a few extra so tiny tiers still learn.
    const size_t limit = index_.size() + 16;
    while (ghost_.size() > limit) {
      ghost_index_.erase(ghost_.front());
      ghost_.pop_front();
    }
  }

  std::list<ChunkKey> small_;  // front = newest
  std::list<ChunkKey> main_;   // front = newest
  std::list<ChunkKey> ghost_;  // back = newest
  std::unordered_map<ChunkKey, Entry, ChunkKeyHash> index_;
  std::unordered_map<ChunkKey, std::list<ChunkKey>::iterator, ChunkKeyHash> ghost_index_;
  size_t small_bytes_ = 0;
  size_t main_bytes_ = 0;
  std::optional<ChunkKey> last_victim_;
};

}  // namespace

Expected<std::unique_ptr<EvictionPolicy>> MakeEvictionPolicy(std::string_view name) {
  if (name == "lru") return std::unique_ptr<EvictionPolicy>(std::make_unique<LruPolicy>());
  if (name == "s3fifo") return std::unique_ptr<EvictionPolicy>(std::make_unique<S3FifoPolicy>());
  return Status::InvalidArgument("unknown eviction policy '" + std::string(name) +
                                 "' (expected 'lru' or 's3fifo')");
}

}  // namespace strata
