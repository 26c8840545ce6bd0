// Matmul has two regimes, picked by n_tokens:
//
//  * Few tokens (decode, small batches): memory-bound. Each weight row is
//    streamed once and dotted with every token while it sits in L1. Quantized
//    weights meet int8-quantized activations (Q8 blocks of 32 for Q4_0/Q8_0,
//    Q8_K super-blocks for the K-quants) in integer multiply-adds; float
//    weights are widened on the fly and use FMA.
//
//  * Many tokens (prefill): compute-bound. A panel of kMR weight rows x kKC
//    inputs is dequantized to f32 and transposed once into L1, then an
//    outer-product register tile (kMR rows x kNR tokens) reuses every loaded
//    weight vector across kNR tokens and every broadcast activation across kMR
//    rows. Prefill therefore runs at f32 FMA throughput whatever the weight
//    type, and without the activation rounding of the int8 path.
//
// Work is split across threads by output rows, so each thread streams its own
// slice of the weight.
#include "kernels/matmul.h"

#include <algorithm>
#include <array>
#include <cassert>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "kernels/fp16.h"
#include "kernels/matmul_internal.h"
#include "kernels/quant.h"
#include "kernels/quant_blocks.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define STRATA_MATMUL_AVX2 1
#endif
#if STRATA_MATMUL_AVX2 && defined(__AVX512F__)
#define STRATA_MATMUL_AVX512 1
#endif

namespace strata {

using namespace quant;

namespace {

// ---------------------------------------------------------------------------
// Scratch memory. Thread-local and grow-only, so steady-state calls never
// allocate: pool workers are long-lived, and the calling thread's buffers
// hold the quantized activations that workers read during the call.
// ---------------------------------------------------------------------------
class ScratchBuffer {
 public:
  ScratchBuffer() = default;
  ScratchBuffer(const ScratchBuffer&) = delete;
  ScratchBuffer& operator=(const ScratchBuffer&) = delete;
  ~ScratchBuffer() { std::free(data_); }

  void* Get(size_t bytes) {
    if (bytes > capacity_) {
      std::free(data_);
      capacity_ = (bytes + 4095) & ~size_t{4095};
      data_ = std::aligned_alloc(64, capacity_);
      if (data_ == nullptr) std::abort();
    }
    return data_;
  }

 private:
  void* data_ = nullptr;
  size_t capacity_ = 0;
};

thread_local ScratchBuffer tls_activations;  // caller thread: quantized x
thread_local ScratchBuffer tls_panel;        // per thread: packed weight panel
thread_local ScratchBuffer tls_rows;         // per thread: dequantized rows before transpose

// ===========================================================================
// Prefill: packed f32 GEMM.
// ===========================================================================

constexpr int64_t kKC = 256;  // inputs per panel: kMR * kKC * 4 bytes stays in L1
#if STRATA_MATMUL_AVX512
constexpr int kMR = 32;
constexpr int kNR = 12;
#elif STRATA_MATMUL_AVX2
constexpr int kMR = 16;
constexpr int kNR = 6;
#else
constexpr int kMR = 8;
constexpr int kNR = 4;
#endif
static_assert(kKC % kQK == 0, "panels must hold whole super-blocks");

// pack[k * kMR + r] = rows[r][k] for r < mr, 0 for mr <= r < kMR.
void PackTransposed(const float* const* rows, int mr, int64_t kc, float* pack) {
  int64_t k = 0;
#if STRATA_MATMUL_AVX2
  for (; k + 8 <= kc; k += 8) {
    for (int r0 = 0; r0 < kMR; r0 += 8) {
      __m256 v[8];
      for (int i = 0; i < 8; ++i) {
        v[i] = r0 + i < mr ? _mm256_loadu_ps(rows[r0 + i] + k) : _mm256_setzero_ps();
      }
      // 8x8 transpose: interleave pairs, then quads, then 128-bit halves.
      const __m256 t0 = _mm256_unpacklo_ps(v[0], v[1]), t1 = _mm256_unpackhi_ps(v[0], v[1]);
      const __m256 t2 = _mm256_unpacklo_ps(v[2], v[3]), t3 = _mm256_unpackhi_ps(v[2], v[3]);
      const __m256 t4 = _mm256_unpacklo_ps(v[4], v[5]), t5 = _mm256_unpackhi_ps(v[4], v[5]);
      const __m256 t6 = _mm256_unpacklo_ps(v[6], v[7]), t7 = _mm256_unpackhi_ps(v[6], v[7]);
      const __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xee);
      const __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xee);
      const __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xee);
      const __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xee);
      float* dst = pack + k * kMR + r0;
      _mm256_storeu_ps(dst + 0 * kMR, _mm256_permute2f128_ps(s0, s4, 0x20));
      _mm256_storeu_ps(dst + 1 * kMR, _mm256_permute2f128_ps(s1, s5, 0x20));
      _mm256_storeu_ps(dst + 2 * kMR, _mm256_permute2f128_ps(s2, s6, 0x20));
      _mm256_storeu_ps(dst + 3 * kMR, _mm256_permute2f128_ps(s3, s7, 0x20));
      _mm256_storeu_ps(dst + 4 * kMR, _mm256_permute2f128_ps(s0, s4, 0x31));
      _mm256_storeu_ps(dst + 5 * kMR, _mm256_permute2f128_ps(s1, s5, 0x31));
      _mm256_storeu_ps(dst + 6 * kMR, _mm256_permute2f128_ps(s2, s6, 0x31));
      _mm256_storeu_ps(dst + 7 * kMR, _mm256_permute2f128_ps(s3, s7, 0x31));
    }
  }
