#include "server/openai_server.h"

#include <httplib.h>

#include <chrono>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <nlohmann/json.hpp>
#include <optional>

#include "model/gguf.h"
#include "server/cache_api.h"
#include "server/peer_watch.h"

namespace strata {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

// How often a non-streaming request checks that its client is still there:
// rare enough to cost nothing, soon enough that a vanished client's request
// stops within a few decode steps.
constexpr std::chrono::milliseconds kPeerPollInterval{200};
// nginx's status for a request whose client went away before the answer.
constexpr int kClientClosedRequest = 499;

// Never throws on invalid UTF-8 (model output may contain U+FFFD-worthy bytes).
std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

struct ApiError {
  int status = 400;
  std::string message;
  std::string param;
  std::string code;
  std::string type = "invalid_request_error";
};

json ErrorJson(const ApiError& e) {
  json err = {{"message", e.message}, {"type", e.type}, {"param", nullptr}, {"code", nullptr}};
  if (!e.param.empty()) err["param"] = e.param;
  if (!e.code.empty()) err["code"] = e.code;
  return json{{"error", err}};
}

void SendError(httplib::Response& res, const ApiError& e) {
  res.status = e.status;
  res.set_content(Dump(ErrorJson(e)), "application/json");
}

ApiError BadParam(const std::string& param, const std::string& message) {
  return ApiError{400, message, param, "invalid_value"};
}

const char* TypeName(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::boolean: return "a boolean";
    case json::value_t::string: return "a string";
    case json::value_t::array: return "an array";
    case json::value_t::object: return "an object";
    case json::value_t::number_float: return "a number";
    default: return "an integer";
  }
}

// Optional fields: absent or null means "default". Wrong types and values
// outside [lo, hi] are the client's error.
std::optional<ApiError> GetNumber(const json& body, const char* key, double lo, double hi, double* out) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return std::nullopt;
  if (!it->is_number()) return BadParam(key, std::string("'") + key + "' must be a number, not " + TypeName(*it));
  const double v = it->get<double>();
  if (!(v >= lo && v <= hi)) {
    return BadParam(key, std::string("'") + key + "' must be between " + json(lo).dump() + " and " + json(hi).dump() +
                             ", got " + it->dump());
  }
  *out = v;
  return std::nullopt;
}

std::optional<ApiError> GetInt(const json& body, const char* key, int64_t lo, int64_t hi, int64_t* out) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return std::nullopt;
  if (!it->is_number_integer()) return BadParam(key, std::string("'") + key + "' must be an integer, not " + TypeName(*it));
  // JSON parsers store non-negative integers as unsigned; compare in the
  // type they were stored in so huge values do not wrap.
  const bool out_of_range = it->is_number_unsigned()
                                ? (it->get<uint64_t>() > static_cast<uint64_t>(hi) ||
                                   (lo > 0 && it->get<uint64_t>() < static_cast<uint64_t>(lo)))
                                : (it->get<int64_t>() < lo || it->get<int64_t>() > hi);
  if (out_of_range) {
    return BadParam(key, std::string("'") + key + "' must be between " + std::to_string(lo) + " and " + std::to_string(hi) +
                             ", got " + it->dump());
  }
  *out = it->get<int64_t>();
  return std::nullopt;
}

std::optional<ApiError> GetBool(const json& body, const char* key, bool* out) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return std::nullopt;
  if (!it->is_boolean()) return BadParam(key, std::string("'") + key + "' must be a boolean, not " + TypeName(*it));
  *out = it->get<bool>();
  return std::nullopt;
}

std::optional<ApiError> GetString(const json& body, const char* key, std::string* out) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return std::nullopt;
  if (!it->is_string()) return BadParam(key, std::string("'") + key + "' must be a string, not " + TypeName(*it));
  *out = it->get<std::string>();
  return std::nullopt;
}

const char* FinishReason(StopReason r) {
  switch (r) {
    case StopReason::kEndOfGeneration:
    case StopReason::kStopString: return "stop";
    case StopReason::kLength:
    case StopReason::kContextFull: return "length";
    case StopReason::kCancelled: return "cancelled";
  }
  return "stop";
}

