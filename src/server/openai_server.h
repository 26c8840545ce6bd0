// OpenAiServer: an OpenAI-compatible HTTP front end over a Scheduler, on
// cpp-httplib.
//
//   POST /v1/completions, POST /v1/chat/completions  (stream and not; SSE
//        ends with `data: [DONE]`; usage has prompt_tokens_details.cached_tokens)
//   GET  /v1/models, /health, /metrics (Prometheus text format)
//   /v1/cache/* (KV cache lookups across engine memory and the store, and the
//        store's control API; server/cache_api.h)
//
// Errors use OpenAI's shape {"error": {"message", "type", "param", "code"}}
// with a 4xx status for anything the client got wrong. A client that goes
// away cancels its request (its KV is freed at the next step): a streaming
// one is noticed by a failed write, a non-streaming one by watching its
// socket (server/peer_watch.h), and its request is logged as status 499.
//
// Thread-safety: handlers run on the HTTP thread pool; the Scheduler owns the
// engine thread. Start/Stop from one controlling thread.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "base/status.h"
#include "engine/scheduler.h"
#include "server/chat_template.h"

namespace httplib {
class Server;
}

namespace strata {

class CacheApi;

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;                  // 0: any free port (see Bind's result)
  std::string api_key;              // non-empty: /v1/* needs "Authorization: Bearer <key>"
  std::string model_id = "strata";  // the name clients pass as "model"
  size_t max_body_bytes = 1 << 20;
  int64_t max_prompt_tokens = 0;    // 0: the context minus one
  int64_t max_tokens_limit = 4096;  // largest max_tokens accepted
  int http_threads = 64;            // concurrent connections served
  bool save_decode_cache = false;   // default of the request field "save_decode_cache"
};

// Latency histogram with fixed Prometheus buckets.
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1) {}
  void Observe(double v);
  void Write(std::string* out, const std::string& name, const std::string& help) const;

 private:
  mutable std::mutex mu_;
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;
  double sum_ = 0;
  uint64_t n_ = 0;
};

class OpenAiServer {
 public:
  OpenAiServer(const Model& model, Scheduler& scheduler, ServerOptions options);
  ~OpenAiServer();

  // Binds the listening socket; returns the port (useful with port 0).
  Expected<int> Bind();
  // Serves until Stop(); REQUIRES: Bind() succeeded.
  Status Serve();
  // Stops the scheduler (outstanding requests end as cancelled), then the
  // HTTP server. Safe from any thread.
  void Stop();

  // The body of /metrics.
  std::string MetricsText() const;

 private:
  struct Stream;
  void Routes();

  const Model& model_;
  Scheduler& sched_;
  ServerOptions options_;
  ChatTemplate template_;
  std::unique_ptr<httplib::Server> http_;
  int64_t created_ = 0;
  std::atomic<uint64_t> next_id_{1};
  std::atomic<uint64_t> http_ok_{0}, http_client_errors_{0}, http_server_errors_{0};
  std::atomic<uint64_t> disconnects_{0};
  Histogram ttft_, tpot_, e2e_;
  std::unique_ptr<CacheApi> cache_api_;
};

}  // namespace strata
