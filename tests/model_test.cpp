// Forward-pass behaviour beyond reference parity: batching, a real trained
// model, and bad input at the model and CLI level.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "engine/generator.h"
#include "kv/contiguous_kv_cache.h"
#include "model/model.h"
#include "test_util.h"

namespace strata {
namespace {

using testing::Python;
using testing::RunCommand;
using testing::SourceDir;
using testing::StrataBin;

std::string TinyModel(const std::string& type = "f32", const std::string& arch = "llama") {
  return testing::SynthModel("model", "tiny_" + arch + "_" + type,
                             "--arch " + arch + " --dim 256 --layers 2 --heads 4 --kv-heads 2 --head-dim 64 --ffn 512"
                             " --vocab-size 300 --ctx 256 --seed 3 --type " + type);
}

TEST(ModelTest, StoriesGreedyContinuationIsKnown) {
  const std::string path = testing::SharedModel("stories260K.gguf");
  if (path.empty()) GTEST_SKIP() << "../shared/models/stories260K.gguf is absent; skipping the trained-model check";
  auto model = Model::Load(path);
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  auto ids = (*model)->tokenizer().Encode("Once upon a time");
  ASSERT_TRUE(ids.ok());
  auto gen = Generator::Create(**model, 2, 0);
  ASSERT_TRUE(gen.ok());
  GenerateOptions o;
  o.max_tokens = 40;
  o.sampling.temperature = 0;
  auto r = (*gen)->Generate(*ids, o);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->text.rfind(", there was a little girl named Lily. She loved to play outside in the park.", 0), 0u)
      << r->text;
}

TEST(ModelTest, BatchOfSequencesMatchesSeparateRuns) {
  for (const std::string type : {"f32", "q8_0", "q4_k"}) {
    auto model = Model::Load(TinyModel(type));
    ASSERT_TRUE(model.ok()) << model.status().ToString();
    const int vocab = (*model)->config().vocab_size;
    std::vector<std::vector<TokenId>> seqs = {{5, 9, 33, 7, 100, 250, 3}, {44}, {12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22}};
    auto kv = ContiguousKvCache::Create((*model)->config().n_layers, (*model)->config().kv_dim(), 3, 64);
    ASSERT_TRUE(kv.ok());
    ForwardContext ctx(**model, 2);
    std::vector<BatchSeq> batch;
    for (int s = 0; s < 3; ++s) batch.push_back({s, seqs[static_cast<size_t>(s)], 0, s == 2});
    auto joint = ctx.Forward(batch, **kv);
    ASSERT_TRUE(joint.ok());
    std::vector<float> together(joint->begin(), joint->end());
    ASSERT_EQ(together.size(), static_cast<size_t>((1 + 1 + 11) * vocab));
    // Continue all three by one token in one batch (decode of mixed lengths).
    std::vector<TokenId> next{1, 2, 3};
    std::vector<BatchSeq> step;
    for (int s = 0; s < 3; ++s) step.push_back({s, std::span<const TokenId>(&next[static_cast<size_t>(s)], 1), static_cast<int64_t>(seqs[static_cast<size_t>(s)].size()), false});
    auto joint2 = ctx.Forward(step, **kv);
    ASSERT_TRUE(joint2.ok());
    std::vector<float> together2(joint2->begin(), joint2->end());

    size_t off = 0, off2 = 0;
    for (int s = 0; s < 3; ++s) {
      auto kv1 = ContiguousKvCache::Create((*model)->config().n_layers, (*model)->config().kv_dim(), 1, 64);
      ASSERT_TRUE(kv1.ok());
      BatchSeq one{0, seqs[static_cast<size_t>(s)], 0, s == 2};
      auto alone = ctx.Forward({&one, 1}, **kv1);
      ASSERT_TRUE(alone.ok());
      // Quantized weights: many-token matmuls run an f32 GEMM on dequantized
      // weights, few-token ones int8 dot products, so a token's logits depend
      // on the batch it was in at the level of activation rounding (~1-5% of
      // a logit's scale in this random model). A mixed-up sequence would be
      // off by whole units.
      const float tol = type == "f32" ? 2e-3f : 0.5f;
      for (size_t i = 0; i < alone->size(); ++i) {
        ASSERT_NEAR((*alone)[i], together[off + i], tol) << type << " seq " << s << " idx " << i;
      }
      off += alone->size();
      BatchSeq one2{0, std::span<const TokenId>(&next[static_cast<size_t>(s)], 1), static_cast<int64_t>(seqs[static_cast<size_t>(s)].size()), false};
      auto alone2 = ctx.Forward({&one2, 1}, **kv1);
      ASSERT_TRUE(alone2.ok());
      for (size_t i = 0; i < alone2->size(); ++i) ASSERT_NEAR((*alone2)[i], together2[off2 + i], tol);
      off2 += alone2->size();
    }
  }
}

TEST(ModelTest, ChunkedPrefillEqualsOnePass) {
  auto model = Model::Load(TinyModel("f16", "qwen2"));
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  std::vector<TokenId> tokens;
  for (int i = 0; i < 150; ++i) tokens.push_back((i * 31 + 7) % 290 + 3);
  auto a = Generator::Create(**model, 2, 256, 512);
  auto b = Generator::Create(**model, 1, 256, 13);
  ASSERT_TRUE(a.ok() && b.ok());
  auto la = (*a)->Evaluate(tokens, 0, true);
  auto lb = (*b)->Evaluate(tokens, 0, true);
  ASSERT_TRUE(la.ok() && lb.ok());
  ASSERT_EQ(la->size(), lb->size());
  for (size_t i = 0; i < la->size(); ++i) ASSERT_NEAR((*la)[i], (*lb)[i], 1e-3f) << i;
}

TEST(ModelTest, PromptLongerThanContextIsAnError) {
  auto model = Model::Load(TinyModel());
  ASSERT_TRUE(model.ok());
  auto gen = Generator::Create(**model, 1, 32);
  ASSERT_TRUE(gen.ok());
  std::vector<TokenId> prompt(40, 5);
  auto r = (*gen)->Generate(prompt, {});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("context"), std::string::npos) << r.status().ToString();
}

