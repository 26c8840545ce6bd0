// VirtualKvCache (vAttention): on-demand page mapping, deferred reclamation,
// reclaiming idle slots under pressure, budget exhaustion, counters.
#include <gtest/gtest.h>

#include <fstream>
#include <random>
#include <string>

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
  o.map_ahead = false;  // the inline lookahead
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

TEST(KvVirtualTest, MapperMapsAheadSoReserveMapsNothing) {
  VirtualKvOptions o = Options(64);
  o.lookahead = 0;
  auto kv = VirtualKvCache::Create(o);
  ASSERT_TRUE(kv.ok());
  VirtualKvCache& c = **kv;
  const int s = c.AcquireSlot();
  ASSERT_TRUE(c.Reserve(s, 2).ok());  // 1 page per plane, synchronously
  EXPECT_EQ(c.stats().ahead_page_maps, 0u);
  c.PrepareAhead(s, 7);  // 4 pages per plane, in the background
  c.WaitForMapper();
  EXPECT_EQ(c.stats().ahead_page_maps, 12u);
  EXPECT_EQ(c.View(s, 0).capacity, 2);  // not reserved yet: the pass cannot see it
  const uint64_t maps = c.stats().page_maps;
  ASSERT_TRUE(c.Reserve(s, 7).ok());
  EXPECT_EQ(c.stats().page_maps, maps);  // nothing left to map on the engine thread
  EXPECT_EQ(c.View(s, 1).capacity, 8);
  // A hint for a slot that holds no sequence maps nothing.
  const int t = c.AcquireSlot();
  ASSERT_TRUE(c.Reserve(t, 1).ok());
  c.Clear(t);
  c.PrepareAhead(t, 20);
  c.WaitForMapper();
  EXPECT_EQ(c.BackedPositions(t), 2);
  // Out-of-range hints are ignored.
  c.PrepareAhead(-1, 4);
  c.PrepareAhead(99, 4);
  c.PrepareAhead(s, 1000);  // clamped to max_positions, and to the free pages:
  c.WaitForMapper();         // 44 free pages give s 11 more per plane, no eviction
  EXPECT_EQ(c.BackedPositions(s), 30);
  EXPECT_EQ(c.BackedPositions(t), 2);
  EXPECT_EQ(c.free_pages(), 0);
}

