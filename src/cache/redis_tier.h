// RedisTier: the KV cache store's shared tier, chunks as Redis strings.
//
// Design choices:
// - One Redis string per chunk at key_prefix + key hex. Get = GET, Put = SET
//   NX [EX ttl] (an existing chunk is kept), Remove = DEL, CountPrefix = one
//   pipelined round of EXISTS, Clear = SCAN MATCH prefix* + UNLINK (never
//   FLUSHALL: the server may hold other data), Health = PING.
// - A small pool of blocking hiredis connections; Get/Put run on as many
//   I/O threads, so concurrent Gets do not serialize. Every connect and
//   command has a timeout (redisConnectWithTimeout + redisSetTimeout).
// - One more connection is reserved for lookups (CountPrefix, Contains),
//   which the engine thread makes while admitting a request: with only the
//   pool, write-through of large chunks or the GETRANGEs of a layer-wise load
//   could hold every connection, and the lookup would wait up to the command
//   timeout and then report a miss (a needless recompute). A lookup takes the
//   reserved connection, or any free pooled one if another lookup has it.
// - Circuit breaker: after a failed connect or command the tier answers
//   kUnavailable at once, without touching the network, until a backoff
//   (doubling from 50 ms to max_backoff_ms) has passed; then one call probes
//   again. A dead or SIGSTOPped server costs at most one timeout per backoff
//   period, and the engine falls back to recomputing meanwhile. A failure
//   also retires every pooled connection opened before it.
// - SIGPIPE: hiredis 0.14 writes with write(); the tier sets SIGPIPE to
//   SIG_IGN if it is still at SIG_DFL, so a server that dies mid-write is an
//   EPIPE error value, not a dead process.
// - Byte budget: Redis manages its own memory. Run the server with
//   `maxmemory <bytes>` and `maxmemory-policy allkeys-lru`; stats report
//   capacity 0 ("managed remotely") and no local eviction listener fires.
// - Pins: best effort. With ttl_seconds set, Pin extends the key's Redis TTL
//   to at least the pin (EXPIRE ... GT), so it cannot expire before the pin
//   ends; nothing stops allkeys-lru from dropping it under memory pressure.
//   The tier also keeps a local pin set (with expiry) for stats.
//
// Thread-safety: every method is thread-safe.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "cache/tier.h"

struct redisContext;
struct redisReply;

namespace strata {

class IoExecutor;

struct RedisTierOptions {
  std::string host = "127.0.0.1";
  int port = 6379;
  std::string unix_socket;             // used instead of host:port when set
  std::string key_prefix = "strata:kv:";
  int connect_timeout_ms = 200;
  int command_timeout_ms = 1000;       // per command (per socket read/write)
  int connections = 4;                 // pool size = I/O threads (+1 reserved for lookups)
  int ttl_seconds = 0;                 // 0: no expiry
  int max_backoff_ms = 1000;           // circuit breaker's longest wait
};

class RedisTier final : public Tier {
 public:
  // Does not need the server to be up: a tier whose server is down answers
  // kUnavailable and recovers once the server is back.
  static Expected<std::unique_ptr<RedisTier>> Open(const RedisTierOptions& options);
  ~RedisTier() override;

  std::string_view name() const override { return "redis"; }
  bool Contains(const ChunkKey& key) override;
  size_t CountPrefix(std::span<const ChunkKey> keys) override;
  std::future<Expected<ChunkBlob>> Get(const ChunkKey& key) override;
  // GETRANGE: only the range crosses the network.
  std::future<Expected<ChunkBlob>> GetRange(const ChunkKey& key, ByteRange range) override;
  std::future<Status> Put(const ChunkKey& key, ChunkBlob blob) override;
  Status Remove(const ChunkKey& key) override;
  Status Clear() override;
  Status Pin(const ChunkKey& key, std::chrono::milliseconds ttl) override;
  Status Unpin(const ChunkKey& key) override;
  // Redis evicts on its own (maxmemory-policy); the listener is kept but
  // never called.
  void SetEvictionListener(EvictionListener listener) override;
  Status Health() override;
  TierStats stats() const override;

  std::string RedisKey(const ChunkKey& key) const;

 private:
  using Clock = std::chrono::steady_clock;
  struct Conn {
    redisContext* ctx = nullptr;
    uint64_t generation = 0;  // generation_ when connected
    bool for_lookups = false;  // the reserved one: never taken by Get/Put
  };
  class Lease;
  struct ReplyDeleter {
    void operator()(redisReply* r) const;
  };
  using Reply = std::unique_ptr<redisReply, ReplyDeleter>;

  explicit RedisTier(const RedisTierOptions& options);
  // A connected connection, or kUnavailable (breaker open, connect failed,
  // every connection busy for longer than the command timeout). A lookup
  // may also take the reserved connection.
  enum class Use { kPool, kLookup };
  Expected<Conn*> Acquire(Use use = Use::kPool);
  void Release(Conn* c);
  Status Connect(Conn* c);
  // One command; a transport failure trips the breaker and drops the
  // connection, an error reply is returned as a status.
  Expected<Reply> Command(Conn* c, const std::vector<std::string_view>& argv);
  Status TransportFailure(Conn* c, const char* what);
  void NoteSuccess();

  RedisTierOptions options_;

  std::mutex pool_mu_;
  std::condition_variable pool_cv_;
  std::vector<std::unique_ptr<Conn>> conns_;
  std::vector<Conn*> free_;              // free pooled connections
  Conn* lookup_free_ = nullptr;          // the reserved one, when free

  std::mutex breaker_mu_;
  Clock::time_point breaker_until_{};
  std::chrono::milliseconds backoff_{0};
  // Bumped by every transport failure: connections made before it are
  // presumed dead too (a restarted server) and are reopened on next use,
  // so one failure does not become one per pooled connection.
  std::atomic<uint64_t> generation_{0};

  mutable std::mutex mu_;
  TierStats stats_;
  std::unordered_map<ChunkKey, Clock::time_point, ChunkKeyHash> pins_;
  EvictionListener listener_;

  std::unique_ptr<IoExecutor> io_;
};

}  // namespace strata
