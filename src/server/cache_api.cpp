#include "server/cache_api.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <optional>
#include <vector>

namespace strata {

using json = nlohmann::json;

namespace {

std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

CacheApiReply Error(int status, const std::string& message, const std::string& param = "",
                    const std::string& code = "invalid_value", const std::string& type = "invalid_request_error") {
  json err = {{"message", message}, {"type", type}, {"param", nullptr}, {"code", nullptr}};
  if (!param.empty()) err["param"] = param;
  if (!code.empty()) err["code"] = code;
  return CacheApiReply{status, Dump(json{{"error", err}})};
}

// A store operation that failed for a reason other than the client's input.
CacheApiReply StoreError(const Status& st) {
  const bool down = st.code() == StatusCode::kUnavailable || st.code() == StatusCode::kIoError;
  return Error(down ? 503 : 500, st.ToString(), "", down ? "store_unavailable" : "store_error", "server_error");
}

CacheApiReply Ok(const json& j) { return CacheApiReply{200, Dump(j)}; }

// The request's tokens: "prompt" (text, tokenized like /v1/completions) or
// "tokens" (ids); exactly one.
std::optional<CacheApiReply> ParseTokens(const json& body, const Model& model, std::vector<TokenId>* out) {
  const auto p = body.find("prompt");
  const auto t = body.find("tokens");
  const bool has_p = p != body.end() && !p->is_null();
  const bool has_t = t != body.end() && !t->is_null();
  if (has_p == has_t) return Error(400, "give exactly one of 'prompt' (text) or 'tokens' (token ids)", has_p ? "tokens" : "prompt");
  if (has_p) {
    if (!p->is_string()) return Error(400, "'prompt' must be a string (use 'tokens' for token ids)", "prompt");
    EncodeOptions eo;
    eo.add_bos = true;
    eo.add_eos = false;
    auto ids = model.tokenizer().Encode(p->get<std::string>(), eo);
    if (!ids.ok()) return Error(400, ids.status().message(), "prompt");
    *out = std::move(*ids);
  } else {
    if (!t->is_array()) return Error(400, "'tokens' must be an array of token ids", "tokens");
    const int64_t vocab = model.config().vocab_size;
    out->reserve(t->size());
    for (const json& v : *t) {
      if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= vocab) {
        return Error(400, "token ids in 'tokens' must be integers in [0, " + std::to_string(vocab) + ")", "tokens");
      }
      out->push_back(static_cast<TokenId>(v.get<int64_t>()));
    }
  }
  if (out->empty()) return Error(400, "the prompt is empty", has_p ? "prompt" : "tokens");
  return std::nullopt;
}

// The request body: a JSON object (empty text counts as {}).
std::optional<CacheApiReply> ParseBody(std::string_view text, json* body) {
  if (text.empty()) {
    *body = json::object();
  } else {
    *body = json::parse(text.begin(), text.end(), nullptr, false);
    if (body->is_discarded()) return Error(400, "the request body is not valid JSON", "", "invalid_json");
  }
  if (!body->is_object()) return Error(400, "the request body must be a JSON object", "", "invalid_json");
  return std::nullopt;
}

// ParseTokens plus the server's prompt length limit (0: none).
std::optional<CacheApiReply> ParsePrompt(const json& body, const Model& model, int64_t max_prompt_tokens,
                                         std::vector<TokenId>* out) {
  if (auto e = ParseTokens(body, model, out)) return e;
  if (max_prompt_tokens > 0 && static_cast<int64_t>(out->size()) > max_prompt_tokens) {
    return Error(400, "the prompt has " + std::to_string(out->size()) + " tokens but at most " +
                          std::to_string(max_prompt_tokens) + " are accepted", body.contains("tokens") ? "tokens" : "prompt",
                 "context_length_exceeded");
  }
  return std::nullopt;
}

std::optional<CacheApiReply> GetString(const json& body, const char* key, std::string* out) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return std::nullopt;
  if (!it->is_string()) return Error(400, std::string("'") + key + "' must be a string", key);
  *out = it->get<std::string>();
  return std::nullopt;
}