#endif
  for (; k < kc; ++k) {
    for (int r = 0; r < kMR; ++r) pack[k * kMR + r] = r < mr ? rows[r][k] : 0.0f;
  }
}

// c[j * ldc + i] (+)= sum_k pack[k * kMR + i] * x[j * ldx + k], i < kMR, j < NR.
template <int NR>
void MicroKernel(const float* pack, const float* x, int64_t ldx, int64_t kc, float* c, int64_t ldc,
                 bool accumulate) {
#if STRATA_MATMUL_AVX512
  __m512 a0[NR], a1[NR];
  for (int j = 0; j < NR; ++j) a0[j] = a1[j] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    const __m512 w0 = _mm512_load_ps(pack + k * kMR);
    const __m512 w1 = _mm512_load_ps(pack + k * kMR + 16);
    for (int j = 0; j < NR; ++j) {
      const __m512 b = _mm512_set1_ps(x[j * ldx + k]);
      a0[j] = _mm512_fmadd_ps(w0, b, a0[j]);
      a1[j] = _mm512_fmadd_ps(w1, b, a1[j]);
    }
  }
  for (int j = 0; j < NR; ++j) {
    float* cj = c + j * ldc;
    if (accumulate) {
      a0[j] = _mm512_add_ps(a0[j], _mm512_loadu_ps(cj));
      a1[j] = _mm512_add_ps(a1[j], _mm512_loadu_ps(cj + 16));
    }
    _mm512_storeu_ps(cj, a0[j]);
    _mm512_storeu_ps(cj + 16, a1[j]);
  }
#elif STRATA_MATMUL_AVX2
  __m256 a0[NR], a1[NR];
  for (int j = 0; j < NR; ++j) a0[j] = a1[j] = _mm256_setzero_ps();
  const float* xj[NR];
  for (int j = 0; j < NR; ++j) xj[j] = x + j * ldx;
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 w0 = _mm256_load_ps(pack + k * kMR);
    const __m256 w1 = _mm256_load_ps(pack + k * kMR + 8);
    for (int j = 0; j < NR; ++j) {
      const __m256 b = _mm256_broadcast_ss(xj[j] + k);
      a0[j] = _mm256_fmadd_ps(w0, b, a0[j]);
      a1[j] = _mm256_fmadd_ps(w1, b, a1[j]);
    }
  }
  for (int j = 0; j < NR; ++j) {
    float* cj = c + j * ldc;
    if (accumulate) {
      a0[j] = _mm256_add_ps(a0[j], _mm256_loadu_ps(cj));
      a1[j] = _mm256_add_ps(a1[j], _mm256_loadu_ps(cj + 8));
    }
    _mm256_storeu_ps(cj, a0[j]);
    _mm256_storeu_ps(cj + 8, a1[j]);
  }
#else
  float acc[NR][kMR] = {};
  for (int64_t k = 0; k < kc; ++k) {
    for (int j = 0; j < NR; ++j) {
      const float b = x[j * ldx + k];
      for (int i = 0; i < kMR; ++i) acc[j][i] += pack[k * kMR + i] * b;
    }
  }
  for (int j = 0; j < NR; ++j) {
    for (int i = 0; i < kMR; ++i) c[j * ldc + i] = accumulate ? c[j * ldc + i] + acc[j][i] : acc[j][i];
  }
#endif
}

using MicroKernelFn = void (*)(const float*, const float*, int64_t, int64_t, float*, int64_t, bool);

template <int... N>
constexpr auto MakeKernelTable(std::integer_sequence<int, N...>) {
  return std::array<MicroKernelFn, sizeof...(N)>{&MicroKernel<N + 1>...};
}
constexpr auto kMicroKernels = MakeKernelTable(std::make_integer_sequence<int, kNR>{});

