// Causal grouped-query attention over paged KV: keys live in fixed-size
// blocks reached through a block table. It is AttentionCausal's kernel
// (attention.cpp, one template over how a K/V row is found), so for the same
// pool the outputs are bit-identical to the contiguous kernel over the same
// K/V.
#pragma once

#include <cstdint>

#include "base/thread_pool.h"
#include "kernels/attention.h"
#include "kernels/fp16.h"

namespace strata {

// Position p's K row is k + block_table[p / block_size] * block_stride +
// (p % block_size) * row_stride (V likewise from v). Rows are
// [n_kv_heads * head_dim] fp16.
struct PagedKvView {
  const fp16_t* k = nullptr;
  const fp16_t* v = nullptr;
  const int32_t* block_table = nullptr;
  int block_size = 0;
  int64_t block_stride = 0;
  int64_t row_stride = 0;

  const fp16_t* KRow(int64_t p) const { return k + Offset(p); }
  const fp16_t* VRow(int64_t p) const { return v + Offset(p); }
  int64_t Offset(int64_t p) const {
    return static_cast<int64_t>(block_table[p / block_size]) * block_stride + (p % block_size) * row_stride;
  }
};

// As AttentionCausal, with K/V read through `kv`; blocks covering positions
// [0, q_pos0 + n_tokens) must be in the table.
void AttentionCausalPaged(const float* q, int64_t n_tokens, int64_t q_pos0, const PagedKvView& kv,
                          const AttentionShape& shape, float scale, float* out, ThreadPool& pool);

}  // namespace strata
