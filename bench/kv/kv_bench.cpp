// Paged vs virtual (vAttention) KV memory, side by side in one run:
//
//   1. attention time at 1K..8K context: the attention kernels alone (decode
//      step and a 256-token prefill chunk, every layer of the model's shape)
//      and a whole-model decode step through ForwardContext::Forward;
//   2. how many sequences of seeded random lengths fit one KV byte budget;
//   3. how much page mapping VirtualKvCache's background mapper takes off
//      the engine thread, and what it does to step time: two real
//      Schedulers (mapper on / off) fed the same requests, in lockstep.
//
// bench/kv/run.sh builds and runs this and writes the report; see its header.
// Usage: kv_bench --model M.gguf --out raw.json [--threads 2] [--parts 123]
//                 [--command C]   (C: the command line recorded in the results)
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <memory>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/thread_pool.h"
#include "engine/scheduler.h"
#include "kernels/attention.h"
#include "kernels/attention_paged.h"
#include "kernels/fp16.h"
#include "kv/paged_kv_cache.h"
#include "kv/virtual_kv_cache.h"
#include "model/model.h"

namespace {

using strata::KvLayerView;
using strata::ManagedKvCache;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "kv_bench: %s\n", what.c_str());
  std::exit(1);
}

void Check(const strata::Status& st, const std::string& what) {
  if (!st.ok()) Die(what + ": " + st.ToString());
}

template <typename T>
T Take(strata::Expected<T> e, const std::string& what) {
  if (!e.ok()) Die(what + ": " + e.status().ToString());
  return std::move(e).value();
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

json Summary(const std::vector<double>& v) {
  return {{"median_s", Median(v)}, {"min_s", *std::min_element(v.begin(), v.end())},
          {"max_s", *std::max_element(v.begin(), v.end())}, {"reps", v.size()}, {"samples_s", v}};
}

std::string LoadAvg() {
  std::ifstream f("/proc/loadavg");
  std::string a, b, c;
  f >> a >> b >> c;
  return a + " " + b + " " + c;
}

json Machine() {
  json m;
  std::ifstream cpu("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpu, line)) {
    if (line.rfind("model name", 0) == 0) {
      m["cpu"] = line.substr(line.find(':') + 2);
      break;
    }
  }
  m["nproc"] = std::thread::hardware_concurrency();
  utsname u{};
  uname(&u);
  m["kernel"] = std::string(u.sysname) + " " + u.release + " " + u.machine;
  std::ifstream mem("/proc/meminfo");
  while (std::getline(mem, line)) {
    if (line.rfind("MemTotal", 0) == 0 || line.rfind("HugePages_Total", 0) == 0 ||
        line.rfind("HugePages_Free", 0) == 0) {
      const auto colon = line.find(':');
      m[line.substr(0, colon)] = std::strtoll(line.c_str() + colon + 1, nullptr, 10);
    }
  }
  m["page_size"] = sysconf(_SC_PAGESIZE);
  return m;
}

struct Shape {
  int n_layers = 0;
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int64_t kv_dim() const { return int64_t{n_kv_heads} * head_dim; }
  // K and V of every layer for one position.
  size_t bytes_per_position() const { return 2 * static_cast<size_t>(n_layers) * static_cast<size_t>(kv_dim()) * 2; }
};

std::unique_ptr<ManagedKvCache> MakePaged(const Shape& s, int max_seqs, int64_t max_positions, size_t budget) {
  strata::PagedKvOptions o;
  o.n_layers = s.n_layers;
  o.kv_dim = s.kv_dim();
  o.max_seqs = max_seqs;
  o.max_positions = max_positions;
  o.block_size = 16;
  o.budget_bytes = budget;
  // Prefix caching changes nothing measured here (no prompts are shared);
  // off so the pool holds only live blocks.
  o.prefix_caching = false;
  return Take(strata::PagedKvCache::Create(o), "PagedKvCache::Create");
}

std::unique_ptr<strata::VirtualKvCache> MakeVirtual(const Shape& s, int max_seqs, int64_t max_positions, size_t budget,
                                                    bool map_ahead, bool huge_pages = false) {
  strata::VirtualKvOptions o;
  o.n_layers = s.n_layers;
  o.kv_dim = s.kv_dim();
  o.max_seqs = max_seqs;
  o.max_positions = max_positions;
  o.budget_bytes = budget;
  o.map_ahead = map_ahead;
  o.huge_pages = huge_pages;
  return Take(strata::VirtualKvCache::Create(o), "VirtualKvCache::Create");
}

// Grows `n_seqs` sequences together, 16 positions at a time, to `positions`
// each: the order in which concurrent decoding hands out blocks. A paged
// sequence thus gets blocks scattered through the pool, as in serving, not
// one run of consecutive blocks that only a lone sequence would see. Then
// fills sequence 0 (the one measured) with seeded random fp16 in [-1, 1).
void FillInterleaved(ManagedKvCache& kv, const Shape& s, int n_seqs, int64_t positions, uint64_t seed) {
  for (int i = 0; i < n_seqs; ++i) {
    if (kv.AcquireSlot() != i) Die("expected slots 0..n-1 in order");
  }
  for (int64_t p = 16; p < positions + 16; p += 16) {
    for (int i = 0; i < n_seqs; ++i) Check(kv.Reserve(i, std::min(p, positions)), "Reserve while filling");
  }
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<strata::fp16_t> row(static_cast<size_t>(s.kv_dim()));
  for (int l = 0; l < s.n_layers; ++l) {
    const KvLayerView view = kv.View(0, l);
    for (int64_t p = 0; p < positions; ++p) {
      for (auto& x : row) x = strata::Fp32ToFp16(u(rng));
      std::copy(row.begin(), row.end(), view.KRow(p));
      for (auto& x : row) x = strata::Fp32ToFp16(u(rng));
      std::copy(row.begin(), row.end(), view.VRow(p));
    }
  }
}

// Calls the kernel exactly as ForwardContext::Forward does for one sequence
// and layer (src/model/model.cpp): the view decides paged vs contiguous.
void Attend(const KvLayerView& view, const float* q, int64_t n, int64_t pos0, const strata::AttentionShape& shape,
            float* out, strata::ThreadPool& pool) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(shape.head_dim));
  if (view.block_table != nullptr) {
    const strata::PagedKvView paged{view.k, view.v, view.block_table, view.block_size, view.block_stride, view.stride};
    strata::AttentionCausalPaged(q, n, pos0, paged, shape, scale, out, pool);
  } else {
    strata::AttentionCausal(q, n, pos0, view.k, view.v, view.stride, shape, scale, out, pool);
  }
}

