#include "model/tokenizer_unicode.h"

#include <unicode/unorm2.h>
#include <unicode/ustring.h>

#include <algorithm>
#include <array>
#include <vector>

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

bool NormalizeNfc(std::string_view text, std::string* out) {
  // Code points below U+0300 are unchanged by NFC and only compose with a
  // following mark at U+0300 or above, whose UTF-8 lead byte is >= 0xCC.
  if (std::none_of(text.begin(), text.end(), [](char c) { return static_cast<uint8_t>(c) >= 0xCC; })) return false;
  if (text.size() > static_cast<size_t>(INT32_MAX / 4)) return false;
  UErrorCode err = U_ZERO_ERROR;
  const UNormalizer2* nfc = unorm2_getNFCInstance(&err);
  if (U_FAILURE(err)) return false;
  const auto len = static_cast<int32_t>(text.size());
  // UTF-16 never has more units than UTF-8 has bytes.
  std::vector<UChar> u16(static_cast<size_t>(len));
  int32_t n16 = 0;
  u_strFromUTF8(u16.data(), len, &n16, text.data(), len, &err);
  if (U_FAILURE(err)) return false;
  if (unorm2_quickCheck(nfc, u16.data(), n16, &err) == UNORM_YES && U_SUCCESS(err)) return false;
  err = U_ZERO_ERROR;
  // NFC of valid text is at most 3x longer (UAX #15's bound for NFC).
  std::vector<UChar> norm(static_cast<size_t>(n16) * 3 + 1);
  const int32_t nn = unorm2_normalize(nfc, u16.data(), n16, norm.data(), static_cast<int32_t>(norm.size()), &err);
  if (U_FAILURE(err)) return false;
  int32_t n8 = 0;
  u_strToUTF8(nullptr, 0, &n8, norm.data(), nn, &err);
  if (err != U_BUFFER_OVERFLOW_ERROR && U_FAILURE(err)) return false;
  err = U_ZERO_ERROR;
  std::string result(static_cast<size_t>(n8), '\0');
  u_strToUTF8(result.data(), n8, nullptr, norm.data(), nn, &err);
  if (U_FAILURE(err) && err != U_STRING_NOT_TERMINATED_WARNING) return false;
  if (result == text) return false;
  *out = std::move(result);
  return true;
}

}  // namespace strata