std::string TierList(KvStore& store) {
  std::string s;
  for (int i = 0; i < store.n_tiers(); ++i) s += (i ? ", " : "") + std::string(store.tier_name(i));
  return s;
}

// A tier name field: "" (absent) allowed only when `optional`.
std::optional<CacheApiReply> GetTier(const json& body, const char* key, KvStore& store, bool optional, std::string* out) {
  if (auto e = GetString(body, key, out)) return e;
  if (out->empty()) {
    if (optional) return std::nullopt;
    return Error(400, std::string("'") + key + "' is required: one of " + TierList(store), key);
  }
  if (store.tier_index(*out) < 0) {
    return Error(400, std::string("'") + key + "': no tier named '" + *out + "' (this server has " + TierList(store) + ")", key);
  }
  return std::nullopt;
}

std::string EncodingName(const ChunkEncoding& e) {
  std::string s(ChunkCodecName(e.codec));
  if (e.dtype != ChunkDType::kF16) {
    s += ',';
    s += ChunkDTypeName(e.dtype);
  }
  return s;
}

}  // namespace

CacheApi::CacheApi(const Model& model, const ManagedKvCache* kv, KvStoreConnector* connector, int64_t max_prompt_tokens)
    : model_(model), kv_(kv), conn_(connector), max_prompt_tokens_(max_prompt_tokens) {}

CacheApiReply CacheApi::Lookup(std::string_view body_text) {
  json body;
  if (auto e = ParseBody(body_text, &body)) return *e;
  std::vector<TokenId> tokens;
  if (auto e = ParsePrompt(body, model_, max_prompt_tokens_, &tokens)) return *e;
  std::string salt;
  if (auto e = GetString(body, "cache_salt", &salt)) return *e;

  // Engine memory first: a probe reads the prefix index without touching LRU
  // order or references, so asking never changes what gets evicted.
  const int64_t engine_tokens = kv_ ? kv_->ProbeCachedPrefix(tokens, salt) : 0;
  json r = {{"prompt_tokens", tokens.size()},
            {"engine_tokens", engine_tokens},
            {"engine_memory", {{"kind", kv_ ? kv_->kind() : "none"},
                               {"block_tokens", kv_ ? kv_->prefix_block_positions() : 0}}}};
  int64_t store_tokens = 0;
  json tiers = json::array();
  if (conn_) {
    const int64_t C = conn_->chunk_tokens();
    const StorePrefixLookup s = conn_->LookupPrefix(tokens, salt);
    for (const StoreTierTokens& t : s.per_tier) tiers.push_back({{"tier", t.tier}, {"tokens", t.tokens}, {"chunks", t.tokens / C}});
    store_tokens = s.tokens;
    r["chunk_tokens"] = C;
    r["full_chunk_tokens"] = s.chunk_tokens;
  }
  r["cached_tokens"] = store_tokens;
  r["tiers"] = std::move(tiers);
  // Both figures are prefixes of the same prompt, so together they cover the
  // longer one (the scheduler attaches engine blocks, then loads the rest).
  r["longest_cached_tokens"] = std::max(engine_tokens, store_tokens);
  return Ok(r);
}

