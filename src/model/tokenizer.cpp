#include "model/tokenizer.h"

#include <algorithm>
#include <cstdio>
#include <xxhash.h>

#include "model/gguf.h"
#include "model/tokenizer_impl.h"
#include "model/tokenizer_unicode.h"

namespace strata {

int64_t FindInvalidUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    // ASCII runs dominate; step over them 8 bytes at a time.
    while (i + 8 <= s.size()) {
      uint64_t w;
      __builtin_memcpy(&w, s.data() + i, 8);
      if (w & 0x8080808080808080ULL) break;
      i += 8;
    }
    if (i >= s.size()) break;
    const int len = Utf8CharLength(s, i);
    if (len <= 0) return static_cast<int64_t>(i);
    i += static_cast<size_t>(len);
  }
  return -1;
}

bool Tokenizer::IsEndOfGeneration(TokenId id) const {
  return std::find(eog_ids_.begin(), eog_ids_.end(), id) != eog_ids_.end();
}

bool Tokenizer::IsControl(TokenId id) const {
  return id >= 0 && static_cast<size_t>(id) < token_type_.size() &&
         token_type_[static_cast<size_t>(id)] == static_cast<uint8_t>(TokenType::kControl);
}

Expected<std::unique_ptr<Tokenizer>> Tokenizer::FromVocab(TokenizerVocab vocab) {
  if (vocab.model == "llama") return MakeSpmTokenizer(std::move(vocab));
  if (vocab.model == "gpt2") return MakeBpeTokenizer(std::move(vocab));
  return Status::Unsupported("tokenizer model '" + vocab.model +
                             "' is not supported (supported: llama, gpt2)");
}

namespace {

// Reads an optional token id key; absent or out of range (llama.cpp writes
// 0xFFFFFFFF for "none") means -1.
TokenId OptionalId(const GgufFile& gguf, std::string_view key, size_t n_tokens) {
  if (!gguf.Has(key)) return -1;
  auto v = gguf.GetUint(key);
  if (!v.ok() || *v >= n_tokens) return -1;
  return static_cast<TokenId>(*v);
}

Expected<int> OptionalBool(const GgufFile& gguf, std::string_view key) {
  if (!gguf.Has(key)) return -1;
  STRATA_ASSIGN_OR_RETURN(bool b, gguf.GetBool(key));
  return b ? 1 : 0;
}

Expected<std::vector<std::string>> StringArray(const GgufFile& gguf, std::string_view key) {
  const GgufArray* a = gguf.GetArray(key);
  if (a == nullptr) return Status::NotFound("GGUF has no array '" + std::string(key) + "'");
  if (a->elem_type != GgufType::kString) {
    return Status::InvalidArgument("'" + std::string(key) + "' must be an array of strings");
  }
  return std::vector<std::string>(a->strings.begin(), a->strings.end());
}

}  // namespace