int64_t UnixNow() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

void Histogram::Observe(double v) {
  std::lock_guard<std::mutex> lock(mu_);
  size_t i = 0;
  while (i < bounds_.size() && v > bounds_[i]) ++i;
  ++counts_[i];
  sum_ += v;
  ++n_;
}

void Histogram::Write(std::string* out, const std::string& name, const std::string& help) const {
  std::lock_guard<std::mutex> lock(mu_);
  *out += "# HELP " + name + " " + help + "\n# TYPE " + name + " histogram\n";
  uint64_t cum = 0;
  char buf[64];
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cum += counts_[i];
    std::snprintf(buf, sizeof buf, "%g", bounds_[i]);
    *out += name + "_bucket{le=\"" + buf + "\"} " + std::to_string(cum) + "\n";
  }
  cum += counts_.back();
  *out += name + "_bucket{le=\"+Inf\"} " + std::to_string(cum) + "\n";
  std::snprintf(buf, sizeof buf, "%.9g", sum_);
  *out += name + "_sum " + buf + "\n" + name + "_count " + std::to_string(n_) + "\n";
}

// What a handler thread and the engine callback share for one request.
struct OpenAiServer::Stream {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<RequestOutput> events;
  bool finished = false;
  uint64_t id = 0;  // scheduler id
};

namespace {

// Everything a generation request needs, parsed and validated.
struct Parsed {
  std::vector<TokenId> prompt;
  RequestOptions options;
  bool stream = false;
  bool include_usage = false;
};

}  // namespace

OpenAiServer::OpenAiServer(const Model& model, Scheduler& scheduler, ServerOptions options)
    : model_(model),
      sched_(scheduler),
      options_(std::move(options)),
      template_([&] {
        auto t = model.gguf().GetString("tokenizer.chat_template");
        return t.ok() ? *t : std::string();
      }()),
      http_(std::make_unique<httplib::Server>()),
      created_(UnixNow()),
      ttft_({0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}),
      tpot_({0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}),
      e2e_({0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300}),
      cache_api_(std::make_unique<CacheApi>(model, &scheduler.kv(), scheduler.kv_store(), 0)) {
  Routes();
}

OpenAiServer::~OpenAiServer() { Stop(); }

Expected<int> OpenAiServer::Bind() {
  const int port = options_.port == 0 ? http_->bind_to_any_port(options_.host) : (http_->bind_to_port(options_.host, options_.port) ? options_.port : -1);
  if (port < 0) {
    return Status::IoError("cannot listen on " + options_.host + ":" + std::to_string(options_.port) +
                           " (in use, or not an address of this machine)");
  }
  return port;
}

Status OpenAiServer::Serve() {
  if (!http_->listen_after_bind()) return Status::IoError("the HTTP server stopped with an error");
  return Status::Ok();
}

void OpenAiServer::Stop() {
  // The scheduler first: it finishes every outstanding request (cancelled),
  // which wakes handlers blocked on non-streaming requests, so the HTTP
  // thread pool can join.
  sched_.Stop();
  if (http_) http_->stop();
}