void GemmRows(const WeightView& w, const float* x, int64_t n_tokens, float* y, int64_t ldy, int64_t r0,
              int64_t r1) {
  const int64_t ne0 = w.ne0;
  const int64_t block_elems = Traits(w.type).block_elems;
  const size_t block_bytes = Traits(w.type).block_bytes;
  float* pack = static_cast<float*>(tls_panel.Get(sizeof(float) * kMR * kKC));
  float* rows_buf = w.type == DType::kF32 ? nullptr
                                          : static_cast<float*>(tls_rows.Get(sizeof(float) * kMR * kKC));
  const uint8_t* wdata = static_cast<const uint8_t*>(w.data);
  alignas(64) float edge[kNR * kMR];  // output tile for a partial panel

  for (int64_t p = r0; p < r1; p += kMR) {
    const int mr = static_cast<int>(std::min<int64_t>(kMR, r1 - p));
    for (int64_t k0 = 0; k0 < ne0; k0 += kKC) {
      const int64_t kc = std::min(kKC, ne0 - k0);
      const float* rows[kMR];
      const size_t offset = static_cast<size_t>(k0 / block_elems) * block_bytes;
      for (int r = 0; r < mr; ++r) {
        const uint8_t* src = wdata + static_cast<size_t>(p + r) * w.row_bytes + offset;
        if (rows_buf == nullptr) {
          rows[r] = reinterpret_cast<const float*>(src);
        } else {
          DequantizeRow(w.type, src, rows_buf + r * kKC, kc);
          rows[r] = rows_buf + r * kKC;
        }
      }
      PackTransposed(rows, mr, kc, pack);
      const bool accumulate = k0 > 0;
      for (int64_t t = 0; t < n_tokens; t += kNR) {
        const int nr = static_cast<int>(std::min<int64_t>(kNR, n_tokens - t));
        const float* xt = x + t * ne0 + k0;
        float* yt = y + t * ldy + p;
        if (mr == kMR) {
          kMicroKernels[nr - 1](pack, xt, ne0, kc, yt, ldy, accumulate);
        } else {
          if (accumulate) {
            for (int j = 0; j < nr; ++j) std::memcpy(edge + j * kMR, yt + j * ldy, sizeof(float) * mr);
          }
          kMicroKernels[nr - 1](pack, xt, ne0, kc, edge, kMR, accumulate);
          for (int j = 0; j < nr; ++j) std::memcpy(yt + j * ldy, edge + j * kMR, sizeof(float) * mr);
        }
      }
    }
  }
}

void Gemm(const WeightView& w, const float* x, int64_t n_tokens, float* y, int64_t ldy, ThreadPool& pool) {
  pool.ParallelFor(w.ne1, kMR, [&](int64_t r0, int64_t r1, int) {
    GemmRows(w, x, n_tokens, y, ldy, r0, r1);
  });
}

// ===========================================================================
// Decode: row-streaming dot products for few tokens.
// ===========================================================================

constexpr int kMaxDotTokens = 4;  // tokens dotted per pass over a weight row

// ---- Float weights: widen to f32 on the fly. ------------------------------

#if STRATA_MATMUL_AVX2
template <DType T>
inline __m256 LoadW8(const uint8_t* w, int64_t k) {
  if constexpr (T == DType::kF32) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(w) + k);
  } else if constexpr (T == DType::kF16) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + 2 * k)));
  } else {
    const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + 2 * k)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
  }
}

inline float HSum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#endif

template <DType T>
inline float LoadW1(const uint8_t* w, int64_t k) {
  if constexpr (T == DType::kF32) {
    float v;
    std::memcpy(&v, w + 4 * k, 4);
    return v;
  } else {
    uint16_t h;
    std::memcpy(&h, w + 2 * k, 2);
    return T == DType::kF16 ? Fp16ToFp32(h) : Bf16ToFp32(h);
  }
}

// out[t] = dot(w row, x + t * ldx) for t < NT.
template <DType T, int NT>
void DotFloat(const uint8_t* w, const float* x, int64_t ldx, int64_t n, float* out) {
  int64_t k = 0;
  float tail[NT] = {};
#if STRATA_MATMUL_AVX2
  // Two independent accumulator sets hide the FMA latency at NT = 1.
  __m256 acc0[NT], acc1[NT];
  for (int t = 0; t < NT; ++t) acc0[t] = acc1[t] = _mm256_setzero_ps();
  for (; k + 16 <= n; k += 16) {
    const __m256 w0 = LoadW8<T>(w, k), w1 = LoadW8<T>(w, k + 8);
    for (int t = 0; t < NT; ++t) {
      acc0[t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + t * ldx + k), acc0[t]);
      acc1[t] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + t * ldx + k + 8), acc1[t]);
    }
  }
  for (; k + 8 <= n; k += 8) {
    const __m256 w0 = LoadW8<T>(w, k);
    for (int t = 0; t < NT; ++t) acc0[t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + t * ldx + k), acc0[t]);
  }
  for (int t = 0; t < NT; ++t) tail[t] = HSum(_mm256_add_ps(acc0[t], acc1[t]));
