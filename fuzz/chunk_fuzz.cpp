// libFuzzer target for the KV chunk reader: any bytes must open and decode
// or fail with a kCorrupt Status that explains itself; nothing may read or
// write outside the input or the destination rows.
//
// The reader is always asked for one fixed small layout; PeekChunkMeta is
// tried too, and when the input describes itself consistently it is opened
// against its own description, so the fuzzer reaches the section decoders
// with the header checksum satisfied.
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "cache/chunk_format.h"

namespace {

volatile uint64_t g_sink;

strata::ChunkMeta FixedMeta() {
  strata::ChunkMeta m;
  m.key = strata::ChunkKey{1, 2};
  m.model_fingerprint = "0123456789abcdef0123456789abcdef";
  m.kv_format = "f16";
  m.n_layers = 2;
  m.n_kv_heads = 2;
  m.head_dim = 4;
  m.first_position = 0;
  m.tokens = {1, 2, 3, 4};
  return m;
}

void OpenAndDecode(std::span<const uint8_t> bytes, const strata::ChunkMeta& meta) {
  auto r = strata::ChunkReader::Open(strata::ChunkBlob::Copy(bytes), meta);
  if (!r.ok()) {
    if (r.status().message().empty() || r.status().code() != strata::StatusCode::kCorrupt) __builtin_trap();
    return;
  }
  // Decode targets sized exactly to the chunk, so ASan flags any overrun.
  const int64_t kv_dim = static_cast<int64_t>(meta.n_kv_heads) * meta.head_dim;
  const int64_t rows = r->first_position() + r->token_count();
  if (rows > (int64_t{1} << 16) || kv_dim * rows > (int64_t{1} << 22)) return;  // keep memory bounded
  std::vector<strata::fp16_t> k(static_cast<size_t>(rows * kv_dim)), v(k.size());
  strata::KvLayerView view;
  view.k = k.data();
  view.v = v.data();
  view.stride = kv_dim;
  view.capacity = rows;
  uint64_t h = 0;
  for (int l = 0; l < meta.n_layers; ++l) {
    const strata::Status st = r->DecodeLayer(l, view, l % 2);
    if (!st.ok() && st.message().empty()) __builtin_trap();
    if (!k.empty()) h += k.back() + v.front();
  }
  g_sink = h;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const strata::ChunkMeta fixed = FixedMeta();
  const std::span<const uint8_t> bytes(data, size);
  OpenAndDecode(bytes, fixed);
  auto self = strata::PeekChunkMeta(bytes);
  if (self.ok()) {
    OpenAndDecode(bytes, *self);
  } else if (self.status().message().empty()) {
    __builtin_trap();
  }
  return 0;
}