std::string OpenAiServer::MetricsText() const {
  const SchedulerCounters c = sched_.counters();
  std::string out;
  auto counter = [&](const std::string& name, const std::string& help, double v, const char* type = "counter") {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.17g", v);
    out += "# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n" + name + " " + buf + "\n";
  };
  counter("strata_requests_submitted_total", "Generation requests accepted by the scheduler.", static_cast<double>(c.requests_submitted));
  counter("strata_requests_finished_total", "Generation requests finished (any reason).", static_cast<double>(c.requests_finished));
  counter("strata_requests_cancelled_total", "Generation requests cancelled (client gone).", static_cast<double>(c.requests_cancelled));
  counter("strata_requests_running", "Sequences holding KV now.", c.running, "gauge");
  counter("strata_requests_waiting", "Requests queued for admission.", c.waiting, "gauge");
  counter("strata_prompt_tokens_total", "Prompt tokens admitted.", static_cast<double>(c.prompt_tokens));
  counter("strata_generation_tokens_total", "Tokens generated.", static_cast<double>(c.generated_tokens));
  counter("strata_prompt_tokens_cached_total", "Prompt tokens served from the prefix cache.", static_cast<double>(c.cached_prompt_tokens));
  counter("strata_preemptions_total", "Sequences preempted (KV dropped, recomputed later).", static_cast<double>(c.preemptions));
  counter("strata_engine_steps_total", "Forward passes run by the scheduler.", static_cast<double>(c.steps));
  counter("strata_kv_budget_bytes", "KV memory budget.", static_cast<double>(c.kv.budget_bytes), "gauge");
  counter("strata_kv_committed_bytes", "KV memory holding data (live and kept for reuse).", static_cast<double>(c.kv.committed_bytes), "gauge");
  counter("strata_kv_used_bytes", "KV memory holding live sequences.", static_cast<double>(c.kv.used_bytes), "gauge");
  counter("strata_kv_cached_bytes", "KV memory kept for reuse (prefix blocks, idle slots).", static_cast<double>(c.kv.cached_bytes), "gauge");
  counter("strata_prefix_cache_query_tokens_total", "Prompt tokens looked up in the prefix cache.", static_cast<double>(c.kv.prefix_query_tokens));
  counter("strata_prefix_cache_hit_tokens_total", "Prompt tokens found in the prefix cache.", static_cast<double>(c.kv.prefix_hit_tokens));
  counter("strata_prefix_cache_hit_rate", "Hit tokens / query tokens since start.",
          c.kv.prefix_query_tokens ? static_cast<double>(c.kv.prefix_hit_tokens) / static_cast<double>(c.kv.prefix_query_tokens) : 0.0, "gauge");
  counter("strata_kv_evictions_total", "Cached blocks or idle slots reclaimed under memory pressure.", static_cast<double>(c.kv.evictions));
  counter("strata_kv_page_maps_total", "Pages mapped by the virtual KV memory.", static_cast<double>(c.kv.page_maps));
  counter("strata_kv_ahead_page_maps_total", "Pages the virtual KV memory's background mapper mapped during forward passes.",
          static_cast<double>(c.kv.ahead_page_maps));
  counter("strata_kv_map_seconds_total", "Time spent mapping KV pages, on any thread.", c.kv.map_seconds);
  counter("strata_kv_map_wait_seconds_total",
          "Time the engine thread spent reserving KV memory (mapping what was not ready, or waiting for the mapper).",
          c.kv.map_wait_seconds);
  counter("strata_http_responses_2xx_total", "HTTP responses with a 2xx status.", static_cast<double>(http_ok_.load()));
  counter("strata_http_responses_4xx_total", "HTTP responses with a 4xx status (499: the client went away first).", static_cast<double>(http_client_errors_.load()));
  counter("strata_http_responses_5xx_total", "HTTP responses with a 5xx status.", static_cast<double>(http_server_errors_.load()));
  counter("strata_client_disconnects_total", "Generation requests (streaming or not) whose client went away before the end; each is cancelled.", static_cast<double>(disconnects_.load()));
  ttft_.Write(&out, "strata_time_to_first_token_seconds", "Submission to first generated token.");
  tpot_.Write(&out, "strata_time_per_output_token_seconds", "Mean time between output tokens of a request.");
  e2e_.Write(&out, "strata_request_duration_seconds", "Submission to the last token.");
  if (sched_.kv_store()) {
    counter("strata_prompt_tokens_store_cached_total", "Prompt tokens loaded from the KV cache store.",
            static_cast<double>(c.store_cached_prompt_tokens));
    counter("strata_requests_loading", "Sequences waiting for a KV cache store load.", c.loading, "gauge");
  }
  cache_api_->AppendMetrics(&out);
  return out;
}

