// The long-range task harness: held-out examples (models/eval/*.jsonl,
// written by tools/train/tasks.py) scored by teacher forcing, so every KV
// technique can be measured against the exact path by distance.
//
// An example is correct when every answer token is the model's argmax given
// the prompt and the true answer tokens before it (the same as greedy
// decoding reproducing the answer); the share of answer tokens that are the
// argmax is reported too (partial credit, e.g. for verbatim repetition).
//
// Thread-safety: functions are reentrant; a Generator belongs to one thread.
#pragma once

#include <string>
#include <vector>

#include <optional>

#include "base/status.h"
#include "cache/chunk_format.h"
#include "engine/generator.h"

namespace strata {

struct TaskExample {
  std::string task;      // "kv_recall", "repeat", "mdqa"
  int bucket = 0;        // target distance in tokens
  int distance = 0;      // tokens from the needed fact to the end of the prompt
  std::vector<TokenId> prompt_ids;  // starts with BOS
  std::vector<TokenId> answer_ids;
};

// Reads one jsonl file; every line must carry task, bucket, distance,
// prompt_ids and answer_ids (non-empty). Errors name the file and line.
Expected<std::vector<TaskExample>> LoadTaskExamples(const std::string& path);

struct TaskExampleResult {
  bool correct = false;
  int answer_tokens = 0;
  int correct_tokens = 0;
  double answer_nll = 0;             // summed negative log-likelihood of the answer tokens
  std::vector<TokenId> predicted;    // argmax at each answer position
};

// How the prompt's KV is treated before the answer is scored.
struct TaskEvalOptions {
  // When set, the KV of every full chunk of the prompt (all but its last
  // token) is encoded in this chunk encoding and decoded back in place, as a
  // load from a store tier in that format would deliver it; lossy encodings
  // (int8) thus show their cost on the task.
  std::optional<ChunkEncoding> kv_roundtrip;
  int chunk_tokens = 256;
};

// Scores one example from an empty KV cache. kOutOfRange when prompt +
// answer does not fit the generator's context.
Expected<TaskExampleResult> ScoreTaskExample(Generator& gen, const TaskExample& ex,
                                             const TaskEvalOptions& options = {});

struct TaskBucketSummary {
  std::string task;
  int bucket = 0;
  int n = 0;
  int correct = 0;
  double token_accuracy = 0;  // mean over examples of correct_tokens / answer_tokens
  double mean_distance = 0;
  double mean_answer_nll = 0;  // per example (summed over its answer tokens)
  double accuracy() const { return n > 0 ? static_cast<double>(correct) / n : 0.0; }
};

// Groups results by (task, bucket), in the order tasks and buckets first appear.
std::vector<TaskBucketSummary> SummarizeTaskResults(const std::vector<TaskExample>& examples,
                                                    const std::vector<TaskExampleResult>& results);

}  // namespace strata