#endif
  for (; k < n; ++k) {
    const float wk = LoadW1<T>(w, k);
    for (int t = 0; t < NT; ++t) tail[t] += wk * x[t * ldx + k];
  }
  for (int t = 0; t < NT; ++t) out[t] = tail[t];
}

// ---- Q4_0 / Q8_0 weights x Q8 activation blocks. ---------------------------

#if STRATA_MATMUL_AVX2
inline __m256i SumPairsI16(__m256i v) { return _mm256_madd_epi16(v, _mm256_set1_epi16(1)); }

// u8 x s8 products summed in groups of four into int32 lanes.
inline __m256i DotU8S8(__m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#else
  return SumPairsI16(_mm256_maddubs_epi16(u, s));
#endif
}
#endif

template <int NT>
void DotQ4_0(const uint8_t* w, const ActQ8* a, int64_t a_stride, int64_t nb, float* out) {
  float off[NT] = {};
#if STRATA_MATMUL_AVX2
  __m256 acc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = _mm256_setzero_ps();
  const __m256i m4 = _mm256_set1_epi8(0x0f);
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = w + b * kQ4_0Bytes;
    const float dw = LoadF16(blk);
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2));
    // Low lane: low nibbles (elements 0..15); high lane: high nibbles (16..31).
    const __m256i q = _mm256_and_si256(
        _mm256_inserti128_si256(_mm256_castsi128_si256(raw), _mm_srli_epi16(raw, 4), 1), m4);
    for (int t = 0; t < NT; ++t) {
      const ActQ8& ab = a[t * a_stride + b];
      const __m256i p = DotU8S8(q, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ab.q)));
      acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * ab.d), _mm256_cvtepi32_ps(p), acc[t]);
      off[t] += dw * ab.sum8;
    }
  }
  for (int t = 0; t < NT; ++t) out[t] = HSum(acc[t]) - off[t];
#else
  float acc[NT] = {};
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = w + b * kQ4_0Bytes;
    const float dw = LoadF16(blk);
    for (int t = 0; t < NT; ++t) {
      const ActQ8& ab = a[t * a_stride + b];
      int s = 0;
      for (int j = 0; j < 16; ++j) s += (blk[2 + j] & 0xf) * ab.q[j] + (blk[2 + j] >> 4) * ab.q[j + 16];
      acc[t] += dw * ab.d * static_cast<float>(s);
      off[t] += dw * ab.sum8;
    }
  }
  for (int t = 0; t < NT; ++t) out[t] = acc[t] - off[t];
#endif
}

template <int NT>
void DotQ8_0(const uint8_t* w, const ActQ8* a, int64_t a_stride, int64_t nb, float* out) {
#if STRATA_MATMUL_AVX2
  __m256 acc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = w + b * kQ8_0Bytes;
    const float dw = LoadF16(blk);
    const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2));
    // maddubs wants one unsigned operand: move q's sign onto the activations.
    const __m256i qa = _mm256_sign_epi8(q, q);
    for (int t = 0; t < NT; ++t) {
      const ActQ8& ab = a[t * a_stride + b];
      const __m256i xs = _mm256_sign_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(ab.q)), q);
      const __m256i p = DotU8S8(qa, xs);
      acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * ab.d), _mm256_cvtepi32_ps(p), acc[t]);
    }
  }
  for (int t = 0; t < NT; ++t) out[t] = HSum(acc[t]);
#else
  float acc[NT] = {};
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = w + b * kQ8_0Bytes;
    const float dw = LoadF16(blk);
    const int8_t* q = reinterpret_cast<const int8_t*>(blk + 2);
    for (int t = 0; t < NT; ++t) {
      const ActQ8& ab = a[t * a_stride + b];
      int s = 0;
      for (int j = 0; j < 32; ++j) s += q[j] * ab.q[j];
      acc[t] += dw * ab.d * static_cast<float>(s);
    }
  }
  for (int t = 0; t < NT; ++t) out[t] = acc[t];
#endif
}

// ---- K-quant weights x Q8_K activations. -----------------------------------

#if STRATA_MATMUL_AVX2
// Shuffle masks that broadcast int16 lane `i` of a 128-bit vector.
inline __m256i BroadcastI16Lane(__m256i v8x2, int i) {
  const char lo = static_cast<char>(2 * i), hi = static_cast<char>(2 * i + 1);
  return _mm256_shuffle_epi8(v8x2, _mm256_setr_epi8(lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, lo, hi,
                                                    lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, lo, hi));
}
// int16 lanes 0..7 = lane i of the low half, lanes 8..15 = lane i + 1.
inline __m256i BroadcastI16Pair(__m256i v8x2, int i) {
  const char a0 = static_cast<char>(2 * i), a1 = static_cast<char>(2 * i + 1);
  const char b0 = static_cast<char>(2 * i + 2), b1 = static_cast<char>(2 * i + 3);
  return _mm256_shuffle_epi8(v8x2, _mm256_setr_epi8(a0, a1, a0, a1, a0, a1, a0, a1, a0, a1, a0, a1, a0, a1, a0, a1,
                                                    b0, b1, b0, b1, b0, b1, b0, b1, b0, b1, b0, b1, b0, b1, b0, b1));
}

