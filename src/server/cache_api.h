// CacheApi: the KV cache control API over HTTP (mounted by OpenAiServer):
// lookups across engine memory's prefix cache and the KV cache store's tiers,
// control of the store (when `strata serve` runs with a --kv-store-* tier),
// and the store's Prometheus metrics.
//
//   POST /v1/cache/lookup  {"prompt": "..." | "tokens": [...], "cache_salt"?}
//   POST /v1/cache/pin     {prompt|tokens, "cache_salt"?, "tier"?, "ttl_seconds"?}
//   POST /v1/cache/unpin   {prompt|tokens, "cache_salt"?, "tier"?}
//   POST /v1/cache/clear   {"tier"?}
//   POST /v1/cache/move    {prompt|tokens, "cache_salt"?, "from", "to", "keep_source"?}
//   GET  /v1/cache/stats
//   GET  /v1/cache/health
//
// Requests and answers are JSON; errors have OpenAI's shape with a 4xx
// status. README.md ("KV cache store") documents every field. Without a
// store, lookup still answers (engine memory only) and every other call is
// 404.
//
// Thread-safety: Handle and AppendMetrics may run on any number of threads
// (the store and connector are thread-safe, and KV memory is only probed
// through ManagedKvCache::ProbeCachedPrefix, which is too).
#pragma once

#include <string>
#include <string_view>

#include "engine/kv_store_connector.h"
#include "kv/managed_kv_cache.h"
#include "model/model.h"

namespace strata {

struct CacheApiReply {
  int status = 200;
  std::string body;  // JSON
};

class CacheApi {
 public:
  // `kv`: the engine's KV memory, probed by lookup; may be null (lookup then
  // reports no engine tokens). `connector` may be null (no store
  // configured): lookup reports engine memory only, every other call
  // answers 404.
  CacheApi(const Model& model, const ManagedKvCache* kv, KvStoreConnector* connector, int64_t max_prompt_tokens);

  // `op`: lookup, pin, unpin, clear, move (POST) or stats, health (GET).
  CacheApiReply Handle(std::string_view op, std::string_view body);

  // Appends the store's and connector's metrics (nothing without a store).
  void AppendMetrics(std::string* out) const;

 private:
  CacheApiReply Lookup(std::string_view body_text);

  const Model& model_;
  const ManagedKvCache* kv_;
  KvStoreConnector* conn_;
  int64_t max_prompt_tokens_;
};

}  // namespace strata
