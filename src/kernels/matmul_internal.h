// Pieces of the matmul kernels that tests reach into. Internal to kernels/.
#pragma once

#include <cstdint>

namespace strata {

// A block of 32 activations quantized to int8 for the Q4_0/Q8_0 dot
// products: x[i] ~= d * q[i]. sum8 = 8 * d * sum(q) is the correction that
// lets Q4_0 nibbles (stored +8) be multiplied as unsigned bytes.
struct ActQ8 {
  float d;
  float sum8;
  int8_t q[32];
};
static_assert(sizeof(ActQ8) == 40);

// REQUIRES: n % 32 == 0. Writes n / 32 blocks. q in [-127, 127].
void QuantizeActQ8(const float* x, int64_t n, ActQ8* out);

}  // namespace strata
