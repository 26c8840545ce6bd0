// Element-wise and row-wise operators of the transformer block.
#pragma once

#include <cstdint>
#include <vector>

namespace strata {

// out[i] = x[i] / rms(x) * w[i] for one row of n. out may alias x.
void RmsNorm(const float* x, const float* w, int64_t n, float eps, float* out);

// gate[i] = silu(gate[i]) * up[i]
void SiluMul(float* gate, const float* up, int64_t n);

// In-place softmax of n values.
void Softmax(float* x, int64_t n);

// y[i] += b[i]
void AddBias(float* y, const float* b, int64_t n);

struct RopeConfig {
  int n_rot = 0;              // dimensions rotated per head (== head_dim for all supported archs)
  float theta = 10000.0f;     // rope_freq_base
  bool neox = false;          // NeoX layout: pairs (i, i + n_rot/2); normal: pairs (2i, 2i+1)
  float freq_scale = 1.0f;    // linear scaling: position * freq_scale
  // Llama 3.1 "llama3" frequency scaling; factor == 0 disables it.
  float llama3_factor = 0.0f;
  float llama3_low_freq_factor = 1.0f;
  float llama3_high_freq_factor = 4.0f;
  int llama3_original_context = 8192;
};

// Precomputed inverse frequencies of one RopeConfig.
class Rope {
 public:
  explicit Rope(const RopeConfig& config);
  // x: [n_tokens][n_heads * head_dim]; token t sits at positions[t].
  void Apply(float* x, int64_t n_tokens, int n_heads, int head_dim, const int32_t* positions) const;
  const std::vector<float>& inv_freq() const { return inv_freq_; }

 private:
  RopeConfig config_;
  std::vector<float> inv_freq_;  // n_rot / 2 entries
};

}  // namespace strata
