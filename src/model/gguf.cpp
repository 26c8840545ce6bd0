#include "model/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cinttypes>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <limits>

namespace strata {

// Values are decoded with memcpy straight from the file, which is
// little-endian for every GGUF Strata accepts.
static_assert(std::endian::native == std::endian::little, "GGUF reader assumes a little-endian host");

namespace {

constexpr uint32_t kGgufMagic = 0x46554747;  // "GGUF" read as little-endian u32
constexpr size_t kDefaultAlignment = 32;
constexpr uint32_t kMaxDims = 4;
// Nesting is allowed by the spec but never used by real models; a small cap
// keeps recursion (and thus stack use) bounded for hostile files.
constexpr int kMaxArrayDepth = 4;
// Smallest possible encodings, used to reject counts that cannot fit in the
// bytes that remain before anything is allocated.
constexpr uint64_t kMinKvBytes = 8 + 4 + 1;              // key len, type, 1-byte value
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 8 + 4 + 8;  // name len, n_dims, 1 dim, type, offset
constexpr uint64_t kMinStringBytes = 8;
constexpr uint64_t kMinArrayBytes = 4 + 8;

std::string Format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string Format(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  va_list ap2;
  va_copy(ap2, ap);
  int n = std::vsnprintf(nullptr, 0, fmt, ap);
  va_end(ap);
  std::string out;
  if (n > 0) {
    out.resize(static_cast<size_t>(n));
    std::vsnprintf(out.data(), out.size() + 1, fmt, ap2);
  }
  va_end(ap2);
  return out;
}

// Quoted, printable, length-capped rendering of a name from the file, so a
// hostile 1 MB key or control bytes do not end up verbatim in a message.
std::string Quote(std::string_view s) {
  constexpr size_t kMax = 80;
  std::string out = "'";
  for (size_t i = 0; i < s.size() && i < kMax; ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    }
  }
  if (s.size() > kMax) out += "...";
  out += "'";
  return out;
}

bool IsValidType(uint32_t t) { return t <= static_cast<uint32_t>(GgufType::kFloat64); }

bool IsNumeric(GgufType t) { return GgufScalarSize(t) != 0 && t != GgufType::kBool; }
bool IsInteger(GgufType t) {
  switch (t) {
    case GgufType::kUint8: case GgufType::kInt8: case GgufType::kUint16: case GgufType::kInt16:
    case GgufType::kUint32: case GgufType::kInt32: case GgufType::kUint64: case GgufType::kInt64:
      return true;
    default:
      return false;
  }
}

template <typename T>
T Load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

// Decodes one scalar of `type` at p into the widened variant representation.
// REQUIRES: GgufScalarSize(type) bytes readable at p.
GgufValue DecodeScalar(GgufType type, const uint8_t* p) {
  GgufValue val;
  val.type = type;
  switch (type) {
    case GgufType::kUint8: val.v = uint64_t{Load<uint8_t>(p)}; break;
    case GgufType::kInt8: val.v = int64_t{Load<int8_t>(p)}; break;
    case GgufType::kUint16: val.v = uint64_t{Load<uint16_t>(p)}; break;
    case GgufType::kInt16: val.v = int64_t{Load<int16_t>(p)}; break;
    case GgufType::kUint32: val.v = uint64_t{Load<uint32_t>(p)}; break;
    case GgufType::kInt32: val.v = int64_t{Load<int32_t>(p)}; break;
    case GgufType::kUint64: val.v = uint64_t{Load<uint64_t>(p)}; break;
    case GgufType::kInt64: val.v = int64_t{Load<int64_t>(p)}; break;
    case GgufType::kFloat32: val.v = double{Load<float>(p)}; break;
    case GgufType::kFloat64: val.v = Load<double>(p); break;
    case GgufType::kBool: val.v = Load<uint8_t>(p) != 0; break;
    default: break;
  }
  return val;
}

}  // namespace

