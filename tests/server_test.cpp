// strata serve end to end: the binary on an ephemeral loopback port, driven
// by curl (and the official openai npm client when installed). After every
// test the server's KV usage must be back to zero.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <thread>

#include "test_util.h"

namespace strata {
namespace {

using json = nlohmann::json;
using testing::Python;
using testing::RunCommand;
using testing::SourceDir;
using testing::StrataBin;

std::string ServeModel() { return testing::TinyLlama("serve"); }

struct HttpResult {
  int status = 0;
  std::string body;
};

// A `strata serve` process for one test.
class ServerProcess {
 public:
  explicit ServerProcess(const std::string& extra_flags = "", const std::string& sizes = "-c 512 --parallel 8 --kv-budget 8",
                         const std::string& host = "127.0.0.1")
      : host_(host) {
    dir_ = testing::TestDataDir("serve/run-" + std::to_string(::getpid()) + "-" + std::to_string(counter_++));
    log_ = dir_ + "/server.log";
    auto r = RunCommand(StrataBin() + " serve -m " + ServeModel() + " --host " + host + " --port 0 -t 2 " + sizes + " " +
                        extra_flags + " > " + log_ + " 2>&1 & echo $!");
    pid_ = std::atoi(r.output.c_str());
    const std::string marker = "listening on http://" + host + ":";
    for (int i = 0; i < 600 && port_ == 0; ++i) {
      const std::string text = log();
      const size_t at = text.find(marker);
      if (at != std::string::npos) port_ = std::atoi(text.c_str() + at + marker.size());
      else std::this_thread::sleep_for(std::chrono::milliseconds(100));
      if (::kill(pid_, 0) != 0) break;
    }
  }
  ~ServerProcess() {
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
      for (int i = 0; i < 100 && ::kill(pid_, 0) == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
      if (::kill(pid_, 0) == 0) {
        ::kill(pid_, SIGKILL);
        ADD_FAILURE() << "strata serve did not exit on SIGTERM";
      }
    }
    // Sanitizer reports (leaks at exit included) land in the server's log.
    const std::string text = log();
    if (text.find("Sanitizer") != std::string::npos || text.find("runtime error") != std::string::npos) {
      ADD_FAILURE() << text;
    } else {
      std::filesystem::remove_all(dir_);
    }
  }
  bool ok() const { return port_ > 0; }
  std::string log() const {
    std::ifstream in(log_);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  }
  std::string url(const std::string& path) const {
    const std::string h = host_.find(':') != std::string::npos ? "[" + host_ + "]" : host_;
    return "http://" + h + ":" + std::to_string(port_) + path;
  }
  const std::string& dir() const { return dir_; }

  HttpResult Request(const std::string& method, const std::string& path, const std::string& body = "",
                     const std::string& headers = "") {
    const std::string file = dir_ + "/body-" + std::to_string(counter_++) + ".json";
    std::ofstream(file, std::ios::binary) << body;
    std::string cmd = "curl -s -S -g --max-time 120 -o " + file + ".out -w '%{http_code}' -X " + method + " " + headers;
    if (method == "POST") cmd += " -H 'Content-Type: application/json' --data-binary @" + file;
    auto r = RunCommand(cmd + " '" + url(path) + "'", false);
    std::ifstream in(file + ".out", std::ios::binary);
    return HttpResult{std::atoi(r.output.c_str()), std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>())};
  }
  HttpResult Post(const std::string& path, const json& body) { return Request("POST", path, body.dump()); }

