// Token sampling: penalties, then top-k, top-p, min-p and temperature, then a
// seeded draw — llama.cpp's default order, so the same flags mean the same
// thing. temperature <= 0 is greedy.
//
// Thread-safety: a Sampler holds its RNG and scratch; one per sequence.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "base/status.h"
#include "model/tokenizer.h"

namespace strata {

struct SamplingParams {
  float temperature = 0.8f;
  int top_k = 40;              // <= 0: off
  float top_p = 0.95f;         // >= 1: off
  float min_p = 0.05f;         // <= 0: off
  float repeat_penalty = 1.0f; // 1: off
  int repeat_last_n = 64;      // window of the three penalties (-1: whole history)
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  uint64_t seed = 0xffffffffu; // 0xffffffff: random seed, as in llama.cpp

  // Rejects values that cannot mean anything (negative temperature is
  // accepted as greedy, like llama.cpp).
  Status Validate() const;
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);

  // Chooses the next token. `history` is every token so far (prompt and
  // output) for the penalties. logits is not modified.
  TokenId Sample(std::span<const float> logits, std::span<const TokenId> history);

  const SamplingParams& params() const { return params_; }

 private:
  struct Candidate {
    float logit;
    TokenId id;
  };
  SamplingParams params_;
  std::mt19937_64 rng_;
  std::vector<Candidate> cand_;
  std::vector<float> adjusted_;
};

// Index of the largest logit (lowest id on ties).
TokenId ArgMax(std::span<const float> logits);

}  // namespace strata
