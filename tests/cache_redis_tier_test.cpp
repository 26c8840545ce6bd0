#include "cache/redis_tier.h"

#include <gtest/gtest.h>

#include <array>
#include <chrono>
#include <future>
#include <random>
#include <thread>
#include <vector>

#include "redis_test_server.h"

namespace strata {
namespace {

using strata::testing::HaveRedisServer;
using strata::testing::RedisTestServer;
using Clock = std::chrono::steady_clock;

ChunkKey Key(uint64_t i) { return ChunkKey{0xabcdef0123456789ull ^ (i * 0x9e3779b97f4a7c15ull), i}; }

std::vector<uint8_t> Bytes(size_t n, uint32_t seed) {
  std::vector<uint8_t> v(n);
  std::mt19937 rng(seed);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

bool SameBytes(const ChunkBlob& b, const std::vector<uint8_t>& v) {
  return b.size() == v.size() && std::equal(v.begin(), v.end(), b.bytes().begin());
}

double Seconds(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

class RedisTierTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HaveRedisServer()) GTEST_SKIP() << "no " << strata::testing::kRedisServerBin;
    server_ = std::make_unique<RedisTestServer>();
    ASSERT_TRUE(server_->Start()) << "redis-server did not start on port " << server_->port();
  }

  std::unique_ptr<RedisTier> OpenTier(std::string prefix = "strata:test:", int ttl = 0) {
    RedisTierOptions o;
    o.port = server_->port();
    o.key_prefix = std::move(prefix);
    o.connect_timeout_ms = 200;
    o.command_timeout_ms = 300;
    o.connections = 3;
    o.ttl_seconds = ttl;
    o.max_backoff_ms = 200;
    auto t = RedisTier::Open(o);
    EXPECT_TRUE(t.ok()) << (t.ok() ? "" : t.status().ToString());
    return t.ok() ? std::move(*t) : nullptr;
  }

