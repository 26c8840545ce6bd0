// The long-range task harness: loader errors, teacher-forced scoring against
// the numpy reference forward pass, and the `strata eval` command.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "engine/task_eval.h"
#include "test_util.h"

namespace strata {
namespace {

std::string DefaultModel() { return testing::SourceDir() + "/models/strata-default.gguf"; }

std::string WriteFile(const std::string& name, const std::string& text) {
  const std::string path = testing::TestDataDir("task_eval") + "/" + name;
  std::ofstream(path) << text;
  return path;
}

TEST(TaskEval, LoaderRejectsBadLines) {
  auto missing = LoadTaskExamples(testing::TestDataDir("task_eval") + "/does_not_exist.jsonl");
  EXPECT_EQ(missing.status().code(), StatusCode::kIoError);
  const char* bad[] = {
      "not json\n",
      "[1,2]\n",
      R"({"task": "x", "bucket": 1, "distance": 2, "prompt_ids": [1, 2]})" "\n",
      R"({"task": "x", "bucket": 1, "distance": 2, "prompt_ids": [], "answer_ids": [3]})" "\n",
      R"({"task": "x", "bucket": 1, "distance": 2, "prompt_ids": [1, -5], "answer_ids": [3]})" "\n",
      R"({"task": "x", "bucket": "a", "distance": 2, "prompt_ids": [1], "answer_ids": [3]})" "\n",
      R"({"task": 7, "bucket": 1, "distance": 2, "prompt_ids": [1], "answer_ids": [3]})" "\n",
      "\n",
  };
  for (const char* text : bad) {
    auto r = LoadTaskExamples(WriteFile("bad.jsonl", text));
    EXPECT_FALSE(r.ok()) << text;
    if (!r.ok()) {
      EXPECT_NE(r.status().message().find("bad.jsonl"), std::string::npos) << r.status().message();
    }
  }
  auto good = LoadTaskExamples(
      WriteFile("good.jsonl", R"({"task": "x", "bucket": 1, "distance": 2, "prompt_ids": [1, 5], "answer_ids": [3, 4]})"
                              "\n\n"));
  ASSERT_TRUE(good.ok()) << good.status().message();
  ASSERT_EQ(good->size(), 1u);
  EXPECT_EQ((*good)[0].answer_ids, (std::vector<TokenId>{3, 4}));
}

// Teacher-forced argmax and answer NLL agree with the float64 reference on
// one short example of each task.
TEST(TaskEval, ScoringMatchesReferenceForward) {
  if (!std::filesystem::exists(DefaultModel())) GTEST_SKIP() << "no default model";
  auto model = Model::Load(DefaultModel());
  ASSERT_TRUE(model.ok()) << model.status().message();
  auto gen = Generator::Create(**model, 2, 512);
  ASSERT_TRUE(gen.ok());
  const int vocab = (*model)->config().vocab_size;
  for (const char* task : {"kv_recall", "repeat", "mdqa"}) {
    auto examples = LoadTaskExamples(testing::SourceDir() + "/models/eval/" + task + ".jsonl");
    ASSERT_TRUE(examples.ok()) << examples.status().message();
    const TaskExample& ex = examples->front();  // the shortest bucket comes first
    ASSERT_LT(ex.prompt_ids.size() + ex.answer_ids.size(), 512u);
    auto got = ScoreTaskExample(**gen, ex);
    ASSERT_TRUE(got.ok()) << got.status().message();

    std::string ids;
    std::vector<TokenId> all = ex.prompt_ids;
    all.insert(all.end(), ex.answer_ids.begin(), ex.answer_ids.end() - 1);
    for (size_t i = 0; i < all.size(); ++i) {
      if (i > 0) ids += ',';
      ids += std::to_string(all[i]);
    }
    const std::string npy = testing::TestDataDir("task_eval") + "/ref_" + task + ".npy";
    auto r = testing::RunCommand(testing::Python() + " " + testing::SourceDir() + "/tools/ref/ref_forward.py " +
                                 DefaultModel() + " --quiet --tokens " + ids + " --logits-out " + npy);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    std::vector<float> ref;
    std::vector<int64_t> shape;
    ASSERT_TRUE(testing::ReadNpyF32(npy, &ref, &shape));
    ASSERT_EQ(shape.size(), 2u);
    ASSERT_EQ(shape[0], static_cast<int64_t>(all.size()));
    ASSERT_EQ(shape[1], vocab);

    double ref_nll = 0;
    int compared = 0;
    for (size_t i = 0; i < ex.answer_ids.size(); ++i) {
      const float* row = ref.data() + (ex.prompt_ids.size() - 1 + i) * vocab;
      int best = 0, second = -1;
      for (int v = 1; v < vocab; ++v) {
        if (row[v] > row[best]) { second = best; best = v; }
        else if (second < 0 || row[v] > row[second]) second = v;
      }
      double sum = 0;
      for (int v = 0; v < vocab; ++v) sum += std::exp(static_cast<double>(row[v]) - row[best]);
      ref_nll += std::log(sum) + row[best] - row[ex.answer_ids[i]];
      if (row[best] - row[second] > 0.05f) {  // a clear argmax: fp16 KV cannot flip it
        EXPECT_EQ(got->predicted[i], best) << task << " answer token " << i;
        ++compared;
      }
    }
    EXPECT_GT(compared, 0) << task;
    EXPECT_NEAR(got->answer_nll, ref_nll, 0.01 * ref_nll + 0.02) << task;
    int correct_tokens = 0;
    for (size_t i = 0; i < ex.answer_ids.size(); ++i) correct_tokens += got->predicted[i] == ex.answer_ids[i];
    EXPECT_EQ(got->correct_tokens, correct_tokens);
    EXPECT_EQ(got->correct, correct_tokens == static_cast<int>(ex.answer_ids.size()));
  }
}

// An f16 round trip through the chunk format is lossless; int8 changes the
// prompt's KV, so the answer's likelihood moves (a little).
TEST(TaskEval, KvRoundTripIsExactForF16AndLossyForInt8) {
  if (!std::filesystem::exists(DefaultModel())) GTEST_SKIP() << "no default model";
  auto model = Model::Load(DefaultModel());
  ASSERT_TRUE(model.ok()) << model.status().message();
  auto gen = Generator::Create(**model, 2, 512);
  ASSERT_TRUE(gen.ok());
  auto examples = LoadTaskExamples(testing::SourceDir() + "/models/eval/kv_recall.jsonl");
  ASSERT_TRUE(examples.ok()) << examples.status().message();
  const TaskExample& ex = examples->front();
  ASSERT_GT(ex.prompt_ids.size(), 64u);
  auto exact = ScoreTaskExample(**gen, ex);
  ASSERT_TRUE(exact.ok()) << exact.status().message();
  TaskEvalOptions o;
  o.chunk_tokens = 32;
  o.kv_roundtrip = ChunkEncoding{ChunkCodec::kLz4, ChunkDType::kF16};
  auto f16 = ScoreTaskExample(**gen, ex, o);
  ASSERT_TRUE(f16.ok()) << f16.status().message();
  EXPECT_EQ(f16->answer_nll, exact->answer_nll);
  EXPECT_EQ(f16->predicted, exact->predicted);
  o.kv_roundtrip = ChunkEncoding{ChunkCodec::kRaw, ChunkDType::kInt8};
  auto i8 = ScoreTaskExample(**gen, ex, o);
  ASSERT_TRUE(i8.ok()) << i8.status().message();
  EXPECT_NE(i8->answer_nll, exact->answer_nll);
  EXPECT_NEAR(i8->answer_nll, exact->answer_nll, 0.5 + 0.5 * exact->answer_nll);
}

TEST(TaskEval, ContextTooSmallIsAClearError) {
  if (!std::filesystem::exists(DefaultModel())) GTEST_SKIP() << "no default model";
  // The task file is named explicitly: ctest runs from the build directory, where the default
  // (models/eval/*.jsonl, relative to the working directory) does not exist.
  auto r = testing::RunCommand(testing::StrataBin() + " eval -m " + DefaultModel() + " -c 64 --limit 1 --task mdqa " +
                               testing::SourceDir() + "/models/eval/mdqa.jsonl");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("does not fit the context"), std::string::npos) << r.output;
}

TEST(TaskEval, CliWritesTableAndJson) {
  if (!std::filesystem::exists(DefaultModel())) GTEST_SKIP() << "no default model";
  const std::string json_path = testing::TestDataDir("task_eval") + "/eval.json";
  std::filesystem::remove(json_path);
  // One example per distance bucket of one task keeps this fast.
  auto full = testing::RunCommand("cd " + testing::SourceDir() + " && " + testing::StrataBin() + " eval -m " +
                                  DefaultModel() + " --limit 1 --task kv_recall --json " + json_path +
                                  " --per-example");
  ASSERT_EQ(full.exit_code, 0) << full.output;
  EXPECT_NE(full.output.find("| kv_recall |            1900 |"), std::string::npos) << full.output;
  std::ifstream in(json_path);
  nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  ASSERT_FALSE(j.is_discarded());
  ASSERT_EQ(j["buckets"].size(), 5u);
  ASSERT_EQ(j["examples"].size(), 5u);
  for (const auto& b : j["buckets"]) {
    EXPECT_EQ(b["task"], "kv_recall");
    EXPECT_EQ(b["n"], 1);
    EXPECT_GE(b["accuracy"].get<double>(), 0.0);
    EXPECT_LE(b["accuracy"].get<double>(), 1.0);
  }
}

}  // namespace
}  // namespace strata
