// Tokenizer tests: the pieces (UTF-8, pre-tokenizer regexes, SentencePiece
// and BPE merging, specials, decoding, streaming) on small vocabularies built
// in code, then id-for-id parity with reference tokenizers:
//   llama2 (Mistral-7B SentencePiece-BPE), llama3, qwen3: HF tokenizer.json
//     run by transformers.js (@lenml/tokenizer-*)
//   gpt2: gpt-3-encoder (OpenAI's GPT-2 BPE in JS)
//   stories260K.gguf: the SentencePiece library itself
// The references come from tests/tokenizer_ref (npm) and tools/tokenizer
// (python); those tests skip with a message when node_modules or the model
// file is missing.
//
// Qwen2/3 vocabularies NFC-normalize their input (as their tokenizer.json
// does; llama.cpp does not), so their parity covers decomposed text too.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <unistd.h>
#include <vector>

#include "model/gguf.h"
#include "model/tokenizer.h"
#include "model/tokenizer_pretokenizer.h"
#include "model/tokenizer_unicode.h"
#include "spm_vocab.h"

namespace strata {
namespace {

namespace fs = std::filesystem;
using Ids = std::vector<TokenId>;

// "Well under a second" for 100 KB, with room for sanitizer builds.
#if defined(__SANITIZE_ADDRESS__)
constexpr double kLongTextSeconds = 5.0;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr double kLongTextSeconds = 5.0;
#else
constexpr double kLongTextSeconds = 1.0;
#endif
#else
constexpr double kLongTextSeconds = 1.0;
#endif

// ---------------------------------------------------------------------------
// Helpers

std::vector<std::string> Split(PreTokenizerKind kind, std::string_view text) {
  std::vector<std::string_view> pieces;
  PreTokenize(kind, text, &pieces);
  return {pieces.begin(), pieces.end()};
}

Ids EncodeOrDie(const Tokenizer& tok, std::string_view text, EncodeOptions opt = {}) {
  auto r = tok.Encode(text, opt);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? *r : Ids{};
}

TokenizerVocab SmallSpmVocab() {
  return testing::SpmVocabWith({"▁", "h", "e", "l", "o", "w", "r", "d", "a", "b", "c", "ll", "▁h", "▁he", "▁hell",
                                "▁hello", "or", "▁w", "▁wor", "ld", "▁world", "ab", "abc"},
                               "<|sep|>");
}

// Byte-level BPE over the 256-byte alphabet plus a few merges.
TokenizerVocab SmallBpeVocab(std::string pre = "gpt-2") {
  // GPT-2's byte -> printable code point mapping, as the vocabulary stores it.
  std::vector<std::string> byte_piece(256);
  int next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    std::string s;
    AppendUtf8(static_cast<char32_t>(printable ? b : next++), &s);
    byte_piece[b] = s;
  }
  TokenizerVocab v;
  v.model = "gpt2";
  v.pre = std::move(pre);
  for (int b = 0; b < 256; ++b) v.tokens.push_back(byte_piece[b]);
  const std::string G = byte_piece[' '];  // "Ġ"
  const std::vector<std::pair<std::string, std::string>> merges = {
      {"h", "e"}, {"l", "l"}, {"he", "ll"}, {"hell", "o"}, {G, "w"}, {"o", "r"}, {G + "w", "or"},
      {"l", "d"}, {G + "wor", "ld"}, {"1", "2"}, {G, G}};
  for (const auto& [a, b] : merges) {
    v.merges.push_back(a + " " + b);
    v.tokens.push_back(a + b);
  }
  v.tokens.push_back("<|endoftext|>");
  v.types.assign(v.tokens.size(), static_cast<uint8_t>(TokenType::kNormal));
  v.types.back() = static_cast<uint8_t>(TokenType::kControl);
  v.eos = static_cast<TokenId>(v.tokens.size() - 1);
  v.bos = v.eos;
  return v;
}

TokenId IdOf(const Tokenizer& tok, std::string_view piece) {
  for (TokenId id = 0; id < tok.vocab_size(); ++id) {
    if (tok.Piece(id) == piece) return id;
  }
  return -1;
}

std::unique_ptr<Tokenizer> Make(TokenizerVocab v) {
  auto t = Tokenizer::FromVocab(std::move(v));
  EXPECT_TRUE(t.ok()) << t.status().ToString();
  return t.ok() ? std::move(*t) : nullptr;
}

// ---------------------------------------------------------------------------
// UTF-8 and Unicode classes

TEST(TokenizerUtf8, FindsFirstInvalidByte) {
  EXPECT_EQ(FindInvalidUtf8(""), -1);
  EXPECT_EQ(FindInvalidUtf8("plain ascii text that is long enough"), -1);
  EXPECT_EQ(FindInvalidUtf8("caf\xC3\xA9 \xF0\x9F\x98\x80"), -1);
  EXPECT_EQ(FindInvalidUtf8("abc\xFF"), 3);
  EXPECT_EQ(FindInvalidUtf8("abcdefghij\xC3"), 10);          // truncated at the end
  EXPECT_EQ(FindInvalidUtf8("\xC0\xAF"), 0);                  // overlong '/'
  EXPECT_EQ(FindInvalidUtf8("x\xE0\x80\xAF"), 1);             // overlong
  EXPECT_EQ(FindInvalidUtf8("xy\xED\xA0\x80"), 2);            // surrogate U+D800
  EXPECT_EQ(FindInvalidUtf8("\xF4\x90\x80\x80"), 0);          // past U+10FFFF
  EXPECT_EQ(FindInvalidUtf8("\xE2\x82"), 0);
  EXPECT_EQ(FindInvalidUtf8("ok\x80"), 2);                    // stray continuation
}

TEST(TokenizerUnicode, ClassesMatchJavaScript) {
  EXPECT_EQ(CodepointFlags('a'), kLetter);
  EXPECT_EQ(CodepointFlags('7'), kNumber);
  EXPECT_EQ(CodepointFlags(' '), kWhitespace);
  EXPECT_EQ(CodepointFlags('!'), 0);
  EXPECT_EQ(CodepointFlags(U'é'), kLetter);
  EXPECT_EQ(CodepointFlags(U'日'), kLetter);
  EXPECT_EQ(CodepointFlags(U'²'), kNumber);       // \p{N} includes No
  EXPECT_EQ(CodepointFlags(U'Ⅻ'), kNumber);       // and Nl
  EXPECT_EQ(CodepointFlags(0x0661), kNumber);      // Arabic-Indic one
  EXPECT_EQ(CodepointFlags(0x3000), kWhitespace);
  EXPECT_EQ(CodepointFlags(0xFEFF), kWhitespace);  // JS \s has the BOM...
  EXPECT_EQ(CodepointFlags(0x0085), 0);            // ...and not NEL
  EXPECT_EQ(CodepointFlags(0x1F600), 0);           // emoji are "other"
  EXPECT_EQ(CodepointFlags(0x0301), 0);            // combining marks are not \p{L}
  EXPECT_EQ(CodepointFlags(0x10FFFF), 0);
}

// ---------------------------------------------------------------------------
// Pre-tokenizers

using V = std::vector<std::string>;

TEST(TokenizerPreTokenize, Gpt2) {
  const auto k = PreTokenizerKind::kGpt2;
  EXPECT_EQ(Split(k, "Hello world"), (V{"Hello", " world"}));
  EXPECT_EQ(Split(k, "I'm it's they'll WE'LL"), (V{"I", "'m", " it", "'s", " they", "'ll", " WE", "'", "LL"}));
  EXPECT_EQ(Split(k, "a  b   c"), (V{"a", " ", " b", "  ", " c"}));
  EXPECT_EQ(Split(k, "x \n y"), (V{"x", " \n", " y"}));
  EXPECT_EQ(Split(k, "end  "), (V{"end", "  "}));
  EXPECT_EQ(Split(k, "12345 678"), (V{"12345", " 678"}));
  EXPECT_EQ(Split(k, "a\tb"), (V{"a", "\t", "b"}));
  EXPECT_EQ(Split(k, "f(x)!! ?"), (V{"f", "(", "x", ")!!", " ?"}));
  EXPECT_EQ(Split(k, ""), V{});
}

TEST(TokenizerPreTokenize, Llama3) {
  const auto k = PreTokenizerKind::kLlama3;
  EXPECT_EQ(Split(k, "Hello world"), (V{"Hello", " world"}));
  EXPECT_EQ(Split(k, "WE'LL I'M"), (V{"WE", "'LL", " I", "'M"}));  // contractions ignore case
  EXPECT_EQ(Split(k, "1234567"), (V{"123", "456", "7"}));
  EXPECT_EQ(Split(k, "(hello"), (V{"(hello"}));
  EXPECT_EQ(Split(k, "a\n\n  b"), (V{"a", "\n\n", " ", " b"}));
  EXPECT_EQ(Split(k, "x  \n\t y"), (V{"x", "  \n", "\t", " y"}));
  EXPECT_EQ(Split(k, "ok!!\n\nnext"), (V{"ok", "!!\n\n", "next"}));
  EXPECT_EQ(Split(k, "\r\nz"), (V{"\r\n", "z"}));
  EXPECT_EQ(Split(k, "trailing   "), (V{"trailing", "   "}));
}

TEST(TokenizerPreTokenize, Qwen2SplitsEveryDigit) {
  EXPECT_EQ(Split(PreTokenizerKind::kQwen2, "ab 1234"), (V{"ab", " ", "1", "2", "3", "4"}));
}

TEST(TokenizerPreTokenize, SmolLmDigitsThenGpt2) {
  EXPECT_EQ(Split(PreTokenizerKind::kSmolLm, "ab 123x"), (V{"ab", " ", "1", "2", "3", "x"}));
  EXPECT_EQ(Split(PreTokenizerKind::kSmolLm, "it's 9 lives"), (V{"it", "'s", " ", "9", " lives"}));
}

TEST(TokenizerPreTokenize, NamesMapToFamilies) {
  EXPECT_EQ(PreTokenizerFromName("llama-bpe")->kind, PreTokenizerKind::kLlama3);
  EXPECT_TRUE(PreTokenizerFromName("llama-bpe")->ignore_merges);
  EXPECT_EQ(PreTokenizerFromName("qwen2")->kind, PreTokenizerKind::kQwen2);
  EXPECT_EQ(PreTokenizerFromName("smollm")->kind, PreTokenizerKind::kSmolLm);
  EXPECT_EQ(PreTokenizerFromName("gpt-2")->kind, PreTokenizerKind::kGpt2);
  EXPECT_EQ(PreTokenizerFromName("default")->kind, PreTokenizerKind::kGpt2);
  auto bad = PreTokenizerFromName("klingon");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kUnsupported);
}

