// The KV cache store's control API (/v1/cache/*), its metrics and the
// `strata cache` CLI, against real `strata serve` processes: lookup before
// and after a request (store tiers and engine memory's prefix cache, with and
// without a store), pin/unpin, clear, move, stats, health, bad input;
// two processes sharing one redis-server or one disk directory; a restarted
// process finding its disk cache; redis killed mid-run.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "redis_test_server.h"
#include "test_util.h"

namespace strata {
namespace {

using json = nlohmann::json;
using testing::RunCommand;
using testing::StrataBin;

std::string Model() { return testing::TinyLlama("cache_control"); }

constexpr int kChunk = 16;

struct HttpResult {
  int status = 0;
  std::string body;
  json j() const { return json::parse(body, nullptr, false); }
};

// A `strata serve` process on an ephemeral port.
class Server {
 public:
  explicit Server(const std::string& flags, std::string api_key = "") : key_(std::move(api_key)) {
    dir_ = testing::TestDataDir("cache_control/run-" + std::to_string(::getpid()) + "-" + std::to_string(counter_++));
    log_ = dir_ + "/server.log";
    const std::string key = key_.empty() ? "" : " --api-key " + key_;
    auto r = RunCommand(StrataBin() + " serve -m " + Model() + " --port 0 -t 2 -c 512 --parallel 4 --kv-budget 8 " + flags + key +
                        " > " + log_ + " 2>&1 & echo $!");
    pid_ = std::atoi(r.output.c_str());
    const std::string marker = "listening on http://127.0.0.1:";
    for (int i = 0; i < 600 && port_ == 0; ++i) {
      const std::string text = log();
      const size_t at = text.find(marker);
      if (at != std::string::npos) port_ = std::atoi(text.c_str() + at + marker.size());
      else std::this_thread::sleep_for(std::chrono::milliseconds(100));
      if (::kill(pid_, 0) != 0) break;
    }
  }
  ~Server() { Kill(); }
  void Kill() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGTERM);
    for (int i = 0; i < 100 && ::kill(pid_, 0) == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (::kill(pid_, 0) == 0) {
      ::kill(pid_, SIGKILL);
      ADD_FAILURE() << "strata serve did not exit on SIGTERM";
    }
    pid_ = -1;
    const std::string text = log();
    if (text.find("Sanitizer") != std::string::npos || text.find("runtime error") != std::string::npos) ADD_FAILURE() << text;
  }
  bool ok() const { return port_ > 0; }
  std::string log() const {
    std::ifstream in(log_);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  }
  std::string base() const { return "http://127.0.0.1:" + std::to_string(port_); }

  HttpResult Request(const std::string& method, const std::string& path, const std::string& body = "", bool auth = true) {
    const std::string file = dir_ + "/body-" + std::to_string(counter_++) + ".json";
    std::ofstream(file, std::ios::binary) << body;
    std::string cmd = "curl -s -S --max-time 120 -o " + file + ".out -w '%{http_code}' -X " + method;
    if (auth && !key_.empty()) cmd += " -H 'Authorization: Bearer " + key_ + "'";
    if (method == "POST") cmd += " -H 'Content-Type: application/json' --data-binary @" + file;
    auto r = RunCommand(cmd + " '" + base() + path + "'", false);
    std::ifstream in(file + ".out", std::ios::binary);
    return HttpResult{std::atoi(r.output.c_str()), std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>())};
  }
  HttpResult Post(const std::string& path, const json& body) { return Request("POST", path, body.dump()); }

  double Metric(const std::string& name) {
    auto r = Request("GET", "/metrics");
    const size_t at = r.body.find("\n" + name + " ");
    if (at == std::string::npos) return -1;
    return std::strtod(r.body.c_str() + at + name.size() + 2, nullptr);
  }

