#include "kernels/attention.h"

#include "kernels/attention_paged.h"

#include <algorithm>
#include <atomic>
#include <cassert>
#include <cmath>
#include <cstring>
#include <limits>
#include <new>
#include <vector>

#include "kernels/ops.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define STRATA_ATTN_AVX2 1
#include <immintrin.h>
#endif

// How the work is cut:
//  * A work item is (kv head g, tile of query tokens, slice of the key range).
//    Its rows are every (token, q head of g's group) pair, so each K/V row is
//    converted from fp16 once and used by the whole GQA group.
//  * Keys are walked in tiles of kKeyTile with an online softmax per row
//    (running max m, running sum l, rescaled accumulator O); nothing grows
//    with context² and all scratch is thread-local and reused.
//  * Few rows (decode): scores are dot products against fp16 K rows converted
//    in registers; V is read straight from fp16 too. Many rows (prefill): the
//    K and V tiles are converted to fp32 once, Q is stored transposed, and
//    both products are register-blocked broadcast-FMA kernels.
//  * When (kv heads x query tiles) is too few to keep every thread busy, the
//    key range is split and the partial (m, l, O) states are merged after.
//  * One kernel serves contiguous KV (AttentionCausal) and paged KV
//    (AttentionCausalPaged): it is a template over how a position's K/V row
//    is found, so both do the same arithmetic in the same order and their
//    outputs are bit-identical.

namespace strata {
namespace {

constexpr int kKeyTile = 64;
// Rows (tokens x group heads) at or below which the dot-product path is used.
constexpr int kMaxDotRows = 8;
// Target rows per work item in the blocked path: enough to amortize the K/V
// tile conversion, small enough that a tile's working set stays in L2.
constexpr int kTargetRows = 64;
// A key slice shorter than this is not worth a separate work item.
constexpr int64_t kMinSplitKeys = 256;
// Running max before any key is seen: finite, so exp(m_old - m_new) is 0
// rather than NaN when a row meets its first key, and fully masked rows stay
// harmless.
constexpr float kNoMax = -1e30f;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// A grow-only 64-byte aligned float buffer.
class Buffer {
 public:
  Buffer() = default;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { Free(); }
  float* Get(size_t n) {
    if (n > cap_) {
      Free();
      cap_ = std::max(n, cap_ * 2);
      data_ = static_cast<float*>(::operator new(cap_ * sizeof(float), std::align_val_t(64)));
    }
    return data_;
  }