// Per sub-block (32) sums of a Q8_K block's activations, as 8 int16 lanes.
inline __m128i Q8KSums32(const uint8_t* act) {
  const __m128i lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(act + kQ8_KBsums));
  const __m128i hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(act + kQ8_KBsums + 16));
  return _mm_hadd_epi16(lo, hi);
}
#endif

// Q4_K and Q5_K share everything but the fifth bit. value = d*sc*q - dmin*m,
// so dot = d*dx * sum_j sc_j (q . x)_j - dmin*dx * sum_j m_j * xsum_j.
template <bool kFive, int NT>
void DotQ45_K(const uint8_t* w, const uint8_t* a, int64_t a_stride, int64_t nb, float* out) {
  const int block_bytes = kFive ? kQ5_KBytes : kQ4_KBytes;
  const int qs_off = kFive ? kQ5_KQs : kQ4_KQs;
#if STRATA_MATMUL_AVX2
  __m256 acc[NT];
  __m128 accm[NT];
  for (int t = 0; t < NT; ++t) {
    acc[t] = _mm256_setzero_ps();
    accm[t] = _mm_setzero_ps();
  }
  const __m256i m4 = _mm256_set1_epi8(0x0f), bit4 = _mm256_set1_epi8(0x10);
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = w + b * block_bytes;
    const float d = LoadF16(blk), dmin = LoadF16(blk + 2);
    alignas(16) uint8_t sm[16];  // scales then mins
    UnpackScaleMinK4(blk + 4, sm, sm + 8);
    const __m128i sm16lo = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(sm)));
    const __m128i mins16 = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(sm + 8)));
    const __m256i sc2 = _mm256_broadcastsi128_si256(sm16lo);
    __m256i qh = kFive ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + kQ5_KQh)) : __m256i{};
    __m256i isum[NT];
    for (int t = 0; t < NT; ++t) isum[t] = _mm256_setzero_si256();
    const uint8_t* qs = blk + qs_off;
    for (int j = 0; j < 4; ++j) {
      const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + 32 * j));
      __m256i lo = _mm256_and_si256(raw, m4);
      __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
      if constexpr (kFive) {
        // Bit 2j of qh feeds the low 32, bit 2j+1 the high 32; qh shifts down 2 per chunk.
        lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16(qh, 4), bit4));
        hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16(qh, 3), bit4));
        qh = _mm256_srli_epi16(qh, 2);
      }
      const __m256i s_lo = BroadcastI16Lane(sc2, 2 * j), s_hi = BroadcastI16Lane(sc2, 2 * j + 1);
      for (int t = 0; t < NT; ++t) {
        const uint8_t* xq = a + (t * a_stride + b) * kQ8_KBytes + kQ8_KQs + 64 * j;
        const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq));
        const __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + 32));
        const __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, x0), s_lo);
        const __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, x1), s_hi);
        isum[t] = _mm256_add_epi32(isum[t], _mm256_add_epi32(p0, p1));
      }
    }
    for (int t = 0; t < NT; ++t) {
      const uint8_t* ab = a + (t * a_stride + b) * kQ8_KBytes;
      const float dx = LoadF32(ab);
      acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * dx), _mm256_cvtepi32_ps(isum[t]), acc[t]);
      const __m128i pm = _mm_madd_epi16(mins16, Q8KSums32(ab));
      accm[t] = _mm_fmadd_ps(_mm_set1_ps(dmin * dx), _mm_cvtepi32_ps(pm), accm[t]);
    }
  }
  for (int t = 0; t < NT; ++t) {
    __m128 m = _mm_add_ps(accm[t], _mm_movehl_ps(accm[t], accm[t]));
    m = _mm_add_ss(m, _mm_movehdup_ps(m));
    out[t] = HSum(acc[t]) - _mm_cvtss_f32(m);
  }
