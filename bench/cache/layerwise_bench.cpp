// layerwise_bench: time to first token through the real engine path
// (Scheduler + KvStoreConnector) when a prompt's prefix comes from the KV
// cache store, and how much of the load the layer-wise overlap hides.
//
//   layerwise_bench --model models/strata-default.gguf --disk-dir DIR --out layerwise.json
//
// For a prompt of --prefix-tokens shared tokens followed by S new ones (one
// run per S in --suffixes), it measures, each a median of --reps runs:
//   recompute: no cache at all (the whole prompt is prefilled);
//   ideal:     the prefix already in engine memory (the engine's own prefix
//              cache, warmed by another prompt with the same prefix): only
//              the S new tokens are computed, nothing is transferred;
//   store:     a fresh engine (empty KV memory) whose store holds the
//              prefix's chunks in one tier (host RAM, disk with the files'
//              pages dropped, disk warm, Redis): the prefix is loaded layer
//              by layer while the S tokens are computed.
// Per store run it records the connector's own times: until the load was
// ready (every chunk's header + layer 0 placed), until every layer was
// placed, and how long the forward pass waited for layers. If the load were
// not overlapped, TTFT would be about ideal + load time; the bench reports
// how much of the load time did not show up in TTFT.
//
// bench/cache/layerwise_report.py makes the table and plot.
#include <fcntl.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "../../tests/redis_test_server.h"
#include "cache/disk_tier.h"
#include "cache/host_tier.h"
#include "cache/kv_store.h"
#include "cache/redis_tier.h"
#include "engine/kv_store_connector.h"
#include "engine/scheduler.h"
#include "kv/paged_kv_cache.h"
#include "model/model.h"

namespace strata {
namespace {

using json = nlohmann::json;

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "layerwise_bench: %s\n", what.c_str());
  std::exit(1);
}
template <typename T>
T Take(Expected<T> e, const std::string& what) {
  if (!e.ok()) Die(what + ": " + e.status().ToString());
  return std::move(*e);
}

struct Args {
  std::string model = "models/strata-default.gguf";
  std::string disk_dir = "build-bench-cache/layerwise-disk";
  std::string out = "layerwise.json";
  std::string command;
  int reps = 3;
  int threads = 2;
  int prefix_tokens = 1536;
  int chunk_tokens = 256;
  std::vector<int> suffixes = {1, 64, 256};
  bool redis = true;
};

Args ParseArgs(int argc, char** argv) {
  Args a;
  CLI::App app{"layerwise_bench: TTFT with the prompt's prefix loaded from the KV cache store, layer by layer"};
  app.add_option("--model", a.model, "GGUF model")->capture_default_str();
  app.add_option("--disk-dir", a.disk_dir, "directory for the disk tier's files")->capture_default_str();
  app.add_option("--out", a.out, "JSON results")->capture_default_str();
  app.add_option("--command", a.command, "the command line to record with the results");
  app.add_option("--reps", a.reps, "runs per measurement (median)")->capture_default_str()->check(CLI::Range(1, 1000));
  app.add_option("--threads", a.threads, "compute threads")->capture_default_str()->check(CLI::Range(1, 256));
  app.add_option("--prefix-tokens", a.prefix_tokens, "shared prefix length")->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  app.add_option("--chunk-tokens", a.chunk_tokens, "tokens per stored chunk")->capture_default_str()
      ->check(CLI::Range(1, 1 << 16));
  app.add_option("--suffixes", a.suffixes, "new tokens after the prefix, one run each")->delimiter(',')
      ->capture_default_str()->check(CLI::Range(1, 1 << 20));
  app.add_flag("!--no-redis", a.redis, "skip the Redis tier");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    std::exit(app.exit(e));
  }
  if (a.prefix_tokens < a.chunk_tokens) Die("--prefix-tokens must hold at least one chunk (--chunk-tokens)");
  return a;
}

std::vector<TokenId> RandomTokens(int n, int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> d(3, vocab - 1);
  std::vector<TokenId> t(static_cast<size_t>(n));
  for (auto& x : t) x = static_cast<TokenId>(d(rng));
  return t;
}

std::unique_ptr<PagedKvCache> MakeKv(const Model& m, int64_t positions, bool prefix_caching) {
  const ModelConfig& c = m.config();
  PagedKvOptions o;
  o.n_layers = c.n_layers;
  o.kv_dim = c.kv_dim();
  o.max_seqs = 2;
  o.max_positions = positions;
  o.block_size = 16;
  o.budget_bytes = static_cast<size_t>(c.kv_dim()) * 2 * 2 * static_cast<size_t>(c.n_layers) *
                   static_cast<size_t>(positions * 2 + 64);
  o.prefix_caching = prefix_caching;
  o.model_fingerprint = m.fingerprint();
  return Take(PagedKvCache::Create(o), "KV memory");
}

