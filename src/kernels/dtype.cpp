#include "kernels/dtype.h"

namespace strata {

namespace {
const DTypeTraits kF32{"f32", 1, 4};
const DTypeTraits kF16{"f16", 1, 2};
const DTypeTraits kBF16{"bf16", 1, 2};
const DTypeTraits kQ4_0{"q4_0", 32, 18};
const DTypeTraits kQ8_0{"q8_0", 32, 34};
const DTypeTraits kQ4_K{"q4_K", 256, 144};
const DTypeTraits kQ5_K{"q5_K", 256, 176};
const DTypeTraits kQ6_K{"q6_K", 256, 210};
const DTypeTraits kQ8_K{"q8_K", 256, 292};
}  // namespace

std::optional<DType> DTypeFromGguf(uint32_t id) {
  switch (id) {
    case 0: return DType::kF32;
    case 1: return DType::kF16;
    case 2: return DType::kQ4_0;
    case 8: return DType::kQ8_0;
    case 12: return DType::kQ4_K;
    case 13: return DType::kQ5_K;
    case 14: return DType::kQ6_K;
    case 30: return DType::kBF16;
    default: return std::nullopt;  // Q8_K never appears in model files
  }
}

std::string_view GgmlTypeName(uint32_t id) {
  static constexpr std::string_view kNames[] = {
      "f32",  "f16",  "q4_0", "q4_1", "q4_2 (removed)", "q4_3 (removed)", "q5_0", "q5_1",
      "q8_0", "q8_1", "q2_K", "q3_K", "q4_K", "q5_K", "q6_K", "q8_K", "iq2_xxs", "iq2_xs",
      "iq3_xxs", "iq1_s", "iq4_nl", "iq3_s", "iq2_s", "iq4_xs", "i8", "i16", "i32", "i64",
      "f64", "iq1_m", "bf16", "q4_0_4_4 (removed)", "q4_0_4_8 (removed)",
      "q4_0_8_8 (removed)", "tq1_0", "tq2_0"};
  if (id < sizeof(kNames) / sizeof(kNames[0])) return kNames[id];
  return "unknown";
}

const DTypeTraits& Traits(DType t) {
  switch (t) {
    case DType::kF32: return kF32;
    case DType::kF16: return kF16;
    case DType::kBF16: return kBF16;
    case DType::kQ4_0: return kQ4_0;
    case DType::kQ8_0: return kQ8_0;
    case DType::kQ4_K: return kQ4_K;
    case DType::kQ5_K: return kQ5_K;
    case DType::kQ6_K: return kQ6_K;
    case DType::kQ8_K: return kQ8_K;
  }
  return kF32;
}

}  // namespace strata
