#include "engine/sampler.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <vector>

#include "engine/generator.h"

namespace strata {
namespace {

TEST(SamplerTest, GreedyPicksArgMaxAndLowestIdOnTies) {
  SamplingParams p;
  p.temperature = 0;
  Sampler s(p);
  std::vector<float> logits{0.1f, 3.0f, -2.0f, 3.0f};
  EXPECT_EQ(s.Sample(logits, {}), 1);
}

TEST(SamplerTest, SameSeedSameSequence) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_k = 0;
  p.top_p = 1.0f;
  p.min_p = 0;
  p.seed = 1234;
  std::vector<float> logits(50);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = std::sin(static_cast<float>(i));
  Sampler a(p), b(p);
  std::vector<TokenId> sa, sb;
  for (int i = 0; i < 200; ++i) {
    sa.push_back(a.Sample(logits, {}));
    sb.push_back(b.Sample(logits, {}));
  }
  EXPECT_EQ(sa, sb);
  p.seed = 99;
  Sampler c(p);
  std::vector<TokenId> sc;
  for (int i = 0; i < 200; ++i) sc.push_back(c.Sample(logits, {}));
  EXPECT_NE(sa, sc);
}

TEST(SamplerTest, TemperatureOneMatchesSoftmaxFrequencies) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_k = 0;
  p.top_p = 1.0f;
  p.min_p = 0;
  p.seed = 7;
  Sampler s(p);
  std::vector<float> logits{0.0f, std::log(2.0f), std::log(3.0f), std::log(4.0f)};  // p = 0.1..0.4
  std::map<TokenId, int> counts;
  const int n = 40000;
  for (int i = 0; i < n; ++i) ++counts[s.Sample(logits, {})];
  for (int id = 0; id < 4; ++id) {
    EXPECT_NEAR(counts[id] / static_cast<double>(n), (id + 1) / 10.0, 0.01) << id;
  }
}

TEST(SamplerTest, TopKOneIsGreedy) {
  SamplingParams p;
  p.temperature = 5.0f;
  p.top_k = 1;
  p.seed = 3;
  Sampler s(p);
  std::vector<float> logits{1.0f, 2.0f, 1.9f};
  for (int i = 0; i < 100; ++i) EXPECT_EQ(s.Sample(logits, {}), 1);
}

TEST(SamplerTest, TopPKeepsSmallestSetReachingP) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_k = 0;
  p.top_p = 0.5f;  // probabilities 0.4, 0.3, 0.2, 0.1: keeps {3, 2}
  p.min_p = 0;
  p.seed = 11;
  Sampler s(p);
  std::vector<float> logits{std::log(0.1f), std::log(0.2f), std::log(0.3f), std::log(0.4f)};
  std::map<TokenId, int> counts;
  for (int i = 0; i < 5000; ++i) ++counts[s.Sample(logits, {})];
  EXPECT_EQ(counts[0] + counts[1], 0);
  EXPECT_GT(counts[2], 0);
  EXPECT_GT(counts[3], counts[2]);
}

TEST(SamplerTest, MinPDropsUnlikelyTokens) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_k = 0;
  p.top_p = 1.0f;
  p.min_p = 0.5f;  // keeps tokens with p >= 0.5 * p_max
  p.seed = 5;
  Sampler s(p);
  std::vector<float> logits{std::log(0.5f), std::log(0.3f), std::log(0.2f)};
  std::map<TokenId, int> counts;
  for (int i = 0; i < 3000; ++i) ++counts[s.Sample(logits, {})];
  EXPECT_EQ(counts[2], 0);
  EXPECT_GT(counts[1], 0);
}

TEST(SamplerTest, RepetitionPenaltyDemotesSeenTokens) {
  SamplingParams p;
  p.temperature = 0;
  p.repeat_penalty = 2.0f;
  Sampler s(p);
  std::vector<float> logits{1.0f, 1.5f, -1.0f};
  std::vector<TokenId> history{1};
  EXPECT_EQ(s.Sample(logits, history), 0);  // 1.5 / 2 = 0.75 < 1.0
  EXPECT_EQ(s.Sample(logits, {}), 1);
}

TEST(SamplerTest, PresenceAndFrequencyPenalties) {
  SamplingParams p;
  p.temperature = 0;
  p.frequency_penalty = 0.3f;
  Sampler s(p);
  std::vector<float> logits{1.0f, 1.5f};
  std::vector<TokenId> once{1}, twice{1, 1};
  EXPECT_EQ(s.Sample(logits, once), 1);   // 1.5 - 0.3 = 1.2
  EXPECT_EQ(s.Sample(logits, twice), 0);  // 1.5 - 0.6 = 0.9
  SamplingParams q;
  q.temperature = 0;
  q.presence_penalty = 0.6f;
  Sampler t(q);
  EXPECT_EQ(t.Sample(logits, once), 0);  // 1.5 - 0.6 = 0.9
}

TEST(SamplerTest, ValidateRejectsNonsense) {
  SamplingParams p;
  p.top_p = 0;
  EXPECT_FALSE(p.Validate().ok());
  p = {};
  p.min_p = 2;
  EXPECT_FALSE(p.Validate().ok());
  p = {};
  p.repeat_penalty = 0;
  EXPECT_FALSE(p.Validate().ok());
  p = {};
  p.temperature = NAN;
  EXPECT_FALSE(p.Validate().ok());
  EXPECT_TRUE(SamplingParams{}.Validate().ok());
}

TEST(StopStringTest, FindsStopAndHoldsBackPartialMatches) {
  size_t hold = 0;
  EXPECT_EQ(FindStop("hello wor", {"world"}, &hold), std::string::npos);
  EXPECT_EQ(hold, 3u);  // "wor" may become "world"
  EXPECT_EQ(FindStop("hello world!", {"world"}, &hold), 6u);
  EXPECT_EQ(FindStop("abc", {"x", "bc"}, &hold), 1u);
  EXPECT_EQ(FindStop("abc", {}, &hold), std::string::npos);
  EXPECT_EQ(hold, 0u);
  EXPECT_EQ(FindStop("ab\n", {"\n\n"}, &hold), std::string::npos);
  EXPECT_EQ(hold, 1u);
}

}  // namespace
}  // namespace strata
