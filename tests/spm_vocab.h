// A small SentencePiece vocabulary for the tokenizer tests and fuzz target:
// <unk> <s> </s>, the 256 byte pieces, then `pieces` with descending scores
// (merged pieces score higher the earlier they come), then one user-defined
// piece.
#pragma once

#include <cstdint>
#include <cstdio>
#include <initializer_list>
#include <string>
#include <utility>

#include "model/tokenizer.h"

namespace strata::testing {

inline TokenizerVocab SpmVocabWith(std::initializer_list<const char*> pieces, const char* user_defined) {
  TokenizerVocab v;
  v.model = "llama";
  auto add = [&](std::string piece, float score, TokenType type) {
    v.tokens.push_back(std::move(piece));
    v.scores.push_back(score);
    v.types.push_back(static_cast<uint8_t>(type));
  };
  add("<unk>", 0, TokenType::kUnknown);
  add("<s>", 0, TokenType::kControl);
  add("</s>", 0, TokenType::kControl);
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof(buf), "<0x%02X>", b);
    add(buf, 0, TokenType::kByte);
  }
  float score = -1;
  for (const char* p : pieces) add(p, score--, TokenType::kNormal);
  add(user_defined, 0, TokenType::kUserDefined);
  v.unk = 0;
  v.bos = 1;
  v.eos = 2;
  return v;
}

}  // namespace strata::testing
