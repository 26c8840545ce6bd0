#include "kernels/matmul.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "kernels/matmul_internal.h"
#include "kernels/quant.h"

namespace strata {
namespace {

struct Weights {
  DType type;
  int64_t ne0, ne1;
  std::vector<uint8_t> bytes;
  std::vector<float> deq;  // dequantized by the scalar reference, [ne1][ne0]

  WeightView view() const { return {type, bytes.data(), ne0, ne1, RowBytes(type, ne0)}; }
};

Weights MakeWeights(DType t, int64_t ne0, int64_t ne1, std::mt19937& rng) {
  Weights w{t, ne0, ne1, {}, {}};
  const size_t rb = RowBytes(t, ne0);
  w.bytes.resize(rb * static_cast<size_t>(ne1));
  w.deq.resize(static_cast<size_t>(ne0 * ne1));
  std::normal_distribution<float> g;
  std::vector<float> row(static_cast<size_t>(ne0));
  for (int64_t r = 0; r < ne1; ++r) {
    const float row_scale = 0.5f + static_cast<float>(r % 5);  // rows of differing magnitude
    for (auto& v : row) v = g(rng) * row_scale;
    QuantizeRow(t, row.data(), w.bytes.data() + rb * r, ne0);
    DequantizeRowReference(t, w.bytes.data() + rb * r, w.deq.data() + ne0 * r, ne0);
  }
  return w;
}

// Activations are int8-quantized per block on the few-token path of the
// quantized types; everything else is float. Returns the block size of that
// quantization (0: none).
int64_t ActBlock(DType t, int64_t n_tokens) {
  if (n_tokens >= MatmulGemmMinTokens(t)) return 0;  // packed GEMM: f32 activations
  switch (t) {
    case DType::kQ4_0:
    case DType::kQ8_0:
      return 32;
    case DType::kQ4_K:
    case DType::kQ5_K:
    case DType::kQ6_K:
      return 256;
    default:
      return 0;
  }
}

// Checks y against an fp64 reference, with a per-output bound:
//  * float rounding: 2e-6 * sum_k |w_k x_k| (f32 accumulation over <= 2k terms)
//  * int8 activations: each x_k moves by at most amax(block)/254 when rounded
//    to amax/127 steps, so |error| <= sum_blocks amax_b/254 * sum_{k in b} |w_k|.
//    This bound is rigorous, not statistical; the factor 1.02 covers the f32
//    arithmetic on top of it. Typical errors are ~10x below it.
void ExpectClose(const Weights& w, const std::vector<float>& x, int64_t n_tokens, const std::vector<float>& y,
                 int64_t ldy) {
  const int64_t qb = ActBlock(w.type, n_tokens);
  for (int64_t t = 0; t < n_tokens; ++t) {
    const float* xt = x.data() + t * w.ne0;
    for (int64_t r = 0; r < w.ne1; ++r) {
      const float* wr = w.deq.data() + r * w.ne0;
      double ref = 0, mag = 0, act_err = 0;
      for (int64_t k = 0; k < w.ne0; ++k) {
        ref += static_cast<double>(wr[k]) * xt[k];
        mag += std::fabs(static_cast<double>(wr[k]) * xt[k]);
      }
      if (qb > 0) {
        for (int64_t b = 0; b < w.ne0; b += qb) {
          double amax = 0, wsum = 0;
          for (int64_t k = b; k < b + qb; ++k) {
            amax = std::max(amax, std::fabs(static_cast<double>(xt[k])));
            wsum += std::fabs(static_cast<double>(wr[k]));
          }
          act_err += amax / 254.0 * wsum;
        }
      }
      const double tol = 2e-6 * mag + 1.02 * act_err + 1e-30;
      const float got = y[static_cast<size_t>(t * ldy + r)];
      ASSERT_LE(std::fabs(got - ref), tol) << DTypeName(w.type) << " ne0=" << w.ne0 << " ne1=" << w.ne1
                                           << " n_tokens=" << n_tokens << " t=" << t << " r=" << r
                                           << " got=" << got << " ref=" << ref;
    }
    for (int64_t r = w.ne1; r < ldy; ++r) {
      ASSERT_TRUE(std::isnan(y[static_cast<size_t>(t * ldy + r)])) << "wrote past ne1 at " << r;
    }
  }
}

void RunCase(ThreadPool& pool, const Weights& w, int64_t n_tokens, int64_t ldy, std::mt19937& rng) {
  std::normal_distribution<float> g;
  std::vector<float> x(static_cast<size_t>(n_tokens * w.ne0));
  for (auto& v : x) v = g(rng);
  std::vector<float> y(static_cast<size_t>(n_tokens * ldy), std::numeric_limits<float>::quiet_NaN());
  Matmul(w.view(), x.data(), n_tokens, y.data(), ldy, pool);
  ExpectClose(w, x, n_tokens, y, ldy);
}

class MatmulTest : public ::testing::TestWithParam<DType> {};

TEST_P(MatmulTest, MatchesReferenceAcrossShapes) {
  const DType t = GetParam();
  const int64_t be = Traits(t).block_elems;
  std::mt19937 rng(static_cast<unsigned>(t) + 1);
  // ne0: one block, several blocks, and (for float types) sizes that leave
  // SIMD and panel tails; ne1: below, at, and past the row tiles.
  std::vector<int64_t> ne0s = {be, 3 * be};
  if (be == 1) ne0s = {1, 13, 256, 300};
  if (be == 32) ne0s.push_back(288);  // 9 blocks: spans two 256-wide panels
  if (be == 256) ne0s.push_back(768);
  const int64_t ne1s[] = {1, 7, 19, 37};
  for (int threads : {1, 2, 3}) {
    ThreadPool pool(threads);
    for (int64_t ne0 : ne0s) {
      for (int64_t ne1 : ne1s) {
        const Weights w = MakeWeights(t, ne0, ne1, rng);
        for (int64_t n_tokens : {1, 2, 3, 5, 17, 33, 64}) {
          RunCase(pool, w, n_tokens, ne1, rng);
          if (HasFatalFailure()) return;
        }
      }
    }
  }
}

TEST_P(MatmulTest, StridedOutput) {
  const DType t = GetParam();
  std::mt19937 rng(99);
  ThreadPool pool(2);
  const Weights w = MakeWeights(t, 512, 45, rng);
  for (int64_t n_tokens : {1, 4, 7, 8, 13}) {
    RunCase(pool, w, n_tokens, 45 + 11, rng);
    if (HasFatalFailure()) return;
  }
}

// A model-sized projection on every path, incl. full kMR panels and whole
// kKC blocks: dim 1024 -> 2816 rows would be slow on the fp64 reference, so
// rows are cut to 96 (still several panels per thread).
TEST_P(MatmulTest, ModelSizedRows) {
  const DType t = GetParam();
  std::mt19937 rng(1234);
  ThreadPool pool(2);
  const Weights w = MakeWeights(t, 1024, 96, rng);
  for (int64_t n_tokens : {1, 6, 31}) {
    RunCase(pool, w, n_tokens, 96, rng);
    if (HasFatalFailure()) return;
  }
}

INSTANTIATE_TEST_SUITE_P(AllWeightTypes, MatmulTest,
                         ::testing::Values(DType::kF32, DType::kF16, DType::kBF16, DType::kQ4_0, DType::kQ8_0,
                                           DType::kQ4_K, DType::kQ5_K, DType::kQ6_K),
                         [](const ::testing::TestParamInfo<DType>& info) {
                           return std::string(DTypeName(info.param));
                         });

TEST(MatmulTest, UnalignedWeights) {
  // GGUF packs blocks back to back: a tensor may start on any byte.
  std::mt19937 rng(77);
  ThreadPool pool(2);
  for (DType t : {DType::kF16, DType::kQ4_0, DType::kQ8_0, DType::kQ4_K, DType::kQ6_K}) {
    Weights w = MakeWeights(t, 256, 9, rng);
    std::vector<uint8_t> shifted(w.bytes.size() + 1);
    std::memcpy(shifted.data() + 1, w.bytes.data(), w.bytes.size());
    WeightView v = w.view();
    v.data = shifted.data() + 1;
    for (int64_t n_tokens : {1, 9}) {
      std::normal_distribution<float> g;
      std::vector<float> x(static_cast<size_t>(n_tokens * 256));
      for (auto& e : x) e = g(rng);
      std::vector<float> y(static_cast<size_t>(n_tokens * 9));
      Matmul(v, x.data(), n_tokens, y.data(), 9, pool);
      ExpectClose(w, x, n_tokens, y, 9);
    }
  }
}

TEST(MatmulTest, ZeroActivationsGiveZero) {
  std::mt19937 rng(5);
  ThreadPool pool(2);
  for (DType t : {DType::kQ4_0, DType::kQ4_K, DType::kQ6_K, DType::kF16}) {
    const Weights w = MakeWeights(t, 256, 16, rng);
    for (int64_t n_tokens : {1, 8}) {
      std::vector<float> x(static_cast<size_t>(256 * n_tokens), 0.0f), y(static_cast<size_t>(16 * n_tokens), 1.0f);
      Matmul(w.view(), x.data(), n_tokens, y.data(), 16, pool);
      for (float v : y) EXPECT_EQ(v, 0.0f) << DTypeName(t);
    }
  }
}

TEST(QuantizeActQ8Test, RoundsToNearestSumsAndInterleaves) {
  std::mt19937 rng(21);
  std::normal_distribution<float> g;
  const int64_t nb = 5;  // two full pairs and a lone last block
  std::vector<float> x(static_cast<size_t>(32 * nb));
  for (auto& v : x) v = g(rng);
  x[5] = 0.0f;
  for (bool interleave : {false, true}) {
    alignas(64) uint8_t row[ActQ8RowBytes(nb)];
    QuantizeActQ8(x.data(), 32 * nb, interleave, row);
    const int8_t* q = reinterpret_cast<const int8_t*>(row);
    const float* d = reinterpret_cast<const float*>(row + 32 * nb);
    const float* sum8 = reinterpret_cast<const float*>(row + 36 * nb);
    for (int64_t b = 0; b < nb; ++b) {
      float amax = 0;
      for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(x[32 * b + i]));
      EXPECT_FLOAT_EQ(d[b], amax / 127.0f);
      int sum = 0;
      for (int i = 0; i < 32; ++i) {
        // Position of element i of block b in the row.
        int64_t at = 32 * b + i;
        if (interleave && b < 4) at = 32 * (b & ~1) + 16 * (b & 1) + (i < 16 ? i : 16 + i);
        const int8_t v = q[at];
        EXPECT_LE(std::fabs(d[b] * v - x[32 * b + i]), d[b] * 0.5f + 1e-7f) << b << " " << i;
        EXPECT_GE(v, -127);
        sum += v;
      }
      EXPECT_FLOAT_EQ(sum8[b], 8.0f * d[b] * static_cast<float>(sum));
    }
  }
}

TEST(QuantizeActQ8KTest, MatchesQ8KAndSums) {
  std::mt19937 rng(22);
  std::normal_distribution<float> g;
  std::vector<float> x(512);
  for (auto& v : x) v = g(rng);
  std::vector<ActQ8K> a(2);
  QuantizeActQ8K(x.data(), 512, a.data());
  std::vector<uint8_t> ref(RowBytes(DType::kQ8_K, 512));
  QuantizeRow(DType::kQ8_K, x.data(), ref.data(), 512);  // the public Q8_K quantizer
  for (int b = 0; b < 2; ++b) {
    float d;
    std::memcpy(&d, ref.data() + 292 * b, 4);
    EXPECT_FLOAT_EQ(a[b].d, d);
    EXPECT_EQ(0, std::memcmp(a[b].q, ref.data() + 292 * b + 4, 256)) << b;
    for (int s = 0; s < 16; ++s) {
      int sum = 0;
      for (int i = 0; i < 16; ++i) sum += a[b].q[16 * s + i];
      EXPECT_EQ(a[b].bsum16[s], sum);
    }
    for (int s = 0; s < 8; ++s) EXPECT_EQ(a[b].bsum32[s], a[b].bsum16[2 * s] + a[b].bsum16[2 * s + 1]);
  }
}

}  // namespace
}  // namespace strata