TEST(KvVirtualTest, ReserveTakesBackPagesMappedAhead) {
  VirtualKvOptions o = Options(16);  // 4 pages per plane in all
  o.lookahead = 0;
  auto kv = VirtualKvCache::Create(o);
  ASSERT_TRUE(kv.ok());
  VirtualKvCache& c = **kv;
  const int a = c.AcquireSlot();
  const int b = c.AcquireSlot();
  ASSERT_TRUE(c.Reserve(a, 2).ok());
  KvLayerView va = c.View(a, 1);
  for (int64_t j = 0; j < 1024; ++j) va.KRow(1)[j] = Fp32ToFp16(7.0f);
  c.PrepareAhead(a, 8);  // the whole pool
  c.WaitForMapper();
  EXPECT_EQ(c.free_pages(), 0);
  EXPECT_EQ(c.AvailablePositions(), 6);  // a's speculative pages count as available
  // b needs pages the mapper gave to a: taken back, a's reserved KV intact.
  ASSERT_TRUE(c.Reserve(b, 4).ok());
  EXPECT_EQ(c.BackedPositions(a), 2);
  EXPECT_EQ(Fp16ToFp32(c.View(a, 1).KRow(1)[5]), 7.0f);
  // Reserved positions are never taken back.
  EXPECT_EQ(c.Reserve(b, 8).code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(Fp16ToFp32(c.View(a, 1).KRow(1)[1023]), 7.0f);
}

// The engine thread reserves, writes and reads while the mapper maps ahead
// for every sequence: nothing written is lost or moved, under ASan too.
TEST(KvVirtualTest, MappingAheadNeverDisturbsLiveKv) {
  VirtualKvOptions o;
  o.n_layers = 3;
  o.kv_dim = 128;  // 256-byte rows: 16 positions per page
  o.max_seqs = 4;
  o.max_positions = 512;
  o.budget_bytes = size_t{4} * 6 * 32 * 4096 / 2;  // 4 sequences of 256 positions: the pool runs dry
  o.lookahead = 8;
  auto kv = VirtualKvCache::Create(o);
  ASSERT_TRUE(kv.ok());
  VirtualKvCache& c = **kv;
  auto value = [](int seq, int layer, int64_t pos) { return static_cast<float>((seq * 7 + layer * 3 + pos) % 1000); };
  std::vector<int> slots;
  std::vector<int64_t> len;
  for (int i = 0; i < 4; ++i) {
    slots.push_back(c.AcquireSlot());
    len.push_back(0);
  }
  std::mt19937 rng(5);
  for (int step = 0; step < 200; ++step) {
    for (size_t i = 0; i < slots.size(); ++i) {
      const int64_t grow = 1 + static_cast<int64_t>(rng() % 5);
      if (len[i] + grow > 256) continue;
      ASSERT_TRUE(c.Reserve(slots[i], len[i] + grow).ok()) << step;
      for (int l = 0; l < o.n_layers; ++l) {
        KvLayerView v = c.View(slots[i], l);
        ASSERT_GE(v.capacity, len[i] + grow);
        for (int64_t p = len[i]; p < len[i] + grow; ++p) {
          for (int64_t j = 0; j < o.kv_dim; ++j) v.KRow(p)[j] = Fp32ToFp16(value(slots[i], l, p));
          v.VRow(p)[0] = Fp32ToFp16(-value(slots[i], l, p));
        }
      }
      len[i] += grow;
      c.PrepareAhead(slots[i], len[i] + 5);
    }
    // Mostly the mapper races the loop; now and then it is sure to have run.
    if (step % 10 == 0) c.WaitForMapper();
  }
  c.WaitForMapper();
  EXPECT_GT(c.stats().ahead_page_maps, 0u);
  for (size_t i = 0; i < slots.size(); ++i) {
    for (int l = 0; l < o.n_layers; ++l) {
      KvLayerView v = c.View(slots[i], l);
      for (int64_t p = 0; p < len[i]; ++p) {
        ASSERT_EQ(Fp16ToFp32(v.KRow(p)[o.kv_dim - 1]), value(slots[i], l, p));
        ASSERT_EQ(Fp16ToFp32(v.VRow(p)[0]), -value(slots[i], l, p));
      }
    }
  }
  for (int s : slots) c.Clear(s);
  c.Trim();
  EXPECT_EQ(c.committed_bytes(), 0u);
}

int MappingCount() {
  std::ifstream f("/proc/self/maps");
  std::string line;
  int n = 0;
  while (std::getline(f, line)) ++n;
  return n;
}

// Sequences growing a position at a time map one page per plane at a time.
// The whole budget must be usable: with pages handed out at scattered file
// offsets each page was its own mapping, and a 1 GiB budget ran into
// vm.max_map_count (65530 mappings) at a quarter full.
TEST(KvVirtualTest, ALargeBudgetFillsWithoutRunningOutOfMappings) {
  VirtualKvOptions o;
  o.n_layers = 24;
  o.kv_dim = 128;  // 256-byte rows: 16 positions per page, 48 planes
  o.max_seqs = 16;
  o.max_positions = 8192;
  o.budget_bytes = size_t{384} << 20;  // 98304 pages, more than vm.max_map_count's default
  o.map_ahead = false;
  o.lookahead = 0;
  auto kv = VirtualKvCache::Create(o);
  ASSERT_TRUE(kv.ok()) << kv.status().ToString();
  VirtualKvCache& c = **kv;
  std::vector<int> slots;
  for (int i = 0; i < o.max_seqs; ++i) slots.push_back(c.AcquireSlot());
  const int before = MappingCount();
  Status st;
  int64_t pos = 1;
  for (; pos <= o.max_positions && st.ok(); ++pos) {
    for (int s : slots) {
      st = c.Reserve(s, pos);
      if (!st.ok()) break;
    }
  }
  // It stops because the budget is spent, not because mapping failed.
  EXPECT_EQ(st.code(), StatusCode::kResourceExhausted);
  EXPECT_NE(st.message().find("budget"), std::string::npos) << st.ToString();
  EXPECT_GE(c.committed_bytes(), o.budget_bytes - size_t{16} * 48 * 4096);
  // About two mappings per plane and slot (mapped pages, then the rest of
  // the reservation), not one per page.
  EXPECT_LT(MappingCount() - before, 4 * 48 * 16) << "after " << pos << " positions per sequence";
  for (int s : slots) c.Clear(s);
  c.Trim();
  EXPECT_EQ(c.committed_bytes(), 0u);
}

long MeminfoValue(const std::string& key) {
  std::ifstream f("/proc/meminfo");
  std::string k;
  long v = 0;
  while (f >> k >> v) {
    if (k == key + ":") return v;
    f.ignore(256, '\n');
  }
  return -1;
}

// Reserves `pages` 2 MiB pages for the test when there are fewer free and it
// may (root, a writable /proc/sys/vm/nr_hugepages), and puts the old value
// back afterwards, so the huge-page path runs wherever CI runs as root.
class HugePageReservation {
 public:
  explicit HugePageReservation(long pages) {
    if (MeminfoValue("HugePages_Free") >= pages) return;
    std::ifstream in(kPath);
    if (!(in >> old_)) return;
    std::ofstream out(kPath);
    if (!(out << old_ + pages << std::flush)) return;
    written_ = old_ + pages;
  }
  ~HugePageReservation() {
    // Only if nobody changed it since: never undo someone else's setting.
    long now = -1;
    if (written_ < 0 || !(std::ifstream(kPath) >> now) || now != written_) return;
    std::ofstream(kPath) << old_ << std::flush;
  }

 private:
  static constexpr const char* kPath = "/proc/sys/vm/nr_hugepages";
  long old_ = 0;
  long written_ = -1;
};

// 2 MiB pages need pages reserved by the OS (vm.nr_hugepages); without them
// the pool gives a clear error. With them, KV lives in huge pages.
TEST(KvVirtualTest, HugePagesWorkOrGiveAClearError) {
  VirtualKvOptions o;
  o.n_layers = 2;
  o.kv_dim = 1024;  // 2 KiB rows: 1024 positions per 2 MiB page
  o.max_seqs = 2;
  o.max_positions = 2048;
  o.budget_bytes = size_t{8} << 21;  // 8 huge pages
  o.huge_pages = true;
  const HugePageReservation reservation(8);
  const long free_huge = MeminfoValue("HugePages_Free");
  auto kv = VirtualKvCache::Create(o);
  if (!kv.ok()) {
    EXPECT_TRUE(kv.status().code() == StatusCode::kResourceExhausted || kv.status().code() == StatusCode::kIoError);
    EXPECT_NE(kv.status().message().find("huge"), std::string::npos) << kv.status().ToString();
    GTEST_SKIP() << "no 2 MiB pages reserved (HugePages_Free " << free_huge << "): " << kv.status().ToString();
  }
  VirtualKvCache& c = **kv;
  EXPECT_EQ(c.page_bytes(), size_t{2} << 20);
  EXPECT_EQ(c.granule_positions(), 1024);
  const int s = c.AcquireSlot();
  Status st = c.Reserve(s, 1500);  // 2 huge pages per plane
  if (!st.ok()) {
    // hugetlbfs sizes the file but hands out pages only at fault time.
    EXPECT_EQ(st.code(), StatusCode::kResourceExhausted);
    EXPECT_NE(st.message().find("huge pages"), std::string::npos) << st.ToString();
    GTEST_SKIP() << "too few free 2 MiB pages (" << free_huge << "): " << st.ToString();
  }
  KvLayerView v = c.View(s, 1);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(v.k) % (size_t{2} << 20), 0u);
  for (int64_t p = 0; p < 1500; ++p) v.VRow(p)[3] = Fp32ToFp16(static_cast<float>(p % 512));
  for (int64_t p = 0; p < 1500; ++p) ASSERT_EQ(Fp16ToFp32(v.VRow(p)[3]), static_cast<float>(p % 512));
  EXPECT_EQ(c.committed_bytes(), size_t{8} << 21);
  c.Clear(s);
  c.Trim();
  EXPECT_EQ(c.committed_bytes(), 0u);
}

}  // namespace
}  // namespace strata
