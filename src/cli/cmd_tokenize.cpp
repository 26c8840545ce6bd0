#include <cstdio>

#include "cli/common.h"
#include "model/gguf.h"

namespace strata::cli {

namespace {

struct TokenizeFlags {
  std::string model_path;
  PromptFlags prompt;
  bool ids_only = false;
  bool no_bos = false;
  bool special = false;
};

std::string Escape(std::string_view s) {
  std::string out;
  for (unsigned char ch : s) {
    if (ch == '\n') out += "\\n";
    else if (ch == '\t') out += "\\t";
    else if (ch == '\r') out += "\\r";
    else if (ch == '\'') out += "\\'";
    else if (ch < 0x20) { char b[8]; std::snprintf(b, sizeof b, "\\x%02x", ch); out += b; }
    else out += static_cast<char>(ch);
  }
  return out;
}

int RunTokenize(const TokenizeFlags& f) {
  auto text = ReadPrompt(f.prompt);
  if (!text.ok()) return Fail(text.status());
  // Only the tokenizer is needed: skip binding the weights.
  auto gguf = GgufFile::Open(f.model_path);
  if (!gguf.ok()) return Fail(gguf.status());
  auto tok = Tokenizer::FromGguf(**gguf);
  if (!tok.ok()) return Fail(tok.status());
  EncodeOptions eo;
  eo.add_bos = !f.no_bos;
  eo.parse_special = f.special;
  auto ids = (*tok)->Encode(*text, eo);
  if (!ids.ok()) return Fail(ids.status());
  if (f.ids_only) {
    std::printf("[");
    for (size_t i = 0; i < ids->size(); ++i) std::printf("%s%d", i ? ", " : "", (*ids)[i]);
    std::printf("]\n");
    return 0;
  }
  for (TokenId id : *ids) {
    std::printf("%6d -> '%s'\n", id, Escape((*tok)->TokenBytes(id)).c_str());
  }
  std::fprintf(stderr, "%zu tokens\n", ids->size());
  return 0;
}

}  // namespace

void RegisterTokenize(CLI::App& app) {
  auto flags = std::make_shared<TokenizeFlags>();
  CLI::App* cmd = app.add_subcommand("tokenize", "show how the model's tokenizer splits a text");
  cmd->add_option("-m,--model", flags->model_path, "GGUF model (or vocabulary-only GGUF)")->required();
  AddPromptFlags(cmd, &flags->prompt);
  cmd->add_flag("--ids", flags->ids_only, "print only the list of token ids");
  cmd->add_flag("--no-bos", flags->no_bos, "do not add the BOS token");
  cmd->add_flag("--special", flags->special, "parse special-token text");
  cmd->callback([flags] { ExitCode() = RunTokenize(*flags); });
}

}  // namespace strata::cli