#else
  float acc[NT] = {};
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = w + b * block_bytes;
    const float d = LoadF16(blk), dmin = LoadF16(blk + 2);
    uint8_t sc[8], mn[8];
    UnpackScaleMinK4(blk + 4, sc, mn);
    const uint8_t* qs = blk + qs_off;
    const uint8_t* qh = blk + kQ5_KQh;
    for (int t = 0; t < NT; ++t) {
      const uint8_t* ab = a + (t * a_stride + b) * kQ8_KBytes;
      const int8_t* xq = reinterpret_cast<const int8_t*>(ab + kQ8_KQs);
      int32_t s = 0, m = 0;
      for (int j = 0; j < 4; ++j) {
        int32_t s_lo = 0, s_hi = 0;
        for (int l = 0; l < 32; ++l) {
          int lo = qs[32 * j + l] & 0xf, hi = qs[32 * j + l] >> 4;
          if (kFive) {
            lo |= ((qh[l] >> (2 * j)) & 1) << 4;
            hi |= ((qh[l] >> (2 * j + 1)) & 1) << 4;
          }
          s_lo += lo * xq[64 * j + l];
          s_hi += hi * xq[64 * j + 32 + l];
        }
        s += sc[2 * j] * s_lo + sc[2 * j + 1] * s_hi;
      }
      for (int g = 0; g < 8; ++g) {
        int16_t b0, b1;
        std::memcpy(&b0, ab + kQ8_KBsums + 4 * g, 2);
        std::memcpy(&b1, ab + kQ8_KBsums + 4 * g + 2, 2);
        m += mn[g] * (b0 + b1);
      }
      const float dx = LoadF32(ab);
      acc[t] += d * dx * static_cast<float>(s) - dmin * dx * static_cast<float>(m);
    }
  }
  for (int t = 0; t < NT; ++t) out[t] = acc[t];
#endif
}

template <int NT>
void DotQ4_K(const uint8_t* w, const uint8_t* a, int64_t a_stride, int64_t nb, float* out) {
  DotQ45_K<false, NT>(w, a, a_stride, nb, out);
}
template <int NT>
void DotQ5_K(const uint8_t* w, const uint8_t* a, int64_t a_stride, int64_t nb, float* out) {
  DotQ45_K<true, NT>(w, a, a_stride, nb, out);
}

// Q6_K: value = d * sc_s * (q - 32) with q in [0, 64) unsigned, so
// dot = d*dx * (sum_s sc_s (q . x)_s - 32 * sum_s sc_s * bsum_s).
template <int NT>
void DotQ6_K(const uint8_t* w, const uint8_t* a, int64_t a_stride, int64_t nb, float* out) {
#if STRATA_MATMUL_AVX2
  __m256 acc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = _mm256_setzero_ps();
  const __m256i m4 = _mm256_set1_epi8(0x0f), m30 = _mm256_set1_epi8(0x30);
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = w + b * kQ6_KBytes;
    const float d = LoadF16(blk + kQ6_KD);
    const __m256i sc16 =
        _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + kQ6_KScales)));
    __m256i isum[NT];
    for (int t = 0; t < NT; ++t) {
      // The -32 offset, folded in up front: -32 * sum_s sc_s * bsum_s.
      const __m256i bs = _mm256_loadu_si256(
          reinterpret_cast<const __m256i*>(a + (t * a_stride + b) * kQ8_KBytes + kQ8_KBsums));
      isum[t] = _mm256_slli_epi32(_mm256_sub_epi32(_mm256_setzero_si256(), _mm256_madd_epi16(sc16, bs)), 5);
    }
    for (int n = 0; n < 2; ++n) {
      const uint8_t* ql = blk + kQ6_KQl + 64 * n;
      const __m256i l0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ql));
      const __m256i l1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ql + 32));
      const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + kQ6_KQh + 32 * n));
      const __m256i q[4] = {
          _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_and_si256(_mm256_slli_epi16(h, 4), m30)),
          _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(_mm256_slli_epi16(h, 2), m30)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_and_si256(h, m30)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                          _mm256_and_si256(_mm256_srli_epi16(h, 2), m30)),
      };
      // The 8 scales of this half, in both 128-bit lanes.
      const __m256i sc_half = n == 0 ? _mm256_permute2x128_si256(sc16, sc16, 0x00)
                                     : _mm256_permute2x128_si256(sc16, sc16, 0x11);
      for (int g = 0; g < 4; ++g) {
        const __m256i s = BroadcastI16Pair(sc_half, 2 * g);
        for (int t = 0; t < NT; ++t) {
          const uint8_t* xq = a + (t * a_stride + b) * kQ8_KBytes + kQ8_KQs + 128 * n + 32 * g;
          const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq));
          isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(_mm256_maddubs_epi16(q[g], x), s));
        }
      }
    }
    for (int t = 0; t < NT; ++t) {
      const float dx = LoadF32(a + (t * a_stride + b) * kQ8_KBytes);
      acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * dx), _mm256_cvtepi32_ps(isum[t]), acc[t]);
    }
  }
  for (int t = 0; t < NT; ++t) out[t] = HSum(acc[t]);
#else
  float acc[NT] = {};
  float wf[kQK];
  for (int64_t b = 0; b < nb; ++b) {
    DequantizeRow(DType::kQ6_K, w + b * kQ6_KBytes, wf, kQK);
    for (int t = 0; t < NT; ++t) {
      const uint8_t* ab = a + (t * a_stride + b) * kQ8_KBytes;
      const int8_t* xq = reinterpret_cast<const int8_t*>(ab + kQ8_KQs);
      float s = 0;
      for (int i = 0; i < kQK; ++i) s += wf[i] * static_cast<float>(xq[i]);
      acc[t] += s * LoadF32(ab);
    }
  }
  for (int t = 0; t < NT; ++t) out[t] = acc[t];