// ---------------------------------------------------------------- part 1

const std::vector<int64_t> kDepths = {1024, 2048, 4096, 8192};
constexpr int64_t kChunk = 256;
constexpr int kInterleavedSeqs = 4;

json AttentionBench(const Shape& s, const strata::Model& model, int threads) {
  json out = json::array();
  strata::ThreadPool pool(threads);
  strata::ForwardContext ctx(model, threads);
  const strata::AttentionShape shape{s.n_heads, s.n_kv_heads, s.head_dim};
  const int64_t qd = int64_t{s.n_heads} * s.head_dim;
  std::vector<float> q(static_cast<size_t>(kChunk * qd)), o(q.size());
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  for (auto& x : q) x = u(rng);
  for (int64_t depth : kDepths) {
    // Room for the depth plus one prefill chunk after it.
    const int64_t need = depth + kChunk;
    const size_t budget = static_cast<size_t>(kInterleavedSeqs) * static_cast<size_t>(need + 64) * s.bytes_per_position();
    std::unique_ptr<ManagedKvCache> caches[2] = {MakePaged(s, kInterleavedSeqs, need, budget),
                                                 MakeVirtual(s, kInterleavedSeqs, need, budget, true)};
    for (auto& c : caches) FillInterleaved(*c, s, kInterleavedSeqs, need, 1000 + static_cast<uint64_t>(depth));
    std::vector<double> dec[2], pre[2], step[2];
    // The two memories alternate rep by rep so machine noise (a shared VM)
    // falls on both alike. One decode "step" is every layer's attention,
    // layer after layer as the forward pass runs them: at 8K a layer's K/V
    // is 8 MiB, so cycling layers keeps the reads honest about cache size.
    const int dec_reps = 61;
    for (int r = -3; r < dec_reps; ++r) {
      for (int k = 0; k < 2; ++k) {
        const auto t0 = Clock::now();
        for (int l = 0; l < s.n_layers; ++l) Attend(caches[k]->View(0, l), q.data(), 1, depth, shape, o.data(), pool);
        if (r >= 0) dec[k].push_back(Seconds(t0, Clock::now()));
      }
    }
    // A prefill chunk costs ~chunk x depth x heads; one layer per rep keeps
    // 8K affordable, cycling layers as above.
    const int pre_reps = depth >= 8192 ? 15 : 21;
    for (int r = -1; r < pre_reps; ++r) {
      const int l = (r + 1) % s.n_layers;
      for (int k = 0; k < 2; ++k) {
        const auto t0 = Clock::now();
        Attend(caches[k]->View(0, l), q.data(), kChunk, depth, shape, o.data(), pool);
        if (r >= 0) pre[k].push_back(Seconds(t0, Clock::now()));
      }
    }
    // Whole-model decode step at this depth: token at position `depth`, KV
    // of positions [0, depth) as filled above. The same token is recomputed
    // each rep (its K/V row is simply rewritten).
    const std::vector<strata::TokenId> tok = {1234};
    const strata::BatchSeq b{0, std::span<const strata::TokenId>(tok), depth, false};
    const int step_reps = 31;
    for (int r = -2; r < step_reps; ++r) {
      for (int k = 0; k < 2; ++k) {
        const auto t0 = Clock::now();
        Check(caches[k]->Reserve(0, depth + 1), "Reserve before step");
        (void)Take(ctx.Forward(std::span<const strata::BatchSeq>(&b, 1), *caches[k]), "Forward");
        if (r >= 0) step[k].push_back(Seconds(t0, Clock::now()));
      }
    }
    json row = {{"depth", depth}, {"chunk", kChunk}};
    const char* names[2] = {"paged", "virtual"};
    for (int k = 0; k < 2; ++k) {
      row[names[k]] = {{"decode_attention_all_layers", Summary(dec[k])},
                       {"prefill_chunk_attention_one_layer", Summary(pre[k])},
                       {"model_decode_step", Summary(step[k])}};
    }
    std::fprintf(stderr, "depth %5lld  decode attn %.3f / %.3f ms  prefill attn %.2f / %.2f ms  step %.2f / %.2f ms"
                 "  (paged / virtual)\n", static_cast<long long>(depth), 1e3 * Median(dec[0]), 1e3 * Median(dec[1]),
                 1e3 * Median(pre[0]), 1e3 * Median(pre[1]), 1e3 * Median(step[0]), 1e3 * Median(step[1]));
    out.push_back(row);
  }
  return out;
}

