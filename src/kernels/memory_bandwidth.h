// Measures DRAM read bandwidth the way a decode step reads weights: every
// thread streams its share of a buffer far larger than the caches.
#pragma once

#include <cstddef>

#include "base/thread_pool.h"

namespace strata {

// Bytes per second, the best of `repeats` passes over `bytes` bytes.
double MeasureReadBandwidth(ThreadPool& pool, size_t bytes = size_t{512} << 20, int repeats = 5);

}  // namespace strata