#endif
}

// ---- Drivers ----------------------------------------------------------------

template <typename Fn>
void ForEachTokenGroup(int64_t n_tokens, Fn&& fn) {
  for (int64_t t = 0; t < n_tokens; t += kMaxDotTokens) {
    fn(t, static_cast<int>(std::min<int64_t>(kMaxDotTokens, n_tokens - t)));
  }
}

// Rows per ParallelFor grain: small enough to balance, large enough that a
// thread's slice is one long sequential stream.
constexpr int64_t kRowGrain = 8;

template <DType T>
void DotFloatMatmul(const WeightView& w, const float* x, int64_t n_tokens, float* y, int64_t ldy,
                    ThreadPool& pool) {
  using Fn = void (*)(const uint8_t*, const float*, int64_t, int64_t, float*);
  static constexpr Fn kFns[kMaxDotTokens] = {&DotFloat<T, 1>, &DotFloat<T, 2>, &DotFloat<T, 3>, &DotFloat<T, 4>};
  const uint8_t* wd = static_cast<const uint8_t*>(w.data);
  pool.ParallelFor(w.ne1, kRowGrain, [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; ++r) {
      const uint8_t* row = wd + static_cast<size_t>(r) * w.row_bytes;
      ForEachTokenGroup(n_tokens, [&](int64_t t, int nt) {
        float out[kMaxDotTokens];
        kFns[nt - 1](row, x + t * w.ne0, w.ne0, w.ne0, out);
        for (int i = 0; i < nt; ++i) y[(t + i) * ldy + r] = out[i];
      });
    }
  });
}

template <typename Act, typename Fn>
void DotQuantMatmul(const WeightView& w, const Act* act, int64_t act_stride, int64_t n_tokens, float* y,
                    int64_t ldy, ThreadPool& pool, const Fn* fns) {
  const uint8_t* wd = static_cast<const uint8_t*>(w.data);
  const int64_t nb = w.ne0 / Traits(w.type).block_elems;
  pool.ParallelFor(w.ne1, kRowGrain, [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; ++r) {
      const uint8_t* row = wd + static_cast<size_t>(r) * w.row_bytes;
      ForEachTokenGroup(n_tokens, [&](int64_t t, int nt) {
        float out[kMaxDotTokens];
        fns[nt - 1](row, act + t * act_stride, act_stride, nb, out);
        for (int i = 0; i < nt; ++i) y[(t + i) * ldy + r] = out[i];
      });
    }
  });
}

// Below this many tokens the row-streaming kernels win; at and above it the
// packed GEMM does (measured on Zen3 AVX2, see bench/kernels_bench.cpp).
int64_t GemmMinTokens(DType t) {
  switch (t) {
    case DType::kF32:
    case DType::kF16:
    case DType::kBF16:
      return 8;
    default:
      return 8;
  }
}

}  // namespace

// ===========================================================================
// Activation quantization (shared with tests through matmul_internal.h).
// ===========================================================================

void QuantizeActQ8(const float* x, int64_t n, ActQ8* out) {
  for (int64_t b = 0; b < n / 32; ++b) {
    const float* xb = x + 32 * b;
    ActQ8& o = out[b];
#if STRATA_MATMUL_AVX2
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 v[4], mx = _mm256_setzero_ps();
    for (int i = 0; i < 4; ++i) {
      v[i] = _mm256_loadu_ps(xb + 8 * i);
      mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, v[i]));
    }
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    const float amax = _mm_cvtss_f32(m);
    const float id = amax > 0 ? 127.0f / amax : 0.0f;
    o.d = amax / 127.0f;
    const __m256 vid = _mm256_set1_ps(id);
    __m256i qi[4];
    for (int i = 0; i < 4; ++i) qi[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], vid));  // round to nearest even
    // Narrow 32 -> 16 -> 8 bits; the packs interleave 128-bit lanes, the permute restores order.
    const __m256i p01 = _mm256_packs_epi32(qi[0], qi[1]), p23 = _mm256_packs_epi32(qi[2], qi[3]);
    const __m256i p = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p01, p23),
                                                  _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o.q), p);
    const __m256i s16 = _mm256_add_epi16(p01, p23);
    const __m256i s32 = _mm256_madd_epi16(s16, _mm256_set1_epi16(1));
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(s32), _mm256_extracti128_si256(s32, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    o.sum8 = 8.0f * o.d * static_cast<float>(_mm_cvtsi128_si32(s));
#else
    float amax = 0;
    for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(xb[i]));
    const float id = amax > 0 ? 127.0f / amax : 0.0f;
    o.d = amax / 127.0f;
    int sum = 0;
    for (int i = 0; i < 32; ++i) {
      const int q = static_cast<int>(std::nearbyint(xb[i] * id));
      o.q[i] = static_cast<int8_t>(q);
      sum += q;
    }
    o.sum8 = 8.0f * o.d * static_cast<float>(sum);
