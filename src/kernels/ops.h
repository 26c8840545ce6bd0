// Element-wise and row-wise operators of the transformer block.
//
// Thread-safety: all functions are pure (Rope is immutable after construction)
// and may be called concurrently on disjoint outputs.
#pragma once

#include <cstdint>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

namespace strata {

// out[i] = x[i] / rms(x) * w[i] for one row of n. out may alias x.
void RmsNorm(const float* x, const float* w, int64_t n, float eps, float* out);

// gate[i] = silu(gate[i]) * up[i]
void SiluMul(float* gate, const float* up, int64_t n);

// In-place softmax of n values. Subtracts the maximum first, so large inputs
// do not overflow; -inf entries become 0 (a row of only -inf becomes all 0).
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
  // Per-frequency divisors (n_rot/2 entries), as llama.cpp's rope_freqs
  // tensor carries them for Llama 3.1 files; empty: none. Applied instead of
  // the llama3 formula, which they encode.
  std::vector<float> freq_factors;
};

// Precomputed inverse frequencies of one RopeConfig.
class Rope {
 public:
  // REQUIRES: config.n_rot is even and > 0.
  explicit Rope(const RopeConfig& config);
  // x: [n_tokens][n_heads * head_dim]; token t sits at positions[t].
  // Rotates the first n_rot dimensions of every head; the rest pass through.
  // REQUIRES: n_rot <= head_dim.
  void Apply(float* x, int64_t n_tokens, int n_heads, int head_dim, const int32_t* positions) const;
  // Angle of pair i at position p is p * inv_freq()[i]: freq_scale and llama3
  // scaling are already folded in.
  const std::vector<float>& inv_freq() const { return inv_freq_; }

 private:
  RopeConfig config_;
  std::vector<float> inv_freq_;  // n_rot / 2 entries
  // The same in double: at positions near 128K a float frequency alone is off
  // by ~1e-2 rad, so angles are formed and reduced in double.
  std::vector<double> inv_freq_f64_;
};

#if defined(__AVX2__) && defined(__FMA__)
namespace simd {

// exp(x) for 8 floats, relative error ~2e-7; x below ~-87.3 (including -inf)
// gives exactly 0, x above 88 saturates at exp(88) ~1.65e38 instead of inf.
inline __m256 Exp8(__m256 x) {
  const __m256 orig = x;
  x = _mm256_min_ps(x, _mm256_set1_ps(88.0f));  // keeps n <= 127
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.3365447504f));
  // x = n*ln2 + r, |r| <= ln2/2; ln2 split in two so r stays exact.
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 y = _mm256_set1_ps(1.9875691500E-4f);
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507E-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073E-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894E-2f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459E-1f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201E-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  // 2^n via the exponent field; n is in [-126, 127] after the clamps.
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  y = _mm256_mul_ps(y, _mm256_castsi256_ps(e));
  return _mm256_and_ps(y, _mm256_cmp_ps(orig, _mm256_set1_ps(-87.3365447504f), _CMP_GE_OQ));
}

inline float HorizontalSum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float HorizontalMax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

}  // namespace simd
#endif

}  // namespace strata
