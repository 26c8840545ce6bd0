// A generation request as the scheduler sees it, and what it reports back.
//
// Thread-safety: plain values; a RequestCallback runs on the engine thread
// and must not block (hand the output to another thread and return).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "base/status.h"
#include "engine/generator.h"
#include "engine/sampler.h"
#include "model/tokenizer.h"

namespace strata {

struct RequestOptions {
  int64_t max_tokens = 16;  // output tokens; must be >= 1
  SamplingParams sampling;
  std::vector<std::string> stop_strings;
  bool ignore_eos = false;
  // Requests share cached prefix KV only under equal salts (tenant isolation).
  std::string cache_salt;
  // Also store the KV of generated tokens in the KV cache store (full chunks,
  // when the request finishes), so a follow-up prompt that repeats the
  // answer finds it. Prompt KV is always stored when a store is configured.
  bool save_decode_cache = false;
};

// Tokens served by one tier of the KV cache store.
struct StoreTierTokens {
  std::string tier;  // "host", "disk", "redis"
  int64_t tokens = 0;
};

// One delivery to the request's callback: new text (never half a UTF-8
// character, never any part of a stop string), and on the last one the
// outcome.
struct RequestOutput {
  uint64_t id = 0;
  std::string text;
  std::vector<TokenId> tokens;   // tokens sampled since the last delivery
  bool finished = false;
  StopReason stop_reason = StopReason::kLength;  // when finished
  Status error;                  // when finished by an engine error
  int64_t prompt_tokens = 0;
  int64_t cached_tokens = 0;     // prompt tokens served from the prefix cache (first admission)
  // Prompt tokens loaded from the KV cache store (first admission), in
  // total and by the tier that served them; set once the load finished.
  int64_t store_cached_tokens = 0;
  std::vector<StoreTierTokens> store_tokens_by_tier;
  int64_t completion_tokens = 0;
  double ttft_seconds = 0;       // submit to first token (set from the first token on)
};

using RequestCallback = std::function<void(const RequestOutput&)>;

}  // namespace strata
