// Matmul has two regimes, picked by n_tokens:
//
//  * Few tokens (decode, small batches; matmul_dot.cpp): memory-bound. Each
//    weight row is streamed once and dotted with every token while it sits in
//    L1. Quantized
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
thread_local ScratchBuffer tls_xpack;        // caller thread: activations packed for the GEMM tile

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

// c[j * ldc + i] (+)= sum_k pack[k * kMR + i] * xp[k * kNR + j], i < kMR, j < NR.
//
// Both operands are packed so that the loop reads two sequential streams.
// (Broadcasting straight from NR activation rows ne0 floats apart put all NR
// streams in the same L1 set for power-of-two widths.)
//
// The accumulators are named variables, not arrays: GCC keeps an array of
// vectors in memory and stores it back every iteration, which made this loop
// store-bound at a third of FMA peak.
#define STRATA_TILE_COLUMNS(X) X(0) X(1) X(2) X(3) X(4) X(5)
#define STRATA_TILE_COLUMNS_512(X) STRATA_TILE_COLUMNS(X) X(6) X(7) X(8) X(9) X(10) X(11)
template <int NR>
void MicroKernel(const float* pack, const float* xp, int64_t kc, float* c, int64_t ldc, bool accumulate) {
#if STRATA_MATMUL_AVX512
#define DECL(j)                                                   \
  [[maybe_unused]] __m512 c##j##a = _mm512_setzero_ps();          \
  [[maybe_unused]] __m512 c##j##b = _mm512_setzero_ps();
  STRATA_TILE_COLUMNS_512(DECL)
#undef DECL
  for (int64_t k = 0; k < kc; ++k) {
    const __m512 w0 = _mm512_load_ps(pack + k * kMR);
    const __m512 w1 = _mm512_load_ps(pack + k * kMR + 16);
#define STEP(j)                                  \
  if constexpr (j < NR) {                        \
    const __m512 b = _mm512_set1_ps(xp[k * kNR + j]);    \
    c##j##a = _mm512_fmadd_ps(w0, b, c##j##a);   \
    c##j##b = _mm512_fmadd_ps(w1, b, c##j##b);   \
  }
    STRATA_TILE_COLUMNS_512(STEP)
#undef STEP
  }
#define STORE(j)                                                      \
  if constexpr (j < NR) {                                             \
    float* cj = c + j * ldc;                                          \
    if (accumulate) {                                                 \
      c##j##a = _mm512_add_ps(c##j##a, _mm512_loadu_ps(cj));          \
      c##j##b = _mm512_add_ps(c##j##b, _mm512_loadu_ps(cj + 16));     \
    }                                                                 \
    _mm512_storeu_ps(cj, c##j##a);                                    \
    _mm512_storeu_ps(cj + 16, c##j##b);                               \
  }
  STRATA_TILE_COLUMNS_512(STORE)
#undef STORE
#elif STRATA_MATMUL_AVX2
  // 16 rows x 6 tokens: 12 accumulators + 2 weight vectors + 1 broadcast.
  // (Measured on Zen3: ~82% of FMA peak; 24 x 4 has fewer broadcasts per
  // FMA but ran at ~62%.)
#define DECL(j)                                          \
  [[maybe_unused]] __m256 c##j##a = _mm256_setzero_ps(); \
  [[maybe_unused]] __m256 c##j##b = _mm256_setzero_ps();
  STRATA_TILE_COLUMNS(DECL)
#undef DECL
#pragma GCC unroll 4
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 w0 = _mm256_load_ps(pack + k * kMR);
    const __m256 w1 = _mm256_load_ps(pack + k * kMR + 8);
#define STEP(j)                                             \
  if constexpr (j < NR) {                                   \
    const __m256 b = _mm256_broadcast_ss(xp + k * kNR + j); \
    c##j##a = _mm256_fmadd_ps(w0, b, c##j##a);              \
    c##j##b = _mm256_fmadd_ps(w1, b, c##j##b);              \
  }
    STRATA_TILE_COLUMNS(STEP)
#undef STEP
  }
#define STORE(j)                                                 \
  if constexpr (j < NR) {                                        \
    float* cj = c + j * ldc;                                     \
    if (accumulate) {                                            \
      c##j##a = _mm256_add_ps(c##j##a, _mm256_loadu_ps(cj));     \
      c##j##b = _mm256_add_ps(c##j##b, _mm256_loadu_ps(cj + 8)); \
    }                                                            \
    _mm256_storeu_ps(cj, c##j##a);                               \
    _mm256_storeu_ps(cj + 8, c##j##b);                           \
  }
  STRATA_TILE_COLUMNS(STORE)
#undef STORE
#else
  float acc[NR][kMR] = {};
  for (int64_t k = 0; k < kc; ++k) {
    for (int j = 0; j < NR; ++j) {
      const float b = xp[k * kNR + j];
      for (int i = 0; i < kMR; ++i) acc[j][i] += pack[k * kMR + i] * b;
    }
  }
  for (int j = 0; j < NR; ++j) {
    for (int i = 0; i < kMR; ++i) c[j * ldc + i] = accumulate ? c[j * ldc + i] + acc[j][i] : acc[j][i];
  }
#endif
}
#undef STRATA_TILE_COLUMNS
#undef STRATA_TILE_COLUMNS_512

using MicroKernelFn = void (*)(const float*, const float*, int64_t, float*, int64_t, bool);

template <int... N>
constexpr auto MakeKernelTable(std::integer_sequence<int, N...>) {
  return std::array<MicroKernelFn, sizeof...(N)>{&MicroKernel<N + 1>...};
}
constexpr auto kMicroKernels = MakeKernelTable(std::make_integer_sequence<int, kNR>{});

void GemmRows(const WeightView& w, const float* xpack, int64_t n_tokens, float* y, int64_t ldy, int64_t r0,
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
        const float* xt = xpack + t * ne0 + k0 * kNR;  // group t / kNR, column k0
        float* yt = y + t * ldy + p;
        if (mr == kMR) {
          kMicroKernels[nr - 1](pack, xt, kc, yt, ldy, accumulate);
        } else {
          if (accumulate) {
            for (int j = 0; j < nr; ++j) std::memcpy(edge + j * kMR, yt + j * ldy, sizeof(float) * mr);
          }
          kMicroKernels[nr - 1](pack, xt, kc, edge, kMR, accumulate);
          for (int j = 0; j < nr; ++j) std::memcpy(yt + j * ldy, edge + j * kMR, sizeof(float) * mr);
        }
      }
    }
  }
}

