#include "cache/tier.h"

#include <thread>

#include "cache/io_executor.h"

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

Expected<ChunkBlob> SliceBlob(const ChunkBlob& whole, ByteRange range, const ChunkKey& key) {
  if (range.offset > whole.size() || range.length > whole.size() - range.offset) {
    return Status::Corrupt("chunk " + key.Hex() + " holds " + std::to_string(whole.size()) + " bytes, range [" +
                           std::to_string(range.offset) + ", +" + std::to_string(range.length) + ") runs past it");
  }
  return ChunkBlob::View(whole.bytes().subspan(range.offset, range.length), whole.keepalive());
}

std::future<Expected<ChunkBlob>> Tier::GetRange(const ChunkKey& key, ByteRange range) {
  std::future<Expected<ChunkBlob>> whole = Get(key);
  if (whole.wait_for(std::chrono::seconds(0)) == std::future_status::ready) {
    Expected<ChunkBlob> b = whole.get();
    if (!b.ok()) return ReadyFuture<Expected<ChunkBlob>>(b.take_status());
    return ReadyFuture<Expected<ChunkBlob>>(SliceBlob(*b, range, key));
  }
  // A tier whose Get really waits: slice when it arrives, on a thread of its
  // own so the caller's deadline keeps working. (Not std::async: its future
  // would block in its destructor when a caller gives up on a late range.)
  auto promise = std::make_shared<std::promise<Expected<ChunkBlob>>>();
  std::future<Expected<ChunkBlob>> sliced = promise->get_future();
  std::thread([f = std::move(whole), range, key, promise]() mutable {
    Expected<ChunkBlob> b = f.get();
    promise->set_value(b.ok() ? SliceBlob(*b, range, key) : Expected<ChunkBlob>(b.take_status()));
  }).detach();
  return sliced;
}

}  // namespace strata
