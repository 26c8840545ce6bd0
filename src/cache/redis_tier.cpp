#include "cache/redis_tier.h"

#include <hiredis/hiredis.h>
#include <signal.h>
#include <sys/time.h>

#include <algorithm>
#include <cstring>
#include <limits>

#include "cache/io_executor.h"

namespace strata {
namespace {

constexpr std::chrono::milliseconds kMinBackoff{50};
constexpr size_t kPipelineBatch = 64;  // EXISTS per round trip in CountPrefix

timeval ToTimeval(int ms) {
  timeval tv;
  tv.tv_sec = ms / 1000;
  tv.tv_usec = static_cast<suseconds_t>((ms % 1000) * 1000);
  return tv;
}

void IgnoreSigpipeOnce() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction old {};
    if (::sigaction(SIGPIPE, nullptr, &old) == 0 && old.sa_handler == SIG_DFL) ::signal(SIGPIPE, SIG_IGN);
  });
}

// SCAN's MATCH is a glob: a prefix with * ? [ ] or \ must be escaped.
std::string GlobEscape(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (c == '*' || c == '?' || c == '[' || c == ']' || c == '\\') out.push_back('\\');
    out.push_back(c);
  }
  return out;
}

}  // namespace

void RedisTier::ReplyDeleter::operator()(redisReply* r) const {
  if (r) freeReplyObject(r);
}

// Returns the connection to the pool when the call is done with it.
class RedisTier::Lease {
 public:
  Lease(RedisTier* t, Conn* c) : t_(t), c_(c) {}
  ~Lease() { t_->Release(c_); }
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;
  Conn* get() const { return c_; }

 private:
  RedisTier* t_;
  Conn* c_;
};

RedisTier::RedisTier(const RedisTierOptions& options) : options_(options) {}

RedisTier::~RedisTier() {
  io_.reset();  // finishes queued Gets/Puts (each bounded by the timeouts)
  for (auto& c : conns_) {
    if (c->ctx) redisFree(c->ctx);
  }
}

Expected<std::unique_ptr<RedisTier>> RedisTier::Open(const RedisTierOptions& options) {
  if (options.connections < 1 || options.connections > 64)
    return Status::InvalidArgument("redis tier: connections must be 1..64, got " + std::to_string(options.connections));
  if (options.connect_timeout_ms <= 0 || options.command_timeout_ms <= 0)
    return Status::InvalidArgument("redis tier: timeouts must be positive");
  if (options.unix_socket.empty() && (options.port <= 0 || options.port > 65535))
    return Status::InvalidArgument("redis tier: bad port " + std::to_string(options.port));
  if (options.ttl_seconds < 0) return Status::InvalidArgument("redis tier: ttl_seconds must be >= 0");
  IgnoreSigpipeOnce();
  std::unique_ptr<RedisTier> t(new RedisTier(options));
  for (int i = 0; i < options.connections; ++i) {
    t->conns_.push_back(std::make_unique<Conn>());
    t->free_.push_back(t->conns_.back().get());
  }
  t->conns_.push_back(std::make_unique<Conn>());
  t->conns_.back()->for_lookups = true;
  t->lookup_free_ = t->conns_.back().get();
  t->io_ = std::make_unique<IoExecutor>(options.connections);
  return t;
}

std::string RedisTier::RedisKey(const ChunkKey& key) const { return options_.key_prefix + key.Hex(); }

Status RedisTier::Connect(Conn* c) {
  const timeval ctv = ToTimeval(options_.connect_timeout_ms);
  redisContext* ctx = options_.unix_socket.empty()
                          ? redisConnectWithTimeout(options_.host.c_str(), options_.port, ctv)
                          : redisConnectUnixWithTimeout(options_.unix_socket.c_str(), ctv);
  if (!ctx) return TransportFailure(c, "cannot allocate a redis context");
  c->ctx = ctx;
  c->generation = generation_.load();
  if (ctx->err) return TransportFailure(c, "connecting");
  if (redisSetTimeout(ctx, ToTimeval(options_.command_timeout_ms)) != REDIS_OK)
    return TransportFailure(c, "setting the command timeout");
  return Status::Ok();
}