// ---------------------------------------------------------------------------
// SentencePiece

TEST(TokenizerSpm, MergesByScoreWithSpacePrefix) {
  auto tok = Make(SmallSpmVocab());
  ASSERT_TRUE(tok);
  const TokenId hello = IdOf(*tok, "▁hello"), world = IdOf(*tok, "▁world");
  ASSERT_GE(hello, 0);
  ASSERT_GE(world, 0);
  EXPECT_EQ(EncodeOrDie(*tok, "hello world"), (Ids{1, hello, world}));
  EXPECT_EQ(EncodeOrDie(*tok, "hello world", {.add_bos = false}), (Ids{hello, world}));
  EXPECT_EQ(tok->Decode(Ids{1, hello, world}), "hello world");
  EXPECT_EQ(tok->model_name(), "llama");
  EXPECT_TRUE(tok->add_bos());
}

TEST(TokenizerSpm, ByteFallbackForUnknownCharacters) {
  auto tok = Make(SmallSpmVocab());
  ASSERT_TRUE(tok);
  // "é" is not a piece: its two UTF-8 bytes come out as <0xC3> <0xA9>.
  const Ids ids = EncodeOrDie(*tok, "é", {.add_bos = false});
  ASSERT_EQ(ids.size(), 3u);
  EXPECT_EQ(tok->Piece(ids[0]), "▁");
  EXPECT_EQ(ids[1], 3 + 0xC3);
  EXPECT_EQ(ids[2], 3 + 0xA9);
  EXPECT_EQ(tok->Decode(ids), "é");
}

