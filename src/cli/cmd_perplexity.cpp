// llama-perplexity's method, so numbers compare one to one: the text is cut
// into chunks of n_ctx tokens, each chunk starts with BOS (when the model
// adds one), is evaluated from an empty cache, and only the second half of
// each chunk is scored (every scored token sees at least n_ctx/2 context).
//
// --kv-roundtrip ENC measures what a KV chunk encoding costs, the way
// llama-perplexity's --kl-divergence measures a quantized model against its
// base: each chunk's context KV goes through ENC and back, and the scored
// half's distributions are compared with the exact path's on the same chunk.
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>

#include "cli/common.h"
#include "engine/generator.h"
#include "engine/kv_roundtrip.h"
#include "engine/perplexity.h"

namespace strata::cli {

namespace {

struct PerplexityFlags {
  ModelFlags model;
  PromptFlags text;
  int64_t chunks = -1;
  std::string kv_roundtrip;  // "" or a chunk encoding, e.g. "int8", "lz4,int8"
  int64_t kv_chunk_tokens = 256;
  std::string json_out;
};

int RunPerplexity(PerplexityFlags f) {
  if (f.text.file.empty() && f.text.prompt.empty()) return Fail(Status::InvalidArgument("give the text with -f FILE"));
  PerplexityOptions options;
  options.n_ctx = f.model.ctx > 0 ? f.model.ctx : 512;  // llama-perplexity's default
  options.max_chunks = f.chunks;
  options.kv_chunk_tokens = f.kv_chunk_tokens;
  if (!f.kv_roundtrip.empty()) {
    auto enc = ParseChunkEncodingSpec(f.kv_roundtrip);
    if (!enc.ok()) return Fail(Status(enc.status().code(), "--kv-roundtrip: " + enc.status().message()));
    options.kv_roundtrip = *enc;
  }
  auto text = ReadPrompt(f.text);
  if (!text.ok()) return Fail(text.status());
  auto model = LoadModel(f.model);
  if (!model.ok()) return Fail(model.status());
  const int64_t n_ctx = options.n_ctx;
  auto gen = Generator::Create(**model, ResolveThreads(f.model.threads), n_ctx, f.model.batch);
  if (!gen.ok()) return Fail(gen.status());
  ProgressBar bar("perplexity", 1);
  bool bar_started = false;
  auto result = ComputePerplexity(**gen, *text, options, [&](const PerplexityProgress& p) {
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
  const auto& q = result->kv_roundtrip;
  if (q) {
    const std::string enc = ChunkEncodingName(q->encoding);
    std::printf("KV round trip: the first %lld of each chunk's %lld context positions went through %s chunks of "
                "%lld tokens",
                static_cast<long long>(q->roundtrip_positions), static_cast<long long>(n_ctx / 2), enc.c_str(),
                static_cast<long long>(q->chunk_tokens));
    if (q->exact_positions > 0) {
      std::printf(" (the last %lld fill no whole chunk and stay exact)", static_cast<long long>(q->exact_positions));
    }
    std::printf("\n");
    std::printf("exact:      PPL = %.4f +/- %.5f\n", q->exact_ppl, q->exact_ppl_stderr);
    std::printf("round trip: PPL = %.4f +/- %.5f (ratio %.6f)\n", result->ppl, result->ppl_stderr,
                result->ppl / q->exact_ppl);
    std::printf("KL(exact || round trip) per scored token: mean %.6g +/- %.2g nats, max %.6g\n", q->mean_kl,
                q->kl_stderr, q->max_kl);
    std::printf("top-1 token changed: %lld of %lld scored tokens (%.4f%%)\n", static_cast<long long>(q->top1_changed),
                static_cast<long long>(result->n_scored), 100.0 * q->top1_change_rate);
  }
  std::printf("Final estimate: PPL = %.4f +/- %.5f\n", result->ppl, result->ppl_stderr);
  if (!f.json_out.empty()) {
    nlohmann::json j;
    j["model"] = f.model.model_path;
    j["n_ctx"] = n_ctx;
    j["chunks"] = result->n_chunks;
    j["scored_tokens"] = result->n_scored;
    j["ppl"] = result->ppl;
    j["ppl_stderr"] = result->ppl_stderr;
    j["mean_nll"] = result->mean_nll;
    if (q) {
      j["kv_roundtrip"] = {{"encoding", f.kv_roundtrip},
                           {"dtype", std::string(ChunkDTypeName(q->encoding.dtype))},
                           {"codec", std::string(ChunkCodecName(q->encoding.codec))},
                           {"chunk_tokens", q->chunk_tokens},
                           {"roundtrip_positions_per_chunk", q->roundtrip_positions},
                           {"exact_positions_per_chunk", q->exact_positions},
                           {"exact_ppl", q->exact_ppl},
                           {"exact_ppl_stderr", q->exact_ppl_stderr},
                           {"exact_mean_nll", q->exact_mean_nll},
                           {"mean_kl", q->mean_kl},
                           {"kl_stderr", q->kl_stderr},
                           {"max_kl", q->max_kl},
                           {"top1_changed", q->top1_changed},
                           {"top1_change_rate", q->top1_change_rate}};
    }
    std::ofstream out(f.json_out);
    out << j.dump(2) << "\n";
    if (!out) return Fail(Status::IoError("cannot write " + f.json_out));
  }
  return 0;
}

}  // namespace

void RegisterPerplexity(CLI::App& app) {
  auto flags = std::make_shared<PerplexityFlags>();
  CLI::App* cmd = app.add_subcommand("perplexity", "perplexity of a text file, computed as llama-perplexity does");
  AddModelFlags(cmd, &flags->model);
  AddPromptFlags(cmd, &flags->text);
  cmd->add_option("--chunks", flags->chunks, "score at most this many chunks (-1: all)");
  cmd->add_option("--kv-roundtrip", flags->kv_roundtrip,
                  "also score each chunk with its context's KV (first half) encoded and decoded in this chunk "
                  "encoding (f16 or int8, optionally with raw, zstd or lz4: e.g. int8, lz4,int8), as a store tier "
                  "would deliver it; reports that perplexity and, against the exact path on the same chunks, the "
                  "mean and max KL divergence KL(exact || round trip) per scored token and the share of scored "
                  "tokens whose top-1 token changes. Costs ~1.5x the time");
  cmd->add_option("--kv-chunk-tokens", flags->kv_chunk_tokens,
                  "positions per encoded chunk for --kv-roundtrip; context positions after the last whole chunk "
                  "stay exact")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--json", flags->json_out, "also write the results as JSON to this file");
  cmd->callback([flags] { ExitCode() = RunPerplexity(*flags); });
}

}  // namespace strata::cli
