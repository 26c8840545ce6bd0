// strata: the command-line front end. Flags follow llama.cpp's where the
// concept is the same (-m, -p, -f, -n, -c, -t, --temp, --seed, --top-k, ...).
#include <CLI/CLI.hpp>

#include "cli/common.h"

int main(int argc, char** argv) {
  CLI::App app{"Strata: an LLM inference engine built around its KV cache"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "strata 0.1.0");
  strata::cli::RegisterGenerate(app);
  strata::cli::RegisterPerplexity(app);
  strata::cli::RegisterBench(app);
  strata::cli::RegisterTokenize(app);
  strata::cli::RegisterInfo(app);
  strata::cli::RegisterServe(app);
  strata::cli::RegisterEval(app);
  strata::cli::RegisterCache(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  return strata::cli::ExitCode();
}
