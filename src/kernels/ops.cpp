#include "kernels/ops.h"

#include <cassert>
#include <cmath>
#include <limits>

namespace strata {

#if defined(__AVX2__) && defined(__FMA__)
#define STRATA_OPS_AVX2 1
#endif

void RmsNorm(const float* x, const float* w, int64_t n, float eps, float* out) {
  if (n <= 0) return;
  float sum = 0.0f;
  int64_t i = 0;
#ifdef STRATA_OPS_AVX2
  // Four accumulators: hides FMA latency and keeps the fp32 sum's rounding
  // error spread over independent partial sums.
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  for (; i + 32 <= n; i += 32) {
    const __m256 v0 = _mm256_loadu_ps(x + i), v1 = _mm256_loadu_ps(x + i + 8);
    const __m256 v2 = _mm256_loadu_ps(x + i + 16), v3 = _mm256_loadu_ps(x + i + 24);
    a0 = _mm256_fmadd_ps(v0, v0, a0);
    a1 = _mm256_fmadd_ps(v1, v1, a1);
    a2 = _mm256_fmadd_ps(v2, v2, a2);
    a3 = _mm256_fmadd_ps(v3, v3, a3);
  }
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    a0 = _mm256_fmadd_ps(v, v, a0);
  }
  sum = simd::HorizontalSum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
#endif
  for (; i < n; ++i) sum += x[i] * x[i];
  const float scale = 1.0f / std::sqrt(sum / static_cast<float>(n) + eps);
  i = 0;
#ifdef STRATA_OPS_AVX2
  const __m256 vs = _mm256_set1_ps(scale);
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), vs),
                                            _mm256_loadu_ps(w + i)));
  }
#endif
  for (; i < n; ++i) out[i] = x[i] * scale * w[i];
}

void SiluMul(float* gate, const float* up, int64_t n) {
  int64_t i = 0;
#ifdef STRATA_OPS_AVX2
  const __m256 one = _mm256_set1_ps(1.0f);
  for (; i + 8 <= n; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    // Exp8 saturates instead of overflowing, so very negative g gives ~0, not NaN.
    const __m256 e = simd::Exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
    const __m256 s = _mm256_div_ps(g, _mm256_add_ps(one, e));
    _mm256_storeu_ps(gate + i, _mm256_mul_ps(s, _mm256_loadu_ps(up + i)));
  }
#endif
  for (; i < n; ++i) {
    const float g = gate[i];
    gate[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

void Softmax(float* x, int64_t n) {
  if (n <= 0) return;
  float mx = -std::numeric_limits<float>::infinity();
  int64_t i = 0;
#ifdef STRATA_OPS_AVX2
  __m256 vmax = _mm256_set1_ps(mx);
  for (; i + 8 <= n; i += 8) vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(x + i));
  mx = simd::HorizontalMax(vmax);
#endif
  for (; i < n; ++i) mx = x[i] > mx ? x[i] : mx;
  if (mx == -std::numeric_limits<float>::infinity()) {
    for (i = 0; i < n; ++i) x[i] = 0.0f;
    return;
  }
  float sum = 0.0f;
  i = 0;
#ifdef STRATA_OPS_AVX2
  const __m256 vm = _mm256_set1_ps(mx);
  __m256 vsum = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) {
    const __m256 e = simd::Exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
    _mm256_storeu_ps(x + i, e);
    vsum = _mm256_add_ps(vsum, e);
  }
  sum = simd::HorizontalSum(vsum);
#endif
  for (; i < n; ++i) {
    x[i] = std::exp(x[i] - mx);
    sum += x[i];
  }
  const float inv = 1.0f / sum;
  i = 0;
#ifdef STRATA_OPS_AVX2
  const __m256 vi = _mm256_set1_ps(inv);
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), vi));
#endif
  for (; i < n; ++i) x[i] *= inv;
}

void AddBias(float* y, const float* b, int64_t n) {
  int64_t i = 0;
#ifdef STRATA_OPS_AVX2
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(y + i), _mm256_loadu_ps(b + i)));
  }
#endif
  for (; i < n; ++i) y[i] += b[i];
}

