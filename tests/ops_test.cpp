#include "kernels/ops.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

namespace strata {
namespace {

std::vector<float> RandomVector(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

TEST(OpsTest, RmsNormMatchesDouble) {
  for (int64_t n : {1, 7, 8, 33, 64, 896, 4097}) {
    const std::vector<float> x = RandomVector(static_cast<size_t>(n), 1, 3.0f);
    const std::vector<float> w = RandomVector(static_cast<size_t>(n), 2);
    std::vector<float> out(x.size());
    RmsNorm(x.data(), w.data(), n, 1e-5f, out.data());
    double ss = 0.0;
    for (float v : x) ss += static_cast<double>(v) * v;
    const double inv = 1.0 / std::sqrt(ss / static_cast<double>(n) + 1e-5);
    for (int64_t i = 0; i < n; ++i) {
      const double want = x[static_cast<size_t>(i)] * inv * w[static_cast<size_t>(i)];
      ASSERT_NEAR(out[static_cast<size_t>(i)], want, 1e-5 * (1.0 + std::abs(want))) << n << " " << i;
    }
    // In place: out aliases x.
    std::vector<float> y = x;
    RmsNorm(y.data(), w.data(), n, 1e-5f, y.data());
    EXPECT_EQ(y, out);
  }
}

TEST(OpsTest, SiluMulMatchesDouble) {
  const int64_t n = 203;
  std::vector<float> gate = RandomVector(n, 3, 4.0f);
  gate[0] = -100.0f;  // exp(100) overflows float: must give ~0, not NaN
  gate[1] = 100.0f;
  gate[2] = -1e30f;
  const std::vector<float> up = RandomVector(n, 4);
  const std::vector<float> g0 = gate;
  SiluMul(gate.data(), up.data(), n);
  for (int64_t i = 0; i < n; ++i) {
    const double g = g0[static_cast<size_t>(i)];
    const double want = g / (1.0 + std::exp(-g)) * up[static_cast<size_t>(i)];
    ASSERT_NEAR(gate[static_cast<size_t>(i)], want, 1e-6 * (1.0 + std::abs(want))) << i;
  }
}

TEST(OpsTest, SoftmaxLargeValuesDoNotOverflow) {
  for (int64_t n : {1, 5, 8, 31, 1000}) {
    std::vector<float> x = RandomVector(static_cast<size_t>(n), 5, 30.0f);
    for (float& v : x) v += 1000.0f;  // naive exp() would overflow
    if (n > 3) x[3] = -INFINITY;       // a masked entry
    const std::vector<float> x0 = x;
    Softmax(x.data(), n);
    double mx = -INFINITY;
    for (float v : x0) mx = std::max<double>(mx, v);
    double sum = 0.0;
    for (float v : x0) sum += std::exp(static_cast<double>(v) - mx);
    double total = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      const double want = std::exp(static_cast<double>(x0[static_cast<size_t>(i)]) - mx) / sum;
      ASSERT_NEAR(x[static_cast<size_t>(i)], want, 1e-6 + 1e-5 * want) << n << " " << i;
      total += x[static_cast<size_t>(i)];
    }
    EXPECT_NEAR(total, 1.0, 1e-5);
  }
}

TEST(OpsTest, SoftmaxOfAllMaskedIsZero) {
  std::vector<float> x(12, -INFINITY);
  Softmax(x.data(), 12);
  for (float v : x) EXPECT_EQ(v, 0.0f);
}

TEST(OpsTest, AddBias) {
  std::vector<float> y = RandomVector(19, 6);
  const std::vector<float> b = RandomVector(19, 7);
  const std::vector<float> y0 = y;
  AddBias(y.data(), b.data(), 19);
  for (size_t i = 0; i < y.size(); ++i) EXPECT_EQ(y[i], y0[i] + b[i]);
}

// Frequencies as a numpy float64 reference computes them, including the
// Llama 3.1 scaling exactly as the HF/Meta code writes it.
std::vector<double> ReferenceFreqs(const RopeConfig& c) {
  std::vector<double> f(static_cast<size_t>(c.n_rot / 2));
  for (int i = 0; i < c.n_rot / 2; ++i) {
    double freq = 1.0 / std::pow(static_cast<double>(c.theta), 2.0 * i / c.n_rot);
    if (c.llama3_factor > 0) {
      const double low_wavelen = c.llama3_original_context / static_cast<double>(c.llama3_low_freq_factor);
      const double high_wavelen = c.llama3_original_context / static_cast<double>(c.llama3_high_freq_factor);
      const double wavelen = 2.0 * M_PI / freq;
      if (wavelen < high_wavelen) {
      } else if (wavelen > low_wavelen) {
        freq = freq / c.llama3_factor;
      } else {
        const double smooth = (c.llama3_original_context / wavelen - c.llama3_low_freq_factor) /
                              (static_cast<double>(c.llama3_high_freq_factor) - c.llama3_low_freq_factor);
        freq = (1.0 - smooth) * freq / c.llama3_factor + smooth * freq;
      }
    }
    f[static_cast<size_t>(i)] = freq * c.freq_scale;
  }
  return f;
}

void CheckRope(const RopeConfig& c, int n_heads, int head_dim) {
  SCOPED_TRACE(::testing::Message() << "neox " << c.neox << " n_rot " << c.n_rot << " hd " << head_dim
                                    << " llama3 " << c.llama3_factor << " scale " << c.freq_scale);
  const std::vector<int32_t> pos = {0, 1, 2, 17, 1000, 4095, 8192, 32767, 65536, 131071};
  const int64_t n_tokens = static_cast<int64_t>(pos.size());
  const int64_t row = static_cast<int64_t>(n_heads) * head_dim;
  std::vector<float> x = RandomVector(static_cast<size_t>(n_tokens * row), 9);
  const std::vector<float> x0 = x;
  Rope rope(c);
  rope.Apply(x.data(), n_tokens, n_heads, head_dim, pos.data());
  const std::vector<double> freqs = ReferenceFreqs(c);
  ASSERT_EQ(rope.inv_freq().size(), freqs.size());
  for (size_t i = 0; i < freqs.size(); ++i) EXPECT_NEAR(rope.inv_freq()[i], freqs[i], 1e-7 * freqs[i]);
  const int half = c.n_rot / 2;
  for (int64_t t = 0; t < n_tokens; ++t) {
    for (int h = 0; h < n_heads; ++h) {
      const float* in = &x0[static_cast<size_t>(t * row + h * head_dim)];
      const float* got = &x[static_cast<size_t>(t * row + h * head_dim)];
      std::vector<double> want(in, in + head_dim);
      for (int i = 0; i < half; ++i) {
        const int a = c.neox ? i : 2 * i;
        const int b = c.neox ? i + half : 2 * i + 1;
        const double ang = static_cast<double>(pos[static_cast<size_t>(t)]) * freqs[static_cast<size_t>(i)];
        want[static_cast<size_t>(a)] = in[a] * std::cos(ang) - in[b] * std::sin(ang);
        want[static_cast<size_t>(b)] = in[a] * std::sin(ang) + in[b] * std::cos(ang);
      }
      for (int d = 0; d < head_dim; ++d) {
        ASSERT_NEAR(got[d], want[static_cast<size_t>(d)], 1e-5) << "pos " << pos[static_cast<size_t>(t)]
                                                                << " head " << h << " dim " << d;
      }
    }
  }
}

TEST(RopeTest, NormalLayout) {
  RopeConfig c;
  c.n_rot = 64;
  c.theta = 10000.0f;
  CheckRope(c, 3, 64);
  c.n_rot = 128;
  c.theta = 500000.0f;
  CheckRope(c, 2, 128);
}

TEST(RopeTest, NeoxLayout) {
  RopeConfig c;
  c.neox = true;
  c.n_rot = 128;
  c.theta = 1000000.0f;
  CheckRope(c, 2, 128);
  c.n_rot = 64;
  CheckRope(c, 2, 64);
  c.n_rot = 20;  // fewer than 8 pairs: the scalar tail alone
  CheckRope(c, 2, 20);
}

TEST(RopeTest, PartialRotaryLeavesTailAlone) {
  RopeConfig c;
  c.n_rot = 32;
  c.neox = true;
  CheckRope(c, 2, 80);
  c.neox = false;
  CheckRope(c, 2, 80);
}

TEST(RopeTest, Llama3Scaling) {
  RopeConfig c;
  c.n_rot = 128;
  c.theta = 500000.0f;
  c.llama3_factor = 8.0f;
  c.llama3_low_freq_factor = 1.0f;
  c.llama3_high_freq_factor = 4.0f;
  c.llama3_original_context = 8192;
  CheckRope(c, 2, 128);
  // All three regimes (kept, divided, interpolated) must be present.
  const std::vector<double> base = [] {
    RopeConfig b;
    b.n_rot = 128;
    b.theta = 500000.0f;
    return ReferenceFreqs(b);
  }();
  Rope rope(c);
  int kept = 0, divided = 0, smooth = 0;
  for (size_t i = 0; i < base.size(); ++i) {
    const double r = base[i] / rope.inv_freq()[i];
    if (std::abs(r - 1.0) < 1e-6) ++kept;
    else if (std::abs(r - 8.0) < 1e-5) ++divided;
    else ++smooth;
  }
  EXPECT_GT(kept, 0);
  EXPECT_GT(divided, 0);
  EXPECT_GT(smooth, 0);
}

TEST(RopeTest, LinearFreqScale) {
  RopeConfig c;
  c.n_rot = 64;
  c.freq_scale = 0.25f;
  CheckRope(c, 2, 64);
  c.neox = true;
  CheckRope(c, 2, 64);
}

}  // namespace
}  // namespace strata