std::string_view GgufTypeName(GgufType type) {
  switch (type) {
    case GgufType::kUint8: return "u8";
    case GgufType::kInt8: return "i8";
    case GgufType::kUint16: return "u16";
    case GgufType::kInt16: return "i16";
    case GgufType::kUint32: return "u32";
    case GgufType::kInt32: return "i32";
    case GgufType::kFloat32: return "f32";
    case GgufType::kBool: return "bool";
    case GgufType::kString: return "string";
    case GgufType::kArray: return "array";
    case GgufType::kUint64: return "u64";
    case GgufType::kInt64: return "i64";
    case GgufType::kFloat64: return "f64";
  }
  return "unknown";
}

size_t GgufScalarSize(GgufType type) {
  switch (type) {
    case GgufType::kUint8: case GgufType::kInt8: case GgufType::kBool: return 1;
    case GgufType::kUint16: case GgufType::kInt16: return 2;
    case GgufType::kUint32: case GgufType::kInt32: case GgufType::kFloat32: return 4;
    case GgufType::kUint64: case GgufType::kInt64: case GgufType::kFloat64: return 8;
    default: return 0;
  }
}

double GgufArray::NumberAt(uint64_t i) const {
  const size_t es = GgufScalarSize(elem_type);
  if (raw == nullptr || es == 0 || i >= count) return 0.0;  // REQUIRES violated; stay defined
  GgufValue v = DecodeScalar(elem_type, raw + i * es);
  if (auto* u = std::get_if<uint64_t>(&v.v)) return static_cast<double>(*u);
  if (auto* s = std::get_if<int64_t>(&v.v)) return static_cast<double>(*s);
  if (auto* d = std::get_if<double>(&v.v)) return *d;
  if (auto* b = std::get_if<bool>(&v.v)) return *b ? 1.0 : 0.0;
  return 0.0;
}

int64_t GgufTensorInfo::n_elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;  // validated at parse time not to overflow
  return n;
}

// Bounds-checked sequential reader. Every read states what it is reading so
// a truncated file is reported as "needed N bytes at offset X for <what>".
class GgufCursor {
 public:
  GgufCursor(const uint8_t* base, size_t size) : base_(base), size_(size) {}

  size_t pos() const { return pos_; }
  size_t remaining() const { return size_ - pos_; }
  const uint8_t* here() const { return base_ + pos_; }

  Status Need(uint64_t n, std::string_view what, std::string_view name = {}) const {
    if (n <= remaining()) return Status::Ok();
    return Status::Corrupt(Format(
        "file is truncated: needed %" PRIu64 " bytes at offset %zu for %.*s%s%s, but the file "
        "has only %zu bytes",
        n, pos_, static_cast<int>(what.size()), what.data(), name.empty() ? "" : " ",
        name.empty() ? "" : Quote(name).c_str(), size_));
  }

  template <typename T>
  Status Read(T* out, std::string_view what, std::string_view name = {}) {
    STRATA_RETURN_IF_ERROR(Need(sizeof(T), what, name));
    std::memcpy(out, base_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return Status::Ok();
  }

  Status ReadString(std::string_view* out, std::string_view what, std::string_view name = {}) {
    uint64_t len = 0;
    STRATA_RETURN_IF_ERROR(Read(&len, what, name));
    STRATA_RETURN_IF_ERROR(Need(len, what, name));
    *out = std::string_view(reinterpret_cast<const char*>(base_ + pos_), static_cast<size_t>(len));
    pos_ += static_cast<size_t>(len);
    return Status::Ok();
  }

  // REQUIRES: n <= remaining() (checked by the caller with Need).
  void Skip(size_t n) { pos_ += n; }

 private:
  const uint8_t* base_;
  size_t size_;
  size_t pos_ = 0;
};

GgufFile::~GgufFile() {
  if (owns_mapping_ && base_ != nullptr) {
    munmap(const_cast<uint8_t*>(base_), size_);
  }
}

Expected<std::unique_ptr<GgufFile>> GgufFile::Open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    if (err == ENOENT) return Status::NotFound("cannot open GGUF file '" + path + "': no such file");
    return Status::IoError("cannot open GGUF file '" + path + "': " + std::strerror(err));
  }
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    return Status::IoError("cannot stat '" + path + "': " + std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return Status::InvalidArgument("'" + path + "' is not a regular file");
  }
  const size_t size = static_cast<size_t>(st.st_size);
  if (size == 0) {
    ::close(fd);
    return Status::Corrupt("'" + path + "' is empty, not a GGUF file");
  }
  void* map = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  int map_err = errno;
  ::close(fd);  // the mapping keeps the file alive
  if (map == MAP_FAILED) {
    return Status::IoError("cannot mmap '" + path + "' (" + std::to_string(size) +
                           " bytes): " + std::strerror(map_err));
  }
  std::unique_ptr<GgufFile> file(new GgufFile());
  file->path_ = path;
  file->base_ = static_cast<const uint8_t*>(map);
  file->size_ = size;
  file->owns_mapping_ = true;  // from here the destructor unmaps, also on parse errors
  Status st2 = file->Parse();
  if (!st2.ok()) return st2.WithContext("reading '" + path + "'");
  return file;
}

