// libFuzzer target for the GGUF reader: any input must parse or fail with a
// Status; whatever parses must be safe to walk completely (every metadata
// value, every array element, every tensor byte).
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "model/gguf.h"

namespace {

volatile uint64_t g_sink;  // keeps the walks from being optimized away

uint64_t WalkArray(const strata::GgufArray& a, int depth) {
  uint64_t h = a.count;
  if (depth > 16) __builtin_trap();  // the reader caps nesting far lower
  if (a.raw != nullptr) {
    // NumberAt reads each element; ASan checks the claimed count is real.
    for (uint64_t i = 0; i < a.count; ++i) h += static_cast<uint64_t>(a.NumberAt(i) != 0.0);
  }
  for (std::string_view s : a.strings) h += s.size() + (s.empty() ? 0 : static_cast<uint8_t>(s.back()));
  for (const strata::GgufValue& v : a.items) {
    if (auto* inner = std::get_if<std::shared_ptr<strata::GgufArray>>(&v.v)) {
      h += WalkArray(**inner, depth + 1);
    }
  }
  return h;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto file = strata::GgufFile::FromBuffer(std::span<const uint8_t>(data, size));
  if (!file.ok()) {
    if (file.status().message().empty()) __builtin_trap();  // every error must explain itself
    return 0;
  }
  const strata::GgufFile& g = **file;
  uint64_t h = g.version() + g.alignment() + g.data_offset();
  for (const std::string& key : g.Keys()) {
    const strata::GgufValue* v = g.Find(key);
    if (v == nullptr) __builtin_trap();  // Keys() and Find() must agree
    h += static_cast<uint32_t>(v->type);
    if (auto s = g.GetString(key); s.ok()) h += s->size();
    if (auto u = g.GetUint(key); u.ok()) h += *u;
    if (auto i = g.GetInt(key); i.ok()) h += static_cast<uint64_t>(*i);
    if (auto f = g.GetFloat(key); f.ok()) h += static_cast<uint64_t>(*f != 0.0);
    if (auto b = g.GetBool(key); b.ok()) h += *b;
    if (const strata::GgufArray* a = g.GetArray(key)) h += WalkArray(*a, 0);
    if (auto fa = g.GetFloatArray(key); fa.ok()) h += fa->size();
    if (auto ia = g.GetIntArray(key); ia.ok()) h += ia->size();
    if (auto sa = g.GetStringArray(key); sa.ok()) h += sa->size();
  }
  for (const strata::GgufTensorInfo& t : g.tensors()) {
    if (g.FindTensor(t.name) != &t) __builtin_trap();
    h += static_cast<uint64_t>(t.n_elements()) + static_cast<uint32_t>(t.type);
    // Touch the first and last byte, and sum small tensors fully, so ASan
    // flags any tensor the reader let point outside the input.
    if (t.nbytes > 0) {
      h += t.data[0] + t.data[t.nbytes - 1];
      if (t.nbytes <= 4096) {
        for (size_t i = 0; i < t.nbytes; ++i) h += t.data[i];
      }
    }
  }
  g_sink = h;
  return 0;
}
