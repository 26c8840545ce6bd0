#include "kernels/quant.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstring>

#include "kernels/fp16.h"
#include "kernels/quant_blocks.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define STRATA_QUANT_AVX2 1
#endif

namespace strata {

using namespace quant;

namespace {

// ---------------------------------------------------------------------------
// Dequantization. The scalar loops define the layouts; the AVX2 variants are
// what GEMM packing runs (every weight element passes through here once per
// prefill matmul) and must agree with them bit for bit.
// ---------------------------------------------------------------------------

void DequantQ4_0Scalar(const uint8_t* b, float* y) {
  const float d = LoadF16(b);
  const uint8_t* qs = b + 2;
  for (int j = 0; j < 16; ++j) {
    y[j] = static_cast<float>((qs[j] & 0xf) - 8) * d;
    y[j + 16] = static_cast<float>((qs[j] >> 4) - 8) * d;
  }
}

void DequantQ8_0Scalar(const uint8_t* b, float* y) {
  const float d = LoadF16(b);
  const int8_t* qs = reinterpret_cast<const int8_t*>(b + 2);
  for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(qs[j]) * d;
}

void DequantQ4_KScalar(const uint8_t* b, float* y) {
  const float d = LoadF16(b), dmin = LoadF16(b + 2);
  uint8_t sc[8], mn[8];
  UnpackScaleMinK4(b + kQ4_KScales, sc, mn);
  const uint8_t* q = b + kQ4_KQs;
  for (int j = 0; j < 4; ++j) {  // 64 elements per 32 bytes: low nibbles, then high
    const float d1 = d * sc[2 * j], m1 = dmin * mn[2 * j];
    const float d2 = d * sc[2 * j + 1], m2 = dmin * mn[2 * j + 1];
    for (int l = 0; l < 32; ++l) y[l] = d1 * static_cast<float>(q[l] & 0xf) - m1;
    for (int l = 0; l < 32; ++l) y[32 + l] = d2 * static_cast<float>(q[l] >> 4) - m2;
    y += 64;
    q += 32;
  }
}

void DequantQ5_KScalar(const uint8_t* b, float* y) {
  const float d = LoadF16(b), dmin = LoadF16(b + 2);
  uint8_t sc[8], mn[8];
  UnpackScaleMinK4(b + kQ5_KScales, sc, mn);
  const uint8_t* qh = b + kQ5_KQh;
  const uint8_t* q = b + kQ5_KQs;
  for (int j = 0; j < 4; ++j) {  // chunk j takes bits 2j (first 32) and 2j+1 (next 32) of qh
    const float d1 = d * sc[2 * j], m1 = dmin * mn[2 * j];
    const float d2 = d * sc[2 * j + 1], m2 = dmin * mn[2 * j + 1];
    for (int l = 0; l < 32; ++l) {
      const int v = (q[l] & 0xf) | (((qh[l] >> (2 * j)) & 1) << 4);
      y[l] = d1 * static_cast<float>(v) - m1;
    }
    for (int l = 0; l < 32; ++l) {
      const int v = (q[l] >> 4) | (((qh[l] >> (2 * j + 1)) & 1) << 4);
      y[32 + l] = d2 * static_cast<float>(v) - m2;
    }
    y += 64;
    q += 32;
  }
}

void DequantQ6_KScalar(const uint8_t* b, float* y) {
  const float d = LoadF16(b + kQ6_KD);
  const uint8_t* ql = b + kQ6_KQl;
  const uint8_t* qh = b + kQ6_KQh;
  const int8_t* sc = reinterpret_cast<const int8_t*>(b + kQ6_KScales);
  for (int n = 0; n < 2; ++n) {  // 128 elements per 64 ql bytes + 32 qh bytes
    for (int l = 0; l < 32; ++l) {
      const int is = l / 16;
      const int q1 = ((ql[l] & 0xf) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q2 = ((ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l] = d * static_cast<float>(sc[is] * q1);
      y[l + 32] = d * static_cast<float>(sc[is + 2] * q2);
      y[l + 64] = d * static_cast<float>(sc[is + 4] * q3);
      y[l + 96] = d * static_cast<float>(sc[is + 6] * q4);
    }
    y += 128;
    ql += 64;
    qh += 32;
    sc += 8;
  }
}

void DequantQ8_K(const uint8_t* b, float* y) {
  const float d = LoadF32(b);
  const int8_t* qs = reinterpret_cast<const int8_t*>(b + kQ8_KQs);
  for (int j = 0; j < kQK; ++j) y[j] = d * static_cast<float>(qs[j]);
}

#if STRATA_QUANT_AVX2
// out[0..16) = float(u8 lanes of v) * scale - bias
inline void U8x16ToFloats(__m128i v, __m256 scale, __m256 bias, float* out) {
  const __m256 a = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v));
  const __m256 b = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(v, 8)));
  _mm256_storeu_ps(out, _mm256_fmsub_ps(a, scale, bias));
  _mm256_storeu_ps(out + 8, _mm256_fmsub_ps(b, scale, bias));
}
inline void I8x16ToFloats(__m128i v, __m256 scale, float* out) {
  const __m256 a = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v));
  const __m256 b = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(v, 8)));
  _mm256_storeu_ps(out, _mm256_mul_ps(a, scale));
  _mm256_storeu_ps(out + 8, _mm256_mul_ps(b, scale));
}