Expected<std::unique_ptr<Tokenizer>> Tokenizer::FromGguf(const GgufFile& gguf) {
  TokenizerVocab v;
  STRATA_ASSIGN_OR_RETURN(v.model, gguf.GetString("tokenizer.ggml.model"));
  STRATA_ASSIGN_OR_RETURN(v.tokens, StringArray(gguf, "tokenizer.ggml.tokens"));
  const size_t n = v.tokens.size();
  if (gguf.Has("tokenizer.ggml.pre")) {
    STRATA_ASSIGN_OR_RETURN(v.pre, gguf.GetString("tokenizer.ggml.pre"));
  }
  if (gguf.Has("tokenizer.ggml.scores")) {
    STRATA_ASSIGN_OR_RETURN(v.scores, gguf.GetFloatArray("tokenizer.ggml.scores"));
  }
  if (gguf.Has("tokenizer.ggml.token_type")) {
    STRATA_ASSIGN_OR_RETURN(std::vector<int64_t> types, gguf.GetIntArray("tokenizer.ggml.token_type"));
    v.types.reserve(types.size());
    for (int64_t t : types) {
      v.types.push_back(t >= 0 && t <= 6 ? static_cast<uint8_t>(t) : 0);
    }
  }
  if (gguf.Has("tokenizer.ggml.merges")) {
    STRATA_ASSIGN_OR_RETURN(v.merges, StringArray(gguf, "tokenizer.ggml.merges"));
  }
  v.bos = OptionalId(gguf, "tokenizer.ggml.bos_token_id", n);
  v.eos = OptionalId(gguf, "tokenizer.ggml.eos_token_id", n);
  v.unk = OptionalId(gguf, "tokenizer.ggml.unknown_token_id", n);
  v.pad = OptionalId(gguf, "tokenizer.ggml.padding_token_id", n);
  v.eot = OptionalId(gguf, "tokenizer.ggml.eot_token_id", n);
  v.eom = OptionalId(gguf, "tokenizer.ggml.eom_token_id", n);
  STRATA_ASSIGN_OR_RETURN(v.add_bos, OptionalBool(gguf, "tokenizer.ggml.add_bos_token"));
  STRATA_ASSIGN_OR_RETURN(v.add_eos, OptionalBool(gguf, "tokenizer.ggml.add_eos_token"));
  STRATA_ASSIGN_OR_RETURN(v.add_space_prefix, OptionalBool(gguf, "tokenizer.ggml.add_space_prefix"));
  auto tok = FromVocab(std::move(v));
  if (!tok.ok()) return tok.status().WithContext("tokenizer in '" + gguf.path() + "'");
  return tok;
}

// ---------------------------------------------------------------------------
// Hash tables

namespace {
size_t TableSize(size_t n) {
  size_t cap = 16;
  while (cap < n * 2) cap <<= 1;  // load factor <= 1/2: short probe runs
  return cap;
}
}  // namespace

void PieceTable::Reserve(size_t n) {
  slots_.assign(TableSize(n), Slot{});
  mask_ = slots_.size() - 1;
  size_ = 0;
}

void PieceTable::Insert(std::string_view key, TokenId id) {
  if ((size_ + 1) * 2 > slots_.size()) {
    std::vector<Slot> old = std::move(slots_);
    Reserve(std::max<size_t>(size_ + 1, old.size()));
    for (const Slot& s : old) {
      if (s.id >= 0) Insert(s.key, s.id);
    }
  }
  const uint64_t h = XXH3_64bits(key.data(), key.size());
  for (size_t i = h & mask_;; i = (i + 1) & mask_) {
    Slot& s = slots_[i];
    if (s.id < 0) {
      s = {h, key, id};
      ++size_;
      return;
    }
    if (s.hash == h && s.key == key) return;
  }
}

TokenId PieceTable::Find(std::string_view key) const {
  if (slots_.empty()) return -1;
  const uint64_t h = XXH3_64bits(key.data(), key.size());
  for (size_t i = h & mask_;; i = (i + 1) & mask_) {
    const Slot& s = slots_[i];
    if (s.id < 0) return -1;
    if (s.hash == h && s.key == key) return s.id;
  }
}

namespace {
uint64_t PairKey(TokenId l, TokenId r) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(l)) << 32) | static_cast<uint32_t>(r);
}
size_t PairHash(uint64_t key) {
  // Both ids must reach the low bits the mask keeps.
  key ^= key >> 31;
  key *= 0x9E3779B97F4A7C15ULL;
  return static_cast<size_t>(key ^ (key >> 32));
}
}  // namespace

void MergeTable::Reserve(size_t n) {
  slots_.assign(TableSize(n), Slot{});
  mask_ = slots_.size() - 1;
}

void MergeTable::Insert(TokenId left, TokenId right, Merge m) {
  // Sized by Reserve for every merge of the vocabulary: never grows.
  const uint64_t key = PairKey(left, right);
  for (size_t i = PairHash(key) & mask_;; i = (i + 1) & mask_) {
    Slot& s = slots_[i];
    if (s.merge.rank < 0) {
      s = {key, m};
      return;
    }
    if (s.key == key) return;
  }
}

const MergeTable::Merge* MergeTable::Find(TokenId left, TokenId right) const {
  if (slots_.empty()) return nullptr;
  const uint64_t key = PairKey(left, right);
  for (size_t i = PairHash(key) & mask_;; i = (i + 1) & mask_) {
    const Slot& s = slots_[i];
    if (s.merge.rank < 0) return nullptr;
    if (s.key == key) return &s.merge;
  }
}

