#include "engine/task_eval.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>

#include "engine/kv_roundtrip.h"

namespace strata {

namespace {

Expected<std::vector<TokenId>> IdList(const nlohmann::json& j, const char* field, const std::string& where) {
  auto it = j.find(field);
  if (it == j.end() || !it->is_array() || it->empty()) {
    return Status::Corrupt(where + ": '" + field + "' must be a non-empty array of token ids");
  }
  std::vector<TokenId> ids;
  ids.reserve(it->size());
  for (const auto& v : *it) {
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > INT32_MAX) {
      return Status::Corrupt(where + ": '" + field + "' holds a value that is not a token id");
    }
    ids.push_back(static_cast<TokenId>(v.get<int64_t>()));
  }
  return ids;
}

}  // namespace

Expected<std::vector<TaskExample>> LoadTaskExamples(const std::string& path) {
  std::ifstream in(path);
  if (!in) return Status::IoError("cannot open task file " + path);
  std::vector<TaskExample> out;
  std::string line;
  int line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = path + ":" + std::to_string(line_no);
    nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object()) return Status::Corrupt(where + ": not a JSON object");
    TaskExample ex;
    if (!j.contains("task") || !j["task"].is_string()) return Status::Corrupt(where + ": 'task' must be a string");
    ex.task = j["task"].get<std::string>();
    for (const char* f : {"bucket", "distance"}) {
      if (!j.contains(f) || !j[f].is_number_integer()) {
        return Status::Corrupt(where + ": '" + f + "' must be an integer");
      }
    }
    ex.bucket = j["bucket"].get<int>();
    ex.distance = j["distance"].get<int>();
    STRATA_ASSIGN_OR_RETURN(ex.prompt_ids, IdList(j, "prompt_ids", where));
    STRATA_ASSIGN_OR_RETURN(ex.answer_ids, IdList(j, "answer_ids", where));
    out.push_back(std::move(ex));
  }
  if (out.empty()) return Status::InvalidArgument("task file " + path + " holds no examples");
  return out;
}

Expected<TaskExampleResult> ScoreTaskExample(Generator& gen, const TaskExample& ex, const TaskEvalOptions& options) {
  const int64_t n_prompt = static_cast<int64_t>(ex.prompt_ids.size());
  const int64_t n_answer = static_cast<int64_t>(ex.answer_ids.size());
  if (n_prompt < 1 || n_answer < 1) return Status::InvalidArgument("example without prompt or answer");
  if (n_prompt + n_answer - 1 > gen.n_ctx()) {
    return Status::OutOfRange("example of " + std::to_string(n_prompt + n_answer - 1) +
                              " tokens does not fit the context of " + std::to_string(gen.n_ctx()) +
                              " (raise -c)");
  }
  const int vocab = gen.model().config().vocab_size;
  for (TokenId t : ex.prompt_ids) {
    if (t < 0 || t >= vocab) return Status::InvalidArgument("prompt token id " + std::to_string(t) + " outside the vocabulary");
  }
  for (TokenId t : ex.answer_ids) {
    if (t < 0 || t >= vocab) return Status::InvalidArgument("answer token id " + std::to_string(t) + " outside the vocabulary");
  }
  gen.kv().Clear(0);
  // The prompt without its last token needs no logits; the last prompt token
  // and all answer tokens but the last predict the answer.
  if (n_prompt > 1) {
    auto head = gen.Evaluate(std::span<const TokenId>(ex.prompt_ids).first(n_prompt - 1), 0, false);
    if (!head.ok()) return head.status();
  }
  if (options.kv_roundtrip) {
    auto done = RoundTripKv(gen, ex.prompt_ids, n_prompt - 1, *options.kv_roundtrip, options.chunk_tokens);
    if (!done.ok()) return done.status();
  }
  std::vector<TokenId> tail;
  tail.push_back(ex.prompt_ids.back());
  tail.insert(tail.end(), ex.answer_ids.begin(), ex.answer_ids.end() - 1);
  STRATA_ASSIGN_OR_RETURN(std::vector<float> logits, gen.Evaluate(tail, n_prompt - 1, true));
  TaskExampleResult r;
  r.answer_tokens = static_cast<int>(n_answer);
  for (int64_t i = 0; i < n_answer; ++i) {
    const float* row = logits.data() + i * vocab;
    const float* best = std::max_element(row, row + vocab);
    const TokenId pred = static_cast<TokenId>(best - row);
    r.predicted.push_back(pred);
    if (pred == ex.answer_ids[i]) ++r.correct_tokens;
    double sum = 0;
    for (int v = 0; v < vocab; ++v) sum += std::exp(static_cast<double>(row[v]) - *best);
    r.answer_nll += std::log(sum) + *best - row[ex.answer_ids[i]];
  }
  r.correct = r.correct_tokens == r.answer_tokens;
  return r;
}

std::vector<TaskBucketSummary> SummarizeTaskResults(const std::vector<TaskExample>& examples,
                                                    const std::vector<TaskExampleResult>& results) {
  std::vector<TaskBucketSummary> out;
  std::map<std::pair<std::string, int>, size_t> index;
  for (size_t i = 0; i < examples.size() && i < results.size(); ++i) {
    const auto key = std::make_pair(examples[i].task, examples[i].bucket);
    auto it = index.find(key);
    if (it == index.end()) {
      it = index.emplace(key, out.size()).first;
      out.push_back(TaskBucketSummary{examples[i].task, examples[i].bucket});
    }
    TaskBucketSummary& s = out[it->second];
    s.n += 1;
    s.correct += results[i].correct ? 1 : 0;
    s.token_accuracy += static_cast<double>(results[i].correct_tokens) / results[i].answer_tokens;
    s.mean_distance += examples[i].distance;
    s.mean_answer_nll += results[i].answer_nll;
  }
  for (auto& s : out) {
    s.token_accuracy /= s.n;
    s.mean_distance /= s.n;
    s.mean_answer_nll /= s.n;
  }
  return out;
}

}  // namespace strata
