// Few-token matmul (decode and small batches): stream each weight row once and
// dot it with up to kMaxDotTokens tokens while it is in L1.
//
// Decode is memory-bound only if the kernel keeps up with DRAM: two Zen3
// cores sharing ~33 GB/s must each consume ~17 GB/s, i.e. a Q4_0 block (18
// bytes, 32 weights) every ~3.4 cycles. So the per-block work is pared down:
// block scales are gathered eight at a time and applied with one FMA per
// block, Q4_0 blocks are processed in pairs so one 32-byte vector holds 64
// nibbles, and K-quant scales are unpacked with vector ops.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/fp16.h"
#include "kernels/matmul_internal.h"
#include "kernels/quant.h"
#include "kernels/quant_blocks.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define STRATA_DOT_AVX2 1
#endif
#if STRATA_DOT_AVX2 && defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define STRATA_DOT_VNNI 1
#endif

namespace strata {

using namespace quant;

namespace {

inline uint16_t LoadU16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
inline uint32_t LoadU32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

#if STRATA_DOT_AVX2
inline float HSum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline __m256i Load256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
inline __m128i Load128(const void* p) { return _mm_loadu_si128(static_cast<const __m128i*>(p)); }

// sum over groups of four of u8 * s8, into int32 lanes, added to acc.
inline __m256i DotU8S8(__m256i acc, __m256i u, __m256i s) {
#if STRATA_DOT_VNNI
  return _mm256_dpbusd_epi32(acc, u, s);
#else
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
#endif
}
// Two u8 x s8 dot products summed: without VNNI the int16 pair sums are added
// before widening, saving a multiply. REQUIRES: u < 64, so a sum of four
// products fits in int16 (4 * 63 * 127 < 32768).
inline __m256i DotU8S8x2(__m256i u0, __m256i s0, __m256i u1, __m256i s1) {
#if STRATA_DOT_VNNI
  return _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), u0, s0), u1, s1);
#else
  const __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(u0, s0), _mm256_maddubs_epi16(u1, s1));
  return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
#endif
}

// Eight f16 block scales at p, p + stride, ... as floats. The scalar integer
// pipes are idle in these kernels, so the gather is done there.
inline __m256 GatherF16x8(const uint8_t* p, int stride) {
  const uint64_t a = static_cast<uint64_t>(LoadU16(p)) | static_cast<uint64_t>(LoadU16(p + stride)) << 16 |
                     static_cast<uint64_t>(LoadU16(p + 2 * stride)) << 32 |
                     static_cast<uint64_t>(LoadU16(p + 3 * stride)) << 48;
  const uint64_t b = static_cast<uint64_t>(LoadU16(p + 4 * stride)) |
                     static_cast<uint64_t>(LoadU16(p + 5 * stride)) << 16 |
                     static_cast<uint64_t>(LoadU16(p + 6 * stride)) << 32 |
                     static_cast<uint64_t>(LoadU16(p + 7 * stride)) << 48;
  return _mm256_cvtph_ps(_mm_set_epi64x(static_cast<int64_t>(b), static_cast<int64_t>(a)));
}

// Lane i of v in all eight lanes.
inline __m256 LaneBroadcast(__m256 v, int i) { return _mm256_permutevar8x32_ps(v, _mm256_set1_epi32(i)); }
// Lane i in the low four lanes, lane i + 1 in the high four.
inline __m256 LanePairBroadcast(__m256 v, int i) {
  return _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(i, i, i, i, i + 1, i + 1, i + 1, i + 1));
}
#endif  // STRATA_DOT_AVX2

// ---------------------------------------------------------------------------
// Kernels compute a tile of NR weight rows (row_bytes apart) x NT tokens,
// out[r * NT + t]. Small batches use NR = 1 and up to four tokens, so each
// weight block is unpacked once for all of them. Decode (one token) uses
// NR = kDecodeRows = 1 with four accumulator chains per row (an FMA has 4
// cycles of latency). Four-row tiles were ~15% faster on cache-resident
// weights but lost 15-35% on DRAM-resident ones: four interleaved row
// streams defeat the hardware prefetcher, which decode depends on.
// ---------------------------------------------------------------------------

// Extra accumulator sets per (row, token) lane so that a tile has >= 4 chains.
template <int kLanes>
inline constexpr int kUnroll = kLanes >= 4 ? 1 : kLanes == 1 ? 4 : 2;

// ---- Float weights: widen to f32 on the fly. --------------------------------

#if STRATA_DOT_AVX2
template <DType T>
inline __m256 LoadW8(const uint8_t* w, int64_t k) {
  if constexpr (T == DType::kF32) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(w) + k);
  } else if constexpr (T == DType::kF16) {
    return _mm256_cvtph_ps(Load128(w + 2 * k));
  } else {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(Load128(w + 2 * k)), 16));
  }
}
#endif

template <DType T>
inline float LoadW1(const uint8_t* w, int64_t k) {
  if constexpr (T == DType::kF32) {
    float v;
    std::memcpy(&v, w + 4 * k, 4);
    return v;
  } else {
    const uint16_t h = LoadU16(w + 2 * k);
    return T == DType::kF16 ? Fp16ToFp32(h) : Bf16ToFp32(h);
  }
}

