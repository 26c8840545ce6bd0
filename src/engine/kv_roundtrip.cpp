#include "engine/kv_roundtrip.h"

#include <string>

namespace strata {

Expected<ChunkEncoding> ParseChunkEncodingSpec(std::string_view spec) {
  const std::string usage = " (use f16 or int8, optionally with a codec raw, zstd or lz4, comma-separated: e.g. lz4,int8)";
  if (spec.empty()) return Status::InvalidArgument("empty chunk encoding" + usage);
  ChunkEncoding enc;
  bool have_dtype = false, have_codec = false;
  size_t start = 0;
  while (start <= spec.size()) {
    const size_t comma = spec.find(',', start);
    const std::string_view part = spec.substr(start, comma == std::string_view::npos ? spec.npos : comma - start);
    if (auto d = ParseChunkDType(part); d.ok()) {
      if (have_dtype) return Status::InvalidArgument("chunk encoding '" + std::string(spec) + "' names two dtypes" + usage);
      enc.dtype = *d;
      have_dtype = true;
    } else if (auto c = ParseChunkCodec(part); c.ok()) {
      if (have_codec) return Status::InvalidArgument("chunk encoding '" + std::string(spec) + "' names two codecs" + usage);
      enc.codec = *c;
      have_codec = true;
    } else {
      return Status::InvalidArgument("unknown chunk encoding '" + std::string(part) + "'" + usage);
    }
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  return enc;
}

std::string ChunkEncodingName(const ChunkEncoding& enc) {
  return std::string(ChunkDTypeName(enc.dtype)) + "/" + std::string(ChunkCodecName(enc.codec));
}

Expected<int64_t> RoundTripKv(Generator& gen, std::span<const TokenId> tokens, int64_t n, const ChunkEncoding& enc,
                              int64_t chunk_tokens) {
  if (chunk_tokens <= 0) return Status::InvalidArgument("KV chunk size must be positive");
  if (n < 0 || n > static_cast<int64_t>(tokens.size()) || n > gen.n_ctx()) {
    return Status::InvalidArgument("round trip of " + std::to_string(n) + " positions with " +
                                   std::to_string(tokens.size()) + " tokens in a context of " +
                                   std::to_string(gen.n_ctx()));
  }
  const ModelConfig& c = gen.model().config();
  int64_t p0 = 0;
  for (; p0 + chunk_tokens <= n; p0 += chunk_tokens) {
    ChunkMeta meta;
    meta.model_fingerprint = gen.model().fingerprint();
    meta.kv_format = "f16";
    meta.n_layers = c.n_layers;
    meta.n_kv_heads = c.n_kv_heads;
    meta.head_dim = c.head_dim;
    meta.first_position = p0;
    meta.tokens.assign(tokens.begin() + p0, tokens.begin() + p0 + chunk_tokens);
    STRATA_ASSIGN_OR_RETURN(ChunkBlob blob, EncodeChunk(meta, gen.kv(), 0, enc));
    STRATA_ASSIGN_OR_RETURN(ChunkReader reader, ChunkReader::Open(std::move(blob), meta));
    for (int l = 0; l < c.n_layers; ++l) STRATA_RETURN_IF_ERROR(reader.DecodeLayer(l, gen.kv().View(0, l)));
  }
  return p0;
}

}  // namespace strata
