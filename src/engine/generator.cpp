#include "engine/generator.h"

#include <algorithm>
#include <chrono>

namespace strata {

std::string_view StopReasonName(StopReason r) {
  switch (r) {
    case StopReason::kLength: return "length";
    case StopReason::kEndOfGeneration: return "eos";
    case StopReason::kStopString: return "stop";
    case StopReason::kContextFull: return "context_full";
    case StopReason::kCancelled: return "cancelled";
  }
  return "?";
}

size_t FindStop(std::string_view text, const std::vector<std::string>& stops, size_t* hold_back) {
  size_t first = std::string_view::npos;
  size_t hold = 0;
  for (const std::string& s : stops) {
    if (s.empty()) continue;
    const size_t at = text.find(s);
    if (at != std::string_view::npos) first = std::min(first, at);
    // Longest suffix of text that is a proper prefix of s.
    for (size_t k = std::min(s.size() - 1, text.size()); k > 0; --k) {
      if (text.substr(text.size() - k) == std::string_view(s).substr(0, k)) {
        hold = std::max(hold, k);
        break;
      }
    }
  }
  if (hold_back) *hold_back = hold;
  return first;
}

Generator::Generator(const Model& model, int n_threads, int64_t n_ctx, int64_t n_batch,
                     std::unique_ptr<ContiguousKvCache> kv)
    : model_(model), ctx_(model, n_threads), n_ctx_(n_ctx), n_batch_(n_batch), kv_(std::move(kv)) {}

Expected<std::unique_ptr<Generator>> Generator::Create(const Model& model, int n_threads, int64_t n_ctx,
                                                       int64_t n_batch) {
  const ModelConfig& c = model.config();
  if (n_ctx < 0) return Status::InvalidArgument("context size must be >= 0 (0: the model's own)");
  if (n_ctx == 0) n_ctx = c.context_length;
  if (n_ctx > (1 << 22)) return Status::InvalidArgument("context size " + std::to_string(n_ctx) + " is too large");
  if (n_threads < 1 || n_threads > 1024) return Status::InvalidArgument("thread count must be in 1..1024");
  if (n_batch < 1) return Status::InvalidArgument("batch size must be >= 1");
  STRATA_ASSIGN_OR_RETURN(auto kv, ContiguousKvCache::Create(c.n_layers, c.kv_dim(), 1, n_ctx));
  return std::unique_ptr<Generator>(new Generator(model, n_threads, n_ctx, n_batch, std::move(kv)));
}

Expected<std::vector<float>> Generator::Evaluate(std::span<const TokenId> tokens, int64_t pos0, bool all_logits) {
  if (tokens.empty()) return Status::InvalidArgument("nothing to evaluate");
  if (pos0 + static_cast<int64_t>(tokens.size()) > n_ctx_) {
    return Status::OutOfRange("input of " + std::to_string(pos0 + static_cast<int64_t>(tokens.size())) +
                              " tokens does not fit the context of " + std::to_string(n_ctx_) +
                              " tokens (raise -c / --ctx-size)");
  }
  const size_t vocab = static_cast<size_t>(model_.config().vocab_size);
  std::vector<float> out;
  out.reserve(all_logits ? tokens.size() * vocab : vocab);
  for (size_t i = 0; i < tokens.size(); i += static_cast<size_t>(n_batch_)) {
    const size_t n = std::min(tokens.size() - i, static_cast<size_t>(n_batch_));
    const bool last = i + n == tokens.size();
    BatchSeq s{0, tokens.subspan(i, n), pos0 + static_cast<int64_t>(i), all_logits};
    STRATA_ASSIGN_OR_RETURN(std::span<const float> logits, ctx_.Forward({&s, 1}, *kv_));
    if (all_logits || last) out.insert(out.end(), logits.begin(), logits.end());
  }
  return out;
}

Expected<GenerateResult> Generator::Generate(std::span<const TokenId> prompt, const GenerateOptions& options,
                                             const std::function<bool(std::string_view)>& on_text) {
  STRATA_RETURN_IF_ERROR(options.sampling.Validate());
  if (prompt.empty()) return Status::InvalidArgument("the prompt is empty");
  if (static_cast<int64_t>(prompt.size()) >= n_ctx_) {
    return Status::OutOfRange("the prompt has " + std::to_string(prompt.size()) +
                              " tokens but the context holds " + std::to_string(n_ctx_) +
                              " (raise -c / --ctx-size or shorten the prompt)");
  }
  using Clock = std::chrono::steady_clock;
  GenerateResult result;
  result.prompt_tokens = static_cast<int64_t>(prompt.size());
  kv_->Clear(0);

  auto t0 = Clock::now();
  STRATA_ASSIGN_OR_RETURN(std::vector<float> logits, Evaluate(prompt, 0, false));
  auto t1 = Clock::now();
  result.prefill_seconds = std::chrono::duration<double>(t1 - t0).count();

  const Tokenizer& tok = model_.tokenizer();
  Sampler sampler(options.sampling);
  StreamDecoder decoder(tok, StreamDecoder::Continues(tok, prompt));
  std::vector<TokenId> history(prompt.begin(), prompt.end());
  std::string pending;  // decoded text not yet shown (could start a stop string)
  bool cancelled = false;
  auto emit = [&](std::string_view s) {
    if (s.empty() || cancelled) return;
    result.text.append(s);
    if (on_text && !on_text(s)) cancelled = true;
  };
  const int64_t limit = options.max_tokens < 0 ? n_ctx_ : options.max_tokens;
  int64_t pos = static_cast<int64_t>(prompt.size());
  result.stop_reason = StopReason::kLength;
  for (int64_t i = 0; i < limit; ++i) {
    const TokenId next = sampler.Sample(logits, history);
    if (!options.ignore_eos && tok.IsEndOfGeneration(next)) {
      result.stop_reason = StopReason::kEndOfGeneration;
      break;
    }
    result.output_tokens.push_back(next);
    history.push_back(next);
    pending += decoder.Push(next);
    size_t hold = 0;
    const size_t at = FindStop(pending, options.stop_strings, &hold);
    if (at != std::string::npos) {
      emit(std::string_view(pending).substr(0, at));
      pending.clear();
      result.stop_reason = StopReason::kStopString;
      break;
    }
    emit(std::string_view(pending).substr(0, pending.size() - hold));
    pending.erase(0, pending.size() - hold);
    if (cancelled) {
      result.stop_reason = StopReason::kCancelled;
      break;
    }
    if (i + 1 == limit) break;  // no forward pass for a token nobody will sample
    if (pos + 1 > n_ctx_) {
      result.stop_reason = StopReason::kContextFull;
      break;
    }
    BatchSeq s{0, std::span<const TokenId>(&history.back(), 1), pos, false};
    STRATA_ASSIGN_OR_RETURN(std::span<const float> l, ctx_.Forward({&s, 1}, *kv_));
    logits.assign(l.begin(), l.end());
    ++pos;
  }
  if (result.stop_reason != StopReason::kStopString && result.stop_reason != StopReason::kCancelled) {
    pending += decoder.Flush();
    emit(pending);
  }
  result.decode_seconds = std::chrono::duration<double>(Clock::now() - t1).count();
  return result;
}

}  // namespace strata
