// A loaded Llama-family model (llama, qwen2, qwen3) and its forward pass.
//
// Weights stay in the mmapped GGUF (zero-copy); only norms and biases are
// converted to float at load. The forward pass takes a batch of token spans
// from one or more sequences, writes their K/V into a KvCache, and produces
// logits for the rows that ask for them.
//
// Thread-safety: a Model is immutable after Load and may be shared; a
// ForwardContext (scratch + thread pool) belongs to one thread.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "base/status.h"
#include "base/thread_pool.h"
#include "kernels/matmul.h"
#include "model/forward_hooks.h"
#include "model/kv_memory.h"
#include "model/model_config.h"
#include "model/tokenizer.h"

namespace strata {

class GgufFile;

struct LayerWeights {
  std::vector<float> attn_norm;
  WeightView wq, wk, wv, wo;
  std::vector<float> bq, bk, bv;          // qwen2 only
  std::vector<float> q_norm, k_norm;      // qwen3 only: [head_dim]
  std::vector<float> ffn_norm;
  WeightView ffn_gate, ffn_up, ffn_down;
};

// One sequence's part of a batch: tokens at positions pos0, pos0+1, ...
struct BatchSeq {
  int seq = 0;                        // KV slot
  std::span<const TokenId> tokens;
  int64_t pos0 = 0;
  bool all_logits = false;            // logits for every token, else the last only
};

class Model {
 public:
  static Expected<std::unique_ptr<Model>> Load(const std::string& path);
  ~Model();

  const ModelConfig& config() const { return config_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  const GgufFile& gguf() const { return *gguf_; }
  const std::vector<LayerWeights>& layers() const { return layers_; }
  // Weight bytes one decode step reads (all matrices, one output row set).
  size_t weight_bytes_per_token() const;
  // The dominant weight type ("q4_K", "f16", ...), for bench tables.
  std::string weight_type_summary() const;
  uint64_t n_params() const { return n_params_; }
  // xxh3-128 of the whole GGUF file, as 32 hex digits: identical across
  // processes and machines for the same file, different for any change of
  // weights, shapes or tokenizer. Part of every KV cache key. Computed on
  // first use (reads every byte once). Thread-safe.
  const std::string& fingerprint() const;

 private:
  friend class ForwardContext;
  Model() = default;
  Status BindWeights();

  std::unique_ptr<GgufFile> gguf_;
  ModelConfig config_;
  std::unique_ptr<Tokenizer> tokenizer_;
  WeightView token_embd_;
  WeightView output_;
  std::vector<float> output_norm_;
  std::vector<float> rope_freq_factors_;  // llama3 files may carry rope_freqs.weight
  std::vector<LayerWeights> layers_;
  uint64_t n_params_ = 0;
  mutable std::once_flag fingerprint_once_;
  mutable std::string fingerprint_;
};

// Runs forward passes of one Model over one KvCache.
class ForwardContext {
 public:
  ForwardContext(const Model& model, int n_threads);
  ~ForwardContext();

  // Computes the batch, writing K/V of every token into `kv` at its
  // position. Logit rows are laid out in batch order: per sequence either
  // one row (last token) or one per token. Returns them as [rows][vocab].
  Expected<std::span<const float>> Forward(std::span<const BatchSeq> batch, KvCache& kv,
                                           ForwardHooks* hooks = nullptr);

  ThreadPool& pool() { return pool_; }
  const Model& model() const { return model_; }

 private:
  void EnsureScratch(int64_t n_tokens, int64_t n_logit_rows);

  const Model& model_;
  ThreadPool pool_;
  std::unique_ptr<Rope> rope_;
  std::vector<float> x_, xb_, q_, k_, v_, att_, gate_, up_, logits_, logit_in_;
  std::vector<int32_t> positions_;
};

}  // namespace strata
