#include "cli/common.h"

#include <unistd.h>

#include <chrono>
#include <fstream>
#include <sstream>
#include <thread>

namespace strata::cli {

namespace {
double NowSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
}  // namespace

void AddModelFlags(CLI::App* app, ModelFlags* f, bool need_ctx) {
  app->add_option("-m,--model", f->model_path, "GGUF model file")->required();
  app->add_option("-t,--threads", f->threads, "threads (default: all cores)")->check(CLI::Range(0, 1024));
  if (need_ctx) {
    app->add_option("-c,--ctx-size", f->ctx, "context size in tokens (default: the model's)")
        ->check(CLI::Range(int64_t{0}, int64_t{1} << 22));
  }
  app->add_option("-b,--batch-size", f->batch, "prompt tokens per forward pass")->check(CLI::Range(int64_t{1}, int64_t{1} << 16));
}

int ResolveThreads(int requested) {
  if (requested > 0) return requested;
  const unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw);
}

Expected<std::unique_ptr<Model>> LoadModel(const ModelFlags& f) { return Model::Load(f.model_path); }

void AddPromptFlags(CLI::App* app, PromptFlags* f) {
  auto* p = app->add_option("-p,--prompt", f->prompt, "prompt text");
  auto* file = app->add_option("-f,--file", f->file, "read the prompt from a file");
  p->excludes(file);
}

Expected<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::IoError("cannot open '" + path + "'");
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return Status::IoError("cannot read '" + path + "'");
  return ss.str();
}

Expected<std::string> ReadPrompt(const PromptFlags& f) {
  if (!f.file.empty()) return ReadFile(f.file);
  return f.prompt;
}

void AddSamplingFlags(CLI::App* app, SamplingParams* p) {
  app->add_option("--temp", p->temperature, "temperature (0: greedy)")->capture_default_str();
  app->add_option("--top-k", p->top_k, "top-k (0: off)")->capture_default_str();
  app->add_option("--top-p", p->top_p, "top-p (1: off)")->capture_default_str();
  app->add_option("--min-p", p->min_p, "min-p (0: off)")->capture_default_str();
  app->add_option("--repeat-penalty", p->repeat_penalty, "repetition penalty (1: off)")->capture_default_str();
  app->add_option("--repeat-last-n", p->repeat_last_n, "tokens the penalties look back (-1: all)")->capture_default_str();
  app->add_option("--presence-penalty", p->presence_penalty, "presence penalty (0: off)")->capture_default_str();
  app->add_option("--frequency-penalty", p->frequency_penalty, "frequency penalty (0: off)")->capture_default_str();
  app->add_option("-s,--seed", p->seed, "RNG seed (default: random)");
}

int& ExitCode() {
  static int code = 0;
  return code;
}

int Fail(const Status& st) {
  std::fprintf(stderr, "error: %s\n", st.ToString().c_str());
  return 1;
}

ProgressBar::ProgressBar(std::string label, int64_t total)
    : label_(std::move(label)), total_(total < 1 ? 1 : total), enabled_(isatty(STDERR_FILENO) != 0),
      start_(NowSeconds()) {}

void ProgressBar::Update(int64_t done, const std::string& suffix) {
  if (!enabled_) return;
  const double now = NowSeconds();
  if (done < total_ && now - last_draw_ < 0.1) return;
  last_draw_ = now;
  const int width = 30;
  const double frac = static_cast<double>(done) / static_cast<double>(total_);
  const int fill = static_cast<int>(frac * width + 0.5);
  const double elapsed = now - start_;
  const double eta = frac > 0 ? elapsed * (1 - frac) / frac : 0;
  std::fprintf(stderr, "\r%s [%.*s%*s] %3d%% %lld/%lld  %.0fs left %s\033[K", label_.c_str(), fill,
               "##############################", width - fill, "", static_cast<int>(frac * 100),
               static_cast<long long>(done), static_cast<long long>(total_), eta, suffix.c_str());
  std::fflush(stderr);
}

void ProgressBar::Finish() {
  if (!enabled_) return;
  std::fprintf(stderr, "\n");
}

}  // namespace strata::cli
