// strata serve: the OpenAI-compatible HTTP server.
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include "cli/common.h"
#include "cli/kv_store_flags.h"
#include "engine/scheduler.h"
#include "kv/paged_kv_cache.h"
#include "kv/virtual_kv_cache.h"
#include "model/gguf.h"
#include "server/openai_server.h"

namespace strata::cli {

namespace {

struct ServeFlags {
  ModelFlags model;
  ServerOptions server;
  int parallel = 8;
  std::string kv_memory = "paged";
  double kv_budget_mib = 0;  // 0: every slot can hold a full context
  int block_size = 16;
  bool no_prefix_cache = false;
  bool huge_pages = false;
  bool no_map_ahead = false;
  int64_t step_tokens = 256;
  double max_body_mib = 1;
  KvStoreFlags store;
};

int RunServe(ServeFlags f) {
  // Signals are taken by a thread that stops the server cleanly.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  signal(SIGPIPE, SIG_IGN);

  auto model = LoadModel(f.model);
  if (!model.ok()) return Fail(model.status());
  const Model& m = **model;
  const ModelConfig& c = m.config();
  const int64_t ctx = f.model.ctx > 0 ? f.model.ctx : std::min<int64_t>(c.context_length, 4096);
  const size_t per_pos = static_cast<size_t>(c.kv_dim()) * sizeof(fp16_t) * 2 * static_cast<size_t>(c.n_layers);
  const size_t budget = f.kv_budget_mib > 0 ? static_cast<size_t>(f.kv_budget_mib * 1048576.0)
                                            : per_pos * static_cast<size_t>(ctx) * static_cast<size_t>(f.parallel) + (size_t{4} << 20);
  std::unique_ptr<ManagedKvCache> kv;
  if (f.kv_memory == "virtual") {
    VirtualKvOptions o;
    o.n_layers = c.n_layers;
    o.kv_dim = c.kv_dim();
    o.max_seqs = f.parallel;
    o.max_positions = ctx;
    o.budget_bytes = budget;
    o.huge_pages = f.huge_pages;
    o.map_ahead = !f.no_map_ahead;
    auto v = VirtualKvCache::Create(o);
    if (!v.ok()) return Fail(v.status());
    kv = std::move(*v);
  } else {
    PagedKvOptions o;
    o.n_layers = c.n_layers;
    o.kv_dim = c.kv_dim();
    o.max_seqs = f.parallel;
    o.max_positions = ctx;
    o.block_size = f.block_size;
    o.budget_bytes = budget;
    o.prefix_caching = !f.no_prefix_cache;
    // Prefix-cache keys include it, so cached KV never crosses models.
    o.model_fingerprint = m.fingerprint();
    auto p = PagedKvCache::Create(o);
    if (!p.ok()) return Fail(p.status());
    kv = std::move(*p);
  }
  // The KV cache store outlives the scheduler (declared first).
  auto store = BuildKvStore(f.store, m);
  if (!store.ok()) return Fail(store.status());
  SchedulerOptions so;
  so.step_tokens = std::max<int64_t>(f.step_tokens, f.parallel);
  so.n_threads = ResolveThreads(f.model.threads);
  so.kv_store = store->connector.get();
  auto sched = Scheduler::Create(m, *kv, so);
  if (!sched.ok()) return Fail(sched.status());
  (*sched)->Start();

  if (f.server.api_key.empty()) {
    if (const char* k = std::getenv("STRATA_API_KEY")) f.server.api_key = k;
  }
  if (f.server.model_id.empty()) f.server.model_id = std::filesystem::path(f.model.model_path).stem().string();
  f.server.max_body_bytes = static_cast<size_t>(f.max_body_mib * 1048576.0);
  f.server.save_decode_cache = f.store.save_decode_cache;
  OpenAiServer server(m, **sched, f.server);
  auto port = server.Bind();
  if (!port.ok()) return Fail(port.status());
  std::thread waiter([&server, sigs] {
    int sig = 0;
    sigwait(&sigs, &sig);
    server.Stop();
  });
  std::fprintf(stderr, "strata serve: model '%s', %s KV memory (%zu MiB budget, %d slots of %lld tokens), "
               "listening on http://%s:%d\n",
               f.server.model_id.c_str(), kv->kind(), budget >> 20, f.parallel, static_cast<long long>(ctx),
               f.server.host.c_str(), *port);
  if (store->connector) std::fprintf(stderr, "strata serve: KV cache store: %s\n", store->description.c_str());
  std::fflush(stderr);
  Status st = server.Serve();
  // Serve returns after Stop (signal) or on error; wake the waiter either way.
  pthread_kill(waiter.native_handle(), SIGTERM);
  waiter.join();
  (*sched)->Stop();
  if (!st.ok()) return Fail(st);
  return 0;
}

}  // namespace

void RegisterServe(CLI::App& app) {
  auto flags = std::make_shared<ServeFlags>();
  flags->server.model_id.clear();
  CLI::App* cmd = app.add_subcommand("serve", "serve the model over an OpenAI-compatible HTTP API");
  AddModelFlags(cmd, &flags->model);
  cmd->add_option("--host", flags->server.host, "address to bind (default: loopback only)")->capture_default_str();
  cmd->add_option("--port", flags->server.port, "port (0: any free port)")->capture_default_str()->check(CLI::Range(0, 65535));
  cmd->add_option("--api-key", flags->server.api_key, "require 'Authorization: Bearer KEY' on /v1 (or set STRATA_API_KEY)");
  cmd->add_option("--model-id", flags->server.model_id, "model name clients use (default: the file name without .gguf)");
  cmd->add_option("--parallel", flags->parallel, "sequences decoded together (KV slots)")->capture_default_str()->check(CLI::Range(1, 1024));
  cmd->add_option("--kv-memory", flags->kv_memory, "KV memory: paged (block tables, prefix caching) or virtual (vAttention)")
      ->capture_default_str()->check(CLI::IsMember({"paged", "virtual"}));
  cmd->add_option("--kv-budget", flags->kv_budget_mib, "KV memory budget in MiB (default: every slot can hold a full context)")
      ->check(CLI::Range(0.0, 1e9));
  cmd->add_option("--kv-block-size", flags->block_size, "positions per KV block (paged)")->capture_default_str()->check(CLI::Range(1, 4096));
  cmd->add_flag("--no-prefix-cache", flags->no_prefix_cache, "do not reuse KV of shared prompt prefixes (paged)");
  cmd->add_flag("--huge-pages", flags->huge_pages, "back virtual KV memory with 2 MiB huge pages");
  cmd->add_flag("--no-map-ahead", flags->no_map_ahead,
                "virtual KV: map pages inline in the engine thread instead of in the background during each pass");
  cmd->add_option("--step-tokens", flags->step_tokens, "tokens per forward pass (decode tokens + prefill chunks)")
      ->capture_default_str()->check(CLI::Range(int64_t{1}, int64_t{1} << 16));
  cmd->add_option("--max-body", flags->max_body_mib, "largest request body in MiB")->capture_default_str()->check(CLI::Range(0.001, 1024.0));
  cmd->add_option("--max-prompt-tokens", flags->server.max_prompt_tokens, "longest prompt accepted (0: the context minus one)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 22));
  cmd->add_option("--max-tokens-limit", flags->server.max_tokens_limit, "largest max_tokens accepted")
      ->capture_default_str()->check(CLI::Range(int64_t{1}, int64_t{1} << 22));
  cmd->add_option("--http-threads", flags->server.http_threads, "concurrent HTTP connections served")
      ->capture_default_str()->check(CLI::Range(1, 4096));
  AddKvStoreFlags(cmd, &flags->store);
  cmd->callback([flags] { ExitCode() = RunServe(*flags); });
}

}  // namespace strata::cli
