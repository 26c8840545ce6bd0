// `strata eval`: accuracy on the held-out long-range tasks by distance, the
// yardstick every KV technique is measured with (docs: models/README.md).
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "cli/common.h"
#include "engine/kv_roundtrip.h"
#include "engine/task_eval.h"

namespace strata::cli {

namespace {

struct EvalFlags {
  ModelFlags model;
  std::vector<std::string> files;
  std::string task_filter;  // comma-separated task names
  int limit = 0;            // examples per (task, bucket); 0 = all
  std::string json_out;
  bool per_example = false;
  std::string kv_roundtrip;  // "" or a chunk encoding, e.g. "int8", "lz4,int8"
  int chunk_tokens = 256;
};

std::vector<std::string> DefaultTaskFiles() {
  std::vector<std::string> out;
  for (const char* t : {"kv_recall", "repeat", "mdqa"}) out.push_back(std::string("models/eval/") + t + ".jsonl");
  return out;
}

int RunEval(EvalFlags f) {
  std::vector<std::string> files = f.files.empty() ? DefaultTaskFiles() : f.files;
  std::set<std::string> wanted;
  if (!f.task_filter.empty()) {
    std::stringstream ss(f.task_filter);
    for (std::string t; std::getline(ss, t, ',');) wanted.insert(t);
  }
  std::vector<TaskExample> examples;
  std::map<std::pair<std::string, int>, int> per_bucket;
  for (const auto& path : files) {
    auto loaded = LoadTaskExamples(path);
    if (!loaded.ok()) return Fail(loaded.status());
    for (auto& ex : *loaded) {
      if (!wanted.empty() && !wanted.count(ex.task)) continue;
      int& n = per_bucket[{ex.task, ex.bucket}];
      if (f.limit > 0 && n >= f.limit) continue;
      ++n;
      examples.push_back(std::move(ex));
    }
  }
  if (examples.empty()) return Fail(Status::InvalidArgument("no examples selected (check --task and the files)"));
  TaskEvalOptions options;
  options.chunk_tokens = f.chunk_tokens;
  if (!f.kv_roundtrip.empty()) {
    auto enc = ParseChunkEncodingSpec(f.kv_roundtrip);
    if (!enc.ok()) return Fail(Status(enc.status().code(), "--kv-roundtrip: " + enc.status().message()));
    options.kv_roundtrip = *enc;
  }
  auto model = LoadModel(f.model);
  if (!model.ok()) return Fail(model.status());
  size_t longest = 0;
  for (const auto& ex : examples) longest = std::max(longest, ex.prompt_ids.size() + ex.answer_ids.size());
  const int64_t n_ctx = f.model.ctx > 0 ? f.model.ctx : (*model)->config().context_length;
  auto gen = Generator::Create(**model, ResolveThreads(f.model.threads), n_ctx, f.model.batch);
  if (!gen.ok()) return Fail(gen.status());

  std::vector<TaskExampleResult> results;
  ProgressBar bar("eval", static_cast<int64_t>(examples.size()));
  int correct = 0;
  for (size_t i = 0; i < examples.size(); ++i) {
    auto r = ScoreTaskExample(**gen, examples[i], options);
    if (!r.ok()) {
      bar.Finish();
      return Fail(Status(r.status().code(), examples[i].task + " example " + std::to_string(i) + ": " +
                                                r.status().message()));
    }
    correct += r->correct ? 1 : 0;
    results.push_back(std::move(*r));
    char buf[64];
    std::snprintf(buf, sizeof buf, "%d/%zu correct", correct, i + 1);
    bar.Update(static_cast<int64_t>(i + 1), buf);
  }
  bar.Finish();

  const auto summary = SummarizeTaskResults(examples, results);
  if (options.kv_roundtrip) {
    std::printf("prompt KV round-tripped through %s/%s chunks of %d tokens\n",
                std::string(ChunkDTypeName(options.kv_roundtrip->dtype)).c_str(),
                std::string(ChunkCodecName(options.kv_roundtrip->codec)).c_str(), options.chunk_tokens);
  }
  std::printf("| task      | distance bucket | mean distance |  n | accuracy | token accuracy | answer NLL |\n");
  std::printf("|-----------|----------------:|--------------:|---:|---------:|---------------:|-----------:|\n");
  for (const auto& s : summary) {
    std::printf("| %-9s | %15d | %13.0f | %2d | %8.3f | %14.3f | %10.4f |\n", s.task.c_str(), s.bucket,
                s.mean_distance, s.n, s.accuracy(), s.token_accuracy, s.mean_answer_nll);
  }
  if (!f.json_out.empty()) {
    nlohmann::json j;
    j["model"] = f.model.model_path;
    j["n_ctx"] = n_ctx;
    j["kv_roundtrip"] = f.kv_roundtrip;
    j["longest_example_tokens"] = longest;
    for (const auto& s : summary) {
      j["buckets"].push_back({{"task", s.task}, {"bucket", s.bucket}, {"n", s.n}, {"correct", s.correct},
                              {"accuracy", s.accuracy()}, {"token_accuracy", s.token_accuracy},
                              {"mean_distance", s.mean_distance}, {"mean_answer_nll", s.mean_answer_nll}});
    }
    if (f.per_example) {
      for (size_t i = 0; i < examples.size(); ++i) {
        j["examples"].push_back({{"task", examples[i].task}, {"bucket", examples[i].bucket},
                                 {"correct", results[i].correct}, {"correct_tokens", results[i].correct_tokens},
                                 {"answer_tokens", results[i].answer_tokens}, {"answer_nll", results[i].answer_nll},
                                 {"predicted", results[i].predicted}});
      }
    }
    std::ofstream out(f.json_out);
    out << j.dump(2) << "\n";
    if (!out) return Fail(Status::IoError("cannot write " + f.json_out));
  }
  return 0;
}

}  // namespace

void RegisterEval(CLI::App& app) {
  auto flags = std::make_shared<EvalFlags>();
  CLI::App* cmd = app.add_subcommand(
      "eval", "accuracy on held-out long-range tasks (key-value recall, repetition, multi-document QA) by distance");
  AddModelFlags(cmd, &flags->model);
  cmd->add_option("files", flags->files, "task files (jsonl from tools/train/tasks.py); default models/eval/*.jsonl")
      ->check(CLI::ExistingFile);
  cmd->add_option("--task", flags->task_filter, "only these tasks (comma-separated: kv_recall,repeat,mdqa)");
  cmd->add_option("--limit", flags->limit, "at most this many examples per task and distance bucket (0: all)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--json", flags->json_out, "also write the results as JSON to this file");
  cmd->add_flag("--per-example", flags->per_example, "include every example's result in the JSON");
  cmd->add_option("--kv-roundtrip", flags->kv_roundtrip,
                  "encode and decode the prompt's KV in this chunk encoding before scoring, as a store tier "
                  "would (e.g. int8, lz4,int8): measures what a lossy cold-tier format costs");
  cmd->add_option("--kv-chunk-tokens", flags->chunk_tokens, "chunk size for --kv-roundtrip")
      ->check(CLI::PositiveNumber);
  cmd->callback([flags] { ExitCode() = RunEval(*flags); });
}

}  // namespace strata::cli
