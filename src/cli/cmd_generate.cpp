#include <cstdio>

#include "cli/common.h"
#include "engine/generator.h"

namespace strata::cli {

namespace {

struct GenerateFlags {
  ModelFlags model;
  PromptFlags prompt;
  SamplingParams sampling;
  int n_predict = 128;
  std::vector<std::string> stops;
  bool ignore_eos = false;
  bool no_display_prompt = false;
  bool special = false;
};

int RunGenerate(const GenerateFlags& f) {
  auto text = ReadPrompt(f.prompt);
  if (!text.ok()) return Fail(text.status());
  auto model = LoadModel(f.model);
  if (!model.ok()) return Fail(model.status());
  const Tokenizer& tok = (*model)->tokenizer();
  EncodeOptions eo;
  eo.add_bos = true;
  eo.parse_special = f.special;
  auto ids = tok.Encode(*text, eo);
  if (!ids.ok()) return Fail(ids.status().WithContext("prompt"));
  auto gen = Generator::Create(**model, ResolveThreads(f.model.threads), f.model.ctx, f.model.batch);
  if (!gen.ok()) return Fail(gen.status());
  GenerateOptions go;
  go.max_tokens = f.n_predict;
  go.sampling = f.sampling;
  go.stop_strings = f.stops;
  go.ignore_eos = f.ignore_eos;
  if (!f.no_display_prompt) {
    std::fwrite(text->data(), 1, text->size(), stdout);
    std::fflush(stdout);
  }
  auto result = (*gen)->Generate(*ids, go, [](std::string_view piece) {
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
    return true;
  });
  std::fputc('\n', stdout);
  if (!result.ok()) return Fail(result.status());
  const auto& r = *result;
  const double pp = r.prefill_seconds > 0 ? static_cast<double>(r.prompt_tokens) / r.prefill_seconds : 0;
  const double tg = r.decode_seconds > 0 ? static_cast<double>(r.output_tokens.size()) / r.decode_seconds : 0;
  std::fprintf(stderr, "\nprompt: %lld tokens, %.1f tokens/s | generated: %zu tokens, %.1f tokens/s | stop: %s\n",
               static_cast<long long>(r.prompt_tokens), pp, r.output_tokens.size(), tg,
               std::string(StopReasonName(r.stop_reason)).c_str());
  return 0;
}

}  // namespace

void RegisterGenerate(CLI::App& app) {
  auto flags = std::make_shared<GenerateFlags>();
  CLI::App* cmd = app.add_subcommand("generate", "generate text from a prompt, streaming it to the terminal");
  AddModelFlags(cmd, &flags->model);
  AddPromptFlags(cmd, &flags->prompt);
  cmd->add_option("-n,--n-predict", flags->n_predict, "tokens to generate (-1: until the context is full)")
      ->capture_default_str()->check(CLI::Range(-1, 1 << 24));
  AddSamplingFlags(cmd, &flags->sampling);
  cmd->add_option("--stop", flags->stops, "stop when this text appears (repeatable)");
  cmd->add_flag("--ignore-eos", flags->ignore_eos, "keep generating after end-of-generation tokens");
  cmd->add_flag("--no-display-prompt", flags->no_display_prompt, "print only the generated text");
  cmd->add_flag("--special", flags->special, "parse special-token text (e.g. <|im_start|>) in the prompt");
  cmd->callback([flags] {
    if (flags->prompt.prompt.empty() && flags->prompt.file.empty()) {
      ExitCode() = Fail(Status::InvalidArgument("give a prompt with -p TEXT or -f FILE"));
      return;
    }
    ExitCode() = RunGenerate(*flags);
  });
}

}  // namespace strata::cli
