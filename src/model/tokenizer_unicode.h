// Code point classes and UTF-8 helpers for the tokenizers (internal).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace strata {

namespace unicode_tables {
// A run of code points sharing one set of CodepointFlag bits, from `first` up
// to the next run's first code point.
struct CodepointRun {
  uint32_t first;
  uint8_t flags;
};
extern const CodepointRun kCodepointRuns[];
extern const size_t kCodepointRunCount;
}  // namespace unicode_tables

enum CodepointFlag : uint8_t {
  kLetter = 1,      // \p{L}
  kNumber = 2,      // \p{N}
  kWhitespace = 4,  // JavaScript's \s (what the reference regexes use)
};

uint8_t CodepointFlags(char32_t cp);

// Length of the valid UTF-8 character starting at s[i]: 1..4; 0 if the bytes
// there can never start a valid character; -1 if they are a valid but
// truncated prefix (more bytes could complete them).
int Utf8CharLength(std::string_view s, size_t i);

// Decodes the character at s[i]. REQUIRES: Utf8CharLength(s, i) == len > 0.
char32_t DecodeUtf8(std::string_view s, size_t i, int len);

void AppendUtf8(char32_t cp, std::string* out);

// Unicode Normalization Form C of valid UTF-8 `text` (ICU). Returns false,
// leaving *out alone, when NFC would not change the text (the common case,
// decided without converting pure ASCII at all).
bool NormalizeNfc(std::string_view text, std::string* out);

}  // namespace strata