// ---------------------------------------------------------------- part 2

constexpr size_t kCapacityBudget = size_t{256} << 20;
constexpr int64_t kMinLen = 128, kMaxLen = 2048;

std::vector<int64_t> SeededLengths(size_t n) {
  // Drawn by hand from the raw generator, not uniform_int_distribution,
  // whose mapping differs between standard libraries.
  std::mt19937_64 rng(42);
  std::vector<int64_t> v(n);
  for (auto& x : v) x = kMinLen + static_cast<int64_t>(rng() % static_cast<uint64_t>(kMaxLen - kMinLen + 1));
  return v;
}

json Fill(ManagedKvCache& kv, const Shape& s, const std::vector<int64_t>& lens, size_t budget) {
  int n = 0;
  int64_t live = 0;
  std::string stop = "ran out of lengths";
  for (int64_t len : lens) {
    const int slot = kv.AcquireSlot();
    if (slot < 0) {
      stop = "no free slot";
      break;
    }
    const strata::Status st = kv.Reserve(slot, len);
    if (!st.ok()) {
      stop = st.ToString();
      break;
    }
    ++n;
    live += len;
  }
  const strata::KvMemoryStats st = kv.stats();
  return {{"sequences", n}, {"live_positions", live},
          {"live_fraction", static_cast<double>(live) * static_cast<double>(s.bytes_per_position()) / static_cast<double>(budget)},
          {"committed_bytes", st.committed_bytes}, {"pool_bytes", st.budget_bytes}, {"stopped_by", stop}};
}