void DequantQ4_0Avx2(const uint8_t* b, float* y) {
  const float d = LoadF16(b);
  const __m256 vd = _mm256_set1_ps(d), bias = _mm256_set1_ps(8.0f * d);
  const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 2));
  const __m128i m4 = _mm_set1_epi8(0x0f);
  U8x16ToFloats(_mm_and_si128(q, m4), vd, bias, y);
  U8x16ToFloats(_mm_and_si128(_mm_srli_epi16(q, 4), m4), vd, bias, y + 16);
}

void DequantQ8_0Avx2(const uint8_t* b, float* y) {
  const __m256 vd = _mm256_set1_ps(LoadF16(b));
  I8x16ToFloats(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 2)), vd, y);
  I8x16ToFloats(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 18)), vd, y + 16);
}

void DequantQ4_KAvx2(const uint8_t* b, float* y) {
  const float d = LoadF16(b), dmin = LoadF16(b + 2);
  uint8_t sc[8], mn[8];
  UnpackScaleMinK4(b + kQ4_KScales, sc, mn);
  const uint8_t* q = b + kQ4_KQs;
  const __m128i m4 = _mm_set1_epi8(0x0f);
  for (int j = 0; j < 4; ++j) {
    const __m256 d1 = _mm256_set1_ps(d * sc[2 * j]), m1 = _mm256_set1_ps(dmin * mn[2 * j]);
    const __m256 d2 = _mm256_set1_ps(d * sc[2 * j + 1]), m2 = _mm256_set1_ps(dmin * mn[2 * j + 1]);
    for (int h = 0; h < 2; ++h) {
      const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + 16 * h));
      U8x16ToFloats(_mm_and_si128(v, m4), d1, m1, y + 16 * h);
      U8x16ToFloats(_mm_and_si128(_mm_srli_epi16(v, 4), m4), d2, m2, y + 32 + 16 * h);
    }
    y += 64;
    q += 32;
  }
}