TEST(TokenizerSpm, SpecialTokensAndSpacePrefixAfterThem) {
  auto tok = Make(SmallSpmVocab());
  ASSERT_TRUE(tok);
  // Control text is plain text unless parse_special...
  Ids plain = EncodeOrDie(*tok, "<s>", {.add_bos = false});
  EXPECT_GT(plain.size(), 1u);
  // ...while user-defined pieces always split out.
  const TokenId sep = tok->vocab_size() - 1;
  Ids ids = EncodeOrDie(*tok, "ab<|sep|>ab", {.add_bos = false});
  ASSERT_EQ(ids.size(), 5u);
  EXPECT_EQ(ids[2], sep);
  // Each fragment after a special gets the ▁ prefix, like llama.cpp and HF legacy.
  EXPECT_EQ(tok->Piece(ids[3]), "▁");
  Ids special = EncodeOrDie(*tok, "<s>ab", {.add_bos = false, .parse_special = true});
  EXPECT_EQ(special[0], 1);
}

TEST(TokenizerSpm, AddSpacePrefixFalse) {
  TokenizerVocab v = SmallSpmVocab();
  v.add_space_prefix = 0;
  auto tok = Make(std::move(v));
  ASSERT_TRUE(tok);
  const Ids ids = EncodeOrDie(*tok, "hello", {.add_bos = false});
  EXPECT_NE(tok->Piece(ids[0]).substr(0, 3), "▁");
  EXPECT_EQ(tok->Decode(ids), "hello");
}

