// Shared machinery of the vocabulary-based tokenizers (internal to model/).
#pragma once

#include <array>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "model/tokenizer.h"

namespace strata {

// Open-addressing string -> id table over strings owned elsewhere. Building
// a 150K-entry vocabulary does ~1M lookups; std::unordered_map's node chasing
// made that most of the load time.
class PieceTable {
 public:
  void Reserve(size_t n);
  // Keeps the first id inserted for a key. REQUIRES: key outlives the table.
  void Insert(std::string_view key, TokenId id);
  TokenId Find(std::string_view key) const;  // -1 if absent

 private:
  struct Slot {
    uint64_t hash = 0;
    std::string_view key;
    TokenId id = -1;  // -1: empty
  };
  std::vector<Slot> slots_;
  size_t mask_ = 0;
  size_t size_ = 0;
};

// Open-addressing (left id, right id) -> (rank, result id) table for merges.
class MergeTable {
 public:
  struct Merge {
    int32_t rank = -1;  // -1: empty slot
    TokenId result = -1;
  };
  void Reserve(size_t n);
  // Keeps the first (lowest-rank) merge of a pair.
  void Insert(TokenId left, TokenId right, Merge m);
  const Merge* Find(TokenId left, TokenId right) const;

 private:
  struct Slot {
    uint64_t key = 0;
    Merge merge;
  };
  std::vector<Slot> slots_;
  size_t mask_ = 0;
};

// Holds the vocabulary, splits special-token text out of the input and
// leaves the text between specials to the model (SentencePiece or BPE).
class VocabTokenizer : public Tokenizer {
 public:
  Expected<std::vector<TokenId>> Encode(std::string_view text,
                                        const EncodeOptions& options) const override;
  std::string TokenBytes(TokenId id) const override;
  std::string Decode(std::span<const TokenId> ids) const override;
  int32_t vocab_size() const override { return static_cast<int32_t>(tokens_.size()); }
  std::string_view Piece(TokenId id) const override;

 protected:
  // Validates ids and sizes and takes the vocabulary. Subclasses call it
  // first, then fill token_bytes_.
  Status InitVocab(TokenizerVocab& vocab, bool default_add_bos);

  // Encodes text holding no special tokens. `after_special` is true for the
  // first fragment and for fragments that follow a special token.
  virtual void EncodeText(std::string_view text, bool after_special,
                          std::vector<TokenId>* out) const = 0;

  TokenId Find(std::string_view piece) const { return piece_to_id_.Find(piece); }
  TokenType type(TokenId id) const { return static_cast<TokenType>(token_type_[static_cast<size_t>(id)]); }

  std::vector<std::string> tokens_;
  std::vector<std::string> token_bytes_;  // what TokenBytes returns, per id
  PieceTable piece_to_id_;  // views into tokens_
  TokenId unk_ = -1;
  bool add_eos_ = false;

 private:
  struct Special {
    TokenId id;
    bool always;  // user-defined: split out even without parse_special
  };
  // Longest special token starting at text[pos]; {-1, 0} if none.
  std::pair<TokenId, size_t> MatchSpecial(std::string_view text, size_t pos, bool parse_special) const;

  // Special tokens bucketed by first byte, longest first.
  std::array<std::vector<Special>, 256> specials_by_byte_;
};

Expected<std::unique_ptr<Tokenizer>> MakeSpmTokenizer(TokenizerVocab vocab);
Expected<std::unique_ptr<Tokenizer>> MakeBpeTokenizer(TokenizerVocab vocab);

}  // namespace strata