  // Tokens tier `tier` holds of `tokens` (-1 on error).
  int64_t Held(const std::vector<int>& tokens, const std::string& tier) {
    auto r = Post("/v1/cache/lookup", json{{"tokens", tokens}});
    if (r.status != 200) {
      ADD_FAILURE() << "lookup: HTTP " << r.status << " " << r.body;
      return -1;
    }
    const json j = r.j();
    for (const json& t : j["tiers"]) {
      if (t["tier"] == tier) return t["tokens"].get<int64_t>();
    }
    return -1;
  }
  // Waits (background writes) until `tier` holds `want` tokens of `tokens`.
  bool WaitHeld(const std::vector<int>& tokens, const std::string& tier, int64_t want) {
    for (int i = 0; i < 100; ++i) {
      if (Held(tokens, tier) == want) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    ADD_FAILURE() << "waiting for " << want << " tokens in " << tier << ": " << Post("/v1/cache/lookup", json{{"tokens", tokens}}).body;
    return false;
  }

  // Greedy completion of `tokens`.
  json Complete(const std::vector<int>& tokens, int max_tokens = 8) {
    auto r = Post("/v1/completions", {{"prompt", tokens}, {"max_tokens", max_tokens}, {"temperature", 0}, {"ignore_eos", true}});
    EXPECT_EQ(r.status, 200) << r.body;
    return r.j();
  }

  std::string Cli(const std::string& args) {
    auto r = RunCommand(StrataBin() + " cache " + args + " --url " + base() + (key_.empty() ? "" : " --api-key " + key_));
    last_exit_ = r.exit_code;
    return r.output;
  }
  int last_exit() const { return last_exit_; }
  const std::string& dir() const { return dir_; }

 private:
  static inline int counter_ = 0;
  std::string key_;
  std::string dir_, log_;
  int pid_ = -1;
  int port_ = 0;
  int last_exit_ = -1;
};

// 100 tokens: 6 full chunks of 16 (96 tokens), all loadable (the last
// prompt token is always computed).
std::vector<int> PromptTokens(int seed) {
  std::vector<int> t;
  for (int i = 0; i < 100; ++i) t.push_back(1 + (i * 37 + seed * 101) % 290);
  return t;
}

std::string Csv(const std::vector<int>& t) {
  std::string s;
  for (size_t i = 0; i < t.size(); ++i) {
    if (i) s += ',';
    s += std::to_string(t[i]);
  }
  return s;
}

std::string FreshDir(const std::string& name) {
  const std::string d = testing::TestDataDir("cache_control") + "/" + name + "-" + std::to_string(::getpid());
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d;
}

int64_t StoreCached(const json& completion) {
  return completion["usage"]["prompt_tokens_details"]["store_cached_tokens"].get<int64_t>();
}

TEST(CacheControl, LookupPinClearMoveStatsHealth) {
  const std::string disk = FreshDir("api-disk");
  Server srv("--kv-store-host-bytes 64M --kv-store-disk " + disk + " --kv-chunk-tokens 16", "sekret");
  ASSERT_TRUE(srv.ok()) << srv.log();
  const auto p = PromptTokens(1);

  // Same auth as the rest of /v1.
  EXPECT_EQ(srv.Request("POST", "/v1/cache/lookup", json{{"tokens", p}}.dump(), /*auth=*/false).status, 401);
  EXPECT_EQ(srv.Request("GET", "/v1/cache/stats", "", false).status, 401);

  // Before any request: nothing held.
  auto look = srv.Post("/v1/cache/lookup", {{"tokens", p}});
  ASSERT_EQ(look.status, 200) << look.body;
  json l = look.j();
  EXPECT_EQ(l["prompt_tokens"], 100);
  EXPECT_EQ(l["chunk_tokens"], kChunk);
  EXPECT_EQ(l["full_chunk_tokens"], 96);
  EXPECT_EQ(l["cached_tokens"], 0);
  ASSERT_EQ(l["tiers"].size(), 2u);
  EXPECT_EQ(l["tiers"][0]["tier"], "host");
  EXPECT_EQ(l["tiers"][1]["tier"], "disk");
  // A text prompt is tokenized like /v1/completions.
  auto text = srv.Post("/v1/cache/lookup", {{"prompt", "Hello there, how are you?"}});
  ASSERT_EQ(text.status, 200) << text.body;
  EXPECT_GT(text.j()["prompt_tokens"].get<int64_t>(), 0);

  // After a request every full chunk is in both tiers (write-through).
  const json first = srv.Complete(p);
  EXPECT_TRUE(srv.WaitHeld(p, "host", 96));
  EXPECT_TRUE(srv.WaitHeld(p, "disk", 96));
  l = srv.Post("/v1/cache/lookup", {{"tokens", p}}).j();
  EXPECT_EQ(l["cached_tokens"], 96);
  EXPECT_EQ(l["engine_tokens"], 96) << l;  // the request's prompt blocks stay in engine memory too
  EXPECT_EQ(l["longest_cached_tokens"], 96) << l;
  // Another salt is another key space.
  l = srv.Post("/v1/cache/lookup", {{"tokens", p}, {"cache_salt", "tenant-b"}}).j();
  EXPECT_EQ(l["cached_tokens"], 0);
  EXPECT_EQ(l["engine_tokens"], 0);

  // Pin / unpin.
  auto pin = srv.Post("/v1/cache/pin", {{"tokens", p}, {"tier", "host"}, {"ttl_seconds", 60}});
  ASSERT_EQ(pin.status, 200) << pin.body;
  EXPECT_EQ(pin.j()["pinned_chunks"], 6);
  EXPECT_EQ(pin.j()["pinned_tokens"], 96);
  json stats = srv.Request("GET", "/v1/cache/stats").j();
  EXPECT_EQ(stats["tiers"][0]["tier"], "host");
  EXPECT_EQ(stats["tiers"][0]["pinned_chunks"], 6);
  EXPECT_EQ(srv.Metric("strata_kv_store_pinned_chunks{tier=\"host\"}"), 6);
  auto unpin = srv.Post("/v1/cache/unpin", {{"tokens", p}, {"tier", "host"}});
  ASSERT_EQ(unpin.status, 200) << unpin.body;
  EXPECT_EQ(unpin.j()["unpinned_chunks"], 6);
  EXPECT_EQ(srv.Request("GET", "/v1/cache/stats").j()["tiers"][0]["pinned_chunks"], 0);

  // Clear one tier: lookup shows 0 there, the other keeps its chunks.
  auto clr = srv.Post("/v1/cache/clear", {{"tier", "disk"}});
  ASSERT_EQ(clr.status, 200) << clr.body;
  EXPECT_EQ(clr.j()["cleared"], json::array({"disk"}));
  EXPECT_EQ(srv.Held(p, "disk"), 0);
  EXPECT_EQ(srv.Held(p, "host"), 96);

  // Move host -> disk.
  auto mv = srv.Post("/v1/cache/move", {{"tokens", p}, {"from", "host"}, {"to", "disk"}});
  ASSERT_EQ(mv.status, 200) << mv.body;
  EXPECT_EQ(mv.j()["moved_chunks"], 6);
  EXPECT_EQ(srv.Held(p, "host"), 0);
  EXPECT_EQ(srv.Held(p, "disk"), 96);

  // The same prompt again (engine memory serves it now) gives the same text.
  const json again = srv.Complete(p);
  EXPECT_EQ(again["choices"][0]["text"], first["choices"][0]["text"]);

  // Stats and health.
  stats = srv.Request("GET", "/v1/cache/stats").j();
  ASSERT_EQ(stats["tiers"].size(), 2u);
  EXPECT_GE(stats["tiers"][1]["chunks"].get<int64_t>(), 6);
  EXPECT_GT(stats["tiers"][0]["bytes_written"].get<int64_t>(), 0);
  EXPECT_GT(stats["engine"]["stored_chunks"].get<int64_t>(), 0);
  auto health = srv.Request("GET", "/v1/cache/health");
  EXPECT_EQ(health.status, 200) << health.body;
  EXPECT_EQ(health.j()["status"], "ok");

  // Metrics.
  EXPECT_GT(srv.Metric("strata_kv_store_written_bytes_total{tier=\"host\"}"), 0);
  EXPECT_GE(srv.Metric("strata_kv_store_chunks{tier=\"disk\"}"), 6);
  EXPECT_GT(srv.Metric("strata_kv_store_capacity_bytes{tier=\"host\"}"), 0);
  EXPECT_GE(srv.Metric("strata_kv_store_evictions_total{tier=\"host\"}"), 0);
  EXPECT_GE(srv.Metric("strata_kv_store_fallbacks_total"), 0);
  EXPECT_GE(srv.Metric("strata_kv_store_load_seconds_count{tier=\"disk\"}"), 0);
  EXPECT_GT(srv.Metric("strata_kv_store_stored_chunks_total"), 0);

  // Clear everything: the store forgets, engine memory (not a tier) keeps
  // its blocks, so the prompt is still cached.
  ASSERT_EQ(srv.Post("/v1/cache/clear", json::object()).status, 200);
  l = srv.Post("/v1/cache/lookup", {{"tokens", p}}).j();
  EXPECT_EQ(l["cached_tokens"], 0);
  EXPECT_EQ(l["engine_tokens"], 96) << l;
  EXPECT_EQ(l["longest_cached_tokens"], 96) << l;

  // Bad input: OpenAI-style errors with 4xx.
  auto bad = [&](const std::string& op, const std::string& body, const std::string& param) {
    auto r = srv.Request("POST", "/v1/cache/" + op, body);
    EXPECT_EQ(r.status, 400) << op << " " << body << " -> " << r.body;
    json j = r.j();
    ASSERT_TRUE(j.contains("error")) << r.body;
    EXPECT_TRUE(j["error"]["message"].is_string());
    if (!param.empty()) {
      EXPECT_EQ(j["error"]["param"], param) << r.body;
    }
  };
  bad("lookup", "{}", "prompt");
  bad("lookup", R"({"prompt": "a", "tokens": [1]})", "");
  bad("lookup", R"({"tokens": [1, 99999]})", "tokens");
  bad("lookup", R"({"tokens": "1,2"})", "tokens");
  bad("lookup", R"({"tokens": []})", "tokens");
  bad("lookup", R"({"prompt": 5})", "prompt");
  bad("lookup", "{not json", "");
  bad("lookup", "[1,2]", "");
  bad("pin", json{{"tokens", p}, {"tier", "nope"}}.dump(), "tier");
  bad("pin", json{{"tokens", p}, {"ttl_seconds", -1}}.dump(), "ttl_seconds");
  bad("pin", json{{"tokens", p}, {"ttl_seconds", "long"}}.dump(), "ttl_seconds");
  bad("clear", R"({"tier": 3})", "tier");
  bad("clear", R"({"tier": "gpu"})", "tier");
  bad("move", json{{"tokens", p}, {"from", "host"}}.dump(), "to");
  bad("move", json{{"tokens", p}, {"from", "host"}, {"to", "host"}}.dump(), "to");
  bad("move", json{{"tokens", p}, {"from", "host"}, {"to", "disk"}, {"keep_source", 1}}.dump(), "keep_source");
  EXPECT_EQ(srv.Request("POST", "/v1/cache/frobnicate", "{}").status, 404);
  // The body limit applies (1 MiB by default).
  EXPECT_EQ(srv.Request("POST", "/v1/cache/lookup", "{\"prompt\": \"" + std::string(2 << 20, 'a') + "\"}").status, 413);

  // The CLI against the same server.
  srv.Complete(p);
  ASSERT_TRUE(srv.WaitHeld(p, "disk", 96));
  std::string out = srv.Cli("lookup --tokens " + Csv(p));
  EXPECT_EQ(srv.last_exit(), 0) << out;
  EXPECT_NE(out.find("the store holds the first 96"), std::string::npos) << out;
  EXPECT_NE(out.find("engine memory (paged) holds the first 96 in 16-token blocks"), std::string::npos) << out;
  EXPECT_NE(out.find("longest cached prefix: 96 tokens"), std::string::npos) << out;
  EXPECT_NE(out.find("disk"), std::string::npos) << out;
  out = srv.Cli("lookup --json --tokens " + Csv(p));
  EXPECT_EQ(srv.last_exit(), 0) << out;
  EXPECT_EQ(json::parse(out, nullptr, false)["cached_tokens"], 96) << out;
  out = srv.Cli("pin --tokens " + Csv(p) + " --tier disk --ttl 30");
  EXPECT_EQ(srv.last_exit(), 0) << out;
  EXPECT_NE(out.find("pinned 6 of 6 chunks"), std::string::npos) << out;
  out = srv.Cli("unpin --tokens " + Csv(p));
  EXPECT_EQ(srv.last_exit(), 0) << out;
  EXPECT_NE(out.find("unpinned 6 of 6"), std::string::npos) << out;
  out = srv.Cli("move --tokens " + Csv(p) + " --from disk --to host --keep-source");
  EXPECT_EQ(srv.last_exit(), 0) << out;
  EXPECT_NE(out.find("copied"), std::string::npos) << out;
  out = srv.Cli("stats");
  EXPECT_EQ(srv.last_exit(), 0) << out;
  EXPECT_NE(out.find("TIER"), std::string::npos) << out;
  EXPECT_NE(out.find("host"), std::string::npos) << out;
  out = srv.Cli("health");
  EXPECT_EQ(srv.last_exit(), 0) << out;
  EXPECT_NE(out.find("status: ok"), std::string::npos) << out;
  out = srv.Cli("clear --tier host");
  EXPECT_EQ(srv.last_exit(), 0) << out;
  EXPECT_EQ(srv.Held(p, "host"), 0);
  out = srv.Cli("clear --tier gpu");
  EXPECT_NE(srv.last_exit(), 0) << out;
  EXPECT_NE(out.find("no tier named 'gpu'"), std::string::npos) << out;
  // A text prompt from a file.
  {
    std::ofstream(srv.dir() + "/prompt.txt") << "Once upon a time there was a small cache.";
    out = srv.Cli("lookup -f " + srv.dir() + "/prompt.txt");
    EXPECT_EQ(srv.last_exit(), 0) << out;
  }
  // Wrong key.
  auto wrong = RunCommand(StrataBin() + " cache stats --url " + srv.base() + " --api-key nope");
  EXPECT_NE(wrong.exit_code, 0);
  EXPECT_NE(wrong.output.find("HTTP 401"), std::string::npos) << wrong.output;
  std::filesystem::remove_all(disk);
}

TEST(CacheControl, NoStoreConfigured) {
  Server srv("");
  ASSERT_TRUE(srv.ok()) << srv.log();
  auto r = srv.Request("GET", "/v1/cache/stats");
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(r.j()["error"]["code"], "kv_store_disabled") << r.body;
  for (const char* op : {"pin", "unpin", "clear", "move"}) {
    r = srv.Post(std::string("/v1/cache/") + op, {{"tokens", PromptTokens(1)}});
    EXPECT_EQ(r.status, 404) << op;
    EXPECT_EQ(r.j()["error"]["code"], "kv_store_disabled") << op << " " << r.body;
  }
  EXPECT_EQ(srv.Metric("strata_kv_store_fallbacks_total"), -1);
}

// Lookup reports engine memory's prefix cache, with or without a store, per
// salt, without changing it; a server on virtual KV memory holds no prefix.
TEST(CacheControl, LookupReportsEngineMemory) {
  Server srv("");
  ASSERT_TRUE(srv.ok()) << srv.log();
  const auto p = PromptTokens(6), q = PromptTokens(7);
  auto lookup = [&](const std::vector<int>& tokens, const std::string& salt) {
    json body = {{"tokens", tokens}};
    if (!salt.empty()) body["cache_salt"] = salt;
    auto r = srv.Post("/v1/cache/lookup", body);
    EXPECT_EQ(r.status, 200) << r.body;
    return r.j();
  };

  json l = lookup(p, "");
  EXPECT_EQ(l["prompt_tokens"], 100);
  EXPECT_EQ(l["engine_tokens"], 0);
  EXPECT_EQ(l["engine_memory"]["kind"], "paged");
  EXPECT_EQ(l["engine_memory"]["block_tokens"], 16);
  EXPECT_EQ(l["longest_cached_tokens"], 0);
  // No store: its fields say so without breaking clients that read them.
  EXPECT_EQ(l["cached_tokens"], 0);
  EXPECT_EQ(l["tiers"], json::array());
  EXPECT_FALSE(l.contains("chunk_tokens")) << l;

  // A request leaves its prompt's full blocks (6 x 16 of 100 tokens) cached.
  const json first = srv.Complete(p);
  l = lookup(p, "");
  EXPECT_EQ(l["engine_tokens"], 96) << l;
  EXPECT_EQ(l["longest_cached_tokens"], 96) << l;
  EXPECT_EQ(lookup(p, "tenant-b")["engine_tokens"], 0);
  EXPECT_EQ(lookup(q, "")["engine_tokens"], 0);
  // A prompt sharing only the first 40 tokens: two full blocks.
  std::vector<int> fork = p;
  for (size_t i = 40; i < fork.size(); ++i) fork[i] = 1 + (fork[i] + 1) % 290;
  EXPECT_EQ(lookup(fork, "")["engine_tokens"], 32);
  // A text prompt works too (tokenized with BOS, like /v1/completions).
  EXPECT_EQ(srv.Post("/v1/cache/lookup", {{"prompt", "never sent"}}).j()["engine_tokens"], 0);

  // Lookups are not hits: after five of them and one uncached request (whose
  // step refreshes the exported counters) the prefix-cache counters moved by
  // that request's attach alone (99 tokens asked, none found).
  const double queried = srv.Metric("strata_prefix_cache_query_tokens_total");
  const double hit = srv.Metric("strata_prefix_cache_hit_tokens_total");
  for (int i = 0; i < 5; ++i) lookup(p, "");
  srv.Complete(q);
  EXPECT_EQ(srv.Metric("strata_prefix_cache_query_tokens_total"), queried + 99);
  EXPECT_EQ(srv.Metric("strata_prefix_cache_hit_tokens_total"), hit);
  EXPECT_EQ(lookup(p, "")["engine_tokens"], 96);
  EXPECT_EQ(lookup(q, "")["engine_tokens"], 96);

  // The same prompt under the other salt is cached separately.
  auto salted = srv.Post("/v1/completions", {{"prompt", p}, {"max_tokens", 4}, {"temperature", 0}, {"cache_salt", "tenant-b"}});
  ASSERT_EQ(salted.status, 200) << salted.body;
  EXPECT_EQ(lookup(p, "tenant-b")["engine_tokens"], 96);
  EXPECT_EQ(lookup(p, "")["engine_tokens"], 96);
  // The engine reuses what the lookup promised (at most prompt - 1 tokens).
  const json again = srv.Complete(p);
  EXPECT_EQ(again["usage"]["prompt_tokens_details"]["cached_tokens"], 96) << again;
  EXPECT_EQ(again["choices"][0]["text"], first["choices"][0]["text"]);

  // The CLI.
  std::string out = srv.Cli("lookup --tokens " + Csv(p));
  EXPECT_EQ(srv.last_exit(), 0) << out;
  EXPECT_NE(out.find("no KV cache store"), std::string::npos) << out;
  EXPECT_NE(out.find("engine memory (paged) holds the first 96 in 16-token blocks"), std::string::npos) << out;
  EXPECT_NE(out.find("longest cached prefix: 96 tokens"), std::string::npos) << out;
  out = srv.Cli("lookup --cache-salt tenant-c --tokens " + Csv(p));
  EXPECT_EQ(srv.last_exit(), 0) << out;
  EXPECT_NE(out.find("holds the first 0 in"), std::string::npos) << out;

  // Virtual KV memory keeps no prefix cache.
  Server virt("--kv-memory virtual");
  ASSERT_TRUE(virt.ok()) << virt.log();
  virt.Complete(p);
  auto r = virt.Post("/v1/cache/lookup", {{"tokens", p}});
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.j()["engine_memory"]["kind"], "virtual");
  EXPECT_EQ(r.j()["engine_memory"]["block_tokens"], 0);
  EXPECT_EQ(r.j()["engine_tokens"], 0);
  out = virt.Cli("lookup --tokens " + Csv(p));
  EXPECT_EQ(virt.last_exit(), 0) << out;
  EXPECT_NE(out.find("engine memory (virtual) keeps no prefix cache"), std::string::npos) << out;
}

