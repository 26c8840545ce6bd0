// KvStore chaining two host tiers: lookup, write-through, promotion on a
// lower-tier hit, demotion on eviction, Move, Clear, pins, corruption.
#include <gtest/gtest.h>

#include <cstring>
#include <thread>

#include "cache/host_tier.h"
#include "cache/kv_store.h"
#include "kernels/fp16.h"
#include "kv/contiguous_kv_cache.h"
#include "kv_chunk_chain.h"

namespace strata {
namespace {

constexpr int kLayers = 2;
constexpr int kHeads = 2;
constexpr int kHeadDim = 8;
constexpr int kChunk = 16;

struct Fixture : testing::KvChunkChain {
  explicit Fixture(int n_chunks)
      : KvChunkChain({kLayers, kHeads, kHeadDim, kChunk}, n_chunks, "00112233445566778899aabbccddeeff", 5, 3, 256) {}
};

std::unique_ptr<HostTier> Host(const char* name, size_t capacity) {
  HostTierOptions o;
  o.name = name;
  o.capacity_bytes = capacity;
  o.page_bytes = 1024;
  return HostTier::Create(o).value();
}

// Two tiers: "host" (raw f16) above "cold" (zstd f16, or as given).
struct TwoTiers {
  HostTier* top = nullptr;
  HostTier* cold = nullptr;
  std::unique_ptr<KvStore> store;

