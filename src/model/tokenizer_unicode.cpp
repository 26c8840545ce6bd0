#include "model/tokenizer_unicode.h"

#include <algorithm>
#include <array>

namespace strata {

namespace {

// ASCII is most of most text; skip the binary search for it.
constexpr std::array<uint8_t, 128> MakeAsciiFlags() {
  std::array<uint8_t, 128> f{};
  for (int c = 'a'; c <= 'z'; ++c) f[c] = kLetter;
  for (int c = 'A'; c <= 'Z'; ++c) f[c] = kLetter;
  for (int c = '0'; c <= '9'; ++c) f[c] = kNumber;
  for (int c : {'\t', '\n', '\v', '\f', '\r', ' '}) f[c] = kWhitespace;
  return f;
}
constexpr std::array<uint8_t, 128> kAsciiFlags = MakeAsciiFlags();

}  // namespace

uint8_t CodepointFlags(char32_t cp) {
  if (cp < 128) return kAsciiFlags[cp];
  using unicode_tables::CodepointRun;
  const CodepointRun* begin = unicode_tables::kCodepointRuns;
  const CodepointRun* end = begin + unicode_tables::kCodepointRunCount;
  // Last run whose first code point is <= cp (run 0 starts at 0).
  const CodepointRun* it = std::upper_bound(
      begin, end, static_cast<uint32_t>(cp),
      [](uint32_t v, const CodepointRun& r) { return v < r.first; });
  return (it - 1)->flags;
}

int Utf8CharLength(std::string_view s, size_t i) {
  const auto b = [&](size_t k) { return static_cast<uint8_t>(s[k]); };
  const uint8_t c = b(i);
  if (c < 0x80) return 1;
  int len;
  uint8_t lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    len = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    if (c == 0xE0) lo = 0xA0;        // overlong
    if (c == 0xED) hi = 0x9F;        // surrogates
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    if (c == 0xF0) lo = 0x90;        // overlong
    if (c == 0xF4) hi = 0x8F;        // past U+10FFFF
  } else {
    return 0;
  }
  for (int k = 1; k < len; ++k) {
    if (i + k >= s.size()) return -1;
    const uint8_t d = b(i + k);
    if (k == 1 ? (d < lo || d > hi) : (d < 0x80 || d > 0xBF)) return 0;
  }
  return len;
}

char32_t DecodeUtf8(std::string_view s, size_t i, int len) {
  const auto b = [&](size_t k) { return static_cast<char32_t>(static_cast<uint8_t>(s[k])); };
  switch (len) {
    case 1: return b(i);
    case 2: return ((b(i) & 0x1F) << 6) | (b(i + 1) & 0x3F);
    case 3: return ((b(i) & 0x0F) << 12) | ((b(i + 1) & 0x3F) << 6) | (b(i + 2) & 0x3F);
    default:
      return ((b(i) & 0x07) << 18) | ((b(i + 1) & 0x3F) << 12) | ((b(i + 2) & 0x3F) << 6) |
             (b(i + 3) & 0x3F);
  }
}

void AppendUtf8(char32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

}  // namespace strata