template <DType T, int NR, int NT>
void DotFloat(const uint8_t* w, size_t row_bytes, const float* x, int64_t ldx, int64_t n, float* out) {
  int64_t k = 0;
  float tail[NR * NT] = {};
#if STRATA_DOT_AVX2
  constexpr int kU = kUnroll<NR * NT>;
  __m256 acc[NR][NT][kU];
  for (int r = 0; r < NR; ++r) {
    for (int t = 0; t < NT; ++t) {
      for (int u = 0; u < kU; ++u) acc[r][t][u] = _mm256_setzero_ps();
    }
  }
  for (; k + 8 * kU <= n; k += 8 * kU) {
    for (int u = 0; u < kU; ++u) {
      __m256 xv[NT];
      for (int t = 0; t < NT; ++t) xv[t] = _mm256_loadu_ps(x + t * ldx + k + 8 * u);
      for (int r = 0; r < NR; ++r) {
        const __m256 wv = LoadW8<T>(w + r * row_bytes, k + 8 * u);
        for (int t = 0; t < NT; ++t) acc[r][t][u] = _mm256_fmadd_ps(wv, xv[t], acc[r][t][u]);
      }
    }
  }
  for (; k + 8 <= n; k += 8) {
    for (int r = 0; r < NR; ++r) {
      const __m256 wv = LoadW8<T>(w + r * row_bytes, k);
      for (int t = 0; t < NT; ++t) acc[r][t][0] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + t * ldx + k), acc[r][t][0]);
    }
  }
  for (int r = 0; r < NR; ++r) {
    for (int t = 0; t < NT; ++t) {
      __m256 sum = acc[r][t][0];
      for (int u = 1; u < kU; ++u) sum = _mm256_add_ps(sum, acc[r][t][u]);
      tail[r * NT + t] = HSum(sum);
    }
  }
#endif
  for (; k < n; ++k) {
    for (int r = 0; r < NR; ++r) {
      const float wk = LoadW1<T>(w + r * row_bytes, k);
      for (int t = 0; t < NT; ++t) tail[r * NT + t] += wk * x[t * ldx + k];
    }
  }
  for (int i = 0; i < NR * NT; ++i) out[i] = tail[i];
}

// ---- Q4_0 / Q8_0 x ActQ8 rows. -----------------------------------------------

struct ActQ8View {
  const int8_t* q;
  const float* d;
  const float* sum8;
};
inline ActQ8View ViewActQ8(const uint8_t* row, int64_t nb) {
  return {reinterpret_cast<const int8_t*>(row), reinterpret_cast<const float*>(row + 32 * nb),
          reinterpret_cast<const float*>(row + 36 * nb)};
}

