// A chain of KV chunks as the engine stores them, for the store and tier
// tests: deterministic f16 KV for sequence 0 of a contiguous cache, real chunk
// keys and metadata, encoded blobs, and a bit-exact check that a blob decodes
// back to its chunk's rows.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "cache/chunk_format.h"
#include "cache/chunk_key.h"
#include "kernels/fp16.h"
#include "kv/contiguous_kv_cache.h"

namespace strata::testing {

struct KvChunkChain {
  struct Shape {
    int layers;
    int heads;
    int head_dim;
    int chunk;  // tokens per chunk
  };

  Shape s;
  std::unique_ptr<ContiguousKvCache> kv;  // sequence 0: the chain; 1: scratch for Matches
  ChunkKeyContext ctx;
  std::vector<TokenId> tokens;
  std::vector<ChunkKey> keys;

  // `capacity` positions per sequence (at least the chain's); the token ids
  // are first_token + i * token_step.
  KvChunkChain(Shape shape, int n_chunks, std::string fingerprint, TokenId first_token, TokenId token_step,
               int64_t capacity = 0)
      : s(shape) {
    const int64_t n = int64_t{n_chunks} * s.chunk;
    const int kv_dim = s.heads * s.head_dim;
    kv = ContiguousKvCache::Create(s.layers, kv_dim, 2, std::max(n, capacity)).value();
    EXPECT_TRUE(kv->Reserve(0, n).ok());
    for (int l = 0; l < s.layers; ++l) {
      KvLayerView v = kv->View(0, l);
      for (int64_t p = 0; p < n; ++p) {
        for (int d = 0; d < kv_dim; ++d) {
          v.KRow(p)[d] = Fp32ToFp16(0.01f * static_cast<float>((l * 131 + p * 7 + d) % 200) - 1.0f);
          v.VRow(p)[d] = Fp32ToFp16(0.02f * static_cast<float>((l * 17 + p * 3 + d * 5) % 150) - 1.5f);
        }
      }
    }
    ctx.model_fingerprint = std::move(fingerprint);
    ctx.kv_format = "f16";
    ctx.chunk_tokens = s.chunk;
    for (int64_t i = 0; i < n; ++i) tokens.push_back(static_cast<TokenId>(first_token + i * token_step));
    keys = ComputeChunkKeys(tokens, ctx);
  }

  ChunkMeta Meta(int i) const {
    ChunkMeta m;
    m.key = keys[i];
    m.model_fingerprint = ctx.model_fingerprint;
    m.kv_format = ctx.kv_format;
    m.n_layers = s.layers;
    m.n_kv_heads = s.heads;
    m.head_dim = s.head_dim;
    m.first_position = int64_t{i} * s.chunk;
    m.tokens.assign(tokens.begin() + int64_t{i} * s.chunk, tokens.begin() + int64_t{i + 1} * s.chunk);
    return m;
  }

  ChunkBlob Blob(int i) { return *EncodeChunk(Meta(i), *kv, 0, ChunkEncoding{}); }

  // Decodes `blob` into sequence 1 and compares chunk i's rows with sequence 0.
  bool Matches(int i, const ChunkBlob& blob) {
    auto r = ChunkReader::Open(blob, Meta(i));
    if (!r.ok()) return false;
    kv->Clear(1);
    if (!kv->Reserve(1, int64_t{i + 1} * s.chunk).ok()) return false;
    const size_t row_bytes = static_cast<size_t>(s.heads) * s.head_dim * 2;
    for (int l = 0; l < s.layers; ++l) {
      if (!r->DecodeLayer(l, kv->View(1, l)).ok()) return false;
      KvLayerView a = kv->View(0, l), b = kv->View(1, l);
      for (int64_t p = int64_t{i} * s.chunk; p < int64_t{i + 1} * s.chunk; ++p) {
        if (std::memcmp(a.KRow(p), b.KRow(p), row_bytes) != 0) return false;
        if (std::memcmp(a.VRow(p), b.VRow(p), row_bytes) != 0) return false;
      }
    }
    return true;
  }
};

}  // namespace strata::testing