// ---------------------------------------------------------------------------
// VocabTokenizer

Status VocabTokenizer::InitVocab(TokenizerVocab& v, bool default_add_bos) {
  const size_t n = v.tokens.size();
  if (n == 0) return Status::InvalidArgument("tokenizer vocabulary is empty");
  if (n > static_cast<size_t>(INT32_MAX)) return Status::InvalidArgument("tokenizer vocabulary too large");
  if (!v.scores.empty() && v.scores.size() != n) {
    return Status::InvalidArgument("tokenizer has " + std::to_string(v.scores.size()) +
                                   " scores for " + std::to_string(n) + " tokens");
  }
  if (!v.types.empty() && v.types.size() != n) {
    return Status::InvalidArgument("tokenizer has " + std::to_string(v.types.size()) +
                                   " token types for " + std::to_string(n) + " tokens");
  }
  for (auto [name, id] : {std::pair<const char*, TokenId>{"bos", v.bos}, {"eos", v.eos}, {"unknown", v.unk},
                          {"padding", v.pad}, {"eot", v.eot}, {"eom", v.eom}}) {
    if (id < -1 || id >= static_cast<TokenId>(n)) {
      return Status::InvalidArgument(std::string(name) + " token id " + std::to_string(id) +
                                     " is outside the vocabulary of " + std::to_string(n));
    }
  }
  tokens_ = std::move(v.tokens);
  token_type_ = v.types.empty() ? std::vector<uint8_t>(n, static_cast<uint8_t>(TokenType::kNormal))
                                : std::move(v.types);
  bos_ = v.bos;
  eos_ = v.eos;
  unk_ = v.unk;
  add_bos_ = v.add_bos < 0 ? default_add_bos : v.add_bos == 1;
  add_eos_ = v.add_eos == 1;

  piece_to_id_.Reserve(n);
  for (size_t i = 0; i < n; ++i) piece_to_id_.Insert(tokens_[i], static_cast<TokenId>(i));

  for (size_t i = 0; i < n; ++i) {
    const auto t = static_cast<TokenType>(token_type_[i]);
    const std::string& s = tokens_[i];
    const bool user = t == TokenType::kUserDefined;
    if (!(user || t == TokenType::kControl || t == TokenType::kUnknown)) continue;
    // A special that is not valid UTF-8 could match in the middle of a
    // character and split it; such a vocabulary entry is never matched.
    if (s.empty() || FindInvalidUtf8(s) >= 0) continue;
    specials_by_byte_[static_cast<uint8_t>(s[0])].push_back({static_cast<TokenId>(i), user});
  }
  for (auto& bucket : specials_by_byte_) {
    std::stable_sort(bucket.begin(), bucket.end(), [&](const Special& a, const Special& b) {
      return tokens_[static_cast<size_t>(a.id)].size() > tokens_[static_cast<size_t>(b.id)].size();
    });
  }

  // End of generation: the stated ids plus the usual end-of-turn texts.
  for (TokenId id : {v.eos, v.eot, v.eom}) {
    if (id >= 0) eog_ids_.push_back(id);
  }
  for (const char* text : {"<|eot_id|>", "<|im_end|>", "<|end|>", "<|endoftext|>", "<end_of_turn>",
                           "<|end_of_text|>", "<|eom_id|>", "<EOT>", "<|return|>"}) {
    const TokenId id = Find(text);
    if (id >= 0 && type(id) == TokenType::kControl &&
        std::find(eog_ids_.begin(), eog_ids_.end(), id) == eog_ids_.end()) {
      eog_ids_.push_back(id);
    }
  }
  return Status::Ok();
}

std::pair<TokenId, size_t> VocabTokenizer::MatchSpecial(std::string_view text, size_t pos,
                                                        bool parse_special) const {
  for (const Special& s : specials_by_byte_[static_cast<uint8_t>(text[pos])]) {
    if (!parse_special && !s.always) continue;
    const std::string& piece = tokens_[static_cast<size_t>(s.id)];
    if (text.compare(pos, piece.size(), piece) == 0) return {s.id, piece.size()};
  }
  return {-1, 0};
}