Status RedisTier::TransportFailure(Conn* c, const char* what) {
  std::string detail = c->ctx && c->ctx->errstr[0] ? c->ctx->errstr : "connection lost";
  if (c->ctx) redisFree(c->ctx);
  c->ctx = nullptr;
  generation_.fetch_add(1);
  {
    std::lock_guard<std::mutex> l(breaker_mu_);
    backoff_ = backoff_.count() == 0
                   ? kMinBackoff
                   : std::min(backoff_ * 2, std::chrono::milliseconds(options_.max_backoff_ms));
    breaker_until_ = Clock::now() + backoff_;
  }
  const std::string where =
      options_.unix_socket.empty() ? options_.host + ":" + std::to_string(options_.port) : options_.unix_socket;
  return Status::Unavailable("redis at " + where + ": " + what + ": " + detail);
}

void RedisTier::NoteSuccess() {
  std::lock_guard<std::mutex> l(breaker_mu_);
  backoff_ = std::chrono::milliseconds(0);
  breaker_until_ = Clock::time_point{};
}

Expected<RedisTier::Conn*> RedisTier::Acquire(Use use) {
  {
    std::lock_guard<std::mutex> l(breaker_mu_);
    const auto now = Clock::now();
    if (now < breaker_until_) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(breaker_until_ - now).count();
      return Status::Unavailable("redis is unavailable (last call failed; retrying in " + std::to_string(left) +
                                 " ms)");
    }
  }
  Conn* c = nullptr;
  {
    std::unique_lock<std::mutex> l(pool_mu_);
    const bool lookup = use == Use::kLookup;
    if (!pool_cv_.wait_for(l, std::chrono::milliseconds(options_.command_timeout_ms),
                           [&] { return !free_.empty() || (lookup && lookup_free_); }))
      return Status::Unavailable("redis: every connection stayed busy for " +
                                 std::to_string(options_.command_timeout_ms) + " ms");
    if (lookup && lookup_free_) {
      c = lookup_free_;
      lookup_free_ = nullptr;
    } else {
      c = free_.back();
      free_.pop_back();
    }
  }
  if (c->ctx && c->generation != generation_.load()) {
    redisFree(c->ctx);
    c->ctx = nullptr;
  }
  if (!c->ctx) {
    Status st = Connect(c);
    if (!st.ok()) {
      Release(c);
      return st;
    }
  }
  return c;
}

void RedisTier::Release(Conn* c) {
  {
    std::lock_guard<std::mutex> l(pool_mu_);
    if (c->for_lookups) {
      lookup_free_ = c;
    } else {
      free_.push_back(c);
    }
  }
  // Lookups and pool users wait on one condition: wake them all, or the one
  // woken could be a waiter that cannot take this connection.
  pool_cv_.notify_all();
}

Expected<RedisTier::Reply> RedisTier::Command(Conn* c, const std::vector<std::string_view>& argv) {
  std::vector<const char*> ptrs;
  std::vector<size_t> lens;
  for (std::string_view a : argv) {
    ptrs.push_back(a.data());
    lens.push_back(a.size());
  }
  void* raw = redisCommandArgv(c->ctx, static_cast<int>(argv.size()), ptrs.data(), lens.data());
  if (!raw) return TransportFailure(c, argv.empty() ? "command" : std::string(argv[0]).c_str());
  Reply r(static_cast<redisReply*>(raw));
  NoteSuccess();
  if (r->type == REDIS_REPLY_ERROR) {
    const std::string msg(r->str, r->len);
    if (msg.rfind("OOM", 0) == 0) return Status::ResourceExhausted("redis: " + msg);
    return Status::IoError("redis " + std::string(argv[0]) + ": " + msg);
  }
  return r;
}

