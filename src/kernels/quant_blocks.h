// Byte layouts of the ggml block formats, shared by quant.cpp and the matmul
// kernels. Internal to kernels/.
//
// Blocks inside a GGUF tensor are packed back to back (an 18-byte Q4_0 block
// puts every other f16 scale at an odd address), so nothing here casts bytes
// to a struct: fields are read and written through memcpy, which compiles to
// plain unaligned loads and keeps UBSan quiet.
#pragma once

#include <cstdint>
#include <cstring>

#include "kernels/fp16.h"

namespace strata::quant {

// Q4_0: [f16 d][16 B nibbles]. Byte j holds element j (low) and j+16 (high).
inline constexpr int kQ4_0Elems = 32;
inline constexpr int kQ4_0Bytes = 18;
// Q8_0: [f16 d][32 x int8].
inline constexpr int kQ8_0Elems = 32;
inline constexpr int kQ8_0Bytes = 34;

// K-quants: super-blocks of 256.
inline constexpr int kQK = 256;
// Q4_K: [f16 d][f16 dmin][12 B scales][128 B qs].
inline constexpr int kQ4_KBytes = 144;
inline constexpr int kQ4_KScales = 4;
inline constexpr int kQ4_KQs = 16;
// Q5_K: [f16 d][f16 dmin][12 B scales][32 B qh][128 B qs].
inline constexpr int kQ5_KBytes = 176;
inline constexpr int kQ5_KScales = 4;
inline constexpr int kQ5_KQh = 16;
inline constexpr int kQ5_KQs = 48;
// Q6_K: [128 B ql][64 B qh][16 x int8 scales][f16 d]; d comes last.
inline constexpr int kQ6_KBytes = 210;
inline constexpr int kQ6_KQl = 0;
inline constexpr int kQ6_KQh = 128;
inline constexpr int kQ6_KScales = 192;
inline constexpr int kQ6_KD = 208;
// Q8_K: [f32 d][256 x int8][16 x int16 bsums (sum of each 16 q's)].
inline constexpr int kQ8_KBytes = 292;
inline constexpr int kQ8_KQs = 4;
inline constexpr int kQ8_KBsums = 260;

inline float LoadF16(const uint8_t* p) {
  fp16_t h;
  std::memcpy(&h, p, 2);
  return Fp16ToFp32(h);
}
inline void StoreF16(uint8_t* p, float v) {
  const fp16_t h = Fp32ToFp16(v);
  std::memcpy(p, &h, 2);
}
inline float LoadF32(const uint8_t* p) {
  float v;
  std::memcpy(&v, p, 4);
  return v;
}

// The 12 scale bytes of Q4_K/Q5_K hold eight 6-bit scales and eight 6-bit
// mins. Sub-blocks 0..3 keep theirs in the low 6 bits of bytes 0..3 (scales)
// and 4..7 (mins); sub-blocks 4..7 put their low 4 bits in the nibbles of
// bytes 8..11 and their top 2 bits in the spare top bits of bytes 0..7.
// Working on 32-bit words decodes all sixteen values in a few instructions.
inline void UnpackScaleMinK4(const uint8_t* s12, uint8_t scales[8], uint8_t mins[8]) {
  uint32_t w0, w1, w2;
  std::memcpy(&w0, s12, 4);
  std::memcpy(&w1, s12 + 4, 4);
  std::memcpy(&w2, s12 + 8, 4);
  const uint32_t sc_lo = w0 & 0x3f3f3f3fu;
  const uint32_t mn_lo = w1 & 0x3f3f3f3fu;
  const uint32_t sc_hi = (w2 & 0x0f0f0f0fu) | ((w0 >> 2) & 0x30303030u);
  const uint32_t mn_hi = ((w2 >> 4) & 0x0f0f0f0fu) | ((w1 >> 2) & 0x30303030u);
  std::memcpy(scales, &sc_lo, 4);
  std::memcpy(scales + 4, &sc_hi, 4);
  std::memcpy(mins, &mn_lo, 4);
  std::memcpy(mins + 4, &mn_hi, 4);
}

// Inverse of UnpackScaleMinK4. REQUIRES: every value < 64.
inline void PackScaleMinK4(const uint8_t scales[8], const uint8_t mins[8], uint8_t s12[12]) {
  for (int j = 0; j < 4; ++j) {
    s12[j] = static_cast<uint8_t>(scales[j] | ((scales[j + 4] >> 4) << 6));
    s12[j + 4] = static_cast<uint8_t>(mins[j] | ((mins[j + 4] >> 4) << 6));
    s12[j + 8] = static_cast<uint8_t>((scales[j + 4] & 0xf) | ((mins[j + 4] & 0xf) << 4));
  }
}

}  // namespace strata::quant