Expected<std::unique_ptr<GgufFile>> GgufFile::FromBuffer(std::span<const uint8_t> bytes) {
  std::unique_ptr<GgufFile> file(new GgufFile());
  file->path_ = "<buffer>";
  file->base_ = bytes.data();
  file->size_ = bytes.size();
  STRATA_RETURN_IF_ERROR(file->Parse());
  return file;
}

Status GgufFile::Parse() {
  GgufCursor cur(base_, size_);

  uint32_t magic = 0;
  STRATA_RETURN_IF_ERROR(cur.Read(&magic, "the magic number"));
  if (magic != kGgufMagic) {
    char shown[5] = {};
    std::memcpy(shown, &magic, 4);
    for (char& c : shown) {
      if (c != 0 && (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f)) c = '?';
    }
    return Status::Corrupt(Format("not a GGUF file: magic is 0x%08x ('%.4s'), expected 'GGUF'",
                                  magic, shown));
  }

  STRATA_RETURN_IF_ERROR(cur.Read(&version_, "the version"));
  if (version_ == 1) {
    return Status::Unsupported(
        "GGUF version 1 is not supported (it uses 32-bit lengths); re-convert the model with a "
        "current llama.cpp to get version 3");
  }
  if (version_ != 2 && version_ != 3) {
    if ((__builtin_bswap32(version_) == 2 || __builtin_bswap32(version_) == 3)) {
      return Status::Unsupported("this is a big-endian GGUF file, which Strata does not support; "
                                 "use a little-endian conversion of the model");
    }
    return Status::Unsupported(Format(
        "GGUF version %u is not supported; Strata reads versions 2 and 3", version_));
  }

  uint64_t n_tensors = 0, n_kv = 0;
  STRATA_RETURN_IF_ERROR(cur.Read(&n_tensors, "the tensor count"));
  STRATA_RETURN_IF_ERROR(cur.Read(&n_kv, "the metadata count"));
  const uint64_t rem = cur.remaining();
  if (n_kv > rem / kMinKvBytes) {
    return Status::Corrupt(Format(
        "header claims %" PRIu64 " metadata entries, but only %" PRIu64
        " bytes follow (each entry needs at least %" PRIu64 "); the file is truncated or corrupt",
        n_kv, rem, kMinKvBytes));
  }
  if (n_tensors > rem / kMinTensorInfoBytes ||
      n_kv * kMinKvBytes + n_tensors * kMinTensorInfoBytes > rem) {
    return Status::Corrupt(Format(
        "header claims %" PRIu64 " tensors and %" PRIu64 " metadata entries, but only %" PRIu64
        " bytes follow; the file is truncated or corrupt",
        n_tensors, n_kv, rem));
  }

  kv_.reserve(static_cast<size_t>(n_kv));
  kv_index_.reserve(static_cast<size_t>(n_kv));
  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string_view key;
    STRATA_RETURN_IF_ERROR(cur.ReadString(&key, "a metadata key"));
    if (key.empty()) {
      return Status::Corrupt(Format("metadata entry %" PRIu64 " has an empty key", i));
    }
    uint32_t type_id = 0;
    STRATA_RETURN_IF_ERROR(cur.Read(&type_id, "the value type of metadata", key));
    if (!IsValidType(type_id)) {
      return Status::Corrupt(Format("metadata %s has unknown value type %u (valid: 0..12)",
                                    Quote(key).c_str(), type_id));
    }
    GgufValue value;
    STRATA_RETURN_IF_ERROR(ParseValue(cur, static_cast<GgufType>(type_id), key, 0, &value));
    if (!kv_index_.emplace(key, kv_.size()).second) {
      return Status::Corrupt("metadata key " + Quote(key) + " appears more than once");
    }
    kv_.emplace_back(std::string(key), std::move(value));
  }

  if (const GgufValue* a = Find("general.alignment")) {
    if (a->type != GgufType::kUint32) {
      return Status::Corrupt("general.alignment must be a u32, but it is a " +
                             std::string(GgufTypeName(a->type)));
    }
    const uint64_t align = std::get<uint64_t>(a->v);
    if (align == 0 || !std::has_single_bit(align)) {
      return Status::Corrupt(Format("general.alignment is %" PRIu64 ", which is not a power of two",
                                    align));
    }
    alignment_ = static_cast<size_t>(align);
  } else {
    alignment_ = kDefaultAlignment;
  }

  return ParseTensorInfos(cur, n_tensors);
}