size_t RedisTier::CountPrefix(std::span<const ChunkKey> keys) {
  if (keys.empty()) return 0;
  auto c = Acquire(Use::kLookup);
  if (!c.ok()) {
    std::lock_guard<std::mutex> l(mu_);
    ++stats_.get_failures;
    return 0;
  }
  Lease lease(this, *c);
  redisContext* ctx = (*c)->ctx;
  size_t n = 0;
  // Batches of pipelined EXISTS: one round trip per batch, and a miss early
  // in a long chain does not ask about the rest.
  for (size_t b = 0; b < keys.size(); b += kPipelineBatch) {
    const size_t e = std::min(keys.size(), b + kPipelineBatch);
    std::vector<std::string> names;
    names.reserve(e - b);
    for (size_t i = b; i < e; ++i) {
      names.push_back(RedisKey(keys[i]));
      const char* argv[2] = {"EXISTS", names.back().c_str()};
      const size_t lens[2] = {6, names.back().size()};
      if (redisAppendCommandArgv(ctx, 2, argv, lens) != REDIS_OK) {
        (void)TransportFailure(*c, "EXISTS");
        std::lock_guard<std::mutex> l(mu_);
        ++stats_.get_failures;
        return n;
      }
    }
    bool miss = false;
    for (size_t i = b; i < e; ++i) {
      void* raw = nullptr;
      if (redisGetReply(ctx, &raw) != REDIS_OK || !raw) {
        (void)TransportFailure(*c, "EXISTS");
        std::lock_guard<std::mutex> l(mu_);
        ++stats_.get_failures;
        return n;
      }
      Reply r(static_cast<redisReply*>(raw));
      if (!miss && r->type == REDIS_REPLY_INTEGER && r->integer == 1) {
        ++n;
      } else {
        miss = true;  // keep reading: every pipelined reply must be consumed
      }
    }
    NoteSuccess();
    if (miss) break;
  }
  return n;
}

bool RedisTier::Contains(const ChunkKey& key) { return CountPrefix(std::span<const ChunkKey>(&key, 1)) == 1; }

std::future<Expected<ChunkBlob>> RedisTier::Get(const ChunkKey& key) {
  return io_->Async<Expected<ChunkBlob>>([this, key]() -> Expected<ChunkBlob> {
    const auto t0 = Clock::now();
    auto fail = [this](Status st) -> Expected<ChunkBlob> {
      std::lock_guard<std::mutex> l(mu_);
      ++stats_.get_failures;
      return st;
    };
    auto c = Acquire();
    if (!c.ok()) return fail(c.status());
    Lease lease(this, *c);
    const std::string rkey = RedisKey(key);
    auto r = Command(*c, {"GET", rkey});
    if (!r.ok()) return fail(r.status());
    const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
    if ((*r)->type == REDIS_REPLY_NIL) {
      std::lock_guard<std::mutex> l(mu_);
      ++stats_.misses;
      return Status::NotFound("chunk " + key.Hex() + " is not in redis");
    }
    if ((*r)->type != REDIS_REPLY_STRING) return fail(Status::IoError("redis GET " + rkey + ": unexpected reply type"));
    // The blob views the reply's buffer and keeps the reply alive: no copy.
    std::shared_ptr<redisReply> reply(r->release(), ReplyDeleter{});
    const auto* data = reinterpret_cast<const uint8_t*>(reply->str);
    const size_t len = reply->len;
    {
      std::lock_guard<std::mutex> l(mu_);
      ++stats_.hits;
      stats_.bytes_read += len;
      stats_.get_seconds += secs;
    }
    return ChunkBlob::View(std::span<const uint8_t>(data, len), std::move(reply));
  });
}

