#include "model/tokenizer_pretokenizer.h"

#include <string>

#include "model/tokenizer_unicode.h"

namespace strata {

Expected<PreTokenizerSpec> PreTokenizerFromName(std::string_view name) {
  // Names as llama.cpp's converter writes them (convert_hf_to_gguf.py).
  if (name.empty() || name == "default" || name == "gpt-2" || name == "gpt2" || name == "mpt" ||
      name == "olmo" || name == "jais" || name == "trillion") {
    return PreTokenizerSpec{PreTokenizerKind::kGpt2, false};
  }
  if (name == "llama-bpe" || name == "llama3" || name == "llama-v3") {
    return PreTokenizerSpec{PreTokenizerKind::kLlama3, true};
  }
  if (name == "smaug-bpe" || name == "dbrx" || name == "falcon3" || name == "pixtral") {
    return PreTokenizerSpec{PreTokenizerKind::kLlama3, false};
  }
  if (name == "qwen2" || name == "deepseek-r1-qwen") {
    return PreTokenizerSpec{PreTokenizerKind::kQwen2, false, true};
  }
  if (name == "stablelm2" || name == "megrez" || name == "hunyuan") {
    return PreTokenizerSpec{PreTokenizerKind::kQwen2, false};
  }
  if (name == "smollm" || name == "starcoder" || name == "refact" || name == "command-r" ||
      name == "codeshell" || name == "exaone" || name == "minerva-7b") {
    return PreTokenizerSpec{PreTokenizerKind::kSmolLm, false};
  }
  return Status::Unsupported("tokenizer.ggml.pre '" + std::string(name) +
                             "' is not a pre-tokenizer Strata knows (known: gpt-2, llama-bpe, qwen2, "
                             "smollm and their aliases)");
}

namespace {

// The text decoded once into code points, so the matchers can look ahead.
class CodepointText {
 public:
  explicit CodepointText(std::string_view text) {
    cps_.reserve(text.size());
    offsets_.reserve(text.size() + 1);
    size_t i = 0;
    while (i < text.size()) {
      int len = Utf8CharLength(text, i);
      if (len <= 0) len = 1;  // unreachable for valid input; never loop forever
      cps_.push_back(DecodeUtf8(text, i, len > 0 ? len : 1));
      flags_.push_back(CodepointFlags(cps_.back()));
      offsets_.push_back(i);
      i += static_cast<size_t>(len);
    }
    offsets_.push_back(text.size());
  }
  size_t size() const { return cps_.size(); }
  char32_t cp(size_t i) const { return i < cps_.size() ? cps_[i] : 0; }
  bool letter(size_t i) const { return i < cps_.size() && (flags_[i] & kLetter); }
  bool number(size_t i) const { return i < cps_.size() && (flags_[i] & kNumber); }
  bool space(size_t i) const { return i < cps_.size() && (flags_[i] & kWhitespace); }
  // [^\s\p{L}\p{N}]
  bool other(size_t i) const { return i < cps_.size() && flags_[i] == 0; }
  bool newline(size_t i) const { return cp(i) == '\r' || cp(i) == '\n'; }
  size_t offset(size_t i) const { return offsets_[i]; }