 private:
  void Free() {
    if (data_ != nullptr) ::operator delete(data_, std::align_val_t(64));
    data_ = nullptr;
  }
  float* data_ = nullptr;
  size_t cap_ = 0;
};

struct Scratch {
  Buffer q;      // dot path: [rows][hd]; blocked path: transposed [hd][lanes]
  Buffer k;      // blocked path: K tile [kKeyTile][hd] fp32
  Buffer v;      // blocked path: V tile [kKeyTile][hd] fp32
  Buffer s;      // scores / probabilities of one key tile
  Buffer o;      // [rows][hd] unnormalized output
  Buffer stats;  // m, l, alpha: 3 x lanes
};

thread_local Scratch tls_scratch;
thread_local Buffer tls_partials;  // on the calling thread: split states to merge

// What one work item computes and where its result goes.
struct Item {
  int g;            // kv head
  int64_t t0, t1;   // query tokens [t0, t1)
  int64_t kb, ke;   // keys [kb, ke)
  float* partial;   // null: write normalized rows to out; else [rows][hd + 2] (m, l, O)
};

// K/V rows of one layer stored one after another.
struct ContiguousKv {
  const fp16_t* k;
  const fp16_t* v;
  int64_t row_stride;
  const fp16_t* KRow(int64_t pos) const { return k + pos * row_stride; }
  const fp16_t* VRow(int64_t pos) const { return v + pos * row_stride; }
};

// Kv: ContiguousKv or PagedKvView (rows found through a block table).
template <class Kv>
struct Problem {
  const float* q;
  Kv kv;
  int64_t q_pos0;
  int n_q_heads;
  int group;
  int hd;
  float scale;
  float* out;
};

// Writes a finished row: normalized to out, or (m, l, O) to the split buffer.
template <class Kv>
inline void EmitRow(const Problem<Kv>& p, const Item& it, int r, const float* o_row, float m, float l) {
  const int64_t t = it.t0 + r / p.group;
  const int h = it.g * p.group + r % p.group;
  if (it.partial != nullptr) {
    float* dst = it.partial + static_cast<int64_t>(r) * (p.hd + 2);
    dst[0] = m;
    dst[1] = l;
    std::memcpy(dst + 2, o_row, sizeof(float) * static_cast<size_t>(p.hd));
    return;
  }
  float* dst = p.out + t * static_cast<int64_t>(p.n_q_heads) * p.hd + static_cast<int64_t>(h) * p.hd;
  // l > 0: every row of an unsplit item sees key 0.
  const float inv = 1.0f / l;
  for (int d = 0; d < p.hd; ++d) dst[d] = o_row[d] * inv;
}

// Scalar reference-shaped path: any head_dim, no SIMD. Row by row, key by key.
template <class Kv>
void ProcessItemScalar(const Problem<Kv>& p, const Item& it) {
  Scratch& sc = tls_scratch;
  const int rows = static_cast<int>(it.t1 - it.t0) * p.group;
  float* qrow = sc.q.Get(static_cast<size_t>(p.hd));
  float* o = sc.o.Get(static_cast<size_t>(p.hd));
  for (int r = 0; r < rows; ++r) {
    const int64_t t = it.t0 + r / p.group;
    const int h = it.g * p.group + r % p.group;
    const float* qs = p.q + t * static_cast<int64_t>(p.n_q_heads) * p.hd + static_cast<int64_t>(h) * p.hd;
    for (int d = 0; d < p.hd; ++d) qrow[d] = qs[d] * p.scale;
    std::fill(o, o + p.hd, 0.0f);
    float m = kNoMax, l = 0.0f;
    const int64_t ke = std::min(it.ke, p.q_pos0 + t + 1);
    for (int64_t j = it.kb; j < ke; ++j) {
      const fp16_t* kr = p.kv.KRow(j) + static_cast<int64_t>(it.g) * p.hd;
      const fp16_t* vr = p.kv.VRow(j) + static_cast<int64_t>(it.g) * p.hd;
      float s = 0.0f;
      for (int d = 0; d < p.hd; ++d) s += qrow[d] * Fp16ToFp32(kr[d]);
      if (s > m) {
        const float alpha = std::exp(m - s);
        for (int d = 0; d < p.hd; ++d) o[d] *= alpha;
        l *= alpha;
        m = s;
      }
      const float w = std::exp(s - m);
      l += w;
      for (int d = 0; d < p.hd; ++d) o[d] += w * Fp16ToFp32(vr[d]);
    }
    EmitRow(p, it, r, o, m, l);
  }
}

#ifdef STRATA_ATTN_AVX2

// The kernels' accumulator arrays must live in registers; unrolling the
// fixed-trip loops early lets GCC scalarize them instead of spilling each
// FMA result to the stack.
#define STRATA_UNROLL _Pragma("GCC unroll 16")

inline __m256 LoadHalf8(const fp16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// Sums of 8 vectors in one: lane i = sum of the lanes of v[i].
inline __m256 Reduce8(const __m256* v) {
  const __m256 t0 = _mm256_hadd_ps(v[0], v[1]);
  const __m256 t1 = _mm256_hadd_ps(v[2], v[3]);
  const __m256 t2 = _mm256_hadd_ps(v[4], v[5]);
  const __m256 t3 = _mm256_hadd_ps(v[6], v[7]);
  const __m256 u0 = _mm256_hadd_ps(t0, t1);
  const __m256 u1 = _mm256_hadd_ps(t2, t3);
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

// Dot path scores: RG query rows (fp32, [RG][hd]) against 8/RG keys read as
// fp16 rows, 8 dot products per call. s[r * s_stride + b] = q_r . k_b.
template <int RG>
inline void DotScores(const float* q, int hd, const fp16_t* const* krows, float* s, int s_stride) {
  constexpr int KB = 8 / RG;
  __m256 acc[8];
  STRATA_UNROLL
  for (int i = 0; i < 8; ++i) acc[i] = _mm256_setzero_ps();
  for (int d = 0; d < hd; d += 8) {
    __m256 kv[KB];
    STRATA_UNROLL
    for (int b = 0; b < KB; ++b) kv[b] = LoadHalf8(krows[b] + d);
    STRATA_UNROLL
    for (int r = 0; r < RG; ++r) {
      const __m256 qv = _mm256_load_ps(q + r * hd + d);
      STRATA_UNROLL
      for (int b = 0; b < KB; ++b) acc[r * KB + b] = _mm256_fmadd_ps(qv, kv[b], acc[r * KB + b]);
    }
  }
  alignas(32) float sums[8];
  _mm256_store_ps(sums, Reduce8(acc));
  STRATA_UNROLL
  for (int r = 0; r < RG; ++r) std::memcpy(s + r * s_stride, sums + r * KB, sizeof(float) * KB);
}

// Blocked path scores: st[j][lane] = sum_d kt[j][d] * qt[d][lane] for MK keys
// and NV*8 lanes; broadcasts of K against contiguous transposed Q.
template <int MK, int NV>
inline void QkBlock(const float* kt, int hd, const float* qt, int lanes, float* st) {
  __m256 acc[MK][NV];
  STRATA_UNROLL
  for (int m = 0; m < MK; ++m)
    STRATA_UNROLL
    for (int c = 0; c < NV; ++c) acc[m][c] = _mm256_setzero_ps();
  for (int d = 0; d < hd; ++d) {
    __m256 qv[NV];
    STRATA_UNROLL
    for (int c = 0; c < NV; ++c) qv[c] = _mm256_load_ps(qt + static_cast<int64_t>(d) * lanes + 8 * c);
    STRATA_UNROLL
    for (int m = 0; m < MK; ++m) {
      const __m256 kb = _mm256_broadcast_ss(kt + m * hd + d);
      STRATA_UNROLL
      for (int c = 0; c < NV; ++c) acc[m][c] = _mm256_fmadd_ps(kb, qv[c], acc[m][c]);
    }
  }
  STRATA_UNROLL
  for (int m = 0; m < MK; ++m)
    STRATA_UNROLL
    for (int c = 0; c < NV; ++c) _mm256_store_ps(st + m * lanes + 8 * c, acc[m][c]);
}

template <int NV>
void QkRows(const float* kt, int n, int hd, const float* qt, int lanes, int l0, float* st) {
  constexpr int MK = 6;
  int j = 0;
  for (; j + MK <= n; j += MK) QkBlock<MK, NV>(kt + j * hd, hd, qt + l0, lanes, st + j * lanes + l0);
  const float* kr = kt + j * hd;
  float* sr = st + j * lanes + l0;
  switch (n - j) {
    case 5: QkBlock<5, NV>(kr, hd, qt + l0, lanes, sr); break;
    case 4: QkBlock<4, NV>(kr, hd, qt + l0, lanes, sr); break;
    case 3: QkBlock<3, NV>(kr, hd, qt + l0, lanes, sr); break;
    case 2: QkBlock<2, NV>(kr, hd, qt + l0, lanes, sr); break;
    case 1: QkBlock<1, NV>(kr, hd, qt + l0, lanes, sr); break;
    default: break;
  }
}

// O[r][d0 .. d0+8*NV) = O * alpha[r] + sum_j P(r, j) * V[j][d0 ..], for MR rows.
// P(r, j) = p[r * p_rs + j * p_js]; V rows are fp16 (straight from the cache)
// or fp32 (a converted tile).
template <int MR, int NV, typename T>
inline void PvBlock(const float* p, int64_t p_rs, int64_t p_js, int n, const T* v, int64_t v_stride,
                    const float* alpha, float* o, int hd) {
  __m256 acc[MR][NV];
  STRATA_UNROLL
  for (int r = 0; r < MR; ++r) {
    const __m256 a = _mm256_set1_ps(alpha[r]);
    STRATA_UNROLL
    for (int c = 0; c < NV; ++c) acc[r][c] = _mm256_mul_ps(a, _mm256_load_ps(o + r * hd + 8 * c));
  }
  for (int j = 0; j < n; ++j) {
    __m256 vv[NV];
    const T* vr = v + j * v_stride;
    STRATA_UNROLL
    for (int c = 0; c < NV; ++c) {
      if constexpr (sizeof(T) == 2) {
        vv[c] = LoadHalf8(vr + 8 * c);
      } else {
        vv[c] = _mm256_load_ps(vr + 8 * c);
      }
    }
    STRATA_UNROLL
    for (int r = 0; r < MR; ++r) {
      const __m256 pb = _mm256_broadcast_ss(p + r * p_rs + j * p_js);
      STRATA_UNROLL
      for (int c = 0; c < NV; ++c) acc[r][c] = _mm256_fmadd_ps(pb, vv[c], acc[r][c]);
    }
  }
  STRATA_UNROLL
  for (int r = 0; r < MR; ++r)
    STRATA_UNROLL
    for (int c = 0; c < NV; ++c) _mm256_store_ps(o + r * hd + 8 * c, acc[r][c]);
}

template <int MR, typename T>
inline void PvRowBlock(const float* p, int64_t p_rs, int64_t p_js, int n, const T* v, int64_t v_stride,
                       const float* alpha, float* o, int hd) {
  // Up to 12 accumulators: 4 rows take 3 vectors of V per pass (fewer P
  // broadcasts per FMA), 5-6 rows take 2.
  constexpr int NV = MR <= 4 ? 3 : 2;
  int d = 0;
  for (; d + 8 * NV <= hd; d += 8 * NV) PvBlock<MR, NV>(p, p_rs, p_js, n, v + d, v_stride, alpha, o + d, hd);
  if (NV == 3 && d + 16 <= hd) {
    PvBlock<MR, 2>(p, p_rs, p_js, n, v + d, v_stride, alpha, o + d, hd);
    d += 16;
  }
  if (d < hd) PvBlock<MR, 1>(p, p_rs, p_js, n, v + d, v_stride, alpha, o + d, hd);
}

template <typename T>
void PvRows(const float* p, int64_t p_rs, int64_t p_js, int rows, int n, const T* v, int64_t v_stride,
            const float* alpha, float* o, int hd) {
  constexpr int MR = 6;
  int r = 0;
  for (; r + MR <= rows; r += MR)
    PvRowBlock<MR>(p + r * p_rs, p_rs, p_js, n, v, v_stride, alpha + r, o + r * hd, hd);
  const float* pr = p + r * p_rs;
  float* orow = o + r * hd;
  switch (rows - r) {
    case 5: PvRowBlock<5>(pr, p_rs, p_js, n, v, v_stride, alpha + r, orow, hd); break;
    case 4: PvRowBlock<4>(pr, p_rs, p_js, n, v, v_stride, alpha + r, orow, hd); break;
    case 3: PvRowBlock<3>(pr, p_rs, p_js, n, v, v_stride, alpha + r, orow, hd); break;
    case 2: PvRowBlock<2>(pr, p_rs, p_js, n, v, v_stride, alpha + r, orow, hd); break;
    case 1: PvRowBlock<1>(pr, p_rs, p_js, n, v, v_stride, alpha + r, orow, hd); break;
    default: break;
  }
}

// The dot path's P x V over one key tile [k0, k0 + n), V read as fp16.
inline void PvTile(const Problem<ContiguousKv>& p, int64_t k0, int64_t koff, const float* s, int rows, int n,
                   const float* alpha, float* o) {
  PvRows(s, kKeyTile, 1, rows, n, p.kv.VRow(k0) + koff, p.kv.row_stride, alpha, o, p.hd);
}
// Paged: the tile's rows may span blocks, so one PvRows per run of rows
// inside a block. Runs after the first rescale O by exactly 1.0, so the FMA
// chain per output element is the contiguous one.
inline void PvTile(const Problem<PagedKvView>& p, int64_t k0, int64_t koff, const float* s, int rows, int n,
                   const float* alpha, float* o) {
  static constexpr float kOnes[8] = {1, 1, 1, 1, 1, 1, 1, 1};
  for (int j = 0; j < n;) {
    const int64_t pos = k0 + j;
    const int run = static_cast<int>(std::min<int64_t>(n - j, p.kv.block_size - pos % p.kv.block_size));
    PvRows(s + j, kKeyTile, 1, rows, run, p.kv.VRow(pos) + koff, p.kv.row_stride, j == 0 ? alpha : kOnes, o, p.hd);
    j += run;
  }
}

// Few rows: scores by dot products against fp16 K in registers, a
// row-major score tile [rg][kKeyTile], V read from fp16 directly.
template <int RG, class Kv>
void ProcessItemDot(const Problem<Kv>& p, const Item& it) {
  Scratch& sc = tls_scratch;
  const int hd = p.hd;
  const int rows = static_cast<int>(it.t1 - it.t0) * p.group;
  assert(rows <= RG);
  float* q = sc.q.Get(static_cast<size_t>(RG) * hd);
  float* s = sc.s.Get(static_cast<size_t>(RG) * kKeyTile);
  float* o = sc.o.Get(static_cast<size_t>(RG) * hd);
  float* m = sc.stats.Get(3 * 8);
  float* l = m + 8;
  float* alpha = m + 16;
  for (int r = 0; r < RG; ++r) {
    float* qr = q + r * hd;
    if (r < rows) {
      const int64_t t = it.t0 + r / p.group;
      const int h = it.g * p.group + r % p.group;
      const float* qs = p.q + t * static_cast<int64_t>(p.n_q_heads) * hd + static_cast<int64_t>(h) * hd;
      for (int d = 0; d < hd; ++d) qr[d] = qs[d] * p.scale;
    } else {
      std::fill(qr, qr + hd, 0.0f);  // padding rows: computed, never used
    }
  }
  std::fill(o, o + static_cast<size_t>(rows) * hd, 0.0f);
  for (int r = 0; r < rows; ++r) {
    m[r] = kNoMax;
    l[r] = 0.0f;
  }
  constexpr int KB = 8 / RG;
  const int64_t koff = static_cast<int64_t>(it.g) * hd;
  for (int64_t k0 = it.kb; k0 < it.ke; k0 += kKeyTile) {
    const int n = static_cast<int>(std::min<int64_t>(kKeyTile, it.ke - k0));
    for (int j = 0; j < n; j += KB) {
      const fp16_t* krows[KB];
      // Past the tile's end, reread its last key: the score is never used.
      for (int b = 0; b < KB; ++b) krows[b] = p.kv.KRow(k0 + std::min(j + b, n - 1)) + koff;
      DotScores<RG>(q, hd, krows, s + j, kKeyTile);
    }
    const int n8 = (n + 7) & ~7;
    for (int r = 0; r < rows; ++r) {
      float* sr = s + r * kKeyTile;
      // Keys are consecutive positions, so the causal mask of a row is a cut.
      const int64_t qpos = p.q_pos0 + it.t0 + r / p.group;
      const int valid = static_cast<int>(std::clamp<int64_t>(qpos - k0 + 1, 0, n));
      for (int j = valid; j < n8; ++j) sr[j] = kNegInf;
      __m256 vmax = _mm256_set1_ps(m[r]);
      for (int j = 0; j < n8; j += 8) vmax = _mm256_max_ps(vmax, _mm256_load_ps(sr + j));
      const float m_new = simd::HorizontalMax(vmax);
      const __m256 vm = _mm256_set1_ps(m_new);
      __m256 vsum = _mm256_setzero_ps();
      for (int j = 0; j < n8; j += 8) {
        const __m256 e = simd::Exp8(_mm256_sub_ps(_mm256_load_ps(sr + j), vm));
        _mm256_store_ps(sr + j, e);
        vsum = _mm256_add_ps(vsum, e);
      }
      alpha[r] = std::exp(m[r] - m_new);
      l[r] = l[r] * alpha[r] + simd::HorizontalSum(vsum);
      m[r] = m_new;
    }
    PvTile(p, k0, koff, s, rows, n, alpha, o);
  }
  for (int r = 0; r < rows; ++r) EmitRow(p, it, r, o + r * hd, m[r], l[r]);
}

// Many rows: fp32 K/V tiles, transposed Q [hd][lanes], transposed scores
// [key][lanes] so the online softmax runs down columns, 8 rows per vector.
template <class Kv>
void ProcessItemBlocked(const Problem<Kv>& p, const Item& it) {
  Scratch& sc = tls_scratch;
  const int hd = p.hd;
  const int rows = static_cast<int>(it.t1 - it.t0) * p.group;
  const int lanes = (rows + 15) & ~15;
  float* qt = sc.q.Get(static_cast<size_t>(hd) * lanes);
  float* kt = sc.k.Get(static_cast<size_t>(kKeyTile) * hd);
  float* vt = sc.v.Get(static_cast<size_t>(kKeyTile) * hd);
  float* st = sc.s.Get(static_cast<size_t>(kKeyTile) * lanes);
  float* o = sc.o.Get(static_cast<size_t>(lanes) * hd);
  float* m = sc.stats.Get(3 * static_cast<size_t>(lanes));
  float* l = m + lanes;
  float* alpha = l + lanes;
  for (int r = 0; r < lanes; ++r) {
    if (r < rows) {
      const int64_t t = it.t0 + r / p.group;
      const int h = it.g * p.group + r % p.group;
      const float* qs = p.q + t * static_cast<int64_t>(p.n_q_heads) * hd + static_cast<int64_t>(h) * hd;
      for (int d = 0; d < hd; ++d) qt[static_cast<int64_t>(d) * lanes + r] = qs[d] * p.scale;
    } else {
      for (int d = 0; d < hd; ++d) qt[static_cast<int64_t>(d) * lanes + r] = 0.0f;
    }
    m[r] = kNoMax;
    l[r] = 0.0f;
  }
  std::fill(o, o + static_cast<size_t>(rows) * hd, 0.0f);
  const int64_t koff = static_cast<int64_t>(it.g) * hd;
  const int64_t min_qpos = p.q_pos0 + it.t0;
  alignas(32) int32_t lane_pos[8];
  for (int64_t k0 = it.kb; k0 < it.ke; k0 += kKeyTile) {
    const int n = static_cast<int>(std::min<int64_t>(kKeyTile, it.ke - k0));
    for (int j = 0; j < n; ++j) {
      const fp16_t* kr = p.kv.KRow(k0 + j) + koff;
      const fp16_t* vr = p.kv.VRow(k0 + j) + koff;
      for (int d = 0; d < hd; d += 8) {
        _mm256_store_ps(kt + j * hd + d, LoadHalf8(kr + d));
        _mm256_store_ps(vt + j * hd + d, LoadHalf8(vr + d));
      }
    }
    int l0 = 0;
    for (; l0 + 16 <= lanes; l0 += 16) QkRows<2>(kt, n, hd, qt, lanes, l0, st);
    // Only tiles reaching past the earliest query need a causal mask.
    const bool masked = k0 + n - 1 > min_qpos;
    for (int c = 0; c < lanes; c += 8) {
      __m256 vmax = _mm256_load_ps(m + c);
      if (masked) {
        for (int i = 0; i < 8; ++i) {
          // Padding lanes get the last row's position: finite, harmless.
          const int r = std::min(c + i, rows - 1);
          lane_pos[i] = static_cast<int32_t>(p.q_pos0 + it.t0 + r / p.group - k0);
        }
        const __m256i qpos = _mm256_load_si256(reinterpret_cast<const __m256i*>(lane_pos));
        const __m256 ninf = _mm256_set1_ps(kNegInf);
        for (int j = 0; j < n; ++j) {
          float* sj = st + j * lanes + c;
          const __m256 cut = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(j), qpos));
          const __m256 sv = _mm256_blendv_ps(_mm256_load_ps(sj), ninf, cut);
          _mm256_store_ps(sj, sv);
          vmax = _mm256_max_ps(vmax, sv);
        }
      } else {
        for (int j = 0; j < n; ++j) vmax = _mm256_max_ps(vmax, _mm256_load_ps(st + j * lanes + c));
      }
      __m256 vsum = _mm256_setzero_ps();
      for (int j = 0; j < n; ++j) {
        float* sj = st + j * lanes + c;
        const __m256 e = simd::Exp8(_mm256_sub_ps(_mm256_load_ps(sj), vmax));
        _mm256_store_ps(sj, e);
        vsum = _mm256_add_ps(vsum, e);
      }
      const __m256 mo = _mm256_load_ps(m + c);
      const __m256 a = simd::Exp8(_mm256_sub_ps(mo, vmax));
      _mm256_store_ps(alpha + c, a);
      _mm256_store_ps(l + c, _mm256_fmadd_ps(_mm256_load_ps(l + c), a, vsum));
      _mm256_store_ps(m + c, vmax);
    }
    PvRows(st, 1, lanes, rows, n, vt, hd, alpha, o, hd);
  }
  for (int r = 0; r < rows; ++r) EmitRow(p, it, r, o + r * hd, m[r], l[r]);
}

#endif  // STRATA_ATTN_AVX2

template <class Kv>
void ProcessItem(const Problem<Kv>& p, const Item& it) {
#ifdef STRATA_ATTN_AVX2
  if (p.hd % 8 == 0) {
    const int rows = static_cast<int>(it.t1 - it.t0) * p.group;
    if (rows <= 1) return ProcessItemDot<1>(p, it);
    if (rows <= 2) return ProcessItemDot<2>(p, it);
    if (rows <= 4) return ProcessItemDot<4>(p, it);
    if (rows <= kMaxDotRows) return ProcessItemDot<8>(p, it);
    return ProcessItemBlocked(p, it);
  }
#endif
  ProcessItemScalar(p, it);
}

template <class Kv>
void RunAttention(const Problem<Kv>& p, int64_t n_tokens, int n_kv, ThreadPool& pool) {
  const int hd = p.hd;
  const int64_t q_pos0 = p.q_pos0;
  float* out = p.out;

  // Query tile: all tokens if they fit the dot path, else ~kTargetRows rows.
  int64_t tile_tokens = n_tokens;
  if (n_tokens * p.group > kMaxDotRows) {
    tile_tokens = std::min<int64_t>(n_tokens, std::max(1, (kTargetRows + p.group - 1) / p.group));
  }
  const int64_t n_qtiles = (n_tokens + tile_tokens - 1) / tile_tokens;

  // Too few items for the threads: split the keys. Splits depend on the pool
  // size only, so a given pool always reduces in the same order.
  const int64_t base_items = n_kv * n_qtiles;
  const int64_t n_keys = q_pos0 + n_tokens;
  int64_t n_splits = 1;
  const int64_t want = 4 * static_cast<int64_t>(pool.size());
  if (pool.size() > 1 && base_items < want) {
    n_splits = std::min((want + base_items - 1) / base_items, std::max<int64_t>(1, n_keys / kMinSplitKeys));
  }

  const int64_t rows_per_tile = tile_tokens * p.group;
  const int64_t items_per_tile = n_kv * n_splits;
  const int64_t n_items = n_qtiles * items_per_tile;
  float* partials = nullptr;
  const int64_t partial_rows = static_cast<int64_t>(hd) + 2;
  if (n_splits > 1) {
    partials = tls_partials.Get(static_cast<size_t>(n_items * rows_per_tile * partial_rows));
  }
  auto make_item = [&](int64_t i) {
    // Latest query tiles first: they see the most keys, so the longest items
    // start early and the dynamic queue balances the tail.
    const int64_t qt = n_qtiles - 1 - i / items_per_tile;
    const int64_t rem = i % items_per_tile;
    Item it;
    it.g = static_cast<int>(rem / n_splits);
    const int64_t s = rem % n_splits;
    it.t0 = qt * tile_tokens;
    it.t1 = std::min(n_tokens, it.t0 + tile_tokens);
    const int64_t kend = q_pos0 + it.t1;
    SplitRange(kend, kKeyTile, static_cast<int>(s), static_cast<int>(n_splits), &it.kb, &it.ke);
    it.partial = partials == nullptr ? nullptr : partials + i * rows_per_tile * partial_rows;
    return it;
  };

  std::atomic<int64_t> next{0};
  auto worker = [&](int) {
    for (int64_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < n_items;) {
      ProcessItem(p, make_item(i));
    }
  };
  if (n_items == 1 || pool.size() == 1) {
    worker(0);
  } else {
    pool.Run(worker);
  }
  if (n_splits == 1) return;

  // Merge the split states: O = sum_s e^(m_s - M) O_s / sum_s e^(m_s - M) l_s.
  for (int64_t qt = 0; qt < n_qtiles; ++qt) {
    const int64_t t0 = qt * tile_tokens;
    const int rows = static_cast<int>((std::min(n_tokens, t0 + tile_tokens) - t0) * p.group);
    for (int g = 0; g < n_kv; ++g) {
      // Item index of (qt, g, split 0), matching make_item's order.
      const int64_t i0 = (n_qtiles - 1 - qt) * items_per_tile + g * n_splits;
      for (int r = 0; r < rows; ++r) {
        const int64_t t = t0 + r / p.group;
        const int h = g * p.group + r % p.group;
        float* dst = out + t * static_cast<int64_t>(p.n_q_heads) * hd + static_cast<int64_t>(h) * hd;
        auto state = [&](int64_t s) { return partials + ((i0 + s) * rows_per_tile + r) * partial_rows; };
        float mx = kNoMax;
        for (int64_t s = 0; s < n_splits; ++s) mx = std::max(mx, state(s)[0]);
        float lsum = 0.0f;
        std::fill(dst, dst + hd, 0.0f);
        for (int64_t s = 0; s < n_splits; ++s) {
          const float* st = state(s);
          if (st[1] == 0.0f) continue;  // slice wholly after this query
          const float w = std::exp(st[0] - mx);
          lsum += w * st[1];
          for (int d = 0; d < hd; ++d) dst[d] += w * st[2 + d];
        }
        const float inv = 1.0f / lsum;
        for (int d = 0; d < hd; ++d) dst[d] *= inv;
      }
    }
  }
}

}  // namespace

void AttentionCausal(const float* q, int64_t n_tokens, int64_t q_pos0, const fp16_t* k,
                     const fp16_t* v, int64_t kv_stride, const AttentionShape& shape, float scale,
                     float* out, ThreadPool& pool) {
  if (n_tokens <= 0) return;
  assert(shape.n_kv_heads > 0 && shape.n_q_heads % shape.n_kv_heads == 0);
  const Problem<ContiguousKv> p{q, ContiguousKv{k, v, kv_stride}, q_pos0, shape.n_q_heads,
                                shape.n_q_heads / shape.n_kv_heads, shape.head_dim, scale, out};
  RunAttention(p, n_tokens, shape.n_kv_heads, pool);
}

void AttentionCausalPaged(const float* q, int64_t n_tokens, int64_t q_pos0, const PagedKvView& kv,
                          const AttentionShape& shape, float scale, float* out, ThreadPool& pool) {
  if (n_tokens <= 0) return;
  assert(shape.n_kv_heads > 0 && shape.n_q_heads % shape.n_kv_heads == 0);
  assert(kv.block_size > 0 && kv.block_table != nullptr);
  const Problem<PagedKvView> p{q, kv, q_pos0, shape.n_q_heads, shape.n_q_heads / shape.n_kv_heads,
                               shape.head_dim, scale, out};
  RunAttention(p, n_tokens, shape.n_kv_heads, pool);
}

}  // namespace strata
