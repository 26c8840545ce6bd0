// Tokenizers built from GGUF metadata (tokenizer.ggml.*):
//  - "llama": SentencePiece BPE over scores, with byte fallback (<0xNN>).
//  - "gpt2":  byte-level BPE over merges, with the pre-tokenizer named by
//             tokenizer.ggml.pre ("llama-bpe", "qwen2", "gpt-2", "smollm", ...).
//
// Parity target: the Hugging Face tokenizers as transformers.js runs them
// (and gpt-3-encoder for GPT-2); tests/tokenizer_test.cpp checks this id for
// id. Known differences are listed in docs next to the tests.
//
// Thread-safety: immutable after construction; Encode/Decode are const and
// safe to call concurrently.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace strata {

class GgufFile;

using TokenId = int32_t;

struct EncodeOptions {
  bool add_bos = true;        // prepend BOS if the model asks for it (tokenizer.ggml.add_bos_token)
  bool add_eos = true;        // append EOS if the model asks for it (tokenizer.ggml.add_eos_token)
  bool parse_special = false; // recognize special-token text like "<|im_start|>"
};

// tokenizer.ggml.token_type values.
enum class TokenType : uint8_t {
  kUndefined = 0, kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6,
};

// Everything a tokenizer is built from, as stored under tokenizer.ggml.*.
// FromGguf fills one of these; tests and the fuzzer build them in code.
struct TokenizerVocab {
  std::string model = "llama";       // "llama" (SentencePiece) or "gpt2" (byte-level BPE)
  std::string pre;                   // pre-tokenizer family (gpt2 only); empty = "default"
  std::vector<std::string> tokens;   // piece text per id (byte-level or ▁-escaped as stored)
  std::vector<float> scores;         // llama: merge priority per id (higher merges first); may be empty
  std::vector<uint8_t> types;        // TokenType per id; empty = all normal
  std::vector<std::string> merges;   // gpt2: "left right", highest priority first
  TokenId bos = -1, eos = -1, unk = -1, pad = -1, eot = -1, eom = -1;  // -1 = none
  // -1 = not stated: the model family's default (llama.cpp's choice).
  int add_bos = -1, add_eos = -1, add_space_prefix = -1;
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  static Expected<std::unique_ptr<Tokenizer>> FromGguf(const GgufFile& gguf);
  // Fails with kInvalidArgument (bad ids, unknown model or pre-tokenizer).
  static Expected<std::unique_ptr<Tokenizer>> FromVocab(TokenizerVocab vocab);

  // Fails with kInvalidArgument on invalid UTF-8 input (names the byte offset).
  virtual Expected<std::vector<TokenId>> Encode(std::string_view text,
                                                const EncodeOptions& options = {}) const = 0;
  // Raw bytes the token stands for (after byte-level / ▁ decoding); special
  // tokens render as their text. May be part of a multi-byte UTF-8 char.
  // Out-of-range ids render as "".
  virtual std::string TokenBytes(TokenId id) const = 0;
  // Detokenize a whole sequence: a leading BOS is dropped, and so is the
  // leading space SentencePiece adds (like llama.cpp and HF's Strip decoder).
  // Invalid UTF-8 that token bytes form is kept as is.
  virtual std::string Decode(std::span<const TokenId> ids) const = 0;

  virtual int32_t vocab_size() const = 0;
  virtual std::string_view model_name() const = 0;  // "llama" or "gpt2"
  virtual std::string_view Piece(TokenId id) const = 0;  // vocabulary string as stored
  // Whether Decode drops one leading space (SentencePiece's space prefix).
  virtual bool strips_leading_space() const { return false; }
  TokenId bos() const { return bos_; }
  TokenId eos() const { return eos_; }
  bool add_bos() const { return add_bos_; }
  // End of generation: EOS, EOT (<|eot_id|>, <|im_end|>, <|endoftext|>, ...).
  bool IsEndOfGeneration(TokenId id) const;
  bool IsControl(TokenId id) const;

 protected:
  TokenId bos_ = -1;
  TokenId eos_ = -1;
  bool add_bos_ = false;
  std::vector<TokenId> eog_ids_;
  std::vector<uint8_t> token_type_;  // tokenizer.ggml.token_type per id
};

// Turns a token stream into text without ever emitting half a UTF-8
// character: bytes of an incomplete character wait for the next token.
// Applies the same leading-BOS and leading-space rules as Decode when the
// stream starts the text; a stream that continues text (generation after a
// prompt) keeps every token's leading space, or "time, Elizabeth" + " was"
// would show as "Elizabethwas".
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tok, bool continues_text = false) : tok_(tok), first_(!continues_text) {}
  // Whether generation after `prompt` continues text (the prompt holds more
  // than a BOS).
  static bool Continues(const Tokenizer& tok, std::span<const TokenId> prompt);
  // Text that became complete with this token (possibly empty). Bytes that
  // can never become valid UTF-8 come out as U+FFFD right away.
  std::string Push(TokenId id);
  // Whatever is still buffered (invalid tails become U+FFFD).
  std::string Flush();

 private:
  const Tokenizer& tok_;
  std::string pending_;
  bool first_;
};

// Checks UTF-8 validity (no overlongs, surrogates or code points past
// U+10FFFF); returns the offset of the first bad byte or -1.
int64_t FindInvalidUtf8(std::string_view s);

}  // namespace strata
