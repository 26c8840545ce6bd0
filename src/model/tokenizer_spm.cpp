// SentencePiece BPE ("llama" vocabularies), the way llama.cpp runs it:
// spaces become ▁, a ▁ is prefixed to the text (add_space_prefix), then
// adjacent symbols merge, highest-scoring resulting piece first (leftmost on
// ties), and pieces not in the vocabulary fall back to <0xNN> byte tokens.
#include <cstdio>
#include <queue>

#include "model/tokenizer_impl.h"
#include "model/tokenizer_unicode.h"

namespace strata {

namespace {

constexpr std::string_view kSpaceMarker = "\xE2\x96\x81";  // ▁ U+2581

class SpmTokenizer final : public VocabTokenizer {
 public:
  Status Init(TokenizerVocab& v) {
    // llama.cpp's defaults for SentencePiece: BOS yes, space prefix yes.
    add_space_prefix_ = v.add_space_prefix != 0;
    STRATA_RETURN_IF_ERROR(InitVocab(v, /*default_add_bos=*/true));
    scores_ = std::move(v.scores);
    if (scores_.empty()) scores_.assign(tokens_.size(), 0.0f);

    byte_ids_.fill(-1);
    token_bytes_.resize(tokens_.size());
    for (size_t i = 0; i < tokens_.size(); ++i) {
      const std::string& s = tokens_[i];
      const auto t = static_cast<TokenType>(token_type_[i]);
      unsigned byte = 0;
      if (t == TokenType::kByte && s.size() == 6 && std::sscanf(s.c_str(), "<0x%2X>", &byte) == 1) {
        token_bytes_[i] = std::string(1, static_cast<char>(byte));
        if (byte_ids_[byte] < 0) byte_ids_[byte] = static_cast<TokenId>(i);
        continue;
      }
      if (t == TokenType::kControl || t == TokenType::kUnknown) {
        token_bytes_[i] = s;
        continue;
      }
      std::string& out = token_bytes_[i];
      for (size_t p = 0; p < s.size();) {
        if (s.compare(p, kSpaceMarker.size(), kSpaceMarker) == 0) {
          out.push_back(' ');
          p += kSpaceMarker.size();
        } else {
          out.push_back(s[p++]);
        }
      }
    }
    return Status::Ok();
  }

  std::string_view model_name() const override { return "llama"; }
  bool strips_leading_space() const override { return add_space_prefix_; }

 protected:
  void EncodeText(std::string_view text, bool after_special, std::vector<TokenId>* out) const override;

 private:
  // Only ordinary pieces are merge results; control, byte and unknown
  // entries are never formed from text (SentencePiece does the same).
  bool Mergeable(TokenId id) const {
    const TokenType t = type(id);
    return t == TokenType::kNormal || t == TokenType::kUserDefined || t == TokenType::kUndefined;
  }

  std::vector<float> scores_;
  bool add_space_prefix_ = true;
  std::array<TokenId, 256> byte_ids_{};
};

struct Symbol {
  int prev;
  int next;
  uint32_t start;
  uint32_t len;  // 0 once merged into its left neighbour
};

struct Bigram {
  float score;
  int left;
  int right;
  uint32_t len;  // combined length when queued; a mismatch marks it stale
};

struct BigramOrder {
  bool operator()(const Bigram& a, const Bigram& b) const {
    if (a.score != b.score) return a.score < b.score;
    return a.left > b.left;
  }
};

void SpmTokenizer::EncodeText(std::string_view text, bool after_special,
                              std::vector<TokenId>* out) const {
  std::string s;
  s.reserve(text.size() + text.size() / 4 + 3);
  if (add_space_prefix_ && after_special) s += kSpaceMarker;
  for (char c : text) {
    if (c == ' ') {
      s += kSpaceMarker;
    } else {
      s.push_back(c);
    }
  }
  if (s.empty()) return;

  std::vector<Symbol> sym;
  sym.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    int len = Utf8CharLength(s, i);
    if (len <= 0) len = 1;  // input was validated; stay safe regardless
    len = static_cast<int>(std::min<size_t>(static_cast<size_t>(len), s.size() - i));
    const int idx = static_cast<int>(sym.size());
    sym.push_back({idx - 1, idx + 1, static_cast<uint32_t>(i), static_cast<uint32_t>(len)});
    i += static_cast<size_t>(len);
  }
  sym.back().next = -1;

  std::priority_queue<Bigram, std::vector<Bigram>, BigramOrder> queue;
  const auto try_add = [&](int left, int right) {
    if (left < 0 || right < 0) return;
    const uint32_t len = sym[left].len + sym[right].len;
    const TokenId id = Find(std::string_view(s).substr(sym[left].start, len));
    if (id < 0 || !Mergeable(id)) return;
    queue.push({scores_[static_cast<size_t>(id)], left, right, len});
  };
  for (size_t i = 1; i < sym.size(); ++i) try_add(static_cast<int>(i) - 1, static_cast<int>(i));

  while (!queue.empty()) {
    const Bigram b = queue.top();
    queue.pop();
    Symbol& l = sym[b.left];
    Symbol& r = sym[b.right];
    if (l.len == 0 || r.len == 0 || l.len + r.len != b.len || l.next != b.right) continue;
    l.len += r.len;
    r.len = 0;
    l.next = r.next;
    if (r.next >= 0) sym[r.next].prev = b.left;
    try_add(l.prev, b.left);
    try_add(b.left, l.next);
  }

  for (int i = 0; i >= 0; i = sym[i].next) {
    const std::string_view piece = std::string_view(s).substr(sym[i].start, sym[i].len);
    const TokenId id = Find(piece);
    if (id >= 0 && Mergeable(id)) {
      out->push_back(id);
      continue;
    }
    // Not a vocabulary piece: its bytes, or <unk> where a byte token is missing.
    for (char c : piece) {
      const TokenId b = byte_ids_[static_cast<uint8_t>(c)];
      if (b >= 0) {
        out->push_back(b);
      } else if (unk_ >= 0) {
        out->push_back(unk_);
      }
    }
  }
}

}  // namespace

Expected<std::unique_ptr<Tokenizer>> MakeSpmTokenizer(TokenizerVocab vocab) {
  auto tok = std::make_unique<SpmTokenizer>();
  STRATA_RETURN_IF_ERROR(tok->Init(vocab));
  return std::unique_ptr<Tokenizer>(std::move(tok));
}

}  // namespace strata