// Two processes on one redis-server: B gets A's chunks and the same text.
TEST(CacheControl, TwoProcessesShareRedis) {
  if (!testing::HaveRedisServer()) GTEST_SKIP() << "no redis-server";
  testing::RedisTestServer redis;
  ASSERT_TRUE(redis.Start());
  const std::string flags = "--kv-chunk-tokens 16 --kv-store-redis 127.0.0.1:" + std::to_string(redis.port());
  Server a(flags), b(flags);
  ASSERT_TRUE(a.ok()) << a.log();
  ASSERT_TRUE(b.ok()) << b.log();
  const auto p = PromptTokens(2);
  EXPECT_EQ(b.Held(p, "redis"), 0);
  const json ra = a.Complete(p);
  EXPECT_EQ(StoreCached(ra), 0);
  ASSERT_TRUE(b.WaitHeld(p, "redis", 96)) << "B does not see A's chunks";
  const json rb = b.Complete(p);
  EXPECT_EQ(StoreCached(rb), 96);
  EXPECT_EQ(rb["usage"]["prompt_tokens_details"]["cached_tokens"], 96);
  EXPECT_EQ(rb["choices"][0]["text"], ra["choices"][0]["text"]);
  EXPECT_EQ(b.Metric("strata_kv_store_loaded_tokens_total{tier=\"redis\"}"), 96);
  EXPECT_GE(b.Metric("strata_kv_store_hits_total{tier=\"redis\"}"), 6);
  EXPECT_GT(b.Metric("strata_kv_store_read_bytes_total{tier=\"redis\"}"), 0);
  EXPECT_EQ(b.Metric("strata_prompt_tokens_store_cached_total"), 96);
}

