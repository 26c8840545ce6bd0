// y = x · Wᵀ for weights in any supported DType: the projection every layer
// runs. Weight rows are contiguous along the input dimension, as in GGUF.
#pragma once

#include <cstddef>
#include <cstdint>

#include "base/thread_pool.h"
#include "kernels/dtype.h"

namespace strata {

// A 2-D weight, ggml layout: ne0 = input features (contiguous), ne1 = output
// features (rows). row_bytes == RowBytes(type, ne0).
struct WeightView {
  DType type = DType::kF32;
  const void* data = nullptr;
  int64_t ne0 = 0;
  int64_t ne1 = 0;
  size_t row_bytes = 0;
};

// x: [n_tokens, w.ne0] row-major floats. y: [n_tokens, w.ne1] with row stride ldy.
// y[t, r] = sum_k W[r, k] * x[t, k]. Uses every thread of the pool.
//
// Accuracy: from MatmulGemmMinTokens(type) tokens on (16 for float weights,
// 32 for quantized ones) the weights are dequantized to f32 and accumulated
// in f32. Below it, quantized weights are dotted with activations rounded to
// int8 per block (32 values for Q4_0/Q8_0, 256 for the K-quants), which adds
// an error of at most sum_blocks amax(x_block)/254 * sum|w_block| (typically
// 5e-3 to 7e-3 relative RMS on Gaussian data, as in llama.cpp's int8 path);
// float weights stay f32 throughout.
// Weight bytes need no alignment. Thread-safety: concurrent calls from
// different threads, each with its own pool, are safe (scratch memory is
// thread-local); steady-state calls do not allocate.
void Matmul(const WeightView& w, const float* x, int64_t n_tokens, float* y, int64_t ldy,
            ThreadPool& pool);

// Weight bytes one Matmul of this weight reads (for bandwidth accounting).
inline size_t WeightBytes(const WeightView& w) { return w.row_bytes * static_cast<size_t>(w.ne1); }

}  // namespace strata
