// The KV chunk format: round trips from a real KV cache, and a reader that
// rejects every kind of damage.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "cache/chunk_format.h"
#include "kernels/fp16.h"
#include "kv/contiguous_kv_cache.h"

namespace strata {
namespace {

constexpr int kLayers = 3;
constexpr int kHeads = 2;
constexpr int kHeadDim = 8;
constexpr int64_t kKvDim = kHeads * kHeadDim;

ChunkMeta MakeMeta(int n_tokens, int64_t first_position) {
  ChunkMeta m;
  m.key = ChunkKey{0x0123456789abcdefull, 0xfedcba9876543210ull};
  m.model_fingerprint = "0123456789abcdef0123456789abcdef";
  m.kv_format = "f16";
  m.n_layers = kLayers;
  m.n_kv_heads = kHeads;
  m.head_dim = kHeadDim;
  m.first_position = first_position;
  for (int i = 0; i < n_tokens; ++i) m.tokens.push_back(1000 + 7 * i);
  return m;
}

// A KV cache whose rows hold distinct known values (including subnormals,
// signed zeros and large magnitudes, so a lossy or byte-swapping path shows).
std::unique_ptr<ContiguousKvCache> FilledCache(int64_t positions, uint32_t seed) {
  auto kv = ContiguousKvCache::Create(kLayers, kKvDim, 2, 64);
  EXPECT_TRUE(kv.ok());
  EXPECT_TRUE((*kv)->Reserve(0, positions).ok());
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 2.0f);
  for (int l = 0; l < kLayers; ++l) {
    KvLayerView v = (*kv)->View(0, l);
    for (int64_t p = 0; p < positions; ++p) {
      for (int64_t d = 0; d < kKvDim; ++d) {
        v.KRow(p)[d] = Fp32ToFp16(dist(rng));
        v.VRow(p)[d] = Fp32ToFp16(dist(rng) * 10);
      }
    }
    v.KRow(0)[0] = 0x0001;  // smallest subnormal
    v.KRow(0)[1] = 0x8000;  // -0
    v.VRow(0)[0] = 0x7bff;  // 65504
  }
  return std::move(*kv);
}

std::unique_ptr<ContiguousKvCache> EmptyCache(int64_t positions) {
  auto kv = ContiguousKvCache::Create(kLayers, kKvDim, 2, 64);
  EXPECT_TRUE(kv.ok());
  EXPECT_TRUE((*kv)->Reserve(0, positions).ok());
  return std::move(*kv);
}

const ChunkEncoding kAllF16[] = {
    {ChunkCodec::kRaw, ChunkDType::kF16, 1},
    {ChunkCodec::kZstd, ChunkDType::kF16, 3},
    {ChunkCodec::kLz4, ChunkDType::kF16, 1},
};

TEST(CacheFormat, NamesParseAndPrint) {
  for (auto c : {ChunkCodec::kRaw, ChunkCodec::kZstd, ChunkCodec::kLz4}) {
    auto p = ParseChunkCodec(ChunkCodecName(c));
    ASSERT_TRUE(p.ok());
    EXPECT_EQ(*p, c);
  }
  for (auto d : {ChunkDType::kF16, ChunkDType::kInt8}) {
    auto p = ParseChunkDType(ChunkDTypeName(d));
    ASSERT_TRUE(p.ok());
    EXPECT_EQ(*p, d);
  }
  EXPECT_EQ(ParseChunkCodec("gzip").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseChunkDType("fp8").status().code(), StatusCode::kInvalidArgument);
}

TEST(CacheFormat, F16RoundTripIsBitExactForEveryCodec) {
  const ChunkMeta meta = MakeMeta(16, 8);
  auto src = FilledCache(32, 1);
  for (const ChunkEncoding& enc : kAllF16) {
    SCOPED_TRACE(std::string(ChunkCodecName(enc.codec)));
    auto blob = EncodeChunk(meta, *src, 0, enc);
    ASSERT_TRUE(blob.ok()) << blob.status().ToString();
    auto reader = ChunkReader::Open(*blob, meta);
    ASSERT_TRUE(reader.ok()) << reader.status().ToString();
    EXPECT_EQ(reader->encoding().codec, enc.codec);
    EXPECT_EQ(reader->token_count(), 16);
    EXPECT_EQ(reader->first_position(), 8);
    auto dst = EmptyCache(32);
    for (int l = 0; l < kLayers; ++l) ASSERT_TRUE(reader->DecodeLayer(l, dst->View(0, l)).ok());
    for (int l = 0; l < kLayers; ++l) {
      KvLayerView a = src->View(0, l), b = dst->View(0, l);
      for (int64_t p = 0; p < 32; ++p) {
        const bool in_chunk = p >= 8 && p < 24;
        for (int64_t d = 0; d < kKvDim; ++d) {
          if (in_chunk) {
            ASSERT_EQ(a.KRow(p)[d], b.KRow(p)[d]) << "layer " << l << " pos " << p;
            ASSERT_EQ(a.VRow(p)[d], b.VRow(p)[d]) << "layer " << l << " pos " << p;
          } else {
            ASSERT_EQ(b.KRow(p)[d], 0) << "decode wrote outside the chunk at " << p;
          }
        }
      }
    }
  }
}

TEST(CacheFormat, SkipLeavesEarlierRowsUntouched) {
  const ChunkMeta meta = MakeMeta(8, 0);
  auto src = FilledCache(8, 2);
  auto blob = EncodeChunk(meta, *src, 0, {ChunkCodec::kZstd, ChunkDType::kF16, 1});
  ASSERT_TRUE(blob.ok());
  auto reader = ChunkReader::Open(*blob, meta);
  ASSERT_TRUE(reader.ok());
  auto dst = EmptyCache(8);
  KvLayerView v = dst->View(0, 1);
  for (int64_t d = 0; d < kKvDim; ++d) v.KRow(2)[d] = 0x3c00;  // 1.0, held by the engine already
  ASSERT_TRUE(reader->DecodeLayer(1, v, 3).ok());
  for (int64_t d = 0; d < kKvDim; ++d) {
    EXPECT_EQ(v.KRow(2)[d], 0x3c00);
    EXPECT_EQ(v.KRow(0)[d], 0);
    EXPECT_EQ(v.KRow(5)[d], src->View(0, 1).KRow(5)[d]);
  }
  EXPECT_EQ(reader->DecodeLayer(1, v, 9).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(reader->DecodeLayer(kLayers, v).code(), StatusCode::kInvalidArgument);
}

TEST(CacheFormat, Int8StaysWithinItsErrorBoundAndIsSmaller) {
  const ChunkMeta meta = MakeMeta(16, 0);
  auto src = FilledCache(16, 3);
  auto f16 = EncodeChunk(meta, *src, 0, {ChunkCodec::kRaw, ChunkDType::kF16, 1});
  ASSERT_TRUE(f16.ok());
  for (auto codec : {ChunkCodec::kRaw, ChunkCodec::kZstd, ChunkCodec::kLz4}) {
    auto blob = EncodeChunk(meta, *src, 0, {codec, ChunkDType::kInt8, 1});
    ASSERT_TRUE(blob.ok()) << blob.status().ToString();
    if (codec == ChunkCodec::kRaw) {
      // head_dim 8: 2 + 8 bytes per head instead of 16.
      EXPECT_LT(blob->size(), f16->size() * 7 / 10);
    }
    auto reader = ChunkReader::Open(*blob, meta);
    ASSERT_TRUE(reader.ok()) << reader.status().ToString();
    EXPECT_EQ(reader->encoding().dtype, ChunkDType::kInt8);
    auto dst = EmptyCache(16);
    for (int l = 0; l < kLayers; ++l) ASSERT_TRUE(reader->DecodeLayer(l, dst->View(0, l)).ok());
    for (int l = 0; l < kLayers; ++l) {
      for (int which = 0; which < 2; ++which) {
        for (int64_t p = 0; p < 16; ++p) {
          const fp16_t* a = which ? src->View(0, l).VRow(p) : src->View(0, l).KRow(p);
          const fp16_t* b = which ? dst->View(0, l).VRow(p) : dst->View(0, l).KRow(p);
          for (int h = 0; h < kHeads; ++h) {
            float absmax = 0;
            for (int d = 0; d < kHeadDim; ++d) absmax = std::max(absmax, std::fabs(Fp16ToFp32(a[h * kHeadDim + d])));
            // Half a quantization step, plus fp16 rounding of scale and result.
            const float bound = absmax / 127.0f * 0.5f * 1.01f + absmax * 2e-3f + 1e-6f;
            for (int d = 0; d < kHeadDim; ++d) {
              const float x = Fp16ToFp32(a[h * kHeadDim + d]), y = Fp16ToFp32(b[h * kHeadDim + d]);
              ASSERT_LE(std::fabs(x - y), bound) << "layer " << l << " pos " << p << " head " << h << " d " << d;
            }
          }
        }
      }
    }
  }
}

TEST(CacheFormat, TranscodeChangesEncodingAndKeepsValues) {
  const ChunkMeta meta = MakeMeta(12, 4);
  auto src = FilledCache(16, 4);
  auto raw = EncodeChunk(meta, *src, 0, {ChunkCodec::kRaw, ChunkDType::kF16, 1});
  ASSERT_TRUE(raw.ok());
  auto lz = TranscodeChunk(*raw, meta, {ChunkCodec::kLz4, ChunkDType::kF16, 1});
  ASSERT_TRUE(lz.ok()) << lz.status().ToString();
  auto zs = TranscodeChunk(*lz, meta, {ChunkCodec::kZstd, ChunkDType::kF16, 5});
  ASSERT_TRUE(zs.ok()) << zs.status().ToString();
  auto back = TranscodeChunk(*zs, meta, {ChunkCodec::kRaw, ChunkDType::kF16, 1});
  ASSERT_TRUE(back.ok());
  ASSERT_EQ(back->size(), raw->size());
  EXPECT_EQ(std::memcmp(back->bytes().data(), raw->bytes().data(), raw->size()), 0);
  auto same = TranscodeChunk(*raw, meta, {ChunkCodec::kRaw, ChunkDType::kF16, 1});
  ASSERT_TRUE(same.ok());
  EXPECT_EQ(same->bytes().data(), raw->bytes().data());  // no copy when nothing changes
  auto q = TranscodeChunk(*raw, meta, {ChunkCodec::kZstd, ChunkDType::kInt8, 1});
  ASSERT_TRUE(q.ok());
  auto qr = ChunkReader::Open(*q, meta);
  ASSERT_TRUE(qr.ok());
  EXPECT_EQ(qr->encoding().dtype, ChunkDType::kInt8);
  // A transcode verifies its input.
  std::vector<uint8_t> bad(raw->bytes().begin(), raw->bytes().end());
  bad.back() ^= 1;
  EXPECT_EQ(TranscodeChunk(ChunkBlob::Adopt(bad), meta, {ChunkCodec::kLz4, ChunkDType::kF16, 1}).status().code(),
            StatusCode::kCorrupt);
  // A re-encode that would decode more than its budget is refused up front;
  // this chunk decodes to 12 tokens x K,V x kv_dim f16 values per layer.
  const uint64_t need = uint64_t{12} * meta.n_layers * 2 * meta.n_kv_heads * meta.head_dim * 2;
  auto over = TranscodeChunk(*raw, meta, {ChunkCodec::kLz4, ChunkDType::kF16, 1}, need - 1);
  ASSERT_FALSE(over.ok());
  EXPECT_EQ(over.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(over.status().message().find("a re-encode may use"), std::string::npos) << over.status().message();
  EXPECT_TRUE(TranscodeChunk(*raw, meta, {ChunkCodec::kLz4, ChunkDType::kF16, 1}, need).ok());
}

TEST(CacheFormat, EncodeRejectsBadMeta) {
  auto src = FilledCache(16, 5);
  const ChunkEncoding enc;
  ChunkMeta m = MakeMeta(8, 0);
  m.n_layers = 2;
  EXPECT_EQ(EncodeChunk(m, *src, 0, enc).status().code(), StatusCode::kInvalidArgument);
  m = MakeMeta(8, 0);
  m.kv_format = "a-very-long-format-name";
  EXPECT_EQ(EncodeChunk(m, *src, 0, enc).status().code(), StatusCode::kInvalidArgument);
  m = MakeMeta(8, 0);
  m.model_fingerprint = std::string(33, 'a');
  EXPECT_EQ(EncodeChunk(m, *src, 0, enc).status().code(), StatusCode::kInvalidArgument);
  m = MakeMeta(0, 0);
  EXPECT_EQ(EncodeChunk(m, *src, 0, enc).status().code(), StatusCode::kInvalidArgument);
  m = MakeMeta(8, 60);
  EXPECT_EQ(EncodeChunk(m, *src, 0, enc).status().code(), StatusCode::kOutOfRange);
  m = MakeMeta(8, 0);
  EXPECT_EQ(EncodeChunk(m, *src, 7, enc).status().code(), StatusCode::kInvalidArgument);
}

// Opens and decodes every layer; the first failure.
Status OpenAndDecodeAll(std::span<const uint8_t> bytes, const ChunkMeta& meta, KvCache& dst) {
  auto r = ChunkReader::Open(ChunkBlob::Copy(bytes), meta);
  if (!r.ok()) return r.status();
  for (int l = 0; l < meta.n_layers; ++l) STRATA_RETURN_IF_ERROR(r->DecodeLayer(l, dst.View(0, l)));
  return Status::Ok();
}

TEST(CacheFormat, EveryFlippedByteIsRejected) {
  const ChunkMeta meta = MakeMeta(4, 0);
  auto src = FilledCache(4, 6);
  auto dst = EmptyCache(4);
  for (const ChunkEncoding& enc : {ChunkEncoding{ChunkCodec::kRaw, ChunkDType::kF16, 1},
                                   ChunkEncoding{ChunkCodec::kZstd, ChunkDType::kF16, 1},
                                   ChunkEncoding{ChunkCodec::kLz4, ChunkDType::kInt8, 1}}) {
    auto blob = EncodeChunk(meta, *src, 0, enc);
    ASSERT_TRUE(blob.ok());
    ASSERT_TRUE(OpenAndDecodeAll(blob->bytes(), meta, *dst).ok());
    std::vector<uint8_t> bytes(blob->bytes().begin(), blob->bytes().end());
    for (size_t i = 0; i < bytes.size(); ++i) {
      for (uint8_t mask : {uint8_t{0x01}, uint8_t{0x80}}) {
        bytes[i] ^= mask;
        const Status st = OpenAndDecodeAll(bytes, meta, *dst);
        ASSERT_EQ(st.code(), StatusCode::kCorrupt) << "byte " << i << " mask " << int(mask) << ": " << st.ToString();
        ASSERT_FALSE(st.message().empty());
        bytes[i] ^= mask;
      }
    }
  }
}

TEST(CacheFormat, EveryTruncationAndExtensionIsRejected) {
  const ChunkMeta meta = MakeMeta(4, 0);
  auto src = FilledCache(4, 7);
  auto dst = EmptyCache(4);
  for (const ChunkEncoding& enc : kAllF16) {
    auto blob = EncodeChunk(meta, *src, 0, enc);
    ASSERT_TRUE(blob.ok());
    for (size_t n = 0; n < blob->size(); ++n) {
      const Status st = OpenAndDecodeAll(blob->bytes().first(n), meta, *dst);
      ASSERT_EQ(st.code(), StatusCode::kCorrupt) << "prefix " << n << ": " << st.ToString();
    }
    std::vector<uint8_t> longer(blob->bytes().begin(), blob->bytes().end());
    longer.push_back(0);
    EXPECT_EQ(OpenAndDecodeAll(longer, meta, *dst).code(), StatusCode::kCorrupt);
  }
}

TEST(CacheFormat, ReaderInsistsOnEveryExpectedField) {
  const ChunkMeta meta = MakeMeta(8, 16);
  auto src = FilledCache(32, 8);
  auto blob = EncodeChunk(meta, *src, 0, {ChunkCodec::kLz4, ChunkDType::kF16, 1});
  ASSERT_TRUE(blob.ok());
  ASSERT_TRUE(ChunkReader::Open(*blob, meta).ok());
  auto expect_corrupt = [&](const ChunkMeta& m, const char* what) {
    auto r = ChunkReader::Open(*blob, m);
    ASSERT_FALSE(r.ok()) << what;
    EXPECT_EQ(r.status().code(), StatusCode::kCorrupt) << what;
    EXPECT_FALSE(r.status().message().empty());
  };
  ChunkMeta m = meta;
  m.model_fingerprint[5] = 'x';
  expect_corrupt(m, "fingerprint");
  m = meta;
  m.key.lo ^= 1;
  expect_corrupt(m, "key");
  m = meta;
  m.kv_format = "q8";
  expect_corrupt(m, "kv format");
  m = meta;
  m.n_layers = 2;
  expect_corrupt(m, "layers");
  m = meta;
  m.n_kv_heads = 1;
  m.head_dim = 16;
  expect_corrupt(m, "heads");
  m = meta;
  m.first_position = 0;
  expect_corrupt(m, "position");
  m = meta;
  m.tokens.pop_back();
  expect_corrupt(m, "token count");
  for (size_t i = 0; i < meta.tokens.size(); ++i) {
    m = meta;
    m.tokens[i] += 1;
    expect_corrupt(m, "token");
  }
}

// Rewrites a header field and fixes the header checksum, as a chunk from
// another build or model would look: the reader must still say no.
TEST(CacheFormat, OtherVersionIsRejectedEvenWithAValidChecksum) {
  const ChunkMeta meta = MakeMeta(4, 0);
  auto src = FilledCache(4, 9);
  auto blob = EncodeChunk(meta, *src, 0, {});
  ASSERT_TRUE(blob.ok());
  std::vector<uint8_t> b(blob->bytes().begin(), blob->bytes().end());
  b[4] = 2;  // version 2
  auto r = ChunkReader::Open(ChunkBlob::Adopt(b), meta);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kCorrupt);
  EXPECT_NE(r.status().message().find("version"), std::string::npos) << r.status().message();
}

}  // namespace
}  // namespace strata