// Two processes on one disk directory; then a restarted process finds it.
TEST(CacheControl, TwoProcessesShareDiskAndRestartFindsIt) {
  const std::string disk = FreshDir("shared-disk");
  const std::string flags = "--kv-chunk-tokens 16 --kv-store-disk " + disk;
  const auto p = PromptTokens(3);
  json ra;
  {
    Server a(flags), b(flags);
    ASSERT_TRUE(a.ok()) << a.log();
    ASSERT_TRUE(b.ok()) << b.log();
    ra = a.Complete(p);
    EXPECT_EQ(StoreCached(ra), 0);
    ASSERT_TRUE(b.WaitHeld(p, "disk", 96)) << "B does not see A's chunks";
    const json rb = b.Complete(p);
    EXPECT_EQ(StoreCached(rb), 96);
    EXPECT_EQ(rb["choices"][0]["text"], ra["choices"][0]["text"]);
  }
  Server c(flags);
  ASSERT_TRUE(c.ok()) << c.log();
  EXPECT_EQ(c.Held(p, "disk"), 96);
  const json rc = c.Complete(p);
  EXPECT_EQ(StoreCached(rc), 96);
  EXPECT_EQ(rc["choices"][0]["text"], ra["choices"][0]["text"]);
  std::filesystem::remove_all(disk);
}

