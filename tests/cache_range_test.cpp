// Layer-wise reads: Tier::GetRange on every tier (host, disk, Redis) and
// the streaming chunk reader (OpenPrefix + DecodeSection) that the engine's
// loader uses, checked against the whole-chunk path (Get + Open +
// DecodeLayer) as the oracle.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "cache/chunk_format.h"
#include "cache/disk_tier.h"
#include "cache/host_tier.h"
#include "cache/redis_tier.h"
#include "kernels/fp16.h"
#include "kv/contiguous_kv_cache.h"
#include "redis_test_server.h"

namespace strata {
namespace {

namespace fs = std::filesystem;

constexpr int kLayers = 4;
constexpr int kHeads = 2;
constexpr int kHeadDim = 16;
constexpr int64_t kKvDim = kHeads * kHeadDim;
constexpr int kTokens = 48;

ChunkMeta Meta(uint64_t salt = 0) {
  ChunkMeta m;
  m.key = ChunkKey{0x1111 + salt, 0x2222};
  m.model_fingerprint = "00112233445566778899aabbccddeeff";
  m.kv_format = "f16";
  m.n_layers = kLayers;
  m.n_kv_heads = kHeads;
  m.head_dim = kHeadDim;
  m.first_position = kTokens;  // the chunk's rows start at position 48
  for (int i = 0; i < kTokens; ++i) m.tokens.push_back(500 + 3 * i);
  return m;
}

std::unique_ptr<ContiguousKvCache> Cache(bool fill) {
  auto kv = ContiguousKvCache::Create(kLayers, kKvDim, 1, 2 * kTokens);
  EXPECT_TRUE(kv.ok());
  EXPECT_TRUE((*kv)->Reserve(0, 2 * kTokens).ok());
  if (fill) {
    std::mt19937 rng(7);
    std::normal_distribution<float> d(0, 1);
    for (int l = 0; l < kLayers; ++l) {
      KvLayerView v = (*kv)->View(0, l);
      for (int64_t p = 0; p < 2 * kTokens; ++p) {
        for (int64_t i = 0; i < kKvDim; ++i) {
          v.KRow(p)[i] = Fp32ToFp16(d(rng));
          v.VRow(p)[i] = Fp32ToFp16(d(rng));
        }
      }
    }
  }
  return std::move(*kv);
}

std::vector<fp16_t> Rows(KvCache& kv, int layer) {
  KvLayerView v = kv.View(0, layer);
  std::vector<fp16_t> r;
  for (int64_t p = 0; p < 2 * kTokens; ++p) {
    r.insert(r.end(), v.KRow(p), v.KRow(p) + kKvDim);
    r.insert(r.end(), v.VRow(p), v.VRow(p) + kKvDim);
  }
  return r;
}

ChunkBlob Encode(const ChunkMeta& m, KvCache& kv, ChunkEncoding enc) {
  auto b = EncodeChunk(m, kv, 0, enc);
  EXPECT_TRUE(b.ok()) << b.status().ToString();
  return *b;
}

// Streams `blob` out of `tier` range by range into a fresh cache and checks
// the rows equal a whole-chunk decode of the same blob.
void ExpectStreamedEqualsWhole(Tier& tier, const ChunkMeta& m, const ChunkBlob& blob, int64_t skip) {
  auto head = tier.GetRange(m.key, ByteRange{0, ChunkPrefixBytes(m)}).get();
  ASSERT_TRUE(head.ok()) << head.status().ToString();
  auto reader = ChunkReader::OpenPrefix(head->bytes(), m);
  ASSERT_TRUE(reader.ok()) << reader.status().ToString();
  auto streamed = Cache(false);
  for (int l = 0; l < kLayers; ++l) {
    auto sec = tier.GetRange(m.key, reader->SectionRange(l)).get();
    ASSERT_TRUE(sec.ok()) << sec.status().ToString();
    ASSERT_TRUE(reader->DecodeSection(l, sec->bytes(), streamed->View(0, l), skip).ok());
  }
  auto whole = Cache(false);
  auto r2 = ChunkReader::Open(blob, m);
  ASSERT_TRUE(r2.ok());
  for (int l = 0; l < kLayers; ++l) {
    ASSERT_TRUE(r2->DecodeLayer(l, whole->View(0, l), skip).ok());
    EXPECT_EQ(Rows(*streamed, l), Rows(*whole, l)) << "layer " << l;
  }
}

TEST(ChunkStreaming, PrefixAndSectionsDecodeLikeTheWholeChunk) {
  auto kv = Cache(true);
  const ChunkMeta m = Meta();
  for (ChunkEncoding enc : {ChunkEncoding{ChunkCodec::kRaw, ChunkDType::kF16, 1},
                            ChunkEncoding{ChunkCodec::kZstd, ChunkDType::kF16, 3},
                            ChunkEncoding{ChunkCodec::kLz4, ChunkDType::kInt8, 1}}) {
    SCOPED_TRACE(std::string(ChunkCodecName(enc.codec)) + "/" + std::string(ChunkDTypeName(enc.dtype)));
    const ChunkBlob blob = Encode(m, *kv, enc);
    HostTierOptions o;
    o.capacity_bytes = 1 << 20;
    auto host = HostTier::Create(o);
    ASSERT_TRUE(host.ok());
    ASSERT_TRUE((*host)->Put(m.key, blob).get().ok());
    for (int64_t skip : {0, 5}) ExpectStreamedEqualsWhole(**host, m, blob, skip);
  }
}

TEST(ChunkStreaming, PrefixReaderRejectsWhatOpenRejects) {
  auto kv = Cache(true);
  const ChunkMeta m = Meta();
  const ChunkBlob blob = Encode(m, *kv, ChunkEncoding{});
  const auto bytes = blob.bytes();
  const size_t n = ChunkPrefixBytes(m);
  ASSERT_LT(n, bytes.size());
  // A short prefix, another chunk's tokens, a flipped header byte.
  EXPECT_EQ(ChunkReader::OpenPrefix(bytes.first(n - 1), m).status().code(), StatusCode::kCorrupt);
  ChunkMeta other = m;
  other.tokens[7] += 1;
  EXPECT_EQ(ChunkReader::OpenPrefix(bytes.first(n), other).status().code(), StatusCode::kCorrupt);
  std::vector<uint8_t> bad(bytes.begin(), bytes.begin() + static_cast<ptrdiff_t>(n));
  bad[100] ^= 1;
  EXPECT_EQ(ChunkReader::OpenPrefix(bad, m).status().code(), StatusCode::kCorrupt);
  // A section of the wrong size or with a flipped bit.
  auto reader = ChunkReader::OpenPrefix(bytes.first(n), m);
  ASSERT_TRUE(reader.ok()) << reader.status().ToString();
  auto dst = Cache(false);
  const ByteRange r = reader->SectionRange(2);
  std::vector<uint8_t> sec(bytes.begin() + static_cast<ptrdiff_t>(r.offset),
                           bytes.begin() + static_cast<ptrdiff_t>(r.offset + r.length));
  EXPECT_EQ(reader->DecodeSection(2, std::span<const uint8_t>(sec).first(sec.size() - 1), dst->View(0, 2)).code(),
            StatusCode::kCorrupt);
  sec[sec.size() / 2] ^= 0x10;
  EXPECT_EQ(reader->DecodeSection(2, sec, dst->View(0, 2)).code(), StatusCode::kCorrupt);
  EXPECT_EQ(Rows(*dst, 2), Rows(*Cache(false), 2)) << "a section that failed its checksum wrote rows";
  // Whole-chunk decoding is not available on a prefix reader.
  EXPECT_FALSE(reader->DecodeLayer(0, dst->View(0, 0)).ok());
}

std::string TempDir(const std::string& name) {
  const auto d = fs::temp_directory_path() / ("strata_range_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d.string();
}

TEST(TierGetRange, DiskReadsRangesAndCatchesTornFiles) {
  const std::string dir = TempDir("disk");
  DiskTierOptions o;
  o.dir = dir;
  o.fsync = false;
  auto disk = DiskTier::Open(o);
  ASSERT_TRUE(disk.ok()) << disk.status().ToString();
  auto kv = Cache(true);
  const ChunkMeta m = Meta();
  const ChunkBlob blob = Encode(m, *kv, ChunkEncoding{});
  ASSERT_TRUE((*disk)->Put(m.key, blob).get().ok());
  (*disk)->Flush();
  const uint64_t hits = (*disk)->stats().hits;
  ExpectStreamedEqualsWhole(**disk, m, blob, 0);
  EXPECT_EQ((*disk)->stats().hits, hits + 1) << "a chunk read range by range counts one hit";
  // Exact bytes at an arbitrary range; past the end is corrupt; absent is a miss.
  auto part = (*disk)->GetRange(m.key, ByteRange{1000, 333}).get();
  ASSERT_TRUE(part.ok());
  EXPECT_TRUE(std::equal(part->bytes().begin(), part->bytes().end(), blob.bytes().begin() + 1000));
  EXPECT_EQ((*disk)->GetRange(m.key, ByteRange{blob.size() - 10, 11}).get().status().code(), StatusCode::kCorrupt);
  EXPECT_EQ((*disk)->GetRange(Meta(9).key, ByteRange{0, 10}).get().status().code(), StatusCode::kNotFound);
  // A torn file (shorter than its header says): corrupt, and dropped.
  const std::string path = (*disk)->PathFor(m.key);
  fs::resize_file(path, fs::file_size(path) - 100);
  EXPECT_EQ((*disk)->GetRange(m.key, ByteRange{0, 10}).get().status().code(), StatusCode::kCorrupt);
  EXPECT_FALSE(fs::exists(path));
  EXPECT_FALSE((*disk)->Contains(m.key));
  fs::remove_all(dir);
}

TEST(TierGetRange, RedisUsesGetrange) {
  if (!testing::HaveRedisServer()) GTEST_SKIP() << "no redis-server";
  testing::RedisTestServer server;
  ASSERT_TRUE(server.Start());
  RedisTierOptions o;
  o.port = server.port();
  auto redis = RedisTier::Open(o);
  ASSERT_TRUE(redis.ok()) << redis.status().ToString();
  auto kv = Cache(true);
  const ChunkMeta m = Meta();
  const ChunkBlob blob = Encode(m, *kv, ChunkEncoding{ChunkCodec::kLz4, ChunkDType::kF16, 1});
  ASSERT_TRUE((*redis)->Put(m.key, blob).get().ok());
  const uint64_t read_before = (*redis)->stats().bytes_read;
  ExpectStreamedEqualsWhole(**redis, m, blob, 3);
  EXPECT_EQ((*redis)->stats().bytes_read - read_before, blob.size()) << "ranges moved more than the chunk's bytes";
  EXPECT_EQ((*redis)->GetRange(Meta(9).key, ByteRange{0, 10}).get().status().code(), StatusCode::kNotFound);
  EXPECT_EQ((*redis)->GetRange(m.key, ByteRange{blob.size() - 10, 11}).get().status().code(), StatusCode::kCorrupt);
  // Redis down: an error value, at once.
  server.Stop();
  auto down = (*redis)->GetRange(m.key, ByteRange{0, 10}).get();
  EXPECT_FALSE(down.ok());
  EXPECT_NE(down.status().code(), StatusCode::kNotFound);
}

}  // namespace
}  // namespace strata
