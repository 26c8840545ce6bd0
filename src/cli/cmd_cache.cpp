// strata cache: the KV cache control API of a running `strata serve`
// (server/cache_api.h), from the command line.
//
//   strata cache lookup -p "..."            how many prefix tokens engine memory and each tier hold
//   strata cache pin -p "..." [--tier T] [--ttl S]
//   strata cache unpin -p "..." [--tier T]
//   strata cache clear [--tier T]
//   strata cache move -p "..." --from host --to disk [--keep-source]
//   strata cache stats | health
//
// Common flags: --url (default http://127.0.0.1:8080), --api-key (or
// STRATA_API_KEY), --json (print the server's JSON as is).
#include <httplib.h>

#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/common.h"

namespace strata::cli {

namespace {

using json = nlohmann::json;

struct CacheFlags {
  std::string url = "http://127.0.0.1:8080";
  std::string api_key;
  bool json_out = false;
  PromptFlags prompt;
  std::string tokens;      // "1,2,3" instead of a prompt
  std::string cache_salt;
  std::string tier;
  double ttl_seconds = 0;  // 0: the server's default
  std::string from, to;
  bool keep_source = false;
};

std::string Bytes(double b) {
  char buf[32];
  if (b >= 1073741824.0) std::snprintf(buf, sizeof buf, "%.2f GiB", b / 1073741824.0);
  else if (b >= 1048576.0) std::snprintf(buf, sizeof buf, "%.1f MiB", b / 1048576.0);
  else if (b >= 1024.0) std::snprintf(buf, sizeof buf, "%.1f KiB", b / 1024.0);
  else std::snprintf(buf, sizeof buf, "%.0f B", b);
  return buf;
}

// Left-aligned columns.
void PrintTable(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> w;
  for (const auto& r : rows) {
    if (w.size() < r.size()) w.resize(r.size(), 0);
    for (size_t i = 0; i < r.size(); ++i) w[i] = std::max(w[i], r[i].size());
  }
  for (const auto& r : rows) {
    std::string line;
    for (size_t i = 0; i < r.size(); ++i) {
      line += r[i];
      if (i + 1 < r.size()) line += std::string(w[i] - r[i].size() + 2, ' ');
    }
    std::printf("%s\n", line.c_str());
  }
}

std::string U(const json& v) {
  if (v.is_number_integer()) return std::to_string(v.get<int64_t>());
  if (v.is_number()) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.3g", v.get<double>());
    return buf;
  }
  if (v.is_string()) return v.get<std::string>();
  return v.dump();
}

// Adds prompt/tokens and cache_salt to a request body.
Status AddPrompt(const CacheFlags& f, json* body) {
  const bool has_prompt = !f.prompt.prompt.empty() || !f.prompt.file.empty();
  if (has_prompt == !f.tokens.empty()) return Status::InvalidArgument("give the prompt with -p/-f, or token ids with --tokens");
  if (has_prompt) {
    auto text = ReadPrompt(f.prompt);
    if (!text.ok()) return text.status();
    (*body)["prompt"] = *text;
  } else {
    json ids = json::array();
    std::stringstream ss(f.tokens);
    std::string item;
    while (std::getline(ss, item, ',')) {
      char* end = nullptr;
      const long long v = std::strtoll(item.c_str(), &end, 10);
      if (item.empty() || *end != '\0') return Status::InvalidArgument("--tokens: '" + item + "' is not a token id");
      ids.push_back(v);
    }
    (*body)["tokens"] = ids;
  }
  if (!f.cache_salt.empty()) (*body)["cache_salt"] = f.cache_salt;
  return Status::Ok();
}

// Sends the request; returns the parsed answer (and its HTTP status).
Expected<json> Call(const CacheFlags& f, const std::string& op, const json* body, int* http_status) {
  httplib::Client cli(f.url);
  cli.set_connection_timeout(5, 0);
  cli.set_read_timeout(120, 0);
  std::string key = f.api_key;
  if (key.empty()) {
    if (const char* k = std::getenv("STRATA_API_KEY")) key = k;
  }
  if (!key.empty()) cli.set_bearer_token_auth(key);
  const std::string path = "/v1/cache/" + op;
  auto res = body ? cli.Post(path, body->dump(), "application/json") : cli.Get(path);
  if (!res) return Status::Unavailable("cannot reach " + f.url + ": " + httplib::to_string(res.error()));
  *http_status = res->status;
  json j = json::parse(res->body, nullptr, false);
  if (j.is_discarded()) return Status::Unavailable("HTTP " + std::to_string(res->status) + " with a body that is not JSON: " + res->body);
  return j;
}

int Run(const CacheFlags& f, const std::string& op) {
  json body = json::object();
  const bool post = op != "stats" && op != "health";
  if (op == "lookup" || op == "pin" || op == "unpin" || op == "move") {
    if (Status st = AddPrompt(f, &body); !st.ok()) return Fail(st);
  }
  if (!f.tier.empty()) body["tier"] = f.tier;
  if (op == "pin" && f.ttl_seconds > 0) body["ttl_seconds"] = f.ttl_seconds;
  if (op == "move") {
    body["from"] = f.from;
    body["to"] = f.to;
    if (f.keep_source) body["keep_source"] = true;
  }
  int status = 0;
  auto got = Call(f, op, post ? &body : nullptr, &status);
  if (!got.ok()) return Fail(got.status());
  const json& j = *got;
  if (f.json_out) {
    std::printf("%s\n", j.dump(2).c_str());
    return status == 200 ? 0 : 1;
  }
  if (status != 200 && j.contains("error")) {
    const json& e = j["error"];
    std::fprintf(stderr, "error: %s (HTTP %d)\n", e.value("message", std::string("?")).c_str(), status);
    return 1;
  }
  if (op == "lookup") {
    // chunk_tokens is absent when the server runs without a store.
    const bool store = j.contains("chunk_tokens");
    if (store) {
      std::printf("prompt: %s tokens, %s in full %s-token chunks; the store holds the first %s\n", U(j["prompt_tokens"]).c_str(),
                  U(j["full_chunk_tokens"]).c_str(), U(j["chunk_tokens"]).c_str(), U(j["cached_tokens"]).c_str());
    } else {
      std::printf("prompt: %s tokens; no KV cache store\n", U(j["prompt_tokens"]).c_str());
    }
    // Servers older than the engine-memory probe answer without it.
    const bool engine = j.contains("engine_tokens");
    if (engine) {
      const json& m = j["engine_memory"];
      if (m.value("block_tokens", 0) > 0) {
        std::printf("engine memory (%s) holds the first %s in %s-token blocks\n", U(m["kind"]).c_str(), U(j["engine_tokens"]).c_str(),
                    U(m["block_tokens"]).c_str());
      } else {
        std::printf("engine memory (%s) keeps no prefix cache\n", U(m["kind"]).c_str());
      }
      std::printf("longest cached prefix: %s tokens\n", U(j["longest_cached_tokens"]).c_str());
    }
    std::vector<std::vector<std::string>> rows = {{"WHERE", "TOKENS", "CHUNKS"}};
    if (engine) rows.push_back({"engine", U(j["engine_tokens"]), "-"});
    for (const json& t : j["tiers"]) rows.push_back({U(t["tier"]), U(t["tokens"]), U(t["chunks"])});
    PrintTable(rows);
  } else if (op == "pin" || op == "unpin") {
    const std::string what = op == "pin" ? "pinned" : "unpinned";
    std::printf("%s %s of %s chunks (%s tokens) in %s", what.c_str(), U(j[what + "_chunks"]).c_str(), U(j["requested_chunks"]).c_str(),
                U(j[what + "_tokens"]).c_str(), j["tier"].is_null() ? "every tier" : U(j["tier"]).c_str());
    if (op == "pin") std::printf(", ttl %s", j["ttl_seconds"].is_null() ? "the server's default" : (U(j["ttl_seconds"]) + " s").c_str());
    std::printf("\n");
  } else if (op == "clear") {
    std::string tiers;
    for (const json& t : j["cleared"]) tiers += (tiers.empty() ? "" : ", ") + U(t);
    std::printf("cleared: %s\n", tiers.c_str());
  } else if (op == "move") {
    std::printf("%s %s of %s chunks (%s tokens) from %s to %s; %s not in %s\n", j.value("keep_source", false) ? "copied" : "moved",
                U(j["moved_chunks"]).c_str(), U(j["requested_chunks"]).c_str(), U(j["moved_tokens"]).c_str(), U(j["from"]).c_str(),
                U(j["to"]).c_str(), U(j["skipped_chunks"]).c_str(), U(j["from"]).c_str());
  } else if (op == "stats") {
    std::vector<std::vector<std::string>> rows = {{"TIER", "ENCODING", "CHUNKS", "USED", "CAPACITY", "HITS", "MISSES", "HIT%", "READ",
                                                   "WRITTEN", "EVICTED", "CORRUPT", "PROMOTED-IN", "DEMOTED-IN", "FAILURES"}};
    for (const json& t : j["tiers"]) {
      char rate[16];
      std::snprintf(rate, sizeof rate, "%.1f", 100.0 * t["hit_rate"].get<double>());
      rows.push_back({U(t["tier"]), U(t["encoding"]), U(t["chunks"]), Bytes(t["used_bytes"].get<double>()),
                      t["capacity_bytes"].get<double>() > 0 ? Bytes(t["capacity_bytes"].get<double>()) : "-", U(t["hits"]),
                      U(t["misses"]), rate, Bytes(t["bytes_read"].get<double>()), Bytes(t["bytes_written"].get<double>()),
                      U(t["evictions"]), U(t["corrupt_chunks"]), U(t["promotions_in"]), U(t["demotions_in"]),
                      U(t["get_failures"].get<uint64_t>() + t["put_failures"].get<uint64_t>())});
    }
    PrintTable(rows);
    const json& e = j["engine"];
    std::printf("\nchunk size %s tokens; loads %s started, %s completed, %s cancelled; %s tokens loaded, %s fallbacks (%s tokens "
                "recomputed); %s chunks stored, %s store failures\n",
                U(j["chunk_tokens"]).c_str(), U(e["loads_started"]).c_str(), U(e["loads_completed"]).c_str(),
                U(e["loads_cancelled"]).c_str(), U(e["loaded_tokens"]).c_str(), U(e["fallbacks"]).c_str(),
                U(e["fallback_tokens"]).c_str(), U(e["stored_chunks"]).c_str(), U(j["store"]["store_failures"]).c_str());
  } else if (op == "health") {
    std::printf("status: %s\n", U(j["status"]).c_str());
    std::vector<std::vector<std::string>> rows = {{"TIER", "HEALTH"}};
    for (const json& t : j["tiers"]) rows.push_back({U(t["tier"]), t["ok"].get<bool>() ? "ok" : U(t["error"])});
    PrintTable(rows);
    return status == 200 ? 0 : 1;
  }
  return 0;
}

}  // namespace

