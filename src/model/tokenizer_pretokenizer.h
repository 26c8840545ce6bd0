// Regex pre-tokenizers of byte-level BPE models, written out by hand.
//
// Each family is the split regex of the reference tokenizer.json, matched
// with leftmost-first alternation like JavaScript / Oniguruma do; pieces are
// the matches, and text between matches (never produced by these regexes,
// which cover every character) would be a piece too.
//
//   kGpt2:   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//   kLlama3: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
//            ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//   kQwen2:  kLlama3 with \p{N} (one digit per piece)
//   kSmolLm: every \p{N} is its own piece, the rest split by kGpt2 (llama.cpp's
//            STARCODER/SMOLLM/COMMAND_R/... family)
#pragma once

#include <string_view>
#include <vector>

#include "base/status.h"

namespace strata {

enum class PreTokenizerKind { kGpt2, kLlama3, kQwen2, kSmolLm };

struct PreTokenizerSpec {
  PreTokenizerKind kind = PreTokenizerKind::kGpt2;
  // Llama 3: a piece that is itself a vocabulary entry is emitted whole,
  // without running merges (HF BPE "ignore_merges").
  bool ignore_merges = false;
  // Input is NFC-normalized before splitting (Qwen2/3's tokenizer.json has
  // an NFC normalizer; added tokens are matched before it, as in HF).
  bool nfc = false;
};

// Maps tokenizer.ggml.pre to a family; kUnsupported names an unknown one.
Expected<PreTokenizerSpec> PreTokenizerFromName(std::string_view name);

// Splits valid UTF-8 into pieces (views into text, in order, covering it).
// REQUIRES: text is valid UTF-8.
void PreTokenize(PreTokenizerKind kind, std::string_view text, std::vector<std::string_view>* pieces);

}  // namespace strata
