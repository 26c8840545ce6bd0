#include "model/model.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>

#include "kernels/attention.h"
#include "kernels/attention_paged.h"
#include "kernels/ops.h"
#include "kernels/quant.h"
#include "model/gguf.h"

#include <xxhash.h>

namespace strata {

namespace {

std::string ShapeString(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

class WeightBinder {
 public:
  explicit WeightBinder(const GgufFile& g) : g_(g) {}

  const GgufTensorInfo* Find(const std::string& name) const { return g_.FindTensor(name); }

  Expected<const GgufTensorInfo*> Get(const std::string& name, std::vector<int64_t> shape) {
    const GgufTensorInfo* t = g_.FindTensor(name);
    if (!t) return Status::NotFound("tensor '" + name + "' is missing from the model file");
    // GGUF drops trailing dimensions of 1; compare after trimming both.
    auto trim = [](std::vector<int64_t> v) {
      while (v.size() > 1 && v.back() == 1) v.pop_back();
      return v;
    };
    if (trim(t->shape) != trim(shape)) {
      return Status::InvalidArgument("tensor '" + name + "' has shape " + ShapeString(t->shape) +
                                     " but the model's hyper-parameters need " + ShapeString(shape));
    }
    n_params_ += static_cast<uint64_t>(t->n_elements());
    return t;
  }

  Expected<WeightView> Matrix(const std::string& name, int64_t ne0, int64_t ne1) {
    STRATA_ASSIGN_OR_RETURN(const GgufTensorInfo* t, Get(name, {ne0, ne1}));
    if (t->type == DType::kQ8_K) return Status::Unsupported("tensor '" + name + "' uses q8_K, an activation-only type");
    WeightView w;
    w.type = t->type;
    w.data = t->data;
    w.ne0 = ne0;
    w.ne1 = ne1;
    w.row_bytes = RowBytes(t->type, ne0);
    return w;
  }

  Expected<std::vector<float>> Vector(const std::string& name, int64_t n) {
    STRATA_ASSIGN_OR_RETURN(const GgufTensorInfo* t, Get(name, {n}));
    std::vector<float> out(static_cast<size_t>(n));
    DequantizeRow(t->type, t->data, out.data(), n);
    for (float f : out) {
      if (!std::isfinite(f)) return Status::Corrupt("tensor '" + name + "' contains NaN or infinity");
    }
    return out;
  }

  uint64_t n_params() const { return n_params_; }

 private:
  const GgufFile& g_;
  uint64_t n_params_ = 0;
};

}  // namespace

Model::~Model() = default;

Expected<std::unique_ptr<Model>> Model::Load(const std::string& path) {
  std::unique_ptr<Model> m(new Model());
  STRATA_ASSIGN_OR_RETURN(m->gguf_, GgufFile::Open(path));
  auto cfg = ModelConfigFromGguf(*m->gguf_);
  if (!cfg.ok()) return cfg.status().WithContext(path);
  m->config_ = *cfg;
  auto tok = Tokenizer::FromGguf(*m->gguf_);
  if (!tok.ok()) return tok.status().WithContext(path + ": tokenizer");
  m->tokenizer_ = std::move(*tok);
  Status st = m->BindWeights();
  if (!st.ok()) return st.WithContext(path);
  return m;
}

Status Model::BindWeights() {
  WeightBinder b(*gguf_);
  ModelConfig& c = config_;
  const GgufTensorInfo* embd = b.Find("token_embd.weight");
  if (!embd) return Status::NotFound("tensor 'token_embd.weight' is missing from the model file");
  if (embd->shape.size() != 2) return Status::InvalidArgument("token_embd.weight must be 2-D");
  c.vocab_size = static_cast<int>(embd->shape[1]);
  if (c.vocab_size < tokenizer_->vocab_size()) {
    return Status::InvalidArgument("the tokenizer has " + std::to_string(tokenizer_->vocab_size()) +
                                   " tokens but token_embd.weight only " + std::to_string(c.vocab_size) + " rows");
  }
  STRATA_ASSIGN_OR_RETURN(token_embd_, b.Matrix("token_embd.weight", c.dim, c.vocab_size));
  if (b.Find("output.weight")) {
    STRATA_ASSIGN_OR_RETURN(output_, b.Matrix("output.weight", c.dim, c.vocab_size));
    c.tied_output = false;
  } else {
    output_ = token_embd_;
    c.tied_output = true;
  }
  STRATA_ASSIGN_OR_RETURN(output_norm_, b.Vector("output_norm.weight", c.dim));
  if (b.Find("rope_freqs.weight")) {
    // Llama 3.1 files converted by llama.cpp carry per-frequency divisors
    // instead of (or besides) the scaling metadata; they win.
    STRATA_ASSIGN_OR_RETURN(rope_freq_factors_, b.Vector("rope_freqs.weight", c.head_dim / 2));
    for (float f : rope_freq_factors_) {
      if (!(f > 0)) return Status::InvalidArgument("rope_freqs.weight has a non-positive factor");
    }
    c.rope.llama3_factor = 0.0f;
  }
  layers_.resize(static_cast<size_t>(c.n_layers));
  for (int l = 0; l < c.n_layers; ++l) {
    LayerWeights& L = layers_[static_cast<size_t>(l)];
    const std::string p = "blk." + std::to_string(l) + ".";
    STRATA_ASSIGN_OR_RETURN(L.attn_norm, b.Vector(p + "attn_norm.weight", c.dim));
    STRATA_ASSIGN_OR_RETURN(L.wq, b.Matrix(p + "attn_q.weight", c.dim, c.q_dim()));
    STRATA_ASSIGN_OR_RETURN(L.wk, b.Matrix(p + "attn_k.weight", c.dim, c.kv_dim()));
    STRATA_ASSIGN_OR_RETURN(L.wv, b.Matrix(p + "attn_v.weight", c.dim, c.kv_dim()));
    STRATA_ASSIGN_OR_RETURN(L.wo, b.Matrix(p + "attn_output.weight", c.q_dim(), c.dim));
    // Bias and QK-norm tensors are used when present, whatever the arch:
    // several llama-arch finetunes ship biases too.
    if (b.Find(p + "attn_q.bias")) {
      STRATA_ASSIGN_OR_RETURN(L.bq, b.Vector(p + "attn_q.bias", c.q_dim()));
      STRATA_ASSIGN_OR_RETURN(L.bk, b.Vector(p + "attn_k.bias", c.kv_dim()));
      STRATA_ASSIGN_OR_RETURN(L.bv, b.Vector(p + "attn_v.bias", c.kv_dim()));
    } else if (c.arch == Arch::kQwen2) {
      return Status::NotFound("tensor '" + p + "attn_q.bias' is missing (qwen2 models have QKV biases)");
    }
    if (b.Find(p + "attn_q_norm.weight")) {
      STRATA_ASSIGN_OR_RETURN(L.q_norm, b.Vector(p + "attn_q_norm.weight", c.head_dim));
      STRATA_ASSIGN_OR_RETURN(L.k_norm, b.Vector(p + "attn_k_norm.weight", c.head_dim));
    } else if (c.arch == Arch::kQwen3) {
      return Status::NotFound("tensor '" + p + "attn_q_norm.weight' is missing (qwen3 models normalize Q and K)");
    }
    STRATA_ASSIGN_OR_RETURN(L.ffn_norm, b.Vector(p + "ffn_norm.weight", c.dim));
    STRATA_ASSIGN_OR_RETURN(L.ffn_gate, b.Matrix(p + "ffn_gate.weight", c.dim, c.ffn_dim));
    STRATA_ASSIGN_OR_RETURN(L.ffn_up, b.Matrix(p + "ffn_up.weight", c.dim, c.ffn_dim));
    STRATA_ASSIGN_OR_RETURN(L.ffn_down, b.Matrix(p + "ffn_down.weight", c.ffn_dim, c.dim));
  }
  n_params_ = b.n_params();
  return Status::Ok();
}

const std::string& Model::fingerprint() const {
  std::call_once(fingerprint_once_, [this] {
    const auto bytes = gguf_->bytes();
    const XXH128_hash_t h = XXH3_128bits(bytes.data(), bytes.size());
    char buf[33];
    std::snprintf(buf, sizeof buf, "%016llx%016llx", static_cast<unsigned long long>(h.high64),
                  static_cast<unsigned long long>(h.low64));
    fingerprint_ = buf;
  });
  return fingerprint_;
}

size_t Model::weight_bytes_per_token() const {
  size_t total = WeightBytes(output_);
  for (const auto& L : layers_) {
    total += WeightBytes(L.wq) + WeightBytes(L.wk) + WeightBytes(L.wv) + WeightBytes(L.wo) +
             WeightBytes(L.ffn_gate) + WeightBytes(L.ffn_up) + WeightBytes(L.ffn_down);
  }
  return total;
}

std::string Model::weight_type_summary() const {
  std::map<std::string, size_t> bytes;
  for (const auto& L : layers_) {
    for (const WeightView* w : {&L.wq, &L.wk, &L.wv, &L.wo, &L.ffn_gate, &L.ffn_up, &L.ffn_down}) {
      bytes[std::string(DTypeName(w->type))] += WeightBytes(*w);
    }
  }
  std::string best;
  size_t most = 0;
  for (const auto& [name, n] : bytes) {
    if (n > most) { most = n; best = name; }
  }
  return best;
}

ForwardContext::ForwardContext(const Model& model, int n_threads) : model_(model), pool_(n_threads) {
  RopeConfig rc = model.config().rope;
  rc.freq_factors = model.rope_freq_factors_;
  rope_ = std::make_unique<Rope>(rc);
}

ForwardContext::~ForwardContext() = default;

void ForwardContext::EnsureScratch(int64_t T, int64_t R) {
  const ModelConfig& c = model_.config();
  auto grow = [](std::vector<float>& v, int64_t n) {
    if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
  };
  grow(x_, T * c.dim);
  grow(xb_, T * std::max(c.dim, c.q_dim()));
  grow(q_, T * c.q_dim());
  grow(k_, T * c.kv_dim());
  grow(v_, T * c.kv_dim());
  grow(att_, T * c.q_dim());
  grow(gate_, T * c.ffn_dim);
  grow(up_, T * c.ffn_dim);
  grow(logit_in_, R * c.dim);
  grow(logits_, R * c.vocab_size);
  if (static_cast<int64_t>(positions_.size()) < T) positions_.resize(static_cast<size_t>(T));
}

Expected<std::span<const float>> ForwardContext::Forward(std::span<const BatchSeq> batch, KvCache& kv,
                                                         ForwardHooks* hooks) {
  const ModelConfig& c = model_.config();
  if (batch.empty()) return Status::InvalidArgument("empty batch");
  if (kv.n_layers() != c.n_layers || kv.kv_dim() != c.kv_dim()) {
    return Status::InvalidArgument("KV cache shape does not match the model");
  }
  int64_t T = 0, R = 0;
  for (const BatchSeq& s : batch) {
    if (s.tokens.empty()) return Status::InvalidArgument("batch sequence " + std::to_string(s.seq) + " has no tokens");
    if (s.seq < 0 || s.seq >= kv.max_seqs()) return Status::InvalidArgument("KV slot " + std::to_string(s.seq) + " does not exist");
    if (s.pos0 < 0) return Status::InvalidArgument("negative position");
    for (TokenId t : s.tokens) {
      if (t < 0 || t >= c.vocab_size) {
        return Status::InvalidArgument("token id " + std::to_string(t) + " is outside the vocabulary (0.." +
                                       std::to_string(c.vocab_size - 1) + ")");
      }
    }
    STRATA_RETURN_IF_ERROR(kv.Reserve(s.seq, s.pos0 + static_cast<int64_t>(s.tokens.size())));
    T += static_cast<int64_t>(s.tokens.size());
    R += s.all_logits ? static_cast<int64_t>(s.tokens.size()) : 1;
  }
  EnsureScratch(T, R);

  const int dim = c.dim, qd = c.q_dim(), kvd = c.kv_dim(), hd = c.head_dim;
  float* x = x_.data();
  float* xb = xb_.data();
  {
    int64_t t = 0;
    for (const BatchSeq& s : batch) {
      for (size_t i = 0; i < s.tokens.size(); ++i, ++t) {
        const auto* row = static_cast<const uint8_t*>(model_.token_embd_.data) +
                          static_cast<size_t>(s.tokens[i]) * model_.token_embd_.row_bytes;
        DequantizeRow(model_.token_embd_.type, row, x + t * dim, dim);
        positions_[static_cast<size_t>(t)] = static_cast<int32_t>(s.pos0 + static_cast<int64_t>(i));
      }
    }
  }
  const AttentionShape shape{c.n_heads, c.n_kv_heads, hd};
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));

