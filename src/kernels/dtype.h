// Tensor element types. Numeric values are GGUF/ggml type ids, so a type read
// from a file casts straight to DType (after validation with DTypeFromGguf).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace strata {

enum class DType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ8_0 = 8,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,  // activations only (dot-product partner of the K-quants)
  kBF16 = 30,
};

struct DTypeTraits {
  std::string_view name;   // "q4_K", as llama.cpp prints it
  int64_t block_elems;     // elements per block (1 for float types)
  size_t block_bytes;      // bytes per block
};

// nullopt for ids Strata does not support (the caller reports which one).
std::optional<DType> DTypeFromGguf(uint32_t ggml_type);
// Name of any ggml id, including unsupported ones, for error messages.
std::string_view GgmlTypeName(uint32_t ggml_type);
const DTypeTraits& Traits(DType t);
inline std::string_view DTypeName(DType t) { return Traits(t).name; }
// Bytes of a row of n elements. REQUIRES: n % block_elems == 0.
inline size_t RowBytes(DType t, int64_t n) {
  const auto& tr = Traits(t);
  return static_cast<size_t>(n / tr.block_elems) * tr.block_bytes;
}

}  // namespace strata
