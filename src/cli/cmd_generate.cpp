#include <chrono>
#include <cstdio>

#include "cli/common.h"
#include "cli/kv_store_flags.h"
#include "engine/generator.h"
#include "engine/scheduler.h"
#include "kv/paged_kv_cache.h"

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
  KvStoreFlags store;
};

// With a KV cache store the request runs through the scheduler (as
// `strata serve` runs it): prompt KV the store holds is loaded instead of
// computed, and new full chunks are stored for the next run or process.
int RunGenerateWithStore(const GenerateFlags& f, const Model& m, const std::vector<TokenId>& ids) {
  auto setup = BuildKvStore(f.store, m);
  if (!setup.ok()) return Fail(setup.status());
  const ModelConfig& c = m.config();
  const int64_t model_ctx = f.model.ctx > 0 ? f.model.ctx : c.context_length;
  const int64_t prompt = static_cast<int64_t>(ids.size());
  if (prompt >= model_ctx) {
    return Fail(Status::OutOfRange("the prompt has " + std::to_string(prompt) + " tokens but the context holds " +
                                   std::to_string(model_ctx) + " (raise -c / --ctx-size or shorten the prompt)"));
  }
  // KV memory for this one request only (the pool is allocated up front).
  const int64_t want = f.n_predict < 0 ? model_ctx : prompt + f.n_predict + 1;
  const int block = 16;
  const int64_t ctx = std::min(model_ctx, (want + block - 1) / block * block);
  PagedKvOptions o;
  o.n_layers = c.n_layers;
  o.kv_dim = c.kv_dim();
  o.max_seqs = 1;
  o.max_positions = ctx;
  o.block_size = block;
  o.budget_bytes = static_cast<size_t>(c.kv_dim()) * sizeof(fp16_t) * 2 * static_cast<size_t>(c.n_layers) *
                   static_cast<size_t>(ctx + 2 * block);
  o.prefix_caching = false;
  o.model_fingerprint = m.fingerprint();
  auto kv = PagedKvCache::Create(o);
  if (!kv.ok()) return Fail(kv.status());
  SchedulerOptions so;
  so.step_tokens = f.model.batch;
  so.n_threads = ResolveThreads(f.model.threads);
  so.kv_store = setup->connector.get();
  auto sched = Scheduler::Create(m, **kv, so);
  if (!sched.ok()) return Fail(sched.status());
  RequestOptions ro;
  ro.max_tokens = f.n_predict < 0 ? ctx : f.n_predict;
  ro.sampling = f.sampling;
  ro.stop_strings = f.stops;
  ro.ignore_eos = f.ignore_eos;
  ro.save_decode_cache = f.store.save_decode_cache;
  RequestOutput final_out;
  int64_t generated = 0;
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  auto id = (*sched)->Submit(ids, ro, [&](const RequestOutput& out) {
    std::fwrite(out.text.data(), 1, out.text.size(), stdout);
    std::fflush(stdout);
    generated += static_cast<int64_t>(out.tokens.size());
    if (out.finished) final_out = out;
  });
  if (!id.ok()) return Fail(id.status());
  Status st = (*sched)->RunUntilIdle();
  const double total = std::chrono::duration<double>(Clock::now() - t0).count();
  std::fputc('\n', stdout);
  if (!st.ok()) return Fail(st);
  if (!final_out.error.ok()) return Fail(final_out.error);
  (*sched).reset();
  setup->store->Flush();  // stored chunks reach the disk / Redis before we exit
  const double ttft = final_out.ttft_seconds;
  const double pp = ttft > 0 ? static_cast<double>(prompt) / ttft : 0;
  const double tg = total > ttft && generated > 1 ? static_cast<double>(generated - 1) / (total - ttft) : 0;
  const KvStoreConnectorCounters cc = setup->connector->counters();
  std::fprintf(stderr, "\nprompt: %lld tokens, %.1f tokens/s (ttft %.3f s) | generated: %lld tokens, %.1f tokens/s | stop: %s\n",
               static_cast<long long>(prompt), pp, ttft, static_cast<long long>(generated), tg,
               std::string(StopReasonName(final_out.stop_reason)).c_str());
  std::fprintf(stderr, "kv store: %s; %s; %llu chunks stored, %llu corrupt, %llu fallbacks\n",
               setup->description.c_str(),
               DescribeStoreTokens(final_out.store_cached_tokens, final_out.store_tokens_by_tier).c_str(),
               static_cast<unsigned long long>(cc.stored_chunks), static_cast<unsigned long long>(cc.corrupt_chunks),
               static_cast<unsigned long long>(cc.fallbacks));
  return 0;
}

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
  if (KvStoreEnabled(f.store)) {
    if (!f.no_display_prompt) {
      std::fwrite(text->data(), 1, text->size(), stdout);
      std::fflush(stdout);
    }
    return RunGenerateWithStore(f, **model, *ids);
  }
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
  AddKvStoreFlags(cmd, &flags->store);
  cmd->callback([flags] {
    if (flags->prompt.prompt.empty() && flags->prompt.file.empty()) {
      ExitCode() = Fail(Status::InvalidArgument("give a prompt with -p TEXT or -f FILE"));
      return;
    }
    ExitCode() = RunGenerate(*flags);
  });
}

}  // namespace strata::cli