// dot = sum_b dw_b * dx_b * (sum_i u_i x_i) - sum_b dw_b * sum8_b, with u the
// unsigned nibbles (value + 8).
template <int NR, int NT>
void DotQ4_0(const uint8_t* w, size_t row_bytes, const uint8_t* act, size_t act_row_bytes, int64_t nb,
             float* out) {
  ActQ8View a[NT];
  for (int t = 0; t < NT; ++t) a[t] = ViewActQ8(act + t * act_row_bytes, nb);
  int64_t b = 0;
  float rest[NR * NT] = {};
#if STRATA_DOT_AVX2
  constexpr int kU = kUnroll<NR * NT>;
  __m256 accs[NR][NT][kU];
  for (int r = 0; r < NR; ++r) {
    for (int t = 0; t < NT; ++t) {
      for (int u = 0; u < kU; ++u) accs[r][t][u] = _mm256_setzero_ps();
    }
  }
  const __m256i m4 = _mm256_set1_epi8(0x0f);
  for (; b + 8 <= nb; b += 8) {
    for (int r = 0; r < NR; ++r) {
      const uint8_t* blk = w + r * row_bytes + b * kQ4_0Bytes;
      const __m256 dw = GatherF16x8(blk, kQ4_0Bytes);
      __m256 s[NT];
      for (int t = 0; t < NT; ++t) {
        s[t] = _mm256_mul_ps(dw, _mm256_loadu_ps(a[t].d + b));
        accs[r][t][kU - 1] = _mm256_fnmadd_ps(dw, _mm256_loadu_ps(a[t].sum8 + b), accs[r][t][kU - 1]);  // -8 offset
      }
      for (int p = 0; p < 4; ++p) {
        const uint8_t* b0 = blk + 2 * p * kQ4_0Bytes + 2;
        // [block 2p nibbles | block 2p+1 nibbles]: low nibbles hold elements
        // 0..15 of each, high nibbles 16..31; the activations are
        // interleaved to match.
        const __m256i v = _mm256_loadu2_m128i(reinterpret_cast<const __m128i*>(b0 + kQ4_0Bytes),
                                              reinterpret_cast<const __m128i*>(b0));
        const __m256i lo = _mm256_and_si256(v, m4);
        const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
        for (int t = 0; t < NT; ++t) {
          const int8_t* xq = a[t].q + (b + 2 * p) * 32;
          const __m256i dot = DotU8S8x2(lo, Load256(xq), hi, Load256(xq + 32));
          accs[r][t][p % kU] =
              _mm256_fmadd_ps(LanePairBroadcast(s[t], 2 * p), _mm256_cvtepi32_ps(dot), accs[r][t][p % kU]);
        }
      }
    }
  }
  for (; b + 2 <= nb; b += 2) {
    for (int r = 0; r < NR; ++r) {
      const uint8_t* b0 = w + r * row_bytes + b * kQ4_0Bytes;
      const float dw0 = LoadF16(b0), dw1 = LoadF16(b0 + kQ4_0Bytes);
      const __m256i v = _mm256_loadu2_m128i(reinterpret_cast<const __m128i*>(b0 + kQ4_0Bytes + 2),
                                            reinterpret_cast<const __m128i*>(b0 + 2));
      const __m256i lo = _mm256_and_si256(v, m4);
      const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
      for (int t = 0; t < NT; ++t) {
        const int8_t* xq = a[t].q + b * 32;
        const __m256i dot = DotU8S8x2(lo, Load256(xq), hi, Load256(xq + 32));
        const __m256 s = _mm256_setr_m128(_mm_set1_ps(dw0 * a[t].d[b]), _mm_set1_ps(dw1 * a[t].d[b + 1]));
        accs[r][t][0] = _mm256_fmadd_ps(s, _mm256_cvtepi32_ps(dot), accs[r][t][0]);
        rest[r * NT + t] -= dw0 * a[t].sum8[b] + dw1 * a[t].sum8[b + 1];
      }
    }
  }
  for (int r = 0; r < NR; ++r) {
    for (int t = 0; t < NT; ++t) {
      __m256 sum = accs[r][t][0];
      for (int u = 1; u < kU; ++u) sum = _mm256_add_ps(sum, accs[r][t][u]);
      rest[r * NT + t] += HSum(sum);
    }
  }
#endif
  // Without AVX2 everything lands here; with it, at most a last odd block.
  for (; b < nb; ++b) {
    // Full pairs use the interleaved activation layout; a last odd block does not.
    const bool paired = b + 1 < nb || (b % 2) == 1;
    for (int r = 0; r < NR; ++r) {
      const uint8_t* blk = w + r * row_bytes + b * kQ4_0Bytes;
      const float dw = LoadF16(blk);
      for (int t = 0; t < NT; ++t) {
        int s = 0;
        for (int j = 0; j < 16; ++j) {
          const int lo = blk[2 + j] & 0xf, hi = blk[2 + j] >> 4;
          if (paired) {
            const int8_t* xq = a[t].q + (b & ~int64_t{1}) * 32 + (b & 1) * 16;
            s += lo * xq[j] + hi * xq[32 + j];
          } else {
            s += lo * a[t].q[b * 32 + j] + hi * a[t].q[b * 32 + 16 + j];
          }
        }
        rest[r * NT + t] += dw * (a[t].d[b] * static_cast<float>(s) - a[t].sum8[b]);
      }
    }
  }
  for (int i = 0; i < NR * NT; ++i) out[i] = rest[i];
}

template <int NR, int NT>
void DotQ8_0(const uint8_t* w, size_t row_bytes, const uint8_t* act, size_t act_row_bytes, int64_t nb,
             float* out) {
  ActQ8View a[NT];
  for (int t = 0; t < NT; ++t) a[t] = ViewActQ8(act + t * act_row_bytes, nb);
  int64_t b = 0;
  float rest[NR * NT] = {};
#if STRATA_DOT_AVX2
  constexpr int kU = kUnroll<NR * NT>;
  __m256 accs[NR][NT][kU];
  for (int r = 0; r < NR; ++r) {
    for (int t = 0; t < NT; ++t) {
      for (int u = 0; u < kU; ++u) accs[r][t][u] = _mm256_setzero_ps();
    }
  }
  for (; b + 8 <= nb; b += 8) {
    for (int r = 0; r < NR; ++r) {
      const uint8_t* blk = w + r * row_bytes + b * kQ8_0Bytes;
      const __m256 dw = GatherF16x8(blk, kQ8_0Bytes);
      __m256 s[NT];
      for (int t = 0; t < NT; ++t) s[t] = _mm256_mul_ps(dw, _mm256_loadu_ps(a[t].d + b));
      for (int i = 0; i < 8; ++i) {
        const __m256i q = Load256(blk + i * kQ8_0Bytes + 2);
        // maddubs needs an unsigned operand: move q's sign onto the activations.
        const __m256i qa = _mm256_sign_epi8(q, q);
        for (int t = 0; t < NT; ++t) {
          const __m256i xs = _mm256_sign_epi8(Load256(a[t].q + (b + i) * 32), q);
          const __m256i dot = DotU8S8(_mm256_setzero_si256(), qa, xs);
          accs[r][t][i % kU] =
              _mm256_fmadd_ps(LaneBroadcast(s[t], i), _mm256_cvtepi32_ps(dot), accs[r][t][i % kU]);
        }
      }
    }
  }
  for (int r = 0; r < NR; ++r) {
    for (int t = 0; t < NT; ++t) {
      __m256 sum = accs[r][t][0];
      for (int u = 1; u < kU; ++u) sum = _mm256_add_ps(sum, accs[r][t][u]);
      rest[r * NT + t] = HSum(sum);
    }
  }
#endif
  for (; b < nb; ++b) {
    for (int r = 0; r < NR; ++r) {
      const uint8_t* blk = w + r * row_bytes + b * kQ8_0Bytes;
      const float dw = LoadF16(blk);
      const int8_t* q = reinterpret_cast<const int8_t*>(blk + 2);
      for (int t = 0; t < NT; ++t) {
        int s = 0;
        for (int j = 0; j < 32; ++j) s += q[j] * a[t].q[b * 32 + j];
        rest[r * NT + t] += dw * a[t].d[b] * static_cast<float>(s);
      }
    }
  }
  for (int i = 0; i < NR * NT; ++i) out[i] = rest[i];
}

