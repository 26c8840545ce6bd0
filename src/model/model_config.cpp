#include "model/model_config.h"

#include <cmath>

#include "model/gguf.h"

namespace strata {

std::string_view ArchName(Arch arch) {
  switch (arch) {
    case Arch::kLlama: return "llama";
    case Arch::kQwen2: return "qwen2";
    case Arch::kQwen3: return "qwen3";
  }
  return "?";
}

namespace {

Expected<int> GetPositiveInt(const GgufFile& g, const std::string& key, int64_t max_value) {
  auto v = g.GetUint(key);
  if (!v.ok()) return v.take_status();
  if (*v == 0 || *v > static_cast<uint64_t>(max_value)) {
    return Status::InvalidArgument("metadata " + key + " = " + std::to_string(*v) +
                                   " is out of range (1.." + std::to_string(max_value) + ")");
  }
  return static_cast<int>(*v);
}

}  // namespace

Expected<ModelConfig> ModelConfigFromGguf(const GgufFile& g) {
  ModelConfig c;
  STRATA_ASSIGN_OR_RETURN(c.arch_name, g.GetString("general.architecture"));
  if (c.arch_name == "llama") {
    c.arch = Arch::kLlama;
  } else if (c.arch_name == "qwen2") {
    c.arch = Arch::kQwen2;
  } else if (c.arch_name == "qwen3") {
    c.arch = Arch::kQwen3;
  } else {
    return Status::Unsupported("model architecture '" + c.arch_name +
                               "' is not supported (supported: llama, qwen2, qwen3)");
  }
  if (auto n = g.GetString("general.name"); n.ok()) c.name = *n;
  const std::string a = c.arch_name + ".";
  STRATA_ASSIGN_OR_RETURN(c.n_layers, GetPositiveInt(g, a + "block_count", 1024));
  STRATA_ASSIGN_OR_RETURN(c.dim, GetPositiveInt(g, a + "embedding_length", 1 << 16));
  STRATA_ASSIGN_OR_RETURN(c.n_heads, GetPositiveInt(g, a + "attention.head_count", 1024));
  c.n_kv_heads = c.n_heads;
  if (g.Has(a + "attention.head_count_kv")) {
    STRATA_ASSIGN_OR_RETURN(c.n_kv_heads, GetPositiveInt(g, a + "attention.head_count_kv", 1024));
  }
  STRATA_ASSIGN_OR_RETURN(c.ffn_dim, GetPositiveInt(g, a + "feed_forward_length", 1 << 18));
  STRATA_ASSIGN_OR_RETURN(c.context_length, GetPositiveInt(g, a + "context_length", 1 << 24));
  c.head_dim = c.dim / c.n_heads;
  if (g.Has(a + "attention.key_length")) {
    STRATA_ASSIGN_OR_RETURN(c.head_dim, GetPositiveInt(g, a + "attention.key_length", 1024));
  }
  if (g.Has(a + "attention.value_length")) {
    STRATA_ASSIGN_OR_RETURN(int v_len, GetPositiveInt(g, a + "attention.value_length", 1024));
    if (v_len != c.head_dim) {
      return Status::Unsupported("attention.value_length " + std::to_string(v_len) +
                                 " differs from key_length " + std::to_string(c.head_dim));
    }
  }
  if (c.n_heads % c.n_kv_heads != 0) {
    return Status::InvalidArgument("attention.head_count (" + std::to_string(c.n_heads) +
                                   ") is not a multiple of head_count_kv (" +
                                   std::to_string(c.n_kv_heads) + ")");
  }
  if (c.head_dim % 2 != 0) {
    return Status::InvalidArgument("head dimension " + std::to_string(c.head_dim) + " is odd; RoPE needs it even");
  }
  if (g.Has(a + "attention.layer_norm_rms_epsilon")) {
    STRATA_ASSIGN_OR_RETURN(double eps, g.GetFloat(a + "attention.layer_norm_rms_epsilon"));
    if (!(eps > 0 && eps < 1)) return Status::InvalidArgument("layer_norm_rms_epsilon out of range");
    c.norm_eps = static_cast<float>(eps);
  }
  c.rope.n_rot = c.head_dim;
  if (g.Has(a + "rope.dimension_count")) {
    STRATA_ASSIGN_OR_RETURN(int n_rot, GetPositiveInt(g, a + "rope.dimension_count", 1024));
    if (n_rot != c.head_dim) {
      return Status::Unsupported("partial rotary embeddings (rope.dimension_count " + std::to_string(n_rot) +
                                 " != head dim " + std::to_string(c.head_dim) + ") are not supported");
    }
  }
  c.rope.theta = 10000.0f;
  if (g.Has(a + "rope.freq_base")) {
    STRATA_ASSIGN_OR_RETURN(double theta, g.GetFloat(a + "rope.freq_base"));
    if (!(theta > 1.0 && std::isfinite(theta))) return Status::InvalidArgument("rope.freq_base out of range");
    c.rope.theta = static_cast<float>(theta);
  }
  c.rope.neox = c.arch != Arch::kLlama;
  // rope.scaling.type: "linear" scales positions, "llama3" rescales
  // frequencies; "yarn" etc. change the math and are refused.
  if (auto type = g.GetString(a + "rope.scaling.type"); type.ok() && *type != "none") {
    if (*type == "linear") {
      STRATA_ASSIGN_OR_RETURN(double f, g.GetFloat(a + "rope.scaling.factor"));
      if (!(f >= 1.0 && f < 1e6)) return Status::InvalidArgument("rope.scaling.factor out of range");
      c.rope.freq_scale = static_cast<float>(1.0 / f);
    } else if (*type == "llama3") {
      STRATA_ASSIGN_OR_RETURN(double f, g.GetFloat(a + "rope.scaling.factor"));
      if (!(f >= 1.0 && f < 1e6)) return Status::InvalidArgument("rope.scaling.factor out of range");
      c.rope.llama3_factor = static_cast<float>(f);
      if (auto v = g.GetFloat(a + "rope.scaling.low_freq_factor"); v.ok()) c.rope.llama3_low_freq_factor = static_cast<float>(*v);
      if (auto v = g.GetFloat(a + "rope.scaling.high_freq_factor"); v.ok()) c.rope.llama3_high_freq_factor = static_cast<float>(*v);
      if (auto v = g.GetUint(a + "rope.scaling.original_context_length"); v.ok()) c.rope.llama3_original_context = static_cast<int>(*v);
      if (!(c.rope.llama3_high_freq_factor > c.rope.llama3_low_freq_factor)) {
        return Status::InvalidArgument("llama3 rope scaling needs high_freq_factor > low_freq_factor");
      }
    } else {
      return Status::Unsupported("rope scaling type '" + *type + "' is not supported (supported: linear, llama3)");
    }
  }
  c.qkv_bias = c.arch == Arch::kQwen2;
  c.qk_norm = c.arch == Arch::kQwen3;
  return c;
}

}  // namespace strata
