// Pieces shared by the matmul kernels (matmul.cpp: dispatch and the packed
// GEMM; matmul_dot.cpp: few-token dot products) and their tests. Internal to
// kernels/.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/matmul.h"

namespace strata {

// Matmul uses the packed f32 GEMM from this many tokens on, the few-token
// dot products below it.
int64_t MatmulGemmMinTokens(DType t);

// ---- Activation formats of the integer dot products -------------------------
//
// Q4_0 / Q8_0 weights meet activations quantized in blocks of 32:
// x[i] ~= d[b] * q[i], q in [-127, 127]. One token's row of nb blocks is
//   [q: nb * 32 int8][d: nb float][sum8: nb float]
// (structure of arrays: the kernels load eight block scales with one load).
// sum8[b] = 8 * d[b] * sum(q of block b) corrects for Q4_0 nibbles being
// stored +8 and multiplied as unsigned bytes.
//
// With pair_interleave (the Q4_0 partner), the q bytes of each full pair of
// blocks (2i, 2i+1) are stored as [b0 0..15][b1 0..15][b0 16..31][b1 16..31],
// matching the low and high nibbles of two Q4_0 blocks loaded side by side; a
// last odd block keeps natural order.
inline size_t ActQ8RowBytes(int64_t nb) { return static_cast<size_t>(nb) * 40; }
// REQUIRES: n % 32 == 0; row has ActQ8RowBytes(n / 32) bytes, 32-byte aligned.
void QuantizeActQ8(const float* x, int64_t n, bool pair_interleave, uint8_t* row);

// K-quant weights meet activations quantized per 256 (like ggml's Q8_K, with
// the sub-block sums the kernels want precomputed and q 64-byte aligned).
struct alignas(64) ActQ8K {
  float d;
  int16_t bsum16[16];  // sums of q over each 16 (Q6_K sub-blocks)
  int16_t bsum32[8];   // sums of q over each 32 (Q4_K / Q5_K sub-blocks)
  uint8_t pad[12];
  int8_t q[256];
};
static_assert(sizeof(ActQ8K) == 320);
// REQUIRES: n % 256 == 0. Writes n / 256 blocks.
void QuantizeActQ8K(const float* x, int64_t n, ActQ8K* out);

// ---- Few-token dot products (matmul_dot.cpp) ---------------------------------

// Activations prepared once per Matmul call for the rows kernels below.
struct DotActivations {
  const float* x = nullptr;     // [n_tokens][ne0] floats (float weights)
  const uint8_t* q = nullptr;   // quantized rows (quantized weights)
  size_t q_row_bytes = 0;       // bytes per token in q
};

// Bytes of quantized activations per token for weights of type t (0: none).
size_t DotActivationRowBytes(DType t, int64_t ne0);
// Fills `out` (n_tokens * DotActivationRowBytes bytes, 64-byte aligned).
void PrepareDotActivations(DType t, const float* x, int64_t ne0, int64_t n_tokens, uint8_t* out);

// y[t * ldy + r] for r in [r0, r1), t < n_tokens: each weight row is loaded
// once per group of up to kMaxDotTokens tokens.
inline constexpr int kMaxDotTokens = 4;
void DotRows(const WeightView& w, const DotActivations& act, int64_t n_tokens, float* y, int64_t ldy,
             int64_t r0, int64_t r1);

}  // namespace strata