// redis-server killed mid-run: requests still succeed (recompute), the
// failure is counted and health reports it.
TEST(CacheControl, RedisKilledMidRun) {
  if (!testing::HaveRedisServer()) GTEST_SKIP() << "no redis-server";
  testing::RedisTestServer redis;
  ASSERT_TRUE(redis.Start());
  Server srv("--kv-chunk-tokens 16 --kv-store-timeout 500 --kv-store-redis 127.0.0.1:" + std::to_string(redis.port()));
  ASSERT_TRUE(srv.ok()) << srv.log();
  const auto p = PromptTokens(4);
  const json r1 = srv.Complete(p);
  ASSERT_TRUE(srv.WaitHeld(p, "redis", 96));
  EXPECT_EQ(srv.Request("GET", "/v1/cache/health").status, 200);
  redis.Stop();
  // The same prompt (engine memory may serve it) and a new one (its chunks
  // cannot be stored): both succeed.
  const json r2 = srv.Complete(p);
  EXPECT_EQ(r2["choices"][0]["text"], r1["choices"][0]["text"]);
  const auto q = PromptTokens(5);
  const json r3 = srv.Complete(q);
  EXPECT_EQ(r3["usage"]["prompt_tokens"], 100);
  // The lookup answers (nothing held) instead of failing.
  auto look = srv.Post("/v1/cache/lookup", {{"tokens", q}});
  EXPECT_EQ(look.status, 200) << look.body;
  auto health = srv.Request("GET", "/v1/cache/health");
  EXPECT_EQ(health.status, 503) << health.body;
  EXPECT_EQ(health.j()["status"], "degraded");
  EXPECT_FALSE(health.j()["tiers"][0]["ok"].get<bool>());
  double failures = 0;
  for (int i = 0; i < 50 && failures <= 0; ++i) {
    failures = srv.Metric("strata_kv_store_put_failures_total{tier=\"redis\"}") +
               srv.Metric("strata_kv_store_get_failures_total{tier=\"redis\"}") + srv.Metric("strata_kv_store_fallbacks_total");
    if (failures <= 0) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_GT(failures, 0) << "no metric counted the dead redis";
  // The CLI says so too.
  std::string out = srv.Cli("health");
  EXPECT_NE(srv.last_exit(), 0) << out;
  EXPECT_NE(out.find("degraded"), std::string::npos) << out;
}

}  // namespace
}  // namespace strata
