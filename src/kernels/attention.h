// Causal grouped-query attention over a contiguous KV range, computed in tiles
// with an online softmax so memory stays O(tile), not O(context²).
#pragma once

#include <cstdint>

#include "base/thread_pool.h"
#include "kernels/fp16.h"

namespace strata {

struct AttentionShape {
  int n_q_heads = 0;
  int n_kv_heads = 0;  // divides n_q_heads (MHA: equal, MQA: 1)
  int head_dim = 0;
};

// q:   [n_tokens][n_q_heads * head_dim] floats; query t is at absolute
//      position q_pos0 + t and attends keys at positions [0, q_pos0 + t].
// k,v: row p holds position p: [n_kv_heads * head_dim] fp16, rows kv_stride
//      elements apart; at least q_pos0 + n_tokens rows are valid.
// out: [n_tokens][n_q_heads * head_dim] floats; may alias q (each q row is
//      read before the same out row is written).
// scale: usually 1/sqrt(head_dim).
// Uses every thread of the pool; thread-local scratch is reused across calls,
// so steady-state calls do not allocate. Results are deterministic for a given
// pool size (the key range may be split differently for other sizes).
void AttentionCausal(const float* q, int64_t n_tokens, int64_t q_pos0, const fp16_t* k,
                     const fp16_t* v, int64_t kv_stride, const AttentionShape& shape, float scale,
                     float* out, ThreadPool& pool);

}  // namespace strata