int64_t MeminfoValue(const std::string& key) {
  std::ifstream mem("/proc/meminfo");
  std::string line;
  while (std::getline(mem, line)) {
    if (line.rfind(key + ":", 0) == 0) return std::strtoll(line.c_str() + key.size() + 1, nullptr, 10);
  }
  return 0;
}

json CapacityBench(const Shape& s, int64_t max_positions) {
  const auto lens = SeededLengths(4096);
  const int max_seqs = 1024;  // more than can fit, so the budget is what stops
  json out;
  out["budget_bytes"] = kCapacityBudget;
  out["max_positions"] = max_positions;
  out["bytes_per_position"] = s.bytes_per_position();
  out["lengths"] = {{"min", kMinLen}, {"max", kMaxLen}, {"seed", 42}, {"distribution", "uniform"}};
  {
    auto kv = MakePaged(s, max_seqs, max_positions, kCapacityBudget);
    out["paged_block16"] = Fill(*kv, s, lens, kCapacityBudget);
  }
  {
    // The engine's default (background mapper); no PrepareAhead is given, so
    // each sequence holds exactly the pages its positions need.
    auto kv = MakeVirtual(s, max_seqs, max_positions, kCapacityBudget, true);
    out["virtual_4k"] = Fill(*kv, s, lens, kCapacityBudget);
    out["virtual_4k"]["page_bytes"] = kv->page_bytes();
  }
  {
    // A hugetlbfs memfd can be created and sized with no huge pages
    // reserved; only the first mapping fails. So ask the kernel first.
    const int64_t huge_free = MeminfoValue("HugePages_Free");
    const bool have_huge = MeminfoValue("Hugepagesize") == 2048 &&
                           static_cast<size_t>(huge_free) * (size_t{2} << 20) >= kCapacityBudget;
    if (have_huge) {
      auto kv = MakeVirtual(s, max_seqs, max_positions, kCapacityBudget, true, true);
      out["virtual_2m"] = Fill(*kv, s, lens, kCapacityBudget);
      out["virtual_2m"]["page_bytes"] = kv->page_bytes();
    } else {
      // Usually no hugetlbfs pages are reserved (vm.nr_hugepages = 0). The
      // count is still determined by arithmetic: each of the 2 x n_layers
      // planes of a sequence takes whole 2 MiB pages.
      const size_t page = size_t{2} << 20;
      const size_t row = static_cast<size_t>(s.kv_dim()) * 2;
      int64_t pages = static_cast<int64_t>(kCapacityBudget / page), n = 0, live = 0;
      for (int64_t len : lens) {
        const int64_t need = 2 * s.n_layers * static_cast<int64_t>((static_cast<size_t>(len) * row + page - 1) / page);
        if (need > pages) break;
        pages -= need;
        ++n;
        live += len;
      }
      out["virtual_2m"] = {{"skipped", std::to_string(huge_free) + " free 2 MiB huge pages (vm.nr_hugepages), " +
                                           std::to_string(kCapacityBudget >> 21) + " needed"},
                           {"computed_sequences", n},
                           {"computed_live_fraction", static_cast<double>(live) * static_cast<double>(s.bytes_per_position()) /
                                                          static_cast<double>(kCapacityBudget)}};
    }
  }
  // A contiguous cache reserves max_positions for every sequence up front.
  for (int64_t ctx : {max_positions, kMaxLen}) {
    const int64_t n = static_cast<int64_t>(kCapacityBudget / (static_cast<size_t>(ctx) * s.bytes_per_position()));
    int64_t live = 0;
    for (int64_t i = 0; i < n; ++i) live += lens[static_cast<size_t>(i)];
    out["static_" + std::to_string(ctx)] = {
        {"sequences", n}, {"reserved_positions", ctx},
        {"live_fraction", static_cast<double>(live) * static_cast<double>(s.bytes_per_position()) /
                              static_cast<double>(kCapacityBudget)}};
  }
  std::fprintf(stderr, "capacity: paged %d, virtual 4K %d sequences in %zu MiB\n",
               out["paged_block16"]["sequences"].get<int>(), out["virtual_4k"]["sequences"].get<int>(),
               kCapacityBudget >> 20);
  return out;
}

