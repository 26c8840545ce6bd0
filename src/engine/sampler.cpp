#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <unordered_map>

namespace strata {

Status SamplingParams::Validate() const {
  if (!std::isfinite(temperature)) return Status::InvalidArgument("temperature must be a finite number");
  if (!(top_p > 0.0f)) return Status::InvalidArgument("top_p must be > 0 (1 disables it)");
  if (min_p < 0.0f || min_p > 1.0f) return Status::InvalidArgument("min_p must be in [0, 1]");
  if (!(repeat_penalty > 0.0f) || !std::isfinite(repeat_penalty)) {
    return Status::InvalidArgument("repeat_penalty must be > 0 (1 disables it)");
  }
  if (!std::isfinite(presence_penalty) || !std::isfinite(frequency_penalty)) {
    return Status::InvalidArgument("presence/frequency penalties must be finite");
  }
  if (repeat_last_n < -1) return Status::InvalidArgument("repeat_last_n must be >= -1");
  return Status::Ok();
}

Sampler::Sampler(const SamplingParams& params) : params_(params) {
  if (params.seed == 0xffffffffu) {
    rng_.seed(std::random_device{}());
  } else {
    rng_.seed(params.seed);
  }
}

TokenId ArgMax(std::span<const float> logits) {
  TokenId best = 0;
  for (size_t i = 1; i < logits.size(); ++i) {
    if (logits[i] > logits[static_cast<size_t>(best)]) best = static_cast<TokenId>(i);
  }
  return best;
}

TokenId Sampler::Sample(std::span<const float> logits, std::span<const TokenId> history) {
  const bool penalize = params_.repeat_penalty != 1.0f || params_.presence_penalty != 0.0f ||
                        params_.frequency_penalty != 0.0f;
  std::span<const float> l = logits;
  if (penalize && !history.empty()) {
    adjusted_.assign(logits.begin(), logits.end());
    size_t n = history.size();
    if (params_.repeat_last_n >= 0) n = std::min(n, static_cast<size_t>(params_.repeat_last_n));
    std::unordered_map<TokenId, int> counts;
    for (size_t i = history.size() - n; i < history.size(); ++i) ++counts[history[i]];
    for (const auto& [id, cnt] : counts) {
      if (id < 0 || static_cast<size_t>(id) >= adjusted_.size()) continue;
      float& v = adjusted_[static_cast<size_t>(id)];
      // Dividing a negative logit would raise it: multiply instead.
      v = v > 0 ? v / params_.repeat_penalty : v * params_.repeat_penalty;
      v -= static_cast<float>(cnt) * params_.frequency_penalty + params_.presence_penalty;
    }
    l = adjusted_;
  }
  if (params_.temperature <= 0.0f) return ArgMax(l);

  cand_.resize(l.size());
  for (size_t i = 0; i < l.size(); ++i) cand_[i] = {l[i], static_cast<TokenId>(i)};
  auto by_logit = [](const Candidate& a, const Candidate& b) {
    return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
  };
  size_t n = cand_.size();
  if (params_.top_k > 0 && static_cast<size_t>(params_.top_k) < n) {
    n = static_cast<size_t>(params_.top_k);
    std::partial_sort(cand_.begin(), cand_.begin() + static_cast<std::ptrdiff_t>(n), cand_.end(), by_logit);
  } else {
    std::sort(cand_.begin(), cand_.end(), by_logit);
  }
  // Softmax over the survivors (sorted, so cand_[0] holds the max).
  std::vector<float> p(n);
  const float mx = cand_[0].logit;
  double sum = 0;
  for (size_t i = 0; i < n; ++i) {
    p[i] = std::exp(cand_[i].logit - mx);
    sum += p[i];
  }
  if (params_.top_p < 1.0f) {
    double cum = 0;
    for (size_t i = 0; i < n; ++i) {
      cum += p[i] / sum;
      if (cum >= params_.top_p) {
        n = i + 1;
        break;
      }
    }
  }
  if (params_.min_p > 0.0f) {
    const float floor = p[0] * params_.min_p;  // p[0] is the max probability (unnormalized, same scale)
    size_t keep = 1;
    while (keep < n && p[keep] >= floor) ++keep;
    n = keep;
  }
  // Temperature last, over the logits of the survivors.
  double total = 0;
  for (size_t i = 0; i < n; ++i) {
    p[i] = std::exp((cand_[i].logit - mx) / params_.temperature);
    total += p[i];
  }
  std::uniform_real_distribution<double> u(0.0, total);
  double r = u(rng_);
  for (size_t i = 0; i < n; ++i) {
    r -= p[i];
    if (r <= 0) return cand_[i].id;
  }
  return cand_[n - 1].id;
}

}  // namespace strata
