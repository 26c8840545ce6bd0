// The KV chunk format: one encoded chunk of KV, the unit every tier stores
// and the prefill->decode transfer sends. Documented byte by byte in
// docs/KV_CHUNK_FORMAT.md.
//
// Layout: a fixed little-endian header (magic "SKVC", format version, model
// fingerprint, chunk key, KV format name, layers, KV heads, head dim, dtype,
// codec, token count, first position, header checksum), the chunk's token
// ids, a per-layer section table (offset, encoded size, decoded size,
// checksum), then one section per layer holding that layer's K rows then V
// rows, each section compressed on its own. Sections are independent so a
// loader can decode layer l while the forward pass computes layer l-1.
//
// dtype f16: rows copied bit-exactly. dtype int8 (lossy, for cold tiers):
// each (token, K or V, KV head) row of head_dim values is stored as int8 with
// one fp16 scale (absmax / 127).
//
// A reader never trusts a chunk: header checksum, every field against what
// the caller expects (fingerprint, key, layout, tokens), section bounds and
// checksums (xxh3-64) are all checked, and any mismatch is kCorrupt with a
// message that says which.
//
// Thread-safety: free functions are thread-safe; a ChunkReader is used by
// one thread at a time.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "cache/chunk_key.h"
#include "cache/tier.h"
#include "model/kv_memory.h"

namespace strata {

inline constexpr uint32_t kChunkMagic = 0x43564B53;  // "SKVC" little-endian
inline constexpr uint16_t kChunkFormatVersion = 1;

enum class ChunkCodec : uint8_t { kRaw = 0, kZstd = 1, kLz4 = 2 };
enum class ChunkDType : uint8_t { kF16 = 0, kInt8 = 1 };

// "raw"|"zstd"|"lz4", "f16"|"int8".
Expected<ChunkCodec> ParseChunkCodec(std::string_view name);
Expected<ChunkDType> ParseChunkDType(std::string_view name);
std::string_view ChunkCodecName(ChunkCodec c);
std::string_view ChunkDTypeName(ChunkDType d);

struct ChunkEncoding {
  ChunkCodec codec = ChunkCodec::kRaw;
  ChunkDType dtype = ChunkDType::kF16;
  int zstd_level = 1;
  bool operator==(const ChunkEncoding&) const = default;
};

// What a chunk describes, and what a reader insists on.
struct ChunkMeta {
  ChunkKey key;
  std::string model_fingerprint;  // 32 hex digits (Model::fingerprint())
  std::string kv_format;          // e.g. "f16", at most 15 bytes
  int n_layers = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int64_t first_position = 0;     // original position of the chunk's first token
  std::vector<TokenId> tokens;    // the chunk's token ids (token count = tokens.size())
};

// Encodes rows [meta.first_position, + tokens.size()) of every layer of
// sequence `seq` of `kv`. REQUIRES: those rows were written.
Expected<ChunkBlob> EncodeChunk(const ChunkMeta& meta, KvCache& kv, int seq, const ChunkEncoding& enc);

// Re-encodes a verified chunk with another encoding (demotion to a colder tier).
// The chunk is decoded whole, so a chunk whose layout asks for more than
// `max_decoded_bytes` of f16 rows is refused (kResourceExhausted) before any
// allocation: demotion takes the layout from the chunk itself, and a small
// crafted file in a shared cache directory could otherwise claim terabytes.
inline constexpr uint64_t kMaxTranscodeBytes = uint64_t{2} << 30;
Expected<ChunkBlob> TranscodeChunk(const ChunkBlob& blob, const ChunkMeta& expect, const ChunkEncoding& enc,
                                   uint64_t max_decoded_bytes = kMaxTranscodeBytes);

// The chunk's own description of itself (header and tokens), after checking
// magic, version, sizes and the header checksum. It proves nothing about
// where the chunk came from: the store uses it only to re-encode chunks it
// already holds (demotion on eviction, where only key and bytes are at
// hand); whatever loads KV opens the chunk with its own expectations.
Expected<ChunkMeta> PeekChunkMeta(std::span<const uint8_t> bytes);

// Bytes before a chunk's first layer section (header, token ids, section
// table) for a chunk described by `meta`: what a streaming reader fetches
// first.
uint64_t ChunkPrefixBytes(const ChunkMeta& meta);

class ChunkReader {
 public:
  // Parses and verifies the header, tokens and section table against
  // `expect` (all fields, including every token). Cheap: no section is
  // decompressed yet.
  static Expected<ChunkReader> Open(ChunkBlob blob, const ChunkMeta& expect);

  // Streaming: the same checks from the chunk's first ChunkPrefixBytes(expect)
  // bytes only; the sections are then fetched (SectionRange) and decoded
  // (DecodeSection) one layer at a time. The sections must end exactly at
  // the size the header states.
  static Expected<ChunkReader> OpenPrefix(std::span<const uint8_t> prefix, const ChunkMeta& expect);
  // Where layer `layer`'s section lies in the chunk.
  ByteRange SectionRange(int layer) const;
  // Like DecodeLayer, from the section's bytes fetched on their own;
  // verifies their size and checksum first.
  Status DecodeSection(int layer, std::span<const uint8_t> section, const KvLayerView& dst, int64_t skip = 0);

  ChunkEncoding encoding() const { return enc_; }
  int64_t token_count() const { return token_count_; }
  int64_t first_position() const { return first_position_; }

  // Decodes layer `layer` into dst rows [first_position + skip, first_position
  // + token_count): rows before `skip` are left untouched (they may belong to
  // KV the engine already holds). Verifies the section checksum first.
  Status DecodeLayer(int layer, const KvLayerView& dst, int64_t skip = 0);

 private:
  friend Expected<ChunkBlob> TranscodeChunk(const ChunkBlob&, const ChunkMeta&, const ChunkEncoding&, uint64_t);
  // DecodeLayer's body, writing row t (0-based in the chunk) of K (which 0)
  // or V (which 1) to row(which, t); TranscodeChunk decodes into a buffer.
  Status DecodeLayerRows(int layer, const std::function<fp16_t*(int which, int64_t t)>& row, int64_t skip);
  // Checks the section's size and checksum and returns its decoded bytes
  // (the input itself when raw, else scratch_).
  Expected<std::span<const uint8_t>> VerifySection(int layer, std::span<const uint8_t> section, int64_t skip);
  static Expected<ChunkReader> OpenImpl(std::span<const uint8_t> b, bool prefix_only, const ChunkMeta& expect);

  ChunkBlob blob_;  // empty when opened from a prefix
  ChunkEncoding enc_;
  int n_layers_ = 0;
  int64_t kv_dim_ = 0;
  int head_dim_ = 0;
  int64_t token_count_ = 0;
  int64_t first_position_ = 0;
  struct Section { uint64_t offset, encoded_bytes, decoded_bytes, checksum; };
  std::vector<Section> sections_;
  std::vector<uint8_t> scratch_;
};

}  // namespace strata