  // Gauges from /metrics.
  double Metric(const std::string& name) {
    auto r = Request("GET", "/metrics");
    const size_t at = r.body.find("\n" + name + " ");
    if (at == std::string::npos) return -1;
    return std::strtod(r.body.c_str() + at + name.size() + 2, nullptr);
  }
  // Waits until no sequence holds KV (cancellations land at the next step).
  bool KvBackToZero() {
    for (int i = 0; i < 200; ++i) {
      if (Metric("strata_kv_used_bytes") == 0 && Metric("strata_requests_running") == 0 &&
          Metric("strata_requests_waiting") == 0) {
        return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
  }

 private:
  static inline int counter_ = 0;
  std::string host_;
  std::string dir_, log_;
  int pid_ = -1;
  int port_ = 0;
};

// The payloads of an SSE body, in order.
std::vector<std::string> SseData(const std::string& body) {
  std::vector<std::string> out;
  size_t at = 0;
  while ((at = body.find("data: ", at)) != std::string::npos) {
    const size_t end = body.find("\n\n", at);
    out.push_back(body.substr(at + 6, end - at - 6));
    at = end;
  }
  return out;
}

TEST(ServerTest, CompletionsAndChatStreamAndNot) {
  ServerProcess srv;
  ASSERT_TRUE(srv.ok()) << srv.log();
  EXPECT_EQ(srv.Request("GET", "/health").status, 200);
  auto models = srv.Request("GET", "/v1/models");
  ASSERT_EQ(models.status, 200);
  EXPECT_EQ(json::parse(models.body)["data"][0]["id"], "tiny_llama_f32");

  const std::string prompt = "The quick brown fox jumps over the lazy dog, and then the dog sleeps again.";
  json req = {{"model", "tiny_llama_f32"}, {"prompt", prompt}, {"max_tokens", 12}, {"temperature", 0}, {"ignore_eos", true}};
  auto a = srv.Post("/v1/completions", req);
  ASSERT_EQ(a.status, 200) << a.body;
  json ja = json::parse(a.body);
  EXPECT_EQ(ja["object"], "text_completion");
  EXPECT_EQ(ja["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(ja["usage"]["completion_tokens"], 12);
  EXPECT_EQ(ja["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
  const int64_t n_prompt = ja["usage"]["prompt_tokens"];
  EXPECT_GT(n_prompt, 32);
  // Same prompt again: its full blocks come from the prefix cache, and the
  // greedy output does not change.
  auto b = srv.Post("/v1/completions", req);
  json jb = json::parse(b.body);
  EXPECT_EQ(jb["choices"][0]["text"], ja["choices"][0]["text"]);
  EXPECT_EQ(jb["usage"]["prompt_tokens_details"]["cached_tokens"], (n_prompt - 1) / 16 * 16);
  // Another tenant's salt does not share it.
  req["cache_salt"] = "tenant-b";
  EXPECT_EQ(json::parse(srv.Post("/v1/completions", req).body)["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
  req.erase("cache_salt");

  // Streaming gives the same text in pieces, then [DONE].
  req["stream"] = true;
  req["stream_options"] = {{"include_usage", true}};
  auto s = srv.Post("/v1/completions", req);
  ASSERT_EQ(s.status, 200);
  auto events = SseData(s.body);
  ASSERT_GE(events.size(), 3u) << s.body;
  EXPECT_EQ(events.back(), "[DONE]");
  std::string text;
  std::string finish;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    json e = json::parse(events[i]);
    if (e["choices"].empty()) {
      EXPECT_EQ(e["usage"]["completion_tokens"], 12);
      continue;
    }
    text += e["choices"][0]["text"].get<std::string>();
    if (!e["choices"][0]["finish_reason"].is_null()) finish = e["choices"][0]["finish_reason"];
  }
  EXPECT_EQ(text, ja["choices"][0]["text"]);
  EXPECT_EQ(finish, "length");

  // Chat, both ways.
  json chat = {{"model", "tiny_llama_f32"},
               {"messages", {{{"role", "system"}, {"content", "Be brief."}}, {{"role", "user"}, {"content", "Hello!"}}}},
               {"max_tokens", 6}, {"temperature", 0}};
  auto c = srv.Post("/v1/chat/completions", chat);
  ASSERT_EQ(c.status, 200) << c.body;
  json jc = json::parse(c.body);
  EXPECT_EQ(jc["object"], "chat.completion");
  EXPECT_EQ(jc["choices"][0]["message"]["role"], "assistant");
  chat["stream"] = true;
  auto cs = srv.Post("/v1/chat/completions", chat);
  auto cev = SseData(cs.body);
  ASSERT_GE(cev.size(), 2u);
  EXPECT_EQ(cev.back(), "[DONE]");
  EXPECT_EQ(json::parse(cev[0])["choices"][0]["delta"]["role"], "assistant");
  std::string ctext;
  for (size_t i = 0; i + 1 < cev.size(); ++i) {
    json d = json::parse(cev[i])["choices"][0]["delta"];
    if (d.contains("content")) ctext += d["content"].get<std::string>();
  }
  EXPECT_EQ(ctext, jc["choices"][0]["message"]["content"]);

  // Stop strings and token-id prompts.
  json stop = {{"prompt", json::array({5, 6, 7, 8})}, {"max_tokens", 4}, {"temperature", 0}};
  auto st = srv.Post("/v1/completions", stop);
  ASSERT_EQ(st.status, 200) << st.body;
  EXPECT_EQ(json::parse(st.body)["usage"]["prompt_tokens"], 4);

  auto metrics = srv.Request("GET", "/metrics");
  EXPECT_NE(metrics.body.find("strata_time_to_first_token_seconds_bucket{le=\"+Inf\"}"), std::string::npos);
  EXPECT_NE(metrics.body.find("strata_time_per_output_token_seconds_count"), std::string::npos);
  EXPECT_GT(srv.Metric("strata_prefix_cache_hit_rate"), 0);
  EXPECT_TRUE(srv.KvBackToZero());
}

TEST(ServerTest, BadInputGetsOpenAiErrors) {
  ServerProcess srv("--max-body 0.01 --max-tokens-limit 1000");
  ASSERT_TRUE(srv.ok()) << srv.log();
  auto expect_error = [&](const HttpResult& r, int status, const std::string& code_or_param, const char* what) {
    EXPECT_EQ(r.status, status) << what << ": " << r.body;
    json j = json::parse(r.body, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << what << ": " << r.body;
    ASSERT_TRUE(j.contains("error")) << what << ": " << r.body;
    EXPECT_TRUE(j["error"]["message"].is_string()) << what;
    EXPECT_TRUE(j["error"]["type"].is_string()) << what;
    if (!code_or_param.empty()) {
      EXPECT_TRUE(j["error"]["code"] == code_or_param || j["error"]["param"] == code_or_param) << what << ": " << r.body;
    }
  };
  expect_error(srv.Request("POST", "/v1/completions", "{\"prompt\": \"hi\""), 400, "invalid_json", "truncated JSON");
  expect_error(srv.Request("POST", "/v1/completions", "[1,2]"), 400, "invalid_json", "not an object");
  expect_error(srv.Post("/v1/completions", {{"prompt", "hi"}, {"max_tokens", "5"}}), 400, "max_tokens", "string max_tokens");
  expect_error(srv.Post("/v1/completions", {{"prompt", "hi"}, {"max_tokens", 0}}), 400, "max_tokens", "zero max_tokens");
  expect_error(srv.Post("/v1/completions", {{"prompt", "hi"}, {"max_tokens", 5000}}), 400, "max_tokens", "max_tokens over the limit");
  expect_error(srv.Post("/v1/completions", {{"prompt", "hi"}, {"temperature", 5}}), 400, "temperature", "temperature 5");
  expect_error(srv.Post("/v1/completions", {{"prompt", "hi"}, {"top_p", -1}}), 400, "top_p", "negative top_p");
  expect_error(srv.Post("/v1/completions", {{"prompt", "hi"}, {"stream", "yes"}}), 400, "stream", "string stream");
  expect_error(srv.Post("/v1/completions", {{"prompt", "hi"}, {"n", 2}}), 400, "n", "n = 2");
  expect_error(srv.Post("/v1/completions", {{"prompt", "hi"}, {"stop", {1, 2}}}), 400, "stop", "numeric stop");
  expect_error(srv.Post("/v1/completions", {{"prompt", 42}}), 400, "prompt", "numeric prompt");
  expect_error(srv.Post("/v1/completions", {{"max_tokens", 3}}), 400, "prompt", "missing prompt");
  expect_error(srv.Post("/v1/completions", {{"prompt", {1, 99999}}}), 400, "prompt", "token id out of range");
  expect_error(srv.Post("/v1/completions", {{"model", "gpt-4"}, {"prompt", "hi"}}), 404, "model_not_found", "unknown model");
  expect_error(srv.Post("/v1/chat/completions", {{"messages", "hi"}}), 400, "messages", "messages not an array");
  expect_error(srv.Post("/v1/chat/completions", {{"messages", {{{"role", "wizard"}, {"content", "x"}}}}}), 400, "messages[0].role", "bad role");
  expect_error(srv.Post("/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", 7}}}}}), 400, "messages[0].content", "numeric content");
  std::vector<int> long_prompt(600, 5);
  expect_error(srv.Post("/v1/completions", {{"prompt", long_prompt}}), 400, "context_length_exceeded", "prompt longer than the context");
  expect_error(srv.Post("/v1/completions", {{"prompt", std::string(20000, 'a')}}), 413, "request_too_large", "oversized body");
  expect_error(srv.Request("GET", "/v1/nothing"), 404, "not_found", "unknown route");
  // The server is still fine.
  auto ok = srv.Post("/v1/completions", {{"prompt", "hi"}, {"max_tokens", 2}});
  EXPECT_EQ(ok.status, 200) << ok.body;
  EXPECT_TRUE(srv.KvBackToZero());
}

TEST(ServerTest, ApiKeyIsRequiredWhenSet) {
  ServerProcess srv("--api-key s3cret");
  ASSERT_TRUE(srv.ok()) << srv.log();
  auto no = srv.Request("GET", "/v1/models");
  EXPECT_EQ(no.status, 401);
  EXPECT_EQ(json::parse(no.body)["error"]["code"], "invalid_api_key");
  EXPECT_EQ(srv.Request("GET", "/v1/models", "", "-H 'Authorization: Bearer wrong'").status, 401);
  EXPECT_EQ(srv.Request("GET", "/v1/models", "", "-H 'Authorization: Bearer s3cret'").status, 200);
  EXPECT_EQ(srv.Request("GET", "/health").status, 200);
}

TEST(ServerTest, ConcurrentStreamingClientsAndVanishingClients) {
  for (const std::string kind : {"paged", "virtual"}) {
    // A long context so a vanishing client's request is still running when
    // it goes (a killed client's socket makes the next write fail).
    ServerProcess srv("--kv-memory " + kind, "-c 4096 --parallel 8 --kv-budget 48");
    ASSERT_TRUE(srv.ok()) << srv.log();
    // 32 streaming clients at once, for a bounded time, zero errors.
    const int n = testing::Sanitized() ? 8 : 32;
    const std::string body = srv.dir() + "/stream.json";
    std::ofstream(body) << json{{"prompt", "Once upon a time"}, {"max_tokens", 24}, {"stream", true}, {"ignore_eos", true}}.dump();
    std::string cmd = "cd " + srv.dir() + " && for i in $(seq 1 " + std::to_string(n) + "); do "
                      "curl -s -S --max-time 180 -o out$i.txt -w '%{http_code}\\n' -H 'Content-Type: application/json' "
                      "--data-binary @stream.json '" + srv.url("/v1/completions") + "' > code$i.txt 2>&1 & done; wait";
    auto r = RunCommand(cmd);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    int good = 0;
    for (int i = 1; i <= n; ++i) {
      std::ifstream code(srv.dir() + "/code" + std::to_string(i) + ".txt");
      std::string c;
      code >> c;
      std::ifstream out(srv.dir() + "/out" + std::to_string(i) + ".txt");
      std::string o((std::istreambuf_iterator<char>(out)), std::istreambuf_iterator<char>());
      auto ev = SseData(o);
      if (c == "200" && !ev.empty() && ev.back() == "[DONE]" && o.find("\"error\"") == std::string::npos) ++good;
      else ADD_FAILURE() << kind << " client " << i << " code " << c << ": " << o.substr(0, 300);
    }
    EXPECT_EQ(good, n) << kind;
    EXPECT_EQ(srv.Metric("strata_http_responses_5xx_total"), 0);

    // Clients that vanish mid-stream: their requests are cancelled and the
    // KV comes back.
    std::ofstream(body) << json{{"prompt", "Once upon a time"}, {"max_tokens", 4000}, {"stream", true}, {"ignore_eos", true}}.dump();
    RunCommand("cd " + srv.dir() + " && for i in 1 2 3 4; do curl -s --max-time 0.5 -o /dev/null -H 'Content-Type: application/json' "
               "--data-binary @stream.json '" + srv.url("/v1/completions") + "' & done; wait");
    EXPECT_TRUE(srv.KvBackToZero()) << kind;
    EXPECT_GE(srv.Metric("strata_requests_cancelled_total"), 1) << kind;
  }
}

TEST(ServerTest, VanishingNonStreamingClientsAreCancelled) {
  // IPv6 too: the server finds a non-streaming client's socket by its
  // addresses, and those come in either family.
  for (const std::string host : {"127.0.0.1", "::1"}) {
    ServerProcess srv("", "-c 4096 --parallel 8 --kv-budget 48", host);
    if (!srv.ok() && host == "::1") {
      std::cerr << "no IPv6 loopback here; skipping the ::1 round\n" << srv.log();
      continue;
    }
    ASSERT_TRUE(srv.ok()) << srv.log();
    const double disconnects0 = srv.Metric("strata_client_disconnects_total");
    const double cancelled0 = srv.Metric("strata_requests_cancelled_total");
    const double tokens0 = srv.Metric("strata_generation_tokens_total");
    ASSERT_EQ(disconnects0, 0) << host;

    // Clients that give up on a long non-streaming completion (it cannot end
    // early: ignore_eos) and close the connection without reading a byte.
    const int n = 4;
    const int64_t max_tokens = 4000;
    std::ofstream(srv.dir() + "/long.json") << json{{"prompt", "Once upon a time"}, {"max_tokens", max_tokens}, {"ignore_eos", true}}.dump();
    std::ofstream(srv.dir() + "/long_chat.json")
        << json{{"messages", {{{"role", "user"}, {"content", "Tell me a long story."}}}}, {"max_tokens", max_tokens}, {"ignore_eos", true}}.dump();
    // The clients are killed only once all n requests are running, so none
    // can have finished first however fast the machine is.
    std::string cmd = "cd " + srv.dir() + " && for i in $(seq 1 " + std::to_string(n) + "); do "
                      "if [ $((i % 2)) = 0 ]; then f=long.json; p=/v1/completions; else f=long_chat.json; p=/v1/chat/completions; fi; "
                      "curl -s -g -o /dev/null -H 'Content-Type: application/json' --data-binary @$f '" +
                      srv.url("") + "'$p > /dev/null 2>&1 & echo $! >> curl.pids; done";
    RunCommand(cmd);
    double running = 0;
    for (int i = 0; i < 600 && (running = srv.Metric("strata_requests_running")) < n; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    ASSERT_EQ(running, n) << host << "\n" << srv.log();
    RunCommand("cd " + srv.dir() + " && kill $(cat curl.pids); rm -f curl.pids");

    // Each is noticed and cancelled: the counters move by exactly n, and the
    // engine stops long before n * max_tokens tokens could have been made.
    double disconnects = 0;
    for (int i = 0; i < 300 && (disconnects = srv.Metric("strata_client_disconnects_total")) < n; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    EXPECT_EQ(disconnects, n) << host << "\n" << srv.log();
    EXPECT_TRUE(srv.KvBackToZero()) << host;
    EXPECT_EQ(srv.Metric("strata_requests_cancelled_total") - cancelled0, n) << host;
    const double generated = srv.Metric("strata_generation_tokens_total") - tokens0;
    EXPECT_LT(generated, n * max_tokens / 2) << host;
    // A request that was only forgotten, not cancelled, would still be
    // generating here.
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    EXPECT_EQ(srv.Metric("strata_generation_tokens_total") - tokens0, generated) << host;

    // A client that stays is answered in full, though its request outlives
    // the server's first checks on the connection.
    const auto t0 = std::chrono::steady_clock::now();
    auto ok = srv.Post("/v1/completions", {{"prompt", "Once upon a time"}, {"max_tokens", 400}, {"ignore_eos", true}, {"temperature", 0}});
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ASSERT_EQ(ok.status, 200) << host << ": " << ok.body;
    json j = json::parse(ok.body);
    EXPECT_EQ(j["choices"][0]["finish_reason"], "length") << host;
    EXPECT_EQ(j["usage"]["completion_tokens"], 400) << host;
    auto chat = srv.Post("/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", "Hello!"}}}}, {"max_tokens", 5}, {"ignore_eos", true}});
    ASSERT_EQ(chat.status, 200) << host << ": " << chat.body;
    EXPECT_EQ(json::parse(chat.body)["usage"]["completion_tokens"], 5) << host;
    EXPECT_EQ(srv.Metric("strata_client_disconnects_total"), n) << host;
    EXPECT_EQ(srv.Metric("strata_requests_cancelled_total") - cancelled0, n) << host;
    EXPECT_TRUE(srv.KvBackToZero()) << host;
    std::cerr << host << ": " << generated << " tokens generated for " << n << " vanished clients; a 400-token request took "
              << seconds << " s\n";
  }
}

TEST(ServerTest, OfficialOpenAiNodeClient) {
  const std::string dir = SourceDir() + "/tests/openai_client";
  if (!std::filesystem::exists(dir + "/node_modules/openai")) {
    GTEST_SKIP() << "tests/openai_client/node_modules is missing (run npm ci there)";
  }
  if (RunCommand("node --version").exit_code != 0) GTEST_SKIP() << "node is not installed";
  ServerProcess srv("--api-key k1");
  ASSERT_TRUE(srv.ok()) << srv.log();
  auto r = RunCommand("node " + dir + "/client.mjs " + srv.url("/v1") + " tiny_llama_f32 k1");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("ALL OK"), std::string::npos) << r.output;
  EXPECT_TRUE(srv.KvBackToZero());
}

}  // namespace
}  // namespace strata
