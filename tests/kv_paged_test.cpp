// PagedKvCache: the paged attention kernel against the contiguous one (bit
// for bit), block accounting, budget exhaustion, the prefix cache and its
// read-only probe (also from other threads while the engine mutates it).
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <numeric>
#include <random>
#include <thread>

#include "kernels/attention.h"
#include "kernels/attention_paged.h"
#include "kv/paged_kv_cache.h"
#include "kv/virtual_kv_cache.h"
#include "test_util.h"

namespace strata {
namespace {

TEST(KvPagedTest, PagedAttentionIsBitIdenticalToContiguous) {
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (int threads : {1, 2}) {
    ThreadPool pool(threads);
    for (const AttentionShape shape : {AttentionShape{4, 2, 64}, AttentionShape{8, 1, 32}, AttentionShape{2, 2, 16}}) {
      const int64_t kvd = static_cast<int64_t>(shape.n_kv_heads) * shape.head_dim;
      const int64_t qd = static_cast<int64_t>(shape.n_q_heads) * shape.head_dim;
      for (int block_size : {16, 7, 64}) {
        for (const auto& [n_tokens, pos0] : {std::pair<int64_t, int64_t>{1, 0}, {1, 37}, {3, 300}, {7, 64}, {40, 0},
                                           {130, 5}, {1, 700}, {65, 640}}) {
          const int64_t n_pos = pos0 + n_tokens;
          std::vector<fp16_t> k(static_cast<size_t>(n_pos * kvd)), v(k.size());
          for (auto& x : k) x = Fp32ToFp16(nd(rng));
          for (auto& x : v) x = Fp32ToFp16(nd(rng));
          // The same rows scattered over shuffled blocks.
          const int64_t n_blocks = (n_pos + block_size - 1) / block_size;
          std::vector<int32_t> table(static_cast<size_t>(n_blocks));
          std::iota(table.begin(), table.end(), 0);
          std::shuffle(table.begin(), table.end(), rng);
          const int64_t bstride = 2 * block_size * kvd;  // K then V per block
          std::vector<fp16_t> pool_mem(static_cast<size_t>(n_blocks * bstride));
          PagedKvView view{pool_mem.data(), pool_mem.data() + block_size * kvd, table.data(), block_size, bstride, kvd};
          for (int64_t p = 0; p < n_pos; ++p) {
            std::memcpy(const_cast<fp16_t*>(view.KRow(p)), &k[static_cast<size_t>(p * kvd)], static_cast<size_t>(kvd) * 2);
            std::memcpy(const_cast<fp16_t*>(view.VRow(p)), &v[static_cast<size_t>(p * kvd)], static_cast<size_t>(kvd) * 2);
          }
          std::vector<float> q(static_cast<size_t>(n_tokens * qd));
          for (auto& x : q) x = nd(rng);
          std::vector<float> a(q.size()), b(q.size());
          const float scale = 1.0f / std::sqrt(static_cast<float>(shape.head_dim));
          AttentionCausal(q.data(), n_tokens, pos0, k.data(), v.data(), kvd, shape, scale, a.data(), pool);
          AttentionCausalPaged(q.data(), n_tokens, pos0, view, shape, scale, b.data(), pool);
          ASSERT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0)
              << "threads " << threads << " heads " << shape.n_q_heads << "/" << shape.n_kv_heads << " hd "
              << shape.head_dim << " block " << block_size << " tokens " << n_tokens << " pos0 " << pos0;
        }
      }
    }
  }
}

PagedKvOptions SmallOptions(int n_blocks, bool prefix = true) {
  PagedKvOptions o;
  o.n_layers = 2;
  o.kv_dim = 8;
  o.max_seqs = 4;
  o.max_positions = 256;
  o.block_size = 4;
  o.budget_bytes = static_cast<size_t>(n_blocks) * 2 * 2 * 4 * 8 * sizeof(fp16_t);
  o.prefix_caching = prefix;
  o.model_fingerprint = "test-model";
  return o;
}

TEST(KvPagedTest, BudgetBoundsBlocksAndCountersReturnToZero) {
  auto kv = PagedKvCache::Create(SmallOptions(5));
  ASSERT_TRUE(kv.ok()) << kv.status().ToString();
  PagedKvCache& c = **kv;
  EXPECT_EQ(c.n_blocks(), 5);
  const int a = c.AcquireSlot(), b = c.AcquireSlot();
  ASSERT_GE(a, 0);
  ASSERT_GE(b, 0);
  ASSERT_TRUE(c.Reserve(a, 9).ok());  // 3 blocks
  EXPECT_EQ(c.block_table(a).size(), 3u);
  EXPECT_EQ(c.used_bytes(), 3 * c.block_bytes());
  ASSERT_TRUE(c.Reserve(b, 8).ok());  // 2 blocks: pool full
  Status st = c.Reserve(b, 9);
  EXPECT_EQ(st.code(), StatusCode::kResourceExhausted) << st.ToString();
  EXPECT_NE(st.message().find("KV budget"), std::string::npos);
  EXPECT_EQ(c.AvailablePositions(), 0);
  EXPECT_EQ(c.Reserve(a, 257).code(), StatusCode::kOutOfRange);
  // Writes through the view land in distinct memory per position.
  for (int64_t p = 0; p < 9; ++p) c.View(a, 1).KRow(p)[0] = Fp32ToFp16(static_cast<float>(p));
  for (int64_t p = 0; p < 9; ++p) EXPECT_EQ(Fp16ToFp32(c.View(a, 1).KRow(p)[0]), static_cast<float>(p));
  c.Clear(a);
  c.Clear(b);
  EXPECT_EQ(c.used_bytes(), 0u);
  EXPECT_EQ(c.committed_bytes(), 0u);  // nothing was published
  EXPECT_EQ(c.stats().active_slots, 0);
  EXPECT_EQ(c.AvailablePositions(), 20);
  EXPECT_EQ(PagedKvCache::Create(SmallOptions(0)).status().code(), StatusCode::kInvalidArgument);
}

TEST(KvPagedTest, PrefixCacheHitsVerifiesSaltsAndEvictsLru) {
  auto kv = PagedKvCache::Create(SmallOptions(6));
  ASSERT_TRUE(kv.ok());
  PagedKvCache& c = **kv;
  std::vector<TokenId> prompt{1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  int s = c.AcquireSlot();
  EXPECT_EQ(c.AttachCachedPrefix(s, prompt, "", 9), 0);
  ASSERT_TRUE(c.Reserve(s, 10).ok());
  c.PublishPrefix(s, prompt);  // two full blocks published
  const auto first_table = c.block_table(s);
  c.Clear(s);
  EXPECT_EQ(c.used_bytes(), 0u);
  EXPECT_EQ(c.committed_bytes(), 2 * c.block_bytes());  // kept for reuse

  // Same prefix: both full blocks attach, at most max_positions of them.
  s = c.AcquireSlot();
  EXPECT_EQ(c.AttachCachedPrefix(s, prompt, "", 9), 8);
  EXPECT_EQ(c.block_table(s)[0], first_table[0]);
  EXPECT_EQ(c.block_table(s)[1], first_table[1]);
  const int t = c.AcquireSlot();
  EXPECT_EQ(c.AttachCachedPrefix(t, prompt, "", 7), 4);  // shared by two sequences
  EXPECT_EQ(c.used_bytes(), 2 * c.block_bytes());
  c.Clear(t);
  c.Clear(s);
  // Another salt, another model or a different token: no hit.
  s = c.AcquireSlot();
  EXPECT_EQ(c.AttachCachedPrefix(s, prompt, "tenant-b", 9), 0);
  std::vector<TokenId> other = prompt;
  other[5] = 99;
  c.Clear(s);
  s = c.AcquireSlot();
  EXPECT_EQ(c.AttachCachedPrefix(s, other, "", 9), 4);
  c.Clear(s);
  const KvMemoryStats st = c.stats();
  EXPECT_EQ(st.prefix_hit_tokens, 8u + 4u + 4u);

  // Pressure: allocating the whole pool evicts the cached blocks.
  s = c.AcquireSlot();
  ASSERT_TRUE(c.Reserve(s, 24).ok());
  EXPECT_EQ(c.stats().evictions, 2u);
  c.Clear(s);
  s = c.AcquireSlot();
  EXPECT_EQ(c.AttachCachedPrefix(s, prompt, "", 9), 0);
  c.Clear(s);
  c.Trim();
  EXPECT_EQ(c.committed_bytes(), 0u);
}

// Runs one request's prefix-cache life on `c`: attach, reserve, publish,
// free. Returns what was attached.
int64_t ServeOnce(PagedKvCache& c, const std::vector<TokenId>& prompt, const std::string& salt) {
  const int s = c.AcquireSlot();
  EXPECT_GE(s, 0);
  if (s < 0) return -1;
  const int64_t n = static_cast<int64_t>(prompt.size());
  const int64_t hit = c.AttachCachedPrefix(s, prompt, salt, n - 1);
  if (c.Reserve(s, n).ok()) c.PublishPrefix(s, prompt);
  c.Clear(s);
  return hit;
}

TEST(KvPagedTest, ProbeCountsVerifiedBlocksAndChangesNothing) {
  auto kv = PagedKvCache::Create(SmallOptions(6));
  ASSERT_TRUE(kv.ok());
  PagedKvCache& c = **kv;
  EXPECT_EQ(c.prefix_block_positions(), 4);
  const std::vector<TokenId> a{1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  const std::vector<TokenId> b{20, 21, 22, 23, 24, 25, 26, 27};
  EXPECT_EQ(c.ProbeCachedPrefix(a, ""), 0);

  // Published blocks count while their sequence still holds them.
  int s = c.AcquireSlot();
  ASSERT_EQ(c.AttachCachedPrefix(s, a, "", 9), 0);  // sets the sequence's salt
  ASSERT_TRUE(c.Reserve(s, 10).ok());
  c.PublishPrefix(s, a);
  EXPECT_EQ(c.ProbeCachedPrefix(a, ""), 8);  // two full blocks; the partial third never counts
  c.Clear(s);
  EXPECT_EQ(c.ProbeCachedPrefix(a, ""), 8);  // and after, from the LRU

  // Prefixes, extensions, mismatches and salts.
  EXPECT_EQ(c.ProbeCachedPrefix(std::span<const TokenId>(a).first(7), ""), 4);
  EXPECT_EQ(c.ProbeCachedPrefix(std::span<const TokenId>(a).first(3), ""), 0);
  std::vector<TokenId> longer = a;
  longer.insert(longer.end(), {11, 12, 13, 14, 15, 16});
  EXPECT_EQ(c.ProbeCachedPrefix(longer, ""), 8);
  std::vector<TokenId> tail_diff = a;
  tail_diff[5] = 99;
  EXPECT_EQ(c.ProbeCachedPrefix(tail_diff, ""), 4);
  std::vector<TokenId> head_diff = a;
  head_diff[0] = 99;
  EXPECT_EQ(c.ProbeCachedPrefix(head_diff, ""), 0);
  EXPECT_EQ(c.ProbeCachedPrefix(a, "tenant-b"), 0);
  EXPECT_EQ(c.ProbeCachedPrefix(b, ""), 0);
  EXPECT_EQ(c.ProbeCachedPrefix({}, ""), 0);

  // Under another salt the same tokens are another key space, both ways.
  EXPECT_EQ(ServeOnce(c, b, "tenant-b"), 0);
  EXPECT_EQ(c.ProbeCachedPrefix(b, "tenant-b"), 8);
  EXPECT_EQ(c.ProbeCachedPrefix(b, ""), 0);

  // Probing moves no counter, no byte and no LRU position. The LRU now holds
  // a's blocks (older) then b's; probing a many times must not make b the
  // eviction victim, as a real hit on a would.
  const KvMemoryStats before = c.stats();
  for (int i = 0; i < 50; ++i) ASSERT_EQ(c.ProbeCachedPrefix(a, ""), 8);
  const KvMemoryStats after = c.stats();
  EXPECT_EQ(after.prefix_query_tokens, before.prefix_query_tokens);
  EXPECT_EQ(after.prefix_hit_tokens, before.prefix_hit_tokens);
  EXPECT_EQ(after.committed_bytes, before.committed_bytes);
  EXPECT_EQ(after.cached_bytes, 4 * c.block_bytes());
  EXPECT_EQ(after.used_bytes, 0u);
  EXPECT_EQ(c.AvailablePositions(), 24);
  s = c.AcquireSlot();
  ASSERT_TRUE(c.Reserve(s, 16).ok());  // two free blocks, then the two least recently used
  EXPECT_EQ(c.stats().evictions, 2u);
  EXPECT_EQ(c.ProbeCachedPrefix(a, ""), 0);
  EXPECT_EQ(c.ProbeCachedPrefix(b, "tenant-b"), 8);
  c.Clear(s);

  // A block evicted and reused for other tokens no longer answers for the
  // old ones, and Trim empties the index.
  EXPECT_EQ(ServeOnce(c, a, ""), 0);
  EXPECT_EQ(c.ProbeCachedPrefix(a, ""), 8);
  c.Trim();
  EXPECT_EQ(c.ProbeCachedPrefix(a, ""), 0);
  EXPECT_EQ(c.ProbeCachedPrefix(b, "tenant-b"), 0);

  // Without prefix caching nothing is ever held.
  auto off = PagedKvCache::Create(SmallOptions(6, /*prefix=*/false));
  ASSERT_TRUE(off.ok());
  EXPECT_EQ((*off)->prefix_block_positions(), 0);
  EXPECT_EQ(ServeOnce(**off, a, ""), 0);
  EXPECT_EQ((*off)->ProbeCachedPrefix(a, ""), 0);
}

TEST(KvPagedTest, ProbeAgreesWithAttach) {
  // What the probe reports is what an unlimited attach then takes.
  auto kv = PagedKvCache::Create(SmallOptions(64));
  ASSERT_TRUE(kv.ok());
  PagedKvCache& c = **kv;
  std::mt19937 rng(3);
  std::vector<std::vector<TokenId>> prompts;
  for (int i = 0; i < 12; ++i) {
    std::vector<TokenId> p(static_cast<size_t>(5 + rng() % 30));
    // Few distinct token values: prompts share prefixes of many lengths.
    for (auto& t : p) t = static_cast<TokenId>(rng() % 3);
    prompts.push_back(std::move(p));
  }
  int64_t probed_total = 0;
  for (int round = 0; round < 200; ++round) {
    const auto& p = prompts[rng() % prompts.size()];
    const std::string salt = rng() % 4 == 0 ? "x" : "";
    const int64_t probed = c.ProbeCachedPrefix(p, salt);
    probed_total += probed;
    const int s = c.AcquireSlot();
    ASSERT_GE(s, 0);
    EXPECT_EQ(c.AttachCachedPrefix(s, p, salt, static_cast<int64_t>(p.size())), probed) << "round " << round;
    c.Clear(s);
    ServeOnce(c, p, salt);
  }
  EXPECT_GT(probed_total, 0);
}

TEST(KvPagedTest, ProbeFromOtherThreadsWhileTheEngineMutates) {
  // A small pool under steady pressure: every engine-side index mutation
  // (publish, eviction, Trim) races the probers.
  PagedKvOptions o = SmallOptions(12);
  auto kv = PagedKvCache::Create(o);
  ASSERT_TRUE(kv.ok());
  PagedKvCache& c = **kv;

  // Held by a live sequence for the whole test: never evicted, so every
  // probe must see all of it.
  const std::vector<TokenId> held{7, 7, 7, 7, 8, 8, 8, 8, 9};
  const int keeper = c.AcquireSlot();
  ASSERT_EQ(c.AttachCachedPrefix(keeper, held, "", 8), 0);
  ASSERT_TRUE(c.Reserve(keeper, 9).ok());
  c.PublishPrefix(keeper, held);
  // Never published: no probe may see any of it.
  const std::vector<TokenId> never{500, 501, 502, 503, 504, 505, 506, 507};

  std::mt19937 rng(11);
  std::vector<std::vector<TokenId>> churn;
  for (int i = 0; i < 16; ++i) {
    std::vector<TokenId> p(static_cast<size_t>(8 + rng() % 17));
    for (auto& t : p) t = static_cast<TokenId>(rng() % 4);
    churn.push_back(std::move(p));
  }

  std::atomic<bool> stop{false};
  std::atomic<int> bad{0};
  std::atomic<int64_t> probes{0};
  std::vector<std::thread> probers;
  for (int t = 0; t < 2; ++t) {
    probers.emplace_back([&, t] {
      size_t i = static_cast<size_t>(t);
      while (!stop.load(std::memory_order_relaxed)) {
        if (c.ProbeCachedPrefix(held, "") != 8) bad.fetch_add(1);
        if (c.ProbeCachedPrefix(never, "") != 0) bad.fetch_add(1);
        const auto& p = churn[i++ % churn.size()];
        const int64_t n = c.ProbeCachedPrefix(p, "");
        if (n < 0 || n % 4 != 0 || n > static_cast<int64_t>(p.size())) bad.fetch_add(1);
        probes.fetch_add(3, std::memory_order_relaxed);
      }
    });
  }
  const int rounds = testing::Sanitized() ? 3000 : 30000;
  int64_t attached = 0;
  for (int r = 0; r < rounds; ++r) {
    attached += std::max<int64_t>(ServeOnce(c, churn[rng() % churn.size()], ""), 0);
    if (r % 997 == 0) c.Trim();
  }
  stop = true;
  for (auto& th : probers) th.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_GT(probes.load(), 0);
  EXPECT_GT(attached, 0);           // the churn really hit the cache ...
  EXPECT_GT(c.stats().evictions, 0u);  // ... and really evicted
  EXPECT_EQ(c.ProbeCachedPrefix(held, ""), 8);
  c.Clear(keeper);
}

TEST(KvPagedTest, VirtualMemoryHoldsNoPrefix) {
  VirtualKvOptions o;
  o.n_layers = 1;
  o.kv_dim = 8;
  o.max_seqs = 1;
  o.max_positions = 64;
  o.budget_bytes = 1 << 20;
  auto kv = VirtualKvCache::Create(o);
  ASSERT_TRUE(kv.ok()) << kv.status().ToString();
  const std::vector<TokenId> p{1, 2, 3, 4, 5, 6, 7, 8};
  EXPECT_EQ((*kv)->ProbeCachedPrefix(p, ""), 0);
  EXPECT_EQ((*kv)->prefix_block_positions(), 0);
}

TEST(KvPagedTest, BlockKeysAreDeterministicAndChained) {
  const BlockKey fp = HashBytes("model"), salt = HashBytes("");
  std::vector<TokenId> t{1, 2, 3, 4};
  const BlockKey a = ChainBlockKey(BlockKey{}, t, fp, salt);
  EXPECT_EQ(a, ChainBlockKey(BlockKey{}, t, fp, salt));
  EXPECT_FALSE(a == ChainBlockKey(a, t, fp, salt));
  EXPECT_FALSE(a == ChainBlockKey(BlockKey{}, t, HashBytes("other"), salt));
  EXPECT_FALSE(a == ChainBlockKey(BlockKey{}, t, fp, HashBytes("x")));
  // Pinned: the key must not change between builds or machines (caches
  // outlive processes).
  EXPECT_EQ(a.lo, 0xc40c96e5e20955ebull) << std::hex << a.lo;
  EXPECT_EQ(a.hi, 0xf89cee4e640bb2f3ull) << std::hex << a.hi;
}

}  // namespace
}  // namespace strata
