// Single-sequence text generation: prefill in micro-batches, then decode with
// a Sampler, streaming text that never splits a UTF-8 character and never
// shows a stop string (or the start of one) to the caller.
//
// Thread-safety: one Generator per thread.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "engine/sampler.h"
#include "kv/contiguous_kv_cache.h"
#include "model/model.h"

namespace strata {

struct GenerateOptions {
  int max_tokens = 128;             // -1: until the context is full
  SamplingParams sampling;
  std::vector<std::string> stop_strings;
  bool ignore_eos = false;
};

enum class StopReason { kLength, kEndOfGeneration, kStopString, kContextFull, kCancelled };
std::string_view StopReasonName(StopReason r);

struct GenerateResult {
  std::vector<TokenId> output_tokens;
  std::string text;
  StopReason stop_reason = StopReason::kLength;
  int64_t prompt_tokens = 0;
  double prefill_seconds = 0;
  double decode_seconds = 0;
};

class Generator {
 public:
  // n_ctx: positions available to prompt + output (0: the model's trained
  // context). n_batch: prompt tokens per forward pass.
  static Expected<std::unique_ptr<Generator>> Create(const Model& model, int n_threads, int64_t n_ctx,
                                                     int64_t n_batch = 512);

  // on_text receives each piece of complete text; returning false cancels.
  Expected<GenerateResult> Generate(std::span<const TokenId> prompt, const GenerateOptions& options,
                                    const std::function<bool(std::string_view)>& on_text = {});

  // Evaluates tokens at positions [pos0, pos0+n) of slot 0 in micro-batches
  // and returns the logits of every token ([n][vocab]) when all_logits, else
  // of the last token. Used by perplexity and bench.
  Expected<std::vector<float>> Evaluate(std::span<const TokenId> tokens, int64_t pos0, bool all_logits);

  ForwardContext& context() { return ctx_; }
  KvCache& kv() { return *kv_; }
  int64_t n_ctx() const { return n_ctx_; }
  const Model& model() const { return model_; }

 private:
  Generator(const Model& model, int n_threads, int64_t n_ctx, int64_t n_batch,
            std::unique_ptr<ContiguousKvCache> kv);

  const Model& model_;
  ForwardContext ctx_;
  int64_t n_ctx_;
  int64_t n_batch_;
  std::unique_ptr<ContiguousKvCache> kv_;
};

// Finds where a stop string starts in text, or npos; also reports how many
// trailing bytes could still become a stop string (must be held back).
size_t FindStop(std::string_view text, const std::vector<std::string>& stops, size_t* hold_back);

}  // namespace strata
