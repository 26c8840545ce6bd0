#include "kernels/memory_bandwidth.h"

#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>
#include <vector>

namespace strata {

namespace {

float SumRange(const float* p, size_t n) {
#if defined(__AVX2__)
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    a0 = _mm256_add_ps(a0, _mm256_loadu_ps(p + i));
    a1 = _mm256_add_ps(a1, _mm256_loadu_ps(p + i + 8));
    a2 = _mm256_add_ps(a2, _mm256_loadu_ps(p + i + 16));
    a3 = _mm256_add_ps(a3, _mm256_loadu_ps(p + i + 24));
  }
  __m256 s = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
  float buf[8];
  _mm256_storeu_ps(buf, s);
  float r = 0;
  for (float v : buf) r += v;
  for (; i < n; ++i) r += p[i];
  return r;
#else
  float r = 0;
  for (size_t i = 0; i < n; ++i) r += p[i];
  return r;
#endif
}

}  // namespace

double MeasureReadBandwidth(ThreadPool& pool, size_t bytes, int repeats) {
  const size_t n = bytes / sizeof(float);
  std::unique_ptr<float[]> buf(new float[n]);
  // First touch from the threads that will read, so pages land where they read.
  pool.ParallelFor(static_cast<int64_t>(n), 1 << 16, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) buf[static_cast<size_t>(i)] = 1.0f;
  });
  double best = 0;
  std::vector<float> sink(static_cast<size_t>(pool.size()));
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    pool.ParallelFor(static_cast<int64_t>(n), 1 << 16, [&](int64_t b, int64_t e, int t) {
      sink[static_cast<size_t>(t)] += SumRange(buf.get() + b, static_cast<size_t>(e - b));
    });
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, static_cast<double>(n * sizeof(float)) / s);
  }
  volatile float keep = sink[0];  // the sums must not be optimized away
  (void)keep;
  return best;
}

}  // namespace strata