CacheApiReply CacheApi::Handle(std::string_view op, std::string_view body_text) {
  if (op == "lookup") return Lookup(body_text);
  if (!conn_) {
    return Error(404, "no KV cache store is configured (start strata serve with --kv-store-host-bytes, --kv-store-disk or "
                      "--kv-store-redis)", "", "kv_store_disabled");
  }
  KvStore& store = conn_->store();
  const int64_t C = conn_->chunk_tokens();

  if (op == "stats") {
    const KvStoreStats s = store.stats();
    const KvStoreConnectorCounters c = conn_->counters();
    json tiers = json::array();
    for (const KvStoreTierStats& t : s.tiers) {
      const uint64_t gets = t.tier.hits + t.tier.misses;
      tiers.push_back({{"tier", t.name},
                       {"encoding", EncodingName(t.encoding)},
                       {"chunks", t.tier.chunks},
                       {"pinned_chunks", t.tier.pinned},
                       {"used_bytes", t.tier.used_bytes},
                       {"capacity_bytes", t.tier.capacity_bytes},
                       {"hits", t.tier.hits},
                       {"misses", t.tier.misses},
                       {"hit_rate", gets ? static_cast<double>(t.tier.hits) / static_cast<double>(gets) : 0.0},
                       {"puts", t.tier.puts},
                       {"put_failures", t.tier.put_failures},
                       {"get_failures", t.tier.get_failures},
                       {"evictions", t.tier.evictions},
                       {"bytes_read", t.tier.bytes_read},
                       {"bytes_written", t.tier.bytes_written},
                       {"get_seconds", t.tier.get_seconds},
                       {"put_seconds", t.tier.put_seconds},
                       {"promotions_in", t.promotions_in},
                       {"demotions_in", t.demotions_in},
                       {"corrupt_chunks", t.corrupt}});
    }
    json loaded = json::object();
    for (const StoreTierTokens& t : c.loaded_tokens_per_tier) loaded[t.tier] = t.tokens;
    return Ok({{"chunk_tokens", C},
               {"tiers", tiers},
               {"store", {{"lookups", s.lookups}, {"lookup_chunks", s.lookup_chunks}, {"hit_chunks", s.hit_chunks},
                          {"stores", s.stores}, {"store_failures", s.store_failures}, {"fallbacks", s.fallbacks}}},
               {"engine", {{"lookups", c.lookups}, {"loads_started", c.loads_started}, {"loads_completed", c.loads_completed},
                           {"loads_cancelled", c.loads_cancelled}, {"planned_tokens", c.planned_tokens},
                           {"loaded_tokens", c.loaded_tokens}, {"loaded_tokens_by_tier", loaded},
                           {"fallbacks", c.fallbacks}, {"fallback_tokens", c.fallback_tokens},
                           {"corrupt_chunks", c.corrupt_chunks}, {"missing_chunks", c.missing_chunks},
                           {"failed_fetches", c.failed_fetches}, {"timed_out_fetches", c.timed_out_fetches},
                           {"stored_chunks", c.stored_chunks}, {"store_encode_failures", c.store_encode_failures},
                           {"stored_decode_chunks", c.stored_decode_chunks}, {"fetch_seconds", c.fetch_seconds},
                           {"load_seconds", c.load_seconds}, {"layer_wait_seconds", c.layer_wait_seconds},
                           {"discarded_passes", c.discarded_passes}}}});
  }
  if (op == "health") {
    json tiers = json::array();
    bool all_ok = true;
    for (const auto& [name, st] : store.Health()) {
      json t = {{"tier", name}, {"ok", st.ok()}};
      if (!st.ok()) {
        all_ok = false;
        t["error"] = st.ToString();
      }
      tiers.push_back(std::move(t));
    }
    return CacheApiReply{all_ok ? 200 : 503, Dump({{"status", all_ok ? "ok" : "degraded"}, {"tiers", tiers}})};
  }

  json body;
  if (auto e = ParseBody(body_text, &body)) return *e;

  if (op == "clear") {
    std::string tier;
    if (auto e = GetTier(body, "tier", store, true, &tier)) return *e;
    if (Status st = store.Clear(tier); !st.ok()) return StoreError(st);
    json cleared = json::array();
    for (int i = 0; i < store.n_tiers(); ++i) {
      if (tier.empty() || store.tier_name(i) == tier) cleared.push_back(std::string(store.tier_name(i)));
    }
    return Ok({{"cleared", cleared}});
  }

  if (op != "pin" && op != "unpin" && op != "move") {
    return Error(404, "no cache operation '" + std::string(op) + "'", "", "not_found");
  }
  std::vector<TokenId> tokens;
  if (auto e = ParsePrompt(body, model_, max_prompt_tokens_, &tokens)) return *e;
  std::string salt;
  if (auto e = GetString(body, "cache_salt", &salt)) return *e;
  const size_t n_full = tokens.size() / static_cast<size_t>(C);
  const std::span<const TokenId> full(tokens.data(), n_full * static_cast<size_t>(C));

  const std::vector<ChunkKey> keys = conn_->KeysFor(full, salt);
  if (op == "pin" || op == "unpin") {
    const bool pin = op == "pin";
    std::string tier;
    if (auto e = GetTier(body, "tier", store, true, &tier)) return *e;
    double ttl_s = 0;
    if (pin) {
      auto it = body.find("ttl_seconds");
      if (it != body.end() && !it->is_null()) {
        if (!it->is_number()) return Error(400, "'ttl_seconds' must be a number", "ttl_seconds");
        ttl_s = it->get<double>();
        if (!(ttl_s > 0 && ttl_s <= 30.0 * 86400)) return Error(400, "'ttl_seconds' must be in (0, 2592000] (30 days)", "ttl_seconds");
      }
    } else if (body.contains("ttl_seconds") && !body["ttl_seconds"].is_null()) {
      return Error(400, "'ttl_seconds' applies to pin only", "ttl_seconds");
    }
    const auto ttl = std::chrono::milliseconds(static_cast<int64_t>(std::llround(ttl_s * 1000.0)));
    // Chunks only help as a chain from the start: stop at the first one no
    // selected tier holds.
    size_t done = 0;
    for (const ChunkKey& k : keys) {
      const Status st = pin ? store.Pin(k, ttl, tier) : store.Unpin(k, tier);
      if (st.code() == StatusCode::kNotFound) break;
      if (!st.ok()) return StoreError(st);
      ++done;
    }
    json r = {{"prompt_tokens", tokens.size()}, {"chunk_tokens", C}, {"requested_chunks", keys.size()},
              {pin ? "pinned_chunks" : "unpinned_chunks", done},
              {pin ? "pinned_tokens" : "unpinned_tokens", static_cast<int64_t>(done) * C},
              {"tier", tier.empty() ? json(nullptr) : json(tier)}};
    if (pin) r["ttl_seconds"] = ttl_s > 0 ? json(ttl_s) : json(nullptr);
    return Ok(r);
  }

  // move
  std::string from, to;
  if (auto e = GetTier(body, "from", store, false, &from)) return *e;
  if (auto e = GetTier(body, "to", store, false, &to)) return *e;
  if (from == to) return Error(400, "'from' and 'to' name the same tier", "to");
  bool keep_source = false;
  if (auto it = body.find("keep_source"); it != body.end() && !it->is_null()) {
    if (!it->is_boolean()) return Error(400, "'keep_source' must be a boolean", "keep_source");
    keep_source = it->get<bool>();
  }
  size_t moved = 0, skipped = 0;
  for (size_t i = 0; i < keys.size(); ++i) {
    const Status st = store.Move(keys[i], conn_->MetaFor(keys[i], full, i), from, to, !keep_source);
    if (st.code() == StatusCode::kNotFound) {
      ++skipped;  // not in `from` (maybe only in another tier)
      continue;
    }
    if (!st.ok()) return StoreError(st);
    ++moved;
  }
  return Ok({{"prompt_tokens", tokens.size()}, {"chunk_tokens", C}, {"requested_chunks", keys.size()},
             {"moved_chunks", moved}, {"moved_tokens", static_cast<int64_t>(moved) * C}, {"skipped_chunks", skipped},
             {"from", from}, {"to", to}, {"keep_source", keep_source}});
}

