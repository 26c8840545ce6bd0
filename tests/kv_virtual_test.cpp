// VirtualKvCache (vAttention): on-demand page mapping, deferred reclamation,
// reclaiming idle slots under pressure, budget exhaustion, counters.
#include <gtest/gtest.h>

#include "kv/virtual_kv_cache.h"

namespace strata {
namespace {

// kv_dim 1024 fp16 = 2 KiB rows: two positions per 4 KiB page per plane.
VirtualKvOptions Options(int64_t pages) {
  VirtualKvOptions o;
  o.n_layers = 2;
  o.kv_dim = 1024;
  o.max_seqs = 3;
  o.max_positions = 64;
  o.budget_bytes = static_cast<size_t>(pages) * 4096;
  o.lookahead = 0;
  return o;
}

TEST(KvVirtualTest, MapsOnDemandAndKeepsRangesContiguous) {
  auto kv = VirtualKvCache::Create(Options(32));
  ASSERT_TRUE(kv.ok()) << kv.status().ToString();
  VirtualKvCache& c = **kv;
  ASSERT_EQ(c.page_bytes(), 4096u);
  EXPECT_EQ(c.granule_positions(), 2);
  const int s = c.AcquireSlot();
  ASSERT_TRUE(c.Reserve(s, 3).ok());  // 2 pages per plane, 4 planes
  EXPECT_EQ(c.committed_bytes(), 8u * 4096);
  EXPECT_EQ(c.used_bytes(), 8u * 4096);
  const KvLayerView v = c.View(s, 1);
  EXPECT_EQ(v.block_table, nullptr);
  EXPECT_EQ(v.capacity, 4);
  for (int64_t p = 0; p < 4; ++p) {
    for (int64_t j = 0; j < 1024; ++j) {
      v.KRow(p)[j] = Fp32ToFp16(static_cast<float>(p));
      v.VRow(p)[j] = Fp32ToFp16(static_cast<float>(-p));
    }
  }
  EXPECT_EQ(Fp16ToFp32(v.k[3 * 1024 + 5]), 3.0f);  // contiguous addressing
  EXPECT_EQ(Fp16ToFp32(v.v[2 * 1024]), -2.0f);
  EXPECT_EQ(c.stats().page_maps, 8u);
}

TEST(KvVirtualTest, DeferredReclamationReusesPagesAndReclaimsIdleSlots) {
  auto kv = VirtualKvCache::Create(Options(16));  // 4 pages per plane in all
  ASSERT_TRUE(kv.ok());
  VirtualKvCache& c = **kv;
  const int a = c.AcquireSlot();
  ASSERT_TRUE(c.Reserve(a, 4).ok());  // 8 pages
  c.Clear(a);
  EXPECT_EQ(c.used_bytes(), 0u);
  EXPECT_EQ(c.committed_bytes(), 8u * 4096);  // deferred: still mapped
  // The next sequence gets the warm slot and needs no mapping call.
  const int b = c.AcquireSlot();
  EXPECT_EQ(b, a);
  EXPECT_EQ(c.BackedPositions(b), 4);
  const uint64_t maps = c.stats().page_maps;
  ASSERT_TRUE(c.Reserve(b, 4).ok());
  EXPECT_EQ(c.stats().page_maps, maps);
  c.Clear(b);
  // Two more sequences: the second has to take the idle slot's pages.
  const int x = c.AcquireSlot();
  ASSERT_TRUE(c.Reserve(x, 4).ok());
  const int y = c.AcquireSlot();
  ASSERT_NE(x, y);
  ASSERT_TRUE(c.Reserve(y, 4).ok());
  EXPECT_EQ(c.committed_bytes(), 16u * 4096);
  // Pool exhausted and no idle slot left: a clear error, nothing leaks.
  Status st = c.Reserve(y, 6);
  EXPECT_EQ(st.code(), StatusCode::kResourceExhausted) << st.ToString();
  EXPECT_EQ(c.Reserve(y, 65).code(), StatusCode::kOutOfRange);
  c.Clear(x);
  c.Clear(y);
  EXPECT_EQ(c.used_bytes(), 0u);
  EXPECT_EQ(c.AvailablePositions(), 8);
  c.Trim();
  EXPECT_EQ(c.committed_bytes(), 0u);
  EXPECT_EQ(c.free_pages(), 16);
  EXPECT_EQ(c.stats().active_slots, 0);
}

TEST(KvVirtualTest, LookaheadMapsAheadOfNeed) {
  VirtualKvOptions o = Options(64);
  o.lookahead = 4;
  auto kv = VirtualKvCache::Create(o);
  ASSERT_TRUE(kv.ok());
  VirtualKvCache& c = **kv;
  const int s = c.AcquireSlot();
  ASSERT_TRUE(c.Reserve(s, 1).ok());
  EXPECT_EQ(c.View(s, 0).capacity, 6);  // 1 + 4 positions -> 3 pages
  const uint64_t maps = c.stats().page_maps;
  ASSERT_TRUE(c.Reserve(s, 5).ok());  // already mapped ahead
  EXPECT_GT(c.stats().page_maps, maps);  // and maps further ahead again
  EXPECT_EQ(VirtualKvCache::Create(Options(2)).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace strata