Status GgufFile::ParseValue(GgufCursor& cur, GgufType type, std::string_view key, int depth,
                            GgufValue* out) {
  out->type = type;
  if (const size_t es = GgufScalarSize(type); es != 0) {
    STRATA_RETURN_IF_ERROR(cur.Need(es, "the value of metadata", key));
    if (type == GgufType::kBool && *cur.here() > 1) {
      return Status::Corrupt(Format("metadata %s is a bool with byte value %u (must be 0 or 1)",
                                    Quote(key).c_str(), *cur.here()));
    }
    *out = DecodeScalar(type, cur.here());
    cur.Skip(es);
    return Status::Ok();
  }
  if (type == GgufType::kString) {
    std::string_view s;
    STRATA_RETURN_IF_ERROR(cur.ReadString(&s, "the string value of metadata", key));
    out->v = s;
    return Status::Ok();
  }
  // type == kArray
  if (depth >= kMaxArrayDepth) {
    return Status::Unsupported(Format("metadata %s nests arrays more than %d levels deep",
                                      Quote(key).c_str(), kMaxArrayDepth));
  }
  uint32_t elem_id = 0;
  uint64_t count = 0;
  STRATA_RETURN_IF_ERROR(cur.Read(&elem_id, "the element type of array", key));
  if (!IsValidType(elem_id)) {
    return Status::Corrupt(Format("array %s has unknown element type %u (valid: 0..12)",
                                  Quote(key).c_str(), elem_id));
  }
  STRATA_RETURN_IF_ERROR(cur.Read(&count, "the element count of array", key));
  const GgufType elem = static_cast<GgufType>(elem_id);
  const size_t es = GgufScalarSize(elem);
  const uint64_t min_elem = es != 0 ? es : (elem == GgufType::kString ? kMinStringBytes : kMinArrayBytes);
  // Checked before anything is reserved: a count of 2^60 fails here.
  if (count > cur.remaining() / min_elem) {
    return Status::Corrupt(Format(
        "file is truncated: array %s claims %" PRIu64 " elements of type %s (at least %" PRIu64
        " bytes each) at offset %zu, but only %zu bytes remain",
        Quote(key).c_str(), count, std::string(GgufTypeName(elem)).c_str(), min_elem, cur.pos(),
        cur.remaining()));
  }
  auto arr = std::make_shared<GgufArray>();
  arr->elem_type = elem;
  arr->count = count;
  if (es != 0) {
    const size_t nbytes = static_cast<size_t>(count) * es;  // <= remaining, checked above
    if (elem == GgufType::kBool) {
      const uint8_t* p = cur.here();
      for (size_t i = 0; i < nbytes; ++i) {
        if (p[i] > 1) {
          return Status::Corrupt(Format("bool array %s has byte value %u at index %zu (must be 0 or 1)",
                                        Quote(key).c_str(), p[i], i));
        }
      }
    }
    arr->raw = cur.here();
    cur.Skip(nbytes);
  } else if (elem == GgufType::kString) {
    arr->strings.reserve(static_cast<size_t>(count));
    for (uint64_t i = 0; i < count; ++i) {
      std::string_view s;
      STRATA_RETURN_IF_ERROR(cur.ReadString(&s, "a string element of array", key));
      arr->strings.push_back(s);
    }
  } else {
    arr->items.resize(static_cast<size_t>(count));
    for (uint64_t i = 0; i < count; ++i) {
      STRATA_RETURN_IF_ERROR(ParseValue(cur, GgufType::kArray, key, depth + 1, &arr->items[i]));
    }
  }
  out->v = std::move(arr);
  return Status::Ok();
}