// ---------------------------------------------------------------------------
// Byte-level BPE

TEST(TokenizerBpe, MergesByRank) {
  auto tok = Make(SmallBpeVocab());
  ASSERT_TRUE(tok);
  const Ids ids = EncodeOrDie(*tok, "hello world");
  ASSERT_EQ(ids.size(), 2u);
  EXPECT_EQ(tok->Piece(ids[0]), "hello");
  EXPECT_EQ(tok->Piece(ids[1]), "\xC4\xA0world");  // "Ġworld"
  EXPECT_EQ(tok->TokenBytes(ids[1]), " world");
  EXPECT_EQ(tok->Decode(ids), "hello world");
  EXPECT_FALSE(tok->add_bos());
  EXPECT_EQ(tok->model_name(), "gpt2");
}

TEST(TokenizerBpe, EveryByteRoundTrips) {
  auto tok = Make(SmallBpeVocab());
  ASSERT_TRUE(tok);
  std::string text = "tabs\tand\nnewlines \xC3\xA9\xE6\x97\xA5\xF0\x9F\x98\x80 12 123";
  const Ids ids = EncodeOrDie(*tok, text);
  EXPECT_EQ(tok->Decode(ids), text);
}

TEST(TokenizerBpe, ControlTokensNeedParseSpecial) {
  auto tok = Make(SmallBpeVocab());
  ASSERT_TRUE(tok);
  const TokenId eot = tok->vocab_size() - 1;
  EXPECT_EQ(EncodeOrDie(*tok, "<|endoftext|>", {.parse_special = true}), (Ids{eot}));
  EXPECT_GT(EncodeOrDie(*tok, "<|endoftext|>").size(), 1u);
  EXPECT_TRUE(tok->IsEndOfGeneration(eot));
  EXPECT_TRUE(tok->IsControl(eot));
  EXPECT_FALSE(tok->IsEndOfGeneration(0));
  EXPECT_EQ(tok->TokenBytes(eot), "<|endoftext|>");
}

TEST(TokenizerBpe, UnknownPreTokenizerIsUnsupported) {
  auto t = Tokenizer::FromVocab(SmallBpeVocab("klingon"));
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), StatusCode::kUnsupported);
}

TEST(TokenizerVocab, RejectsBadIdsAndSizes) {
  TokenizerVocab v = SmallSpmVocab();
  v.bos = 100000;
  EXPECT_EQ(Tokenizer::FromVocab(v).status().code(), StatusCode::kInvalidArgument);
  v = SmallSpmVocab();
  v.scores.pop_back();
  EXPECT_EQ(Tokenizer::FromVocab(v).status().code(), StatusCode::kInvalidArgument);
  v = SmallSpmVocab();
  v.model = "wordpiece";
  EXPECT_EQ(Tokenizer::FromVocab(v).status().code(), StatusCode::kUnsupported);
  v = SmallSpmVocab();
  v.tokens.clear();
  v.scores.clear();
  v.types.clear();
  v.bos = v.eos = v.unk = -1;
  EXPECT_EQ(Tokenizer::FromVocab(v).status().code(), StatusCode::kInvalidArgument);
}

TEST(TokenizerEncode, InvalidUtf8NamesTheOffset) {
  for (auto v : {SmallSpmVocab(), SmallBpeVocab()}) {
    auto tok = Make(v);
    ASSERT_TRUE(tok);
    auto r = tok->Encode("good \xC3\x28 bad");
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find("offset 5"), std::string::npos) << r.status().message();
  }
}

TEST(TokenizerEncode, LongInputIsFast) {
  // Long words (one 60 KB run of letters, one of spaces) are the worst case
  // for merging; a quadratic algorithm would take seconds here.
  std::string text;
  while (text.size() < 40000) text += "hello world, this is some text 12345\n";
  text += std::string(30000, 'l') + std::string(30000, ' ');
  for (auto v : {SmallSpmVocab(), SmallBpeVocab("llama-bpe")}) {
    auto tok = Make(v);
    ASSERT_TRUE(tok);
    const auto t0 = std::chrono::steady_clock::now();
    const Ids ids = EncodeOrDie(*tok, text);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_LT(s, kLongTextSeconds) << tok->model_name();
    EXPECT_EQ(tok->Decode(ids), text);
  }
}