// Runs one request to completion (one output token) and returns its TTFT.
double Run(const Model& m, ManagedKvCache& kv, KvStoreConnector* conn, const std::vector<TokenId>& prompt, int threads) {
  SchedulerOptions so;
  so.step_tokens = 4096;  // the whole suffix in one pass
  so.n_threads = threads;
  so.kv_store = conn;
  auto sched = Take(Scheduler::Create(m, kv, so), "scheduler");
  RequestOptions ro;
  ro.max_tokens = 1;
  ro.ignore_eos = true;
  ro.sampling.temperature = 0;
  RequestOutput last;
  Take(sched->Submit(prompt, ro, [&](const RequestOutput& o) {
         if (o.finished) last = o;
       }),
       "submit");
  const Status st = sched->RunUntilIdle();
  if (!st.ok()) Die("run: " + st.ToString());
  if (!last.error.ok()) Die("request: " + last.error.ToString());
  return last.ttft_seconds;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

void DropPageCache(const std::string& dir) {
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir)) {
    if (!e.is_regular_file()) continue;
    const int fd = ::open(e.path().c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    ::fdatasync(fd);
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
  }
}

struct TierSetup {
  std::string name;
  std::function<std::unique_ptr<Tier>()> make;
  std::function<void()> before_run;  // e.g. drop the disk's page cache
};

std::string LoadAvg() {
  std::ifstream f("/proc/loadavg");
  std::string a, b, c;
  f >> a >> b >> c;
  return a + " " + b + " " + c;
}