Status GgufFile::ParseTensorInfos(GgufCursor& cur, uint64_t n_tensors) {
  tensors_.reserve(static_cast<size_t>(n_tensors));
  tensor_index_.reserve(static_cast<size_t>(n_tensors));
  for (uint64_t i = 0; i < n_tensors; ++i) {
    std::string_view name;
    STRATA_RETURN_IF_ERROR(cur.ReadString(&name, "a tensor name"));
    if (name.empty()) return Status::Corrupt(Format("tensor %" PRIu64 " has an empty name", i));
    const std::string qname = Quote(name);
    uint32_t n_dims = 0;
    STRATA_RETURN_IF_ERROR(cur.Read(&n_dims, "the dimension count of tensor", name));
    if (n_dims == 0 || n_dims > kMaxDims) {
      return Status::Corrupt(Format("tensor %s has %u dimensions; GGUF allows 1 to %u",
                                    qname.c_str(), n_dims, kMaxDims));
    }
    GgufTensorInfo info;
    info.name = std::string(name);
    info.shape.resize(n_dims);
    int64_t n_elements = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      uint64_t dim = 0;
      STRATA_RETURN_IF_ERROR(cur.Read(&dim, "the shape of tensor", name));
      if (dim == 0) {
        return Status::Corrupt(Format("tensor %s has dimension %u of size 0", qname.c_str(), d));
      }
      if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          __builtin_mul_overflow(n_elements, static_cast<int64_t>(dim), &n_elements)) {
        return Status::Corrupt(Format("tensor %s has a shape whose element count overflows "
                                      "64 bits (dimension %u is %" PRIu64 ")",
                                      qname.c_str(), d, dim));
      }
      info.shape[d] = static_cast<int64_t>(dim);
    }
    uint32_t type_id = 0;
    STRATA_RETURN_IF_ERROR(cur.Read(&type_id, "the type of tensor", name));
    std::optional<DType> dtype = DTypeFromGguf(type_id);
    if (!dtype) {
      return Status::Unsupported(Format(
          "tensor %s has type %s (%u), which Strata does not support; supported: f32, f16, bf16, "
          "q4_0, q8_0, q4_K, q5_K, q6_K",
          qname.c_str(), std::string(GgmlTypeName(type_id)).c_str(), type_id));
    }
    info.type = *dtype;
    const DTypeTraits& tr = Traits(info.type);
    if (info.shape[0] % tr.block_elems != 0) {
      return Status::Corrupt(Format(
          "tensor %s has ne0=%" PRId64 ", which is not a multiple of the %s block size %" PRId64,
          qname.c_str(), info.shape[0], std::string(tr.name).c_str(), tr.block_elems));
    }
    uint64_t nbytes = 0;
    if (__builtin_mul_overflow(static_cast<uint64_t>(n_elements / tr.block_elems),
                               static_cast<uint64_t>(tr.block_bytes), &nbytes) ||
        nbytes > size_) {
      return Status::Corrupt(Format("tensor %s (%" PRId64 " elements of %s) is larger than the "
                                    "whole file (%zu bytes)",
                                    qname.c_str(), n_elements, std::string(tr.name).c_str(), size_));
    }
    info.nbytes = static_cast<size_t>(nbytes);
    STRATA_RETURN_IF_ERROR(cur.Read(&info.offset, "the data offset of tensor", name));
    if (info.offset % alignment_ != 0) {
      return Status::Corrupt(Format("tensor %s has data offset %" PRIu64
                                    ", which is not a multiple of the alignment %zu",
                                    qname.c_str(), info.offset, alignment_));
    }
    if (!tensor_index_.emplace(name, tensors_.size()).second) {
      return Status::Corrupt("tensor name " + qname + " appears more than once");
    }
    tensors_.push_back(std::move(info));
  }

  // The data section starts at the next multiple of the alignment. A file
  // without tensors may end right after its metadata.
  const size_t pos = cur.pos();
  const size_t pad = (alignment_ - pos % alignment_) % alignment_;
  if (pad > size_ - pos) {
    if (!tensors_.empty()) {
      return Status::Corrupt(Format(
          "file is truncated: the tensor data section should start at offset %zu (aligned to %zu), "
          "but the file has only %zu bytes",
          pos + pad, alignment_, size_));
    }
    data_offset_ = size_;
  } else {
    data_offset_ = pos + pad;
  }

  const size_t data_size = size_ - data_offset_;
  for (GgufTensorInfo& t : tensors_) {
    if (t.offset > data_size || t.nbytes > data_size - t.offset) {
      return Status::Corrupt(Format(
          "tensor %s needs bytes %zu..%zu of the file (data offset %" PRIu64 " + %zu bytes), but "
          "the file has only %zu bytes; the file is truncated or corrupt",
          Quote(t.name).c_str(), data_offset_ + std::min<uint64_t>(t.offset, data_size),
          data_offset_ + std::min<uint64_t>(t.offset, data_size) + t.nbytes, t.offset, t.nbytes,
          size_));
    }
    t.data = base_ + data_offset_ + t.offset;
  }

  // Overlapping tensors would alias each other's weights.
  std::vector<const GgufTensorInfo*> by_offset;
  by_offset.reserve(tensors_.size());
  for (const GgufTensorInfo& t : tensors_) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const GgufTensorInfo* a, const GgufTensorInfo* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const GgufTensorInfo* prev = by_offset[i - 1];
    const GgufTensorInfo* next = by_offset[i];
    if (prev->offset + prev->nbytes > next->offset) {
      return Status::Corrupt(Format(
          "tensors %s (data offset %" PRIu64 ", %zu bytes) and %s (data offset %" PRIu64
          ") overlap",
          Quote(prev->name).c_str(), prev->offset, prev->nbytes, Quote(next->name).c_str(),
          next->offset));
    }
  }
  return Status::Ok();
}