// ---------------------------------------------------------------------------
// Streaming

TEST(TokenizerStream, NeverEmitsHalfACharacter) {
  auto tok = Make(SmallBpeVocab());
  ASSERT_TRUE(tok);
  const std::string text = "a\xF0\x9F\x98\x80 \xE6\x97\xA5!";  // 😀 and 日 as single bytes
  const Ids ids = EncodeOrDie(*tok, text);
  StreamDecoder dec(*tok);
  std::string out;
  for (TokenId id : ids) {
    const std::string piece = dec.Push(id);
    EXPECT_EQ(FindInvalidUtf8(piece), -1) << "split character emitted";
    out += piece;
  }
  out += dec.Flush();
  EXPECT_EQ(out, text);
}

TEST(TokenizerStream, InvalidBytesBecomeReplacementCharacters) {
  auto tok = Make(SmallBpeVocab());
  ASSERT_TRUE(tok);
  StreamDecoder dec(*tok);
  // Token 0xFF's byte can never start a character; a lone lead byte waits
  // and is flushed as U+FFFD.
  const auto byte_token = [&](uint8_t b) {
    for (TokenId id = 0; id < 256; ++id) {
      if (tok->TokenBytes(id) == std::string(1, static_cast<char>(b))) return id;
    }
    return TokenId{-1};
  };
  EXPECT_EQ(dec.Push(byte_token(0xFF)), "\xEF\xBF\xBD");
  EXPECT_EQ(dec.Push(byte_token(0xE6)), "");
  EXPECT_EQ(dec.Flush(), "\xEF\xBF\xBD");
}

TEST(TokenizerStream, DropsBosAndSentencePiecePrefix) {
  auto tok = Make(SmallSpmVocab());
  ASSERT_TRUE(tok);
  const Ids ids = EncodeOrDie(*tok, "hello world");
  StreamDecoder dec(*tok);
  std::string out;
  for (TokenId id : ids) out += dec.Push(id);
  out += dec.Flush();
  EXPECT_EQ(out, "hello world");
}

TEST(TokenizerStream, ContinuationKeepsTheLeadingSpace) {
  auto tok = Make(SmallSpmVocab());
  ASSERT_TRUE(tok);
  // "hello" as a prompt, then " world" generated: the space is part of the
  // continuation, as Decode of the whole sequence shows.
  const Ids prompt = EncodeOrDie(*tok, "hello", {.add_bos = true});
  const Ids whole = EncodeOrDie(*tok, "hello world", {.add_bos = true});
  ASSERT_EQ(Ids(whole.begin(), whole.begin() + static_cast<std::ptrdiff_t>(prompt.size())), prompt);
  ASSERT_TRUE(StreamDecoder::Continues(*tok, prompt));
  StreamDecoder dec(*tok, StreamDecoder::Continues(*tok, prompt));
  std::string out;
  for (size_t i = prompt.size(); i < whole.size(); ++i) out += dec.Push(whole[i]);
  out += dec.Flush();
  EXPECT_EQ(tok->Decode(prompt) + out, tok->Decode(whole));
  EXPECT_EQ(out, " world");
  // A prompt of just BOS starts the text: the SentencePiece prefix goes.
  const Ids bos_only(whole.begin(), whole.begin() + 1);
  EXPECT_FALSE(StreamDecoder::Continues(*tok, bos_only));
}

// ---------------------------------------------------------------------------
// Reference parity

std::string SourcePath(const std::string& rel) { return std::string(STRATA_SOURCE_DIR) + "/" + rel; }

std::string RefDir() { return SourcePath("tests/tokenizer_ref"); }

bool HaveNodeModules() { return fs::exists(RefDir() + "/node_modules/@lenml/tokenizers"); }

// Runs a shell command; returns its stdout, or nullopt on a non-zero exit.
std::optional<std::string> RunCommand(const std::string& cmd) {
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return std::nullopt;
  std::string out;
  char buf[65536];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  if (pclose(p) != 0) return std::nullopt;
  return out;
}

std::string WorkDir() {
  const std::string dir = std::string(STRATA_BINARY_DIR) + "/tokenizer_ref";
  fs::create_directories(dir);
  return dir;
}