void CacheApi::AppendMetrics(std::string* out) const {
  if (!conn_) return;
  const KvStoreStats s = conn_->store().stats();
  const KvStoreConnectorCounters c = conn_->counters();
  auto num = [](double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.17g", v);
    return std::string(buf);
  };
  auto head = [&](const std::string& name, const std::string& help, const char* type) {
    *out += "# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
  };
  // One metric with a sample per tier.
  auto per_tier = [&](const std::string& name, const std::string& help, const char* type, auto get) {
    head(name, help, type);
    for (const KvStoreTierStats& t : s.tiers) *out += name + "{tier=\"" + t.name + "\"} " + num(static_cast<double>(get(t))) + "\n";
  };
  auto plain = [&](const std::string& name, const std::string& help, double v, const char* type = "counter") {
    head(name, help, type);
    *out += name + " " + num(v) + "\n";
  };
  per_tier("strata_kv_store_hits_total", "Chunk reads a tier served.", "counter", [](const KvStoreTierStats& t) { return t.tier.hits; });
  per_tier("strata_kv_store_misses_total", "Chunk reads a tier did not hold.", "counter", [](const KvStoreTierStats& t) { return t.tier.misses; });
  per_tier("strata_kv_store_get_failures_total", "Chunk reads that failed (I/O error, timeout, tier down).", "counter",
           [](const KvStoreTierStats& t) { return t.tier.get_failures; });
  per_tier("strata_kv_store_puts_total", "Chunks written into a tier.", "counter", [](const KvStoreTierStats& t) { return t.tier.puts; });
  per_tier("strata_kv_store_put_failures_total", "Chunk writes a tier rejected or failed (full, I/O error, tier down).", "counter",
           [](const KvStoreTierStats& t) { return t.tier.put_failures; });
  per_tier("strata_kv_store_read_bytes_total", "Encoded chunk bytes read from a tier.", "counter", [](const KvStoreTierStats& t) { return t.tier.bytes_read; });
  per_tier("strata_kv_store_written_bytes_total", "Encoded chunk bytes written to a tier.", "counter", [](const KvStoreTierStats& t) { return t.tier.bytes_written; });
  per_tier("strata_kv_store_chunks", "Chunks a tier holds now.", "gauge", [](const KvStoreTierStats& t) { return t.tier.chunks; });
  per_tier("strata_kv_store_pinned_chunks", "Chunks pinned in a tier now.", "gauge", [](const KvStoreTierStats& t) { return t.tier.pinned; });
  per_tier("strata_kv_store_used_bytes", "Bytes a tier holds now.", "gauge", [](const KvStoreTierStats& t) { return t.tier.used_bytes; });
  per_tier("strata_kv_store_capacity_bytes", "A tier's byte budget (0: unbounded or managed remotely).", "gauge",
           [](const KvStoreTierStats& t) { return t.tier.capacity_bytes; });
  per_tier("strata_kv_store_evictions_total", "Chunks a tier evicted for room.", "counter", [](const KvStoreTierStats& t) { return t.tier.evictions; });
  per_tier("strata_kv_store_corrupt_chunks_total", "Chunks from a tier that failed verification (dropped, recomputed).", "counter",
           [](const KvStoreTierStats& t) { return t.corrupt; });
  per_tier("strata_kv_store_promotions_total", "Chunks promoted into a tier from a lower one.", "counter",
           [](const KvStoreTierStats& t) { return t.promotions_in; });
  per_tier("strata_kv_store_demotions_total", "Chunks demoted into a tier from a higher one.", "counter",
           [](const KvStoreTierStats& t) { return t.demotions_in; });
  // Latency as Prometheus summaries without quantiles (sum and count).
  head("strata_kv_store_load_seconds", "Chunk read latency per tier (completed reads).", "summary");
  for (const KvStoreTierStats& t : s.tiers) {
    *out += "strata_kv_store_load_seconds_sum{tier=\"" + t.name + "\"} " + num(t.tier.get_seconds) + "\n";
    *out += "strata_kv_store_load_seconds_count{tier=\"" + t.name + "\"} " +
            num(static_cast<double>(t.tier.hits + t.tier.misses + t.tier.get_failures)) + "\n";
  }
  head("strata_kv_store_store_seconds", "Chunk write latency per tier (completed writes).", "summary");
  for (const KvStoreTierStats& t : s.tiers) {
    *out += "strata_kv_store_store_seconds_sum{tier=\"" + t.name + "\"} " + num(t.tier.put_seconds) + "\n";
    *out += "strata_kv_store_store_seconds_count{tier=\"" + t.name + "\"} " +
            num(static_cast<double>(t.tier.puts + t.tier.put_failures)) + "\n";
  }
  head("strata_kv_store_loaded_tokens_total", "Prompt tokens loaded into engine memory, by the tier that served them.", "counter");
  for (const StoreTierTokens& t : c.loaded_tokens_per_tier) {
    *out += "strata_kv_store_loaded_tokens_total{tier=\"" + t.tier + "\"} " + num(static_cast<double>(t.tokens)) + "\n";
  }
  plain("strata_kv_store_lookups_total", "Chain lookups (no data moved).", static_cast<double>(s.lookups));
  plain("strata_kv_store_lookup_chunks_total", "Chunks asked about in lookups.", static_cast<double>(s.lookup_chunks));
  plain("strata_kv_store_lookup_hit_chunks_total", "Of those, chunks some tier held.", static_cast<double>(s.hit_chunks));
  plain("strata_kv_store_stores_total", "Chunks handed to the store.", static_cast<double>(s.stores));
  plain("strata_kv_store_store_failures_total", "Tier writes that were rejected or failed.", static_cast<double>(s.store_failures));
  plain("strata_kv_store_fallbacks_total", "Loads the engine gave up on and recomputed (missing, corrupt, late or unavailable chunks).",
        static_cast<double>(c.fallbacks));
  plain("strata_kv_store_fallback_tokens_total", "Planned prompt tokens recomputed instead of loaded.", static_cast<double>(c.fallback_tokens));
  plain("strata_kv_store_failed_fetches_total", "Chunk fetches a tier failed (I/O error, unavailable).", static_cast<double>(c.failed_fetches));
  plain("strata_kv_store_timed_out_fetches_total", "Chunk fetches later than the timeout.", static_cast<double>(c.timed_out_fetches));
  plain("strata_kv_store_missing_chunks_total", "Chunks gone between lookup and fetch.", static_cast<double>(c.missing_chunks));
  plain("strata_kv_store_verify_failures_total", "Fetched chunks that failed verification.", static_cast<double>(c.corrupt_chunks));
  plain("strata_kv_store_loads_started_total", "Store loads the scheduler started.", static_cast<double>(c.loads_started));
  plain("strata_kv_store_loads_completed_total", "Store loads that ran to the end (fully or partly loaded).", static_cast<double>(c.loads_completed));
  plain("strata_kv_store_loads_cancelled_total", "Store loads cancelled or preempted before use.", static_cast<double>(c.loads_cancelled));
  plain("strata_kv_store_planned_tokens_total", "Tokens loads set out to bring.", static_cast<double>(c.planned_tokens));
  plain("strata_kv_store_stored_chunks_total", "Chunks the engine encoded and stored.", static_cast<double>(c.stored_chunks));
  plain("strata_kv_store_stored_decode_chunks_total", "Of those, chunks holding generated tokens (save_decode_cache).",
        static_cast<double>(c.stored_decode_chunks));
  plain("strata_kv_store_encode_failures_total", "Chunks the engine failed to encode.", static_cast<double>(c.store_encode_failures));
  plain("strata_kv_store_fetch_seconds_total", "Summed time from load start to ready (every chunk's layer 0 placed).",
        c.fetch_seconds);
  plain("strata_kv_store_load_seconds_total", "Summed time from load start to every layer placed.", c.load_seconds);
  plain("strata_kv_store_layer_wait_seconds_total", "Engine time spent waiting for layers to be placed.", c.layer_wait_seconds);
  plain("strata_kv_store_discarded_passes_total",
        "Forward passes whose work for a sequence was thrown away: a loaded chunk failed during the pass.",
        static_cast<double>(c.discarded_passes));
}

}  // namespace strata