// ---- K-quants x ActQ8K. --------------------------------------------------------

#if STRATA_DOT_AVX2
// Decodes the 12 packed scale bytes at s (16 readable bytes) into
// bytes 0..7 = the eight 6-bit scales, bytes 8..15 = the eight 6-bit mins.
// Same bit algebra as UnpackScaleMinK4, on the four 32-bit words at once:
//   lane 0: w0 & 0x3f..                               (scales 0..3)
//   lane 1: w2 & 0x0f.. | (w0 >> 2) & 0x30..          (scales 4..7)
//   lane 2: w1 & 0x3f..                               (mins 0..3)
//   lane 3: (w2 >> 4) & 0x0f.. | (w1 >> 2) & 0x30..   (mins 4..7)
inline __m128i UnpackScaleMinK4x16(const uint8_t* s) {
  const __m128i raw = Load128(s);
  const __m128i p = _mm_shuffle_epi32(raw, _MM_SHUFFLE(2, 1, 2, 0));  // w0 w2 w1 w2
  const __m128i q = _mm_shuffle_epi32(raw, _MM_SHUFFLE(1, 1, 0, 0));  // w0 w0 w1 w1
  const __m128i low = _mm_and_si128(_mm_srlv_epi32(p, _mm_setr_epi32(0, 0, 0, 4)),
                                    _mm_setr_epi32(0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f));
  const __m128i high = _mm_and_si128(_mm_srli_epi32(q, 2), _mm_setr_epi32(0, 0x30303030, 0, 0x30303030));
  return _mm_or_si128(low, high);
}

// int16 lane i of the (128-bit, duplicated) vector v in all 16 lanes.
inline __m256i BroadcastI16(__m256i v, int i) {
  const int lo = 2 * i, hi = 2 * i + 1;
  return _mm256_shuffle_epi8(v, _mm256_set1_epi16(static_cast<int16_t>(lo | (hi << 8))));
}
// int16 lane i in lanes 0..7 and lane i + 1 in lanes 8..15.
inline __m256i BroadcastI16Pair(__m256i v, int i) {
  const int a = 2 * i | (2 * i + 1) << 8, b = (2 * i + 2) | (2 * i + 3) << 8;
  return _mm256_shuffle_epi8(v, _mm256_setr_m128i(_mm_set1_epi16(static_cast<int16_t>(a)),
                                                   _mm_set1_epi16(static_cast<int16_t>(b))));
}
#endif

