// The engine against the independent numpy reference (tools/ref): for every
// architecture and tensor type, the same GGUF file must give the same logits
// (within a tolerance that depends on how the engine computes with that
// type) and the same greedy choices wherever the reference is not near a tie.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <sstream>

#include "engine/generator.h"
#include "model/model.h"
#include "test_util.h"

namespace strata {
namespace {

using testing::Python;
using testing::RunCommand;
using testing::SourceDir;

struct ParityCase {
  std::string arch;
  std::string type;
  int heads, kv_heads, head_dim;
  bool tied;
  double tol;  // max |Δlogit| allowed, relative to the reference logits' std
  std::string extra = "";  // more make_model.py flags
  std::string tag = "";
};

std::string Name(const ParityCase& c) {
  std::string n = c.arch + "_" + c.type + "_h" + std::to_string(c.heads) + "kv" + std::to_string(c.kv_heads) + "d" +
                  std::to_string(c.head_dim) + (c.tied ? "_tied" : "") + c.tag;
  return n;
}

// Test logs name the case instead of dumping its bytes.
void PrintTo(const ParityCase& c, std::ostream* os) { *os << Name(c); }

std::string Join(const std::vector<TokenId>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) s += ',';
    s += std::to_string(v[i]);
  }
  return s;
}

// Builds (once per build tree) the model for a case.
std::string MakeModel(const ParityCase& c) {
  const std::string path = testing::TestDataDir("parity") + "/" + Name(c) + ".gguf";
  if (std::filesystem::exists(path)) return path;
  std::ostringstream cmd;
  cmd << Python() << " " << SourceDir() << "/tools/synth/make_model.py --arch " << c.arch
      << " --dim 256 --layers 2 --heads " << c.heads << " --kv-heads " << c.kv_heads << " --head-dim " << c.head_dim
      << " --ffn 512 --vocab-size 384 --ctx 1024 --type " << c.type << " --seed 7 " << (c.tied ? "--tied" : "--untied")
      << " " << c.extra << " -o " << testing::TempBeside(path) << " && mv " << testing::TempBeside(path) << " " << path;
  auto r = RunCommand(cmd.str());
  EXPECT_EQ(r.exit_code, 0) << r.output;
  return path;
}

class ModelParityTest : public ::testing::TestWithParam<ParityCase> {};

TEST_P(ModelParityTest, LogitsAndGreedyMatchReference) {
  const ParityCase& c = GetParam();
  const std::string model_path = MakeModel(c);
  ASSERT_TRUE(std::filesystem::exists(model_path));

  // A prompt of varied ids, then the reference's own greedy continuation, so
  // the comparison covers decode positions too.
  std::vector<TokenId> prompt;
  for (int i = 0; i < 40; ++i) prompt.push_back(3 + (i * 97 + 13) % 380);
  const std::string npy = testing::TestDataDir("parity") + "/" + Name(c) + ".npy";
  auto r = RunCommand(Python() + " " + SourceDir() + "/tools/ref/ref_forward.py " + model_path + " --quiet --tokens " +
               Join(prompt) + " --greedy 12 --no-stop-eos");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const size_t g = r.output.find("greedy:");
  ASSERT_NE(g, std::string::npos) << r.output;
  std::vector<TokenId> tokens = prompt;
  {
    std::stringstream ss(r.output.substr(g + 7, r.output.find('\n', g) - g - 7));
    std::string item;
    while (std::getline(ss, item, ',')) tokens.push_back(std::stoi(item));
  }
  ASSERT_EQ(tokens.size(), prompt.size() + 12);
  r = RunCommand(Python() + " " + SourceDir() + "/tools/ref/ref_forward.py " + model_path + " --quiet --tokens " +
          Join(tokens) + " --logits-out " + npy);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::vector<float> ref;
  std::vector<int64_t> shape;
  ASSERT_TRUE(testing::ReadNpyF32(npy, &ref, &shape));
  ASSERT_EQ(shape.size(), 2u);

  auto model = Model::Load(model_path);
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  const int vocab = (*model)->config().vocab_size;
  ASSERT_EQ(shape[0], static_cast<int64_t>(tokens.size()));
  ASSERT_EQ(shape[1], vocab);
  // Prompt in uneven micro-batches, then one token at a time: exercises
  // prefill at an offset and decode.
  auto gen = Generator::Create(**model, 2, 256, 17);
  ASSERT_TRUE(gen.ok());
  std::vector<float> ours;
  auto pre = (*gen)->Evaluate(std::span<const TokenId>(tokens).first(prompt.size()), 0, true);
  ASSERT_TRUE(pre.ok()) << pre.status().ToString();
  ours = *pre;
  for (size_t i = prompt.size(); i < tokens.size(); ++i) {
    auto step = (*gen)->Evaluate(std::span<const TokenId>(tokens).subspan(i, 1), static_cast<int64_t>(i), true);
    ASSERT_TRUE(step.ok());
    ours.insert(ours.end(), step->begin(), step->end());
  }
  ASSERT_EQ(ours.size(), ref.size());

  double mean = std::accumulate(ref.begin(), ref.end(), 0.0) / static_cast<double>(ref.size());
  double var = 0;
  for (float v : ref) var += (v - mean) * (v - mean);
  const double std_ref = std::sqrt(var / static_cast<double>(ref.size()));
  double max_diff = 0, sq = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double d = std::fabs(double(ours[i]) - ref[i]);
    max_diff = std::max(max_diff, d);
    sq += d * d;
  }
  const double rms = std::sqrt(sq / static_cast<double>(ref.size()));
  EXPECT_LT(max_diff / std_ref, c.tol) << "max |diff| " << max_diff << ", reference std " << std_ref;
  // The bulk of the logits must be much closer than the worst one.
  EXPECT_LT(rms / std_ref, c.tol / 4) << "rms diff " << rms << ", reference std " << std_ref;
  std::printf("max |diff| / std = %.5f, rms / std = %.5f\n", max_diff / std_ref, rms / std_ref);

  // Greedy agreement: a different argmax is only acceptable where the
  // reference's top two are closer than the observed error.
  int mismatches = 0;
  for (size_t t = 0; t < tokens.size(); ++t) {
    const float* a = ours.data() + t * static_cast<size_t>(vocab);
    const float* b = ref.data() + t * static_cast<size_t>(vocab);
    const int ia = static_cast<int>(std::max_element(a, a + vocab) - a);
    const int ib = static_cast<int>(std::max_element(b, b + vocab) - b);
    if (ia == ib) continue;
    ++mismatches;
    EXPECT_LT(std::fabs(double(b[ib]) - b[ia]), 2 * max_diff) << "position " << t << ": engine " << ia << ", reference " << ib;
  }
  if (c.tol < 0.01) {
    EXPECT_EQ(mismatches, 0);
  }
}