  for (int l = 0; l < c.n_layers; ++l) {
    const LayerWeights& L = model_.layers_[static_cast<size_t>(l)];
    // --- attention block ---
    for (int64_t t = 0; t < T; ++t) RmsNorm(x + t * dim, L.attn_norm.data(), dim, c.norm_eps, xb + t * dim);
    if (hooks) hooks->LayerInput(l, xb, T, dim);
    Matmul(L.wq, xb, T, q_.data(), qd, pool_);   // [T, q_dim]
    Matmul(L.wk, xb, T, k_.data(), kvd, pool_);  // [T, kv_dim]
    Matmul(L.wv, xb, T, v_.data(), kvd, pool_);  // [T, kv_dim]
    if (!L.bq.empty()) {
      for (int64_t t = 0; t < T; ++t) {
        AddBias(q_.data() + t * qd, L.bq.data(), qd);
        AddBias(k_.data() + t * kvd, L.bk.data(), kvd);
        AddBias(v_.data() + t * kvd, L.bv.data(), kvd);
      }
    }
    if (!L.q_norm.empty()) {
      for (int64_t t = 0; t < T; ++t) {
        for (int h = 0; h < c.n_heads; ++h) {
          float* p = q_.data() + t * qd + h * hd;
          RmsNorm(p, L.q_norm.data(), hd, c.norm_eps, p);
        }
        for (int h = 0; h < c.n_kv_heads; ++h) {
          float* p = k_.data() + t * kvd + h * hd;
          RmsNorm(p, L.k_norm.data(), hd, c.norm_eps, p);
        }
      }
    }
    rope_->Apply(q_.data(), T, c.n_heads, hd, positions_.data());
    rope_->Apply(k_.data(), T, c.n_kv_heads, hd, positions_.data());

    int64_t off = 0;
    for (const BatchSeq& s : batch) {
      const KvLayerView view = kv.View(s.seq, l);
      const int64_t n = static_cast<int64_t>(s.tokens.size());
      for (int64_t i = 0; i < n; ++i) {
        fp16_t* krow = view.KRow(s.pos0 + i);
        fp16_t* vrow = view.VRow(s.pos0 + i);
        const float* ks = k_.data() + (off + i) * kvd;
        const float* vs = v_.data() + (off + i) * kvd;
        for (int j = 0; j < kvd; ++j) {
          krow[j] = Fp32ToFp16(ks[j]);
          vrow[j] = Fp32ToFp16(vs[j]);
        }
      }
      if (hooks) hooks->AfterKvWritten(l, s);
      off += n;
    }
    if (hooks) STRATA_RETURN_IF_ERROR(hooks->BeforeAttention(l));
    off = 0;
    for (const BatchSeq& s : batch) {
      const KvLayerView view = kv.View(s.seq, l);
      const int64_t n = static_cast<int64_t>(s.tokens.size());
      if (view.block_table != nullptr) {
        const PagedKvView paged{view.k, view.v, view.block_table, view.block_size, view.block_stride, view.stride};
        AttentionCausalPaged(q_.data() + off * qd, n, s.pos0, paged, shape, scale, att_.data() + off * qd, pool_);
      } else {
        AttentionCausal(q_.data() + off * qd, n, s.pos0, view.k, view.v, view.stride, shape, scale,
                        att_.data() + off * qd, pool_);
      }
      off += n;
    }
    Matmul(L.wo, att_.data(), T, xb, dim, pool_);  // [T, dim]
    for (int64_t i = 0; i < T * dim; ++i) x[i] += xb[i];

    // --- feed-forward block ---
    for (int64_t t = 0; t < T; ++t) RmsNorm(x + t * dim, L.ffn_norm.data(), dim, c.norm_eps, xb + t * dim);
    Matmul(L.ffn_gate, xb, T, gate_.data(), c.ffn_dim, pool_);  // [T, ffn]
    Matmul(L.ffn_up, xb, T, up_.data(), c.ffn_dim, pool_);      // [T, ffn]
    for (int64_t t = 0; t < T; ++t) SiluMul(gate_.data() + t * c.ffn_dim, up_.data() + t * c.ffn_dim, c.ffn_dim);
    Matmul(L.ffn_down, gate_.data(), T, xb, dim, pool_);        // [T, dim]
    for (int64_t i = 0; i < T * dim; ++i) x[i] += xb[i];
  }

  // Only rows that need logits pay for the output projection.
  int64_t r = 0, t = 0;
  for (const BatchSeq& s : batch) {
    const int64_t n = static_cast<int64_t>(s.tokens.size());
    for (int64_t i = s.all_logits ? 0 : n - 1; i < n; ++i, ++r) {
      RmsNorm(x + (t + i) * dim, model_.output_norm_.data(), dim, c.norm_eps, logit_in_.data() + r * dim);
    }
    t += n;
  }
  Matmul(model_.output_, logit_in_.data(), R, logits_.data(), c.vocab_size, pool_);
  return std::span<const float>(logits_.data(), static_cast<size_t>(R * c.vocab_size));
}

}  // namespace strata
