// Per-layer call-outs of the forward pass. KV techniques (layer-wise loading
// from the cache store, storing computed KV, selective recompute, capturing
// layer inputs) plug in here, so the model code stays one clean forward pass.
//
// Every method has a no-op default; hooks run on the engine thread, between
// the layer's kernels.
#pragma once

#include <cstdint>

#include "base/status.h"

namespace strata {

struct BatchSeq;

class ForwardHooks {
 public:
  virtual ~ForwardHooks() = default;
  // Before layer `layer` reads KV: a loader waits here for this layer's
  // chunk to arrive. An error aborts the forward pass.
  virtual Status BeforeAttention(int layer) { (void)layer; return Status::Ok(); }
  // After the batch's new K/V rows of `layer` were written to KV memory.
  virtual void AfterKvWritten(int layer, const BatchSeq& seq) { (void)layer; (void)seq; }
  // The normalized input of `layer` for all batch tokens, [n_tokens][dim].
  virtual void LayerInput(int layer, const float* x, int64_t n_tokens, int dim) {
    (void)layer; (void)x; (void)n_tokens; (void)dim;
  }
};

}  // namespace strata
