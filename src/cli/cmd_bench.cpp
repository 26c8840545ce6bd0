// strata bench: prompt processing (pp) and text generation (tg) speed in
// llama-bench's terms — random tokens, optional depth (tokens already in the
// KV cache before the timed part), repetitions with mean ± stddev — printed
// as a markdown table and optionally written as JSON.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "engine/generator.h"
#include "kernels/memory_bandwidth.h"

namespace strata::cli {

namespace {

struct BenchFlags {
  ModelFlags model;
  std::vector<int> n_prompt{512};
  std::vector<int> n_gen{128};
  std::vector<int> depth{0};
  int repetitions = 5;
  std::string json_out;
  bool no_bandwidth = false;
};

struct Sample {
  double mean = 0, stddev = 0;
};

Sample Stats(const std::vector<double>& v) {
  Sample s;
  for (double x : v) s.mean += x;
  s.mean /= static_cast<double>(v.size());
  for (double x : v) s.stddev += (x - s.mean) * (x - s.mean);
  s.stddev = v.size() > 1 ? std::sqrt(s.stddev / static_cast<double>(v.size() - 1)) : 0;
  return s;
}

int RunBench(const BenchFlags& f) {
  auto model = LoadModel(f.model);
  if (!model.ok()) return Fail(model.status());
  const Model& m = **model;
  const ModelConfig& c = m.config();
  const int threads = ResolveThreads(f.model.threads);
  int64_t need = 0;
  for (int d : f.depth) {
    for (int p : f.n_prompt) need = std::max<int64_t>(need, d + p);
    for (int g : f.n_gen) need = std::max<int64_t>(need, d + g);
  }
  auto gen = Generator::Create(m, threads, need + 1, f.model.batch);
  if (!gen.ok()) return Fail(gen.status());
  Generator& g = **gen;

  double bandwidth = 0;
  if (!f.no_bandwidth) bandwidth = MeasureReadBandwidth(g.context().pool());

  std::mt19937 rng(42);
  std::uniform_int_distribution<TokenId> pick(0, c.vocab_size - 1);
  auto random_tokens = [&](int64_t n) {
    std::vector<TokenId> t(static_cast<size_t>(n));
    for (auto& x : t) x = pick(rng);
    return t;
  };

  struct Row {
    std::string test;
    int n_prompt, n_gen, depth;
    Sample tps;
    double bytes_per_token = 0;
  };
  std::vector<Row> rows;
  auto run = [&](int n_prompt, int n_gen, int depth) -> Status {
    std::vector<double> tps;
    for (int r = -1; r < f.repetitions; ++r) {  // r == -1: warm-up, not recorded
      g.kv().Clear(0);
      if (depth > 0) {
        auto filled = g.Evaluate(random_tokens(depth), 0, false);
        if (!filled.ok()) return filled.take_status();
      }
      const auto t0 = std::chrono::steady_clock::now();
      if (n_prompt > 0) {
        auto out = g.Evaluate(random_tokens(n_prompt), depth, false);
        if (!out.ok()) return out.take_status();
      } else {
        std::vector<TokenId> tok = random_tokens(1);
        for (int i = 0; i < n_gen; ++i) {
          BatchSeq s{0, tok, depth + i, false};
          auto out = g.context().Forward({&s, 1}, g.kv());
          if (!out.ok()) return out.take_status();
          tok[0] = pick(rng);
        }
      }
      const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (r >= 0) tps.push_back((n_prompt > 0 ? n_prompt : n_gen) / sec);
    }
    Row row;
    row.test = n_prompt > 0 ? "pp" + std::to_string(n_prompt) : "tg" + std::to_string(n_gen);
    if (depth > 0) row.test += " @ d" + std::to_string(depth);
    row.n_prompt = n_prompt;
    row.n_gen = n_gen;
    row.depth = depth;
    row.tps = Stats(tps);
    if (n_prompt == 0) {
      // Per generated token: all weights, plus K and V of the average context.
      const double ctx = depth + n_gen / 2.0;
      row.bytes_per_token = static_cast<double>(m.weight_bytes_per_token()) +
                            ctx * 2.0 * c.n_layers * c.kv_dim() * sizeof(fp16_t);
    }
    rows.push_back(row);
    return Status::Ok();
  };
  ProgressBar bar("bench", static_cast<int64_t>(f.depth.size() * (f.n_prompt.size() + f.n_gen.size())));
  int64_t done = 0;
  for (int d : f.depth) {
    for (int p : f.n_prompt) {
      if (p <= 0) continue;
      if (Status st = run(p, 0, d); !st.ok()) return Fail(st);
      bar.Update(++done);
    }
    for (int n : f.n_gen) {
      if (n <= 0) continue;
      if (Status st = run(0, n, d); !st.ok()) return Fail(st);
      bar.Update(++done);
    }
  }
  bar.Finish();

  const double size_mib = static_cast<double>(m.weight_bytes_per_token()) / (1 << 20);
  std::string model_desc = c.arch_name + " " + m.weight_type_summary();
  std::printf("| model | size | params | threads | test | t/s | GB/s | %% of bandwidth |\n");
  std::printf("| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |\n");
  nlohmann::json j;
  j["model"] = f.model.model_path;
  j["arch"] = c.arch_name;
  j["weight_type"] = m.weight_type_summary();
  j["params"] = m.n_params();
  j["weight_bytes_per_token"] = m.weight_bytes_per_token();
  j["threads"] = threads;
  j["read_bandwidth_gbs"] = bandwidth / 1e9;
  for (const Row& r : rows) {
    std::string gbs = "", pct = "";
    if (r.bytes_per_token > 0) {
      const double rate = r.bytes_per_token * r.tps.mean;
      char b1[32], b2[32];
      std::snprintf(b1, sizeof b1, "%.1f", rate / 1e9);
      gbs = b1;
      if (bandwidth > 0) {
        std::snprintf(b2, sizeof b2, "%.0f%%", 100.0 * rate / bandwidth);
        pct = b2;
      }
    }
    std::printf("| %s | %.1f MiB | %.1f M | %d | %s | %.2f ± %.2f | %s | %s |\n", model_desc.c_str(), size_mib,
                static_cast<double>(m.n_params()) / 1e6, threads, r.test.c_str(), r.tps.mean, r.tps.stddev,
                gbs.c_str(), pct.c_str());
    j["results"].push_back({{"test", r.test},
                            {"n_prompt", r.n_prompt},
                            {"n_gen", r.n_gen},
                            {"depth", r.depth},
                            {"tokens_per_second", r.tps.mean},
                            {"stddev", r.tps.stddev},
                            {"bytes_per_token", r.bytes_per_token}});
  }
  if (bandwidth > 0) std::printf("\nmeasured read bandwidth: %.1f GB/s with %d threads\n", bandwidth / 1e9, threads);
  if (!f.json_out.empty()) {
    std::ofstream out(f.json_out);
    out << j.dump(2) << "\n";
    if (!out) return Fail(Status::IoError("cannot write '" + f.json_out + "'"));
  }
  return 0;
}

}  // namespace

void RegisterBench(CLI::App& app) {
  auto flags = std::make_shared<BenchFlags>();
  CLI::App* cmd = app.add_subcommand("bench", "prompt-processing and generation speed, like llama-bench");
  AddModelFlags(cmd, &flags->model, false);
  cmd->add_option("-p,--n-prompt", flags->n_prompt, "prompt lengths to test")->delimiter(',')->capture_default_str();
  cmd->add_option("-n,--n-gen", flags->n_gen, "generation lengths to test")->delimiter(',')->capture_default_str();
  cmd->add_option("-d,--n-depth", flags->depth, "tokens already in the KV cache")->delimiter(',')->capture_default_str();
  cmd->add_option("-r,--repetitions", flags->repetitions, "repetitions of each test")->capture_default_str()
      ->check(CLI::Range(1, 1000));
  cmd->add_option("-o,--output", flags->json_out, "write results as JSON to this file");
  cmd->add_flag("--no-bandwidth", flags->no_bandwidth, "skip the memory bandwidth measurement");
  cmd->callback([flags] { ExitCode() = RunBench(*flags); });
}

}  // namespace strata::cli
