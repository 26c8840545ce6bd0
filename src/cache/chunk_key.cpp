#include "cache/chunk_key.h"

#include <xxhash.h>

#include <cstring>

namespace strata {

namespace {

void AppendU32(std::string& buf, uint32_t v) {
  for (int i = 0; i < 4; ++i) buf.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

void AppendU64(std::string& buf, uint64_t v) {
  for (int i = 0; i < 8; ++i) buf.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

// Length-prefixed, so ("ab", "c") and ("a", "bc") never hash alike.
void AppendField(std::string& buf, std::string_view s) {
  AppendU32(buf, static_cast<uint32_t>(s.size()));
  buf.append(s);
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

std::string ChunkKey::Hex() const {
  static const char* kDigits = "0123456789abcdef";
  std::string out(32, '0');
  for (int i = 0; i < 16; ++i) {
    out[15 - i] = kDigits[(hi >> (4 * i)) & 0xf];
    out[31 - i] = kDigits[(lo >> (4 * i)) & 0xf];
  }
  return out;
}

std::optional<ChunkKey> ChunkKey::FromHex(std::string_view hex) {
  if (hex.size() != 32) return std::nullopt;
  ChunkKey k;
  for (int i = 0; i < 32; ++i) {
    const int d = HexDigit(hex[i]);
    if (d < 0) return std::nullopt;
    uint64_t& word = i < 16 ? k.hi : k.lo;
    word = (word << 4) | static_cast<uint64_t>(d);
  }
  return k;
}

ChunkKey NextChunkKey(const std::optional<ChunkKey>& parent, std::span<const TokenId> chunk_tokens,
                      const ChunkKeyContext& ctx) {
  std::string buf;
  buf.reserve(64 + chunk_tokens.size() * 4 + ctx.model_fingerprint.size() + ctx.kv_format.size() +
              ctx.cache_salt.size());
  buf.append("strata-chunk-v1");
  buf.push_back(parent ? 1 : 0);
  AppendU64(buf, parent ? parent->hi : 0);
  AppendU64(buf, parent ? parent->lo : 0);
  AppendU32(buf, static_cast<uint32_t>(chunk_tokens.size()));
  for (TokenId t : chunk_tokens) AppendU32(buf, static_cast<uint32_t>(t));
  AppendField(buf, ctx.model_fingerprint);
  AppendField(buf, ctx.kv_format);
  AppendField(buf, ctx.cache_salt);
  const XXH128_hash_t h = XXH3_128bits(buf.data(), buf.size());
  return ChunkKey{h.high64, h.low64};
}

std::vector<ChunkKey> ComputeChunkKeys(std::span<const TokenId> tokens, const ChunkKeyContext& ctx) {
  std::vector<ChunkKey> keys;
  if (ctx.chunk_tokens <= 0) return keys;
  const size_t n = static_cast<size_t>(ctx.chunk_tokens);
  std::optional<ChunkKey> parent;
  for (size_t i = 0; i + n <= tokens.size(); i += n) {
    parent = NextChunkKey(parent, tokens.subspan(i, n), ctx);
    keys.push_back(*parent);
  }
  return keys;
}

}  // namespace strata
