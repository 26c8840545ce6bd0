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
  int64_t completion_tokens = 0;
  double ttft_seconds = 0;       // submit to first token (set from the first token on)
};

using RequestCallback = std::function<void(const RequestOutput&)>;

}  // namespace strata
