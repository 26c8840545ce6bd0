#include "cli/kv_store_flags.h"

#include <cctype>
#include <cmath>
#include <cstdlib>

#include "cache/disk_tier.h"
#include "cache/host_tier.h"
#include "cache/redis_tier.h"

namespace strata::cli {

namespace {

std::string MiB(size_t bytes) {
  if (bytes >= (size_t{1} << 30) && bytes % (size_t{1} << 30) == 0) return std::to_string(bytes >> 30) + " GiB";
  return std::to_string(bytes >> 20) + " MiB";
}

std::string EncodingName(const ChunkEncoding& e) {
  std::string s(ChunkCodecName(e.codec));
  if (e.dtype != ChunkDType::kF16) s += "," + std::string(ChunkDTypeName(e.dtype));
  return s;
}

}  // namespace

void AddKvStoreFlags(CLI::App* app, KvStoreFlags* f) {
  const std::string g = "KV cache store";
  app->add_option("--kv-store-host-bytes", f->host_bytes, "host-RAM tier of this size (e.g. 512M, 4G)")->group(g);
  app->add_option("--kv-store-disk", f->disk_dir, "disk tier in this directory (processes may share it)")->group(g);
  app->add_option("--kv-store-disk-bytes", f->disk_bytes, "the disk tier's size cap")->capture_default_str()->group(g);
  app->add_option("--kv-store-redis", f->redis, "Redis tier at HOST:PORT")->group(g);
  app->add_option("--kv-chunk-tokens", f->chunk_tokens, "tokens per stored KV chunk")
      ->capture_default_str()->check(CLI::Range(1, 1 << 20))->group(g);
  app->add_option("--kv-store-codec", f->codecs,
                  "how a tier keeps chunks: TIER=raw|zstd|lz4, optionally ,int8 (lossy); repeatable")->group(g);
  app->add_option("--kv-store-policy", f->policy, "eviction policy of the host and disk tiers")
      ->capture_default_str()->check(CLI::IsMember({"lru", "s3fifo"}))->group(g);
  app->add_option("--kv-store-timeout", f->timeout_ms, "milliseconds a chunk fetch may take before it is recomputed")
      ->capture_default_str()->check(CLI::Range(1, 3600000))->group(g);
  app->add_flag("--save-decode-cache", f->save_decode_cache, "also store the KV of generated tokens")->group(g);
}

bool KvStoreEnabled(const KvStoreFlags& f) {
  const bool host = !f.host_bytes.empty() && f.host_bytes != "0";
  return host || !f.disk_dir.empty() || !f.redis.empty();
}

Expected<size_t> ParseByteSize(std::string_view text) {
  std::string s(text);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  if (s.empty()) return Status::InvalidArgument("empty size");
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  std::string unit(end);
  for (char& c : unit) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (end == s.c_str() || !std::isfinite(v) || v < 0) return Status::InvalidArgument("bad size '" + s + "'");
  double mult = 1;
  if (unit.empty() || unit == "B") {
    mult = 1;
  } else if (unit == "K" || unit == "KB" || unit == "KIB") {
    mult = 1024.0;
  } else if (unit == "M" || unit == "MB" || unit == "MIB") {
    mult = 1048576.0;
  } else if (unit == "G" || unit == "GB" || unit == "GIB") {
    mult = 1073741824.0;
  } else if (unit == "T" || unit == "TB" || unit == "TIB") {
    mult = 1099511627776.0;
  } else {
    return Status::InvalidArgument("bad size unit in '" + s + "' (use K, M, G or T)");
  }
  const double bytes = v * mult;
  if (bytes > 1e18) return Status::InvalidArgument("size '" + s + "' is too large");
  return static_cast<size_t>(bytes);
}

std::string DescribeStoreTokens(int64_t total, const std::vector<StoreTierTokens>& per_tier) {
  std::string s = std::to_string(total) + " prompt tokens loaded from the KV cache store";
  if (!per_tier.empty()) {
    s += " (";
    for (size_t i = 0; i < per_tier.size(); ++i) {
      if (i) s += ", ";
      s += per_tier[i].tier + " " + std::to_string(per_tier[i].tokens);
    }
    s += ")";
  }
  return s;
}

Expected<KvStoreSetup> BuildKvStore(const KvStoreFlags& f, const Model& model) {
  KvStoreSetup setup;
  if (!KvStoreEnabled(f)) return setup;

  // TIER=CODEC[,int8]
  std::vector<std::pair<std::string, ChunkEncoding>> encodings;
  for (const std::string& spec : f.codecs) {
    const size_t eq = spec.find('=');
    if (eq == std::string::npos) {
      return Status::InvalidArgument("--kv-store-codec '" + spec + "': expected TIER=CODEC[,int8], e.g. disk=zstd");
    }
    const std::string tier = spec.substr(0, eq);
    if (tier != "host" && tier != "disk" && tier != "redis") {
      return Status::InvalidArgument("--kv-store-codec '" + spec + "': the tier is host, disk or redis");
    }
    std::string rest = spec.substr(eq + 1);
    ChunkEncoding enc;
    const size_t comma = rest.find(',');
    if (comma != std::string::npos) {
      auto dt = ParseChunkDType(rest.substr(comma + 1));
      if (!dt.ok()) return dt.status().WithContext("--kv-store-codec '" + spec + "'");
      enc.dtype = *dt;
      rest.resize(comma);
    }
    auto codec = ParseChunkCodec(rest);
    if (!codec.ok()) return codec.status().WithContext("--kv-store-codec '" + spec + "'");
    enc.codec = *codec;
    encodings.emplace_back(tier, enc);
  }
  auto encoding_for = [&](std::string_view tier) {
    ChunkEncoding e;
    for (const auto& [t, enc] : encodings) {
      if (t == tier) e = enc;
    }
    return e;
  };

  std::vector<StoreTier> tiers;
  std::string desc;
  auto add = [&](std::unique_ptr<Tier> tier, const std::string& what) {
    const ChunkEncoding enc = encoding_for(tier->name());
    if (!desc.empty()) desc += " -> ";
    desc += std::string(tier->name()) + " (" + what + ", " + EncodingName(enc) + ")";
    StoreTier st;
    st.tier = std::move(tier);
    st.encoding = enc;
    st.write_through = true;
    tiers.push_back(std::move(st));
  };
  if (!f.host_bytes.empty() && f.host_bytes != "0") {
    auto bytes = ParseByteSize(f.host_bytes);
    if (!bytes.ok()) return bytes.status().WithContext("--kv-store-host-bytes");
    HostTierOptions o;
    o.capacity_bytes = *bytes;
    o.policy = f.policy;
    auto t = HostTier::Create(o);
    if (!t.ok()) return t.status().WithContext("host tier");
    add(std::move(*t), MiB(*bytes));
  }
  if (!f.disk_dir.empty()) {
    auto bytes = ParseByteSize(f.disk_bytes);
    if (!bytes.ok()) return bytes.status().WithContext("--kv-store-disk-bytes");
    DiskTierOptions o;
    o.dir = f.disk_dir;
    o.capacity_bytes = *bytes;
    o.policy = f.policy;
    auto t = DiskTier::Open(o);
    if (!t.ok()) return t.status().WithContext("disk tier '" + f.disk_dir + "'");
    add(std::move(*t), f.disk_dir + ", " + MiB(*bytes));
  }
  if (!f.redis.empty()) {
    const size_t colon = f.redis.rfind(':');
    RedisTierOptions o;
    o.host = colon == std::string::npos ? f.redis : f.redis.substr(0, colon);
    if (colon != std::string::npos) {
      const std::string port = f.redis.substr(colon + 1);
      char* end = nullptr;
      const long p = std::strtol(port.c_str(), &end, 10);
      if (port.empty() || *end != '\0' || p < 1 || p > 65535) {
        return Status::InvalidArgument("--kv-store-redis '" + f.redis + "': expected HOST:PORT");
      }
      o.port = static_cast<int>(p);
    }
    if (o.host.empty()) o.host = "127.0.0.1";
    o.command_timeout_ms = std::min(o.command_timeout_ms, f.timeout_ms);
    auto t = RedisTier::Open(o);
    if (!t.ok()) return t.status().WithContext("redis tier '" + f.redis + "'");
    add(std::move(*t), f.redis);
  }
  KvStoreOptions so;
  auto store = KvStore::Create(std::move(tiers), so);
  if (!store.ok()) return store.status();
  setup.store = std::move(*store);
  KvStoreConnectorOptions co;
  co.chunk_tokens = f.chunk_tokens;
  co.fetch_timeout = std::chrono::milliseconds(f.timeout_ms);
  auto conn = KvStoreConnector::Create(model, *setup.store, co);
  if (!conn.ok()) return conn.status();
  setup.connector = std::move(*conn);
  setup.description = desc + ", " + std::to_string(f.chunk_tokens) + "-token chunks";
  return setup;
}

}  // namespace strata::cli