std::future<Expected<ChunkBlob>> RedisTier::GetRange(const ChunkKey& key, ByteRange range) {
  return io_->Async<Expected<ChunkBlob>>([this, key, range]() -> Expected<ChunkBlob> {
    const auto t0 = Clock::now();
    auto fail = [this](Status st) -> Expected<ChunkBlob> {
      std::lock_guard<std::mutex> l(mu_);
      ++stats_.get_failures;
      return st;
    };
    if (range.length == 0) return ChunkBlob();
    if (range.offset > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) - range.length) {
      return fail(Status::InvalidArgument("byte range out of range"));
    }
    auto c = Acquire();
    if (!c.ok()) return fail(c.status());
    Lease lease(this, *c);
    const std::string rkey = RedisKey(key);
    const std::string start = std::to_string(range.offset);
    const std::string last = std::to_string(range.offset + range.length - 1);  // GETRANGE's end is inclusive
    auto r = Command(*c, {"GETRANGE", rkey, start, last});
    if (!r.ok()) return fail(r.status());
    if ((*r)->type != REDIS_REPLY_STRING) return fail(Status::IoError("redis GETRANGE " + rkey + ": unexpected reply type"));
    const size_t len = (*r)->len;
    if (len == 0) {
      // GETRANGE answers "" for a missing key (and for a range past the end
      // of a present one; either way there is nothing to load).
      std::lock_guard<std::mutex> l(mu_);
      ++stats_.misses;
      return Status::NotFound("chunk " + key.Hex() + " is not in redis");
    }
    if (len != range.length) {
      return fail(Status::Corrupt("redis " + rkey + ": range of " + std::to_string(range.length) + " bytes at " + start +
                                  " returned " + std::to_string(len) + " (truncated chunk)"));
    }
    std::shared_ptr<redisReply> reply(r->release(), ReplyDeleter{});
    const auto* data = reinterpret_cast<const uint8_t*>(reply->str);
    {
      std::lock_guard<std::mutex> l(mu_);
      if (range.offset == 0) ++stats_.hits;
      stats_.bytes_read += len;
      stats_.get_seconds += std::chrono::duration<double>(Clock::now() - t0).count();
    }
    return ChunkBlob::View(std::span<const uint8_t>(data, len), std::move(reply));
  });
}

std::future<Status> RedisTier::Put(const ChunkKey& key, ChunkBlob blob) {
  return io_->Async<Status>([this, key, blob = std::move(blob)]() -> Status {
    const auto t0 = Clock::now();
    auto fail = [this](Status st) {
      std::lock_guard<std::mutex> l(mu_);
      ++stats_.put_failures;
      return st;
    };
    auto c = Acquire();
    if (!c.ok()) return fail(c.status());
    Lease lease(this, *c);
    const std::string rkey = RedisKey(key);
    const std::string_view value(reinterpret_cast<const char*>(blob.bytes().data()), blob.size());
    std::vector<std::string_view> argv = {"SET", rkey, value, "NX"};
    const std::string ttl = std::to_string(options_.ttl_seconds);
    if (options_.ttl_seconds > 0) {
      argv.push_back("EX");
      argv.push_back(ttl);
    }
    auto r = Command(*c, argv);
    if (!r.ok()) return fail(r.status());
    // "OK": stored; nil: the key already existed (kept, and that is success).
    const bool stored = (*r)->type == REDIS_REPLY_STATUS;
    std::lock_guard<std::mutex> l(mu_);
    if (stored) {
      ++stats_.puts;
      stats_.bytes_written += blob.size();
    }
    stats_.put_seconds += std::chrono::duration<double>(Clock::now() - t0).count();
    return Status::Ok();
  });
}

Status RedisTier::Remove(const ChunkKey& key) {
  {
    std::lock_guard<std::mutex> l(mu_);
    pins_.erase(key);
  }
  STRATA_ASSIGN_OR_RETURN(Conn * c, Acquire());
  Lease lease(this, c);
  const std::string rkey = RedisKey(key);
  STRATA_ASSIGN_OR_RETURN(Reply r, Command(c, {"DEL", rkey}));
  if (r->type == REDIS_REPLY_INTEGER && r->integer == 0)
    return Status::NotFound("chunk " + key.Hex() + " is not in redis");
  return Status::Ok();
}