// Q4_K / Q5_K: value = d * sc_j * q - dmin * m_j per sub-block j of 32, so
// dot = d*dx * sum_j sc_j (q . x)_j - dmin*dx * sum_j m_j * bsum32_j.
template <bool kFive, int NR, int NT>
void DotQ45_K(const uint8_t* w, size_t row_bytes, const uint8_t* act, size_t act_row_bytes, int64_t nb,
              float* out) {
  constexpr int kBlockBytes = kFive ? kQ5_KBytes : kQ4_KBytes;
  constexpr int kQsOff = kFive ? kQ5_KQs : kQ4_KQs;
  const ActQ8K* a[NT];
  for (int t = 0; t < NT; ++t) a[t] = reinterpret_cast<const ActQ8K*>(act + t * act_row_bytes);
#if STRATA_DOT_AVX2
  __m256 acc[NR][NT];
  for (int r = 0; r < NR; ++r) {
    for (int t = 0; t < NT; ++t) acc[r][t] = _mm256_setzero_ps();
  }
  const __m256i m4 = _mm256_set1_epi8(0x0f);
  for (int64_t b = 0; b < nb; ++b) {
    for (int r = 0; r < NR; ++r) {
      const uint8_t* blk = w + r * row_bytes + b * kBlockBytes;
      const __m128 dm = _mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(LoadU32(blk))));  // d, dmin
      const __m128i sm = UnpackScaleMinK4x16(blk + 4);
      const __m256i sc = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(sm));
      const __m128i mins = _mm_cvtepu8_epi16(_mm_srli_si128(sm, 8));
      [[maybe_unused]] __m256i qh;
      if constexpr (kFive) qh = Load256(blk + kQ5_KQh);
      __m256i isum[NT];
      for (int t = 0; t < NT; ++t) isum[t] = _mm256_setzero_si256();
      for (int j = 0; j < 4; ++j) {
        const __m256i raw = Load256(blk + kQsOff + 32 * j);
        __m256i lo = _mm256_and_si256(raw, m4);
        __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
        if constexpr (kFive) {
          // Bit 2j of qh[l] is bit 4 of the first 32, bit 2j+1 of the next 32.
          const __m256i bit4 = _mm256_set1_epi8(0x10);
          lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16(qh, 4), bit4));
          hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16(qh, 3), bit4));
          qh = _mm256_srli_epi16(qh, 2);
        }
        const __m256i s_lo = BroadcastI16(sc, 2 * j), s_hi = BroadcastI16(sc, 2 * j + 1);
        for (int t = 0; t < NT; ++t) {
          const int8_t* xq = a[t][b].q + 64 * j;
          const __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, Load256(xq)), s_lo);
          const __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, Load256(xq + 32)), s_hi);
          isum[t] = _mm256_add_epi32(isum[t], _mm256_add_epi32(p0, p1));
        }
      }
      for (int t = 0; t < NT; ++t) {
        const __m128 f = _mm_mul_ps(dm, _mm_set1_ps(a[t][b].d));  // d*dx, dmin*dx
        const __m128i pm = _mm_madd_epi16(mins, Load128(a[t][b].bsum32));
        acc[r][t] = _mm256_fmadd_ps(_mm256_broadcastss_ps(f), _mm256_cvtepi32_ps(isum[t]), acc[r][t]);
        // Only four lanes carry the mins term; the final horizontal sum adds them in.
        const __m128 mterm = _mm_mul_ps(_mm_shuffle_ps(f, f, 0x55), _mm_cvtepi32_ps(pm));
        acc[r][t] = _mm256_sub_ps(acc[r][t], _mm256_zextps128_ps256(mterm));
      }
    }
  }
  for (int r = 0; r < NR; ++r) {
    for (int t = 0; t < NT; ++t) out[r * NT + t] = HSum(acc[r][t]);
  }
#else
  for (int r = 0; r < NR; ++r) {
    float acc[NT] = {};
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* blk = w + r * row_bytes + b * kBlockBytes;
      const float d = LoadF16(blk), dmin = LoadF16(blk + 2);
      uint8_t sc[8], mn[8];
      UnpackScaleMinK4(blk + 4, sc, mn);
      const uint8_t* qs = blk + kQsOff;
      const uint8_t* qh = blk + kQ5_KQh;
      for (int t = 0; t < NT; ++t) {
        const ActQ8K& ab = a[t][b];
        int32_t s = 0, m = 0;
        for (int j = 0; j < 4; ++j) {
          int32_t s_lo = 0, s_hi = 0;
          for (int l = 0; l < 32; ++l) {
            int lo = qs[32 * j + l] & 0xf, hi = qs[32 * j + l] >> 4;
            if (kFive) {
              lo |= ((qh[l] >> (2 * j)) & 1) << 4;
              hi |= ((qh[l] >> (2 * j + 1)) & 1) << 4;
            }
            s_lo += lo * ab.q[64 * j + l];
            s_hi += hi * ab.q[64 * j + 32 + l];
          }
          s += sc[2 * j] * s_lo + sc[2 * j + 1] * s_hi;
        }
        for (int g = 0; g < 8; ++g) m += mn[g] * ab.bsum32[g];
        acc[t] += d * ab.d * static_cast<float>(s) - dmin * ab.d * static_cast<float>(m);
      }
    }
    for (int t = 0; t < NT; ++t) out[r * NT + t] = acc[t];
  }
#endif
}

template <int NR, int NT>
void DotQ4_K(const uint8_t* w, size_t row_bytes, const uint8_t* act, size_t act_row_bytes, int64_t nb,
             float* out) {
  DotQ45_K<false, NR, NT>(w, row_bytes, act, act_row_bytes, nb, out);
}
template <int NR, int NT>
void DotQ5_K(const uint8_t* w, size_t row_bytes, const uint8_t* act, size_t act_row_bytes, int64_t nb,
             float* out) {
  DotQ45_K<true, NR, NT>(w, row_bytes, act, act_row_bytes, nb, out);
}