 private:
  std::vector<char32_t> cps_;
  std::vector<uint8_t> flags_;
  std::vector<size_t> offsets_;
};

char32_t AsciiLower(char32_t c) { return (c >= 'A' && c <= 'Z') ? c + 32 : c; }

// Length of a contraction ('s 't 're 've 'm 'll 'd) at i, or 0.
size_t Contraction(const CodepointText& t, size_t i, bool ignore_case) {
  if (t.cp(i) != '\'' || i + 1 >= t.size()) return 0;
  const auto norm = [&](char32_t c) { return ignore_case ? AsciiLower(c) : c; };
  const char32_t a = norm(t.cp(i + 1));
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
  if (i + 2 >= t.size()) return 0;
  const char32_t b = norm(t.cp(i + 2));
  if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
  return 0;
}

// \s+(?!\S)|\s+ at a whitespace code point i.
size_t TrailingSpaceRun(const CodepointText& t, size_t i, size_t end) {
  size_t k = i;
  while (k < end && t.space(k)) ++k;
  if (k == end) return k;       // the run reaches the end: no \S follows
  if (k - i >= 2) return k - 1;  // leave the last space to prefix the next word
  return i + 1;
}

// End of the GPT-2 regex match starting at i (matching stops at `end`).
size_t MatchGpt2(const CodepointText& t, size_t i, size_t end) {
  if (size_t n = Contraction(t, i, /*ignore_case=*/false); n && i + n <= end) return i + n;
  const size_t j = (t.cp(i) == ' ' && i + 1 < end) ? i + 1 : i;
  size_t k = j;
  if (t.letter(j)) {
    while (k < end && t.letter(k)) ++k;
    return k;
  }
  if (t.number(j)) {
    while (k < end && t.number(k)) ++k;
    return k;
  }
  if (t.other(j)) {
    while (k < end && t.other(k)) ++k;
    return k;
  }
  if (t.space(i)) return TrailingSpaceRun(t, i, end);
  return i + 1;  // unreachable: every code point is a letter, number, space or other
}

size_t MatchLlama3(const CodepointText& t, size_t i, size_t end, size_t max_digits) {
  if (size_t n = Contraction(t, i, /*ignore_case=*/true); n) return i + n;
  // [^\r\n\p{L}\p{N}]?\p{L}+
  if (t.letter(i) || (!t.newline(i) && !t.number(i) && i + 1 < end && t.letter(i + 1))) {
    size_t k = i + 1;
    while (k < end && t.letter(k)) ++k;
    return k;
  }
  if (t.number(i)) {
    size_t k = i + 1;
    while (k < end && k - i < max_digits && t.number(k)) ++k;
    return k;
  }
  // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
  const size_t j = (t.cp(i) == ' ' && i + 1 < end) ? i + 1 : i;
  if (t.other(j)) {
    size_t k = j;
    while (k < end && t.other(k)) ++k;
    while (k < end && t.newline(k)) ++k;
    return k;
  }
  if (t.space(i)) {
    // \s*[\r\n]+ : the whitespace run up to and including its last newline.
    size_t k = i;
    while (k < end && t.space(k)) ++k;
    for (size_t p = k; p > i; --p) {
      if (t.newline(p - 1)) return p;
    }
    return TrailingSpaceRun(t, i, end);
  }
  return i + 1;
}

void SplitRange(PreTokenizerKind kind, const CodepointText& t, size_t begin, size_t end,
                std::string_view text, std::vector<std::string_view>* pieces) {
  size_t i = begin;
  while (i < end) {
    size_t e;
    switch (kind) {
      case PreTokenizerKind::kLlama3: e = MatchLlama3(t, i, end, 3); break;
      case PreTokenizerKind::kQwen2: e = MatchLlama3(t, i, end, 1); break;
      default: e = MatchGpt2(t, i, end); break;
    }
    if (e <= i || e > end) e = i + 1;  // defensive: always make progress
    pieces->push_back(text.substr(t.offset(i), t.offset(e) - t.offset(i)));
    i = e;
  }
}

}  // namespace

void PreTokenize(PreTokenizerKind kind, std::string_view text, std::vector<std::string_view>* pieces) {
  if (text.empty()) return;
  const CodepointText t(text);
  if (kind != PreTokenizerKind::kSmolLm) {
    SplitRange(kind, t, 0, t.size(), text, pieces);
    return;
  }
  // First regex \p{N}: each number code point alone, the text between split
  // by the GPT-2 regex.
  size_t start = 0;
  for (size_t i = 0; i < t.size(); ++i) {
    if (!t.number(i)) continue;
    SplitRange(PreTokenizerKind::kGpt2, t, start, i, text, pieces);
    pieces->push_back(text.substr(t.offset(i), t.offset(i + 1) - t.offset(i)));
    start = i + 1;
  }
  SplitRange(PreTokenizerKind::kGpt2, t, start, t.size(), text, pieces);
}

}  // namespace strata
