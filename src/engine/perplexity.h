// Perplexity as llama-perplexity computes it (see ComputePerplexity).
#pragma once

#include <functional>
#include <string_view>

#include "base/status.h"
#include "engine/generator.h"

namespace strata {

struct PerplexityProgress {
  int64_t chunk = 0;
  int64_t n_chunks = 0;
  double running_ppl = 0;
};

struct PerplexityResult {
  double ppl = 0;
  double ppl_stderr = 0;  // propagated from the standard error of the mean NLL
  double mean_nll = 0;
  int64_t n_chunks = 0;
  int64_t n_scored = 0;
};

// Text → tokens (with BOS if the model adds one); chunks of n_ctx tokens, each
// evaluated from an empty cache with BOS as its first token; tokens in the
// second half of every chunk are scored. Needs at least 2 * n_ctx tokens,
// like llama-perplexity.
Expected<PerplexityResult> ComputePerplexity(Generator& gen, std::string_view text, int64_t n_ctx,
                                             int64_t max_chunks,
                                             const std::function<void(const PerplexityProgress&)>& progress = {});

// Same scoring over already tokenized input.
Expected<PerplexityResult> ComputePerplexityTokens(Generator& gen, std::span<const TokenId> tokens, int64_t n_ctx,
                                                   int64_t max_chunks,
                                                   const std::function<void(const PerplexityProgress&)>& progress = {});

}  // namespace strata