Rope::Rope(const RopeConfig& config) : config_(config) {
  assert(config.n_rot > 0 && config.n_rot % 2 == 0);
  assert(config.freq_factors.empty() || config.freq_factors.size() == static_cast<size_t>(config.n_rot / 2));
  const int half = config.n_rot / 2;
  inv_freq_.resize(static_cast<size_t>(half));
  inv_freq_f64_.resize(static_cast<size_t>(half));
  const double kPi = 3.14159265358979323846;
  for (int i = 0; i < half; ++i) {
    double freq = std::pow(static_cast<double>(config.theta), -2.0 * i / config.n_rot);
    if (!config.freq_factors.empty()) {
      freq /= static_cast<double>(config.freq_factors[static_cast<size_t>(i)]);
    } else if (config.llama3_factor > 0.0f) {
      // Llama 3.1: keep high frequencies, divide low ones by the factor, and
      // interpolate smoothly between the two wavelength thresholds.
      const double factor = config.llama3_factor;
      const double low = config.llama3_low_freq_factor;
      const double high = config.llama3_high_freq_factor;
      const double orig_ctx = config.llama3_original_context;
      const double wavelen = 2.0 * kPi / freq;
      if (wavelen < orig_ctx / high) {
        // unchanged
      } else if (wavelen > orig_ctx / low) {
        freq /= factor;
      } else {
        const double smooth = (orig_ctx / wavelen - low) / (high - low);
        freq = (1.0 - smooth) * freq / factor + smooth * freq;
      }
    }
    freq *= static_cast<double>(config.freq_scale);
    inv_freq_f64_[static_cast<size_t>(i)] = freq;
    inv_freq_[static_cast<size_t>(i)] = static_cast<float>(freq);
  }
}

void Rope::Apply(float* x, int64_t n_tokens, int n_heads, int head_dim,
                 const int32_t* positions) const {
  const int half = config_.n_rot / 2;
  assert(config_.n_rot <= head_dim);
  // cos/sin of one token, shared by all its heads. Rotary dims are at most a
  // head (a few hundred), so a fixed stack buffer covers them without allocating.
  constexpr int kMaxHalf = 512;
  float cos_buf[kMaxHalf], sin_buf[kMaxHalf];
  std::vector<float> heap;
  float* cs = cos_buf;
  float* sn = sin_buf;
  if (half > kMaxHalf) {
    heap.resize(2 * static_cast<size_t>(half));
    cs = heap.data();
    sn = heap.data() + half;
  }
  const int64_t row = static_cast<int64_t>(n_heads) * head_dim;
  for (int64_t t = 0; t < n_tokens; ++t) {
    const double pos = positions[t];
    for (int i = 0; i < half; ++i) {
      // Double angle, so a 128K position keeps ~1e-11 rad of accuracy.
      const double a = pos * inv_freq_f64_[static_cast<size_t>(i)];
      cs[i] = static_cast<float>(std::cos(a));
      sn[i] = static_cast<float>(std::sin(a));
    }
    float* xt = x + t * row;
    for (int h = 0; h < n_heads; ++h) {
      float* xh = xt + static_cast<int64_t>(h) * head_dim;
      if (config_.neox) {
        float* x0 = xh;
        float* x1 = xh + half;
        int i = 0;
#ifdef STRATA_OPS_AVX2
        for (; i + 8 <= half; i += 8) {
          const __m256 a = _mm256_loadu_ps(x0 + i), b = _mm256_loadu_ps(x1 + i);
          const __m256 c = _mm256_loadu_ps(cs + i), s = _mm256_loadu_ps(sn + i);
          _mm256_storeu_ps(x0 + i, _mm256_fmsub_ps(a, c, _mm256_mul_ps(b, s)));
          _mm256_storeu_ps(x1 + i, _mm256_fmadd_ps(a, s, _mm256_mul_ps(b, c)));
        }
#endif
        for (; i < half; ++i) {
          const float a = x0[i], b = x1[i];
          x0[i] = a * cs[i] - b * sn[i];
          x1[i] = a * sn[i] + b * cs[i];
        }
      } else {
        for (int i = 0; i < half; ++i) {
          const float a = xh[2 * i], b = xh[2 * i + 1];
          xh[2 * i] = a * cs[i] - b * sn[i];
          xh[2 * i + 1] = a * sn[i] + b * cs[i];
        }
      }
    }
  }
}

}  // namespace strata
