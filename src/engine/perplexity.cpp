#include "engine/perplexity.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "engine/kv_roundtrip.h"

namespace strata {

namespace {

// A logit row's log-partition (max + log sum exp(row - max)) and argmax
// (the first of equal maxima). Differences of logits are taken in double:
// in float, row - max rounds by up to ~1e-6, as much as the effect of int8 KV
// on some logits, which KL must resolve.
struct RowSoftmax {
  float max = 0;
  double log_z = 0;  // log sum exp(row - max)
  size_t argmax = 0;
};

RowSoftmax Softmax(const float* row, size_t vocab) {
  RowSoftmax s;
  s.max = row[0];
  for (size_t v = 1; v < vocab; ++v) {
    if (row[v] > s.max) {
      s.max = row[v];
      s.argmax = v;
    }
  }
  double z = 0;
  for (size_t v = 0; v < vocab; ++v) z += std::exp(static_cast<double>(row[v]) - s.max);
  s.log_z = std::log(z);
  return s;
}

// Both paths score with this one expression, so identical logits give
// bit-identical perplexities.
double Nll(const float* row, const RowSoftmax& s, TokenId target) {
  return s.log_z - (static_cast<double>(row[static_cast<size_t>(target)]) - s.max);
}

// KL(P || Q) for P = softmax(p), Q = softmax(q): sum_v P_v (log P_v - log Q_v).
double KlDivergence(const float* p, const RowSoftmax& sp, const float* q, const RowSoftmax& sq, size_t vocab) {
  double kl = 0;
  for (size_t v = 0; v < vocab; ++v) {
    const double log_p = (static_cast<double>(p[v]) - sp.max) - sp.log_z;
    const double log_q = (static_cast<double>(q[v]) - sq.max) - sq.log_z;
    kl += std::exp(log_p) * (log_p - log_q);
  }
  return kl;
}

// Running mean and standard error of the mean. The square is accumulated
// with an explicit fma: left to the compiler, x * x + sum_sq is contracted
// at some inlined call sites and not at others, and the exact and
// round-trip paths must give bit-identical statistics for identical inputs.
struct Moments {
  double sum = 0, sum_sq = 0;
  int64_t n = 0;
  void Add(double x) {
    sum += x;
    sum_sq = std::fma(x, x, sum_sq);
    ++n;
  }
  double Mean() const { return sum / static_cast<double>(n); }
  double StdErr() const {
    const double m = Mean();
    const double var = std::max(0.0, sum_sq / static_cast<double>(n) - m * m);
    return std::sqrt(var / static_cast<double>(std::max<int64_t>(1, n - 1)));
  }
};

}  // namespace

Expected<PerplexityResult> ComputePerplexity(Generator& gen, std::string_view text, const PerplexityOptions& options,
                                             const std::function<void(const PerplexityProgress&)>& progress) {
  const Tokenizer& tok = gen.model().tokenizer();
  EncodeOptions eo;
  eo.add_bos = true;
  STRATA_ASSIGN_OR_RETURN(std::vector<TokenId> tokens, tok.Encode(text, eo));
  return ComputePerplexityTokens(gen, tokens, options, progress);
}

Expected<PerplexityResult> ComputePerplexity(Generator& gen, std::string_view text, int64_t n_ctx,
                                             int64_t max_chunks,
                                             const std::function<void(const PerplexityProgress&)>& progress) {
  PerplexityOptions o;
  o.n_ctx = n_ctx;
  o.max_chunks = max_chunks;
  return ComputePerplexity(gen, text, o, progress);
}

Expected<PerplexityResult> ComputePerplexityTokens(Generator& gen, std::span<const TokenId> tokens, int64_t n_ctx,
                                                   int64_t max_chunks,
                                                   const std::function<void(const PerplexityProgress&)>& progress) {
  PerplexityOptions o;
  o.n_ctx = n_ctx;
  o.max_chunks = max_chunks;
  return ComputePerplexityTokens(gen, tokens, o, progress);
}

Expected<PerplexityResult> ComputePerplexityTokens(Generator& gen, std::span<const TokenId> tokens,
                                                   const PerplexityOptions& options,
                                                   const std::function<void(const PerplexityProgress&)>& progress) {
  const int64_t n_ctx = options.n_ctx;
  if (n_ctx < 4) return Status::InvalidArgument("perplexity needs a context of at least 4 tokens");
  if (n_ctx > gen.n_ctx()) return Status::InvalidArgument("chunk size exceeds the context");
  const int64_t n_tokens = static_cast<int64_t>(tokens.size());
  if (n_tokens < 2 * n_ctx) {
    return Status::InvalidArgument("the text has " + std::to_string(n_tokens) + " tokens; perplexity needs at least " +
                                   std::to_string(2 * n_ctx) + " (2 * context size)");
  }
  const int64_t first = n_ctx / 2;
  const bool roundtrip = options.kv_roundtrip.has_value();
  if (roundtrip) {
    if (options.kv_chunk_tokens <= 0) return Status::InvalidArgument("the KV chunk size must be positive");
    if (options.kv_chunk_tokens > first) {
      return Status::InvalidArgument("a KV chunk of " + std::to_string(options.kv_chunk_tokens) +
                                     " tokens does not fit the scored tokens' context of " + std::to_string(first) +
                                     " (half of -c " + std::to_string(n_ctx) +
                                     "), so no KV would be round-tripped: use a smaller KV chunk size or at least -c " +
                                     std::to_string(2 * options.kv_chunk_tokens));
    }
  }
  const int vocab_size = gen.model().config().vocab_size;
  for (TokenId t : tokens) {
    if (t < 0 || t >= vocab_size) {
      return Status::InvalidArgument("token id " + std::to_string(t) + " outside the vocabulary of " +
                                     std::to_string(vocab_size));
    }
  }
  int64_t n_chunks = n_tokens / n_ctx;
  if (options.max_chunks > 0) n_chunks = std::min(n_chunks, options.max_chunks);
  const Tokenizer& tok = gen.model().tokenizer();
  const size_t vocab = static_cast<size_t>(vocab_size);
  Moments nll, exact_nll, kl;
  double max_kl = 0;
  int64_t top1_changed = 0, roundtrip_positions = 0;
  std::vector<TokenId> chunk(static_cast<size_t>(n_ctx));
  const std::span<const TokenId> context = std::span<const TokenId>(chunk).first(static_cast<size_t>(first));
  const std::span<const TokenId> second = std::span<const TokenId>(chunk).subspan(static_cast<size_t>(first));
  for (int64_t c = 0; c < n_chunks; ++c) {
    std::copy(tokens.begin() + c * n_ctx, tokens.begin() + (c + 1) * n_ctx, chunk.begin());
    if (tok.add_bos() && tok.bos() >= 0) chunk[0] = tok.bos();
    gen.kv().Clear(0);
    if (!roundtrip) {
      STRATA_ASSIGN_OR_RETURN(std::vector<float> logits, gen.Evaluate(chunk, 0, true));
      for (int64_t i = first; i < n_ctx - 1; ++i) {
        const float* row = logits.data() + static_cast<size_t>(i) * vocab;
        nll.Add(Nll(row, Softmax(row, vocab), chunk[static_cast<size_t>(i + 1)]));
      }
    } else {
      // The exact reference is split at the same place as the round trip
      // (context, then the scored half over the context's KV), so the two
      // differ only by what the encoding did to the context's KV.
      STRATA_RETURN_IF_ERROR(gen.Evaluate(context, 0, false).status());
      STRATA_ASSIGN_OR_RETURN(std::vector<float> exact, gen.Evaluate(second, first, true));
      STRATA_ASSIGN_OR_RETURN(roundtrip_positions,
                              RoundTripKv(gen, context, first, *options.kv_roundtrip, options.kv_chunk_tokens));
      // Rewrites the scored half's own KV rows; only the context's changed.
      STRATA_ASSIGN_OR_RETURN(std::vector<float> lossy, gen.Evaluate(second, first, true));
      for (int64_t i = first; i < n_ctx - 1; ++i) {
        const size_t off = static_cast<size_t>(i - first) * vocab;
        const float* p = exact.data() + off;
        const float* q = lossy.data() + off;
        const RowSoftmax sp = Softmax(p, vocab), sq = Softmax(q, vocab);
        const TokenId target = chunk[static_cast<size_t>(i + 1)];
        exact_nll.Add(Nll(p, sp, target));
        nll.Add(Nll(q, sq, target));
        const double d = KlDivergence(p, sp, q, sq, vocab);
        kl.Add(d);
        max_kl = std::max(max_kl, d);
        if (sp.argmax != sq.argmax) ++top1_changed;
      }
    }
    if (progress) progress({c, n_chunks, std::exp(nll.Mean())});
  }
  PerplexityResult r;
  r.n_chunks = n_chunks;
  r.n_scored = nll.n;
  r.mean_nll = nll.Mean();
  r.ppl = std::exp(r.mean_nll);
  r.ppl_stderr = r.ppl * nll.StdErr();
  if (roundtrip) {
    KvRoundTripQuality q;
    q.encoding = *options.kv_roundtrip;
    q.chunk_tokens = options.kv_chunk_tokens;
    q.roundtrip_positions = roundtrip_positions;
    q.exact_positions = first - roundtrip_positions;
    q.exact_mean_nll = exact_nll.Mean();
    q.exact_ppl = std::exp(q.exact_mean_nll);
    q.exact_ppl_stderr = q.exact_ppl * exact_nll.StdErr();
    q.mean_kl = kl.Mean();
    q.kl_stderr = kl.StdErr();
    q.max_kl = max_kl;
    q.top1_changed = top1_changed;
    q.top1_change_rate = static_cast<double>(top1_changed) / static_cast<double>(kl.n);
    r.kv_roundtrip = q;
  }
  return r;
}

}  // namespace strata
