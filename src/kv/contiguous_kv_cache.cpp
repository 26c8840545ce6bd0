#include "kv/contiguous_kv_cache.h"

#include <sys/mman.h>

#include <cerrno>
#include <cstring>
#include <string>

namespace strata {

namespace {
constexpr size_t kPage = 4096;
size_t RoundUp(size_t n, size_t a) { return (n + a - 1) / a * a; }
}  // namespace

Expected<std::unique_ptr<ContiguousKvCache>> ContiguousKvCache::Create(int n_layers, int64_t kv_dim,
                                                                       int max_seqs,
                                                                       int64_t max_positions) {
  if (n_layers <= 0 || kv_dim <= 0 || max_seqs <= 0 || max_positions <= 0) {
    return Status::InvalidArgument("KV cache dimensions must be positive");
  }
  std::unique_ptr<ContiguousKvCache> c(new ContiguousKvCache());
  c->n_layers_ = n_layers;
  c->kv_dim_ = kv_dim;
  c->max_seqs_ = max_seqs;
  c->max_positions_ = max_positions;
  c->plane_bytes_ = RoundUp(static_cast<size_t>(max_positions) * static_cast<size_t>(kv_dim) * sizeof(fp16_t), kPage);
  const size_t total = c->plane_bytes_ * 2 * static_cast<size_t>(n_layers) * static_cast<size_t>(max_seqs);
  // Address space only: pages are committed by first touch, so a long
  // max context costs nothing until a sequence actually gets that long.
  void* p = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    return Status::ResourceExhausted("cannot reserve " + std::to_string(total >> 20) +
                                     " MiB of address space for the KV cache: " + std::strerror(errno));
  }
  c->mapping_ = static_cast<uint8_t*>(p);
  c->mapping_bytes_ = total;
  c->reserved_.reset(new int64_t[static_cast<size_t>(max_seqs)]());
  return c;
}

ContiguousKvCache::~ContiguousKvCache() {
  if (mapping_) munmap(mapping_, mapping_bytes_);
}

fp16_t* ContiguousKvCache::Base(int seq, int layer, int which) {
  const size_t idx = (static_cast<size_t>(seq) * static_cast<size_t>(n_layers_) + static_cast<size_t>(layer)) * 2 +
                     static_cast<size_t>(which);
  return reinterpret_cast<fp16_t*>(mapping_ + idx * plane_bytes_);
}

Status ContiguousKvCache::Reserve(int seq, int64_t n_positions) {
  if (seq < 0 || seq >= max_seqs_) return Status::InvalidArgument("sequence slot " + std::to_string(seq) + " does not exist");
  if (n_positions > max_positions_) {
    return Status::OutOfRange("sequence needs " + std::to_string(n_positions) +
                              " positions but the context holds " + std::to_string(max_positions_) +
                              " (raise -c / --ctx-size)");
  }
  if (n_positions > reserved_[static_cast<size_t>(seq)]) reserved_[static_cast<size_t>(seq)] = n_positions;
  return Status::Ok();
}

KvLayerView ContiguousKvCache::View(int seq, int layer) {
  return KvLayerView{Base(seq, layer, 0), Base(seq, layer, 1), kv_dim_, reserved_[static_cast<size_t>(seq)]};
}

void ContiguousKvCache::Clear(int seq) {
  if (seq < 0 || seq >= max_seqs_) return;
  const size_t used = RoundUp(static_cast<size_t>(reserved_[static_cast<size_t>(seq)]) * static_cast<size_t>(kv_dim_) * sizeof(fp16_t), kPage);
  if (used > 0) {
    for (int l = 0; l < n_layers_; ++l) {
      for (int w = 0; w < 2; ++w) madvise(Base(seq, l, w), used, MADV_DONTNEED);  // return pages to the OS
    }
  }
  reserved_[static_cast<size_t>(seq)] = 0;
}

size_t ContiguousKvCache::committed_bytes() const {
  size_t total = 0;
  for (int s = 0; s < max_seqs_; ++s) {
    total += RoundUp(static_cast<size_t>(reserved_[static_cast<size_t>(s)]) * static_cast<size_t>(kv_dim_) * sizeof(fp16_t), kPage) *
             2 * static_cast<size_t>(n_layers_);
  }
  return total;
}

}  // namespace strata