const GgufValue* GgufFile::Find(std::string_view key) const {
  auto it = kv_index_.find(key);
  return it == kv_index_.end() ? nullptr : &kv_[it->second].second;
}

std::vector<std::string> GgufFile::Keys() const {
  std::vector<std::string> keys;
  keys.reserve(kv_.size());
  for (const auto& [k, v] : kv_) keys.push_back(k);
  return keys;
}

const GgufTensorInfo* GgufFile::FindTensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

namespace {

Status Missing(std::string_view key) {
  return Status::NotFound("metadata key " + Quote(key) + " is missing from the GGUF file");
}

Status WrongType(std::string_view key, const GgufValue& v, std::string_view expected) {
  std::string found(GgufTypeName(v.type));
  if (v.type == GgufType::kArray) {
    found = "array of " + std::string(GgufTypeName(std::get<std::shared_ptr<GgufArray>>(v.v)->elem_type));
  }
  return Status::InvalidArgument("metadata key " + Quote(key) + " is a " + found + ", expected " +
                                 std::string(expected));
}

}  // namespace

Expected<std::string> GgufFile::GetString(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (!v) return Missing(key);
  if (v->type != GgufType::kString) return WrongType(key, *v, "string");
  return std::string(std::get<std::string_view>(v->v));
}

