// Byte-level BPE ("gpt2" vocabularies): the regex pre-tokenizer splits the
// text into pieces, each piece's bytes start as one symbol each, and
// adjacent symbols merge by merge rank (lowest first, leftmost on ties).
//
// Vocabulary entries are stored in GPT-2's printable byte alphabet
// (bytes_to_unicode: ' ' is 'Ġ', '\n' is 'Ċ'); they are decoded to raw bytes
// once, and all matching works on raw bytes and ids.
#include <queue>

#include "model/tokenizer_impl.h"
#include "model/tokenizer_pretokenizer.h"
#include "model/tokenizer_unicode.h"

namespace strata {

namespace {

// GPT-2's bytes_to_unicode(): printable Latin-1 bytes map to themselves, the
// other 68 bytes to U+0100.. in byte order.
struct ByteAlphabet {
  std::array<char32_t, 256> byte_to_cp{};
  std::array<int16_t, 324> cp_to_byte{};  // U+0000..U+0143; -1 = not in the alphabet

  ByteAlphabet() {
    cp_to_byte.fill(-1);
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      byte_to_cp[b] = printable ? static_cast<char32_t>(b) : next++;
      cp_to_byte[byte_to_cp[b]] = static_cast<int16_t>(b);
    }
  }
};

const ByteAlphabet& Alphabet() {
  static const ByteAlphabet alphabet;
  return alphabet;
}

// Raw bytes of a byte-level vocabulary entry; false if it uses a character
// outside the alphabet (then it is not a byte-level piece).
bool DecodeByteLevel(std::string_view s, std::string* out) {
  const ByteAlphabet& a = Alphabet();
  out->clear();
  for (size_t i = 0; i < s.size();) {
    const int len = Utf8CharLength(s, i);
    if (len <= 0) return false;
    const char32_t cp = DecodeUtf8(s, i, len);
    if (cp >= a.cp_to_byte.size() || a.cp_to_byte[cp] < 0) return false;
    out->push_back(static_cast<char>(a.cp_to_byte[cp]));
    i += static_cast<size_t>(len);
  }
  return true;
}

class BpeTokenizer final : public VocabTokenizer {
 public:
  Status Init(TokenizerVocab& v) {
    STRATA_ASSIGN_OR_RETURN(pre_, PreTokenizerFromName(v.pre));
    // llama.cpp: Llama 3 vocabularies add BOS unless told otherwise.
    const bool default_add_bos = pre_.kind == PreTokenizerKind::kLlama3 && pre_.ignore_merges;
    std::vector<std::string> merges = std::move(v.merges);
    STRATA_RETURN_IF_ERROR(InitVocab(v, default_add_bos));

    token_bytes_.resize(tokens_.size());
    std::string raw;
    for (size_t i = 0; i < tokens_.size(); ++i) {
      const auto t = static_cast<TokenType>(token_type_[i]);
      const bool special = t == TokenType::kControl || t == TokenType::kUserDefined || t == TokenType::kUnknown;
      if (!special && DecodeByteLevel(tokens_[i], &raw)) {
        token_bytes_[i] = raw;
      } else {
        token_bytes_[i] = tokens_[i];  // specials are stored as plain text
      }
    }
    bytes_to_id_.Reserve(tokens_.size());
    for (size_t i = 0; i < tokens_.size(); ++i) {
      const auto t = static_cast<TokenType>(token_type_[i]);
      if (t == TokenType::kNormal || t == TokenType::kUndefined || t == TokenType::kByte) {
        bytes_to_id_.Insert(token_bytes_[i], static_cast<TokenId>(i));
      }
    }
    for (int b = 0; b < 256; ++b) {
      const char c = static_cast<char>(b);
      byte_ids_[b] = bytes_to_id_.Find(std::string_view(&c, 1));
    }

    merges_.Reserve(merges.size());
    std::string joined;
    for (size_t rank = 0; rank < merges.size(); ++rank) {
      const std::string& m = merges[rank];
      // The separator is the first space after the first character (a piece
      // never contains a raw space: it is 'Ġ').
      const size_t sp = m.find(' ', 1);
      if (sp == std::string::npos) continue;
      const std::string_view left(m.data(), sp);
      const std::string_view right(m.data() + sp + 1, m.size() - sp - 1);
      joined.assign(left);
      joined.append(right);
      const TokenId l = Find(left), r = Find(right), result = Find(joined);
      // A merge whose parts are not all vocabulary entries can never apply
      // to ids; the HF tokenizers we match have none.
      if (l < 0 || r < 0 || result < 0) continue;
      merges_.Insert(l, r, {static_cast<int32_t>(rank), result});
    }
    return Status::Ok();
  }

