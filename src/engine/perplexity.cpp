#include "engine/perplexity.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace strata {

Expected<PerplexityResult> ComputePerplexity(Generator& gen, std::string_view text, int64_t n_ctx,
                                             int64_t max_chunks,
                                             const std::function<void(const PerplexityProgress&)>& progress) {
  const Tokenizer& tok = gen.model().tokenizer();
  EncodeOptions eo;
  eo.add_bos = true;
  STRATA_ASSIGN_OR_RETURN(std::vector<TokenId> tokens, tok.Encode(text, eo));
  return ComputePerplexityTokens(gen, tokens, n_ctx, max_chunks, progress);
}

Expected<PerplexityResult> ComputePerplexityTokens(Generator& gen, std::span<const TokenId> tokens, int64_t n_ctx,
                                                   int64_t max_chunks,
                                                   const std::function<void(const PerplexityProgress&)>& progress) {
  if (n_ctx < 4) return Status::InvalidArgument("perplexity needs a context of at least 4 tokens");
  if (n_ctx > gen.n_ctx()) return Status::InvalidArgument("chunk size exceeds the context");
  const int64_t n_tokens = static_cast<int64_t>(tokens.size());
  if (n_tokens < 2 * n_ctx) {
    return Status::InvalidArgument("the text has " + std::to_string(n_tokens) + " tokens; perplexity needs at least " +
                                   std::to_string(2 * n_ctx) + " (2 * context size)");
  }
  int64_t n_chunks = n_tokens / n_ctx;
  if (max_chunks > 0) n_chunks = std::min(n_chunks, max_chunks);
  const Tokenizer& tok = gen.model().tokenizer();
  const size_t vocab = static_cast<size_t>(gen.model().config().vocab_size);
  const int64_t first = n_ctx / 2;
  double sum = 0, sum_sq = 0;
  int64_t count = 0;
  std::vector<TokenId> chunk(static_cast<size_t>(n_ctx));
  for (int64_t c = 0; c < n_chunks; ++c) {
    std::copy(tokens.begin() + c * n_ctx, tokens.begin() + (c + 1) * n_ctx, chunk.begin());
    if (tok.add_bos() && tok.bos() >= 0) chunk[0] = tok.bos();
    gen.kv().Clear(0);
    STRATA_ASSIGN_OR_RETURN(std::vector<float> logits, gen.Evaluate(chunk, 0, true));
    for (int64_t i = first; i < n_ctx - 1; ++i) {
      const float* row = logits.data() + static_cast<size_t>(i) * vocab;
      float mx = row[0];
      for (size_t v = 1; v < vocab; ++v) mx = std::max(mx, row[v]);
      double z = 0;
      for (size_t v = 0; v < vocab; ++v) z += std::exp(static_cast<double>(row[v] - mx));
      const double nll = std::log(z) - static_cast<double>(row[static_cast<size_t>(chunk[static_cast<size_t>(i + 1)])] - mx);
      sum += nll;
      sum_sq += nll * nll;
      ++count;
    }
    if (progress) progress({c, n_chunks, std::exp(sum / static_cast<double>(count))});
  }
  PerplexityResult r;
  r.n_chunks = n_chunks;
  r.n_scored = count;
  r.mean_nll = sum / static_cast<double>(count);
  r.ppl = std::exp(r.mean_nll);
  const double var = std::max(0.0, sum_sq / static_cast<double>(count) - r.mean_nll * r.mean_nll);
  r.ppl_stderr = r.ppl * std::sqrt(var / static_cast<double>(std::max<int64_t>(1, count - 1)));
  return r;
}

}  // namespace strata
