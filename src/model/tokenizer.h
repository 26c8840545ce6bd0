// Tokenizers built from GGUF metadata (tokenizer.ggml.*):
//  - "llama": SentencePiece BPE over scores, with byte fallback (<0xNN>).
//  - "gpt2":  byte-level BPE over merges, with the pre-tokenizer named by
//             tokenizer.ggml.pre ("llama-bpe", "qwen2", "gpt-2", "smollm", ...).
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
  bool parse_special = false; // recognize special-token text like "<|im_start|>"
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  static Expected<std::unique_ptr<Tokenizer>> FromGguf(const GgufFile& gguf);

  // Fails with kInvalidArgument on invalid UTF-8 input (names the byte offset).
  virtual Expected<std::vector<TokenId>> Encode(std::string_view text,
                                                const EncodeOptions& options = {}) const = 0;
  // Raw bytes the token stands for (after byte-level / ▁ decoding); special
  // tokens render as their text. May be part of a multi-byte UTF-8 char.
  virtual std::string TokenBytes(TokenId id) const = 0;
  // Detokenize a whole sequence (drops a leading space SentencePiece adds
  // after BOS, like llama.cpp does).
  virtual std::string Decode(std::span<const TokenId> ids) const = 0;

  virtual int32_t vocab_size() const = 0;
  virtual std::string_view model_name() const = 0;  // "llama" or "gpt2"
  virtual std::string_view Piece(TokenId id) const = 0;  // vocabulary string as stored
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
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tok) : tok_(tok) {}
  // Text that became complete with this token (possibly empty).
  std::string Push(TokenId id);
  // Whatever is still buffered (invalid tails become U+FFFD).
  std::string Flush();

 private:
  const Tokenizer& tok_;
  std::string pending_;
  bool first_ = true;
};

// Checks UTF-8 validity; returns the offset of the first bad byte or -1.
int64_t FindInvalidUtf8(std::string_view s);

}  // namespace strata