void DequantQ5_KAvx2(const uint8_t* b, float* y) {
  const float d = LoadF16(b), dmin = LoadF16(b + 2);
  uint8_t sc[8], mn[8];
  UnpackScaleMinK4(b + kQ5_KScales, sc, mn);
  const uint8_t* q = b + kQ5_KQs;
  const __m128i m4 = _mm_set1_epi8(0x0f), one = _mm_set1_epi8(1);
  const __m128i qh[2] = {_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + kQ5_KQh)),
                         _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + kQ5_KQh + 16))};
  for (int j = 0; j < 4; ++j) {
    const __m256 d1 = _mm256_set1_ps(d * sc[2 * j]), m1 = _mm256_set1_ps(dmin * mn[2 * j]);
    const __m256 d2 = _mm256_set1_ps(d * sc[2 * j + 1]), m2 = _mm256_set1_ps(dmin * mn[2 * j + 1]);
    const __m128i sh_lo = _mm_cvtsi32_si128(2 * j), sh_hi = _mm_cvtsi32_si128(2 * j + 1);
    for (int h = 0; h < 2; ++h) {
      const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + 16 * h));
      // 16-bit shifts move bits across byte lanes; the &1 afterwards drops them.
      const __m128i hl = _mm_slli_epi16(_mm_and_si128(_mm_srl_epi16(qh[h], sh_lo), one), 4);
      const __m128i hh = _mm_slli_epi16(_mm_and_si128(_mm_srl_epi16(qh[h], sh_hi), one), 4);
      U8x16ToFloats(_mm_or_si128(_mm_and_si128(v, m4), hl), d1, m1, y + 16 * h);
      U8x16ToFloats(_mm_or_si128(_mm_and_si128(_mm_srli_epi16(v, 4), m4), hh), d2, m2,
                    y + 32 + 16 * h);
    }
    y += 64;
    q += 32;
  }
}

void DequantQ6_KAvx2(const uint8_t* b, float* y) {
  const float d = LoadF16(b + kQ6_KD);
  const uint8_t* ql = b + kQ6_KQl;
  const uint8_t* qh = b + kQ6_KQh;
  const int8_t* sc = reinterpret_cast<const int8_t*>(b + kQ6_KScales);
  const __m128i m4 = _mm_set1_epi8(0x0f), m3 = _mm_set1_epi8(3);
  for (int n = 0; n < 2; ++n) {
    for (int h = 0; h < 2; ++h) {  // l in [16h, 16h + 16): scale index is = h
      const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(ql + 16 * h));
      const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(ql + 32 + 16 * h));
      const __m128i hb = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qh + 16 * h));
      const __m128i q1 = _mm_or_si128(_mm_and_si128(a, m4), _mm_slli_epi16(_mm_and_si128(hb, m3), 4));
      const __m128i q2 = _mm_or_si128(_mm_and_si128(c, m4),
                                      _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(hb, 2), m3), 4));
      const __m128i q3 = _mm_or_si128(_mm_and_si128(_mm_srli_epi16(a, 4), m4),
                                      _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(hb, 4), m3), 4));
      const __m128i q4 = _mm_or_si128(_mm_and_si128(_mm_srli_epi16(c, 4), m4),
                                      _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(hb, 6), m3), 4));
      const __m128i quads[4] = {q1, q2, q3, q4};
      for (int g = 0; g < 4; ++g) {
        const float s = d * static_cast<float>(sc[h + 2 * g]);
        U8x16ToFloats(quads[g], _mm256_set1_ps(s), _mm256_set1_ps(32.0f * s), y + 32 * g + 16 * h);
      }
    }
    y += 128;
    ql += 64;
    qh += 32;
    sc += 8;
  }
}
#endif  // STRATA_QUANT_AVX2

template <void (*Block)(const uint8_t*, float*)>
void DequantBlocks(const void* src, float* dst, int64_t n, int elems, int bytes) {
  const uint8_t* p = static_cast<const uint8_t*>(src);
  for (int64_t i = 0; i < n / elems; ++i) Block(p + i * bytes, dst + i * elems);
}

// ---------------------------------------------------------------------------
// Quantization. Fits are plain least squares on the values (no importance
// weights); they are deterministic and need not match llama.cpp bit for bit.
// ---------------------------------------------------------------------------

inline int RoundToInt(float v) { return static_cast<int>(std::nearbyint(v)); }
inline float RoundTripF16(float v) { return Fp16ToFp32(Fp32ToFp16(v)); }

