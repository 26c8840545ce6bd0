#include "model/gguf_writer.h"

#include <cerrno>
#include <cstdio>
#include <limits>
#include <memory>

namespace strata {

namespace {
constexpr uint32_t kGgufMagic = 0x46554747;  // "GGUF"
constexpr char kAlignmentKey[] = "general.alignment";

size_t AlignUp(size_t n, size_t a) { return (n + a - 1) / a * a; }
}  // namespace

GgufWriter::GgufWriter(uint32_t version) : version_(version) {
  if (version != 2 && version != 3) {
    Fail(Status::InvalidArgument("GGUF writer supports versions 2 and 3, not " +
                                 std::to_string(version)));
  }
}

void GgufWriter::Fail(Status s) {
  if (error_.ok()) error_ = std::move(s);
}

void GgufWriter::SetAlignment(uint32_t alignment) { AddUint32(kAlignmentKey, alignment); }

void GgufWriter::AddUint32(std::string_view key, uint32_t v) {
  if (key == kAlignmentKey) {
    if (v == 0 || (v & (v - 1)) != 0) {
      Fail(Status::InvalidArgument("general.alignment must be a power of two, got " +
                                   std::to_string(v)));
      return;
    }
    alignment_ = v;
  }
  AddScalar(key, GgufType::kUint32, v);
}

void GgufWriter::AppendString(std::vector<uint8_t>* out, std::string_view s) {
  AppendRaw(out, static_cast<uint64_t>(s.size()));
  out->insert(out->end(), s.begin(), s.end());
}

void GgufWriter::AddString(std::string_view key, std::string_view v) {
  std::vector<uint8_t> bytes;
  AppendString(&bytes, v);
  AddEncoded(key, GgufType::kString, std::move(bytes));
}

void GgufWriter::AddStringArray(std::string_view key, std::span<const std::string> values) {
  std::vector<uint8_t> bytes;
  AppendRaw(&bytes, static_cast<uint32_t>(GgufType::kString));
  AppendRaw(&bytes, static_cast<uint64_t>(values.size()));
  for (const std::string& s : values) AppendString(&bytes, s);
  AddEncoded(key, GgufType::kArray, std::move(bytes));
}

void GgufWriter::AddStringArray(std::string_view key, std::span<const std::string_view> values) {
  std::vector<uint8_t> bytes;
  AppendRaw(&bytes, static_cast<uint32_t>(GgufType::kString));
  AppendRaw(&bytes, static_cast<uint64_t>(values.size()));
  for (std::string_view s : values) AppendString(&bytes, s);
  AddEncoded(key, GgufType::kArray, std::move(bytes));
}

void GgufWriter::AddEncoded(std::string_view key, GgufType type, std::vector<uint8_t> value) {
  if (key.empty()) {
    Fail(Status::InvalidArgument("GGUF metadata keys must not be empty"));
    return;
  }
  if (key == kAlignmentKey && type != GgufType::kUint32) {
    Fail(Status::InvalidArgument("general.alignment must be written as u32 (use SetAlignment)"));
    return;
  }
  if (!keys_.emplace(key).second) {
    Fail(Status::InvalidArgument("metadata key '" + std::string(key) + "' was added twice"));
    return;
  }
  kvs_.push_back(Kv{std::string(key), type, std::move(value)});
}

void GgufWriter::AddTensor(std::string_view name, DType type, std::vector<int64_t> shape,
                           std::span<const uint8_t> data) {
  const std::string n(name);
  if (name.empty()) {
    Fail(Status::InvalidArgument("tensor names must not be empty"));
    return;
  }
  if (shape.empty() || shape.size() > 4) {
    Fail(Status::InvalidArgument("tensor '" + n + "' has " + std::to_string(shape.size()) +
                                 " dimensions; GGUF allows 1 to 4"));
    return;
  }
  const DTypeTraits& tr = Traits(type);
  int64_t elems = 1;
  for (int64_t d : shape) {
    if (d <= 0 || __builtin_mul_overflow(elems, d, &elems)) {
      Fail(Status::InvalidArgument("tensor '" + n + "' has an invalid dimension " +
                                   std::to_string(d)));
      return;
    }
  }
  if (shape[0] % tr.block_elems != 0) {
    Fail(Status::InvalidArgument("tensor '" + n + "': ne0=" + std::to_string(shape[0]) +
                                 " is not a multiple of the " + std::string(tr.name) +
                                 " block size " + std::to_string(tr.block_elems)));
    return;
  }
  const uint64_t want = static_cast<uint64_t>(elems / tr.block_elems) * tr.block_bytes;
  if (data.size() != want) {
    Fail(Status::InvalidArgument("tensor '" + n + "' needs " + std::to_string(want) +
                                 " bytes of " + std::string(tr.name) + " data, got " +
                                 std::to_string(data.size())));
    return;
  }
  if (!tensor_names_.insert(n).second) {
    Fail(Status::InvalidArgument("tensor '" + n + "' was added twice"));
    return;
  }
  tensors_.push_back(Tensor{n, type, std::move(shape), std::vector<uint8_t>(data.begin(), data.end())});
}

Expected<std::vector<uint8_t>> GgufWriter::ToBuffer() const {
  if (!error_.ok()) return error_;
  std::vector<uint8_t> out;
  AppendRaw(&out, kGgufMagic);
  AppendRaw(&out, version_);
  AppendRaw(&out, static_cast<uint64_t>(tensors_.size()));
  AppendRaw(&out, static_cast<uint64_t>(kvs_.size()));
  for (const Kv& kv : kvs_) {
    AppendString(&out, kv.key);
    AppendRaw(&out, static_cast<uint32_t>(kv.type));
    out.insert(out.end(), kv.value.begin(), kv.value.end());
  }
  // Offsets are relative to the data section; each tensor starts aligned.
  uint64_t offset = 0;
  std::vector<uint64_t> offsets;
  offsets.reserve(tensors_.size());
  for (const Tensor& t : tensors_) {
    offset = AlignUp(offset, alignment_);
    offsets.push_back(offset);
    AppendString(&out, t.name);
    AppendRaw(&out, static_cast<uint32_t>(t.shape.size()));
    for (int64_t d : t.shape) AppendRaw(&out, static_cast<uint64_t>(d));
    AppendRaw(&out, static_cast<uint32_t>(t.type));
    AppendRaw(&out, offset);
    offset += t.data.size();
  }
  if (!tensors_.empty()) {
    const size_t data_start = AlignUp(out.size(), alignment_);
    out.resize(data_start, 0);
    // No padding after the last tensor: readers only need offset + nbytes
    // inside the file, and it keeps every strict prefix of a file invalid.
    for (size_t i = 0; i < tensors_.size(); ++i) {
      out.resize(data_start + offsets[i], 0);
      out.insert(out.end(), tensors_[i].data.begin(), tensors_[i].data.end());
    }
  }
  return out;
}

Status GgufWriter::WriteFile(const std::string& path) const {
  STRATA_ASSIGN_OR_RETURN(std::vector<uint8_t> bytes, ToBuffer());
  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) {
    return Status::IoError("cannot create '" + tmp + "': " + std::strerror(errno));
  }
  const size_t written = std::fwrite(bytes.data(), 1, bytes.size(), f);
  const int write_err = errno;
  if (written != bytes.size()) {
    std::fclose(f);
    std::remove(tmp.c_str());
    return Status::IoError("writing '" + tmp + "' failed after " + std::to_string(written) +
                           " of " + std::to_string(bytes.size()) + " bytes: " +
                           std::strerror(write_err));
  }
  if (std::fclose(f) != 0) {
    const int err = errno;
    std::remove(tmp.c_str());
    return Status::IoError("closing '" + tmp + "' failed: " + std::strerror(err));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    std::remove(tmp.c_str());
    return Status::IoError("cannot rename '" + tmp + "' to '" + path + "': " + std::strerror(err));
  }
  return Status::Ok();
}

}  // namespace strata
