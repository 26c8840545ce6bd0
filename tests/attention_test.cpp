#include "kernels/attention.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

namespace strata {
namespace {

struct Case {
  int n_q_heads, n_kv_heads, head_dim;
  int64_t n_tokens, q_pos0, kv_stride_extra;
};

// Naive double-precision attention: the full score matrix, an explicit causal
// mask and a plain softmax, reading the same fp16 K/V the kernel reads.
std::vector<double> Reference(const std::vector<float>& q, const std::vector<fp16_t>& k,
                              const std::vector<fp16_t>& v, int64_t kv_stride, const Case& c,
                              double scale) {
  const int64_t n_keys = c.q_pos0 + c.n_tokens;
  const int hd = c.head_dim;
  const int group = c.n_q_heads / c.n_kv_heads;
  std::vector<double> out(static_cast<size_t>(c.n_tokens * c.n_q_heads * hd), 0.0);
  std::vector<double> scores(static_cast<size_t>(c.n_tokens * n_keys));
  for (int h = 0; h < c.n_q_heads; ++h) {
    const int g = h / group;
    for (int64_t t = 0; t < c.n_tokens; ++t) {
      for (int64_t j = 0; j < n_keys; ++j) {
        double s = 0.0;
        for (int d = 0; d < hd; ++d) {
          s += static_cast<double>(q[static_cast<size_t>((t * c.n_q_heads + h) * hd + d)]) *
               Fp16ToFp32(k[static_cast<size_t>(j * kv_stride + g * hd + d)]);
        }
        const bool masked = j > c.q_pos0 + t;
        scores[static_cast<size_t>(t * n_keys + j)] = masked ? -INFINITY : s * scale;
      }
    }
    for (int64_t t = 0; t < c.n_tokens; ++t) {
      double* row = &scores[static_cast<size_t>(t * n_keys)];
      double mx = -INFINITY;
      for (int64_t j = 0; j < n_keys; ++j) mx = std::max(mx, row[j]);
      double sum = 0.0;
      for (int64_t j = 0; j < n_keys; ++j) {
        row[j] = std::exp(row[j] - mx);
        sum += row[j];
      }
      for (int64_t j = 0; j < n_keys; ++j) {
        const double pj = row[j] / sum;
        for (int d = 0; d < hd; ++d) {
          out[static_cast<size_t>((t * c.n_q_heads + h) * hd + d)] +=
              pj * Fp16ToFp32(v[static_cast<size_t>(j * kv_stride + g * hd + d)]);
        }
      }
    }
  }
  return out;
}

void RunCase(const Case& c, int n_threads, uint32_t seed, float q_scale = 1.0f) {
  SCOPED_TRACE(::testing::Message() << "heads " << c.n_q_heads << "/" << c.n_kv_heads << " hd "
                                    << c.head_dim << " tokens " << c.n_tokens << " pos0 " << c.q_pos0
                                    << " extra " << c.kv_stride_extra << " threads " << n_threads);
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  const int hd = c.head_dim;
  const int64_t n_keys = c.q_pos0 + c.n_tokens;
  const int64_t kv_stride = c.n_kv_heads * hd + c.kv_stride_extra;
  std::vector<float> q(static_cast<size_t>(c.n_tokens * c.n_q_heads * hd));
  for (float& x : q) x = dist(rng) * q_scale;
  std::vector<fp16_t> k(static_cast<size_t>(n_keys * kv_stride)), v(k.size());
  for (size_t i = 0; i < k.size(); ++i) {
    k[i] = Fp32ToFp16(dist(rng));
    v[i] = Fp32ToFp16(dist(rng));
  }
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  std::vector<float> out(q.size(), NAN);
  ThreadPool pool(n_threads);
  AttentionShape shape{c.n_q_heads, c.n_kv_heads, hd};
  AttentionCausal(q.data(), c.n_tokens, c.q_pos0, k.data(), v.data(), kv_stride, shape, scale,
                  out.data(), pool);
  const std::vector<double> ref = Reference(q, k, v, kv_stride, c, scale);
  double max_err = 0.0;
  for (size_t i = 0; i < out.size(); ++i) {
    ASSERT_TRUE(std::isfinite(out[i])) << i;
    // Outputs are convex combinations of ~N(0,1) values: mostly O(0.1..1), so
    // an absolute floor of 1e-4 plus 1e-4 relative is a tight bound.
    const double err = std::abs(out[i] - ref[i]);
    max_err = std::max(max_err, err);
    ASSERT_LE(err, 1e-4 + 1e-4 * std::abs(ref[i])) << "index " << i << " got " << out[i] << " want "
                                                   << ref[i];
  }
}

TEST(AttentionTest, DecodeShapes) {
  for (int hd : {64, 128}) {
    for (auto heads : {std::pair{4, 4}, std::pair{8, 2}, std::pair{8, 1}}) {
      for (int64_t pos0 : {0, 1, 63, 64, 65, 200, 700}) {
        for (int threads : {1, 2, 3}) {
          RunCase({heads.first, heads.second, hd, 1, pos0, 0}, threads, 7u + static_cast<uint32_t>(pos0));
        }
      }
    }
  }
}

TEST(AttentionTest, PrefillTokenCounts) {
  for (auto heads : {std::pair{4, 4}, std::pair{8, 2}, std::pair{8, 1}}) {
    for (int64_t n_tokens : {1, 2, 3, 5, 8, 9, 17, 33, 64, 70}) {
      for (int64_t pos0 : {0, 37, 130}) {
        RunCase({heads.first, heads.second, 64, n_tokens, pos0, 0}, 2, 11u + static_cast<uint32_t>(n_tokens));
      }
    }
  }
}

TEST(AttentionTest, HeadDims) {
  // 80 and 96 are Phi/Qwen-style dims (80 is not a multiple of 16), 72 a
  // multiple of 8 only, 20 and 36 take the scalar path.
  for (int hd : {80, 96, 72, 20, 36, 128}) {
    for (int64_t n_tokens : {1, 4, 40}) {
      RunCase({6, 2, hd, n_tokens, 90, 0}, 2, 3u + static_cast<uint32_t>(hd));
      RunCase({2, 2, hd, n_tokens, 0, 0}, 3, 5u + static_cast<uint32_t>(hd));
    }
  }
}

TEST(AttentionTest, KvStrideLargerThanRow) {
  for (int threads : {1, 2, 3}) {
    RunCase({8, 2, 64, 1, 300, 40}, threads, 21);
    RunCase({8, 2, 64, 23, 100, 8}, threads, 22);
    RunCase({4, 1, 128, 70, 0, 3}, threads, 23);  // odd stride: unaligned fp16 rows
    RunCase({4, 1, 20, 9, 5, 1}, threads, 24);
  }
}

TEST(AttentionTest, LongContextSplitsKeys) {
  // Decode and short prefill over thousands of keys take the split-and-merge
  // path when threads outnumber items.
  RunCase({8, 2, 128, 1, 3000, 0}, 2, 31);
  RunCase({8, 2, 128, 1, 3000, 0}, 3, 32);
  RunCase({2, 1, 64, 3, 2100, 0}, 3, 33);
  RunCase({8, 8, 64, 1, 1500, 0}, 2, 34);
}

TEST(AttentionTest, PeakedScoresStayFinite) {
  // Large queries make scores of several hundred: the online max must keep
  // exp from overflowing, and rows dominated by one key must stay exact.
  RunCase({8, 2, 64, 20, 100, 0}, 2, 41, 30.0f);
  RunCase({8, 2, 64, 1, 500, 0}, 2, 42, 30.0f);
  RunCase({4, 4, 24, 5, 100, 0}, 2, 43, 30.0f);
}

TEST(AttentionTest, OutputMayAliasQuery) {
  std::mt19937 rng(6);
  std::normal_distribution<float> dist;
  const int hd = 64, nq = 8, nkv = 2;
  ThreadPool pool(2);
  // Decode with split keys, short and long prefill: every path must read its
  // q rows before writing the same out rows.
  for (auto [n_tokens, pos0] : {std::pair<int64_t, int64_t>{1, 2000}, {3, 10}, {40, 300}}) {
    const int64_t n_keys = pos0 + n_tokens;
    std::vector<float> q(static_cast<size_t>(n_tokens * nq * hd));
    for (float& x : q) x = dist(rng);
    std::vector<fp16_t> k(static_cast<size_t>(n_keys * nkv * hd)), v(k.size());
    for (size_t i = 0; i < k.size(); ++i) {
      k[i] = Fp32ToFp16(dist(rng));
      v[i] = Fp32ToFp16(dist(rng));
    }
    std::vector<float> separate(q.size()), inplace = q;
    AttentionCausal(q.data(), n_tokens, pos0, k.data(), v.data(), nkv * hd, {nq, nkv, hd}, 0.125f,
                    separate.data(), pool);
    AttentionCausal(inplace.data(), n_tokens, pos0, k.data(), v.data(), nkv * hd, {nq, nkv, hd}, 0.125f,
                    inplace.data(), pool);
    EXPECT_EQ(separate, inplace) << n_tokens << " " << pos0;
  }
}

TEST(AttentionTest, RepeatedCallsAreDeterministic) {
  std::mt19937 rng(5);
  std::normal_distribution<float> dist;
  const int hd = 64, nq = 8, nkv = 2;
  const int64_t n_tokens = 40, pos0 = 300, n_keys = pos0 + n_tokens;
  std::vector<float> q(static_cast<size_t>(n_tokens * nq * hd));
  for (float& x : q) x = dist(rng);
  std::vector<fp16_t> k(static_cast<size_t>(n_keys * nkv * hd)), v(k.size());
  for (size_t i = 0; i < k.size(); ++i) {
    k[i] = Fp32ToFp16(dist(rng));
    v[i] = Fp32ToFp16(dist(rng));
  }
  ThreadPool pool(2);
  std::vector<float> a(q.size()), b(q.size());
  AttentionCausal(q.data(), n_tokens, pos0, k.data(), v.data(), nkv * hd, {nq, nkv, hd}, 0.125f, a.data(), pool);
  AttentionCausal(q.data(), n_tokens, pos0, k.data(), v.data(), nkv * hd, {nq, nkv, hd}, 0.125f, b.data(), pool);
  EXPECT_EQ(a, b);
}

}  // namespace
}  // namespace strata