// Symmetric fit of x[0..n) to scale * q, q in [-nmax, nmax - 1]. Tries a small
// grid of scales around the one that maps the largest-magnitude value to
// -nmax, refines each by least squares, keeps the lowest squared error.
float FitSymmetric(const float* x, int n, int nmax, bool f16_scale, int8_t* q) {
  float amax = 0, vmax = 0;
  for (int i = 0; i < n; ++i) {
    if (std::fabs(x[i]) > amax) {
      amax = std::fabs(x[i]);
      vmax = x[i];
    }
  }
  if (amax == 0) {
    std::fill(q, q + n, 0);
    return 0;
  }
  float best_d = 0, best_err = INFINITY;
  int8_t trial[256];
  for (int step = -4; step <= 4; ++step) {
    const float denom = -static_cast<float>(nmax) + 0.25f * static_cast<float>(step);
    float d = vmax / denom;
    for (int pass = 0; pass < 2; ++pass) {
      if (f16_scale) d = RoundTripF16(d);
      if (d == 0) break;
      const float id = 1.0f / d;
      double sxq = 0, sqq = 0, err = 0;
      for (int i = 0; i < n; ++i) {
        const int v = std::clamp(RoundToInt(x[i] * id), -nmax, nmax - 1);
        trial[i] = static_cast<int8_t>(v);
        sxq += static_cast<double>(x[i]) * v;
        sqq += static_cast<double>(v) * v;
        const float e = x[i] - d * static_cast<float>(v);
        err += static_cast<double>(e) * e;
      }
      if (err < best_err) {
        best_err = static_cast<float>(err);
        best_d = d;
        std::copy(trial, trial + n, q);
      }
      if (sqq == 0) break;
      d = static_cast<float>(sxq / sqq);  // least-squares scale for these q's, tried next pass
    }
  }
  return best_d;
}

// Asymmetric fit of x[0..n) to scale * q - min, q in [0, nmax], scale >= 0,
// min >= 0 (the K-quant formats store both unsigned). Grid over the inverse
// scale, least-squares (scale, min) for each assignment, keep the best.
void FitScaleMin(const float* x, int n, int nmax, float* scale_out, float* min_out) {
  float xmin = x[0], xmax = x[0];
  for (int i = 1; i < n; ++i) {
    xmin = std::min(xmin, x[i]);
    xmax = std::max(xmax, x[i]);
  }
  xmin = std::min(xmin, 0.0f);
  if (xmax <= xmin) {
    *scale_out = 0;
    *min_out = -xmin;
    return;
  }
  float best_a = (xmax - xmin) / static_cast<float>(nmax), best_b = xmin;
  double best_err = INFINITY;
  for (int step = -10; step <= 10; ++step) {
    const float iscale = (static_cast<float>(nmax) + 0.1f * static_cast<float>(step)) / (xmax - xmin);
    double sq = 0, sqq = 0, sx = 0, sxq = 0;
    int qv[256];
    for (int i = 0; i < n; ++i) {
      const int v = std::clamp(RoundToInt(iscale * (x[i] - xmin)), 0, nmax);
      qv[i] = v;
      sq += v;
      sqq += static_cast<double>(v) * v;
      sx += x[i];
      sxq += static_cast<double>(x[i]) * v;
    }
    const double det = n * sqq - sq * sq;
    if (det <= 0) continue;
    double a = (n * sxq - sq * sx) / det;
    double b = (sqq * sx - sq * sxq) / det;
    if (b > 0) {  // min must be >= 0: refit the scale alone with b = 0
      b = 0;
      a = sxq / sqq;
    }
    if (a < 0) continue;
    double err = 0;
    for (int i = 0; i < n; ++i) {
      const double e = a * qv[i] + b - x[i];
      err += e * e;
    }
    if (err < best_err) {
      best_err = err;
      best_a = static_cast<float>(a);
      best_b = static_cast<float>(b);
    }
  }
  *scale_out = best_a;
  *min_out = -best_b;
}

void QuantizeQ4_0(const float* x, uint8_t* b) {
  int8_t q[32];
  const float d = FitSymmetric(x, 32, 8, /*f16_scale=*/true, q);
  StoreF16(b, d);
  for (int j = 0; j < 16; ++j) {
    b[2 + j] = static_cast<uint8_t>((q[j] + 8) | ((q[j + 16] + 8) << 4));
  }
}

