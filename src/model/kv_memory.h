// The KV memory seam as the forward pass sees it. The model layer only
// declares it; kv/ implements it (contiguous, paged, virtual), so the model
// never depends on how KV memory is managed.
//
// Thread-safety: implementations are used by one engine thread.
#pragma once

#include <cstddef>
#include <cstdint>

#include "base/status.h"
#include "kernels/fp16.h"

namespace strata {

// K and V of one layer of one sequence: row p holds position p,
// [n_kv_heads * head_dim] fp16 values, rows `stride` elements apart.
struct KvLayerView {
  fp16_t* k = nullptr;
  fp16_t* v = nullptr;
  int64_t stride = 0;
  int64_t capacity = 0;  // positions that may be written
  // Paged memory (null for contiguous): position p lives in block
  // block_table[p / block_size] at row p % block_size, and block b's rows
  // start b * block_stride elements after k (and after v).
  const int32_t* block_table = nullptr;
  int block_size = 0;
  int64_t block_stride = 0;

  fp16_t* KRow(int64_t p) const { return k + RowOffset(p); }
  fp16_t* VRow(int64_t p) const { return v + RowOffset(p); }
  int64_t RowOffset(int64_t p) const {
    if (block_table == nullptr) return p * stride;
    return static_cast<int64_t>(block_table[p / block_size]) * block_stride + (p % block_size) * stride;
  }
};

class KvCache {
 public:
  virtual ~KvCache() = default;
  virtual int n_layers() const = 0;
  virtual int64_t kv_dim() const = 0;
  virtual int max_seqs() const = 0;
  virtual int64_t max_positions() const = 0;
  // Makes positions [0, n_positions) of `seq` writable.
  // Fails with kOutOfRange beyond max_positions().
  virtual Status Reserve(int seq, int64_t n_positions) = 0;
  // REQUIRES: 0 <= seq < max_seqs(), 0 <= layer < n_layers().
  virtual KvLayerView View(int seq, int layer) = 0;
  // Forgets a sequence's KV (the slot can be reused).
  virtual void Clear(int seq) = 0;
  // Bytes of memory actually backing KV (resident), for accounting.
  virtual size_t committed_bytes() const = 0;
  // Bytes backing live sequences (committed minus memory kept for reuse:
  // cached prefix blocks, idle slots' pages).
  virtual size_t used_bytes() const { return committed_bytes(); }
};

}  // namespace strata