#endif
  }
}

void Matmul(const WeightView& w, const float* x, int64_t n_tokens, float* y, int64_t ldy, ThreadPool& pool) {
  assert(w.row_bytes == RowBytes(w.type, w.ne0));
  assert(ldy >= w.ne1);
  if (n_tokens <= 0 || w.ne1 <= 0) return;
  if (w.ne0 == 0) {
    for (int64_t t = 0; t < n_tokens; ++t) std::fill(y + t * ldy, y + t * ldy + w.ne1, 0.0f);
    return;
  }
  if (n_tokens >= GemmMinTokens(w.type)) return Gemm(w, x, n_tokens, y, ldy, pool);

  switch (w.type) {
    case DType::kF32: return DotFloatMatmul<DType::kF32>(w, x, n_tokens, y, ldy, pool);
    case DType::kF16: return DotFloatMatmul<DType::kF16>(w, x, n_tokens, y, ldy, pool);
    case DType::kBF16: return DotFloatMatmul<DType::kBF16>(w, x, n_tokens, y, ldy, pool);
    case DType::kQ4_0:
    case DType::kQ8_0: {
      const int64_t nb = w.ne0 / 32;
      ActQ8* act = static_cast<ActQ8*>(tls_activations.Get(sizeof(ActQ8) * static_cast<size_t>(nb * n_tokens)));
      for (int64_t t = 0; t < n_tokens; ++t) QuantizeActQ8(x + t * w.ne0, w.ne0, act + t * nb);
      using Fn = void (*)(const uint8_t*, const ActQ8*, int64_t, int64_t, float*);
      static constexpr Fn kQ4[kMaxDotTokens] = {&DotQ4_0<1>, &DotQ4_0<2>, &DotQ4_0<3>, &DotQ4_0<4>};
      static constexpr Fn kQ8[kMaxDotTokens] = {&DotQ8_0<1>, &DotQ8_0<2>, &DotQ8_0<3>, &DotQ8_0<4>};
      return DotQuantMatmul(w, act, nb, n_tokens, y, ldy, pool, w.type == DType::kQ4_0 ? kQ4 : kQ8);
    }
    case DType::kQ4_K:
    case DType::kQ5_K:
    case DType::kQ6_K: {
      const int64_t nb = w.ne0 / kQK;
      const size_t row_bytes = static_cast<size_t>(nb) * kQ8_KBytes;
      uint8_t* act = static_cast<uint8_t*>(tls_activations.Get(row_bytes * static_cast<size_t>(n_tokens)));
      for (int64_t t = 0; t < n_tokens; ++t) QuantizeRow(DType::kQ8_K, x + t * w.ne0, act + t * row_bytes, w.ne0);
      using Fn = void (*)(const uint8_t*, const uint8_t*, int64_t, int64_t, float*);
      static constexpr Fn kQ4K[kMaxDotTokens] = {&DotQ4_K<1>, &DotQ4_K<2>, &DotQ4_K<3>, &DotQ4_K<4>};
      static constexpr Fn kQ5K[kMaxDotTokens] = {&DotQ5_K<1>, &DotQ5_K<2>, &DotQ5_K<3>, &DotQ5_K<4>};
      static constexpr Fn kQ6K[kMaxDotTokens] = {&DotQ6_K<1>, &DotQ6_K<2>, &DotQ6_K<3>, &DotQ6_K<4>};
      // The Q8_K "act" pointer is byte-addressed: stride in blocks is nb, and
      // the kernels scale by kQ8_KBytes themselves.
      const Fn* fns = w.type == DType::kQ4_K ? kQ4K : w.type == DType::kQ5_K ? kQ5K : kQ6K;
      const uint8_t* wd = static_cast<const uint8_t*>(w.data);
      pool.ParallelFor(w.ne1, kRowGrain, [&](int64_t r0, int64_t r1, int) {
        for (int64_t r = r0; r < r1; ++r) {
          const uint8_t* row = wd + static_cast<size_t>(r) * w.row_bytes;
          ForEachTokenGroup(n_tokens, [&](int64_t t, int nt) {
            float out[kMaxDotTokens];
            fns[nt - 1](row, act + static_cast<size_t>(t) * row_bytes, nb, nb, out);
            for (int i = 0; i < nt; ++i) y[(t + i) * ldy + r] = out[i];
          });
        }
      });
      return;
    }
    case DType::kQ8_K:
      break;  // activation-only type; never a weight
  }
  assert(false && "unsupported weight type");
}

}  // namespace strata