void OpenAiServer::Routes() {
  httplib::Server& s = *http_;
  s.new_task_queue = [n = options_.http_threads] { return new httplib::ThreadPool(static_cast<size_t>(n)); };
  s.set_payload_max_length(options_.max_body_bytes);
  s.set_read_timeout(30, 0);
  s.set_write_timeout(10, 0);

  s.set_logger([this](const httplib::Request&, const httplib::Response& res) {
    if (res.status >= 500) ++http_server_errors_;
    else if (res.status >= 400) ++http_client_errors_;
    else ++http_ok_;
  });
  // Errors httplib produces itself (413, 404 of unknown paths, 400 of
  // unparsable requests) get OpenAI's error body too.
  s.set_error_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    ApiError e;
    e.status = res.status;
    if (res.status == 413) {
      e.message = "the request body is larger than the limit of " + std::to_string(options_.max_body_bytes) + " bytes";
      e.code = "request_too_large";
    } else if (res.status == 404) {
      e.message = "no route for " + req.method + " " + req.path;
      e.code = "not_found";
    } else {
      e.message = "the request could not be processed (HTTP " + std::to_string(res.status) + ")";
    }
    SendError(res, e);
  });
  s.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (options_.api_key.empty() || req.path.rfind("/v1/", 0) != 0) return httplib::Server::HandlerResponse::Unhandled;
    const std::string want = "Bearer " + options_.api_key;
    const std::string got = req.get_header_value("Authorization");
    // Compare every byte so the time taken does not reveal the key's prefix.
    bool same = got.size() == want.size();
    unsigned char diff = 0;
    for (size_t i = 0; i < want.size(); ++i) diff |= static_cast<unsigned char>(want[i] ^ (i < got.size() ? got[i] : 0));
    if (same && diff == 0) return httplib::Server::HandlerResponse::Unhandled;
    SendError(res, ApiError{401, "a valid API key is required: send 'Authorization: Bearer <key>'", "", "invalid_api_key"});
    return httplib::Server::HandlerResponse::Handled;
  });

  s.Get("/health", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("{\"status\":\"ok\"}", "application/json");
  });
  s.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(MetricsText(), "text/plain; version=0.0.4");
  });
  // KV cache lookups (engine memory and the store) and the store's control
  // calls, which answer 404 when no store is configured.
  auto cache = [this](const std::string& op, const httplib::Request& req, httplib::Response& res) {
    const CacheApiReply r = cache_api_->Handle(op, req.body);
    res.status = r.status;
    res.set_content(r.body, "application/json");
  };
  s.Post(R"(/v1/cache/(lookup|pin|unpin|clear|move))",
         [cache](const httplib::Request& req, httplib::Response& res) { cache(req.matches[1].str(), req, res); });
  s.Get(R"(/v1/cache/(stats|health))",
        [cache](const httplib::Request& req, httplib::Response& res) { cache(req.matches[1].str(), req, res); });
  s.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
    json m = {{"id", options_.model_id}, {"object", "model"}, {"created", created_}, {"owned_by", "strata"},
              {"max_model_len", sched_.kv().max_positions()}};
    res.set_content(Dump(json{{"object", "list"}, {"data", json::array({m})}}), "application/json");
  });

  // Shared by both endpoints: parse common fields, then run.
  auto handle = [this](const httplib::Request& req, httplib::Response& res, bool chat) {
    json body;
    try {
      body = json::parse(req.body);
    } catch (const json::parse_error& e) {
      return SendError(res, ApiError{400, std::string("the request body is not valid JSON: ") + e.what(), "", "invalid_json"});
    }
    if (!body.is_object()) return SendError(res, ApiError{400, "the request body must be a JSON object", "", "invalid_json"});

    std::string model = options_.model_id;
    if (auto e = GetString(body, "model", &model)) return SendError(res, *e);
    if (model != options_.model_id) {
      return SendError(res, ApiError{404, "the model '" + model + "' does not exist; this server serves '" + options_.model_id + "'",
                                     "model", "model_not_found"});
    }
    Parsed p;
    const Tokenizer& tok = model_.tokenizer();
    std::vector<std::string> extra_stops;
    if (chat) {
      auto it = body.find("messages");
      if (it == body.end() || !it->is_array() || it->empty()) {
        return SendError(res, BadParam("messages", "'messages' must be a non-empty array of {role, content} objects"));
      }
      std::vector<ChatMessage> msgs;
      for (size_t i = 0; i < it->size(); ++i) {
        const json& m = (*it)[i];
        const std::string where = "messages[" + std::to_string(i) + "]";
        if (!m.is_object()) return SendError(res, BadParam(where, where + " must be an object"));
        auto role = m.find("role");
        if (role == m.end() || !role->is_string()) return SendError(res, BadParam(where + ".role", where + ".role must be a string"));
        const std::string r = role->get<std::string>();
        if (r != "system" && r != "user" && r != "assistant" && r != "developer" && r != "tool") {
          return SendError(res, BadParam(where + ".role", where + ".role must be system, developer, user, assistant or tool, got '" + r + "'"));
        }
        ChatMessage cm{r == "developer" ? "system" : r, ""};
        auto content = m.find("content");
        if (content == m.end() || content->is_null()) {
          // An assistant turn may carry only tool calls; it renders empty.
        } else if (content->is_string()) {
          cm.content = content->get<std::string>();
        } else if (content->is_array()) {
          for (const json& part : *content) {
            if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") || !part["text"].is_string()) {
              return SendError(res, BadParam(where + ".content", where + ".content parts must be {\"type\": \"text\", \"text\": string}; other part types are not supported"));
            }
            cm.content += part["text"].get<std::string>();
          }
        } else {
          return SendError(res, BadParam(where + ".content", where + ".content must be a string or an array of text parts"));
        }
        msgs.push_back(std::move(cm));
      }
      const std::string text = template_.Render(msgs);
      EncodeOptions eo;
      eo.add_bos = true;
      eo.add_eos = false;
      eo.parse_special = template_.kind() != ChatTemplateKind::kFallback;
      auto ids = tok.Encode(text, eo);
      if (!ids.ok()) return SendError(res, BadParam("messages", ids.status().message()));
      p.prompt = std::move(*ids);
      extra_stops = template_.extra_stops();
    } else {
      auto it = body.find("prompt");
      if (it == body.end() || it->is_null()) return SendError(res, BadParam("prompt", "'prompt' is required"));
      const json* prompt = &*it;
      if (prompt->is_array() && prompt->size() == 1 && ((*prompt)[0].is_string() || (*prompt)[0].is_array())) prompt = &(*prompt)[0];
      if (prompt->is_string()) {
        EncodeOptions eo;
        eo.add_bos = true;
        eo.add_eos = false;
        auto ids = tok.Encode(prompt->get<std::string>(), eo);
        if (!ids.ok()) return SendError(res, BadParam("prompt", ids.status().message()));
        p.prompt = std::move(*ids);
      } else if (prompt->is_array() && !prompt->empty() && (*prompt)[0].is_number_integer()) {
        for (const json& t : *prompt) {
          if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() >= model_.config().vocab_size) {
            return SendError(res, BadParam("prompt", "token ids in 'prompt' must be integers in [0, " +
                                                         std::to_string(model_.config().vocab_size) + ")"));
          }
          p.prompt.push_back(static_cast<TokenId>(t.get<int64_t>()));
        }
      } else if (prompt->is_array() && prompt->size() > 1) {
        return SendError(res, BadParam("prompt", "batched prompts are not supported; send one prompt per request"));
      } else {
        return SendError(res, BadParam("prompt", "'prompt' must be a string or an array of token ids"));
      }
    }
    if (p.prompt.empty()) return SendError(res, BadParam(chat ? "messages" : "prompt", "the prompt is empty"));
    const int64_t ctx = sched_.kv().max_positions();
    const int64_t max_prompt = options_.max_prompt_tokens > 0 ? std::min(options_.max_prompt_tokens, ctx - 1) : ctx - 1;
    if (static_cast<int64_t>(p.prompt.size()) > max_prompt) {
      return SendError(res, ApiError{400, "the prompt has " + std::to_string(p.prompt.size()) + " tokens but at most " +
                                              std::to_string(max_prompt) + " are accepted (the context holds " +
                                              std::to_string(ctx) + " tokens)",
                                     chat ? "messages" : "prompt", "context_length_exceeded"});
    }

    // Sampling: OpenAI's defaults (temperature 1, no top-k / min-p).
    RequestOptions& o = p.options;
    o.sampling.temperature = 1.0f;
    o.sampling.top_k = 0;
    o.sampling.top_p = 1.0f;
    o.sampling.min_p = 0.0f;
    double d = 0;
    int64_t i64 = 0;
    if (auto e = GetNumber(body, "temperature", 0, 2, &d)) return SendError(res, *e);
    if (body.contains("temperature") && !body["temperature"].is_null()) o.sampling.temperature = static_cast<float>(d);
    d = 1;
    if (auto e = GetNumber(body, "top_p", 0, 1, &d)) return SendError(res, *e);
    if (!(d > 0)) return SendError(res, BadParam("top_p", "'top_p' must be greater than 0"));
    o.sampling.top_p = static_cast<float>(d);
    d = 0;
    if (auto e = GetNumber(body, "min_p", 0, 1, &d)) return SendError(res, *e);
    o.sampling.min_p = static_cast<float>(d);
    i64 = 0;
    if (auto e = GetInt(body, "top_k", -1, 1 << 30, &i64)) return SendError(res, *e);
    o.sampling.top_k = static_cast<int>(i64);
    d = 0;
    if (auto e = GetNumber(body, "presence_penalty", -2, 2, &d)) return SendError(res, *e);
    o.sampling.presence_penalty = static_cast<float>(d);
    d = 0;
    if (auto e = GetNumber(body, "frequency_penalty", -2, 2, &d)) return SendError(res, *e);
    o.sampling.frequency_penalty = static_cast<float>(d);
    d = 1;
    if (auto e = GetNumber(body, "repetition_penalty", 0.01, 10, &d)) return SendError(res, *e);
    o.sampling.repeat_penalty = static_cast<float>(d);
    i64 = -1;
    if (auto e = GetInt(body, "seed", INT64_MIN, INT64_MAX, &i64)) return SendError(res, *e);
    if (body.contains("seed") && !body["seed"].is_null()) o.sampling.seed = static_cast<uint64_t>(i64) & 0x7fffffffffffffffull;
    i64 = 1;
    if (auto e = GetInt(body, "n", 1, 1, &i64)) return SendError(res, *e);
    if (body.contains("logprobs") && !body["logprobs"].is_null() && body["logprobs"] != false) {
      return SendError(res, BadParam("logprobs", "'logprobs' is not supported"));
    }
    if (body.contains("echo") && body["echo"] == true) return SendError(res, BadParam("echo", "'echo' is not supported"));
    const int64_t limit = options_.max_tokens_limit;
    o.max_tokens = chat ? std::min<int64_t>(limit, ctx) : 16;
    for (const char* key : {"max_tokens", "max_completion_tokens"}) {
      if (auto e = GetInt(body, key, 1, limit, &o.max_tokens)) return SendError(res, *e);
    }
    if (auto e = GetBool(body, "stream", &p.stream)) return SendError(res, *e);
    if (auto e = GetBool(body, "ignore_eos", &o.ignore_eos)) return SendError(res, *e);
    if (auto e = GetString(body, "cache_salt", &o.cache_salt)) return SendError(res, *e);
    o.save_decode_cache = options_.save_decode_cache;
    if (auto e = GetBool(body, "save_decode_cache", &o.save_decode_cache)) return SendError(res, *e);
    if (auto so = body.find("stream_options"); so != body.end() && !so->is_null()) {
      if (!so->is_object()) return SendError(res, BadParam("stream_options", "'stream_options' must be an object"));
      if (auto e = GetBool(*so, "include_usage", &p.include_usage)) return SendError(res, *e);
    }
    if (auto st = body.find("stop"); st != body.end() && !st->is_null()) {
      if (st->is_string()) {
        o.stop_strings.push_back(st->get<std::string>());
      } else if (st->is_array() && st->size() <= 4) {
        for (const json& x : *st) {
          if (!x.is_string()) return SendError(res, BadParam("stop", "'stop' must be a string or an array of up to 4 strings"));
          o.stop_strings.push_back(x.get<std::string>());
        }
      } else {
        return SendError(res, BadParam("stop", "'stop' must be a string or an array of up to 4 strings"));
      }
    }
    for (auto& x : extra_stops) o.stop_strings.push_back(x);

    // Submit; the callback hands outputs to this handler's thread.
    auto stream = std::make_shared<Stream>();
    const auto t0 = Clock::now();
    auto cb = [this, stream, t0](const RequestOutput& out) {
      if (out.finished) {
        if (out.completion_tokens > 0) ttft_.Observe(out.ttft_seconds);
        const double e2e = std::chrono::duration<double>(Clock::now() - t0).count();
        if (out.completion_tokens > 1) tpot_.Observe((e2e - out.ttft_seconds) / static_cast<double>(out.completion_tokens - 1));
        if (out.stop_reason != StopReason::kCancelled) e2e_.Observe(e2e);
      }
      std::lock_guard<std::mutex> lock(stream->mu);
      stream->events.push_back(out);
      if (out.finished) stream->finished = true;
      stream->cv.notify_all();
    };
    const int64_t n_prompt = static_cast<int64_t>(p.prompt.size());
    auto id = sched_.Submit(std::move(p.prompt), o, cb);
    if (!id.ok()) {
      const Status& st = id.status();
      return SendError(res, ApiError{st.code() == StatusCode::kResourceExhausted ? 503 : 400, st.message(), "", ""});
    }
    stream->id = *id;
    const std::string rid = (chat ? "chatcmpl-" : "cmpl-") + std::to_string(next_id_++);
    const int64_t created = UnixNow();
    const std::string model_id = options_.model_id;
    auto usage = [n_prompt](const RequestOutput& last) {
      return json{{"prompt_tokens", n_prompt},
                  {"completion_tokens", last.completion_tokens},
                  {"total_tokens", n_prompt + last.completion_tokens},
                  // cached_tokens: from engine memory or the KV cache store.
                  {"prompt_tokens_details", {{"cached_tokens", last.cached_tokens + last.store_cached_tokens},
                                             {"store_cached_tokens", last.store_cached_tokens}}}};
    };
    auto chunk = [chat, rid, created, model_id](const std::string& text, const char* finish, bool first) {
      json choice = {{"index", 0}, {"finish_reason", finish ? json(finish) : json(nullptr)}};
      if (chat) {
        json delta = json::object();
        if (first) delta["role"] = "assistant";
        if (!text.empty() || first) delta["content"] = text;
        choice["delta"] = delta;
        choice["logprobs"] = nullptr;
      } else {
        choice["text"] = text;
        choice["logprobs"] = nullptr;
      }
      return json{{"id", rid}, {"object", chat ? "chat.completion.chunk" : "text_completion"}, {"created", created},
                  {"model", model_id}, {"choices", json::array({choice})}};
    };

    if (!p.stream) {
      // Nothing is written until the end, so no failed write would reveal a
      // client that went away; look at its socket now and then instead, so a
      // vanished client does not keep the engine and its KV busy. The socket
      // is looked up only once the request outlives the first wait, which
      // spares short requests the scan.
      std::string text;
      RequestOutput last;
      bool client_gone = false;
      {
        std::optional<PeerWatch> peer;
        bool looked_up = false;
        std::unique_lock<std::mutex> lock(stream->mu);
        while (!stream->cv.wait_for(lock, kPeerPollInterval, [&] { return stream->finished; })) {
          lock.unlock();
          if (!looked_up) {
            peer = PeerWatch::Find(req.remote_addr, req.remote_port, req.local_addr, req.local_port);
            looked_up = true;
          }
          const bool gone = peer && peer->PeerGone();
          lock.lock();
          // A request that finished meanwhile is answered as usual.
          if (gone && !stream->finished) {
            client_gone = true;
            break;
          }
        }
        if (!client_gone) {
          for (const RequestOutput& e : stream->events) text += e.text;
          last = stream->events.back();
        }
      }
      if (client_gone) {
        ++disconnects_;
        sched_.Cancel(stream->id);
        // cpp-httplib still writes a response, to nobody; nginx's "client
        // closed request" status keeps it out of the 2xx count.
        return SendError(res, ApiError{kClientClosedRequest, "the client closed the connection before the completion finished",
                                       "", "client_closed_request"});
      }
      if (!last.error.ok()) {
        return SendError(res, ApiError{last.error.code() == StatusCode::kResourceExhausted ? 503 : 500, last.error.message(), "", "",
                                       last.error.code() == StatusCode::kResourceExhausted ? "server_error" : "server_error"});
      }
      json choice = {{"index", 0}, {"finish_reason", FinishReason(last.stop_reason)}, {"logprobs", nullptr}};
      if (chat) {
        choice["message"] = {{"role", "assistant"}, {"content", text}};
      } else {
        choice["text"] = text;
      }
      json r = {{"id", rid}, {"object", chat ? "chat.completion" : "text_completion"}, {"created", created},
                {"model", model_id}, {"choices", json::array({choice})}, {"usage", usage(last)}};
      res.set_content(Dump(r), "application/json");
      return;
    }

    struct StreamState {
      bool first = true;
      bool done = false;
      Clock::time_point last_write = Clock::now();
    };
    auto state = std::make_shared<StreamState>();
    const bool include_usage = p.include_usage;
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, stream, state, chunk, usage, include_usage](size_t, httplib::DataSink& sink) {
          std::deque<RequestOutput> got;
          {
            std::unique_lock<std::mutex> lock(stream->mu);
            stream->cv.wait_for(lock, std::chrono::milliseconds(250), [&] { return !stream->events.empty(); });
            got.swap(stream->events);
          }
          auto write = [&](const std::string& s) {
            state->last_write = Clock::now();
            return sink.write(s.data(), s.size());
          };
          if (got.empty()) {
            // An SSE comment now and then finds out whether the client is
            // still there while the request waits or prefills.
            if (Clock::now() - state->last_write > std::chrono::seconds(1) && !write(": keep-alive\n\n")) return false;
            return true;
          }
          for (const RequestOutput& e : got) {
            if (e.finished && !e.error.ok()) {
              ApiError err{500, e.error.message(), "", "", "server_error"};
              write("data: " + Dump(ErrorJson(err)) + "\n\n");
              write("data: [DONE]\n\n");
              state->done = true;
              sink.done();
              return true;
            }
            if (!e.text.empty() || state->first) {
              if (!write("data: " + Dump(chunk(e.text, nullptr, state->first)) + "\n\n")) return false;
              state->first = false;
            }
            if (e.finished) {
              write("data: " + Dump(chunk("", FinishReason(e.stop_reason), false)) + "\n\n");
              if (include_usage) {
                json u = chunk("", nullptr, false);
                u["choices"] = json::array();
                u["usage"] = usage(e);
                write("data: " + Dump(u) + "\n\n");
              }
              write("data: [DONE]\n\n");
              state->done = true;
              sink.done();
              return true;
            }
          }
          return true;
        },
        [this, stream, state](bool) {
          // The client went away (or the write failed) before the end.
          if (!state->done) {
            ++disconnects_;
            sched_.Cancel(stream->id);
          }
        });
  };
  s.Post("/v1/completions", [handle](const httplib::Request& req, httplib::Response& res) { handle(req, res, false); });
  s.Post("/v1/chat/completions", [handle](const httplib::Request& req, httplib::Response& res) { handle(req, res, true); });
}

}  // namespace strata
