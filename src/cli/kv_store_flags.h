// The KV cache store's flags, shared by `strata generate` and `strata serve`,
// and building the store and its engine connector from them.
//
//   --kv-store-host-bytes SIZE   host-RAM tier of SIZE (e.g. 512M, 4G)
//   --kv-store-disk DIR          disk tier in DIR (shared by processes)
//   --kv-store-disk-bytes SIZE   the disk tier's cap (default 8G)
//   --kv-store-redis HOST:PORT   Redis tier
//   --kv-chunk-tokens N          tokens per chunk (default 256)
//   --kv-store-codec TIER=CODEC[,int8]   how a tier keeps chunks (raw|zstd|lz4; int8 is lossy)
//   --kv-store-policy lru|s3fifo eviction policy of the host and disk tiers
//   --kv-store-timeout MS        a chunk fetch later than this is recomputed
//   --save-decode-cache          also store generated tokens' KV
//
// Tiers are chained top-down in the order host -> disk -> redis; every tier
// given receives every stored chunk (write-through), so other processes
// sharing the disk directory or Redis see it at once.
#pragma once

#include <CLI/CLI.hpp>

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "cache/kv_store.h"
#include "engine/kv_store_connector.h"

namespace strata::cli {

struct KvStoreFlags {
  std::string host_bytes;           // "" or "0": no host tier
  std::string disk_dir;             // "": no disk tier
  std::string disk_bytes = "8G";
  std::string redis;                // "": no Redis tier
  int chunk_tokens = 256;
  std::vector<std::string> codecs;  // TIER=CODEC[,int8]
  std::string policy = "lru";
  int timeout_ms = 5000;
  bool save_decode_cache = false;
};

void AddKvStoreFlags(CLI::App* app, KvStoreFlags* f);
// Whether any tier was asked for.
bool KvStoreEnabled(const KvStoreFlags& f);

// "4096", "64K", "512M", "4G", "1.5GiB", "2T" (binary multiples).
Expected<size_t> ParseByteSize(std::string_view text);

// The store and its connector; null members when no tier was asked for.
struct KvStoreSetup {
  std::unique_ptr<KvStore> store;
  std::unique_ptr<KvStoreConnector> connector;
  // "host (512 MiB, raw) -> disk (/tmp/x, 8 GiB, raw)", for logs.
  std::string description;
};
Expected<KvStoreSetup> BuildKvStore(const KvStoreFlags& f, const Model& model);

// "store: 512 prompt tokens loaded (host 256, disk 256)".
std::string DescribeStoreTokens(int64_t total, const std::vector<StoreTierTokens>& per_tier);

}  // namespace strata::cli