int Main(int argc, char** argv) {
  const Args a = ParseArgs(argc, argv);
  auto model = Take(Model::Load(a.model), "load " + a.model);
  const Model& m = *model;
  const int vocab = m.config().vocab_size;
  const int max_suffix = *std::max_element(a.suffixes.begin(), a.suffixes.end());
  const int64_t positions = a.prefix_tokens + max_suffix + 1;  // + the one generated token
  if (positions > m.config().context_length) Die("prefix + suffix exceed the model's context");

  std::unique_ptr<testing::RedisTestServer> redis;
  if (a.redis && testing::HaveRedisServer()) {
    redis = std::make_unique<testing::RedisTestServer>();
    if (!redis->Start()) Die("redis-server did not start");
  }
  std::filesystem::remove_all(a.disk_dir);
  std::filesystem::create_directories(a.disk_dir);

  std::vector<TierSetup> tiers;
  tiers.push_back({"host",
                   [] {
                     HostTierOptions o;
                     o.capacity_bytes = size_t{256} << 20;
                     return std::unique_ptr<Tier>(Take(HostTier::Create(o), "host tier"));
                   },
                   nullptr});
  auto disk = [&](bool cold) {
    TierSetup t;
    t.name = cold ? "disk (cold)" : "disk (warm)";
    const std::string dir = a.disk_dir + "/" + (cold ? "cold" : "warm");
    t.make = [dir] {
      DiskTierOptions o;
      o.dir = dir;
      o.capacity_bytes = size_t{1} << 30;
      return std::unique_ptr<Tier>(Take(DiskTier::Open(o), "disk tier"));
    };
    if (cold) t.before_run = [dir] { DropPageCache(dir); };
    return t;
  };
  tiers.push_back(disk(true));
  tiers.push_back(disk(false));
  if (redis) {
    const int port = redis->port();
    tiers.push_back({"redis", [port] {
                       RedisTierOptions o;
                       o.port = port;
                       o.key_prefix = "layerwise:";
                       return std::unique_ptr<Tier>(Take(RedisTier::Open(o), "redis tier"));
                     },
                     nullptr});
  }

  json out;
  {
    char date[64];
    const std::time_t now = std::time(nullptr);
    std::strftime(date, sizeof date, "%Y-%m-%d %H:%M:%S %Z", std::gmtime(&now));
    out["date"] = date;
    utsname u;
    ::uname(&u);
    out["machine"] = {{"kernel", std::string(u.sysname) + " " + u.release + " " + u.machine},
                      {"cores", static_cast<int>(::sysconf(_SC_NPROCESSORS_ONLN))}};
    std::ifstream f("/proc/cpuinfo");
    std::string line;
    while (std::getline(f, line)) {
      if (line.rfind("model name", 0) == 0) {
        out["machine"]["cpu"] = line.substr(line.find(':') + 2);
        break;
      }
    }
  }
  out["command"] = a.command;
  out["model"] = a.model;
  out["prefix_tokens"] = a.prefix_tokens;
  out["chunk_tokens"] = a.chunk_tokens;
  out["reps"] = a.reps;
  out["threads"] = a.threads;
  out["loadavg_start"] = LoadAvg();
  const double kv_bytes = static_cast<double>(a.prefix_tokens) * m.config().kv_dim() * 2 * 2 * m.config().n_layers;
  out["prefix_kv_bytes"] = kv_bytes;

  const std::vector<TokenId> prefix = RandomTokens(a.prefix_tokens, vocab, 1);
  for (int s : a.suffixes) {
    // Every measured run asks with its own new tokens: a run stores its
    // prompt's new full chunks, and the next run must not find them.
    auto with_suffix = [&](uint32_t seed) {
      std::vector<TokenId> p = prefix;
      const auto x = RandomTokens(s, vocab, seed);
      p.insert(p.end(), x.begin(), x.end());
      return p;
    };
    const std::vector<TokenId> warm = with_suffix(100000 + static_cast<uint32_t>(s));
    uint32_t next_probe = 200000 + 1000 * static_cast<uint32_t>(s);
    json row;
    row["suffix_tokens"] = s;
    std::fprintf(stderr, "== prefix %d + suffix %d tokens\n", a.prefix_tokens, s);

    std::vector<double> t;
    for (int r = 0; r < a.reps; ++r) {
      auto kv = MakeKv(m, positions, false);
      t.push_back(Run(m, *kv, nullptr, with_suffix(next_probe++), a.threads));
    }
    row["recompute_ttft"] = Median(t);
    row["recompute_ttft_all"] = t;
    std::fprintf(stderr, "  recompute  TTFT %.1f ms\n", 1e3 * Median(t));
    t.clear();
    for (int r = 0; r < a.reps; ++r) {
      auto kv = MakeKv(m, positions, true);
      Run(m, *kv, nullptr, warm, a.threads);
      t.push_back(Run(m, *kv, nullptr, with_suffix(next_probe++), a.threads));
    }
    const double ideal = Median(t);
    row["ideal_ttft"] = ideal;
    row["ideal_ttft_all"] = t;
    std::fprintf(stderr, "  ideal      TTFT %.1f ms (prefix in engine memory)\n", 1e3 * ideal);

    for (const TierSetup& ts : tiers) {
      std::vector<StoreTier> st;
      st.push_back(StoreTier{ts.make(), ChunkEncoding{}, true});
      auto store = Take(KvStore::Create(std::move(st), KvStoreOptions{}), "store");
      KvStoreConnectorOptions co;
      co.chunk_tokens = a.chunk_tokens;
      auto conn = Take(KvStoreConnector::Create(m, *store, co), "connector");
      {
        auto kv = MakeKv(m, positions, false);
        Run(m, *kv, conn.get(), warm, a.threads);  // stores the prefix's chunks
        store->Flush();
      }
      std::vector<double> ttft, ready, load, wait;
      for (int r = 0; r < a.reps; ++r) {
        if (ts.before_run) ts.before_run();
        auto kv = MakeKv(m, positions, false);
        const auto before = conn->counters();
        ttft.push_back(Run(m, *kv, conn.get(), with_suffix(next_probe++), a.threads));
        const auto c = conn->counters();
        if (c.loaded_tokens - before.loaded_tokens != static_cast<uint64_t>(a.prefix_tokens)) {
          Die(ts.name + ": loaded " + std::to_string(c.loaded_tokens - before.loaded_tokens) + " tokens, expected " +
              std::to_string(a.prefix_tokens));
        }
        ready.push_back(c.fetch_seconds - before.fetch_seconds);
        load.push_back(c.load_seconds - before.load_seconds);
        wait.push_back(c.layer_wait_seconds - before.layer_wait_seconds);
      }
      json l;
      l["ttft"] = Median(ttft);
      l["ttft_all"] = ttft;
      l["ready_seconds"] = Median(ready);
      l["load_seconds"] = Median(load);
      l["layer_wait_seconds"] = Median(wait);
      l["serial_estimate_ttft"] = ideal + Median(load);
      // How much of the load did not add to TTFT over the ideal.
      const double added = std::max(0.0, Median(ttft) - ideal);
      l["hidden_fraction"] = Median(load) > 0 ? std::clamp(1.0 - added / Median(load), 0.0, 1.0) : 0.0;
      row["store"][ts.name] = l;
      std::fprintf(stderr, "  %-12s TTFT %.1f ms | ready %.1f ms, all layers %.1f ms, pass waited %.1f ms | serial est. %.1f ms\n",
                   ts.name.c_str(), 1e3 * Median(ttft), 1e3 * Median(ready), 1e3 * Median(load), 1e3 * Median(wait),
                   1e3 * (ideal + Median(load)));
    }
    out["runs"].push_back(row);
  }
  out["loadavg_end"] = LoadAvg();
  std::ofstream(a.out) << out.dump(2) << "\n";
  return 0;
}

}  // namespace
}  // namespace strata

int main(int argc, char** argv) { return strata::Main(argc, argv); }