// ---------------------------------------------------------------- part 3

constexpr int kSchedSeqs = 8;
constexpr int64_t kSchedOutput = 128;

// One scheduler and its cache; `started` holds requests that have produced
// a token, so a step taken once all have started is pure decode.
struct SchedRig {
  bool map_ahead = false;
  std::unique_ptr<strata::VirtualKvCache> kv;
  std::unique_ptr<strata::Scheduler> sched;
  std::set<uint64_t> started;
  int finished = 0;
  bool done = false;
  std::vector<double> steps;
  std::vector<bool> decode_only;
};

double PairedRatio(const std::vector<double>& num, const std::vector<double>& den, const std::vector<bool>& use) {
  std::vector<double> r;
  for (size_t i = 0; i < num.size() && i < den.size(); ++i) {
    if (use[i]) r.push_back(num[i] / den[i]);
  }
  return r.empty() ? 0.0 : Median(r);
}

// Both modes run at once, one Scheduler each over its own fresh cache, fed
// the same requests, stepping in lockstep (off, on, on, off, ...). Greedy
// sampling makes both plan identical batches, so step i of one is the same
// work as step i of the other, run moments apart: on a shared machine whose
// load swings by 50% within a minute, only such pairs compare.
json SchedulerBench(const strata::Model& model, const Shape& s, int threads) {
  const int64_t max_positions = 2048;
  SchedRig rigs[2];
  strata::SchedulerOptions so;
  so.step_tokens = 256;
  so.n_threads = threads;
  for (int k = 0; k < 2; ++k) {
    rigs[k].map_ahead = k == 1;
    rigs[k].kv = MakeVirtual(s, kSchedSeqs, max_positions, size_t{kSchedSeqs} * 1100 * s.bytes_per_position(), k == 1);
    rigs[k].sched = Take(strata::Scheduler::Create(model, *rigs[k].kv, so), "Scheduler::Create");
  }
  std::mt19937_64 rng(5);
  for (int i = 0; i < kSchedSeqs; ++i) {
    // Prompts 128..511 tokens: prefill spreads over several chunked steps
    // without dominating the run (the mapping of interest is in decode).
    const int64_t len = 128 + static_cast<int64_t>(rng() % 384);
    std::vector<strata::TokenId> prompt(static_cast<size_t>(len));
    for (auto& t : prompt) t = static_cast<strata::TokenId>(3 + rng() % 30000);
    strata::RequestOptions ro;
    ro.max_tokens = kSchedOutput;
    ro.ignore_eos = true;
    ro.sampling.temperature = 0;  // the same tokens, hence the same batches, in both
    ro.sampling.seed = 1;
    for (SchedRig& g : rigs) {
      (void)Take(g.sched->Submit(prompt, ro,
                                 [&g](const strata::RequestOutput& r) {
                                   g.finished += r.finished ? 1 : 0;
                                   if (!r.tokens.empty() || r.finished) g.started.insert(r.id);
                                 }),
                 "Submit");
    }
  }
  for (int step = 0; !(rigs[0].done && rigs[1].done); ++step) {
    // Who goes first alternates, so neither always follows the other's
    // cache pollution or mapper activity.
    for (int j = 0; j < 2; ++j) {
      SchedRig& g = rigs[(step + j) % 2];
      if (g.done) continue;
      const bool decode_only = g.started.size() == static_cast<size_t>(kSchedSeqs);
      const auto a = Clock::now();
      const bool ran = Take(g.sched->Step(), "Step");
      const auto b = Clock::now();
      if (!ran) {
        g.done = true;
        continue;
      }
      g.steps.push_back(Seconds(a, b));
      g.decode_only.push_back(decode_only);
    }
  }
  json out;
  out["sequences"] = kSchedSeqs;
  out["output_tokens"] = kSchedOutput;
  out["step_tokens"] = 256;
  out["prompt_tokens"] = {{"min", 128}, {"max", 511}, {"seed", 5}};
  out["runs"] = json::array();
  for (SchedRig& g : rigs) {
    if (g.finished != kSchedSeqs) Die("not every request finished");
    std::vector<double> dec;
    for (size_t i = 0; i < g.steps.size(); ++i) {
      if (g.decode_only[i]) dec.push_back(g.steps[i]);
    }
    const strata::KvMemoryStats st = g.kv->stats();
    const double total = std::accumulate(g.steps.begin(), g.steps.end(), 0.0);
    out["runs"].push_back(
        {{"map_ahead", g.map_ahead}, {"steps", g.steps.size()}, {"total_s", total},
         {"step_median_s", Median(g.steps)}, {"decode_step_median_s", dec.empty() ? 0.0 : Median(dec)},
         {"decode_steps", dec.size()},
         {"decode_step_mean_s", dec.empty() ? 0.0 : std::accumulate(dec.begin(), dec.end(), 0.0) / static_cast<double>(dec.size())},
         {"page_maps", st.page_maps}, {"ahead_page_maps", st.ahead_page_maps}, {"map_seconds", st.map_seconds},
         {"map_wait_seconds", st.map_wait_seconds}, {"committed_bytes", st.committed_bytes}, {"steps_s", g.steps}});
    std::fprintf(stderr, "scheduler map_ahead=%d: %zu steps %.2f s, maps %llu (ahead %llu), map %.4f s, wait %.4f s\n",
                 g.map_ahead, g.steps.size(), total, static_cast<unsigned long long>(st.page_maps),
                 static_cast<unsigned long long>(st.ahead_page_maps), st.map_seconds, st.map_wait_seconds);
  }
  if (rigs[0].steps.size() != rigs[1].steps.size() || rigs[0].decode_only != rigs[1].decode_only) {
    Die("the two schedulers planned different steps; pairs would not compare");
  }
  std::vector<bool> all(rigs[0].steps.size(), true);
  out["paired_step_ratio_median"] = PairedRatio(rigs[1].steps, rigs[0].steps, all);
  out["paired_decode_step_ratio_median"] = PairedRatio(rigs[1].steps, rigs[0].steps, rigs[0].decode_only);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_path, out_path, command;
  int threads = 2;
  std::string parts = "123";
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) Die("missing value after " + a);
      return argv[++i];
    };
    if (a == "--model") model_path = next();
    else if (a == "--out") out_path = next();
    else if (a == "--threads") threads = std::atoi(next().c_str());
    else if (a == "--command") command = next();
    else if (a == "--parts") parts = next();
    else Die("unknown argument " + a + " (see the header of bench/kv/kv_bench.cpp)");
  }
  if (model_path.empty() || out_path.empty()) Die("--model and --out are required");
  auto model = Take(strata::Model::Load(model_path), "loading " + model_path);
  const strata::ModelConfig& c = model->config();
  const Shape s{c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim};
  if (c.context_length < kDepths.back() + kChunk) {
    std::fprintf(stderr, "note: model context %d < %lld; the kernels do not enforce it\n", c.context_length,
                 static_cast<long long>(kDepths.back() + kChunk));
  }
  json out;
  out["command"] = command;
  {
    const std::time_t now = std::time(nullptr);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M UTC", std::gmtime(&now));
    out["date"] = buf;
  }
  out["machine"] = Machine();
  out["loadavg_start"] = LoadAvg();
  out["threads"] = threads;
  out["model"] = {{"path", model_path}, {"name", c.name}, {"n_layers", c.n_layers}, {"n_heads", c.n_heads},
                  {"n_kv_heads", c.n_kv_heads}, {"head_dim", c.head_dim}, {"dim", c.dim}, {"context", c.context_length},
                  {"bytes_per_position", s.bytes_per_position()}};
  out["kv_fill"] = "seeded random fp16 written through the views; 4 sequences grown together 16 positions at a time";
  if (parts.find('1') != std::string::npos) out["attention"] = AttentionBench(s, *model, threads);
  if (parts.find('2') != std::string::npos) out["capacity"] = CapacityBench(s, 8192);
  if (parts.find('3') != std::string::npos) out["map_ahead"] = SchedulerBench(*model, s, threads);
  out["loadavg_end"] = LoadAvg();
  std::ofstream f(out_path);
  f << out.dump(2) << "\n";
  if (!f) Die("cannot write " + out_path);
  return 0;
}