// Q6_K: value = d * sc_s * (q - 32), q in [0, 64) unsigned, so
// dot = d*dx * (sum_s sc_s (q . x)_s - 32 * sum_s sc_s * bsum16_s).
template <int NR, int NT>
void DotQ6_K(const uint8_t* w, size_t row_bytes, const uint8_t* act, size_t act_row_bytes, int64_t nb,
             float* out) {
  const ActQ8K* a[NT];
  for (int t = 0; t < NT; ++t) a[t] = reinterpret_cast<const ActQ8K*>(act + t * act_row_bytes);
#if STRATA_DOT_AVX2
  __m256 acc[NR][NT];
  for (int r = 0; r < NR; ++r) {
    for (int t = 0; t < NT; ++t) acc[r][t] = _mm256_setzero_ps();
  }
  const __m256i m4 = _mm256_set1_epi8(0x0f), m30 = _mm256_set1_epi8(0x30);
  for (int64_t b = 0; b < nb; ++b) {
    for (int r = 0; r < NR; ++r) {
      const uint8_t* blk = w + r * row_bytes + b * kQ6_KBytes;
      const float d = LoadF16(blk + kQ6_KD);
      const __m256i sc16 = _mm256_cvtepi8_epi16(Load128(blk + kQ6_KScales));
      const __m256i sc_first = _mm256_permute2x128_si256(sc16, sc16, 0x00);   // scales 0..7 twice
      const __m256i sc_second = _mm256_permute2x128_si256(sc16, sc16, 0x11);  // scales 8..15 twice
      __m256i isum[NT];
      for (int t = 0; t < NT; ++t) {
        // The -32 offset, folded in up front.
        isum[t] = _mm256_slli_epi32(
            _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_madd_epi16(sc16, Load256(a[t][b].bsum16))), 5);
      }
      for (int n = 0; n < 2; ++n) {
        const uint8_t* ql = blk + kQ6_KQl + 64 * n;
        const __m256i l0 = Load256(ql), l1 = Load256(ql + 32);
        const __m256i h = Load256(blk + kQ6_KQh + 32 * n);
        // Element groups of 32: low nibbles of l0, of l1, high nibbles of l0,
        // of l1; their top two bits are bit pairs 0, 1, 2, 3 of h.
        const __m256i q[4] = {
            _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_and_si256(_mm256_slli_epi16(h, 4), m30)),
            _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(_mm256_slli_epi16(h, 2), m30)),
            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_and_si256(h, m30)),
            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                            _mm256_and_si256(_mm256_srli_epi16(h, 2), m30)),
        };
        // (Selected, not computed from n: the permute takes an immediate,
        // which unoptimized builds do not fold.)
        const __m256i sc_half = n == 0 ? sc_first : sc_second;
        for (int g = 0; g < 4; ++g) {
          const __m256i s = BroadcastI16Pair(sc_half, 2 * g);
          for (int t = 0; t < NT; ++t) {
            const __m256i x = Load256(a[t][b].q + 128 * n + 32 * g);
            isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(_mm256_maddubs_epi16(q[g], x), s));
          }
        }
      }
      for (int t = 0; t < NT; ++t) {
        acc[r][t] = _mm256_fmadd_ps(_mm256_set1_ps(d * a[t][b].d), _mm256_cvtepi32_ps(isum[t]), acc[r][t]);
      }
    }
  }
  for (int r = 0; r < NR; ++r) {
    for (int t = 0; t < NT; ++t) out[r * NT + t] = HSum(acc[r][t]);
  }
#else
  float wf[kQK];
  for (int r = 0; r < NR; ++r) {
    float acc[NT] = {};
    for (int64_t b = 0; b < nb; ++b) {
      DequantizeRow(DType::kQ6_K, w + r * row_bytes + b * kQ6_KBytes, wf, kQK);
      for (int t = 0; t < NT; ++t) {
        float s = 0;
        for (int i = 0; i < kQK; ++i) s += wf[i] * static_cast<float>(a[t][b].q[i]);
        acc[t] += s * a[t][b].d;
      }
    }
    for (int t = 0; t < NT; ++t) out[r * NT + t] = acc[t];
  }
#endif
}

// ---------------------------------------------------------------------------
// Row drivers.
// ---------------------------------------------------------------------------

// Tile shapes: kDecodeRows x 1 for single-token calls, 1 x nt otherwise.
constexpr int kDecodeRows = 1;
// Single-token calls prefetch the weight rows this many tiles ahead. With it,
// one thread streams DRAM-resident weights at 81-94% of a plain streaming
// read on Zen3 (without: 67-89%, lowest for the formats with the most
// unpacking work per byte, q8_0/q4_0).
constexpr int kPrefetchTiles = 4;

using QuantDotFn = void (*)(const uint8_t*, size_t, const uint8_t*, size_t, int64_t, float*);
using FloatDotFn = void (*)(const uint8_t*, size_t, const float*, int64_t, int64_t, float*);

// [0]: kDecodeRows x 1; [nt]: 1 x nt.
template <DType T>
constexpr FloatDotFn kFloatDots[kMaxDotTokens + 1] = {&DotFloat<T, kDecodeRows, 1>, &DotFloat<T, 1, 1>,
                                                      &DotFloat<T, 1, 2>, &DotFloat<T, 1, 3>,
                                                      &DotFloat<T, 1, 4>};
#define STRATA_QUANT_TABLE(name, K) \
  constexpr QuantDotFn name[kMaxDotTokens + 1] = {&K<kDecodeRows, 1>, &K<1, 1>, &K<1, 2>, &K<1, 3>, &K<1, 4>};
STRATA_QUANT_TABLE(kQ4_0Dots, DotQ4_0)
STRATA_QUANT_TABLE(kQ8_0Dots, DotQ8_0)
STRATA_QUANT_TABLE(kQ4_KDots, DotQ4_K)
STRATA_QUANT_TABLE(kQ5_KDots, DotQ5_K)
STRATA_QUANT_TABLE(kQ6_KDots, DotQ6_K)
#undef STRATA_QUANT_TABLE