// Float weights are computed exactly in fp32; quantized weights meet int8
// activations in the dot products, which costs ~1% of a logit's scale.
const ParityCase kCases[] = {
    {"llama", "f32", 4, 2, 64, false, 2e-3},  {"llama", "f16", 4, 2, 64, false, 2e-3},
    {"llama", "bf16", 4, 2, 64, true, 2e-3},  {"llama", "q8_0", 4, 2, 64, false, 0.15},
    {"llama", "q4_0", 4, 2, 64, false, 0.15}, {"llama", "q4_k", 4, 2, 64, false, 0.15},
    {"llama", "q5_k", 4, 2, 64, false, 0.15}, {"llama", "q6_k", 4, 2, 64, false, 0.15},
    {"llama", "q4_k_m", 4, 2, 64, true, 0.15},
    {"llama", "f32", 4, 4, 64, false, 2e-3},  // MHA
    {"llama", "f16", 2, 1, 128, false, 2e-3}, // MQA, head_dim 128
    {"qwen2", "f32", 4, 2, 64, true, 2e-3},   {"qwen2", "f16", 4, 4, 64, true, 2e-3},
    {"qwen2", "q8_0", 4, 2, 64, true, 0.15},  {"qwen2", "q4_k", 4, 2, 64, true, 0.15},
    {"qwen2", "q6_k", 4, 1, 64, true, 0.15},
    {"qwen3", "f32", 4, 2, 64, false, 2e-3},  {"qwen3", "bf16", 4, 2, 64, false, 2e-3},
    {"qwen3", "q8_0", 4, 2, 64, false, 0.15}, {"qwen3", "q5_k", 4, 2, 64, true, 0.15},
    {"qwen3", "q4_0", 2, 1, 128, false, 0.15},
    // Llama 3.1 RoPE scaling, from the rope_freqs tensor and from metadata;
    // a small theta and long positions make the scaled frequencies matter.
    {"llama", "f32", 4, 2, 64, true, 2e-3, "--llama3-rope-scaling --rope-theta 500 --rope-scaling-factor 8", "_llama3_tensor"},
    {"llama", "f32", 4, 2, 64, true, 2e-3,
     "--llama3-rope-scaling --no-rope-freqs-tensor --rope-theta 500 --rope-scaling-factor 8", "_llama3_keys"},
};

INSTANTIATE_TEST_SUITE_P(AllArchsAndTypes, ModelParityTest, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<ParityCase>& info) { return Name(info.param); });

}  // namespace
}  // namespace strata
