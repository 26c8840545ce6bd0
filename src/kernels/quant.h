// Block formats of the quantized tensor types, bit-compatible with GGUF files
// written by llama.cpp, and row-level conversion to and from float.
#pragma once

#include <cstdint>

#include "kernels/dtype.h"

namespace strata {

// dst[0..n) = src row. REQUIRES: n % block_elems(t) == 0. Any DType.
void DequantizeRow(DType t, const void* src, float* dst, int64_t n);

// Writes RowBytes(t, n) bytes. Any DType except those with no quantizer
// (all listed types have one). Deterministic: same input, same bytes.
void QuantizeRow(DType t, const float* src, void* dst, int64_t n);

// DequantizeRow through the plain scalar loops that define the layouts,
// bypassing SIMD paths. For tests that hold the fast paths to them.
void DequantizeRowReference(DType t, const void* src, float* dst, int64_t n);

}  // namespace strata
