#include "cache/tier.h"

namespace strata {

ChunkBlob ChunkBlob::Adopt(std::vector<uint8_t> bytes) {
  auto owned = std::make_shared<const std::vector<uint8_t>>(std::move(bytes));
  ChunkBlob b;
  b.bytes_ = std::span<const uint8_t>(owned->data(), owned->size());
  b.owner_ = std::move(owned);
  return b;
}

ChunkBlob ChunkBlob::Copy(std::span<const uint8_t> bytes) {
  return Adopt(std::vector<uint8_t>(bytes.begin(), bytes.end()));
}

ChunkBlob ChunkBlob::View(std::span<const uint8_t> bytes, std::shared_ptr<const void> keepalive) {
  ChunkBlob b;
  b.bytes_ = bytes;
  b.owner_ = std::move(keepalive);
  return b;
}

}  // namespace strata