Expected<std::vector<TokenId>> VocabTokenizer::Encode(std::string_view text,
                                                      const EncodeOptions& options) const {
  if (const int64_t bad = FindInvalidUtf8(text); bad >= 0) {
    char msg[96];
    std::snprintf(msg, sizeof(msg), "text is not valid UTF-8: byte 0x%02X at offset %lld",
                  static_cast<unsigned>(static_cast<uint8_t>(text[static_cast<size_t>(bad)])),
                  static_cast<long long>(bad));
    return Status::InvalidArgument(msg);
  }
  std::vector<TokenId> out;
  out.reserve(text.size() / 3 + 2);
  if (options.add_bos && add_bos_ && bos_ >= 0) out.push_back(bos_);

  // Leftmost-longest special matches, scanning left to right (what the
  // reference's added-token trie does).
  size_t fragment_start = 0;
  bool after_special = true;
  size_t pos = 0;
  while (pos < text.size()) {
    auto [id, len] = MatchSpecial(text, pos, options.parse_special);
    if (id < 0) {
      ++pos;
      continue;
    }
    if (pos > fragment_start) {
      EncodeText(text.substr(fragment_start, pos - fragment_start), after_special, &out);
    }
    out.push_back(id);
    after_special = true;
    pos += len;
    fragment_start = pos;
  }
  if (fragment_start < text.size()) {
    EncodeText(text.substr(fragment_start), after_special, &out);
  }
  if (options.add_eos && add_eos_ && eos_ >= 0) out.push_back(eos_);
  return out;
}

std::string VocabTokenizer::TokenBytes(TokenId id) const {
  if (id < 0 || static_cast<size_t>(id) >= token_bytes_.size()) return {};
  return token_bytes_[static_cast<size_t>(id)];
}

std::string_view VocabTokenizer::Piece(TokenId id) const {
  if (id < 0 || static_cast<size_t>(id) >= tokens_.size()) return {};
  return tokens_[static_cast<size_t>(id)];
}

std::string VocabTokenizer::Decode(std::span<const TokenId> ids) const {
  std::string out;
  size_t i = 0;
  if (!ids.empty() && bos_ >= 0 && ids[0] == bos_) i = 1;
  const size_t first = i;
  for (; i < ids.size(); ++i) {
    const TokenId id = ids[i];
    if (id < 0 || static_cast<size_t>(id) >= token_bytes_.size()) continue;
    const std::string& b = token_bytes_[static_cast<size_t>(id)];
    if (i == first && strips_leading_space() && !b.empty() && b[0] == ' ') {
      out.append(b, 1, std::string::npos);
    } else {
      out += b;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------
// StreamDecoder

namespace {
constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD
}  // namespace

bool StreamDecoder::Continues(const Tokenizer& tok, std::span<const TokenId> prompt) {
  return std::any_of(prompt.begin(), prompt.end(), [&](TokenId t) { return t != tok.bos(); });
}

std::string StreamDecoder::Push(TokenId id) {
  std::string bytes = tok_.TokenBytes(id);
  if (first_) {
    if (id == tok_.bos() && id >= 0) return {};
    first_ = false;
    if (tok_.strips_leading_space() && !bytes.empty() && bytes[0] == ' ') bytes.erase(0, 1);
  }
  pending_ += bytes;
  std::string out;
  size_t i = 0;
  while (i < pending_.size()) {
    const int len = Utf8CharLength(pending_, i);
    if (len < 0) break;  // a character still missing bytes: wait for them
    if (len == 0) {
      out += kReplacement;
      ++i;
      continue;
    }
    out.append(pending_, i, static_cast<size_t>(len));
    i += static_cast<size_t>(len);
  }
  pending_.erase(0, i);
  return out;
}

std::string StreamDecoder::Flush() {
  std::string out;
  // Whatever waits here is a truncated character: one U+FFFD for it.
  if (!pending_.empty()) out += kReplacement;
  pending_.clear();
  return out;
}

}  // namespace strata
