// llama-perplexity's method, so numbers compare one to one: the text is cut
// into chunks of n_ctx tokens, each chunk starts with BOS (when the model
// adds one), is evaluated from an empty cache, and only the second half of
// each chunk is scored (every scored token sees at least n_ctx/2 context).
#include <cmath>
#include <cstdio>

#include "cli/common.h"
#include "engine/generator.h"
#include "engine/perplexity.h"

namespace strata::cli {

namespace {

struct PerplexityFlags {
  ModelFlags model;
  PromptFlags text;
  int64_t chunks = -1;
};

int RunPerplexity(PerplexityFlags f) {
  if (f.text.file.empty() && f.text.prompt.empty()) return Fail(Status::InvalidArgument("give the text with -f FILE"));
  auto text = ReadPrompt(f.text);
  if (!text.ok()) return Fail(text.status());
  auto model = LoadModel(f.model);
  if (!model.ok()) return Fail(model.status());
  int64_t n_ctx = f.model.ctx > 0 ? f.model.ctx : 512;  // llama-perplexity's default
  auto gen = Generator::Create(**model, ResolveThreads(f.model.threads), n_ctx, f.model.batch);
  if (!gen.ok()) return Fail(gen.status());
  ProgressBar bar("perplexity", 1);
  bool bar_started = false;
  auto result = ComputePerplexity(**gen, *text, n_ctx, f.chunks, [&](const PerplexityProgress& p) {
    if (!bar_started) {
      bar = ProgressBar("perplexity", p.n_chunks);
      bar_started = true;
    }
    char buf[64];
    std::snprintf(buf, sizeof buf, "ppl %.4f", p.running_ppl);
    bar.Update(p.chunk + 1, buf);
  });
  bar.Finish();
  if (!result.ok()) return Fail(result.status());
  std::printf("chunks: %lld of %lld tokens, scored tokens: %lld\n", static_cast<long long>(result->n_chunks),
              static_cast<long long>(n_ctx), static_cast<long long>(result->n_scored));
  std::printf("Final estimate: PPL = %.4f +/- %.5f\n", result->ppl, result->ppl_stderr);
  return 0;
}

}  // namespace

void RegisterPerplexity(CLI::App& app) {
  auto flags = std::make_shared<PerplexityFlags>();
  CLI::App* cmd = app.add_subcommand("perplexity", "perplexity of a text file, computed as llama-perplexity does");
  AddModelFlags(cmd, &flags->model);
  AddPromptFlags(cmd, &flags->text);
  cmd->add_option("--chunks", flags->chunks, "score at most this many chunks (-1: all)");
  cmd->callback([flags] { ExitCode() = RunPerplexity(*flags); });
}

}  // namespace strata::cli
