// Perplexity as llama-perplexity computes it (see ComputePerplexity), and the
// quality cost of a KV chunk encoding measured the same way (kv_roundtrip).
#pragma once

#include <functional>
#include <optional>
#include <span>
#include <string_view>

#include "base/status.h"
#include "cache/chunk_format.h"
#include "engine/generator.h"

namespace strata {

struct PerplexityProgress {
  int64_t chunk = 0;
  int64_t n_chunks = 0;
  double running_ppl = 0;
};

struct PerplexityOptions {
  int64_t n_ctx = 512;      // tokens per chunk (llama-perplexity's default)
  int64_t max_chunks = -1;  // score at most this many chunks; <= 0: all
  // When set, every chunk is scored twice: exactly, and with the KV of its
  // first half (the context of every scored token) encoded in this chunk
  // encoding and decoded back in place, as a load from a store tier in that
  // encoding would deliver it. The result's perplexity is then the round
  // trip's, and `kv_roundtrip` compares the two per scored token.
  std::optional<ChunkEncoding> kv_roundtrip;
  // Positions per encoded chunk (the store's chunk_tokens). Only whole chunks
  // of the context are round-tripped, as a store only holds whole chunks;
  // context positions after the last whole chunk keep their exact KV.
  int64_t kv_chunk_tokens = 256;
};

// The round-trip path against the exact path, over the same scored tokens.
// P is the exact path's next-token distribution, Q the round trip's.
struct KvRoundTripQuality {
  ChunkEncoding encoding;
  int64_t chunk_tokens = 0;
  int64_t roundtrip_positions = 0;  // per chunk: context positions whose KV went through the encoding
  int64_t exact_positions = 0;      // per chunk: context positions left exact (not filling a whole chunk)
  double exact_ppl = 0;
  double exact_ppl_stderr = 0;
  double exact_mean_nll = 0;
  double mean_kl = 0;     // mean over scored tokens of KL(P || Q), nats
  double kl_stderr = 0;   // standard error of that mean
  double max_kl = 0;
  int64_t top1_changed = 0;    // scored tokens whose argmax under Q differs from that under P
  double top1_change_rate = 0; // top1_changed / scored tokens
};

struct PerplexityResult {
  double ppl = 0;
  double ppl_stderr = 0;  // propagated from the standard error of the mean NLL
  double mean_nll = 0;
  int64_t n_chunks = 0;
  int64_t n_scored = 0;
  std::optional<KvRoundTripQuality> kv_roundtrip;  // set when options.kv_roundtrip was
};

// Text → tokens (with BOS if the model adds one); chunks of n_ctx tokens, each
// evaluated from an empty cache with BOS as its first token; tokens in the
// second half of every chunk are scored. Needs at least 2 * n_ctx tokens,
// like llama-perplexity.
Expected<PerplexityResult> ComputePerplexity(Generator& gen, std::string_view text, const PerplexityOptions& options,
                                             const std::function<void(const PerplexityProgress&)>& progress = {});
Expected<PerplexityResult> ComputePerplexity(Generator& gen, std::string_view text, int64_t n_ctx,
                                             int64_t max_chunks,
                                             const std::function<void(const PerplexityProgress&)>& progress = {});

// Same scoring over already tokenized input.
Expected<PerplexityResult> ComputePerplexityTokens(Generator& gen, std::span<const TokenId> tokens,
                                                   const PerplexityOptions& options,
                                                   const std::function<void(const PerplexityProgress&)>& progress = {});
Expected<PerplexityResult> ComputePerplexityTokens(Generator& gen, std::span<const TokenId> tokens, int64_t n_ctx,
                                                   int64_t max_chunks,
                                                   const std::function<void(const PerplexityProgress&)>& progress = {});

}  // namespace strata