void QuantizeQ8_0(const float* x, uint8_t* b) {
  float amax = 0;
  for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float d = RoundTripF16(amax / 127.0f);
  const float id = d != 0 ? 1.0f / d : 0.0f;
  StoreF16(b, d);
  for (int j = 0; j < 32; ++j) {
    b[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(std::clamp(RoundToInt(x[j] * id), -127, 127)));
  }
}

// Shared by Q4_K (nmax 15) and Q5_K (nmax 31): eight sub-blocks of 32 with
// 6-bit scales and mins relative to the f16 super-block d and dmin.
void QuantizeKScaleMin(const float* x, int nmax, uint8_t* d_out, uint8_t* s12, uint8_t L[256]) {
  float scale[8], mins[8], max_scale = 0, max_min = 0;
  for (int j = 0; j < 8; ++j) {
    FitScaleMin(x + 32 * j, 32, nmax, &scale[j], &mins[j]);
    max_scale = std::max(max_scale, scale[j]);
    max_min = std::max(max_min, mins[j]);
  }
  const float d = RoundTripF16(max_scale / 63.0f);
  const float dmin = RoundTripF16(max_min / 63.0f);
  uint8_t sc[8], mn[8];
  for (int j = 0; j < 8; ++j) {
    sc[j] = static_cast<uint8_t>(d > 0 ? std::clamp(RoundToInt(scale[j] / d), 0, 63) : 0);
    mn[j] = static_cast<uint8_t>(dmin > 0 ? std::clamp(RoundToInt(mins[j] / dmin), 0, 63) : 0);
  }
  StoreF16(d_out, d);
  StoreF16(d_out + 2, dmin);
  PackScaleMinK4(sc, mn, s12);
  // Re-quantize against the scales as stored, so rounding of the 6-bit
  // scales is absorbed by the choice of q.
  for (int j = 0; j < 8; ++j) {
    const float ds = d * sc[j], dm = dmin * mn[j];
    for (int i = 0; i < 32; ++i) {
      L[32 * j + i] = static_cast<uint8_t>(
          ds > 0 ? std::clamp(RoundToInt((x[32 * j + i] + dm) / ds), 0, nmax) : 0);
    }
  }
}

void QuantizeQ4_K(const float* x, uint8_t* b) {
  uint8_t L[256];
  QuantizeKScaleMin(x, 15, b, b + kQ4_KScales, L);
  uint8_t* q = b + kQ4_KQs;
  for (int j = 0; j < 4; ++j) {
    for (int l = 0; l < 32; ++l) q[32 * j + l] = static_cast<uint8_t>(L[64 * j + l] | (L[64 * j + 32 + l] << 4));
  }
}

void QuantizeQ5_K(const float* x, uint8_t* b) {
  uint8_t L[256];
  QuantizeKScaleMin(x, 31, b, b + kQ5_KScales, L);
  uint8_t* qh = b + kQ5_KQh;
  uint8_t* q = b + kQ5_KQs;
  std::memset(qh, 0, 32);
  for (int j = 0; j < 4; ++j) {
    for (int l = 0; l < 32; ++l) {
      const int lo = L[64 * j + l], hi = L[64 * j + 32 + l];
      q[32 * j + l] = static_cast<uint8_t>((lo & 0xf) | ((hi & 0xf) << 4));
      qh[l] = static_cast<uint8_t>(qh[l] | ((lo >> 4) << (2 * j)) | ((hi >> 4) << (2 * j + 1)));
    }
  }
}