const QuantDotFn* QuantDots(DType t) {
  switch (t) {
    case DType::kQ4_0: return kQ4_0Dots;
    case DType::kQ8_0: return kQ8_0Dots;
    case DType::kQ4_K: return kQ4_KDots;
    case DType::kQ5_K: return kQ5_KDots;
    case DType::kQ6_K: return kQ6_KDots;
    default: return nullptr;
  }
}

const FloatDotFn* FloatDots(DType t) {
  switch (t) {
    case DType::kF32: return kFloatDots<DType::kF32>;
    case DType::kF16: return kFloatDots<DType::kF16>;
    case DType::kBF16: return kFloatDots<DType::kBF16>;
    default: return nullptr;
  }
}

// Walks rows [r0, r1) in tiles; `call(row, fn_index, t, nt, out)` computes a
// tile and the driver scatters it into y.
template <typename Call>
void ForEachTile(const WeightView& w, int64_t n_tokens, float* y, int64_t ldy, int64_t r0, int64_t r1,
                 Call&& call) {
  const uint8_t* wd = static_cast<const uint8_t*>(w.data);
  float out[kDecodeRows * kMaxDotTokens];
  int64_t r = r0;
  if (n_tokens == 1) {
    const size_t tile_bytes = kDecodeRows * w.row_bytes;
    const uint8_t* end = wd + static_cast<size_t>(r1) * w.row_bytes;
    for (; r + kDecodeRows <= r1; r += kDecodeRows) {
      const uint8_t* row = wd + static_cast<size_t>(r) * w.row_bytes;
      const uint8_t* ahead = row + kPrefetchTiles * tile_bytes;
      if (ahead + tile_bytes <= end) {
        for (size_t off = 0; off < tile_bytes; off += 64) __builtin_prefetch(ahead + off, 0, 3);
      }
      call(row, 0, 0, out);
      for (int i = 0; i < kDecodeRows; ++i) y[r + i] = out[i];
    }
  }
  for (; r < r1; ++r) {
    const uint8_t* row = wd + static_cast<size_t>(r) * w.row_bytes;
    for (int64_t t = 0; t < n_tokens; t += kMaxDotTokens) {
      const int nt = static_cast<int>(std::min<int64_t>(kMaxDotTokens, n_tokens - t));
      call(row, nt, t, out);
      for (int i = 0; i < nt; ++i) y[(t + i) * ldy + r] = out[i];
    }
  }
}

}  // namespace

// ---------------------------------------------------------------------------
// Activation quantization.
// ---------------------------------------------------------------------------

#if STRATA_DOT_AVX2
namespace {
inline float HMaxAbs(const __m256* v, int n) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 mx = _mm256_setzero_ps();
  for (int i = 0; i < n; ++i) mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, v[i]));
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}
// 32 floats * id, rounded to nearest even, as 32 int8 in order.
inline __m256i QuantizeTo32xI8(const __m256* v, __m256 id) {
  __m256i qi[4];
  for (int i = 0; i < 4; ++i) qi[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], id));
  // packs work within 128-bit lanes; the permute restores element order.
  const __m256i p01 = _mm256_packs_epi32(qi[0], qi[1]), p23 = _mm256_packs_epi32(qi[2], qi[3]);
  return _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p01, p23), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}
// Sums of each 16 consecutive int8 of two 32-byte vectors: 4 int32 in order.
inline __m128i Sum16s(__m256i a, __m256i b) {
  const __m256i ones8 = _mm256_set1_epi8(1);
  const __m256i ones16 = _mm256_set1_epi16(1);
  // maddubs(1, q): pair sums; madd: sums of 4 -> 8 int32 per vector.
  const __m256i sa = _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, a), ones16);
  const __m256i sb = _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, b), ones16);
  const __m256i h = _mm256_hadd_epi32(sa, sb);  // [a01 a23 b01 b23 | a45 a67 b45 b67]
  const __m256i h2 = _mm256_hadd_epi32(h, h);   // [a0-3 b0-3 . . | a4-7 b4-7 . .]
  // a's first 16 bytes, a's last 16, b's first, b's last.
  return _mm_unpacklo_epi32(_mm256_castsi256_si128(h2), _mm256_extracti128_si256(h2, 1));
}
}  // namespace
#endif

