// ChunkKey: the name of one chunk of KV in the cache store.
//
// A prompt is cut into chunks of `chunk_tokens` tokens from position 0. Chunk
// i's key is a chained hash: xxh3-128 over (key of chunk i-1, or all zeros for
// chunk 0; the chunk's token ids as little-endian int32; the model
// fingerprint; the KV format; the cache salt). So a key names the whole
// prefix up to the end of its chunk, in one model, one KV layout and one
// tenant; it is identical across processes and machines (no per-process
// seed). Only full chunks get keys.
//
// Keys are names, not proof: a stored chunk carries its tokens and header,
// and every hit is verified against them (chunk_format.h).
//
// Thread-safety: plain values and pure functions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "model/tokenizer.h"

namespace strata {

struct ChunkKey {
  uint64_t hi = 0;
  uint64_t lo = 0;

  // 32 lowercase hex digits (hi then lo), the form used in file names, Redis
  // keys and the control API.
  std::string Hex() const;
  static std::optional<ChunkKey> FromHex(std::string_view hex);
  bool operator==(const ChunkKey&) const = default;
};

struct ChunkKeyHash {
  size_t operator()(const ChunkKey& k) const { return static_cast<size_t>(k.lo ^ (k.hi * 0x9e3779b97f4a7c15ull)); }
};

// Everything besides the tokens that changes the KV, or who may share it.
struct ChunkKeyContext {
  std::string model_fingerprint;  // Model::fingerprint()
  std::string kv_format;          // the engine's KV layout, e.g. "f16" (kv_format.h)
  std::string cache_salt;         // tenant isolation; "" = shared
  int chunk_tokens = 256;
};

// Keys of the full chunks of `tokens` (tokens.size() / chunk_tokens of them).
// REQUIRES: ctx.chunk_tokens > 0.
std::vector<ChunkKey> ComputeChunkKeys(std::span<const TokenId> tokens, const ChunkKeyContext& ctx);

// One link of the chain: the key of a chunk with these tokens after `parent`
// (nullopt for the first chunk).
ChunkKey NextChunkKey(const std::optional<ChunkKey>& parent, std::span<const TokenId> chunk_tokens,
                      const ChunkKeyContext& ctx);

}  // namespace strata