void QuantizeQ6_K(const float* x, uint8_t* b) {
  float scale[16], amax = 0, vmax = 0;
  int8_t tmp[16];
  for (int j = 0; j < 16; ++j) {
    scale[j] = FitSymmetric(x + 16 * j, 16, 32, /*f16_scale=*/false, tmp);
    if (std::fabs(scale[j]) > amax) {
      amax = std::fabs(scale[j]);
      vmax = scale[j];
    }
  }
  (void)vmax;
  const float d = RoundTripF16(amax / 127.0f);
  int8_t* sc = reinterpret_cast<int8_t*>(b + kQ6_KScales);
  uint8_t L[256];
  for (int j = 0; j < 16; ++j) {
    const int s = d > 0 ? std::clamp(RoundToInt(scale[j] / d), -127, 127) : 0;
    sc[j] = static_cast<int8_t>(s);
    const float ds = d * static_cast<float>(s);
    for (int i = 0; i < 16; ++i) {
      const int v = ds != 0 ? std::clamp(RoundToInt(x[16 * j + i] / ds), -32, 31) : 0;
      L[16 * j + i] = static_cast<uint8_t>(v + 32);
    }
  }
  StoreF16(b + kQ6_KD, d);
  uint8_t* ql = b + kQ6_KQl;
  uint8_t* qh = b + kQ6_KQh;
  for (int n = 0; n < 2; ++n) {
    const uint8_t* Ln = L + 128 * n;
    for (int l = 0; l < 32; ++l) {
      ql[l] = static_cast<uint8_t>((Ln[l] & 0xf) | ((Ln[l + 64] & 0xf) << 4));
      ql[l + 32] = static_cast<uint8_t>((Ln[l + 32] & 0xf) | ((Ln[l + 96] & 0xf) << 4));
      qh[l] = static_cast<uint8_t>((Ln[l] >> 4) | ((Ln[l + 32] >> 4) << 2) | ((Ln[l + 64] >> 4) << 4) |
                                   ((Ln[l + 96] >> 4) << 6));
    }
    ql += 64;
    qh += 32;
  }
}

void QuantizeQ8_K(const float* x, uint8_t* b) {
  float amax = 0;
  for (int j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float d = amax / 127.0f;
  const float id = amax != 0 ? 127.0f / amax : 0.0f;
  std::memcpy(b, &d, 4);
  int8_t* qs = reinterpret_cast<int8_t*>(b + kQ8_KQs);
  for (int j = 0; j < kQK; ++j) qs[j] = static_cast<int8_t>(std::clamp(RoundToInt(x[j] * id), -127, 127));
  for (int g = 0; g < 16; ++g) {
    int16_t s = 0;
    for (int i = 0; i < 16; ++i) s = static_cast<int16_t>(s + qs[16 * g + i]);
    std::memcpy(b + kQ8_KBsums + 2 * g, &s, 2);
  }
}

template <void (*Block)(const float*, uint8_t*)>
void QuantBlocks(const float* src, void* dst, int64_t n, int elems, int bytes) {
  uint8_t* p = static_cast<uint8_t*>(dst);
  for (int64_t i = 0; i < n / elems; ++i) Block(src + i * elems, p + i * bytes);
}

}  // namespace

void DequantizeRow(DType t, const void* src, float* dst, int64_t n) {
  assert(n % Traits(t).block_elems == 0);
  switch (t) {
    case DType::kF32:
      std::memcpy(dst, src, static_cast<size_t>(n) * 4);
      return;
    case DType::kF16: {
      const uint8_t* p = static_cast<const uint8_t*>(src);
      int64_t i = 0;
#if STRATA_QUANT_AVX2
      for (; i + 8 <= n; i += 8) {
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2 * i))));
      }
#endif
      for (; i < n; ++i) dst[i] = LoadF16(p + 2 * i);
      return;
    }
    case DType::kBF16: {
      const uint8_t* p = static_cast<const uint8_t*>(src);
      int64_t i = 0;
#if STRATA_QUANT_AVX2
      for (; i + 8 <= n; i += 8) {
        const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2 * i)));
        _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)));
      }
#endif
      for (; i < n; ++i) {
        bf16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        dst[i] = Bf16ToFp32(h);
      }
      return;
    }