  std::unique_ptr<RedisTestServer> server_;
};

TEST_F(RedisTierTest, RoundTrip) {
  auto t = OpenTier();
  ASSERT_TRUE(t);
  EXPECT_EQ(t->name(), "redis");
  EXPECT_TRUE(t->Health().ok());
  EXPECT_FALSE(t->Contains(Key(1)));
  EXPECT_EQ(t->Get(Key(1)).get().status().code(), StatusCode::kNotFound);

  const auto a = Bytes(300000, 1);
  ASSERT_TRUE(t->Put(Key(1), ChunkBlob::Copy(a)).get().ok());
  // SET NX: an existing chunk is kept, and the Put succeeds.
  ASSERT_TRUE(t->Put(Key(1), ChunkBlob::Copy(Bytes(10, 2))).get().ok());
  EXPECT_TRUE(t->Contains(Key(1)));
  auto g = t->Get(Key(1)).get();
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  EXPECT_TRUE(SameBytes(*g, a));

  // Binary-safe: zero bytes and empty values survive.
  std::vector<uint8_t> zeros(1000, 0);
  ASSERT_TRUE(t->Put(Key(2), ChunkBlob::Copy(zeros)).get().ok());
  ASSERT_TRUE(t->Put(Key(3), ChunkBlob()).get().ok());
  EXPECT_TRUE(SameBytes(*t->Get(Key(2)).get(), zeros));
  EXPECT_EQ(t->Get(Key(3)).get()->size(), 0u);

  TierStats s = t->stats();
  EXPECT_EQ(s.puts, 3u);
  EXPECT_EQ(s.hits, 3u);
  EXPECT_EQ(s.misses, 1u);
  EXPECT_EQ(s.bytes_written, a.size() + zeros.size());
  EXPECT_EQ(s.capacity_bytes, 0u);

  ASSERT_TRUE(t->Remove(Key(1)).ok());
  EXPECT_EQ(t->Remove(Key(1)).code(), StatusCode::kNotFound);
  EXPECT_FALSE(t->Contains(Key(1)));
  ASSERT_TRUE(t->Clear().ok());
  EXPECT_FALSE(t->Contains(Key(2)));
  EXPECT_FALSE(t->Contains(Key(3)));
}

TEST_F(RedisTierTest, CountPrefixStopsAtFirstMissAcrossBatches) {
  auto t = OpenTier();
  ASSERT_TRUE(t);
  std::vector<ChunkKey> keys;
  for (uint64_t i = 0; i < 150; ++i) keys.push_back(Key(i));
  std::vector<std::future<Status>> puts;
  for (uint64_t i = 0; i < 100; ++i) puts.push_back(t->Put(keys[i], ChunkBlob::Copy(Bytes(100, 1))));
  for (uint64_t i = 120; i < 150; ++i) puts.push_back(t->Put(keys[i], ChunkBlob::Copy(Bytes(100, 1))));
  for (auto& p : puts) ASSERT_TRUE(p.get().ok());
  EXPECT_EQ(t->CountPrefix(keys), 100u);
  EXPECT_EQ(t->CountPrefix(std::span<const ChunkKey>(keys).subspan(120)), 30u);
  EXPECT_EQ(t->CountPrefix({}), 0u);
  // The connection is still in sync after an early stop.
  EXPECT_TRUE(t->Get(keys[5]).get().ok());
}

TEST_F(RedisTierTest, KeyPrefixIsolation) {
  auto a = OpenTier("strata:a:");
  auto b = OpenTier("strata:b:");
  // A prefix with glob characters must not match other prefixes in Clear.
  auto g = OpenTier("strata:*:");
  ASSERT_TRUE(a && b && g);
  ASSERT_TRUE(a->Put(Key(1), ChunkBlob::Copy(Bytes(10, 1))).get().ok());
  ASSERT_TRUE(b->Put(Key(2), ChunkBlob::Copy(Bytes(10, 2))).get().ok());
  ASSERT_TRUE(g->Put(Key(3), ChunkBlob::Copy(Bytes(10, 3))).get().ok());
  EXPECT_TRUE(a->Contains(Key(1)));
  EXPECT_FALSE(b->Contains(Key(1)));
  EXPECT_EQ(b->Get(Key(1)).get().status().code(), StatusCode::kNotFound);
  ASSERT_TRUE(g->Clear().ok());
  EXPECT_FALSE(g->Contains(Key(3)));
  EXPECT_TRUE(a->Contains(Key(1)));
  EXPECT_TRUE(b->Contains(Key(2)));
  ASSERT_TRUE(a->Clear().ok());
  EXPECT_FALSE(a->Contains(Key(1)));
  EXPECT_TRUE(b->Contains(Key(2)));
}

TEST_F(RedisTierTest, TwoTiersShareChunks) {
  auto a = OpenTier();
  auto b = OpenTier();
  ASSERT_TRUE(a && b);
  const auto bytes = Bytes(50000, 7);
  ASSERT_TRUE(a->Put(Key(7), ChunkBlob::Copy(bytes)).get().ok());
  auto got = b->Get(Key(7)).get();
  ASSERT_TRUE(got.ok());
  EXPECT_TRUE(SameBytes(*got, bytes));
}

TEST_F(RedisTierTest, PinsAndTtl) {
  auto t = OpenTier("strata:ttl:", /*ttl=*/100);
  ASSERT_TRUE(t);
  EXPECT_EQ(t->Pin(Key(1), std::chrono::seconds(5)).code(), StatusCode::kNotFound);
  ASSERT_TRUE(t->Put(Key(1), ChunkBlob::Copy(Bytes(10, 1))).get().ok());
  ASSERT_TRUE(t->Pin(Key(1), std::chrono::seconds(500)).ok());
  EXPECT_EQ(t->stats().pinned, 1u);
  // The pin lengthened the key's TTL beyond ttl_seconds.
  redisContext* c = redisConnect("127.0.0.1", server_->port());
  ASSERT_TRUE(c && !c->err);
  const std::string k = t->RedisKey(Key(1));
  auto* r = static_cast<redisReply*>(redisCommand(c, "TTL %s", k.c_str()));
  ASSERT_TRUE(r);
  EXPECT_GT(r->integer, 100);
  freeReplyObject(r);
  ASSERT_TRUE(t->Unpin(Key(1)).ok());
  EXPECT_EQ(t->stats().pinned, 0u);
  r = static_cast<redisReply*>(redisCommand(c, "TTL %s", k.c_str()));
  ASSERT_TRUE(r);
  EXPECT_LE(r->integer, 100);
  EXPECT_GT(r->integer, 0);
  freeReplyObject(r);
  redisFree(c);
}

TEST_F(RedisTierTest, ServerKilledMidRunThenRestarted) {
  auto t = OpenTier();
  ASSERT_TRUE(t);
  ASSERT_TRUE(t->Put(Key(1), ChunkBlob::Copy(Bytes(1000, 1))).get().ok());
  server_->Stop();

  auto t0 = Clock::now();
  auto g = t->Get(Key(1)).get();
  EXPECT_EQ(g.status().code(), StatusCode::kUnavailable) << g.status().ToString();
  EXPECT_EQ(t->Put(Key(2), ChunkBlob::Copy(Bytes(10, 2))).get().code(), StatusCode::kUnavailable);
  EXPECT_FALSE(t->Contains(Key(1)));
  EXPECT_EQ(t->Health().code(), StatusCode::kUnavailable);
  EXPECT_LT(Seconds(t0), 1.0);
  EXPECT_GE(t->stats().get_failures, 1u);
  EXPECT_GE(t->stats().put_failures, 1u);

  // Same port, fresh (empty) server: the tier reconnects on its own.
  ASSERT_TRUE(server_->Start());
  t0 = Clock::now();
  bool healthy = false;
  while (Seconds(t0) < 3.0 && !(healthy = t->Health().ok()))
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_TRUE(healthy);
  // Every pooled connection recovers, not just the one Health used.
  for (int i = 0; i < 6; ++i) {
    ASSERT_TRUE(t->Put(Key(10 + static_cast<uint64_t>(i)), ChunkBlob::Copy(Bytes(10, 3))).get().ok());
  }
  EXPECT_TRUE(t->Get(Key(12)).get().ok());
  EXPECT_EQ(t->Get(Key(1)).get().status().code(), StatusCode::kNotFound);  // the old server's data is gone
}

TEST_F(RedisTierTest, FrozenServerTimesOutInsteadOfHanging) {
  auto t = OpenTier();
  ASSERT_TRUE(t);
  ASSERT_TRUE(t->Put(Key(1), ChunkBlob::Copy(Bytes(1000, 1))).get().ok());
  server_->Freeze();

  // Several concurrent Gets: each bounded by the command timeout (300 ms),
  // later ones short-circuited by the breaker.
  auto t0 = Clock::now();
  std::vector<std::future<Expected<ChunkBlob>>> gets;
  for (int i = 0; i < 4; ++i) gets.push_back(t->Get(Key(1)));
  for (auto& g : gets) EXPECT_EQ(g.get().status().code(), StatusCode::kUnavailable);
  EXPECT_LT(Seconds(t0), 1.5);
  t0 = Clock::now();
  EXPECT_EQ(t->CountPrefix(std::array<ChunkKey, 1>{Key(1)}), 0u);
  EXPECT_EQ(t->Health().code(), StatusCode::kUnavailable);
  EXPECT_LT(Seconds(t0), 1.0);

  server_->Thaw();
  t0 = Clock::now();
  bool healthy = false;
  while (Seconds(t0) < 3.0 && !(healthy = t->Health().ok()))
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_TRUE(healthy);
  auto g = t->Get(Key(1)).get();
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  EXPECT_TRUE(SameBytes(*g, Bytes(1000, 1)));
}

TEST(RedisTierNoServerTest, NothingListeningIsUnavailableQuickly) {
  RedisTierOptions o;
  o.port = strata::testing::FreeTcpPort();
  o.connect_timeout_ms = 200;
  auto t = RedisTier::Open(o);
  ASSERT_TRUE(t.ok());
  const auto t0 = Clock::now();
  EXPECT_EQ((*t)->Get(Key(1)).get().status().code(), StatusCode::kUnavailable);
  EXPECT_EQ((*t)->Health().code(), StatusCode::kUnavailable);
  EXPECT_LT(Seconds(t0), 1.0);

  o.connections = 0;
  EXPECT_EQ(RedisTier::Open(o).status().code(), StatusCode::kInvalidArgument);
}

TEST_F(RedisTierTest, ConcurrentGetsUseThePool) {
  auto t = OpenTier();
  ASSERT_TRUE(t);
  for (uint64_t i = 0; i < 20; ++i) ASSERT_TRUE(t->Put(Key(i), ChunkBlob::Copy(Bytes(20000, static_cast<uint32_t>(i)))).get().ok());
  std::vector<std::thread> threads;
  std::atomic<int> bad{0};
  for (int th = 0; th < 4; ++th) {
    threads.emplace_back([&, th] {
      for (uint64_t i = 0; i < 20; ++i) {
        const uint64_t k = (i + static_cast<uint64_t>(th) * 5) % 20;
        auto g = t->Get(Key(k)).get();
        if (!g.ok() || !SameBytes(*g, Bytes(20000, static_cast<uint32_t>(k)))) bad.fetch_add(1);
        if (!t->Contains(Key(k))) bad.fetch_add(1);
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_EQ(t->stats().hits, 80u);
}

// An admission's lookup must not queue behind the I/O pool. CLIENT PAUSE WRITE
// holds every pooled connection inside a SET while a read (EXISTS) is still
// served, so a lookup that needed a pooled connection would wait for the pause
// to end (or, with the default timeouts, give up and report a miss).
TEST_F(RedisTierTest, LookupsDoNotWaitForABusyPool) {
  RedisTierOptions o;
  o.port = server_->port();
  o.key_prefix = "strata:busy:";
  o.command_timeout_ms = 10000;  // the paused SETs must wait, not time out
  o.connections = 2;
  auto t = RedisTier::Open(o);
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  std::vector<ChunkKey> stored;
  for (uint64_t i = 0; i < 4; ++i) {
    stored.push_back(Key(i));
    ASSERT_TRUE((*t)->Put(Key(i), ChunkBlob::Copy(Bytes(1000, static_cast<uint32_t>(i)))).get().ok());
  }
  redisContext* c = redisConnect("127.0.0.1", server_->port());
  ASSERT_TRUE(c && !c->err);
  auto* r = static_cast<redisReply*>(redisCommand(c, "CLIENT PAUSE 4000 WRITE"));
  ASSERT_TRUE(r && r->type == REDIS_REPLY_STATUS) << (r && r->str ? r->str : "no reply");
  freeReplyObject(r);
  std::vector<std::future<Status>> puts;  // more than the pool: every connection is inside a SET
  for (uint64_t i = 10; i < 14; ++i) puts.push_back((*t)->Put(Key(i), ChunkBlob::Copy(Bytes(1000, 7))));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  ASSERT_EQ(puts[0].wait_for(std::chrono::seconds(0)), std::future_status::timeout) << "the pause did not hold the SETs";

  const auto t0 = Clock::now();
  EXPECT_EQ((*t)->CountPrefix(stored), 4u);
  EXPECT_TRUE((*t)->Contains(Key(2)));
  EXPECT_FALSE((*t)->Contains(Key(12)));
  EXPECT_LT(Seconds(t0), 2.0) << "a lookup waited for a pooled connection";
  // Still paused, so the lookups did not get a connection freed by a finished SET.
  for (auto& p : puts) EXPECT_EQ(p.wait_for(std::chrono::seconds(0)), std::future_status::timeout);

  r = static_cast<redisReply*>(redisCommand(c, "CLIENT UNPAUSE"));
  ASSERT_TRUE(r);
  freeReplyObject(r);
  redisFree(c);
  for (auto& p : puts) EXPECT_TRUE(p.get().ok());
  EXPECT_EQ((*t)->CountPrefix(std::vector<ChunkKey>{Key(10), Key(11), Key(12), Key(13)}), 4u);
}

}  // namespace
}  // namespace strata
