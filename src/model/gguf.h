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
#include <span>
#include <string>
#include <string_view>
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

struct GgufArray;
struct GgufValue {
  GgufType type = GgufType::kUint32;
  // Scalars widen to these; strings are views into the mapping.
  std::variant<uint64_t, int64_t, double, bool, std::string_view, std::shared_ptr<GgufArray>> v;
};
struct GgufArray {
  GgufType elem_type = GgufType::kUint32;
  std::vector<GgufValue> items;  // not used for large numeric/string arrays, see below
  // Arrays are kept lazily: the raw bytes in the mapping plus count; strings
  // arrays are decoded into `strings` once (tokenizer vocabularies).
  uint64_t count = 0;
  const uint8_t* raw = nullptr;  // numeric arrays: count * elem size bytes, little-endian
  std::vector<std::string_view> strings;  // string arrays
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
  const GgufArray* GetArray(std::string_view key) const;    // nullptr if absent or not an array
  // Numeric array decoded to a vector (validates element type is numeric).
  Expected<std::vector<float>> GetFloatArray(std::string_view key) const;
  Expected<std::vector<int64_t>> GetIntArray(std::string_view key) const;
  std::vector<std::string> Keys() const;  // in file order

  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* FindTensor(std::string_view name) const;

 private:
  GgufFile() = default;
  Status Parse();

  std::string path_;
  const uint8_t* base_ = nullptr;
  size_t size_ = 0;
  bool owns_mapping_ = false;
  uint32_t version_ = 0;
  size_t alignment_ = 32;
  std::vector<std::pair<std::string, GgufValue>> kv_;
  std::vector<GgufTensorInfo> tensors_;
};

}  // namespace strata
