#include "cache/chunk_format.h"

#include <lz4.h>
#include <xxhash.h>
#include <zstd.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/fp16.h"

namespace strata {

// f16 rows are copied as whole arrays of uint16_t; the stored form is
// little-endian, so this is only a plain copy on little-endian hosts.
static_assert(std::endian::native == std::endian::little, "chunk_format.cpp assumes a little-endian host");

namespace {

// ---- fixed header, byte offsets (docs/KV_CHUNK_FORMAT.md) ----
constexpr size_t kOffMagic = 0;          // u32
constexpr size_t kOffVersion = 4;        // u16
constexpr size_t kOffHeaderBytes = 6;    // u16
constexpr size_t kOffFingerprint = 8;    // 32 bytes, ASCII, zero-padded
constexpr size_t kFingerprintBytes = 32;
constexpr size_t kOffKeyHi = 40;         // u64
constexpr size_t kOffKeyLo = 48;         // u64
constexpr size_t kOffKvFormat = 56;      // 16 bytes, ASCII, zero-padded (at most 15 used)
constexpr size_t kKvFormatBytes = 16;
constexpr size_t kOffLayers = 72;        // u32
constexpr size_t kOffKvHeads = 76;       // u32
constexpr size_t kOffHeadDim = 80;       // u32
constexpr size_t kOffDType = 84;         // u8
constexpr size_t kOffCodec = 85;         // u8
constexpr size_t kOffReserved = 86;      // u16, zero
constexpr size_t kOffTokenCount = 88;    // u64
constexpr size_t kOffFirstPos = 96;      // i64
constexpr size_t kOffTotalBytes = 104;   // u64: size of the whole chunk
constexpr size_t kOffHeaderSum = 112;    // u64: xxh3-64 of [0,112) ++ tokens ++ section table
constexpr size_t kHeaderBytes = 120;
constexpr size_t kSectionEntryBytes = 32;  // offset, encoded, decoded, checksum: u64 each

// Sanity caps a reader applies before trusting sizes (far above any model).
constexpr uint64_t kMaxLayers = 1 << 12;
constexpr uint64_t kMaxKvHeads = 1 << 12;
constexpr uint64_t kMaxHeadDim = 1 << 14;
constexpr uint64_t kMaxTokens = 1 << 24;

void PutU16(uint8_t* p, uint16_t v) {
  for (int i = 0; i < 2; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
void PutU32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
void PutU64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint16_t GetU16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t GetU32(const uint8_t* p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
uint64_t GetU64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// a * b without overflow, or false.
bool MulOk(uint64_t a, uint64_t b, uint64_t* out) { return !__builtin_mul_overflow(a, b, out); }
bool AddOk(uint64_t a, uint64_t b, uint64_t* out) { return !__builtin_add_overflow(a, b, out); }

std::string FixedField(const uint8_t* p, size_t n) {
  size_t len = 0;
  while (len < n && p[len] != 0) ++len;
  return std::string(reinterpret_cast<const char*>(p), len);
}

// Bytes of one layer's decoded section: K rows then V rows.
//   f16:  [T][kv_dim] fp16 for K, then the same for V.
//   int8: for K then V, for each token, for each KV head: fp16 scale, then
//         head_dim int8 values.
uint64_t DecodedLayerBytes(ChunkDType dtype, uint64_t tokens, uint64_t heads, uint64_t head_dim) {
  if (dtype == ChunkDType::kF16) return 2 * tokens * heads * head_dim * 2;
  return 2 * tokens * heads * (2 + head_dim);
}

uint64_t Checksum(std::span<const uint8_t> bytes) { return XXH3_64bits(bytes.data(), bytes.size()); }

// Row access for the shared encoder/decoder: row t (0-based in the chunk) of
// K (which = 0) or V (which = 1).
struct RowAccess {
  std::function<fp16_t*(int layer, int which, int64_t t)> row;
};

struct Layout {
  int n_layers;
  int n_kv_heads;
  int head_dim;
  int64_t kv_dim;
  int64_t tokens;
};

// Serializes one layer's rows into `out` (decoded form, before the codec).
void SerializeLayer(const Layout& lay, ChunkDType dtype, int layer, const RowAccess& src, std::vector<uint8_t>& out) {
  out.resize(DecodedLayerBytes(dtype, lay.tokens, lay.n_kv_heads, lay.head_dim));
  uint8_t* p = out.data();
  for (int which = 0; which < 2; ++which) {
    for (int64_t t = 0; t < lay.tokens; ++t) {
      const fp16_t* row = src.row(layer, which, t);
      if (dtype == ChunkDType::kF16) {
        std::memcpy(p, row, lay.kv_dim * 2);
        p += lay.kv_dim * 2;
        continue;
      }
      for (int h = 0; h < lay.n_kv_heads; ++h) {
        const fp16_t* x = row + static_cast<int64_t>(h) * lay.head_dim;
        float absmax = 0;
        for (int d = 0; d < lay.head_dim; ++d) {
          const float f = std::fabs(Fp16ToFp32(x[d]));
          if (f > absmax) absmax = f;  // NaN compares false: ignored
        }
        if (!std::isfinite(absmax)) absmax = 65504.0f;
        // Quantize with the scale as stored (rounded to fp16), so decoding
        // reproduces exactly what the error bound was computed against.
        const fp16_t scale_h = Fp32ToFp16(absmax / 127.0f);
        const float scale = Fp16ToFp32(scale_h);
        PutU16(p, scale_h);
        p += 2;
        for (int d = 0; d < lay.head_dim; ++d) {
          const float f = Fp16ToFp32(x[d]);
          float q = scale > 0 ? f / scale : 0.0f;
          if (std::isnan(q)) q = 0;
          q = std::clamp(q, -127.0f, 127.0f);
          p[d] = static_cast<uint8_t>(static_cast<int8_t>(std::lrint(q)));
        }
        p += lay.head_dim;
      }
    }
  }
}

// Writes decoded section bytes `in` to rows [skip, tokens) of a layer.
void DeserializeLayer(const Layout& lay, ChunkDType dtype, int layer, std::span<const uint8_t> in, int64_t skip,
                      const RowAccess& dst) {
  const uint8_t* p = in.data();
  const int64_t row_bytes =
      dtype == ChunkDType::kF16 ? lay.kv_dim * 2 : static_cast<int64_t>(lay.n_kv_heads) * (2 + lay.head_dim);
  for (int which = 0; which < 2; ++which) {
    const uint8_t* plane = p + which * lay.tokens * row_bytes;
    for (int64_t t = skip; t < lay.tokens; ++t) {
      const uint8_t* src = plane + t * row_bytes;
      fp16_t* row = dst.row(layer, which, t);
      if (dtype == ChunkDType::kF16) {
        std::memcpy(row, src, lay.kv_dim * 2);
        continue;
      }
      for (int h = 0; h < lay.n_kv_heads; ++h) {
        const float scale = Fp16ToFp32(GetU16(src));
        src += 2;
        fp16_t* x = row + static_cast<int64_t>(h) * lay.head_dim;
        for (int d = 0; d < lay.head_dim; ++d) {
          // The fp16 scale may round up (absmax 65504 gives 127 * 516 =
          // 65532): saturate to the largest half rather than overflow to inf.
          float f = static_cast<float>(static_cast<int8_t>(src[d])) * scale;
          if (f > 65504.0f) f = 65504.0f;
          if (f < -65504.0f) f = -65504.0f;
          x[d] = Fp32ToFp16(f);
        }
        src += lay.head_dim;
      }
    }
  }
}

Status Compress(ChunkCodec codec, int level, std::span<const uint8_t> in, std::vector<uint8_t>& out) {
  switch (codec) {
    case ChunkCodec::kRaw:
      out.assign(in.begin(), in.end());
      return Status::Ok();
    case ChunkCodec::kZstd: {
      out.resize(ZSTD_compressBound(in.size()));
      const size_t n = ZSTD_compress(out.data(), out.size(), in.data(), in.size(), level);
      if (ZSTD_isError(n)) return Status::Internal(std::string("zstd compression failed: ") + ZSTD_getErrorName(n));
      out.resize(n);
      return Status::Ok();
    }
    case ChunkCodec::kLz4: {
      if (in.size() > static_cast<size_t>(LZ4_MAX_INPUT_SIZE)) {
        return Status::OutOfRange("a layer of " + std::to_string(in.size()) + " bytes is too large for lz4");
      }
      out.resize(static_cast<size_t>(LZ4_compressBound(static_cast<int>(in.size()))));
      const int n = LZ4_compress_default(reinterpret_cast<const char*>(in.data()), reinterpret_cast<char*>(out.data()),
                                         static_cast<int>(in.size()), static_cast<int>(out.size()));
      if (n <= 0 && !in.empty()) return Status::Internal("lz4 compression failed");
      out.resize(static_cast<size_t>(std::max(n, 0)));
      return Status::Ok();
    }
  }
  return Status::InvalidArgument("unknown chunk codec");
}

// Decompresses exactly `out.size()` bytes or fails.
Status Decompress(ChunkCodec codec, int layer, std::span<const uint8_t> in, std::span<uint8_t> out) {
  const std::string where = "layer " + std::to_string(layer) + ": ";
  switch (codec) {
    case ChunkCodec::kRaw:
      if (in.size() != out.size()) return Status::Corrupt(where + "raw section size mismatch");
      if (!in.empty()) std::memcpy(out.data(), in.data(), in.size());
      return Status::Ok();
    case ChunkCodec::kZstd: {
      const unsigned long long content = ZSTD_getFrameContentSize(in.data(), in.size());
      if (content == ZSTD_CONTENTSIZE_ERROR) return Status::Corrupt(where + "zstd section is not a zstd frame");
      if (content != ZSTD_CONTENTSIZE_UNKNOWN && content != out.size()) {
        return Status::Corrupt(where + "zstd frame holds " + std::to_string(content) + " bytes, expected " +
                               std::to_string(out.size()));
      }
      const size_t n = ZSTD_decompress(out.data(), out.size(), in.data(), in.size());
      if (ZSTD_isError(n)) return Status::Corrupt(where + "zstd: " + ZSTD_getErrorName(n));
      if (n != out.size()) {
        return Status::Corrupt(where + "zstd decoded " + std::to_string(n) + " bytes, expected " +
                               std::to_string(out.size()));
      }
      return Status::Ok();
    }
    case ChunkCodec::kLz4: {
      if (in.size() > static_cast<size_t>(std::numeric_limits<int>::max()) ||
          out.size() > static_cast<size_t>(std::numeric_limits<int>::max())) {
        return Status::Corrupt(where + "lz4 section too large");
      }
      const int n = LZ4_decompress_safe(reinterpret_cast<const char*>(in.data()), reinterpret_cast<char*>(out.data()),
                                        static_cast<int>(in.size()), static_cast<int>(out.size()));
      if (n < 0) return Status::Corrupt(where + "lz4 section is malformed");
      if (static_cast<size_t>(n) != out.size()) {
        return Status::Corrupt(where + "lz4 decoded " + std::to_string(n) + " bytes, expected " +
                               std::to_string(out.size()));
      }
      return Status::Ok();
    }
  }
  return Status::Corrupt(where + "unknown codec");
}

Status ValidateMeta(const ChunkMeta& m) {
  if (m.model_fingerprint.size() > kFingerprintBytes) {
    return Status::InvalidArgument("model fingerprint longer than 32 bytes");
  }
  if (m.kv_format.size() >= kKvFormatBytes) return Status::InvalidArgument("KV format name longer than 15 bytes");
  if (m.model_fingerprint.find('\0') != std::string::npos || m.kv_format.find('\0') != std::string::npos) {
    return Status::InvalidArgument("model fingerprint and KV format may not contain NUL bytes");
  }
  if (m.n_layers <= 0 || static_cast<uint64_t>(m.n_layers) > kMaxLayers || m.n_kv_heads <= 0 ||
      static_cast<uint64_t>(m.n_kv_heads) > kMaxKvHeads || m.head_dim <= 0 ||
      static_cast<uint64_t>(m.head_dim) > kMaxHeadDim) {
    return Status::InvalidArgument("chunk layout out of range: " + std::to_string(m.n_layers) + " layers, " +
                                   std::to_string(m.n_kv_heads) + " KV heads, head dim " + std::to_string(m.head_dim));
  }
  if (m.tokens.empty() || m.tokens.size() > kMaxTokens) {
    return Status::InvalidArgument("a chunk holds 1.." + std::to_string(kMaxTokens) + " tokens, got " +
                                   std::to_string(m.tokens.size()));
  }
  if (m.first_position < 0 ||
      m.first_position > std::numeric_limits<int64_t>::max() - static_cast<int64_t>(m.tokens.size())) {
    return Status::InvalidArgument("chunk first position " + std::to_string(m.first_position) + " out of range");
  }
  return Status::Ok();
}

// Assembles a chunk from per-layer rows.
Expected<ChunkBlob> Encode(const ChunkMeta& meta, const RowAccess& src, const ChunkEncoding& enc) {
  STRATA_RETURN_IF_ERROR(ValidateMeta(meta));
  if (enc.codec != ChunkCodec::kRaw && enc.codec != ChunkCodec::kZstd && enc.codec != ChunkCodec::kLz4) {
    return Status::InvalidArgument("unknown chunk codec");
  }
  if (enc.dtype != ChunkDType::kF16 && enc.dtype != ChunkDType::kInt8) {
    return Status::InvalidArgument("unknown chunk dtype");
  }
  const Layout lay{meta.n_layers, meta.n_kv_heads, meta.head_dim,
                   static_cast<int64_t>(meta.n_kv_heads) * meta.head_dim, static_cast<int64_t>(meta.tokens.size())};
  const size_t table_off = kHeaderBytes + meta.tokens.size() * 4;
  const size_t data_off = table_off + static_cast<size_t>(meta.n_layers) * kSectionEntryBytes;

  std::vector<uint8_t> out(data_off);
  std::vector<uint8_t> decoded, encoded;
  for (int l = 0; l < meta.n_layers; ++l) {
    SerializeLayer(lay, enc.dtype, l, src, decoded);
    STRATA_RETURN_IF_ERROR(Compress(enc.codec, enc.zstd_level, decoded, encoded));
    const uint64_t offset = out.size();
    out.insert(out.end(), encoded.begin(), encoded.end());
    uint8_t* e = out.data() + table_off + static_cast<size_t>(l) * kSectionEntryBytes;
    PutU64(e + 0, offset);
    PutU64(e + 8, encoded.size());
    PutU64(e + 16, decoded.size());
    PutU64(e + 24, Checksum(encoded));
  }

  uint8_t* h = out.data();
  PutU32(h + kOffMagic, kChunkMagic);
  PutU16(h + kOffVersion, kChunkFormatVersion);
  PutU16(h + kOffHeaderBytes, static_cast<uint16_t>(kHeaderBytes));
  std::memcpy(h + kOffFingerprint, meta.model_fingerprint.data(), meta.model_fingerprint.size());
  PutU64(h + kOffKeyHi, meta.key.hi);
  PutU64(h + kOffKeyLo, meta.key.lo);
  std::memcpy(h + kOffKvFormat, meta.kv_format.data(), meta.kv_format.size());
  PutU32(h + kOffLayers, static_cast<uint32_t>(meta.n_layers));
  PutU32(h + kOffKvHeads, static_cast<uint32_t>(meta.n_kv_heads));
  PutU32(h + kOffHeadDim, static_cast<uint32_t>(meta.head_dim));
  h[kOffDType] = static_cast<uint8_t>(enc.dtype);
  h[kOffCodec] = static_cast<uint8_t>(enc.codec);
  PutU16(h + kOffReserved, 0);
  PutU64(h + kOffTokenCount, meta.tokens.size());
  PutU64(h + kOffFirstPos, static_cast<uint64_t>(meta.first_position));
  PutU64(h + kOffTotalBytes, out.size());
  for (size_t i = 0; i < meta.tokens.size(); ++i) {
    PutU32(h + kHeaderBytes + 4 * i, static_cast<uint32_t>(meta.tokens[i]));
  }
  XXH3_state_t* st = XXH3_createState();
  if (st == nullptr) return Status::ResourceExhausted("xxh3 state allocation failed");
  XXH3_64bits_reset(st);
  XXH3_64bits_update(st, h, kOffHeaderSum);
  XXH3_64bits_update(st, h + kHeaderBytes, data_off - kHeaderBytes);
  PutU64(h + kOffHeaderSum, XXH3_64bits_digest(st));
  XXH3_freeState(st);
  return ChunkBlob::Adopt(std::move(out));
}

}  // namespace

Expected<ChunkCodec> ParseChunkCodec(std::string_view name) {
  if (name == "raw") return ChunkCodec::kRaw;
  if (name == "zstd") return ChunkCodec::kZstd;
  if (name == "lz4") return ChunkCodec::kLz4;
  return Status::InvalidArgument("unknown chunk codec '" + std::string(name) + "' (expected raw, zstd or lz4)");
}

Expected<ChunkDType> ParseChunkDType(std::string_view name) {
  if (name == "f16") return ChunkDType::kF16;
  if (name == "int8") return ChunkDType::kInt8;
  return Status::InvalidArgument("unknown chunk dtype '" + std::string(name) + "' (expected f16 or int8)");
}

std::string_view ChunkCodecName(ChunkCodec c) {
  switch (c) {
    case ChunkCodec::kRaw: return "raw";
    case ChunkCodec::kZstd: return "zstd";
    case ChunkCodec::kLz4: return "lz4";
  }
  return "unknown";
}

std::string_view ChunkDTypeName(ChunkDType d) {
  switch (d) {
    case ChunkDType::kF16: return "f16";
    case ChunkDType::kInt8: return "int8";
  }
  return "unknown";
}

Expected<ChunkBlob> EncodeChunk(const ChunkMeta& meta, KvCache& kv, int seq, const ChunkEncoding& enc) {
  STRATA_RETURN_IF_ERROR(ValidateMeta(meta));
  if (seq < 0 || seq >= kv.max_seqs()) return Status::InvalidArgument("sequence " + std::to_string(seq) + " out of range");
  if (meta.n_layers != kv.n_layers() || static_cast<int64_t>(meta.n_kv_heads) * meta.head_dim != kv.kv_dim()) {
    return Status::InvalidArgument("chunk layout (" + std::to_string(meta.n_layers) + " layers, " +
                                   std::to_string(meta.n_kv_heads) + "x" + std::to_string(meta.head_dim) +
                                   ") does not match the KV cache (" + std::to_string(kv.n_layers()) + " layers, kv dim " +
                                   std::to_string(kv.kv_dim()) + ")");
  }
  const int64_t end = meta.first_position + static_cast<int64_t>(meta.tokens.size());
  if (end > kv.max_positions()) {
    return Status::OutOfRange("chunk ends at position " + std::to_string(end) + " beyond the KV cache's " +
                              std::to_string(kv.max_positions()));
  }
  std::vector<KvLayerView> views;
  views.reserve(meta.n_layers);
  for (int l = 0; l < meta.n_layers; ++l) {
    views.push_back(kv.View(seq, l));
    if (views.back().capacity < end) {
      return Status::OutOfRange("layer " + std::to_string(l) + " of sequence " + std::to_string(seq) + " holds " +
                                std::to_string(views.back().capacity) + " positions, the chunk ends at " +
                                std::to_string(end));
    }
  }
  const int64_t first = meta.first_position;
  RowAccess src{[&](int layer, int which, int64_t t) {
    const KvLayerView& v = views[layer];
    return which == 0 ? v.KRow(first + t) : v.VRow(first + t);
  }};
  return Encode(meta, src, enc);
}

Expected<ChunkBlob> TranscodeChunk(const ChunkBlob& blob, const ChunkMeta& expect, const ChunkEncoding& enc,
                                   uint64_t max_decoded_bytes) {
  STRATA_ASSIGN_OR_RETURN(ChunkReader reader, ChunkReader::Open(blob, expect));
  const ChunkEncoding have = reader.encoding();
  // zstd_level is not stored; the same codec and dtype means the same bytes
  // a reader would accept, so there is nothing to do.
  if (have.codec == enc.codec && have.dtype == enc.dtype) return blob;
  const int64_t T = reader.token_count();
  const int64_t kv_dim = static_cast<int64_t>(expect.n_kv_heads) * expect.head_dim;
  // Open bounded every factor (tokens <= 2^24, KV heads x head dim <= 2^26),
  // so per_layer <= 2^52 and comparing by division cannot overflow.
  const uint64_t per_layer = 2 * static_cast<uint64_t>(T) * static_cast<uint64_t>(kv_dim) * sizeof(fp16_t);
  if (per_layer == 0 || static_cast<uint64_t>(expect.n_layers) > max_decoded_bytes / per_layer) {
    return Status::ResourceExhausted("chunk " + expect.key.Hex() + " decodes to " + std::to_string(expect.n_layers) +
                                     " layers x " + std::to_string(per_layer) + " bytes, more than the " +
                                     std::to_string(max_decoded_bytes) + " bytes a re-encode may use");
  }
  // The whole chunk in f16, [layer][K|V][token][kv_dim].
  std::vector<fp16_t> rows(static_cast<size_t>(expect.n_layers) * 2 * T * kv_dim);
  auto row = [&](int layer, int which, int64_t t) {
    return rows.data() + ((static_cast<int64_t>(layer) * 2 + which) * T + t) * kv_dim;
  };
  for (int l = 0; l < expect.n_layers; ++l) {
    STRATA_RETURN_IF_ERROR(reader.DecodeLayerRows(l, [&](int which, int64_t t) { return row(l, which, t); }, 0));
  }
  return Encode(expect, RowAccess{row}, enc);
}

namespace {

// The header fields, after ParseFrame checked magic, version, sizes and the
// header checksum (but nothing against a caller's expectations).
struct Frame {
  uint64_t n_layers, n_heads, head_dim, tokens;
  uint64_t table_off, data_off;
  uint64_t total;
};

// `b` is the whole chunk, or (prefix_only) at least its first
// ChunkPrefixBytes: then the total size is the header's, checked by whoever
// reads the sections.
Expected<Frame> ParseFrame(std::span<const uint8_t> b, bool prefix_only = false) {
  if (b.size() < kHeaderBytes) {
    return Status::Corrupt("chunk is " + std::to_string(b.size()) + " bytes, shorter than its " +
                           std::to_string(kHeaderBytes) + "-byte header");
  }
  const uint8_t* h = b.data();
  if (GetU32(h + kOffMagic) != kChunkMagic) return Status::Corrupt("not a Strata KV chunk (bad magic)");
  const uint16_t version = GetU16(h + kOffVersion);
  if (version != kChunkFormatVersion) {
    return Status::Corrupt("chunk format version " + std::to_string(version) + ", this build reads version " +
                           std::to_string(kChunkFormatVersion));
  }
  if (GetU16(h + kOffHeaderBytes) != kHeaderBytes) {
    return Status::Corrupt("chunk header size " + std::to_string(GetU16(h + kOffHeaderBytes)) + ", expected " +
                           std::to_string(kHeaderBytes));
  }
  const uint64_t total = GetU64(h + kOffTotalBytes);
  if (!prefix_only && total != b.size()) {
    return Status::Corrupt("chunk header says " + std::to_string(total) + " bytes, have " + std::to_string(b.size()) +
                           (total > b.size() ? " (truncated)" : ""));
  }
  Frame f{};
  f.total = total;
  f.n_layers = GetU32(h + kOffLayers);
  f.n_heads = GetU32(h + kOffKvHeads);
  f.head_dim = GetU32(h + kOffHeadDim);
  f.tokens = GetU64(h + kOffTokenCount);
  if (f.n_layers == 0 || f.n_layers > kMaxLayers || f.n_heads == 0 || f.n_heads > kMaxKvHeads || f.head_dim == 0 ||
      f.head_dim > kMaxHeadDim || f.tokens == 0 || f.tokens > kMaxTokens) {
    return Status::Corrupt("chunk header layout out of range (" + std::to_string(f.n_layers) + " layers, " +
                           std::to_string(f.n_heads) + " KV heads, head dim " + std::to_string(f.head_dim) + ", " +
                           std::to_string(f.tokens) + " tokens)");
  }
  const uint64_t first = GetU64(h + kOffFirstPos);
  if (first > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) - f.tokens) {
    return Status::Corrupt("chunk first position " + std::to_string(static_cast<int64_t>(first)) + " out of range");
  }
  // With the caps above these products cannot overflow, but keep the
  // arithmetic checked so a change of caps cannot silently break it.
  uint64_t tok_bytes = 0, table_bytes = 0;
  if (!MulOk(f.tokens, 4, &tok_bytes) || !AddOk(kHeaderBytes, tok_bytes, &f.table_off) ||
      !MulOk(f.n_layers, kSectionEntryBytes, &table_bytes) || !AddOk(f.table_off, table_bytes, &f.data_off) ||
      f.data_off > b.size() || f.data_off > total) {
    return Status::Corrupt("chunk of " + std::to_string(b.size()) + " bytes is too short for " +
                           std::to_string(f.tokens) + " tokens and " + std::to_string(f.n_layers) + " layer sections");
  }
  XXH3_state_t* st = XXH3_createState();
  if (st == nullptr) return Status::ResourceExhausted("xxh3 state allocation failed");
  XXH3_64bits_reset(st);
  XXH3_64bits_update(st, h, kOffHeaderSum);
  XXH3_64bits_update(st, h + kHeaderBytes, f.data_off - kHeaderBytes);
  const uint64_t sum = XXH3_64bits_digest(st);
  XXH3_freeState(st);
  if (sum != GetU64(h + kOffHeaderSum)) return Status::Corrupt("chunk header checksum mismatch");
  return f;
}

}  // namespace

Expected<ChunkMeta> PeekChunkMeta(std::span<const uint8_t> bytes) {
  STRATA_ASSIGN_OR_RETURN(const Frame f, ParseFrame(bytes));
  const uint8_t* h = bytes.data();
  ChunkMeta m;
  m.key = ChunkKey{GetU64(h + kOffKeyHi), GetU64(h + kOffKeyLo)};
  m.model_fingerprint = FixedField(h + kOffFingerprint, kFingerprintBytes);
  m.kv_format = FixedField(h + kOffKvFormat, kKvFormatBytes);
  m.n_layers = static_cast<int>(f.n_layers);
  m.n_kv_heads = static_cast<int>(f.n_heads);
  m.head_dim = static_cast<int>(f.head_dim);
  m.first_position = static_cast<int64_t>(GetU64(h + kOffFirstPos));
  m.tokens.resize(f.tokens);
  for (uint64_t i = 0; i < f.tokens; ++i) m.tokens[i] = static_cast<TokenId>(GetU32(h + kHeaderBytes + 4 * i));
  return m;
}

uint64_t ChunkPrefixBytes(const ChunkMeta& meta) {
  return kHeaderBytes + 4 * static_cast<uint64_t>(meta.tokens.size()) +
         kSectionEntryBytes * static_cast<uint64_t>(std::max(meta.n_layers, 0));
}

Expected<ChunkReader> ChunkReader::Open(ChunkBlob blob, const ChunkMeta& expect) {
  STRATA_ASSIGN_OR_RETURN(ChunkReader r, OpenImpl(blob.bytes(), /*prefix_only=*/false, expect));
  r.blob_ = std::move(blob);
  return r;
}

Expected<ChunkReader> ChunkReader::OpenPrefix(std::span<const uint8_t> prefix, const ChunkMeta& expect) {
  if (prefix.size() != ChunkPrefixBytes(expect)) {
    return Status::Corrupt("chunk prefix of " + std::to_string(prefix.size()) + " bytes, expected " +
                           std::to_string(ChunkPrefixBytes(expect)) + " (truncated chunk)");
  }
  return OpenImpl(prefix, /*prefix_only=*/true, expect);
}

ByteRange ChunkReader::SectionRange(int layer) const {
  if (layer < 0 || layer >= n_layers_) return ByteRange{};
  const Section& s = sections_[static_cast<size_t>(layer)];
  return ByteRange{s.offset, s.encoded_bytes};
}

Expected<ChunkReader> ChunkReader::OpenImpl(std::span<const uint8_t> b, bool prefix_only, const ChunkMeta& expect) {
  STRATA_ASSIGN_OR_RETURN(const Frame frame, ParseFrame(b, prefix_only));
  const uint64_t total = frame.total;
  const uint8_t* h = b.data();
  const uint64_t n_layers = frame.n_layers, n_heads = frame.n_heads, head_dim = frame.head_dim,
                 tokens = frame.tokens, table_off = frame.table_off, data_off = frame.data_off;

  // The header is intact; now it must describe what the caller expects.
  const std::string fp = FixedField(h + kOffFingerprint, kFingerprintBytes);
  if (fp != expect.model_fingerprint) {
    return Status::Corrupt("chunk is from model " + fp + ", expected " + expect.model_fingerprint);
  }
  const ChunkKey key{GetU64(h + kOffKeyHi), GetU64(h + kOffKeyLo)};
  if (!(key == expect.key)) return Status::Corrupt("chunk key " + key.Hex() + ", expected " + expect.key.Hex());
  const std::string kvf = FixedField(h + kOffKvFormat, kKvFormatBytes);
  if (kvf != expect.kv_format) {
    return Status::Corrupt("chunk KV format '" + kvf + "', expected '" + expect.kv_format + "'");
  }
  if (n_layers != static_cast<uint64_t>(expect.n_layers) || n_heads != static_cast<uint64_t>(expect.n_kv_heads) ||
      head_dim != static_cast<uint64_t>(expect.head_dim)) {
    return Status::Corrupt("chunk layout " + std::to_string(n_layers) + " layers x " + std::to_string(n_heads) +
                           " KV heads x " + std::to_string(head_dim) + ", expected " +
                           std::to_string(expect.n_layers) + " x " + std::to_string(expect.n_kv_heads) + " x " +
                           std::to_string(expect.head_dim));
  }
  const uint8_t dtype_raw = h[kOffDType];
  const uint8_t codec_raw = h[kOffCodec];
  if (dtype_raw > static_cast<uint8_t>(ChunkDType::kInt8)) {
    return Status::Corrupt("chunk dtype " + std::to_string(dtype_raw) + " is unknown");
  }
  if (codec_raw > static_cast<uint8_t>(ChunkCodec::kLz4)) {
    return Status::Corrupt("chunk codec " + std::to_string(codec_raw) + " is unknown");
  }
  if (GetU16(h + kOffReserved) != 0) return Status::Corrupt("chunk header reserved field is not zero");
  if (tokens != expect.tokens.size()) {
    return Status::Corrupt("chunk holds " + std::to_string(tokens) + " tokens, expected " +
                           std::to_string(expect.tokens.size()));
  }
  const int64_t first = static_cast<int64_t>(GetU64(h + kOffFirstPos));
  if (first != expect.first_position) {
    return Status::Corrupt("chunk starts at position " + std::to_string(first) + ", expected " +
                           std::to_string(expect.first_position));
  }
  for (uint64_t i = 0; i < tokens; ++i) {
    const TokenId t = static_cast<TokenId>(GetU32(h + kHeaderBytes + 4 * i));
    if (t != expect.tokens[i]) {
      return Status::Corrupt("chunk token " + std::to_string(i) + " is " + std::to_string(t) + ", expected " +
                             std::to_string(expect.tokens[i]));
    }
  }

  ChunkReader r;
  r.enc_.codec = static_cast<ChunkCodec>(codec_raw);
  r.enc_.dtype = static_cast<ChunkDType>(dtype_raw);
  r.n_layers_ = static_cast<int>(n_layers);
  r.head_dim_ = static_cast<int>(head_dim);
  r.kv_dim_ = static_cast<int64_t>(n_heads * head_dim);
  r.token_count_ = static_cast<int64_t>(tokens);
  r.first_position_ = first;
  const uint64_t decoded = DecodedLayerBytes(r.enc_.dtype, tokens, n_heads, head_dim);
  // Sections follow the table back to back, in layer order, and end exactly
  // at the end of the chunk: no gaps, overlaps or trailing bytes to hide in.
  uint64_t expect_off = data_off;
  r.sections_.reserve(n_layers);
  for (uint64_t l = 0; l < n_layers; ++l) {
    const uint8_t* e = h + table_off + l * kSectionEntryBytes;
    Section s{GetU64(e), GetU64(e + 8), GetU64(e + 16), GetU64(e + 24)};
    const std::string where = "layer " + std::to_string(l) + " section: ";
    if (s.offset != expect_off) {
      return Status::Corrupt(where + "starts at byte " + std::to_string(s.offset) + ", expected " +
                             std::to_string(expect_off));
    }
    uint64_t end = 0;
    if (!AddOk(s.offset, s.encoded_bytes, &end) || end > total) {
      return Status::Corrupt(where + std::to_string(s.encoded_bytes) + " bytes at " + std::to_string(s.offset) +
                             " run past the chunk's " + std::to_string(total) + " bytes");
    }
    if (s.decoded_bytes != decoded) {
      return Status::Corrupt(where + "decodes to " + std::to_string(s.decoded_bytes) + " bytes, the layout needs " +
                             std::to_string(decoded));
    }
    if (r.enc_.codec == ChunkCodec::kRaw && s.encoded_bytes != s.decoded_bytes) {
      return Status::Corrupt(where + "raw section of " + std::to_string(s.encoded_bytes) + " bytes, expected " +
                             std::to_string(decoded));
    }
    expect_off = end;
    r.sections_.push_back(s);
  }
  if (expect_off != total) {
    return Status::Corrupt("chunk has " + std::to_string(total - expect_off) + " bytes after its last section");
  }
  return r;
}

Status ChunkReader::DecodeLayer(int layer, const KvLayerView& dst, int64_t skip) {
  if (layer < 0 || layer >= n_layers_) {
    return Status::InvalidArgument("layer " + std::to_string(layer) + " out of range (chunk has " +
                                   std::to_string(n_layers_) + ")");
  }
  if (blob_.empty()) return Status::InvalidArgument("reader opened from a prefix: decode sections with DecodeSection");
  const Section& s = sections_[static_cast<size_t>(layer)];
  return DecodeSection(layer, blob_.bytes().subspan(s.offset, s.encoded_bytes), dst, skip);
}

Status ChunkReader::DecodeSection(int layer, std::span<const uint8_t> section, const KvLayerView& dst, int64_t skip) {
  if (dst.k == nullptr || dst.v == nullptr) return Status::InvalidArgument("decode target has no K/V memory");
  if (dst.capacity < first_position_ + token_count_) {
    return Status::OutOfRange("decode target holds " + std::to_string(dst.capacity) + " positions, the chunk ends at " +
                              std::to_string(first_position_ + token_count_));
  }
  STRATA_ASSIGN_OR_RETURN(const std::span<const uint8_t> decoded, VerifySection(layer, section, skip));
  const int64_t first = first_position_;
  if (enc_.dtype == ChunkDType::kF16 && dst.stride == kv_dim_) {
    // The loader's hot path: rows stored back to back go to KV memory in
    // runs (a paged block, or the whole range of contiguous memory), one
    // memcpy per run instead of one call per row.
    const size_t row_bytes = static_cast<size_t>(kv_dim_) * sizeof(fp16_t);
    for (int which = 0; which < 2; ++which) {
      const uint8_t* plane = decoded.data() + static_cast<size_t>(which) * static_cast<size_t>(token_count_) * row_bytes;
      for (int64_t t = skip; t < token_count_;) {
        const int64_t p = first + t;
        int64_t run = token_count_ - t;
        if (dst.block_table != nullptr) run = std::min<int64_t>(run, dst.block_size - p % dst.block_size);
        fp16_t* out = which == 0 ? dst.KRow(p) : dst.VRow(p);
        std::memcpy(out, plane + static_cast<size_t>(t) * row_bytes, static_cast<size_t>(run) * row_bytes);
        t += run;
      }
    }
    return Status::Ok();
  }
  const Layout lay{n_layers_, static_cast<int>(kv_dim_ / head_dim_), head_dim_, kv_dim_, token_count_};
  DeserializeLayer(lay, enc_.dtype, layer, decoded, skip, RowAccess{[&](int, int which, int64_t t) {
                     return which == 0 ? dst.KRow(first + t) : dst.VRow(first + t);
                   }});
  return Status::Ok();
}

Status ChunkReader::DecodeLayerRows(int layer, const std::function<fp16_t*(int which, int64_t t)>& row, int64_t skip) {
  if (layer < 0 || layer >= n_layers_) {
    return Status::InvalidArgument("layer " + std::to_string(layer) + " out of range (chunk has " +
                                   std::to_string(n_layers_) + ")");
  }
  if (blob_.empty()) return Status::InvalidArgument("reader opened from a prefix: decode sections with DecodeSection");
  const Section& s = sections_[static_cast<size_t>(layer)];
  STRATA_ASSIGN_OR_RETURN(const std::span<const uint8_t> decoded,
                          VerifySection(layer, blob_.bytes().subspan(s.offset, s.encoded_bytes), skip));
  const Layout lay{n_layers_, static_cast<int>(kv_dim_ / head_dim_), head_dim_, kv_dim_, token_count_};
  DeserializeLayer(lay, enc_.dtype, layer, decoded, skip, RowAccess{[&](int, int which, int64_t t) { return row(which, t); }});
  return Status::Ok();
}

Expected<std::span<const uint8_t>> ChunkReader::VerifySection(int layer, std::span<const uint8_t> enc, int64_t skip) {
  if (layer < 0 || layer >= n_layers_) {
    return Status::InvalidArgument("layer " + std::to_string(layer) + " out of range (chunk has " +
                                   std::to_string(n_layers_) + ")");
  }
  if (skip < 0 || skip > token_count_) {
    return Status::InvalidArgument("skip " + std::to_string(skip) + " out of range 0.." + std::to_string(token_count_));
  }
  const Section& s = sections_[static_cast<size_t>(layer)];
  if (enc.size() != s.encoded_bytes) {
    return Status::Corrupt("layer " + std::to_string(layer) + " section is " + std::to_string(enc.size()) +
                           " bytes, the section table says " + std::to_string(s.encoded_bytes));
  }
  if (Checksum(enc) != s.checksum) {
    return Status::Corrupt("layer " + std::to_string(layer) + " section checksum mismatch");
  }
  if (enc_.codec == ChunkCodec::kRaw) return enc;
  scratch_.resize(s.decoded_bytes);
  STRATA_RETURN_IF_ERROR(Decompress(enc_.codec, layer, enc, scratch_));
  return std::span<const uint8_t>(scratch_);
}

}  // namespace strata
