#include <cstdio>
#include <map>

#include "cli/common.h"
#include "model/gguf.h"

namespace strata::cli {

namespace {

struct InfoFlags {
  std::string model_path;
  bool tensors = false;
  bool metadata = false;
};

std::string ValueString(const GgufValue& v) {
  if (auto* u = std::get_if<uint64_t>(&v.v)) return std::to_string(*u);
  if (auto* i = std::get_if<int64_t>(&v.v)) return std::to_string(*i);
  if (auto* d = std::get_if<double>(&v.v)) return std::to_string(*d);
  if (auto* b = std::get_if<bool>(&v.v)) return *b ? "true" : "false";
  if (auto* s = std::get_if<std::string_view>(&v.v)) {
    std::string out(s->substr(0, 80));
    for (char& ch : out) if (ch == '\n') ch = ' ';
    return "\"" + out + (s->size() > 80 ? "...\"" : "\"");
  }
  if (auto* a = std::get_if<std::shared_ptr<GgufArray>>(&v.v)) {
    return "[array of " + std::to_string((*a)->count) + "]";
  }
  return "?";
}

int RunInfo(const InfoFlags& f) {
  ModelFlags mf;
  mf.model_path = f.model_path;
  auto model = LoadModel(mf);
  if (!model.ok()) return Fail(model.status());
  const Model& m = **model;
  const ModelConfig& c = m.config();
  const Tokenizer& tok = m.tokenizer();
  std::printf("file:          %s (GGUF v%u)\n", f.model_path.c_str(), m.gguf().version());
  if (!c.name.empty()) std::printf("name:          %s\n", c.name.c_str());
  std::printf("architecture:  %s\n", c.arch_name.c_str());
  std::printf("parameters:    %.2f M\n", static_cast<double>(m.n_params()) / 1e6);
  std::printf("weights:       %s, %.1f MiB read per token\n", m.weight_type_summary().c_str(),
              static_cast<double>(m.weight_bytes_per_token()) / (1 << 20));
  std::printf("layers:        %d\n", c.n_layers);
  std::printf("dim:           %d (ffn %d)\n", c.dim, c.ffn_dim);
  std::printf("heads:         %d query, %d kv (%s), head dim %d\n", c.n_heads, c.n_kv_heads,
              c.n_kv_heads == c.n_heads ? "MHA" : c.n_kv_heads == 1 ? "MQA" : "GQA", c.head_dim);
  std::printf("context:       %d\n", c.context_length);
  std::printf("rope:          %s, theta %g%s\n", c.rope.neox ? "neox" : "normal", c.rope.theta,
              c.rope.llama3_factor > 0 ? ", llama3 scaling" : "");
  std::printf("output:        %s\n", c.tied_output ? "tied to token embedding" : "separate");
  std::printf("vocabulary:    %d tokens (%s), bos %d, eos %d\n", tok.vocab_size(),
              std::string(tok.model_name()).c_str(), tok.bos(), tok.eos());
  if (f.metadata) {
    std::printf("\nmetadata:\n");
    for (const std::string& k : m.gguf().Keys()) {
      std::printf("  %-48s %s\n", k.c_str(), ValueString(*m.gguf().Find(k)).c_str());
    }
  }
  if (f.tensors) {
    std::printf("\ntensors:\n");
    for (const auto& t : m.gguf().tensors()) {
      std::string shape;
      for (size_t i = 0; i < t.shape.size(); ++i) shape += (i ? " x " : "") + std::to_string(t.shape[i]);
      std::printf("  %-36s %-6s %-20s %10zu bytes\n", t.name.c_str(), std::string(DTypeName(t.type)).c_str(),
                  shape.c_str(), t.nbytes);
    }
  }
  return 0;
}

}  // namespace

void RegisterInfo(CLI::App& app) {
  auto flags = std::make_shared<InfoFlags>();
  CLI::App* cmd = app.add_subcommand("info", "describe a GGUF model: shapes, types, tokenizer");
  cmd->add_option("-m,--model", flags->model_path, "GGUF model file")->required();
  cmd->add_flag("--tensors", flags->tensors, "list every tensor");
  cmd->add_flag("--metadata", flags->metadata, "list every metadata key");
  cmd->callback([flags] { ExitCode() = RunInfo(*flags); });
}

}  // namespace strata::cli
