// Round trips of engine KV through the KV chunk format, to measure what an
// encoding (lossy int8 in particular) costs the model: the KV a store tier in
// that encoding would hand back replaces the computed KV in place. Used by
// `strata eval --kv-roundtrip` and `strata perplexity --kv-roundtrip`.
//
// Thread-safety: functions are reentrant; a Generator belongs to one thread.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>

#include "base/status.h"
#include "cache/chunk_format.h"
#include "engine/generator.h"

namespace strata {

// "int8", "f16", "lz4,int8", "zstd", ...: at most one dtype (f16, int8) and
// at most one codec (raw, zstd, lz4), in any order; the defaults are f16 and raw.
Expected<ChunkEncoding> ParseChunkEncodingSpec(std::string_view spec);

// "int8/lz4" style name for summaries.
std::string ChunkEncodingName(const ChunkEncoding& enc);

// Encodes the KV of slot 0 at positions [c * chunk_tokens, (c + 1) *
// chunk_tokens) for every chunk c that lies wholly inside [0, n) and decodes
// it back into the same rows, as a load of those chunks from a store tier
// would. Positions past the last whole chunk keep their computed KV (a store
// only ever holds whole chunks). `tokens` are the tokens at positions [0, n)
// (the chunk format records and verifies them). Returns how many positions
// were round-tripped.
Expected<int64_t> RoundTripKv(Generator& gen, std::span<const TokenId> tokens, int64_t n, const ChunkEncoding& enc,
                              int64_t chunk_tokens);

}  // namespace strata
