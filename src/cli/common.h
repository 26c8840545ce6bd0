// Shared pieces of the strata subcommands: model flags, prompt reading,
// progress bars and error exits.
#pragma once

#include <CLI/CLI.hpp>

#include <cstdio>
#include <memory>
#include <string>

#include "base/status.h"
#include "engine/sampler.h"
#include "model/model.h"

namespace strata::cli {

struct ModelFlags {
  std::string model_path;
  int threads = 0;    // 0: all cores
  int64_t ctx = 0;    // 0: model's context
  int64_t batch = 512;
};

void AddModelFlags(CLI::App* app, ModelFlags* f, bool need_ctx = true);
int ResolveThreads(int requested);

// Loads a model, printing a clear error on failure.
Expected<std::unique_ptr<Model>> LoadModel(const ModelFlags& f);

// Prompt from -p or -f (a file); exactly one must be given unless optional.
struct PromptFlags {
  std::string prompt;
  std::string file;
  bool have_prompt = false;
};
void AddPromptFlags(CLI::App* app, PromptFlags* f);
Expected<std::string> ReadPrompt(const PromptFlags& f);
Expected<std::string> ReadFile(const std::string& path);

void AddSamplingFlags(CLI::App* app, SamplingParams* p);

// The process exit code, set by the subcommand that ran.
int& ExitCode();

// Prints "error: <message>" to stderr and returns 1.
int Fail(const Status& st);

// A one-line progress bar on stderr (only when stderr is a terminal, or
// when forced), redrawn at most ~10 times a second.
class ProgressBar {
 public:
  ProgressBar(std::string label, int64_t total);
  void Update(int64_t done, const std::string& suffix = "");
  void Finish();

 private:
  std::string label_;
  int64_t total_;
  bool enabled_;
  double last_draw_ = -1;
  double start_;
};

// Subcommands.
void RegisterGenerate(CLI::App& app);
void RegisterPerplexity(CLI::App& app);
void RegisterBench(CLI::App& app);
void RegisterTokenize(CLI::App& app);
void RegisterInfo(CLI::App& app);
void RegisterServe(CLI::App& app);
void RegisterEval(CLI::App& app);
void RegisterCache(CLI::App& app);

}  // namespace strata::cli
