// PagedKvCache: the paged attention kernel against the contiguous one (bit
// for bit), block accounting, budget exhaustion and the prefix cache.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>

#include "kernels/attention.h"
#include "kernels/attention_paged.h"
#include "kv/paged_kv_cache.h"

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