  std::string_view model_name() const override { return "gpt2"; }

 protected:
  void EncodeText(std::string_view text, bool after_special, std::vector<TokenId>* out) const override;

 private:
  void EncodeWord(std::string_view word, std::vector<TokenId>* out) const;

  PreTokenizerSpec pre_;
  PieceTable bytes_to_id_;  // views into token_bytes_
  std::array<TokenId, 256> byte_ids_{};
  MergeTable merges_;
};

void BpeTokenizer::EncodeText(std::string_view text, bool /*after_special*/,
                              std::vector<TokenId>* out) const {
  std::string normalized;
  if (pre_.nfc && NormalizeNfc(text, &normalized)) text = normalized;
  std::vector<std::string_view> pieces;
  PreTokenize(pre_.kind, text, &pieces);
  for (std::string_view piece : pieces) {
    if (pre_.ignore_merges) {
      const TokenId whole = bytes_to_id_.Find(piece);
      if (whole >= 0) {
        out->push_back(whole);
        continue;
      }
    }
    EncodeWord(piece, out);
  }
}

struct WordSymbol {
  TokenId id;
  int prev;
  int next;
};

struct Candidate {
  int32_t rank;
  int left;
  int right;
  TokenId left_id;
  TokenId right_id;
  TokenId result;
};

struct CandidateOrder {
  bool operator()(const Candidate& a, const Candidate& b) const {
    if (a.rank != b.rank) return a.rank > b.rank;
    return a.left > b.left;
  }
};

void BpeTokenizer::EncodeWord(std::string_view word, std::vector<TokenId>* out) const {
  if (word.empty()) return;
  std::vector<WordSymbol> sym(word.size());
  for (size_t i = 0; i < word.size(); ++i) {
    sym[i] = {byte_ids_[static_cast<uint8_t>(word[i])], static_cast<int>(i) - 1, static_cast<int>(i) + 1};
  }
  sym.back().next = -1;

  std::priority_queue<Candidate, std::vector<Candidate>, CandidateOrder> queue;
  const auto try_add = [&](int left, int right) {
    if (left < 0 || right < 0) return;
    const TokenId l = sym[left].id, r = sym[right].id;
    if (l < 0 || r < 0) return;
    const MergeTable::Merge* m = merges_.Find(l, r);
    if (m == nullptr) return;
    queue.push({m->rank, left, right, l, r, m->result});
  };
  for (size_t i = 1; i < sym.size(); ++i) try_add(static_cast<int>(i) - 1, static_cast<int>(i));

  while (!queue.empty()) {
    const Candidate c = queue.top();
    queue.pop();
    WordSymbol& l = sym[c.left];
    // Stale if either side merged since: a symbol's id only ever grows
    // longer, so an equal id means the symbol is unchanged.
    if (l.id != c.left_id || l.next != c.right || sym[c.right].id != c.right_id) continue;
    const WordSymbol r = sym[c.right];
    l.id = c.result;
    l.next = r.next;
    sym[c.right].id = -2;  // dead
    if (r.next >= 0) sym[r.next].prev = c.left;
    try_add(l.prev, c.left);
    try_add(c.left, l.next);
  }

  for (int i = 0; i >= 0; i = sym[i].next) {
    if (sym[i].id >= 0) {
      out->push_back(sym[i].id);
    } else if (unk_ >= 0) {
      out->push_back(unk_);
    }
  }
}

}  // namespace

Expected<std::unique_ptr<Tokenizer>> MakeBpeTokenizer(TokenizerVocab vocab) {
  auto tok = std::make_unique<BpeTokenizer>();
  STRATA_RETURN_IF_ERROR(tok->Init(vocab));
  return std::unique_ptr<Tokenizer>(std::move(tok));
}

}  // namespace strata
