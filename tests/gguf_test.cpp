#include "model/gguf.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "model/gguf_writer.h"

namespace strata {
namespace {

using Bytes = std::vector<uint8_t>;

// ---------------------------------------------------------------------------
// Helpers

// Hand-built byte streams for inputs the writer refuses to produce.
struct Raw {
  Bytes b;
  Raw& u8(uint8_t v) { b.push_back(v); return *this; }
  Raw& u32(uint32_t v) { GgufWriter::AppendRaw(&b, v); return *this; }
  Raw& u64(uint64_t v) { GgufWriter::AppendRaw(&b, v); return *this; }
  Raw& str(std::string_view s) { GgufWriter::AppendString(&b, s); return *this; }
  Raw& zeros(size_t n) { b.resize(b.size() + n, 0); return *this; }
};

Raw Header(uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
  Raw r;
  r.u32(0x46554747).u32(version).u64(n_tensors).u64(n_kv);
  return r;
}

Bytes Pattern(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  Bytes out(n);
  for (auto& x : out) x = static_cast<uint8_t>(rng());
  return out;
}

Bytes MustBuffer(const GgufWriter& w) {
  auto buf = w.ToBuffer();
  EXPECT_TRUE(buf.ok()) << buf.status().ToString();
  return buf.ok() ? std::move(buf).value() : Bytes{};
}

// Position right after the bytes of `s` (the first occurrence) in `b`.
size_t After(const Bytes& b, std::string_view s) {
  auto it = std::search(b.begin(), b.end(), s.begin(), s.end());
  EXPECT_NE(it, b.end()) << "'" << s << "' not in buffer";
  return static_cast<size_t>(it - b.begin()) + s.size();
}

template <typename T>
void Poke(Bytes* b, size_t pos, T v) {
  ASSERT_LE(pos + sizeof(T), b->size());
  std::memcpy(b->data() + pos, &v, sizeof(T));
}

// Tensor-info field positions, located from the tensor's (unique) name.
struct InfoPos {
  size_t n_dims, dims, type, offset;
};
InfoPos TensorInfoAt(const Bytes& b, std::string_view name, uint32_t n_dims) {
  const size_t p = After(b, name);
  return {p, p + 4, p + 4 + 8 * n_dims, p + 8 + 8 * n_dims};
}

// Expects parsing to fail with `code` and a message containing `needle`.
void ExpectError(const Bytes& b, StatusCode code, std::string_view needle) {
  auto f = GgufFile::FromBuffer(b);
  ASSERT_FALSE(f.ok()) << "parsed a file that should be rejected (expected: " << needle << ")";
  EXPECT_EQ(f.status().code(), code) << f.status().ToString();
  EXPECT_NE(f.status().message().find(needle), std::string::npos)
      << "message: " << f.status().message() << "\nexpected substring: " << needle;
}

// A small valid file: every metadata type and a few tensors of several types.
GgufWriter SmallWriter(uint32_t version = 3, uint32_t alignment = 0) {
  GgufWriter w(version);
  if (alignment != 0) w.SetAlignment(alignment);
  w.AddString("general.architecture", "llama");
  w.AddUint32("llama.block_count", 2);
  w.AddFloat32("llama.rope.freq_base", 10000.0f);
  w.AddBool("tokenizer.ggml.add_bos_token", true);
  const std::vector<std::string> vocab = {"<unk>", "<s>", "</s>", "a", "b"};
  w.AddStringArray("tokenizer.ggml.tokens", vocab);
  const std::vector<float> scores = {0.f, -1.f, -2.f, -3.5f, 4.25f};
  w.AddArray<float>("tokenizer.ggml.scores", scores);
  w.AddTensor("tok_embd.weight", DType::kF32, {4, 3}, Pattern(4 * 3 * 4, 1));
  w.AddTensor("blk.0.attn_q.weight", DType::kQ8_0, {32, 2}, Pattern(2 * 34, 2));
  w.AddTensor("output_norm.weight", DType::kF16, {5}, Pattern(10, 3));
  return w;
}

// ---------------------------------------------------------------------------
// Round trips

class GgufVersionTest : public ::testing::TestWithParam<uint32_t> {};

TEST_P(GgufVersionTest, EveryMetadataTypeRoundTrips) {
  GgufWriter w(GetParam());
  w.AddUint8("u8", 250);
  w.AddInt8("i8", -100);
  w.AddUint16("u16", 65000);
  w.AddInt16("i16", -32000);
  w.AddUint32("u32", 4000000000u);
  w.AddInt32("i32", -2000000000);
  w.AddUint64("u64", std::numeric_limits<uint64_t>::max());
  w.AddInt64("i64", std::numeric_limits<int64_t>::min());
  w.AddFloat32("f32", 1.5f);
  w.AddFloat64("f64", -2.25e100);
  w.AddBool("bool_t", true);
  w.AddBool("bool_f", false);
  w.AddString("str", "héllo wörld");
  w.AddString("empty_str", "");
  const std::vector<uint8_t> a_u8 = {1, 2, 255};
  const std::vector<int8_t> a_i8 = {-128, 0, 127};
  const std::vector<uint16_t> a_u16 = {0, 65535};
  const std::vector<int16_t> a_i16 = {-32768, 32767};
  const std::vector<uint32_t> a_u32 = {7, 8, 9};
  const std::vector<int32_t> a_i32 = {-1, 0, 1};
  const std::vector<uint64_t> a_u64 = {1ull << 40};
  const std::vector<int64_t> a_i64 = {-(1ll << 40), 5};
  const std::vector<float> a_f32 = {0.5f, -0.25f};
  const std::vector<double> a_f64 = {1e-300, 3.0};
  const std::array<bool, 3> a_bool = {true, false, true};
  const std::vector<std::string> a_str = {"x", "", "yz"};
  const std::vector<float> a_empty;
  w.AddArray<uint8_t>("a_u8", a_u8);
  w.AddArray<int8_t>("a_i8", a_i8);
  w.AddArray<uint16_t>("a_u16", a_u16);
  w.AddArray<int16_t>("a_i16", a_i16);
  w.AddArray<uint32_t>("a_u32", a_u32);
  w.AddArray<int32_t>("a_i32", a_i32);
  w.AddArray<uint64_t>("a_u64", a_u64);
  w.AddArray<int64_t>("a_i64", a_i64);
  w.AddArray<float>("a_f32", a_f32);
  w.AddArray<double>("a_f64", a_f64);
  w.AddArray<bool>("a_bool", a_bool);
  w.AddStringArray("a_str", a_str);
  w.AddArray<float>("a_empty", a_empty);

  const Bytes buf = MustBuffer(w);
  auto f = GgufFile::FromBuffer(buf);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  const GgufFile& g = **f;
  EXPECT_EQ(g.version(), GetParam());
  EXPECT_EQ(g.alignment(), 32u);
  EXPECT_TRUE(g.tensors().empty());

  EXPECT_EQ(*g.GetUint("u8"), 250u);
  EXPECT_EQ(*g.GetInt("i8"), -100);
  EXPECT_EQ(*g.GetUint("u16"), 65000u);
  EXPECT_EQ(*g.GetInt("i16"), -32000);
  EXPECT_EQ(*g.GetUint("u32"), 4000000000u);
  EXPECT_EQ(*g.GetInt("i32"), -2000000000);
  EXPECT_EQ(*g.GetUint("u64"), std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(*g.GetInt("i64"), std::numeric_limits<int64_t>::min());
  EXPECT_EQ(*g.GetFloat("f32"), 1.5);
  EXPECT_EQ(*g.GetFloat("f64"), -2.25e100);
  EXPECT_EQ(*g.GetFloat("u32"), 4000000000.0);  // integers widen to float
  EXPECT_TRUE(*g.GetBool("bool_t"));
  EXPECT_FALSE(*g.GetBool("bool_f"));
  EXPECT_EQ(*g.GetString("str"), "héllo wörld");
  EXPECT_EQ(*g.GetString("empty_str"), "");
  EXPECT_EQ(g.Find("u8")->type, GgufType::kUint8);
  EXPECT_EQ(g.Find("f64")->type, GgufType::kFloat64);

  EXPECT_EQ(*g.GetIntArray("a_u8"), (std::vector<int64_t>{1, 2, 255}));
  EXPECT_EQ(*g.GetIntArray("a_i8"), (std::vector<int64_t>{-128, 0, 127}));
  EXPECT_EQ(*g.GetIntArray("a_u16"), (std::vector<int64_t>{0, 65535}));
  EXPECT_EQ(*g.GetIntArray("a_i16"), (std::vector<int64_t>{-32768, 32767}));
  EXPECT_EQ(*g.GetIntArray("a_u32"), (std::vector<int64_t>{7, 8, 9}));
  EXPECT_EQ(*g.GetIntArray("a_i32"), (std::vector<int64_t>{-1, 0, 1}));
  EXPECT_EQ(*g.GetIntArray("a_u64"), (std::vector<int64_t>{1ll << 40}));
  EXPECT_EQ(*g.GetIntArray("a_i64"), (std::vector<int64_t>{-(1ll << 40), 5}));
  EXPECT_EQ(*g.GetFloatArray("a_f32"), (std::vector<float>{0.5f, -0.25f}));
  EXPECT_EQ(*g.GetFloatArray("a_i32"), (std::vector<float>{-1.f, 0.f, 1.f}));
  EXPECT_EQ(g.GetArray("a_f64")->NumberAt(0), 1e-300);
  EXPECT_EQ(g.GetArray("a_f64")->NumberAt(1), 3.0);
  EXPECT_EQ(*g.GetIntArray("a_bool"), (std::vector<int64_t>{1, 0, 1}));
  EXPECT_EQ(g.GetArray("a_bool")->elem_type, GgufType::kBool);
  auto strs = g.GetStringArray("a_str");
  ASSERT_TRUE(strs.ok());
  ASSERT_EQ(strs->size(), 3u);
  EXPECT_EQ((*strs)[0], "x");
  EXPECT_EQ((*strs)[1], "");
  EXPECT_EQ((*strs)[2], "yz");
  EXPECT_TRUE(g.GetFloatArray("a_empty")->empty());
  EXPECT_EQ(g.GetArray("a_empty")->count, 0u);

  // Keys come back in file order.
  const auto keys = g.Keys();
  ASSERT_EQ(keys.size(), 27u);
  EXPECT_EQ(keys.front(), "u8");
  EXPECT_EQ(keys.back(), "a_empty");
}

TEST_P(GgufVersionTest, TensorsRoundTripThroughFileAndBuffer) {
  GgufWriter w = SmallWriter(GetParam());
  const Bytes q4k = Pattern(2 * 144, 9);
  const Bytes q40 = Pattern(3 * 18, 10);
  const Bytes bf16 = Pattern(7 * 2, 11);
  const Bytes q5k = Pattern(176, 12);
  const Bytes q6k = Pattern(210 * 2, 13);
  w.AddTensor("q4k", DType::kQ4_K, {512, 1, 1, 1}, q4k);
  w.AddTensor("q40", DType::kQ4_0, {32, 3}, q40);
  w.AddTensor("bf16", DType::kBF16, {7}, bf16);
  w.AddTensor("q5k", DType::kQ5_K, {256}, q5k);
  w.AddTensor("q6k", DType::kQ6_K, {256, 2}, q6k);

  const auto path = std::filesystem::temp_directory_path() /
                    ("strata_gguf_test_" + std::to_string(::getpid()) + "_v" +
                     std::to_string(GetParam()) + ".gguf");
  ASSERT_TRUE(w.WriteFile(path.string()).ok());
  const Bytes buf = MustBuffer(w);
  EXPECT_EQ(std::filesystem::file_size(path), buf.size());

  for (bool from_file : {true, false}) {
    SCOPED_TRACE(from_file ? "file" : "buffer");
    auto f = from_file ? GgufFile::Open(path.string()) : GgufFile::FromBuffer(buf);
    ASSERT_TRUE(f.ok()) << f.status().ToString();
    const GgufFile& g = **f;
    EXPECT_EQ(g.path(), from_file ? path.string() : "<buffer>");
    EXPECT_EQ(*g.GetString("general.architecture"), "llama");
    EXPECT_EQ(g.GetStringArray("tokenizer.ggml.tokens")->size(), 5u);
    ASSERT_EQ(g.tensors().size(), 8u);
    EXPECT_EQ(g.data_offset() % 32, 0u);

    const GgufTensorInfo* t = g.FindTensor("q4k");
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(t->type, DType::kQ4_K);
    EXPECT_EQ(t->shape, (std::vector<int64_t>{512, 1, 1, 1}));
    EXPECT_EQ(t->n_elements(), 512);
    EXPECT_EQ(t->nbytes, q4k.size());
    EXPECT_EQ(0, std::memcmp(t->data, q4k.data(), q4k.size()));

    t = g.FindTensor("tok_embd.weight");
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(t->shape, (std::vector<int64_t>{4, 3}));
    EXPECT_EQ(t->nbytes, 48u);
    EXPECT_EQ(0, std::memcmp(t->data, Pattern(48, 1).data(), 48));

    for (const auto& [name, bytes] : {std::pair{"q40", &q40}, std::pair{"bf16", &bf16},
                                      std::pair{"q5k", &q5k}, std::pair{"q6k", &q6k}}) {
      t = g.FindTensor(name);
      ASSERT_NE(t, nullptr) << name;
      EXPECT_EQ(t->nbytes, bytes->size()) << name;
      EXPECT_EQ(0, std::memcmp(t->data, bytes->data(), bytes->size())) << name;
    }
    for (const GgufTensorInfo& ti : g.tensors()) {
      EXPECT_EQ(ti.offset % 32, 0u) << ti.name;
      if (!from_file) {
        EXPECT_EQ(static_cast<size_t>(ti.data - buf.data()), g.data_offset() + ti.offset);
      }
    }
    EXPECT_EQ(g.FindTensor("nope"), nullptr);
  }
  std::filesystem::remove(path);
}

INSTANTIATE_TEST_SUITE_P(V2AndV3, GgufVersionTest, ::testing::Values(2u, 3u));

TEST(GgufTest, NonDefaultAlignment) {
  for (uint32_t align : {1u, 8u, 64u, 4096u}) {
    SCOPED_TRACE(align);
    const Bytes buf = MustBuffer(SmallWriter(3, align));
    auto f = GgufFile::FromBuffer(buf);
    ASSERT_TRUE(f.ok()) << f.status().ToString();
    EXPECT_EQ((*f)->alignment(), align);
    EXPECT_EQ((*f)->data_offset() % align, 0u);
    for (const auto& t : (*f)->tensors()) {
      EXPECT_EQ(t.offset % align, 0u);
      EXPECT_EQ(0, std::memcmp(t.data, buf.data() + (*f)->data_offset() + t.offset, t.nbytes));
    }
    EXPECT_EQ(0, std::memcmp((*f)->FindTensor("output_norm.weight")->data, Pattern(10, 3).data(), 10));
  }
}

TEST(GgufTest, NestedArraysRoundTrip) {
  // [[1, 2], [3]] as an array of u32 arrays.
  Bytes value;
  GgufWriter::AppendRaw(&value, static_cast<uint32_t>(GgufType::kArray));
  GgufWriter::AppendRaw(&value, uint64_t{2});
  const std::vector<uint32_t> a = {1, 2}, b = {3};
  for (const auto* inner : {&a, &b}) {
    Bytes enc = GgufWriter::EncodeArray<uint32_t>(*inner);
    value.insert(value.end(), enc.begin(), enc.end());
  }
  GgufWriter w;
  w.AddEncoded("nested", GgufType::kArray, value);
  const Bytes buf = MustBuffer(w);
  auto f = GgufFile::FromBuffer(buf);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  const GgufArray* arr = (*f)->GetArray("nested");
  ASSERT_NE(arr, nullptr);
  EXPECT_EQ(arr->elem_type, GgufType::kArray);
  ASSERT_EQ(arr->items.size(), 2u);
  const auto& inner0 = std::get<std::shared_ptr<GgufArray>>(arr->items[0].v);
  const auto& inner1 = std::get<std::shared_ptr<GgufArray>>(arr->items[1].v);
  EXPECT_EQ(inner0->count, 2u);
  EXPECT_EQ(inner0->NumberAt(1), 2.0);
  EXPECT_EQ(inner1->NumberAt(0), 3.0);
  // Typed getters refuse a nested array with a message naming both types.
  auto ints = (*f)->GetIntArray("nested");
  ASSERT_FALSE(ints.ok());
  EXPECT_NE(ints.status().message().find("array of array"), std::string::npos)
      << ints.status().message();
}

TEST(GgufTest, LargeVocabularyParsesQuickly) {
  std::vector<std::string> vocab(150000);
  for (size_t i = 0; i < vocab.size(); ++i) vocab[i] = "tok" + std::to_string(i);
  GgufWriter w;
  w.AddStringArray("tokenizer.ggml.tokens", vocab);
  const Bytes buf = MustBuffer(w);
  const auto start = std::chrono::steady_clock::now();
  auto f = GgufFile::FromBuffer(buf);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  auto toks = (*f)->GetStringArray("tokenizer.ggml.tokens");
  ASSERT_TRUE(toks.ok());
  ASSERT_EQ(toks->size(), 150000u);
  EXPECT_EQ((*toks)[149999], "tok149999");
  // Generous bound: sanitizer builds are ~10x slower than release (~5 ms).
  EXPECT_LT(secs, 2.0);
}

// ---------------------------------------------------------------------------
// Typed getter errors

TEST(GgufTest, GetterErrorsNameKeyAndTypes) {
  GgufWriter w;
  w.AddUint32("n", 5);
  w.AddInt32("neg", -3);
  w.AddUint64("big", std::numeric_limits<uint64_t>::max());
  w.AddString("s", "text");
  const std::vector<float> fa = {1.f};
  w.AddArray<float>("fa", fa);
  const Bytes buf = MustBuffer(w);
  auto f = GgufFile::FromBuffer(buf);
  ASSERT_TRUE(f.ok());
  const GgufFile& g = **f;

  auto missing = g.GetUint("llama.context_length");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("'llama.context_length'"), std::string::npos);

  auto wrong = g.GetString("n");
  ASSERT_FALSE(wrong.ok());
  EXPECT_EQ(wrong.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(wrong.status().message().find("'n' is a u32, expected string"), std::string::npos)
      << wrong.status().message();

  auto neg = g.GetUint("neg");
  ASSERT_FALSE(neg.ok());
  EXPECT_EQ(neg.status().code(), StatusCode::kOutOfRange);
  EXPECT_NE(neg.status().message().find("-3"), std::string::npos);

  EXPECT_EQ(g.GetInt("big").status().code(), StatusCode::kOutOfRange);
  EXPECT_EQ(g.GetBool("n").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(g.GetFloat("s").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(g.GetIntArray("fa").status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(g.GetIntArray("fa").status().message().find("array of f32"), std::string::npos);
  EXPECT_EQ(g.GetStringArray("fa").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(g.GetFloatArray("s").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(g.GetArray("s"), nullptr);
  EXPECT_EQ(g.GetArray("absent"), nullptr);
  EXPECT_FALSE(g.Has("absent"));
  EXPECT_TRUE(g.Has("s"));
}

// ---------------------------------------------------------------------------
// Hostile and broken input

TEST(GgufBadInputTest, EmptyAndWrongMagic) {
  ExpectError({}, StatusCode::kCorrupt, "file is truncated: needed 4 bytes at offset 0");
  Raw r;
  r.u32(0x46554746).u32(3).u64(0).u64(0);
  ExpectError(r.b, StatusCode::kCorrupt, "not a GGUF file");
  Raw png;
  png.u8(0x89).u8('P').u8('N').u8('G').zeros(20);
  ExpectError(png.b, StatusCode::kCorrupt, "expected 'GGUF'");
}

TEST(GgufBadInputTest, UnsupportedVersions) {
  ExpectError(Header(1, 0, 0).b, StatusCode::kUnsupported, "version 1 is not supported");
  ExpectError(Header(99, 0, 0).b, StatusCode::kUnsupported, "version 99 is not supported");
  ExpectError(Header(0, 0, 0).b, StatusCode::kUnsupported, "version 0");
  ExpectError(Header(0x03000000, 0, 0).b, StatusCode::kUnsupported, "big-endian");
  // A bare header with nothing in it is a valid (empty) file.
  EXPECT_TRUE(GgufFile::FromBuffer(Header(3, 0, 0).b).ok());
  EXPECT_TRUE(GgufFile::FromBuffer(Header(2, 0, 0).b).ok());
}

TEST(GgufBadInputTest, HugeCountsFailFast) {
  ExpectError(Header(3, 0, 1ull << 60).b, StatusCode::kCorrupt, "1152921504606846976 metadata entries");
  ExpectError(Header(3, 1ull << 60, 0).b, StatusCode::kCorrupt, "1152921504606846976 tensors");
  ExpectError(Header(3, ~0ull, ~0ull).b, StatusCode::kCorrupt, "the file is truncated or corrupt");

  // Key length 2^62.
  Raw k = Header(3, 0, 1);
  k.u64(1ull << 62).zeros(16);
  ExpectError(k.b, StatusCode::kCorrupt, "needed 4611686018427387904 bytes at offset 32 for a metadata key");

  // String value length 2^63.
  Raw s = Header(3, 0, 1);
  s.str("k").u32(static_cast<uint32_t>(GgufType::kString)).u64(1ull << 63).zeros(4);
  ExpectError(s.b, StatusCode::kCorrupt, "for the string value of metadata 'k'");

  // Array counts of 2^60 for each element kind.
  for (GgufType elem : {GgufType::kUint8, GgufType::kFloat64, GgufType::kString, GgufType::kArray}) {
    Raw a = Header(3, 0, 1);
    a.str("tokenizer.ggml.tokens").u32(static_cast<uint32_t>(GgufType::kArray));
    a.u32(static_cast<uint32_t>(elem)).u64(1ull << 60).zeros(64);
    ExpectError(a.b, StatusCode::kCorrupt, "array 'tokenizer.ggml.tokens' claims 1152921504606846976 elements");
  }
  // Count fits numerically but one string inside is huge.
  Raw a = Header(3, 0, 1);
  a.str("v").u32(9).u32(8).u64(2).str("ok").u64(1ull << 40).zeros(8);
  ExpectError(a.b, StatusCode::kCorrupt, "for a string element of array 'v'");
}

TEST(GgufBadInputTest, BadValueTypesAndNesting) {
  Raw t = Header(3, 0, 1);
  t.str("k").u32(13).zeros(8);
  ExpectError(t.b, StatusCode::kCorrupt, "metadata 'k' has unknown value type 13");

  Raw e = Header(3, 0, 1);
  e.str("k").u32(9).u32(200).u64(1).zeros(8);
  ExpectError(e.b, StatusCode::kCorrupt, "array 'k' has unknown element type 200");

  // Arrays of arrays nested far deeper than any model needs.
  Raw n = Header(3, 0, 1);
  n.str("deep").u32(9);
  for (int i = 0; i < 64; ++i) n.u32(9).u64(1);
  n.zeros(16);
  ExpectError(n.b, StatusCode::kUnsupported, "nests arrays more than 4 levels deep");

  // Nested array whose inner element type is garbage.
  Raw g = Header(3, 0, 1);
  g.str("g").u32(9).u32(9).u64(1).u32(0xdeadbeef).u64(0);
  ExpectError(g.b, StatusCode::kCorrupt, "unknown element type 3735928559");

  Raw b = Header(3, 0, 1);
  b.str("flag").u32(7).u8(2);
  ExpectError(b.b, StatusCode::kCorrupt, "'flag' is a bool with byte value 2");

  Raw ba = Header(3, 0, 1);
  ba.str("flags").u32(9).u32(7).u64(3).u8(1).u8(0).u8(7);
  ExpectError(ba.b, StatusCode::kCorrupt, "byte value 7 at index 2");

  Raw ek = Header(3, 0, 1);
  ek.str("").u32(4).u32(1);
  ExpectError(ek.b, StatusCode::kCorrupt, "empty key");
}

TEST(GgufBadInputTest, BadAlignment) {
  Raw r = Header(3, 0, 1);
  r.str("general.alignment").u32(4).u32(48);
  ExpectError(r.b, StatusCode::kCorrupt, "general.alignment is 48, which is not a power of two");
  Raw z = Header(3, 0, 1);
  z.str("general.alignment").u32(4).u32(0);
  ExpectError(z.b, StatusCode::kCorrupt, "not a power of two");
  Raw t = Header(3, 0, 1);
  t.str("general.alignment").u32(10).u64(32);
  ExpectError(t.b, StatusCode::kCorrupt, "general.alignment must be a u32, but it is a u64");
}

TEST(GgufBadInputTest, DuplicateKeysAndTensorNames) {
  GgufWriter w;
  w.AddUint32("key.aaa", 1);
  w.AddUint32("key.aab", 2);
  Bytes buf = MustBuffer(w);
  buf[After(buf, "key.aab") - 1] = 'a';
  ExpectError(buf, StatusCode::kCorrupt, "metadata key 'key.aaa' appears more than once");

  GgufWriter wt;
  wt.AddTensor("t.x1", DType::kF32, {2}, Pattern(8, 1));
  wt.AddTensor("t.x2", DType::kF32, {2}, Pattern(8, 2));
  Bytes tb = MustBuffer(wt);
  tb[After(tb, "t.x2") - 1] = '1';
  ExpectError(tb, StatusCode::kCorrupt, "tensor name 't.x1' appears more than once");
}

TEST(GgufBadInputTest, TensorTypes) {
  const Bytes good = MustBuffer(SmallWriter());
  const InfoPos p = TensorInfoAt(good, "blk.0.attn_q.weight", 2);

  Bytes iq = good;
  Poke<uint32_t>(&iq, p.type, 16);
  ExpectError(iq, StatusCode::kUnsupported,
              "tensor 'blk.0.attn_q.weight' has type iq2_xxs (16), which Strata does not support; "
              "supported: f32, f16, bf16, q4_0, q8_0, q4_K, q5_K, q6_K");

  Bytes q2k = good;
  Poke<uint32_t>(&q2k, p.type, 10);
  ExpectError(q2k, StatusCode::kUnsupported, "has type q2_K (10)");

  Bytes q8k = good;  // an activation-only type never valid in a file
  Poke<uint32_t>(&q8k, p.type, 15);
  ExpectError(q8k, StatusCode::kUnsupported, "has type q8_K (15)");

  Bytes unknown = good;
  Poke<uint32_t>(&unknown, p.type, 1000);
  ExpectError(unknown, StatusCode::kUnsupported, "has type unknown (1000)");
}

TEST(GgufBadInputTest, TensorShapes) {
  const Bytes good = MustBuffer(SmallWriter());
  const InfoPos p = TensorInfoAt(good, "tok_embd.weight", 2);

  Bytes d5 = good;
  Poke<uint32_t>(&d5, p.n_dims, 5);
  ExpectError(d5, StatusCode::kCorrupt, "tensor 'tok_embd.weight' has 5 dimensions; GGUF allows 1 to 4");
  Bytes d0 = good;
  Poke<uint32_t>(&d0, p.n_dims, 0);
  ExpectError(d0, StatusCode::kCorrupt, "has 0 dimensions");
  Bytes dbig = good;
  Poke<uint32_t>(&dbig, p.n_dims, 0xffffffffu);
  ExpectError(dbig, StatusCode::kCorrupt, "has 4294967295 dimensions");

  Bytes zero = good;
  Poke<uint64_t>(&zero, p.dims + 8, 0);
  ExpectError(zero, StatusCode::kCorrupt, "tensor 'tok_embd.weight' has dimension 1 of size 0");

  Bytes ovf = good;
  Poke<uint64_t>(&ovf, p.dims, 1ull << 40);
  Poke<uint64_t>(&ovf, p.dims + 8, 1ull << 40);
  ExpectError(ovf, StatusCode::kCorrupt, "element count overflows 64 bits");

  Bytes neg = good;  // > INT64_MAX: would be negative as int64
  Poke<uint64_t>(&neg, p.dims, ~0ull);
  ExpectError(neg, StatusCode::kCorrupt, "overflows");

  Bytes huge = good;  // fits int64 but far larger than the file
  Poke<uint64_t>(&huge, p.dims, 1ull << 31);
  Poke<uint64_t>(&huge, p.dims + 8, 1ull << 31);
  ExpectError(huge, StatusCode::kCorrupt, "is larger than the whole file");

  const InfoPos q = TensorInfoAt(good, "blk.0.attn_q.weight", 2);
  Bytes block = good;
  Poke<uint64_t>(&block, q.dims, 33);
  ExpectError(block, StatusCode::kCorrupt,
              "tensor 'blk.0.attn_q.weight' has ne0=33, which is not a multiple of the q8_0 block size 32");
}

TEST(GgufBadInputTest, TensorOffsets) {
  const Bytes good = MustBuffer(SmallWriter());
  const InfoPos p = TensorInfoAt(good, "output_norm.weight", 1);

  Bytes past = good;
  Poke<uint64_t>(&past, p.offset, 1ull << 20);
  ExpectError(past, StatusCode::kCorrupt, "tensor 'output_norm.weight' needs bytes");

  Bytes wrap = good;  // offset + nbytes wraps around 2^64
  Poke<uint64_t>(&wrap, p.offset, ~0ull - 31);
  ExpectError(wrap, StatusCode::kCorrupt, "the file has only");

  Bytes mis = good;
  Poke<uint64_t>(&mis, p.offset, 40);
  ExpectError(mis, StatusCode::kCorrupt,
              "tensor 'output_norm.weight' has data offset 40, which is not a multiple of the alignment 32");

  Bytes overlap = good;  // point at the first tensor's data
  Poke<uint64_t>(&overlap, p.offset, 0);
  ExpectError(overlap, StatusCode::kCorrupt, "overlap");

  // Last tensor reaching one byte past the end.
  Bytes cut = good;
  cut.pop_back();
  ExpectError(cut, StatusCode::kCorrupt, "the file is truncated or corrupt");
}

TEST(GgufBadInputTest, EveryTruncationFails) {
  for (uint32_t align : {0u, 64u}) {
    const Bytes good = MustBuffer(SmallWriter(3, align));
    ASSERT_TRUE(GgufFile::FromBuffer(good).ok());
    for (size_t n = 0; n < good.size(); ++n) {
      // Exact-size heap copy so ASan sees any read past the prefix.
      std::unique_ptr<uint8_t[]> prefix(new uint8_t[n == 0 ? 1 : n]);
      if (n > 0) std::memcpy(prefix.get(), good.data(), n);
      auto f = GgufFile::FromBuffer(std::span<const uint8_t>(prefix.get(), n));
      ASSERT_FALSE(f.ok()) << "prefix of " << n << " of " << good.size() << " bytes parsed";
      EXPECT_EQ(f.status().code(), StatusCode::kCorrupt) << n << ": " << f.status().ToString();
      const std::string& m = f.status().message();
      EXPECT_TRUE(m.find("truncated") != std::string::npos) << n << ": " << m;
    }
  }
}

TEST(GgufBadInputTest, EveryTruncationOfAMetadataOnlyFileFails) {
  GgufWriter w;
  w.AddString("general.name", "x");
  const std::vector<std::string> v = {"a", "bc"};
  w.AddStringArray("toks", v);
  const Bytes good = MustBuffer(w);
  for (size_t n = 0; n < good.size(); ++n) {
    auto f = GgufFile::FromBuffer(std::span<const uint8_t>(good.data(), n));
    ASSERT_FALSE(f.ok()) << n;
    EXPECT_NE(f.status().message().find("truncated"), std::string::npos) << f.status().message();
  }
}

TEST(GgufBadInputTest, SingleByteCorruptionsNeverCrash) {
  // Not a fuzzer, but cheap coverage in every test run: flip each byte of the
  // header/metadata/tensor-info area to a few values; parsing must return.
  const Bytes good = MustBuffer(SmallWriter());
  auto f = GgufFile::FromBuffer(good);
  ASSERT_TRUE(f.ok());
  const size_t meta_end = (*f)->data_offset();
  for (size_t i = 0; i < meta_end; ++i) {
    for (uint8_t v : {uint8_t{0x00}, uint8_t{0xff}, uint8_t{0x80}, uint8_t{0x09}}) {
      Bytes b = good;
      b[i] = v;
      auto r = GgufFile::FromBuffer(b);
      if (!r.ok()) {
        EXPECT_FALSE(r.status().message().empty());
      }
    }
  }
}

TEST(GgufBadInputTest, OpenErrors) {
  auto missing = GgufFile::Open("/nonexistent/dir/model.gguf");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("/nonexistent/dir/model.gguf"), std::string::npos);

  auto dir = GgufFile::Open(std::filesystem::temp_directory_path().string());
  ASSERT_FALSE(dir.ok());
  EXPECT_EQ(dir.status().code(), StatusCode::kInvalidArgument);

  const auto path = std::filesystem::temp_directory_path() /
                    ("strata_gguf_bad_" + std::to_string(::getpid()) + ".gguf");
  {
    std::ofstream(path, std::ios::binary) << "GGUF\x01";
  }
  auto bad = GgufFile::Open(path.string());
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("reading '" + path.string() + "': file is truncated"),
            std::string::npos)
      << bad.status().message();
  {
    std::ofstream(path, std::ios::binary | std::ios::trunc);
  }
  auto empty = GgufFile::Open(path.string());
  ASSERT_FALSE(empty.ok());
  EXPECT_NE(empty.status().message().find("is empty"), std::string::npos);
  std::filesystem::remove(path);
}

// ---------------------------------------------------------------------------
// Writer errors

TEST(GgufWriterTest, RejectsInvalidInput) {
  {
    GgufWriter w;
    w.AddUint32("k", 1);
    w.AddString("k", "again");
    EXPECT_NE(w.ToBuffer().status().message().find("'k' was added twice"), std::string::npos);
  }
  {
    GgufWriter w;
    w.AddTensor("t", DType::kF32, {4}, Pattern(15, 1));
    EXPECT_NE(w.ToBuffer().status().message().find("needs 16 bytes of f32 data, got 15"),
              std::string::npos);
  }
  {
    GgufWriter w;
    w.AddTensor("t", DType::kQ4_0, {16}, Pattern(9, 1));
    EXPECT_NE(w.ToBuffer().status().message().find("not a multiple of the q4_0 block size 32"),
              std::string::npos);
  }
  {
    GgufWriter w;
    w.AddTensor("t", DType::kF32, {1, 1, 1, 1, 1}, Pattern(4, 1));
    EXPECT_FALSE(w.ToBuffer().ok());
  }
  {
    GgufWriter w;
    w.AddTensor("t", DType::kF32, {1}, Pattern(4, 1));
    w.AddTensor("t", DType::kF32, {1}, Pattern(4, 1));
    EXPECT_NE(w.ToBuffer().status().message().find("'t' was added twice"), std::string::npos);
  }
  {
    GgufWriter w;
    w.SetAlignment(24);
    EXPECT_NE(w.ToBuffer().status().message().find("power of two"), std::string::npos);
  }
  {
    GgufWriter w(1);
    EXPECT_FALSE(w.ToBuffer().ok());
  }
  {
    GgufWriter w;
    Status s = w.WriteFile("/nonexistent/dir/out.gguf");
    EXPECT_EQ(s.code(), StatusCode::kIoError);
    EXPECT_NE(s.message().find("/nonexistent/dir/out.gguf.tmp"), std::string::npos) << s.message();
  }
}

// ---------------------------------------------------------------------------
// Fuzz seeds. Regenerate with:
//   strata_tests --gtest_also_run_disabled_tests --gtest_filter='*WriteFuzzSeeds'
// Writes into the source tree on purpose, so it is disabled in normal runs.

#ifdef STRATA_SOURCE_DIR
TEST(GgufFuzzSeeds, DISABLED_WriteFuzzSeeds) {
  const std::filesystem::path dir = std::filesystem::path(STRATA_SOURCE_DIR) / "fuzz/corpus/gguf_fuzz";
  std::filesystem::create_directories(dir);
  auto write = [&](const char* name, const Bytes& b) {
    std::ofstream out(dir / name, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
    ASSERT_TRUE(out.good()) << name;
  };
  write("small_v3.gguf", MustBuffer(SmallWriter(3)));
  write("small_v2_align64.gguf", MustBuffer(SmallWriter(2, 64)));
  write("header_only.gguf", Header(3, 0, 0).b);
  {
    GgufWriter w;
    w.AddUint8("u8", 1); w.AddInt8("i8", -1); w.AddUint16("u16", 2); w.AddInt16("i16", -2);
    w.AddUint32("u32", 3); w.AddInt32("i32", -3); w.AddUint64("u64", 4); w.AddInt64("i64", -4);
    w.AddFloat32("f32", 0.5f); w.AddFloat64("f64", 0.25); w.AddBool("b", true);
    w.AddString("s", "str");
    const std::vector<int64_t> ia = {1, -2, 3};
    const std::array<bool, 2> ba = {true, false};
    const std::vector<double> da = {1.0, 2.0};
    w.AddArray<int64_t>("ia", ia);
    w.AddArray<bool>("ba", ba);
    w.AddArray<double>("da", da);
    Bytes nested;
    GgufWriter::AppendRaw(&nested, static_cast<uint32_t>(GgufType::kArray));
    GgufWriter::AppendRaw(&nested, uint64_t{1});
    const std::vector<uint16_t> inner = {7, 8};
    Bytes enc = GgufWriter::EncodeArray<uint16_t>(inner);
    nested.insert(nested.end(), enc.begin(), enc.end());
    w.AddEncoded("nested", GgufType::kArray, nested);
    write("all_types.gguf", MustBuffer(w));
  }
  {
    GgufWriter w;
    w.AddString("general.architecture", "llama");
    w.AddString("tokenizer.ggml.model", "gpt2");
    std::vector<std::string> vocab;
    std::vector<float> scores;
    std::vector<int32_t> types;
    for (int i = 0; i < 64; ++i) {
      vocab.push_back(std::to_string(i) + "t");  // "t" + to_string trips gcc 12 -Wrestrict
      scores.push_back(-static_cast<float>(i));
      types.push_back(i < 3 ? 3 : 1);
    }
    w.AddStringArray("tokenizer.ggml.tokens", vocab);
    w.AddArray<float>("tokenizer.ggml.scores", scores);
    w.AddArray<int32_t>("tokenizer.ggml.token_type", types);
    w.AddTensor("q4k", DType::kQ4_K, {256}, Pattern(144, 4));
    w.AddTensor("q40", DType::kQ4_0, {32, 2}, Pattern(36, 5));
    w.AddTensor("bf16", DType::kBF16, {3}, Pattern(6, 6));
    write("vocab_and_quants.gguf", MustBuffer(w));
  }
}
#endif

}  // namespace
}  // namespace strata