// xpack[g][k][j] = x[g * kNR + j][k] (0 past n_tokens): group g of kNR tokens
// occupies ne0 * kNR floats, so group t / kNR starts at xpack + t * ne0.
void PackActivations(const float* x, int64_t ne0, int64_t n_tokens, int64_t g0, int64_t g1, float* xpack) {
  for (int64_t g = g0; g < g1; ++g) {
    float* dst = xpack + g * ne0 * kNR;
    const int nr = static_cast<int>(std::min<int64_t>(kNR, n_tokens - g * kNR));
    for (int j = 0; j < kNR; ++j) {
      if (j < nr) {
        const float* src = x + (g * kNR + j) * ne0;
        for (int64_t k = 0; k < ne0; ++k) dst[k * kNR + j] = src[k];
      } else {
        for (int64_t k = 0; k < ne0; ++k) dst[k * kNR + j] = 0.0f;
      }
    }
  }
}

void Gemm(const WeightView& w, const float* x, int64_t n_tokens, float* y, int64_t ldy, ThreadPool& pool) {
  const int64_t groups = (n_tokens + kNR - 1) / kNR;
  float* xpack = static_cast<float*>(tls_xpack.Get(sizeof(float) * static_cast<size_t>(groups * kNR * w.ne0)));
  pool.ParallelFor(groups, 1, [&](int64_t g0, int64_t g1, int) {
    PackActivations(x, w.ne0, n_tokens, g0, g1, xpack);
  });
  pool.ParallelFor(w.ne1, kMR, [&](int64_t r0, int64_t r1, int) {
    GemmRows(w, xpack, n_tokens, y, ldy, r0, r1);
  });
}

// Rows per ParallelFor grain on the few-token path: small enough to balance,
// large enough that a thread's slice is one long sequential stream.
constexpr int64_t kRowGrain = 8;

}  // namespace

// Crossover measured on Zen3 (2816 x 1024, one thread): the packed GEMM pays
// ~1 cycle per weight element to dequantize and transpose its panels, which
// the row-streaming kernels (up to 4 tokens per pass) avoid; at 4 tokens
// those run at ~48 GFLOP/s for f16 and ~80 GFLOP/s-equivalent for the int8
// paths (which do twice the multiply-adds per instruction), so the GEMM
// (~80 GFLOP/s at 512 tokens) only pulls ahead around 20 tokens for float
// weights and around 40 for quantized ones.
int64_t MatmulGemmMinTokens(DType t) {
  switch (t) {
    case DType::kF32:
    case DType::kF16:
    case DType::kBF16:
      return 16;
    default:
      return 32;
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
  if (n_tokens >= MatmulGemmMinTokens(w.type)) return Gemm(w, x, n_tokens, y, ldy, pool);

  DotActivations act;
  act.x = x;
  act.q_row_bytes = DotActivationRowBytes(w.type, w.ne0);
  if (act.q_row_bytes > 0) {
    uint8_t* q = static_cast<uint8_t*>(tls_activations.Get(act.q_row_bytes * static_cast<size_t>(n_tokens)));
    PrepareDotActivations(w.type, x, w.ne0, n_tokens, q);
    act.q = q;
  }
  pool.ParallelFor(w.ne1, kRowGrain, [&](int64_t r0, int64_t r1, int) {
    DotRows(w, act, n_tokens, y, ldy, r0, r1);
  });
}

}  // namespace strata
