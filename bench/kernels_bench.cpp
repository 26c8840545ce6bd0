// Microbenchmarks of the matmul kernels (Google Benchmark).
//
// Build (not part of the CMake glob):
//   cmake --build build -j --target strata_core
//   g++ -std=c++20 -O3 -march=native -Isrc bench/kernels_bench.cpp build/libstrata_core.a
//       -lbenchmark -lpthread -o /tmp/kernels_bench   (one line)
//   /tmp/kernels_bench --benchmark_min_time=0.5s
//
// Reported counters:
//   GB/s       weight bytes streamed per second (decode: the figure of merit)
//   GFLOP/s    2 * rows * cols * tokens per second (prefill)
// Decode ("Gemv") cycles through enough copies of the weight to exceed the
// last-level cache, so it measures DRAM-bound throughput like a real forward
// pass; "GemvHot" reuses one copy (L3-resident) to show kernel headroom.
// Threads: STRATA_BENCH_THREADS (default 2).
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "base/thread_pool.h"
#include "kernels/matmul.h"
#include "kernels/quant.h"

namespace strata {
namespace {

int BenchThreads() {
  const char* s = std::getenv("STRATA_BENCH_THREADS");
  return s != nullptr ? std::atoi(s) : 2;
}

ThreadPool& Pool() {
  static ThreadPool pool(BenchThreads());
  return pool;
}

constexpr size_t kColdBytes = size_t{256} << 20;  // well past a 32 MiB L3

struct Matrix {
  std::vector<uint8_t> bytes;  // `copies` back-to-back copies
  int copies = 1;
  size_t bytes_per_copy = 0;
};

Matrix MakeMatrix(DType t, int64_t ne0, int64_t ne1, bool cold) {
  Matrix m;
  const size_t rb = RowBytes(t, ne0);
  m.bytes_per_copy = rb * static_cast<size_t>(ne1);
  m.copies = cold ? static_cast<int>(kColdBytes / m.bytes_per_copy + 1) : 1;
  m.bytes.resize(m.bytes_per_copy * static_cast<size_t>(m.copies));
  std::mt19937 rng(1);
  std::normal_distribution<float> g;
  std::vector<float> row(static_cast<size_t>(ne0));
  for (int64_t r = 0; r < ne1; ++r) {
    for (auto& v : row) v = g(rng);
    QuantizeRow(t, row.data(), m.bytes.data() + rb * r, ne0);
  }
  for (int c = 1; c < m.copies; ++c) {
    std::memcpy(m.bytes.data() + m.bytes_per_copy * c, m.bytes.data(), m.bytes_per_copy);
  }
  return m;
}

void RunMatmul(benchmark::State& state, DType t, bool cold) {
  const int64_t ne0 = state.range(0), ne1 = state.range(1), n_tokens = state.range(2);
  const Matrix m = MakeMatrix(t, ne0, ne1, cold);
  std::vector<float> x(static_cast<size_t>(ne0 * n_tokens)), y(static_cast<size_t>(ne1 * n_tokens));
  std::mt19937 rng(2);
  std::normal_distribution<float> g;
  for (auto& v : x) v = g(rng);
  WeightView w{t, nullptr, ne0, ne1, RowBytes(t, ne0)};
  int c = 0;
  for (auto _ : state) {
    w.data = m.bytes.data() + m.bytes_per_copy * static_cast<size_t>(c);
    c = c + 1 == m.copies ? 0 : c + 1;
    Matmul(w, x.data(), n_tokens, y.data(), ne1, Pool());
    benchmark::ClobberMemory();
  }
  const double iters = static_cast<double>(state.iterations());
  state.counters["GB/s"] = benchmark::Counter(iters * static_cast<double>(m.bytes_per_copy) / 1e9,
                                              benchmark::Counter::kIsRate);
  state.counters["GFLOP/s"] = benchmark::Counter(
      iters * 2.0 * static_cast<double>(ne0 * ne1 * n_tokens) / 1e9, benchmark::Counter::kIsRate);
  state.counters["tok/s"] = benchmark::Counter(iters * static_cast<double>(n_tokens), benchmark::Counter::kIsRate);
}

// Streaming read of a large buffer with the same pool: the bandwidth ceiling.
void BM_StreamRead(benchmark::State& state) {
  const size_t n = kColdBytes / sizeof(float);
  std::vector<float> buf(n, 1.0f);
  ThreadPool& pool = Pool();
  std::vector<float> partial(static_cast<size_t>(pool.size()) * 16);
  for (auto _ : state) {
    pool.ParallelFor(static_cast<int64_t>(n), 4096, [&](int64_t b, int64_t e, int tid) {
      float s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;
      for (int64_t i = b; i + 8 <= e; i += 8) {
        s0 += buf[i];
        s1 += buf[i + 1];
        s2 += buf[i + 2];
        s3 += buf[i + 3];
        s4 += buf[i + 4];
        s5 += buf[i + 5];
        s6 += buf[i + 6];
        s7 += buf[i + 7];
      }
      partial[static_cast<size_t>(tid) * 16] = s0 + s1 + s2 + s3 + s4 + s5 + s6 + s7;
    });
    benchmark::DoNotOptimize(partial.data());
  }
  state.counters["GB/s"] =
      benchmark::Counter(static_cast<double>(state.iterations()) * static_cast<double>(n * 4) / 1e9,
                         benchmark::Counter::kIsRate);
}
BENCHMARK(BM_StreamRead)->UseRealTime()->Unit(benchmark::kMillisecond);

const DType kTypes[] = {DType::kF32,  DType::kF16,  DType::kBF16, DType::kQ8_0,
                        DType::kQ4_0, DType::kQ4_K, DType::kQ5_K, DType::kQ6_K};

void RegisterAll() {
  for (DType t : kTypes) {
    const std::string name(DTypeName(t));
    benchmark::RegisterBenchmark(("Gemv/" + name).c_str(), [t](benchmark::State& s) { RunMatmul(s, t, true); })
        ->Args({1024, 2816, 1})
        ->Args({2816, 1024, 1})
        ->UseRealTime()
        ->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark(("GemvHot/" + name).c_str(), [t](benchmark::State& s) { RunMatmul(s, t, false); })
        ->Args({1024, 2816, 1})
        ->UseRealTime()
        ->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark(("SmallBatch/" + name).c_str(),
                                 [t](benchmark::State& s) { RunMatmul(s, t, true); })
        ->Args({1024, 2816, 4})
        ->Args({1024, 2816, 7})
        ->Args({1024, 2816, 8})
        ->Args({1024, 2816, 16})
        ->Args({1024, 2816, 32})
        ->UseRealTime()
        ->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark(("Gemm/" + name).c_str(), [t](benchmark::State& s) { RunMatmul(s, t, false); })
        ->Args({1024, 2816, 512})
        ->Args({2816, 1024, 512})
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  }
}

}  // namespace
}  // namespace strata

int main(int argc, char** argv) {
  strata::RegisterAll();
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