// Converts `name`'s reference tokenizer into a vocab GGUF in the build tree
// (reused while newer than its inputs; written under a temporary name and
// renamed so concurrent test processes never see half a file).
std::optional<std::string> VocabGguf(const std::string& name) {
  const std::string nm = RefDir() + "/node_modules/";
  std::string args;
  std::vector<std::string> inputs = {SourcePath("tools/tokenizer/convert_tokenizer_json.py")};
  if (name == "gpt2") {
    inputs.push_back(nm + "gpt-3-encoder/encoder.json");
    inputs.push_back(nm + "gpt-3-encoder/vocab.bpe");
    args = "--gpt2-encoder '" + inputs[1] + "' --gpt2-bpe '" + inputs[2] + "'";
  } else {
    const std::string m = nm + "@lenml/tokenizer-" + name + "/models/";
    inputs.push_back(m + "tokenizer.json");
    inputs.push_back(m + "tokenizer_config.json");
    args = "--tokenizer-json '" + inputs[1] + "' --config '" + inputs[2] + "'";
  }
  const std::string out = WorkDir() + "/" + name + ".gguf";
  bool fresh = fs::exists(out);
  for (const auto& in : inputs) {
    if (fresh && fs::last_write_time(in) > fs::last_write_time(out)) fresh = false;
  }
  if (fresh) return out;
  const std::string tmp = out + ".tmp" + std::to_string(getpid());
  if (!RunCommand("/usr/bin/python3 '" + inputs[0] + "' " + args + " --name " + name + " -o '" + tmp + "' >/dev/null")) {
    return std::nullopt;
  }
  fs::rename(tmp, out);
  return out;
}

std::vector<std::string> Corpus() {
  std::ifstream f(SourcePath("tests/data/tokenizer_corpus.json"));
  return nlohmann::json::parse(f).get<std::vector<std::string>>();
}

struct Reference {
  std::vector<Ids> plain;    // no special tokens added
  std::vector<Ids> special;  // with BOS/EOS as the reference adds them
};

std::optional<Reference> ReferenceIds(const std::string& name) {
  auto out = RunCommand("node '" + RefDir() + "/encode.js' " + name + " '" +
                 SourcePath("tests/data/tokenizer_corpus.json") + "'");
  if (!out) return std::nullopt;
  auto j = nlohmann::json::parse(*out);
  return Reference{j["plain"].get<std::vector<Ids>>(), j["special"].get<std::vector<Ids>>()};
}

// The corpus in NFC (Qwen3's normalizer), from node's
// String.prototype.normalize: an oracle independent of ICU-in-C++.
std::optional<std::vector<std::string>> NfcCorpus() {
  auto out = RunCommand("node -e 'const t=JSON.parse(require(\"fs\").readFileSync(process.argv[1],\"utf8\"));"
                 "console.log(JSON.stringify(t.map(s=>s.normalize(\"NFC\"))))' '" +
                 SourcePath("tests/data/tokenizer_corpus.json") + "'");
  if (!out) return std::nullopt;
  return nlohmann::json::parse(*out).get<std::vector<std::string>>();
}

std::string Show(const Ids& ids) {
  std::ostringstream s;
  for (size_t i = 0; i < ids.size(); ++i) s << (i ? "," : "") << ids[i];
  return s.str();
}

TEST(TokenizerUnicode, NormalizeNfcComposesReordersAndLeavesNfcAlone) {
  std::string out = "untouched";
  EXPECT_FALSE(NormalizeNfc("plain ASCII, \xC3\xA9t\xC3\xA9 (precomposed)", &out));
  EXPECT_FALSE(NormalizeNfc("\xE4\xB8\xAD\xE6\x96\x87 \xF0\x9F\x98\x80", &out));  // CJK, emoji: already NFC
  EXPECT_EQ(out, "untouched");
  ASSERT_TRUE(NormalizeNfc("Cafe\xCC\x81", &out));  // e + U+0301
  EXPECT_EQ(out, "Caf\xC3\xA9");
  ASSERT_TRUE(NormalizeNfc("\xE2\x84\xAB", &out));  // ANGSTROM SIGN -> A with ring (singleton)
  EXPECT_EQ(out, "\xC3\x85");
  ASSERT_TRUE(NormalizeNfc("\xE1\x84\x80\xE1\x85\xA1\xE1\x86\xA8", &out));  // Hangul jamo -> one syllable
  EXPECT_EQ(out, "\xEA\xB0\x81");
  ASSERT_TRUE(NormalizeNfc("a\xCC\x82\xCC\xA3", &out));  // circumflex, dot below: reordered, composed
  EXPECT_EQ(out, "\xE1\xBA\xAD");
  EXPECT_FALSE(NormalizeNfc("\xEF\xAC\x81", &out));  // the fi ligature is NFKC's business, not NFC's
}

