// GGUF v2/v3 reader: the file is mmapped and tensor data is used in place.
//
// Everything read from the file is validated before use (counts, string and
// array lengths, tensor shapes, offsets, alignment) so a truncated or hostile
// file yields a Status, never a crash or an allocation sized by the attacker.
//
// Thread-safety: a GgufFile is immutable after Open and safe to share.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <variant>
#include <vector>

#include "base/status.h"
#include "kernels/dtype.h"

namespace strata {

// GGUF metadata value types (ids as in the file format).
enum class GgufType : uint32_t {
  kUint8 = 0, kInt8 = 1, kUint16 = 2, kInt16 = 3, kUint32 = 4, kInt32 = 5, kFloat32 = 6,
  kBool = 7, kString = 8, kArray = 9, kUint64 = 10, kInt64 = 11, kFloat64 = 12,
};

// "u32", "string", "array", ...; "unknown" for ids outside the enum.
std::string_view GgufTypeName(GgufType type);
// Bytes of one element of a numeric/bool type; 0 for string, array, unknown.
size_t GgufScalarSize(GgufType type);

struct GgufArray;
struct GgufValue {
  GgufType type = GgufType::kUint32;
  // Scalars widen to these: u8..u64 -> uint64_t, i8..i64 -> int64_t,
  // f32/f64 -> double, bool -> bool; strings are views into the mapping.
  std::variant<uint64_t, int64_t, double, bool, std::string_view, std::shared_ptr<GgufArray>> v;
};
struct GgufArray {
  GgufType elem_type = GgufType::kUint32;
  uint64_t count = 0;
  // Exactly one representation is filled, chosen by elem_type:
  //  - numeric/bool: `raw` points at count * GgufScalarSize(elem_type) bytes
  //    in the mapping (little-endian, possibly unaligned: read with memcpy or
  //    use NumberAt / GgufFile::GetFloatArray / GetIntArray);
  //  - string: `strings` holds views into the mapping, decoded once at parse
  //    time (tokenizer vocabularies of 150K entries);
  //  - array (nested arrays, depth <= 4): `items` holds one kArray value each.
  const uint8_t* raw = nullptr;
  std::vector<std::string_view> strings;
  std::vector<GgufValue> items;

  // Element i of a numeric array widened to double (u64/i64 beyond 2^53 lose
  // precision). REQUIRES: i < count and elem_type numeric or bool.
  double NumberAt(uint64_t i) const;
};

struct GgufTensorInfo {
  std::string name;
  DType type = DType::kF32;
  std::vector<int64_t> shape;  // ne0 first (ne0 is the contiguous dimension)
  uint64_t offset = 0;         // relative to the data section
  const uint8_t* data = nullptr;
  size_t nbytes = 0;
  int64_t n_elements() const;
};

class GgufCursor;  // gguf.cpp: bounds-checked reader over the mapping

class GgufFile {
 public:
  // Maps the file read-only; fails with a message naming the first problem.
  static Expected<std::unique_ptr<GgufFile>> Open(const std::string& path);
  // Parses a buffer owned by the caller (must outlive the GgufFile). Used by
  // the fuzzer and by tests that build files in memory.
  static Expected<std::unique_ptr<GgufFile>> FromBuffer(std::span<const uint8_t> bytes);

  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  uint32_t version() const { return version_; }
  size_t alignment() const { return alignment_; }
  const std::string& path() const { return path_; }

  // Metadata access. Typed getters fail with kNotFound / kInvalidArgument
  // naming the key and the type found.
  const GgufValue* Find(std::string_view key) const;
  bool Has(std::string_view key) const { return Find(key) != nullptr; }
  Expected<std::string> GetString(std::string_view key) const;
  Expected<uint64_t> GetUint(std::string_view key) const;   // any unsigned/signed>=0 integer type
  Expected<double> GetFloat(std::string_view key) const;    // float32/64 or integer
  Expected<bool> GetBool(std::string_view key) const;
  Expected<int64_t> GetInt(std::string_view key) const;     // any integer type that fits int64
  const GgufArray* GetArray(std::string_view key) const;    // nullptr if absent or not an array
  // String array views (into the mapping); fails if absent or not strings.
  Expected<std::span<const std::string_view>> GetStringArray(std::string_view key) const;
  // Numeric array decoded to a vector (validates element type is numeric).
  Expected<std::vector<float>> GetFloatArray(std::string_view key) const;
  Expected<std::vector<int64_t>> GetIntArray(std::string_view key) const;
  std::vector<std::string> Keys() const;  // in file order

  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* FindTensor(std::string_view name) const;
  // File offset where the tensor data section starts (aligned).
  size_t data_offset() const { return data_offset_; }
  size_t file_size() const { return size_; }
  // The whole file as mapped (for content hashing).
  std::span<const uint8_t> bytes() const { return {base_, size_}; }

 private:
  GgufFile() = default;
  Status Parse();
  Status ParseValue(GgufCursor& cur, GgufType type, std::string_view key, int depth,
                    GgufValue* out);
  Status ParseTensorInfos(GgufCursor& cur, uint64_t n_tensors);

  std::string path_;
  const uint8_t* base_ = nullptr;
  size_t size_ = 0;
  bool owns_mapping_ = false;
  uint32_t version_ = 0;
  size_t alignment_ = 32;
  size_t data_offset_ = 0;
  std::vector<std::pair<std::string, GgufValue>> kv_;
  std::vector<GgufTensorInfo> tensors_;
  // Keys and tensor names are views into the mapping, so these indexes stay
  // valid while kv_ / tensors_ grow.
  std::unordered_map<std::string_view, size_t> kv_index_;
  std::unordered_map<std::string_view, size_t> tensor_index_;
};

}  // namespace strata