Expected<uint64_t> GgufFile::GetUint(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (!v) return Missing(key);
  if (!IsInteger(v->type)) return WrongType(key, *v, "an unsigned integer");
  if (auto* u = std::get_if<uint64_t>(&v->v)) return *u;
  const int64_t s = std::get<int64_t>(v->v);
  if (s < 0) {
    return Status::OutOfRange("metadata key " + Quote(key) + " is " + std::to_string(s) +
                              ", expected a non-negative integer");
  }
  return static_cast<uint64_t>(s);
}

Expected<int64_t> GgufFile::GetInt(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (!v) return Missing(key);
  if (!IsInteger(v->type)) return WrongType(key, *v, "an integer");
  if (auto* s = std::get_if<int64_t>(&v->v)) return *s;
  const uint64_t u = std::get<uint64_t>(v->v);
  if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    return Status::OutOfRange("metadata key " + Quote(key) + " is " + std::to_string(u) +
                              ", which does not fit a signed 64-bit integer");
  }
  return static_cast<int64_t>(u);
}

Expected<double> GgufFile::GetFloat(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (!v) return Missing(key);
  if (auto* d = std::get_if<double>(&v->v)) return *d;
  if (auto* u = std::get_if<uint64_t>(&v->v)) return static_cast<double>(*u);
  if (auto* s = std::get_if<int64_t>(&v->v)) return static_cast<double>(*s);
  return WrongType(key, *v, "a number");
}

Expected<bool> GgufFile::GetBool(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (!v) return Missing(key);
  if (v->type != GgufType::kBool) return WrongType(key, *v, "bool");
  return std::get<bool>(v->v);
}

const GgufArray* GgufFile::GetArray(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (!v || v->type != GgufType::kArray) return nullptr;
  return std::get<std::shared_ptr<GgufArray>>(v->v).get();
}

Expected<std::span<const std::string_view>> GgufFile::GetStringArray(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (!v) return Missing(key);
  const GgufArray* a = GetArray(key);
  if (!a || a->elem_type != GgufType::kString) return WrongType(key, *v, "array of string");
  return std::span<const std::string_view>(a->strings);
}

Expected<std::vector<float>> GgufFile::GetFloatArray(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (!v) return Missing(key);
  const GgufArray* a = GetArray(key);
  if (!a || !IsNumeric(a->elem_type)) return WrongType(key, *v, "array of numbers");
  std::vector<float> out(static_cast<size_t>(a->count));
  if (a->elem_type == GgufType::kFloat32) {
    if (!out.empty()) std::memcpy(out.data(), a->raw, out.size() * sizeof(float));
  } else {
    for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<float>(a->NumberAt(i));
  }
  return out;
}

Expected<std::vector<int64_t>> GgufFile::GetIntArray(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (!v) return Missing(key);
  const GgufArray* a = GetArray(key);
  if (!a || !(IsInteger(a->elem_type) || a->elem_type == GgufType::kBool)) {
    return WrongType(key, *v, "array of integers");
  }
  const size_t es = GgufScalarSize(a->elem_type);
  std::vector<int64_t> out(static_cast<size_t>(a->count));
  for (size_t i = 0; i < out.size(); ++i) {
    GgufValue e = DecodeScalar(a->elem_type, a->raw + i * es);
    if (auto* s = std::get_if<int64_t>(&e.v)) {
      out[i] = *s;
    } else if (auto* b = std::get_if<bool>(&e.v)) {
      out[i] = *b ? 1 : 0;
    } else {
      const uint64_t u = std::get<uint64_t>(e.v);
      if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return Status::OutOfRange(Format("array %s element %zu is %" PRIu64
                                         ", which does not fit a signed 64-bit integer",
                                         Quote(key).c_str(), i, u));
      }
      out[i] = static_cast<int64_t>(u);
    }
  }
  return out;
}

}  // namespace strata