class TokenizerParity : public ::testing::TestWithParam<std::string> {};

TEST_P(TokenizerParity, MatchesReferenceExactly) {
  if (!HaveNodeModules()) {
    GTEST_SKIP() << "reference tokenizers not installed: run `npm ci` in tests/tokenizer_ref "
                    "(scripts/setup.sh does)";
  }
  const std::string name = GetParam();
  auto path = VocabGguf(name);
  ASSERT_TRUE(path) << "converting the " << name << " tokenizer failed";
  auto gguf = GgufFile::Open(*path);
  ASSERT_TRUE(gguf.ok()) << gguf.status().ToString();
  auto tok_or = Tokenizer::FromGguf(**gguf);
  ASSERT_TRUE(tok_or.ok()) << tok_or.status().ToString();
  const Tokenizer& tok = **tok_or;

  const auto corpus = Corpus();
  auto ref = ReferenceIds(name);
  ASSERT_TRUE(ref) << "node encode.js " << name << " failed";
  ASSERT_EQ(ref->plain.size(), corpus.size());
  // Qwen3 NFC-normalizes its input, so its text decodes as the NFC form.
  std::vector<std::string> decoded = corpus;
  if (name == "qwen3") {
    auto nfc = NfcCorpus();
    ASSERT_TRUE(nfc && nfc->size() == corpus.size()) << "node could not normalize the corpus";
    decoded = *nfc;
    EXPECT_GE(std::count_if(corpus.begin(), corpus.end(), [&, i = size_t{0}](const std::string& t) mutable {
                return t != decoded[i++];
              }), 2) << "the corpus should hold text that NFC changes";
  }

  // The HF tokenizers always split special-token text out; gpt-3-encoder never does.
  const bool parse_special = name != "gpt2";
  int compared = 0;
  for (size_t i = 0; i < corpus.size(); ++i) {
    const std::string& text = corpus[i];
    EXPECT_EQ(Show(EncodeOrDie(tok, text, {.add_bos = false, .add_eos = false, .parse_special = parse_special})),
              Show(ref->plain[i]))
        << name << " corpus entry " << i << ": " << nlohmann::json(text).dump();
    EXPECT_EQ(Show(EncodeOrDie(tok, text, {.add_bos = true, .add_eos = true, .parse_special = parse_special})),
              Show(ref->special[i]))
        << name << " (with special tokens) corpus entry " << i << ": " << nlohmann::json(text).dump();
    ++compared;
  }
  EXPECT_EQ(compared, static_cast<int>(corpus.size()));

  // Round trip, specials left as text. SentencePiece writes spaces as ▁, so
  // a literal ▁ in the input comes back as a space (llama.cpp and HF alike).
  for (size_t i = 0; i < corpus.size(); ++i) {
    const std::string& text = corpus[i];
    if (tok.model_name() == "llama" && text.find("\xE2\x96\x81") != std::string::npos) continue;
    const Ids ids = EncodeOrDie(tok, text, {.add_bos = true});
    EXPECT_EQ(nlohmann::json(tok.Decode(ids)).dump(), nlohmann::json(decoded[i]).dump()) << name;
  }
}

TEST_P(TokenizerParity, LongTextIsFast) {
  if (!HaveNodeModules()) GTEST_SKIP() << "reference tokenizers not installed (tests/tokenizer_ref)";
  const std::string name = GetParam();
  auto path = VocabGguf(name);
  ASSERT_TRUE(path);
  auto gguf = GgufFile::Open(*path);
  ASSERT_TRUE(gguf.ok());
  auto tok = Tokenizer::FromGguf(**gguf);
  ASSERT_TRUE(tok.ok());
  std::string text;
  for (const auto& s : Corpus()) {
    if (s.find("\xE2\x96\x81") == std::string::npos) text += s + "\n";  // see the round trip above
  }
  while (text.size() < 100 * 1024) text += text;
  const auto t0 = std::chrono::steady_clock::now();
  const Ids ids = EncodeOrDie(**tok, text);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(s, kLongTextSeconds) << name << ": " << text.size() << " bytes took " << s << " s";
  std::string want = text;
  if (name == "qwen3") NormalizeNfc(text, &want);  // it decodes as NFC text
  EXPECT_TRUE((*tok)->Decode(ids) == want) << name << ": long text does not round-trip";
}

INSTANTIATE_TEST_SUITE_P(Reference, TokenizerParity, ::testing::Values("llama2", "llama3", "qwen3", "gpt2"),
                         [](const auto& info) { return info.param; });