void RegisterCache(CLI::App& app) {
  auto flags = std::make_shared<CacheFlags>();
  CLI::App* cmd = app.add_subcommand("cache", "inspect the KV cache (engine memory, store) of a running strata serve; control its store");
  cmd->require_subcommand(1);
  cmd->add_option("--url", flags->url, "the server's base URL")->capture_default_str();
  cmd->add_option("--api-key", flags->api_key, "API key (or set STRATA_API_KEY)");
  cmd->add_flag("--json", flags->json_out, "print the server's JSON answer");
  auto common = [&](CLI::App* sub) {
    // The common flags are accepted after the subcommand too.
    sub->add_option("--url", flags->url, "the server's base URL");
    sub->add_option("--api-key", flags->api_key, "API key (or set STRATA_API_KEY)");
    sub->add_flag("--json", flags->json_out, "print the server's JSON answer");
  };
  auto prompt = [&](CLI::App* sub) {
    AddPromptFlags(sub, &flags->prompt);
    sub->add_option("--tokens", flags->tokens, "token ids instead of a prompt: 1,2,3");
    sub->add_option("--cache-salt", flags->cache_salt, "the cache_salt the requests used");
  };
  struct Sub {
    const char* name;
    const char* help;
  };
  for (const Sub& s : {Sub{"lookup", "how many leading tokens of a prompt engine memory and each tier hold"},
                       Sub{"pin", "pin a prompt's chunks (never evicted until the pin expires)"},
                       Sub{"unpin", "unpin a prompt's chunks"},
                       Sub{"clear", "drop every chunk (of one tier, or all)"},
                       Sub{"move", "move a prompt's chunks from one tier to another"},
                       Sub{"stats", "per-tier statistics"},
                       Sub{"health", "per-tier health (exit status 1 when a tier is down)"}}) {
    CLI::App* sub = cmd->add_subcommand(s.name, s.help);
    const std::string op = s.name;
    common(sub);
    if (op == "lookup" || op == "pin" || op == "unpin" || op == "move") prompt(sub);
    if (op == "pin" || op == "unpin" || op == "clear") sub->add_option("--tier", flags->tier, "one tier (default: all)");
    if (op == "pin") sub->add_option("--ttl", flags->ttl_seconds, "pin expiry in seconds (default: the server's)")->check(CLI::Range(0.0, 2592000.0));
    if (op == "move") {
      sub->add_option("--from", flags->from, "source tier")->required();
      sub->add_option("--to", flags->to, "destination tier")->required();
      sub->add_flag("--keep-source", flags->keep_source, "copy: keep the chunks in the source tier");
    }
    sub->callback([flags, op] { ExitCode() = Run(*flags, op); });
  }
}

}  // namespace strata::cli