TEST(ModelTest, GenerationStopsAtContextEnd) {
  auto model = Model::Load(TinyModel());
  ASSERT_TRUE(model.ok());
  auto gen = Generator::Create(**model, 1, 16);
  ASSERT_TRUE(gen.ok());
  std::vector<TokenId> prompt(10, 5);
  GenerateOptions o;
  o.max_tokens = 100;
  o.ignore_eos = true;
  o.sampling.temperature = 0;
  auto r = (*gen)->Generate(prompt, o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->stop_reason, StopReason::kContextFull);
  EXPECT_EQ(r->output_tokens.size(), 7u);  // positions 10..15 fed back, 7 sampled
}

TEST(ModelTest, OutOfVocabularyTokenIsAnError) {
  auto model = Model::Load(TinyModel());
  ASSERT_TRUE(model.ok());
  auto gen = Generator::Create(**model, 1, 32);
  ASSERT_TRUE(gen.ok());
  std::vector<TokenId> bad{1, 2, 100000};
  auto r = (*gen)->Evaluate(bad, 0, false);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("outside the vocabulary"), std::string::npos);
}

TEST(ModelTest, UnsupportedArchitectureIsRefused) {
  // Rewrite general.architecture of a valid model: same length keeps offsets.
  const std::string src = TinyModel();
  const std::string dst = testing::TestDataDir("model") + "/fake_arch.gguf";
  std::ifstream in(src, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), {});
  const size_t at = bytes.find("llama", bytes.find("general.architecture"));
  ASSERT_NE(at, std::string::npos);
  bytes.replace(at, 5, "mamba");
  std::ofstream(dst, std::ios::binary) << bytes;
  auto model = Model::Load(dst);
  ASSERT_FALSE(model.ok());
  EXPECT_NE(model.status().message().find("mamba"), std::string::npos) << model.status().ToString();
  EXPECT_EQ(model.status().code(), StatusCode::kUnsupported);
}