// The SentencePiece library on a Llama 2 style vocabulary (the llama2
// package's, with scores from its merges) must agree with Strata too.
TEST(TokenizerSentencePiece, Llama2VocabMatchesSentencePieceLibrary) {
  if (!HaveNodeModules()) GTEST_SKIP() << "reference tokenizers not installed (tests/tokenizer_ref)";
  if (!RunCommand("/usr/bin/python3 -c 'import sentencepiece' 2>/dev/null")) {
    GTEST_SKIP() << "python3-sentencepiece is not installed";
  }
  auto path = VocabGguf("llama2");
  ASSERT_TRUE(path);
  auto out = RunCommand("/usr/bin/python3 '" + SourcePath("tools/tokenizer/spm_reference.py") + "' '" + *path + "' '" +
                 SourcePath("tests/data/tokenizer_corpus.json") + "'");
  ASSERT_TRUE(out);
  const auto ref = nlohmann::json::parse(*out).get<std::vector<Ids>>();
  auto gguf = GgufFile::Open(*path);
  ASSERT_TRUE(gguf.ok());
  auto tok = Tokenizer::FromGguf(**gguf);
  ASSERT_TRUE(tok.ok());
  const auto corpus = Corpus();
  ASSERT_EQ(ref.size(), corpus.size());
  for (size_t i = 0; i < corpus.size(); ++i) {
    EXPECT_EQ(Show(EncodeOrDie(**tok, corpus[i], {.add_bos = false})), Show(ref[i]))
        << "corpus entry " << i << ": " << nlohmann::json(corpus[i]).dump();
  }
}

// ---------------------------------------------------------------------------
// stories260K.gguf: a real llama.cpp-converted SentencePiece vocabulary.

const char* kStories = "/work/shared/models/stories260K.gguf";

std::string StoriesPath() {
  // The models folder sits next to the checkout (../shared/models).
  const std::string rel = SourcePath("../shared/models/stories260K.gguf");
  return fs::exists(rel) ? rel : kStories;
}

TEST(TokenizerStories, OnceUponATime) {
  const std::string path = StoriesPath();
  if (!fs::exists(path)) GTEST_SKIP() << path << " not present";
  auto gguf = GgufFile::Open(path);
  ASSERT_TRUE(gguf.ok()) << gguf.status().ToString();
  auto tok = Tokenizer::FromGguf(**gguf);
  ASSERT_TRUE(tok.ok()) << tok.status().ToString();
  EXPECT_EQ((*tok)->vocab_size(), 512);
  EXPECT_EQ((*tok)->model_name(), "llama");
  // SentencePiece (python3-sentencepiece, via tools/tokenizer/spm_reference.py)
  // gives 403 407 261 378 for this vocabulary; BOS = 1 comes first.
  const Ids ids = EncodeOrDie(**tok, "Once upon a time");
  EXPECT_EQ(ids, (Ids{1, 403, 407, 261, 378}));
  EXPECT_EQ((*tok)->Decode(ids), "Once upon a time");
  EXPECT_TRUE((*tok)->IsEndOfGeneration(2));
}

TEST(TokenizerStories, CorpusMatchesSentencePieceLibrary) {
  const std::string path = StoriesPath();
  if (!fs::exists(path)) GTEST_SKIP() << path << " not present";
  if (!RunCommand("/usr/bin/python3 -c 'import sentencepiece' 2>/dev/null")) {
    GTEST_SKIP() << "python3-sentencepiece is not installed";
  }
  auto out = RunCommand("/usr/bin/python3 '" + SourcePath("tools/tokenizer/spm_reference.py") + "' '" + path + "' '" +
                 SourcePath("tests/data/tokenizer_corpus.json") + "'");
  ASSERT_TRUE(out);
  const auto ref = nlohmann::json::parse(*out).get<std::vector<Ids>>();
  auto gguf = GgufFile::Open(path);
  ASSERT_TRUE(gguf.ok());
  auto tok = Tokenizer::FromGguf(**gguf);
  ASSERT_TRUE(tok.ok());
  const auto corpus = Corpus();
  ASSERT_EQ(ref.size(), corpus.size());
  for (size_t i = 0; i < corpus.size(); ++i) {
    EXPECT_EQ(Show(EncodeOrDie(**tok, corpus[i], {.add_bos = false})), Show(ref[i]))
        << "corpus entry " << i << ": " << nlohmann::json(corpus[i]).dump();
  }
}

}  // namespace
}  // namespace strata
