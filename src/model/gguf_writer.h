// GGUF v3 (or v2) writer: collects metadata and tensors in memory, then
// serializes them with alignment padding to a file or a byte vector.
//
// Add* calls never fail on the spot; the first problem (duplicate key or
// tensor, bad alignment, data size not matching the shape) is remembered and
// returned by WriteFile / ToBuffer, so building a file reads as a flat list.
//
// Thread-safety: none; use one writer from one thread.
#pragma once

#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_set>
#include <vector>

#include "base/status.h"
#include "kernels/dtype.h"
#include "model/gguf.h"

namespace strata {

// GGUF element type of a C++ scalar type, for the typed array helpers.
template <typename T> struct GgufTypeOf;
template <> struct GgufTypeOf<uint8_t> { static constexpr GgufType value = GgufType::kUint8; };
template <> struct GgufTypeOf<int8_t> { static constexpr GgufType value = GgufType::kInt8; };
template <> struct GgufTypeOf<uint16_t> { static constexpr GgufType value = GgufType::kUint16; };
template <> struct GgufTypeOf<int16_t> { static constexpr GgufType value = GgufType::kInt16; };
template <> struct GgufTypeOf<uint32_t> { static constexpr GgufType value = GgufType::kUint32; };
template <> struct GgufTypeOf<int32_t> { static constexpr GgufType value = GgufType::kInt32; };
template <> struct GgufTypeOf<uint64_t> { static constexpr GgufType value = GgufType::kUint64; };
template <> struct GgufTypeOf<int64_t> { static constexpr GgufType value = GgufType::kInt64; };
template <> struct GgufTypeOf<float> { static constexpr GgufType value = GgufType::kFloat32; };
template <> struct GgufTypeOf<double> { static constexpr GgufType value = GgufType::kFloat64; };
template <> struct GgufTypeOf<bool> { static constexpr GgufType value = GgufType::kBool; };

class GgufWriter {
 public:
  // version: 2 or 3 (identical layout for little-endian files).
  explicit GgufWriter(uint32_t version = 3);

  // Sets general.alignment (u32). REQUIRES: power of two; default 32.
  void SetAlignment(uint32_t alignment);

  void AddUint8(std::string_view key, uint8_t v) { AddScalar(key, GgufType::kUint8, v); }
  void AddInt8(std::string_view key, int8_t v) { AddScalar(key, GgufType::kInt8, v); }
  void AddUint16(std::string_view key, uint16_t v) { AddScalar(key, GgufType::kUint16, v); }
  void AddInt16(std::string_view key, int16_t v) { AddScalar(key, GgufType::kInt16, v); }
  void AddUint32(std::string_view key, uint32_t v);  // general.alignment also sets the alignment
  void AddInt32(std::string_view key, int32_t v) { AddScalar(key, GgufType::kInt32, v); }
  void AddUint64(std::string_view key, uint64_t v) { AddScalar(key, GgufType::kUint64, v); }
  void AddInt64(std::string_view key, int64_t v) { AddScalar(key, GgufType::kInt64, v); }
  void AddFloat32(std::string_view key, float v) { AddScalar(key, GgufType::kFloat32, v); }
  void AddFloat64(std::string_view key, double v) { AddScalar(key, GgufType::kFloat64, v); }
  void AddBool(std::string_view key, bool v) { AddScalar(key, GgufType::kBool, static_cast<uint8_t>(v ? 1 : 0)); }
  void AddString(std::string_view key, std::string_view v);

  // Numeric or bool array: w.AddArray<float>("k", vec).
  template <typename T>
  void AddArray(std::string_view key, std::span<const T> values) {
    AddEncoded(key, GgufType::kArray, EncodeArray(values));
  }
  void AddStringArray(std::string_view key, std::span<const std::string> values);
  void AddStringArray(std::string_view key, std::span<const std::string_view> values);

  // Escape hatch for values the typed helpers cannot express (nested
  // arrays): `value` is the encoded value as it follows the type id.
  void AddEncoded(std::string_view key, GgufType type, std::vector<uint8_t> value);
  // Encoded array value (elem type, count, elements) for AddEncoded.
  template <typename T>
  static std::vector<uint8_t> EncodeArray(std::span<const T> values) {
    static_assert(std::is_arithmetic_v<T>);
    std::vector<uint8_t> out;
    AppendRaw(&out, static_cast<uint32_t>(GgufTypeOf<T>::value));
    AppendRaw(&out, static_cast<uint64_t>(values.size()));
    for (const T& v : values) {
      if constexpr (std::is_same_v<T, bool>) {
        out.push_back(v ? 1 : 0);
      } else {
        AppendRaw(&out, v);
      }
    }
    return out;
  }

  // Copies `data`, which must be exactly the size the type and shape imply.
  // shape is ne0 first; 1 to 4 dims, each >= 1; ne0 a multiple of the block.
  void AddTensor(std::string_view name, DType type, std::vector<int64_t> shape,
                 std::span<const uint8_t> data);

  // Writes path.tmp then renames it to path, so a failed write leaves no
  // half file under the real name.
  Status WriteFile(const std::string& path) const;
  Expected<std::vector<uint8_t>> ToBuffer() const;

  template <typename T>
  static void AppendRaw(std::vector<uint8_t>* out, const T& v) {
    static_assert(std::is_trivially_copyable_v<T>);
    const size_t at = out->size();
    out->resize(at + sizeof(T));
    std::memcpy(out->data() + at, &v, sizeof(T));
  }
  static void AppendString(std::vector<uint8_t>* out, std::string_view s);

 private:
  struct Kv {
    std::string key;
    GgufType type;
    std::vector<uint8_t> value;
  };
  struct Tensor {
    std::string name;
    DType type;
    std::vector<int64_t> shape;
    std::vector<uint8_t> data;
  };

  template <typename T>
  void AddScalar(std::string_view key, GgufType type, T v) {
    std::vector<uint8_t> bytes;
    AppendRaw(&bytes, v);
    AddEncoded(key, type, std::move(bytes));
  }
  void Fail(Status s);

  uint32_t version_;
  uint32_t alignment_ = 32;
  Status error_;
  std::vector<Kv> kvs_;
  std::unordered_set<std::string> keys_;
  std::vector<Tensor> tensors_;
  std::unordered_set<std::string> tensor_names_;
};

}  // namespace strata