Status RedisTier::Clear() {
  {
    std::lock_guard<std::mutex> l(mu_);
    pins_.clear();
  }
  STRATA_ASSIGN_OR_RETURN(Conn * c, Acquire());
  Lease lease(this, c);
  const std::string pattern = GlobEscape(options_.key_prefix) + "*";
  std::string cursor = "0";
  do {
    STRATA_ASSIGN_OR_RETURN(Reply r, Command(c, {"SCAN", cursor, "MATCH", pattern, "COUNT", "1000"}));
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 || r->element[0]->type != REDIS_REPLY_STRING ||
        r->element[1]->type != REDIS_REPLY_ARRAY)
      return Status::IoError("redis SCAN: unexpected reply");
    cursor.assign(r->element[0]->str, r->element[0]->len);
    const redisReply* keys = r->element[1];
    if (keys->elements > 0) {
      // UNLINK frees the values off the server's main thread (chunks are MBs).
      std::vector<std::string_view> argv = {"UNLINK"};
      for (size_t i = 0; i < keys->elements; ++i) argv.emplace_back(keys->element[i]->str, keys->element[i]->len);
      STRATA_ASSIGN_OR_RETURN(Reply d, Command(c, argv));
    }
  } while (cursor != "0");
  return Status::Ok();
}

Status RedisTier::Pin(const ChunkKey& key, std::chrono::milliseconds ttl) {
  STRATA_ASSIGN_OR_RETURN(Conn * c, Acquire());
  Lease lease(this, c);
  const std::string rkey = RedisKey(key);
  STRATA_ASSIGN_OR_RETURN(Reply e, Command(c, {"EXISTS", rkey}));
  if (e->type != REDIS_REPLY_INTEGER || e->integer != 1)
    return Status::NotFound("chunk " + key.Hex() + " is not in redis");
  if (options_.ttl_seconds > 0) {
    const long long secs = std::max<long long>(1, (ttl.count() + 999) / 1000);
    const std::string s = std::to_string(secs);
    // GT: only ever lengthens the expiry (keys without one are left alone).
    STRATA_ASSIGN_OR_RETURN(Reply x, Command(c, {"EXPIRE", rkey, s, "GT"}));
  }
  std::lock_guard<std::mutex> l(mu_);
  auto& until = pins_[key];
  until = std::max(until, Clock::now() + ttl);
  return Status::Ok();
}

Status RedisTier::Unpin(const ChunkKey& key) {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (!pins_.erase(key)) return Status::NotFound("chunk " + key.Hex() + " is not pinned in redis");
  }
  if (options_.ttl_seconds > 0) {
    // Back to the normal lifetime (LT: never lengthens it).
    STRATA_ASSIGN_OR_RETURN(Conn * c, Acquire());
    Lease lease(this, c);
    const std::string rkey = RedisKey(key);
    const std::string s = std::to_string(options_.ttl_seconds);
    STRATA_ASSIGN_OR_RETURN(Reply x, Command(c, {"EXPIRE", rkey, s, "LT"}));
  }
  return Status::Ok();
}

void RedisTier::SetEvictionListener(EvictionListener listener) {
  std::lock_guard<std::mutex> l(mu_);
  listener_ = std::move(listener);
}

Status RedisTier::Health() {
  STRATA_ASSIGN_OR_RETURN(Conn * c, Acquire());
  Lease lease(this, c);
  STRATA_ASSIGN_OR_RETURN(Reply r, Command(c, {"PING"}));
  if (r->type != REDIS_REPLY_STATUS || std::string_view(r->str, r->len) != "PONG")
    return Status::Unavailable("redis PING: unexpected reply");
  return Status::Ok();
}

TierStats RedisTier::stats() const {
  std::lock_guard<std::mutex> l(mu_);
  TierStats s = stats_;
  s.capacity_bytes = 0;  // managed by the server (maxmemory)
  const auto now = Clock::now();
  s.pinned = 0;
  for (const auto& [k, until] : pins_) s.pinned += until > now ? 1 : 0;
  return s;
}

}  // namespace strata
