// ContiguousKvCache gives every sequence slot one contiguous virtual range
// per layer (reserved with MAP_NORESERVE, so physical memory is committed by
// the kernel only as positions are written). Attention reads it with the
// plain contiguous kernel.
//
// Thread-safety: not thread-safe; owned by one engine thread.
#pragma once

#include <memory>

#include "model/kv_memory.h"

namespace strata {

class ContiguousKvCache final : public KvCache {
 public:
  static Expected<std::unique_ptr<ContiguousKvCache>> Create(int n_layers, int64_t kv_dim, int max_seqs,
                                                             int64_t max_positions);
  ~ContiguousKvCache() override;

  int n_layers() const override { return n_layers_; }
  int64_t kv_dim() const override { return kv_dim_; }
  int max_seqs() const override { return max_seqs_; }
  int64_t max_positions() const override { return max_positions_; }
  Status Reserve(int seq, int64_t n_positions) override;
  KvLayerView View(int seq, int layer) override;
  void Clear(int seq) override;
  size_t committed_bytes() const override;

 private:
  ContiguousKvCache() = default;
  fp16_t* Base(int seq, int layer, int which);

  int n_layers_ = 0;
  int64_t kv_dim_ = 0;
  int max_seqs_ = 0;
  int64_t max_positions_ = 0;
  size_t plane_bytes_ = 0;  // one K or V plane of one layer of one sequence
  uint8_t* mapping_ = nullptr;
  size_t mapping_bytes_ = 0;
  std::unique_ptr<int64_t[]> reserved_;  // per seq: positions touched so far
};

}  // namespace strata
