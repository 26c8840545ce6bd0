// Eviction policies: LRU order, S3-FIFO's scan resistance, pins.
#include <gtest/gtest.h>

#include <set>

#include "cache/eviction_policy.h"

namespace strata {
namespace {

ChunkKey K(uint64_t i) { return ChunkKey{i * 0x9e3779b97f4a7c15ull, i}; }

// A tiny tier simulator: `capacity` one-byte chunks; Access touches a held
// key or inserts it, evicting by the policy first.
struct Sim {
  std::unique_ptr<EvictionPolicy> policy;
  std::set<uint64_t> held;
  size_t capacity;
  std::set<uint64_t> pinned;
  uint64_t hits = 0;

  Sim(std::string_view name, size_t cap) : capacity(cap) {
    auto p = MakeEvictionPolicy(name);
    EXPECT_TRUE(p.ok());
    policy = std::move(*p);
  }
  void Access(uint64_t i) {
    if (held.count(i)) {
      ++hits;
      policy->Touch(K(i));
      return;
    }
    while (held.size() >= capacity) {
      auto v = policy->Victim([&](const ChunkKey& k) { return pinned.count(k.lo) != 0; });
      ASSERT_TRUE(v.has_value());
      ASSERT_TRUE(held.count(v->lo)) << "victim not held";
      ASSERT_FALSE(pinned.count(v->lo)) << "pinned victim";
      held.erase(v->lo);
      policy->Erase(*v);
    }
    held.insert(i);
    policy->Insert(K(i), 1);
  }
};

TEST(CacheEviction, UnknownPolicyIsInvalid) {
  auto p = MakeEvictionPolicy("clock");
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), StatusCode::kInvalidArgument);
}

TEST(CacheEviction, LruEvictsLeastRecentlyUsed) {
  auto p = MakeEvictionPolicy("lru").value();
  for (uint64_t i = 0; i < 4; ++i) p->Insert(K(i), 10);
  EXPECT_EQ(p->size(), 4u);
  p->Touch(K(0));
  EXPECT_EQ(p->Victim(nullptr), K(1));
  EXPECT_EQ(p->Victim([](const ChunkKey& k) { return k == K(1); }), K(2));
  p->Erase(K(1));
  p->Erase(K(1));  // erasing twice is harmless
  EXPECT_EQ(p->size(), 3u);
  EXPECT_EQ(p->Victim(nullptr), K(2));
  EXPECT_FALSE(p->Victim([](const ChunkKey&) { return true; }).has_value());
  p->Touch(K(99));  // unknown keys are ignored
  EXPECT_EQ(p->size(), 3u);
}

TEST(CacheEviction, EmptyPoliciesHaveNoVictim) {
  for (auto name : {"lru", "s3fifo"}) {
    auto p = MakeEvictionPolicy(name).value();
    EXPECT_FALSE(p->Victim(nullptr).has_value()) << name;
    EXPECT_EQ(p->size(), 0u);
  }
}

TEST(CacheEviction, S3FifoEvictsOneTimeKeysFirst) {
  auto p = MakeEvictionPolicy("s3fifo").value();
  for (uint64_t i = 0; i < 10; ++i) p->Insert(K(i), 1);
  p->Touch(K(0));  // hit while on probation: graduates instead of leaving
  auto v = p->Victim(nullptr);
  ASSERT_TRUE(v.has_value());
  EXPECT_EQ(*v, K(1));
  p->Erase(*v);
  EXPECT_EQ(p->size(), 9u);
}

// The scan-resistance property S3-FIFO exists for: a hot working set used
// over and over, then a long scan of chunks used once. LRU loses the hot set
// to the scan; S3-FIFO keeps it.
TEST(CacheEviction, S3FifoKeepsHotSetThroughScanLruDoesNot) {
  auto run = [](std::string_view name) {
    Sim sim(name, 100);
    for (int round = 0; round < 3; ++round) {
      for (uint64_t h = 0; h < 20; ++h) sim.Access(h);
    }
    for (uint64_t s = 1000; s < 1500; ++s) sim.Access(s);  // the scan
    sim.hits = 0;
    for (uint64_t h = 0; h < 20; ++h) sim.Access(h);
    return sim.hits;
  };
  EXPECT_EQ(run("s3fifo"), 20u);
  EXPECT_EQ(run("lru"), 0u);
}

TEST(CacheEviction, S3FifoGhostHitGoesToMain) {
  Sim sim("s3fifo", 10);
  sim.Access(7);
  for (uint64_t s = 100; s < 110; ++s) sim.Access(s);  // evicts 7 from probation
  ASSERT_FALSE(sim.held.count(7));
  sim.Access(7);  // back soon after: remembered by the ghost queue -> main
  for (uint64_t s = 200; s < 240; ++s) sim.Access(s);
  EXPECT_TRUE(sim.held.count(7)) << "a ghost hit should survive a scan";
}

TEST(CacheEviction, PinnedKeysAreNeverVictims) {
  for (auto name : {"lru", "s3fifo"}) {
    Sim sim(name, 8);
    for (uint64_t i = 0; i < 4; ++i) sim.pinned.insert(i);
    for (uint64_t i = 0; i < 200; ++i) sim.Access(i % 4 == 0 ? i / 4 % 4 : 1000 + i);
    for (uint64_t i = 0; i < 4; ++i) EXPECT_TRUE(sim.held.count(i)) << name << " key " << i;
    auto p = MakeEvictionPolicy(name).value();
    for (uint64_t i = 0; i < 5; ++i) {
      p->Insert(K(i), 1);
      p->Touch(K(i));
    }
    EXPECT_FALSE(p->Victim([](const ChunkKey&) { return true; }).has_value()) << name;
    // Pins on every key but one: that one is the victim, whatever its hits.
    auto v = p->Victim([](const ChunkKey& k) { return !(k == K(3)); });
    ASSERT_TRUE(v.has_value()) << name;
    EXPECT_EQ(*v, K(3)) << name;
  }
}

TEST(CacheEviction, RandomWorkloadKeepsPolicyAndTierInSync) {
  for (auto name : {"lru", "s3fifo"}) {
    Sim sim(name, 32);
    uint64_t x = 12345;
    for (int i = 0; i < 20000; ++i) {
      x = x * 6364136223846793005ull + 1442695040888963407ull;
      const uint64_t k = (x >> 33) % ((x >> 20) % 4 == 0 ? 1000 : 40);
      sim.Access(k);
      if (i % 97 == 0 && !sim.held.empty()) {  // an explicit Remove now and then
        const uint64_t r = *sim.held.begin();
        sim.held.erase(r);
        sim.policy->Erase(K(r));
      }
      ASSERT_EQ(sim.policy->size(), sim.held.size()) << name;
    }
    EXPECT_GT(sim.hits, 0u);
  }
}

}  // namespace
}  // namespace strata