void QuantizeActQ8(const float* x, int64_t n, bool pair_interleave, uint8_t* row) {
  const int64_t nb = n / 32;
  int8_t* q = reinterpret_cast<int8_t*>(row);
  float* d = reinterpret_cast<float*>(row + 32 * nb);
  float* sum8 = reinterpret_cast<float*>(row + 36 * nb);
  for (int64_t b = 0; b < nb; ++b) {
    const float* xb = x + 32 * b;
    alignas(32) int8_t qb[32];
#if STRATA_DOT_AVX2
    __m256 v[4];
    for (int i = 0; i < 4; ++i) v[i] = _mm256_loadu_ps(xb + 8 * i);
    const float amax = HMaxAbs(v, 4);
    const __m256i packed = QuantizeTo32xI8(v, _mm256_set1_ps(amax > 0 ? 127.0f / amax : 0.0f));
    _mm256_store_si256(reinterpret_cast<__m256i*>(qb), packed);
#else
    float amax = 0;
    for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(xb[i]));
    const float id = amax > 0 ? 127.0f / amax : 0.0f;
    for (int i = 0; i < 32; ++i) qb[i] = static_cast<int8_t>(std::nearbyint(xb[i] * id));
#endif
    int sum = 0;
    for (int i = 0; i < 32; ++i) sum += qb[i];
    d[b] = amax / 127.0f;
    sum8[b] = 8.0f * d[b] * static_cast<float>(sum);
    if (pair_interleave && (b % 2 == 1 || b + 1 < nb)) {
      int8_t* dst = q + (b & ~int64_t{1}) * 32 + (b & 1) * 16;
      std::memcpy(dst, qb, 16);
      std::memcpy(dst + 32, qb + 16, 16);
    } else {
      std::memcpy(q + 32 * b, qb, 32);
    }
  }
}

void QuantizeActQ8K(const float* x, int64_t n, ActQ8K* out) {
  for (int64_t b = 0; b < n / kQK; ++b) {
    const float* xb = x + kQK * b;
    ActQ8K& o = out[b];
#if STRATA_DOT_AVX2
    __m256 v[32];
    for (int i = 0; i < 32; ++i) v[i] = _mm256_loadu_ps(xb + 8 * i);
    const float amax = HMaxAbs(v, 32);
    const __m256 id = _mm256_set1_ps(amax > 0 ? 127.0f / amax : 0.0f);
    __m256i q[8];
    for (int g = 0; g < 8; ++g) {
      q[g] = QuantizeTo32xI8(v + 4 * g, id);
      _mm256_store_si256(reinterpret_cast<__m256i*>(o.q + 32 * g), q[g]);
    }
    for (int g = 0; g < 8; g += 2) {
      const __m128i s = Sum16s(q[g], q[g + 1]);  // 4 sums of 16, in order
      const __m128i s16 = _mm_packs_epi32(s, s);
      _mm_storel_epi64(reinterpret_cast<__m128i*>(o.bsum16 + 2 * g), s16);
    }
#else
    float amax = 0;
    for (int i = 0; i < kQK; ++i) amax = std::max(amax, std::fabs(xb[i]));
    const float id = amax > 0 ? 127.0f / amax : 0.0f;
    for (int i = 0; i < kQK; ++i) o.q[i] = static_cast<int8_t>(std::nearbyint(xb[i] * id));
    for (int g = 0; g < 16; ++g) {
      int s = 0;
      for (int i = 0; i < 16; ++i) s += o.q[16 * g + i];
      o.bsum16[g] = static_cast<int16_t>(s);
    }
#endif
    o.d = amax / 127.0f;
    for (int j = 0; j < 8; ++j) o.bsum32[j] = static_cast<int16_t>(o.bsum16[2 * j] + o.bsum16[2 * j + 1]);
    std::memset(o.pad, 0, sizeof(o.pad));
  }
}

size_t DotActivationRowBytes(DType t, int64_t ne0) {
  switch (t) {
    case DType::kQ4_0:
    case DType::kQ8_0:
      return ActQ8RowBytes(ne0 / 32);
    case DType::kQ4_K:
    case DType::kQ5_K:
    case DType::kQ6_K:
      return sizeof(ActQ8K) * static_cast<size_t>(ne0 / kQK);
    default:
      return 0;
  }
}

void PrepareDotActivations(DType t, const float* x, int64_t ne0, int64_t n_tokens, uint8_t* out) {
  const size_t rb = DotActivationRowBytes(t, ne0);
  for (int64_t i = 0; i < n_tokens; ++i) {
    uint8_t* row = out + rb * static_cast<size_t>(i);
    switch (t) {
      case DType::kQ4_0:
      case DType::kQ8_0:
        QuantizeActQ8(x + i * ne0, ne0, t == DType::kQ4_0, row);
        break;
      case DType::kQ4_K:
      case DType::kQ5_K:
      case DType::kQ6_K:
        QuantizeActQ8K(x + i * ne0, ne0, reinterpret_cast<ActQ8K*>(row));
        break;
      default:
        break;
    }
  }
}

void DotRows(const WeightView& w, const DotActivations& act, int64_t n_tokens, float* y, int64_t ldy, int64_t r0,
             int64_t r1) {
  if (const FloatDotFn* fns = FloatDots(w.type)) {
    ForEachTile(w, n_tokens, y, ldy, r0, r1, [&](const uint8_t* row, int fn, int64_t t, float* out) {
      fns[fn](row, w.row_bytes, act.x + t * w.ne0, w.ne0, w.ne0, out);
    });
    return;
  }
  const QuantDotFn* fns = QuantDots(w.type);
  const int64_t nb = w.ne0 / Traits(w.type).block_elems;
  ForEachTile(w, n_tokens, y, ldy, r0, r1, [&](const uint8_t* row, int fn, int64_t t, float* out) {
    fns[fn](row, w.row_bytes, act.q + act.q_row_bytes * static_cast<size_t>(t), act.q_row_bytes, nb, out);
  });
}

}  // namespace strata
