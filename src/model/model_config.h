// Hyper-parameters of a Llama-family model, read from GGUF metadata.
#pragma once

#include <cstdint>
#include <string>

#include "base/status.h"
#include "kernels/ops.h"

namespace strata {

class GgufFile;

enum class Arch { kLlama, kQwen2, kQwen3 };

struct ModelConfig {
  Arch arch = Arch::kLlama;
  std::string arch_name;      // as in general.architecture
  std::string name;           // general.name, if present
  int n_layers = 0;
  int dim = 0;                // embedding_length
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;           // attention.key_length, default dim / n_heads
  int ffn_dim = 0;
  int vocab_size = 0;
  int context_length = 0;     // trained context
  float norm_eps = 1e-5f;
  RopeConfig rope;
  bool qkv_bias = false;      // qwen2
  bool qk_norm = false;       // qwen3
  bool tied_output = false;   // output.weight absent: reuse token_embd

  int q_dim() const { return n_heads * head_dim; }
  int kv_dim() const { return n_kv_heads * head_dim; }
};

// Validates everything the forward pass relies on (positive sizes, heads
// divisible, head_dim even, ...); unknown architectures are kUnsupported.
Expected<ModelConfig> ModelConfigFromGguf(const GgufFile& gguf);

std::string_view ArchName(Arch arch);

}  // namespace strata