#if STRATA_QUANT_AVX2
    case DType::kQ4_0: return DequantBlocks<DequantQ4_0Avx2>(src, dst, n, 32, kQ4_0Bytes);
    case DType::kQ8_0: return DequantBlocks<DequantQ8_0Avx2>(src, dst, n, 32, kQ8_0Bytes);
    case DType::kQ4_K: return DequantBlocks<DequantQ4_KAvx2>(src, dst, n, kQK, kQ4_KBytes);
    case DType::kQ5_K: return DequantBlocks<DequantQ5_KAvx2>(src, dst, n, kQK, kQ5_KBytes);
    case DType::kQ6_K: return DequantBlocks<DequantQ6_KAvx2>(src, dst, n, kQK, kQ6_KBytes);
#else
    case DType::kQ4_0: return DequantBlocks<DequantQ4_0Scalar>(src, dst, n, 32, kQ4_0Bytes);
    case DType::kQ8_0: return DequantBlocks<DequantQ8_0Scalar>(src, dst, n, 32, kQ8_0Bytes);
    case DType::kQ4_K: return DequantBlocks<DequantQ4_KScalar>(src, dst, n, kQK, kQ4_KBytes);
    case DType::kQ5_K: return DequantBlocks<DequantQ5_KScalar>(src, dst, n, kQK, kQ5_KBytes);
    case DType::kQ6_K: return DequantBlocks<DequantQ6_KScalar>(src, dst, n, kQK, kQ6_KBytes);
#endif
    case DType::kQ8_K: return DequantBlocks<DequantQ8_K>(src, dst, n, kQK, kQ8_KBytes);
  }
}

void DequantizeRowReference(DType t, const void* src, float* dst, int64_t n) {
  switch (t) {
    case DType::kQ4_0: return DequantBlocks<DequantQ4_0Scalar>(src, dst, n, 32, kQ4_0Bytes);
    case DType::kQ8_0: return DequantBlocks<DequantQ8_0Scalar>(src, dst, n, 32, kQ8_0Bytes);
    case DType::kQ4_K: return DequantBlocks<DequantQ4_KScalar>(src, dst, n, kQK, kQ4_KBytes);
    case DType::kQ5_K: return DequantBlocks<DequantQ5_KScalar>(src, dst, n, kQK, kQ5_KBytes);
    case DType::kQ6_K: return DequantBlocks<DequantQ6_KScalar>(src, dst, n, kQK, kQ6_KBytes);
    default: return DequantizeRow(t, src, dst, n);
  }
}

void QuantizeRow(DType t, const float* src, void* dst, int64_t n) {
  assert(n % Traits(t).block_elems == 0);
  switch (t) {
    case DType::kF32:
      std::memcpy(dst, src, static_cast<size_t>(n) * 4);
      return;
    case DType::kF16: {
      uint8_t* p = static_cast<uint8_t*>(dst);
      for (int64_t i = 0; i < n; ++i) StoreF16(p + 2 * i, src[i]);
      return;
    }
    case DType::kBF16: {
      uint8_t* p = static_cast<uint8_t*>(dst);
      for (int64_t i = 0; i < n; ++i) {
        const bf16_t h = Fp32ToBf16(src[i]);
        std::memcpy(p + 2 * i, &h, 2);
      }
      return;
    }
    case DType::kQ4_0: return QuantBlocks<QuantizeQ4_0>(src, dst, n, 32, kQ4_0Bytes);
    case DType::kQ8_0: return QuantBlocks<QuantizeQ8_0>(src, dst, n, 32, kQ8_0Bytes);
    case DType::kQ4_K: return QuantBlocks<QuantizeQ4_K>(src, dst, n, kQK, kQ4_KBytes);
    case DType::kQ5_K: return QuantBlocks<QuantizeQ5_K>(src, dst, n, kQK, kQ5_KBytes);
    case DType::kQ6_K: return QuantBlocks<QuantizeQ6_K>(src, dst, n, kQK, kQ6_KBytes);
    case DType::kQ8_K: return QuantBlocks<QuantizeQ8_K>(src, dst, n, kQK, kQ8_KBytes);
  }
}

}  // namespace strata
