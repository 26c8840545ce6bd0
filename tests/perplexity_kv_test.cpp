// `strata perplexity --kv-roundtrip`: the quality cost of a KV chunk encoding
// as perplexity and KL divergence. Oracles: the plain perplexity path (an f16
// round trip is lossless, so everything must match it bit for bit) and a
// recomputation here, from two logit sets this file computes itself, of the
// KL divergence, argmax changes and perplexity.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>

#include "cache/chunk_format.h"
#include "engine/kv_roundtrip.h"
#include "engine/perplexity.h"
#include "test_util.h"

namespace strata {
namespace {

std::string Synth() {
  return testing::SynthModel("perplexity_kv", "llama_f32",
                             "--arch llama --dim 128 --layers 2 --heads 4 --kv-heads 2 --head-dim 32 --ffn 256 "
                             "--vocab-size 300 --type f32 --seed 11 --ctx 256");
}

std::vector<TokenId> RandomTokens(size_t n, int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> dist(3, vocab - 1);
  std::vector<TokenId> out(n);
  for (auto& t : out) t = static_cast<TokenId>(dist(rng));
  return out;
}

ChunkEncoding Enc(const char* spec) {
  auto e = ParseChunkEncodingSpec(spec);
  EXPECT_TRUE(e.ok()) << spec << ": " << e.status().message();
  return e.ok() ? *e : ChunkEncoding{};
}

struct Fixture {
  std::unique_ptr<Model> model;
  std::unique_ptr<Generator> gen;
};

Fixture Load(const std::string& path, int64_t n_ctx) {
  Fixture f;
  auto m = Model::Load(path);
  EXPECT_TRUE(m.ok()) << m.status().message();
  if (!m.ok()) return f;
  f.model = std::move(*m);
  auto g = Generator::Create(*f.model, 2, n_ctx);
  EXPECT_TRUE(g.ok()) << g.status().message();
  if (g.ok()) f.gen = std::move(*g);
  return f;
}

TEST(PerplexityKv, ParsesEncodingSpecs) {
  EXPECT_EQ(Enc("int8"), (ChunkEncoding{ChunkCodec::kRaw, ChunkDType::kInt8}));
  EXPECT_EQ(Enc("lz4,int8"), (ChunkEncoding{ChunkCodec::kLz4, ChunkDType::kInt8}));
  EXPECT_EQ(Enc("int8,zstd"), (ChunkEncoding{ChunkCodec::kZstd, ChunkDType::kInt8}));
  EXPECT_EQ(Enc("f16"), (ChunkEncoding{ChunkCodec::kRaw, ChunkDType::kF16}));
  EXPECT_EQ(Enc("lz4"), (ChunkEncoding{ChunkCodec::kLz4, ChunkDType::kF16}));
  for (const char* bad : {"", "int9", "int8,", ",int8", "int8,f16", "lz4,zstd", "int8 "}) {
    auto e = ParseChunkEncodingSpec(bad);
    ASSERT_FALSE(e.ok()) << "'" << bad << "'";
    EXPECT_EQ(e.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(e.status().message().find("int8"), std::string::npos) << e.status().message();
  }
}

// f16 chunks hold the KV bit for bit, so the round-trip path must reproduce
// the plain perplexity exactly, with no divergence at all.
TEST(PerplexityKv, F16RoundTripIsBitExact) {
  const int64_t n_ctx = testing::Sanitized() ? 32 : 64;
  const int64_t chunks = testing::Sanitized() ? 2 : 4;
  Fixture f = Load(Synth(), n_ctx);
  ASSERT_TRUE(f.gen);
  const auto tokens = RandomTokens(static_cast<size_t>(n_ctx * chunks), f.model->config().vocab_size, 5);
  PerplexityOptions plain_opt;
  plain_opt.n_ctx = n_ctx;
  auto plain = ComputePerplexityTokens(*f.gen, tokens, plain_opt);
  ASSERT_TRUE(plain.ok()) << plain.status().message();
  EXPECT_FALSE(plain->kv_roundtrip);
  EXPECT_EQ(plain->n_scored, chunks * (n_ctx / 2 - 1));

  for (const char* spec : {"f16", "lz4,f16", "zstd"}) {
    PerplexityOptions o = plain_opt;
    o.kv_roundtrip = Enc(spec);
    o.kv_chunk_tokens = n_ctx / 4;
    auto rt = ComputePerplexityTokens(*f.gen, tokens, o);
    ASSERT_TRUE(rt.ok()) << spec << ": " << rt.status().message();
    ASSERT_TRUE(rt->kv_roundtrip);
    const KvRoundTripQuality& q = *rt->kv_roundtrip;
    EXPECT_EQ(rt->n_scored, plain->n_scored);
    EXPECT_EQ(rt->ppl, plain->ppl) << spec;
    EXPECT_EQ(rt->ppl_stderr, plain->ppl_stderr) << spec;
    EXPECT_EQ(q.exact_ppl, plain->ppl) << spec;
    EXPECT_EQ(q.mean_kl, 0.0) << spec;
    EXPECT_EQ(q.max_kl, 0.0) << spec;
    EXPECT_EQ(q.top1_changed, 0) << spec;
    EXPECT_EQ(q.roundtrip_positions, n_ctx / 2);
    EXPECT_EQ(q.exact_positions, 0);
  }
}

// int8 loses precision: the distributions move, a little.
TEST(PerplexityKv, Int8IsLossyButClose) {
  const int64_t n_ctx = testing::Sanitized() ? 32 : 64;
  const int64_t chunks = testing::Sanitized() ? 2 : 4;
  Fixture f = Load(Synth(), n_ctx);
  ASSERT_TRUE(f.gen);
  const auto tokens = RandomTokens(static_cast<size_t>(n_ctx * chunks), f.model->config().vocab_size, 6);
  PerplexityOptions o;
  o.n_ctx = n_ctx;
  auto plain = ComputePerplexityTokens(*f.gen, tokens, o);
  ASSERT_TRUE(plain.ok()) << plain.status().message();
  for (const char* spec : {"int8", "lz4,int8"}) {
    o.kv_roundtrip = Enc(spec);
    o.kv_chunk_tokens = 16;
    auto rt = ComputePerplexityTokens(*f.gen, tokens, o);
    ASSERT_TRUE(rt.ok()) << rt.status().message();
    const KvRoundTripQuality& q = *rt->kv_roundtrip;
    EXPECT_EQ(q.exact_ppl, plain->ppl);
    EXPECT_GT(q.mean_kl, 0.0);
    EXPECT_LT(q.mean_kl, 1e-2);
    EXPECT_GE(q.max_kl, q.mean_kl);
    EXPECT_LT(q.max_kl, 0.1);
    EXPECT_NE(rt->ppl, plain->ppl);
    EXPECT_NEAR(rt->ppl / plain->ppl, 1.0, 0.01);
    EXPECT_LT(q.top1_change_rate, 0.1);
  }
}

// Log-softmax in long double, straight from the definition.
std::vector<long double> LogSoftmax(const float* row, int vocab) {
  long double mx = row[0];
  for (int v = 1; v < vocab; ++v) mx = std::max<long double>(mx, row[v]);
  long double z = 0;
  for (int v = 0; v < vocab; ++v) z += std::exp(static_cast<long double>(row[v]) - mx);
  std::vector<long double> out(static_cast<size_t>(vocab));
  for (int v = 0; v < vocab; ++v) out[static_cast<size_t>(v)] = static_cast<long double>(row[v]) - mx - std::log(z);
  return out;
}

// The reported KL, max KL, argmax changes and both perplexities against a
// recomputation from logits computed here: the exact ones by the plain
// whole-chunk evaluation, the round trip's by encoding and decoding the
// context's KV with the chunk format directly.
TEST(PerplexityKv, KlMatchesRecomputationFromLogits) {
  const int64_t n_ctx = 32, half = 16, chunks = 2;
  Fixture f = Load(Synth(), n_ctx);
  ASSERT_TRUE(f.gen);
  const int vocab = f.model->config().vocab_size;
  auto tokens = RandomTokens(static_cast<size_t>(n_ctx * chunks), vocab, 7);
  PerplexityOptions o;
  o.n_ctx = n_ctx;
  o.kv_roundtrip = Enc("int8");
  o.kv_chunk_tokens = half;
  auto got = ComputePerplexityTokens(*f.gen, tokens, o);
  ASSERT_TRUE(got.ok()) << got.status().message();
  const KvRoundTripQuality& q = *got->kv_roundtrip;

  const Model& m = *f.model;
  Generator& gen = *f.gen;
  long double kl_sum = 0, kl_max = 0, nll_p = 0, nll_q = 0;
  int64_t changed = 0, n = 0;
  for (int64_t c = 0; c < chunks; ++c) {
    std::vector<TokenId> chunk(tokens.begin() + c * n_ctx, tokens.begin() + (c + 1) * n_ctx);
    if (m.tokenizer().add_bos() && m.tokenizer().bos() >= 0) chunk[0] = m.tokenizer().bos();
    gen.kv().Clear(0);
    auto exact = gen.Evaluate(chunk, 0, true);
    ASSERT_TRUE(exact.ok());
    gen.kv().Clear(0);
    ASSERT_TRUE(gen.Evaluate(std::span<const TokenId>(chunk).first(half), 0, false).ok());
    ChunkMeta meta;
    meta.model_fingerprint = m.fingerprint();
    meta.kv_format = "f16";
    meta.n_layers = m.config().n_layers;
    meta.n_kv_heads = m.config().n_kv_heads;
    meta.head_dim = m.config().head_dim;
    meta.tokens.assign(chunk.begin(), chunk.begin() + half);
    auto blob = EncodeChunk(meta, gen.kv(), 0, ChunkEncoding{ChunkCodec::kRaw, ChunkDType::kInt8});
    ASSERT_TRUE(blob.ok()) << blob.status().message();
    auto reader = ChunkReader::Open(std::move(*blob), meta);
    ASSERT_TRUE(reader.ok()) << reader.status().message();
    for (int l = 0; l < meta.n_layers; ++l) ASSERT_TRUE(reader->DecodeLayer(l, gen.kv().View(0, l)).ok());
    auto lossy = gen.Evaluate(std::span<const TokenId>(chunk).subspan(half), half, true);
    ASSERT_TRUE(lossy.ok());
    for (int64_t i = half; i < n_ctx - 1; ++i) {
      const float* prow = exact->data() + i * vocab;
      const float* qrow = lossy->data() + (i - half) * vocab;
      const auto lp = LogSoftmax(prow, vocab), lq = LogSoftmax(qrow, vocab);
      long double kl = 0;
      for (int v = 0; v < vocab; ++v) kl += std::exp(lp[v]) * (lp[v] - lq[v]);
      kl_sum += kl;
      kl_max = std::max(kl_max, kl);
      const TokenId next = chunk[static_cast<size_t>(i + 1)];
      nll_p -= lp[static_cast<size_t>(next)];
      nll_q -= lq[static_cast<size_t>(next)];
      changed += (std::max_element(prow, prow + vocab) - prow) != (std::max_element(qrow, qrow + vocab) - qrow);
      ++n;
    }
  }
  ASSERT_EQ(got->n_scored, n);
  const double mean_kl = static_cast<double>(kl_sum / n);
  EXPECT_GT(mean_kl, 0.0);
  EXPECT_NEAR(q.mean_kl, mean_kl, 1e-6 * mean_kl + 1e-12);
  EXPECT_NEAR(q.max_kl, static_cast<double>(kl_max), 1e-6 * static_cast<double>(kl_max) + 1e-12);
  EXPECT_EQ(q.top1_changed, changed);
  EXPECT_NEAR(q.exact_ppl, std::exp(static_cast<double>(nll_p / n)), 1e-9 * q.exact_ppl);
  EXPECT_NEAR(got->ppl, std::exp(static_cast<double>(nll_q / n)), 1e-9 * got->ppl);
}

// Context positions after the last whole KV chunk stay exact; a KV chunk
// larger than the context is refused with advice.
TEST(PerplexityKv, PartialChunksStayExactAndOversizedChunksAreRefused) {
  const int64_t n_ctx = 32;
  Fixture f = Load(Synth(), n_ctx);
  ASSERT_TRUE(f.gen);
  const auto tokens = RandomTokens(static_cast<size_t>(n_ctx * 2), f.model->config().vocab_size, 8);
  PerplexityOptions o;
  o.n_ctx = n_ctx;
  o.kv_roundtrip = Enc("int8");
  o.kv_chunk_tokens = 6;  // context 16: chunks [0,6) and [6,12) round-tripped, [12,16) exact
  auto r = ComputePerplexityTokens(*f.gen, tokens, o);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r->kv_roundtrip->roundtrip_positions, 12);
  EXPECT_EQ(r->kv_roundtrip->exact_positions, 4);
  EXPECT_GT(r->kv_roundtrip->mean_kl, 0.0);

  o.kv_chunk_tokens = 17;
  r = ComputePerplexityTokens(*f.gen, tokens, o);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("-c 34"), std::string::npos) << r.status().message();
}

// The shipped model: f16 is exact and int8's cost is small but real.
TEST(PerplexityKv, TrainedModel) {
  const std::string path = testing::SourceDir() + "/models/strata-default.gguf";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "no default model";
  const int64_t n_ctx = testing::Sanitized() ? 64 : 128;
  Fixture f = Load(path, n_ctx);
  ASSERT_TRUE(f.gen);
  // Real text: the held-out task prompts' token ids.
  std::ifstream in(testing::SourceDir() + "/models/eval/repeat.jsonl");
  std::vector<TokenId> tokens;
  for (std::string line; tokens.size() < static_cast<size_t>(2 * n_ctx) && std::getline(in, line);) {
    const nlohmann::json ex = nlohmann::json::parse(line);  // a named object: it must outlive the loop below
    for (int64_t id : ex.at("prompt_ids")) tokens.push_back(static_cast<TokenId>(id));
  }
  tokens.resize(static_cast<size_t>(2 * n_ctx));
  PerplexityOptions o;
  o.n_ctx = n_ctx;
  auto plain = ComputePerplexityTokens(*f.gen, tokens, o);
  ASSERT_TRUE(plain.ok()) << plain.status().message();
  o.kv_chunk_tokens = n_ctx / 4;
  o.kv_roundtrip = Enc("f16");
  auto f16 = ComputePerplexityTokens(*f.gen, tokens, o);
  ASSERT_TRUE(f16.ok()) << f16.status().message();
  EXPECT_EQ(f16->ppl, plain->ppl);
  EXPECT_EQ(f16->kv_roundtrip->mean_kl, 0.0);
  o.kv_roundtrip = Enc("int8");
  auto int8 = ComputePerplexityTokens(*f.gen, tokens, o);
  ASSERT_TRUE(int8.ok()) << int8.status().message();
  EXPECT_EQ(int8->kv_roundtrip->exact_ppl, plain->ppl);
  EXPECT_GT(int8->kv_roundtrip->mean_kl, 0.0);
  EXPECT_LT(int8->kv_roundtrip->mean_kl, 1e-2);
  EXPECT_NEAR(int8->ppl / plain->ppl, 1.0, 0.01);
}

TEST(PerplexityKv, Cli) {
  if (!std::filesystem::exists(testing::StrataBin())) GTEST_SKIP() << "no strata binary in this build";
  const std::string model = Synth();
  const std::string text = testing::TestDataDir("perplexity_kv") + "/text.txt";
  {
    std::ofstream out(text);
    for (int i = 0; i < 40; ++i) out << "the quick brown fox jumps over the lazy dog " << i << "\n";
  }
  const std::string json = testing::TestDataDir("perplexity_kv") + "/out.json";
  std::filesystem::remove(json);
  const std::string base = testing::StrataBin() + " perplexity -m " + model + " -f " + text + " -c 64 --chunks 2 -t 2";
  auto r = testing::RunCommand(base + " --kv-roundtrip lz4,int8 --kv-chunk-tokens 16 --json " + json);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const char* want : {"int8/lz4", "exact:      PPL", "round trip: PPL", "KL(exact || round trip)", "top-1 token changed",
                           "Final estimate: PPL = "}) {
    EXPECT_NE(r.output.find(want), std::string::npos) << want << "\n" << r.output;
  }
  std::ifstream in(json);
  const auto j = nlohmann::json::parse(in, nullptr, false);
  ASSERT_FALSE(j.is_discarded());
  EXPECT_EQ(j["kv_roundtrip"]["dtype"], "int8");
  EXPECT_EQ(j["kv_roundtrip"]["codec"], "lz4");
  EXPECT_GT(j["kv_roundtrip"]["mean_kl"].get<double>(), 0.0);
  EXPECT_EQ(j["scored_tokens"], 2 * 31);

  r = testing::RunCommand(base + " --kv-roundtrip int9");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("--kv-roundtrip"), std::string::npos) << r.output;
  r = testing::RunCommand(testing::StrataBin() + " perplexity --help");
  EXPECT_NE(r.output.find("--kv-roundtrip"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("--kv-chunk-tokens"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace strata