  TwoTiers(size_t top_bytes, size_t cold_bytes, bool cold_write_through,
           ChunkEncoding cold_enc = {ChunkCodec::kZstd, ChunkDType::kF16, 1}) {
    auto a = Host("host", top_bytes);
    auto b = Host("cold", cold_bytes);
    top = a.get();
    cold = b.get();
    std::vector<StoreTier> tiers;
    tiers.push_back(StoreTier{std::move(a), ChunkEncoding{}, true});
    tiers.push_back(StoreTier{std::move(b), cold_enc, cold_write_through});
    auto s = KvStore::Create(std::move(tiers), KvStoreOptions{});
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    store = std::move(*s);
  }
};

ChunkEncoding EncodingOf(HostTier& t, const ChunkKey& k, const ChunkMeta& meta) {
  auto g = t.Get(k).get();
  EXPECT_TRUE(g.ok());
  auto r = ChunkReader::Open(*g, meta);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? r->encoding() : ChunkEncoding{};
}

TEST(CacheStore, CreateValidatesTiers) {
  std::vector<StoreTier> none;
  EXPECT_EQ(KvStore::Create(std::move(none), {}).status().code(), StatusCode::kInvalidArgument);
  std::vector<StoreTier> dup;
  dup.push_back(StoreTier{Host("host", 1 << 16), {}, true});
  dup.push_back(StoreTier{Host("host", 1 << 16), {}, true});
  EXPECT_EQ(KvStore::Create(std::move(dup), {}).status().code(), StatusCode::kInvalidArgument);
}

TEST(CacheStore, WriteThroughStoresEveryTierInItsEncoding) {
  Fixture f(3);
  TwoTiers s(1 << 20, 1 << 20, /*cold_write_through=*/true);
  for (int i = 0; i < 3; ++i) s.store->Store(f.keys[i], f.Meta(i), f.Blob(i));
  s.store->Flush();
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(s.top->Contains(f.keys[i]));
    EXPECT_TRUE(s.cold->Contains(f.keys[i]));
  }
  EXPECT_EQ(EncodingOf(*s.top, f.keys[0], f.Meta(0)).codec, ChunkCodec::kRaw);
  EXPECT_EQ(EncodingOf(*s.cold, f.keys[0], f.Meta(0)).codec, ChunkCodec::kZstd);
  const StoreLookup l = s.store->Lookup(f.keys);
  EXPECT_EQ(l.chunks, 3u);
  EXPECT_EQ(l.per_tier, (std::vector<size_t>{3, 3}));
  EXPECT_EQ(l.tier_of_chunk, (std::vector<int>{0, 0, 0}));
  const KvStoreStats st = s.store->stats();
  EXPECT_EQ(st.stores, 3u);
  EXPECT_EQ(st.store_failures, 0u);
  EXPECT_EQ(st.lookups, 1u);
  EXPECT_EQ(st.hit_chunks, 3u);
  ASSERT_EQ(st.tiers.size(), 2u);
  EXPECT_EQ(st.tiers[1].name, "cold");
  EXPECT_EQ(st.tiers[1].tier.puts, 3u);
}

TEST(CacheStore, LookupFindsChunksSplitAcrossTiers) {
  Fixture f(4);
  TwoTiers s(1 << 20, 1 << 20, /*cold_write_through=*/false);
  ASSERT_TRUE(s.top->Put(f.keys[0], f.Blob(0)).get().ok());
  ASSERT_TRUE(s.top->Put(f.keys[1], f.Blob(1)).get().ok());
  ASSERT_TRUE(s.cold->Put(f.keys[2], f.Blob(2)).get().ok());
  const StoreLookup l = s.store->Lookup(f.keys);
  EXPECT_EQ(l.chunks, 3u);
  EXPECT_EQ(l.per_tier, (std::vector<size_t>{2, 0}));
  EXPECT_EQ(l.tier_of_chunk, (std::vector<int>{0, 0, 1}));
}

TEST(CacheStore, FetchFromLowerTierPromotesAndDecodesExactly) {
  Fixture f(2);
  TwoTiers s(1 << 20, 1 << 20, /*cold_write_through=*/true);
  s.store->Store(f.keys[1], f.Meta(1), f.Blob(1));
  s.store->Flush();
  ASSERT_TRUE(s.store->Clear("host").ok());
  EXPECT_FALSE(s.top->Contains(f.keys[1]));
  EXPECT_TRUE(s.cold->Contains(f.keys[1]));
  int served = -1;
  auto got = s.store->Fetch(f.keys[1], f.Meta(1), 0, &served).get();
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(served, 1);
  EXPECT_TRUE(f.Matches(1, *got));  // zstd f16 is bit-exact
  s.store->Flush();
  EXPECT_TRUE(s.top->Contains(f.keys[1]));
  EXPECT_EQ(EncodingOf(*s.top, f.keys[1], f.Meta(1)).codec, ChunkCodec::kRaw);
  EXPECT_EQ(s.store->stats().tiers[0].promotions_in, 1u);
  // Now served from the top tier.
  auto again = s.store->Fetch(f.keys[1], f.Meta(1), 0, &served).get();
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(served, 0);
  EXPECT_TRUE(f.Matches(1, *again));
  // Absent everywhere.
  auto none = s.store->Fetch(f.keys[0], f.Meta(0)).get();
  EXPECT_EQ(none.status().code(), StatusCode::kNotFound);
  EXPECT_EQ(s.store->Fetch(f.keys[0], f.Meta(0), 5).get().status().code(), StatusCode::kInvalidArgument);
}

TEST(CacheStore, EvictionDemotesIntoTheLowerTier) {
  Fixture f(6);
  const size_t chunk_pages = (f.Blob(0).size() + 1023) / 1024;
  // The top tier holds two chunks; the cold tier only gets demotions.
  TwoTiers s(2 * chunk_pages * 1024, 1 << 20, /*cold_write_through=*/false,
             {ChunkCodec::kLz4, ChunkDType::kInt8, 1});
  for (int i = 0; i < 6; ++i) {
    s.store->Store(f.keys[i], f.Meta(i), f.Blob(i));
    s.store->Flush();  // one at a time: the eviction order is then known
  }
  EXPECT_EQ(s.top->stats().chunks, 2u);
  EXPECT_EQ(s.cold->stats().chunks, 4u);
  const KvStoreStats st = s.store->stats();
  EXPECT_EQ(st.tiers[1].demotions_in, 4u);
  EXPECT_EQ(st.tiers[0].tier.evictions, 4u);
  // Every chunk is still available, the old ones int8 in the cold tier.
  const StoreLookup l = s.store->Lookup(f.keys);
  EXPECT_EQ(l.chunks, 6u);
  EXPECT_EQ(l.tier_of_chunk, (std::vector<int>{1, 1, 1, 1, 0, 0}));
  EXPECT_EQ(EncodingOf(*s.cold, f.keys[0], f.Meta(0)).dtype, ChunkDType::kInt8);
  auto got = s.store->Fetch(f.keys[0], f.Meta(0)).get();
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_TRUE(ChunkReader::Open(*got, f.Meta(0)).ok());
}

TEST(CacheStore, MoveClearPinAndHealth) {
  Fixture f(2);
  TwoTiers s(1 << 20, 1 << 20, /*cold_write_through=*/false);
  s.store->Store(f.keys[0], f.Meta(0), f.Blob(0));
  s.store->Flush();
  ASSERT_TRUE(s.top->Contains(f.keys[0]));
  ASSERT_FALSE(s.cold->Contains(f.keys[0]));
  ASSERT_TRUE(s.store->Move(f.keys[0], f.Meta(0), "host", "cold").ok());
  EXPECT_FALSE(s.top->Contains(f.keys[0]));
  EXPECT_TRUE(s.cold->Contains(f.keys[0]));
  EXPECT_EQ(EncodingOf(*s.cold, f.keys[0], f.Meta(0)).codec, ChunkCodec::kZstd);
  ASSERT_TRUE(s.store->Move(f.keys[0], f.Meta(0), "cold", "host", /*remove_source=*/false).ok());
  EXPECT_TRUE(s.top->Contains(f.keys[0]));
  EXPECT_TRUE(s.cold->Contains(f.keys[0]));
  EXPECT_EQ(s.store->Move(f.keys[1], f.Meta(1), "cold", "host").code(), StatusCode::kNotFound);
  EXPECT_EQ(s.store->Move(f.keys[0], f.Meta(0), "cold", "nowhere").code(), StatusCode::kNotFound);
  EXPECT_EQ(s.store->Move(f.keys[0], f.Meta(0), "cold", "cold").code(), StatusCode::kInvalidArgument);
  // A Move verifies: wrong expectations are corruption of the source copy.
  ChunkMeta wrong = f.Meta(0);
  wrong.tokens[3] += 1;
  EXPECT_EQ(s.store->Move(f.keys[0], wrong, "host", "cold").code(), StatusCode::kCorrupt);

  ASSERT_TRUE(s.store->Pin(f.keys[0], std::chrono::milliseconds(0), "cold").ok());  // default ttl
  EXPECT_EQ(s.cold->stats().pinned, 1u);
  ASSERT_TRUE(s.store->Unpin(f.keys[0]).ok());
  EXPECT_EQ(s.cold->stats().pinned, 0u);
  EXPECT_EQ(s.store->Pin(f.keys[1], std::chrono::seconds(1)).code(), StatusCode::kNotFound);
  EXPECT_EQ(s.store->Pin(f.keys[0], std::chrono::seconds(1), "nowhere").code(), StatusCode::kNotFound);

  EXPECT_EQ(s.store->n_tiers(), 2);
  EXPECT_EQ(s.store->tier_name(1), "cold");
  EXPECT_EQ(s.store->tier_index("cold"), 1);
  EXPECT_EQ(s.store->tier_index("disk"), -1);
  const auto health = s.store->Health();
  ASSERT_EQ(health.size(), 2u);
  EXPECT_TRUE(health[0].second.ok());

  ASSERT_TRUE(s.store->Clear("cold").ok());
  EXPECT_FALSE(s.cold->Contains(f.keys[0]));
  ASSERT_TRUE(s.store->Clear().ok());
  EXPECT_EQ(s.store->Lookup(f.keys).chunks, 0u);
  EXPECT_EQ(s.store->Clear("nowhere").code(), StatusCode::kNotFound);
}

TEST(CacheStore, CorruptChunksAreDroppedAndCounted) {
  Fixture f(2);
  TwoTiers s(1 << 20, 1 << 20, /*cold_write_through=*/true);
  s.store->Store(f.keys[0], f.Meta(0), f.Blob(0));
  s.store->Flush();
  s.store->ReportCorrupt(f.keys[0], 0);
  EXPECT_FALSE(s.top->Contains(f.keys[0]));
  EXPECT_TRUE(s.cold->Contains(f.keys[0]));
  EXPECT_EQ(s.store->stats().tiers[0].corrupt, 1u);
  s.store->ReportFallback();
  EXPECT_EQ(s.store->stats().fallbacks, 1u);
  s.store->ReportCorrupt(f.keys[0], 9);  // out of range: ignored

  // A damaged chunk in the cold tier: Fetch finds it fails verification on
  // the way up, drops it and reports no hit rather than bad KV.
  const ChunkBlob good = f.Blob(1);
  std::vector<uint8_t> bad(good.bytes().begin(), good.bytes().end());
  bad[130] ^= 0xff;  // a token id
  ASSERT_TRUE(s.cold->Put(f.keys[1], ChunkBlob::Adopt(bad)).get().ok());
  auto got = s.store->Fetch(f.keys[1], f.Meta(1)).get();
  EXPECT_EQ(got.status().code(), StatusCode::kCorrupt);
  EXPECT_FALSE(s.cold->Contains(f.keys[1]));
  EXPECT_FALSE(s.top->Contains(f.keys[1]));
  EXPECT_EQ(s.store->stats().tiers[1].corrupt, 1u);
}

TEST(CacheStore, ConcurrentStoresFetchesAndDestructionAreSafe) {
  Fixture f(8);
  std::vector<ChunkBlob> blobs;
  for (int i = 0; i < 8; ++i) blobs.push_back(f.Blob(i));
  const size_t chunk_pages = (blobs[0].size() + 1023) / 1024;
  TwoTiers s(3 * chunk_pages * 1024, 5 * chunk_pages * 1024, /*cold_write_through=*/true);
  std::vector<std::thread> threads;
  for (int w = 0; w < 3; ++w) {
    threads.emplace_back([&, w] {
      for (int r = 0; r < 30; ++r) {
        const int i = (r * 3 + w) % 8;
        s.store->Store(f.keys[i], f.Meta(i), blobs[i]);
        auto got = s.store->Fetch(f.keys[(i + 4) % 8], f.Meta((i + 4) % 8)).get();
        if (got.ok()) {
          EXPECT_TRUE(ChunkReader::Open(*got, f.Meta((i + 4) % 8)).ok());
        }
        (void)s.store->Lookup(f.keys);
      }
    });
  }
  for (auto& t : threads) t.join();
  s.store.reset();  // drains background work
}

}  // namespace
}  // namespace strata
