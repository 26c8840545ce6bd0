// Fuzzes the tokenizers with arbitrary bytes: Encode must fail cleanly on
// invalid UTF-8 and otherwise produce ids that decode back (exactly, for
// byte-level BPE); the pre-tokenizers must cover their input; Decode and
// StreamDecoder must survive any id sequence.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "model/tokenizer.h"
#include "model/tokenizer_pretokenizer.h"
#include "model/tokenizer_unicode.h"
#include "../tests/spm_vocab.h"

namespace {

using namespace strata;

#define FUZZ_CHECK(cond)                                                   \
  do {                                                                     \
    if (!(cond)) {                                                         \
      std::fprintf(stderr, "check failed: %s (line %d)\n", #cond, __LINE__); \
      __builtin_trap();                                                    \
    }                                                                      \
  } while (0)

TokenizerVocab SpmVocab() {
  return testing::SpmVocabWith({"▁", "a", "b", "c", "é", "日", "ab", "▁a", "▁ab", "bc", "abc", "▁▁", "cc", "ccc"},
                               "<|u|>");
}

TokenizerVocab BpeVocab(const char* pre) {
  std::vector<std::string> byte_piece(256);
  int next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    AppendUtf8(static_cast<char32_t>(printable ? b : next++), &byte_piece[b]);
  }
  TokenizerVocab v;
  v.model = "gpt2";
  v.pre = pre;
  v.tokens = byte_piece;
  // Merges written over raw bytes, stored in the byte alphabet like real files.
  const auto enc = [&](std::string_view raw) {
    std::string out;
    for (unsigned char c : raw) out += byte_piece[c];
    return out;
  };
  const char* pairs[][2] = {{"a", "b"}, {"ab", "c"}, {" ", "a"}, {" a", "bc"}, {"1", "2"},
                            {"12", "3"}, {" ", " "}, {"\xC3", "\xA9"}, {"c", "c"}, {"cc", "c"}};
  for (const auto& p : pairs) {
    v.merges.push_back(enc(p[0]) + " " + enc(p[1]));
    v.tokens.push_back(enc(p[0]) + enc(p[1]));
  }
  v.tokens.push_back("<|endoftext|>");
  v.tokens.push_back("<think>");
  v.types.assign(v.tokens.size(), static_cast<uint8_t>(TokenType::kNormal));
  v.types[v.types.size() - 2] = static_cast<uint8_t>(TokenType::kControl);
  v.types[v.types.size() - 1] = static_cast<uint8_t>(TokenType::kUserDefined);
  v.eos = static_cast<TokenId>(v.tokens.size() - 2);
  return v;
}

struct Tokenizers {
  std::vector<std::unique_ptr<Tokenizer>> all;
  Tokenizers() {
    auto add = [&](TokenizerVocab v) {
      auto t = Tokenizer::FromVocab(std::move(v));
      FUZZ_CHECK(t.ok());
      all.push_back(std::move(*t));
    };
    add(SpmVocab());
    for (const char* pre : {"gpt-2", "llama-bpe", "qwen2", "smollm"}) add(BpeVocab(pre));
  }
};

void CheckStream(const Tokenizer& tok, const std::vector<TokenId>& ids, const std::string* expect) {
  StreamDecoder dec(tok);
  std::string out;
  for (TokenId id : ids) {
    const std::string piece = dec.Push(id);
    FUZZ_CHECK(FindInvalidUtf8(piece) < 0);
    out += piece;
  }
  out += dec.Flush();
  FUZZ_CHECK(FindInvalidUtf8(out) < 0);
  if (expect) FUZZ_CHECK(out == *expect);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const Tokenizers toks;
  const std::string text(reinterpret_cast<const char*>(data), size);
  const bool valid = FindInvalidUtf8(text) < 0;

  if (valid) {
    for (auto kind : {PreTokenizerKind::kGpt2, PreTokenizerKind::kLlama3, PreTokenizerKind::kQwen2,
                      PreTokenizerKind::kSmolLm}) {
      std::vector<std::string_view> pieces;
      PreTokenize(kind, text, &pieces);
      std::string joined;
      for (std::string_view p : pieces) {
        FUZZ_CHECK(!p.empty());
        joined += p;
      }
      FUZZ_CHECK(joined == text);
    }
  }

  for (const auto& tok : toks.all) {
    for (bool parse_special : {false, true}) {
      auto ids = tok->Encode(text, {.add_bos = true, .add_eos = true, .parse_special = parse_special});
      FUZZ_CHECK(ids.ok() == valid);
      if (!ids.ok()) {
        FUZZ_CHECK(ids.status().code() == StatusCode::kInvalidArgument);
        continue;
      }
      for (TokenId id : *ids) FUZZ_CHECK(id >= 0 && id < tok->vocab_size());
      const std::string decoded = tok->Decode(*ids);
      std::string normalized;
      if (tok->model_name() == "gpt2" && !(valid && NormalizeNfc(text, &normalized))) {
        // Byte-level BPE is lossless; specials decode to their own text.
        // (Text that NFC changes is not: the qwen2 vocabulary normalizes.)
        FUZZ_CHECK(decoded == text);
        CheckStream(*tok, *ids, &text);
      } else {
        CheckStream(*tok, *ids, nullptr);
      }
    }
  }

  // Arbitrary (also out-of-range) ids.
  std::vector<TokenId> ids;
  for (size_t i = 0; i + 2 <= size && ids.size() < 64; i += 2) {
    ids.push_back(static_cast<TokenId>((data[i] | (data[i + 1] << 8)) % 400) - 20);
  }
  for (const auto& tok : toks.all) {
    (void)tok->Decode(ids);
    CheckStream(*tok, ids, nullptr);
    for (TokenId id : ids) (void)tok->TokenBytes(id);
  }
  return 0;
}
