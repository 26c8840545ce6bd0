// HostTier: budget, eviction, pins with expiry, blob-held slots, listener.
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <thread>

#include "cache/host_tier.h"

namespace strata {
namespace {

ChunkKey K(uint64_t i) { return ChunkKey{0xabcdull, i}; }

ChunkBlob Bytes(size_t n, uint8_t fill) { return ChunkBlob::Adopt(std::vector<uint8_t>(n, fill)); }

std::unique_ptr<HostTier> MakeTier(size_t capacity, size_t page = 1024, const char* policy = "lru") {
  HostTierOptions o;
  o.capacity_bytes = capacity;
  o.page_bytes = page;
  o.policy = policy;
  auto t = HostTier::Create(o);
  EXPECT_TRUE(t.ok()) << t.status().ToString();
  return std::move(*t);
}

bool Holds(HostTier& t, uint64_t i) { return t.Contains(K(i)); }

TEST(CacheHostTier, CreateRejectsBadOptions) {
  HostTierOptions o;
  o.capacity_bytes = 100;
  o.page_bytes = 1024;
  EXPECT_EQ(HostTier::Create(o).status().code(), StatusCode::kInvalidArgument);
  o.capacity_bytes = 1 << 20;
  o.policy = "random";
  EXPECT_EQ(HostTier::Create(o).status().code(), StatusCode::kInvalidArgument);
}

TEST(CacheHostTier, PutGetRoundTripAndStats) {
  auto t = MakeTier(16 * 1024);
  EXPECT_EQ(t->name(), "host");
  EXPECT_TRUE(t->Health().ok());
  ASSERT_TRUE(t->Put(K(1), Bytes(1500, 7)).get().ok());
  ASSERT_TRUE(t->Put(K(1), Bytes(10, 9)).get().ok());  // existing key kept
  auto g = t->Get(K(1)).get();
  ASSERT_TRUE(g.ok());
  ASSERT_EQ(g->size(), 1500u);
  EXPECT_EQ(g->bytes()[0], 7);
  EXPECT_EQ(g->bytes()[1499], 7);
  EXPECT_EQ(t->Get(K(2)).get().status().code(), StatusCode::kNotFound);
  std::vector<ChunkKey> keys{K(1), K(2), K(1)};
  EXPECT_EQ(t->CountPrefix(keys), 1u);
  const TierStats s = t->stats();
  EXPECT_EQ(s.hits, 1u);
  EXPECT_EQ(s.misses, 1u);
  EXPECT_EQ(s.puts, 1u);
  EXPECT_EQ(s.used_bytes, 1500u);
  EXPECT_EQ(s.capacity_bytes, 16u * 1024);
  EXPECT_EQ(s.chunks, 1u);
  EXPECT_EQ(s.bytes_read, 1500u);
  EXPECT_EQ(s.bytes_written, 1500u);
  EXPECT_TRUE(t->Remove(K(1)).ok());
  EXPECT_EQ(t->Remove(K(1)).code(), StatusCode::kNotFound);
  EXPECT_EQ(t->stats().used_bytes, 0u);
}

TEST(CacheHostTier, StaysWithinBudgetEvictingLeastRecentlyUsed) {
  auto t = MakeTier(8 * 1024);  // 8 pages
  std::vector<std::pair<ChunkKey, size_t>> evicted;
  t->SetEvictionListener([&](const ChunkKey& k, ChunkBlob b) { evicted.emplace_back(k, b.size()); });
  for (uint64_t i = 0; i < 4; ++i) ASSERT_TRUE(t->Put(K(i), Bytes(2000, uint8_t(i))).get().ok());  // 2 pages each
  ASSERT_TRUE(t->Get(K(0)).get().ok());  // 0 is now the most recent
  ASSERT_TRUE(t->Put(K(4), Bytes(2000, 4)).get().ok());
  ASSERT_EQ(evicted.size(), 1u);
  EXPECT_EQ(evicted[0].first, K(1));
  EXPECT_EQ(evicted[0].second, 2000u);
  EXPECT_TRUE(Holds(*t, 0));
  EXPECT_FALSE(Holds(*t, 1));
  EXPECT_LE(t->stats().used_bytes, 8u * 1024);
  EXPECT_EQ(t->stats().evictions, 1u);
  // Larger than the whole budget: refused, nothing evicted.
  EXPECT_EQ(t->Put(K(9), Bytes(9000, 1)).get().code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(evicted.size(), 1u);
  // Needs 6 contiguous pages: evicts until a run exists, and the data is right.
  ASSERT_TRUE(t->Put(K(5), Bytes(6000, 5)).get().ok());
  auto g = t->Get(K(5)).get();
  ASSERT_TRUE(g.ok());
  for (uint8_t b : g->bytes()) ASSERT_EQ(b, 5);
}

TEST(CacheHostTier, BlobHeldSlotIsNeitherEvictedNorReused) {
  auto t = MakeTier(4 * 1024);
  ASSERT_TRUE(t->Put(K(1), Bytes(1024, 0x11)).get().ok());
  auto held = t->Get(K(1)).get();
  ASSERT_TRUE(held.ok());
  ChunkBlob copy = *held;  // copies share the hold
  held = Status::NotFound("dropped");
  // Fill the rest, then more: K(1) cannot be evicted while its blob lives.
  for (uint64_t i = 2; i < 10; ++i) (void)t->Put(K(i), Bytes(1024, uint8_t(i))).get();
  EXPECT_TRUE(Holds(*t, 1));
  // Removing it hides it but must not hand its pages to anyone.
  ASSERT_TRUE(t->Remove(K(1)).ok());
  EXPECT_FALSE(Holds(*t, 1));
  for (uint64_t i = 10; i < 20; ++i) ASSERT_TRUE(t->Put(K(i), Bytes(1024, uint8_t(i))).get().ok());
  ASSERT_TRUE(t->Clear().ok());
  for (uint64_t i = 20; i < 30; ++i) ASSERT_TRUE(t->Put(K(i), Bytes(1024, uint8_t(i))).get().ok());
  for (uint8_t b : copy.bytes()) ASSERT_EQ(b, 0x11) << "a held slot was reused";
  // Only three pages are usable while the blob lives.
  EXPECT_EQ(t->stats().chunks, 3u);
  copy = ChunkBlob();
  for (uint64_t i = 30; i < 34; ++i) ASSERT_TRUE(t->Put(K(i), Bytes(1024, uint8_t(i))).get().ok());
  EXPECT_EQ(t->stats().chunks, 4u);
}

TEST(CacheHostTier, BlobOutlivesTheTier) {
  ChunkBlob keep;
  {
    auto t = MakeTier(4 * 1024);
    ASSERT_TRUE(t->Put(K(1), Bytes(100, 0x5a)).get().ok());
    keep = *t->Get(K(1)).get();
  }
  ASSERT_EQ(keep.size(), 100u);
  for (uint8_t b : keep.bytes()) ASSERT_EQ(b, 0x5a);
}

TEST(CacheHostTier, PinsHoldUntilTheirTtlExpires) {
  auto t = MakeTier(4 * 1024);
  ASSERT_TRUE(t->Put(K(1), Bytes(1024, 1)).get().ok());
  EXPECT_EQ(t->Pin(K(7), std::chrono::milliseconds(100)).code(), StatusCode::kNotFound);
  ASSERT_TRUE(t->Pin(K(1), std::chrono::milliseconds(150)).ok());
  EXPECT_EQ(t->stats().pinned, 1u);
  for (uint64_t i = 2; i < 12; ++i) ASSERT_TRUE(t->Put(K(i), Bytes(1024, 2)).get().ok());
  EXPECT_TRUE(Holds(*t, 1)) << "pinned chunk evicted";
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_EQ(t->stats().pinned, 0u);
  for (uint64_t i = 12; i < 20; ++i) ASSERT_TRUE(t->Put(K(i), Bytes(1024, 2)).get().ok());
  EXPECT_FALSE(Holds(*t, 1)) << "expired pin still protects the chunk";
}

TEST(CacheHostTier, UnpinAndAllPinnedIsExhausted) {
  auto t = MakeTier(2 * 1024);
  ASSERT_TRUE(t->Put(K(1), Bytes(1024, 1)).get().ok());
  ASSERT_TRUE(t->Put(K(2), Bytes(1024, 2)).get().ok());
  ASSERT_TRUE(t->Pin(K(1), std::chrono::minutes(1)).ok());
  ASSERT_TRUE(t->Pin(K(2), std::chrono::minutes(1)).ok());
  EXPECT_EQ(t->Put(K(3), Bytes(1024, 3)).get().code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(t->stats().put_failures, 1u);
  ASSERT_TRUE(t->Unpin(K(2)).ok());
  ASSERT_TRUE(t->Put(K(3), Bytes(1024, 3)).get().ok());
  EXPECT_TRUE(Holds(*t, 1));
  EXPECT_FALSE(Holds(*t, 2));
  ASSERT_TRUE(t->Clear().ok());  // clears pinned chunks too
  EXPECT_EQ(t->stats().chunks, 0u);
}

TEST(CacheHostTier, ListenerMayReenterTheTier) {
  auto t = MakeTier(4 * 1024);
  std::atomic<int> calls{0};
  HostTier* raw = t.get();
  t->SetEvictionListener([&](const ChunkKey& k, ChunkBlob b) {
    ++calls;
    EXPECT_FALSE(raw->Contains(k));  // would deadlock if called under the lock
    EXPECT_EQ(b.size(), 1024u);
  });
  for (uint64_t i = 0; i < 10; ++i) ASSERT_TRUE(t->Put(K(i), Bytes(1024, 1)).get().ok());
  EXPECT_EQ(calls.load(), 6);
}

TEST(CacheHostTier, ConcurrentPutsAndGetsKeepDataIntact) {
  auto t = MakeTier(64 * 1024, 1024, "s3fifo");
  std::atomic<bool> bad{false};
  std::vector<std::thread> threads;
  for (int w = 0; w < 4; ++w) {
    threads.emplace_back([&, w] {
      for (uint64_t i = 0; i < 300; ++i) {
        const uint64_t k = (i * 7 + w) % 97;
        const size_t n = 500 + (k % 5) * 1000;
        auto g = t->Get(K(k)).get();
        if (g.ok()) {
          if (g->size() != n) bad = true;
          for (uint8_t b : g->bytes()) {
            if (b != uint8_t(k)) bad = true;
          }
        } else {
          (void)t->Put(K(k), Bytes(n, uint8_t(k))).get();
        }
        if (i % 50 == 0) (void)t->Remove(K((k + 1) % 97));
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_FALSE(bad.load());
  EXPECT_LE(t->stats().used_bytes, 64u * 1024);
}

}  // namespace
}  // namespace strata