TEST(CliTest, EverySubcommandHasHelp) {
  for (const std::string sub : {"generate", "perplexity", "bench", "tokenize", "info"}) {
    auto r = RunCommand(StrataBin() + " " + sub + " --help");
    EXPECT_EQ(r.exit_code, 0) << sub << ": " << r.output;
    EXPECT_NE(r.output.find("-m"), std::string::npos) << sub;
  }
}

TEST(CliTest, BadInputGivesClearErrorAndNonZeroExit) {
  const std::string bin = StrataBin();
  auto r = RunCommand(bin + " generate -m /nonexistent.gguf -p hi");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("error:"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("/nonexistent.gguf"), std::string::npos) << r.output;

  const std::string model = TinyModel();
  const std::string bad_utf8 = testing::TestDataDir("model") + "/bad_utf8.txt";
  std::ofstream(bad_utf8, std::ios::binary) << "hello \xff\xfe world";
  r = RunCommand(bin + " generate -m " + model + " -f " + bad_utf8 + " -n 4");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("UTF-8"), std::string::npos) << r.output;

  std::string long_prompt(2000, 'a');
  for (size_t i = 1; i < long_prompt.size(); i += 2) long_prompt[i] = ' ';
  r = RunCommand(bin + " generate -m " + model + " -c 64 -n 4 -p '" + long_prompt + "'");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("context"), std::string::npos) << r.output;

  r = RunCommand(bin + " generate -m " + model + " -p hi --top-p 0");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("top_p"), std::string::npos) << r.output;

  r = RunCommand(bin + " generate -m " + model);
  EXPECT_NE(r.exit_code, 0);
  r = RunCommand(bin + " frobnicate");
  EXPECT_NE(r.exit_code, 0);
}

TEST(CliTest, GenerateIsReproducibleWithSeed) {
  const std::string model = TinyModel();
  const std::string cmd = StrataBin() + " generate -m " + model + " -p 'abc' -n 12 --temp 1.0 --seed 42 --no-display-prompt -t 1";
  auto a = RunCommand(cmd, false), b = RunCommand(cmd, false);
  EXPECT_EQ(a.exit_code, 0) << a.output;
  EXPECT_EQ(a.output, b.output);
}

TEST(CliTest, PerplexityAndBenchRun) {
  const std::string model = TinyModel("q8_0");
  const std::string text = testing::TestDataDir("model") + "/ppl.txt";
  {
    std::ofstream out(text);
    for (int i = 0; i < 200; ++i) out << "the quick brown fox jumps over the lazy dog " << i << "\n";
  }
  auto r = RunCommand(StrataBin() + " perplexity -m " + model + " -f " + text + " -c 64 --chunks 3 -t 2");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("Final estimate: PPL = "), std::string::npos) << r.output;
  const std::string json = testing::TestDataDir("model") + "/bench.json";
  r = RunCommand(StrataBin() + " bench -m " + model + " -p 32 -n 4 -d 0,16 -r 1 --no-bandwidth -o " + json);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("| tg4 @ d16 |"), std::string::npos) << r.output;
  EXPECT_TRUE(std::filesystem::exists(json));
}

}  // namespace
}  // namespace strata

namespace strata {
namespace {

TEST(ModelTest, FingerprintIsStableAndContentSensitive) {
  const std::string a = TinyModel("f32");
  auto m1 = Model::Load(a);
  auto m2 = Model::Load(a);
  auto m3 = Model::Load(TinyModel("f16"));
  ASSERT_TRUE(m1.ok() && m2.ok() && m3.ok());
  EXPECT_EQ((*m1)->fingerprint().size(), 32u);
  EXPECT_EQ((*m1)->fingerprint(), (*m2)->fingerprint());
  EXPECT_NE((*m1)->fingerprint(), (*m3)->fingerprint());
}

}  // namespace
}  // namespace strata
