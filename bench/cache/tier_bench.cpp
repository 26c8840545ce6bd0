// tier_bench: the KV cache store's tiers against the physical limits of this
// machine, side by side in one run (issue 5, "Tier bandwidth").
//
//   tier_bench --model models/strata-default.gguf --disk-dir DIR --out raw.json
//
// For each chunk shape (256 tokens of the shipped model's KV, from a real
// prefill; 256 tokens of a Qwen2.5-0.5B-shaped KV, synthetic unless
// --qwen-model is given), it measures:
//  1. host tier: Get + ChunkReader::Open + DecodeLayer (every layer) into KV
//     memory, per encoding (raw, lz4, zstd, int8), vs memcpy of the same
//     bytes into the same KV rows;
//  2. disk tier: Put with fsync (write bandwidth), Get+decode cold (page
//     cache dropped per file with posix_fadvise(DONTNEED)) and warm, io_uring
//     vs pread, buffered vs O_DIRECT; vs sequential read/write of one large
//     file on the same directory measured here;
//  3. Redis tier: Get/Put of the same values vs redis-benchmark against the
//     same private redis-server;
//  4. time to first token on a full hit: prefill compute of an N-token
//     prompt vs loading its N/256 chunks from each tier into KV memory.
// Everything goes to one JSON file; bench/cache/report.py makes the tables
// and plots. Timings are medians over --reps repetitions (min kept too).
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <iostream>
#include <memory>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "../../tests/redis_test_server.h"
#include "cache/chunk_format.h"
#include "cache/chunk_key.h"
#include "cache/disk_tier.h"
#include "cache/host_tier.h"
#include "cache/redis_tier.h"
#include "engine/generator.h"
#include "kv/contiguous_kv_cache.h"
#include "model/model.h"

namespace strata {
namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr int kChunkTokens = 256;

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "tier_bench: %s\n", what.c_str());
  std::exit(1);
}
void Check(const Status& s, const std::string& what) {
  if (!s.ok()) Die(what + ": " + s.ToString());
}
template <typename T>
T Take(Expected<T> e, const std::string& what) {
  if (!e.ok()) Die(what + ": " + e.status().ToString());
  return std::move(*e);
}

double Seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

struct Timing {
  double median = 0, min = 0, max = 0;
  std::vector<double> all;
};
// Runs setup() untimed then body() timed, `reps` times (after `warmup` untimed runs).
Timing Measure(int reps, int warmup, const std::function<void()>& setup, const std::function<void()>& body) {
  for (int i = 0; i < warmup; ++i) {
    if (setup) setup();
    body();
  }
  Timing t;
  for (int i = 0; i < reps; ++i) {
    if (setup) setup();
    const auto a = Clock::now();
    body();
    t.all.push_back(Seconds(a, Clock::now()));
  }
  std::vector<double> s = t.all;
  std::sort(s.begin(), s.end());
  t.median = s[s.size() / 2];
  t.min = s.front();
  t.max = s.back();
  return t;
}

json TimingJson(const Timing& t, double bytes) {
  json j;
  j["seconds_median"] = t.median;
  j["seconds_min"] = t.min;
  j["seconds_max"] = t.max;
  j["seconds_all"] = t.all;
  if (bytes > 0) {
    j["bytes"] = bytes;
    j["gbs_median"] = bytes / t.median / 1e9;
    j["gbs_best"] = bytes / t.min / 1e9;
  }
  return j;
}

std::string LoadAvg() {
  std::ifstream f("/proc/loadavg");
  std::string a, b, c;
  f >> a >> b >> c;
  return a + " " + b + " " + c;
}

// ---------------------------------------------------------------------------
// One chunk shape and its N/256 chunks, encoded per encoding.

struct Shape {
  std::string name;
  int n_layers = 0, n_kv_heads = 0, head_dim = 0;
  std::string kv_source;  // "prefill of <model>" or "synthetic gaussian"
  int64_t kv_dim() const { return static_cast<int64_t>(n_kv_heads) * head_dim; }
  // Decoded KV bytes of one chunk (K and V, all layers, f16).
  double chunk_kv_bytes() const { return 2.0 * n_layers * kChunkTokens * kv_dim() * 2; }
};

struct ChunkSet {
  Shape shape;
  int n_chunks = 0;
  std::vector<ChunkKey> keys;
  std::vector<ChunkMeta> metas;
  std::unique_ptr<ContiguousKvCache> source;  // slot 0 holds the KV the chunks were encoded from
};

ChunkEncoding Enc(const std::string& name) {
  ChunkEncoding e;
  if (name == "lz4") e.codec = ChunkCodec::kLz4;
  if (name == "zstd") e.codec = ChunkCodec::kZstd;
  if (name == "int8") e.dtype = ChunkDType::kInt8;
  if (name == "int8+zstd") {
    e.dtype = ChunkDType::kInt8;
    e.codec = ChunkCodec::kZstd;
  }
  return e;
}

std::vector<ChunkBlob> EncodeAll(ChunkSet& cs, const std::string& enc) {
  std::vector<ChunkBlob> out;
  for (int i = 0; i < cs.n_chunks; ++i) out.push_back(Take(EncodeChunk(cs.metas[i], *cs.source, 0, Enc(enc)), "encode"));
  return out;
}

void FillMetas(ChunkSet& cs, std::span<const TokenId> tokens, const std::string& fingerprint) {
  ChunkKeyContext ctx;
  ctx.model_fingerprint = fingerprint;
  ctx.kv_format = "f16";
  ctx.chunk_tokens = kChunkTokens;
  cs.keys = ComputeChunkKeys(tokens, ctx);
  cs.n_chunks = static_cast<int>(cs.keys.size());
  for (int i = 0; i < cs.n_chunks; ++i) {
    ChunkMeta m;
    m.key = cs.keys[i];
    m.model_fingerprint = fingerprint;
    m.kv_format = "f16";
    m.n_layers = cs.shape.n_layers;
    m.n_kv_heads = cs.shape.n_kv_heads;
    m.head_dim = cs.shape.head_dim;
    m.first_position = static_cast<int64_t>(i) * kChunkTokens;
    m.tokens.assign(tokens.begin() + m.first_position, tokens.begin() + m.first_position + kChunkTokens);
    cs.metas.push_back(std::move(m));
  }
}

std::vector<TokenId> PromptTokens(int n, int vocab) {
  std::vector<TokenId> p;
  std::mt19937 rng(1234);
  for (int i = 0; i < n; ++i) p.push_back(static_cast<TokenId>(3 + rng() % static_cast<unsigned>(vocab - 3)));
  return p;
}

// KV memory the loads decode into (one slot, all positions reserved and touched).
std::unique_ptr<ContiguousKvCache> MakeDst(const Shape& s, int64_t positions) {
  auto kv = Take(ContiguousKvCache::Create(s.n_layers, s.kv_dim(), 1, positions), "kv");
  Check(kv->Reserve(0, positions), "reserve");
  for (int l = 0; l < s.n_layers; ++l) {
    KvLayerView v = kv->View(0, l);
    for (int64_t p = 0; p < positions; ++p) {
      std::memset(v.KRow(p), 0, static_cast<size_t>(s.kv_dim()) * 2);
      std::memset(v.VRow(p), 0, static_cast<size_t>(s.kv_dim()) * 2);
    }
  }
  return kv;
}

// Opens, verifies and decodes every layer of one chunk into dst.
void DecodeInto(ChunkBlob blob, const ChunkMeta& meta, KvCache& dst) {
  ChunkReader r = Take(ChunkReader::Open(std::move(blob), meta), "open chunk");
  for (int l = 0; l < dst.n_layers(); ++l) Check(r.DecodeLayer(l, dst.View(0, l)), "decode");
}

// Fetches every chunk from `tier` (all in flight at once, as the engine's
// connector does) and decodes them in order into dst.
void LoadAll(Tier& tier, const ChunkSet& cs, KvCache& dst) {
  std::vector<std::future<Expected<ChunkBlob>>> f;
  for (const ChunkKey& k : cs.keys) f.push_back(tier.Get(k));
  for (int i = 0; i < cs.n_chunks; ++i) DecodeInto(Take(f[i].get(), "get"), cs.metas[i], dst);
}

// The KV rows of the chunks are identical to the source's (checks the load
// path really moved the data).
void VerifyDst(const ChunkSet& cs, KvCache& dst, bool exact) {
  const int64_t n = static_cast<int64_t>(cs.n_chunks) * kChunkTokens;
  const size_t row = static_cast<size_t>(cs.shape.kv_dim()) * 2;
  for (int l = 0; l < cs.shape.n_layers; ++l) {
    KvLayerView a = cs.source->View(0, l), b = dst.View(0, l);
    for (int64_t p = 0; p < n; ++p) {
      if (exact && (std::memcmp(a.KRow(p), b.KRow(p), row) != 0 || std::memcmp(a.VRow(p), b.VRow(p), row) != 0))
        Die("loaded KV differs from the source at layer " + std::to_string(l) + " position " + std::to_string(p));
    }
  }
}

void ClearDst(const ChunkSet& cs, KvCache& dst) {
  const int64_t n = static_cast<int64_t>(cs.n_chunks) * kChunkTokens;
  for (int l = 0; l < cs.shape.n_layers; ++l) {
    KvLayerView v = dst.View(0, l);
    std::memset(v.KRow(0), 0, static_cast<size_t>(n * cs.shape.kv_dim()) * 2);
    std::memset(v.VRow(0), 0, static_cast<size_t>(n * cs.shape.kv_dim()) * 2);
  }
}

size_t TotalBytes(const std::vector<ChunkBlob>& b) {
  size_t n = 0;
  for (const auto& x : b) n += x.size();
  return n;
}

const std::vector<std::string> kEncodings = {"raw", "lz4", "zstd", "int8", "int8+zstd"};

// ---------------------------------------------------------------------------
// 1. Host tier vs memcpy.

json BenchHost(ChunkSet& cs, int reps, std::map<std::string, double>* load_seconds) {
  json out;
  const double kv_bytes = cs.shape.chunk_kv_bytes() * cs.n_chunks;
  const int64_t positions = static_cast<int64_t>(cs.n_chunks) * kChunkTokens;
  auto dst = MakeDst(cs.shape, positions);
  const size_t plane = static_cast<size_t>(kChunkTokens * cs.shape.kv_dim()) * 2;  // one layer's K (or V) rows of a chunk

  // The physical limit: memcpy of the same bytes from separate per-chunk
  // buffers (as a host tier holds them) into the same KV rows.
  std::vector<std::vector<uint8_t>> src(cs.n_chunks, std::vector<uint8_t>(static_cast<size_t>(cs.shape.chunk_kv_bytes())));
  for (auto& s : src)
    for (size_t i = 0; i < s.size(); ++i) s[i] = static_cast<uint8_t>(i * 31);
  Timing mc = Measure(reps * 4, 2, nullptr, [&] {
    for (int c = 0; c < cs.n_chunks; ++c) {
      const uint8_t* p = src[c].data();
      for (int l = 0; l < cs.shape.n_layers; ++l) {
        KvLayerView v = dst->View(0, l);
        std::memcpy(v.KRow(static_cast<int64_t>(c) * kChunkTokens), p, plane);
        p += plane;
        std::memcpy(v.VRow(static_cast<int64_t>(c) * kChunkTokens), p, plane);
        p += plane;
      }
    }
  });
  out["memcpy"] = TimingJson(mc, kv_bytes);
  // One big memcpy of the same total (no per-layer scatter) for reference.
  std::vector<uint8_t> big_src(static_cast<size_t>(kv_bytes), 1), big_dst(static_cast<size_t>(kv_bytes), 0);
  Timing mc1 = Measure(reps * 4, 2, nullptr, [&] { std::memcpy(big_dst.data(), big_src.data(), big_src.size()); });
  out["memcpy_one_call"] = TimingJson(mc1, kv_bytes);

  for (const std::string& e : kEncodings) {
    std::vector<ChunkBlob> blobs = EncodeAll(cs, e);
    HostTierOptions ho;
    ho.capacity_bytes = size_t{512} << 20;
    auto host = Take(HostTier::Create(ho), "host tier");
    for (int i = 0; i < cs.n_chunks; ++i) Check(host->Put(cs.keys[i], blobs[i]).get(), "host put");
    json j;
    j["encoded_bytes"] = TotalBytes(blobs);
    j["ratio_to_kv"] = static_cast<double>(TotalBytes(blobs)) / kv_bytes;
    Timing load = Measure(reps, 1, [&] { ClearDst(cs, *dst); }, [&] { LoadAll(*host, cs, *dst); });
    VerifyDst(cs, *dst, e == "raw" || e == "lz4" || e == "zstd");
    j["load"] = TimingJson(load, kv_bytes);
    j["load_vs_memcpy"] = mc.median / load.median;
    // Put (copy into the pool) of the already-encoded chunks.
    Timing put = Measure(reps, 0, [&] { Check(host->Clear(), "clear"); }, [&] {
      for (int i = 0; i < cs.n_chunks; ++i) Check(host->Put(cs.keys[i], blobs[i]).get(), "host put");
    });
    j["put"] = TimingJson(put, static_cast<double>(TotalBytes(blobs)));
    // Encoding cost (what storing a chunk costs the engine thread / store).
    Timing enc = Measure(std::max(1, reps / 2), 0, nullptr, [&] { EncodeAll(cs, e); });
    j["encode"] = TimingJson(enc, kv_bytes);
    if (load_seconds) (*load_seconds)["host/" + e] = load.median;
    out["encodings"][e] = j;
    std::fprintf(stderr, "  host %-10s load %.2f GB/s (memcpy %.2f GB/s) size %.3f of raw\n", e.c_str(),
                 kv_bytes / load.median / 1e9, kv_bytes / mc.median / 1e9, j["ratio_to_kv"].get<double>());
  }
  return out;
}

// ---------------------------------------------------------------------------
// 2. Disk tier vs sequential I/O on the same directory.

void DropFileCache(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  ::fdatasync(fd);
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  ::close(fd);
}

// Sequential bandwidth of one large file: O_DIRECT write + fsync, O_DIRECT
// read, buffered read after dropping the file's pages, buffered warm read.
json BenchSequential(const std::string& dir, size_t file_bytes, int reps) {
  json out;
  const std::string path = dir + "/seqfile.bin";
  const size_t block = size_t{4} << 20;
  void* mem = nullptr;
  if (::posix_memalign(&mem, 4096, block) != 0) Die("posix_memalign");
  std::unique_ptr<void, decltype(&std::free)> buf(mem, &std::free);
  std::memset(mem, 0x5a, block);
  for (size_t i = 0; i < block; i += 8) static_cast<uint8_t*>(mem)[i] = static_cast<uint8_t>(i * 131 >> 5);
  bool direct = true;
  auto write_file = [&] {
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_DIRECT, 0644);
    if (fd < 0) {
      direct = false;
      fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    }
    if (fd < 0) Die("open " + path);
    for (size_t off = 0; off < file_bytes; off += block)
      if (::pwrite(fd, mem, block, static_cast<off_t>(off)) != static_cast<ssize_t>(block)) Die("pwrite " + path);
    ::fsync(fd);
    ::close(fd);
  };
  Timing w = Measure(std::max(1, reps / 2), 0, nullptr, write_file);
  out["write_direct_fsync"] = TimingJson(w, static_cast<double>(file_bytes));
  out["o_direct"] = direct;
  auto read_file = [&](bool odirect) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | (odirect && direct ? O_DIRECT : 0));
    if (fd < 0) Die("open " + path);
    for (size_t off = 0; off < file_bytes; off += block)
      if (::pread(fd, mem, block, static_cast<off_t>(off)) != static_cast<ssize_t>(block)) Die("pread " + path);
    ::close(fd);
  };
  Timing rd = Measure(reps, 0, nullptr, [&] { read_file(true); });
  out["read_direct"] = TimingJson(rd, static_cast<double>(file_bytes));
  Timing rc = Measure(reps, 0, [&] { DropFileCache(path); }, [&] { read_file(false); });
  out["read_buffered_cold"] = TimingJson(rc, static_cast<double>(file_bytes));
  Timing rw = Measure(reps, 1, nullptr, [&] { read_file(false); });
  out["read_buffered_warm"] = TimingJson(rw, static_cast<double>(file_bytes));
  out["file_bytes"] = file_bytes;
  out["block_bytes"] = block;
  std::fprintf(stderr, "  seq: write+fsync %.2f GB/s, read O_DIRECT %.2f GB/s, cold %.2f GB/s, warm %.2f GB/s\n",
               file_bytes / w.median / 1e9, file_bytes / rd.median / 1e9, file_bytes / rc.median / 1e9,
               file_bytes / rw.median / 1e9);
  ::unlink(path.c_str());
  return out;
}

struct DiskVariant {
  std::string name;
  bool io_uring, o_direct;
};

json BenchDisk(ChunkSet& cs, const std::string& base_dir, int reps, std::map<std::string, double>* load_seconds,
               const json& seq) {
  json out;
  const double kv_bytes = cs.shape.chunk_kv_bytes() * cs.n_chunks;
  const int64_t positions = static_cast<int64_t>(cs.n_chunks) * kChunkTokens;
  auto dst = MakeDst(cs.shape, positions);
  const double seq_cold = seq["read_buffered_cold"]["gbs_median"].get<double>();
  const double seq_direct = seq["read_direct"]["gbs_median"].get<double>();
  const double seq_write = seq["write_direct_fsync"]["gbs_median"].get<double>();
  const double seq_read_limit = std::max(seq_cold, seq_direct);

  const std::vector<DiskVariant> variants = {
      {"io_uring", true, false}, {"pread", false, false}, {"io_uring+O_DIRECT", true, true}, {"pread+O_DIRECT", false, true}};
  for (const std::string& e : kEncodings) {
    std::vector<ChunkBlob> blobs = EncodeAll(cs, e);
    const double enc_bytes = static_cast<double>(TotalBytes(blobs));
    for (const DiskVariant& v : variants) {
      if (e != "raw" && v.name != "io_uring") continue;  // other encodings: the default I/O path only
      const std::string dir = base_dir + "/" + cs.shape.name + "-" + e + "-" + v.name;
      std::filesystem::remove_all(dir);
      DiskTierOptions o;
      o.dir = dir;
      o.capacity_bytes = size_t{1} << 30;
      o.use_io_uring = v.io_uring;
      o.o_direct = v.o_direct;
      o.fsync = true;
      auto disk = Take(DiskTier::Open(o), "disk tier");
      json j;
      // Write: all chunks put at once, until every write (and its fsync) landed.
      Timing put = Measure(reps, 0, [&] { Check(disk->Clear(), "clear"); }, [&] {
        for (int i = 0; i < cs.n_chunks; ++i) Check(disk->Put(cs.keys[i], blobs[i]).get(), "disk put");
        disk->Flush();
      });
      if (disk->stats().put_failures > 0) Die("disk puts failed");
      j["put_fsync"] = TimingJson(put, enc_bytes);
      j["put_vs_seq_write"] = (enc_bytes / put.median / 1e9) / seq_write;
      auto drop_all = [&] {
        for (const ChunkKey& k : cs.keys) DropFileCache(disk->PathFor(k));
      };
      Timing cold = Measure(reps, 0, [&] { ClearDst(cs, *dst); drop_all(); }, [&] { LoadAll(*disk, cs, *dst); });
      VerifyDst(cs, *dst, e == "raw" || e == "lz4" || e == "zstd");
      Timing warm = Measure(reps, 1, nullptr, [&] { LoadAll(*disk, cs, *dst); });
      // Fetch alone (no decode), cold: the tier's own read bandwidth.
      Timing fetch = Measure(reps, 0, drop_all, [&] {
        std::vector<std::future<Expected<ChunkBlob>>> f;
        for (const ChunkKey& k : cs.keys) f.push_back(disk->Get(k));
        for (auto& x : f) Take(x.get(), "get");
      });
      Timing fetch_warm = Measure(reps, 1, nullptr, [&] {
        std::vector<std::future<Expected<ChunkBlob>>> f;
        for (const ChunkKey& k : cs.keys) f.push_back(disk->Get(k));
        for (auto& x : f) Take(x.get(), "get");
      });
      j["fetch_warm"] = TimingJson(fetch_warm, enc_bytes);
      j["o_direct_in_use"] = disk->using_o_direct();
      j["io_uring_in_use"] = disk->using_io_uring();
      j["encoded_bytes"] = enc_bytes;
      j["load_cold"] = TimingJson(cold, kv_bytes);
      j["load_warm"] = TimingJson(warm, kv_bytes);
      j["fetch_cold"] = TimingJson(fetch, enc_bytes);
      // Ratios against the sequential read limit of the same disk, in bytes
      // actually read from disk.
      j["fetch_cold_vs_seq_read"] = (enc_bytes / fetch.median / 1e9) / seq_read_limit;
      j["load_cold_file_bytes_vs_seq_read"] = (enc_bytes / cold.median / 1e9) / seq_read_limit;
      if (load_seconds) {
        (*load_seconds)["disk cold/" + e + "/" + v.name] = cold.median;
        (*load_seconds)["disk warm/" + e + "/" + v.name] = warm.median;
      }
      out[e][v.name] = j;
      std::fprintf(stderr, "  disk %-10s %-18s put+fsync %.2f GB/s, fetch cold %.2f GB/s, load cold %.2f / warm %.2f GB/s (KV)\n",
                   e.c_str(), v.name.c_str(), enc_bytes / put.median / 1e9, enc_bytes / fetch.median / 1e9,
                   kv_bytes / cold.median / 1e9, kv_bytes / warm.median / 1e9);
      disk.reset();
      std::filesystem::remove_all(dir);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------
// 3. Redis tier vs redis-benchmark.

std::string RunCapture(const std::string& cmd) {
  std::string out;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  ::pclose(p);
  return out;
}

// redis-benchmark --csv: "test","rps","avg_latency_ms",... one row per test.
json RedisBenchmark(int port, size_t value_bytes, int n, int clients) {
  const std::string cmd = "redis-benchmark -h 127.0.0.1 -p " + std::to_string(port) + " -t set,get -d " +
                          std::to_string(value_bytes) + " -n " + std::to_string(n) + " -c " + std::to_string(clients) +
                          " -P 1 --csv 2>/dev/null";
  const std::string text = RunCapture(cmd);
  json out;
  out["command"] = cmd.substr(0, cmd.size() - std::strlen(" 2>/dev/null"));
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    std::vector<std::string> f;
    std::string cell;
    std::istringstream ls(line);
    while (std::getline(ls, cell, ',')) {
      if (cell.size() >= 2 && cell.front() == '"') cell = cell.substr(1, cell.size() - 2);
      f.push_back(cell);
    }
    if (f.size() < 3 || (f[0] != "SET" && f[0] != "GET")) continue;
    const double rps = std::atof(f[1].c_str());
    json t;
    t["rps"] = rps;
    t["avg_latency_ms"] = std::atof(f[2].c_str());
    t["gbs"] = rps * static_cast<double>(value_bytes) / 1e9;
    out[f[0] == "SET" ? "set" : "get"] = t;
  }
  if (!out.contains("get")) out["raw_output"] = text;
  return out;
}

double Gbs(const json& rb, const char* op) { return rb.contains(op) ? rb[op]["gbs"].get<double>() : 0.0; }

json BenchRedis(ChunkSet& cs, int port, int reps, std::map<std::string, double>* load_seconds) {
  json out;
  const double kv_bytes = cs.shape.chunk_kv_bytes() * cs.n_chunks;
  const int64_t positions = static_cast<int64_t>(cs.n_chunks) * kChunkTokens;
  auto dst = MakeDst(cs.shape, positions);
  for (const std::string& e : kEncodings) {
    std::vector<ChunkBlob> blobs = EncodeAll(cs, e);
    const double enc_bytes = static_cast<double>(TotalBytes(blobs));
    const double value = enc_bytes / cs.n_chunks;
    RedisTierOptions o;
    o.port = port;
    o.key_prefix = "strata:bench:" + cs.shape.name + ":" + e + ":";
    o.command_timeout_ms = 5000;
    o.connections = 4;
    auto redis = Take(RedisTier::Open(o), "redis tier");
    Check(redis->Health(), "redis health");
    json j;
    j["encoded_bytes"] = enc_bytes;
    j["value_bytes"] = value;
    // Sequential (one request in flight): comparable to redis-benchmark -c 1.
    Timing put1 = Measure(reps, 0, [&] { Check(redis->Clear(), "clear"); }, [&] {
      for (int i = 0; i < cs.n_chunks; ++i) Check(redis->Put(cs.keys[i], blobs[i]).get(), "redis put");
    });
    Timing get1 = Measure(reps, 1, nullptr, [&] {
      for (const ChunkKey& k : cs.keys) Take(redis->Get(k).get(), "redis get");
    });
    // All in flight (the tier's 4 connections): comparable to -c 4.
    Timing put4 = Measure(reps, 0, [&] { Check(redis->Clear(), "clear"); }, [&] {
      std::vector<std::future<Status>> f;
      for (int i = 0; i < cs.n_chunks; ++i) f.push_back(redis->Put(cs.keys[i], blobs[i]));
      for (auto& x : f) Check(x.get(), "redis put");
    });
    Timing get4 = Measure(reps, 1, nullptr, [&] {
      std::vector<std::future<Expected<ChunkBlob>>> f;
      for (const ChunkKey& k : cs.keys) f.push_back(redis->Get(k));
      for (auto& x : f) Take(x.get(), "redis get");
    });
    Timing load = Measure(reps, 1, [&] { ClearDst(cs, *dst); }, [&] { LoadAll(*redis, cs, *dst); });
    VerifyDst(cs, *dst, e == "raw" || e == "lz4" || e == "zstd");
    j["put_seq"] = TimingJson(put1, enc_bytes);
    j["get_seq"] = TimingJson(get1, enc_bytes);
    j["put_4"] = TimingJson(put4, enc_bytes);
    j["get_4"] = TimingJson(get4, enc_bytes);
    j["load"] = TimingJson(load, kv_bytes);
    if (load_seconds) (*load_seconds)["redis/" + e] = load.median;
    if (e == "raw" || e == "zstd" || e == "int8") {
      const int n = std::max(20, static_cast<int>(2e8 / value));  // ~200 MB per test
      json rb1 = RedisBenchmark(port, static_cast<size_t>(value), n, 1);
      json rb4 = RedisBenchmark(port, static_cast<size_t>(value), n, 4);
      j["redis_benchmark_c1"] = rb1;
      j["redis_benchmark_c4"] = rb4;
      auto ratio = [&](const Timing& t, const json& rb, const char* op) -> json {
        if (!rb.contains(op)) return nullptr;
        return (enc_bytes / t.median / 1e9) / rb[op]["gbs"].get<double>();
      };
      j["get_seq_vs_rb_c1"] = ratio(get1, rb1, "get");
      j["put_seq_vs_rb_c1"] = ratio(put1, rb1, "set");
      j["get_4_vs_rb_c4"] = ratio(get4, rb4, "get");
      j["put_4_vs_rb_c4"] = ratio(put4, rb4, "set");
      std::fprintf(stderr, "  redis %-9s get %.2f GB/s (rb -c1 %.2f), get x4 %.2f (rb -c4 %.2f), set %.2f (rb %.2f)\n",
                   e.c_str(), enc_bytes / get1.median / 1e9, Gbs(rb1, "get"),
                   enc_bytes / get4.median / 1e9, Gbs(rb4, "get"), enc_bytes / put1.median / 1e9,
                   Gbs(rb1, "set"));
    }
    Check(redis->Clear(), "clear");
    out[e] = j;
  }
  return out;
}

// ---------------------------------------------------------------------------

struct Args {
  std::string model = "models/strata-default.gguf";
  std::string qwen_model;  // optional: a Qwen2.5-0.5B-shape GGUF for real KV and prefill time
  std::string disk_dir = "build-bench-cache/disk";
  std::string out = "bench/cache/results/raw.json";
  std::string command;
  int reps = 5;
  int threads = 2;
  int prompt_tokens = 2048;
  size_t seq_file_mb = 512;
  bool redis = true;
};

Args ParseArgs(int argc, char** argv) {
  Args a;
  CLI::App app{"tier_bench: bandwidth of each KV cache store tier, per chunk encoding"};
  app.add_option("--model", a.model, "GGUF model")->capture_default_str();
  app.add_option("--qwen-model", a.qwen_model, "optional Qwen2.5-0.5B-shape GGUF for real KV and prefill time");
  app.add_option("--disk-dir", a.disk_dir, "directory for the disk tier's files")->capture_default_str();
  app.add_option("--out", a.out, "JSON results")->capture_default_str();
  app.add_option("--reps", a.reps, "runs per measurement (median)")->capture_default_str()->check(CLI::Range(1, 1000));
  app.add_option("--threads", a.threads, "compute threads")->capture_default_str()->check(CLI::Range(1, 256));
  app.add_option("--prompt-tokens", a.prompt_tokens, "prompt length")->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  app.add_option("--seq-file-mb", a.seq_file_mb, "size of the sequential-read reference file")->capture_default_str()
      ->check(CLI::Range(size_t{1}, size_t{1} << 20));
  app.add_option("--command", a.command, "the command line to record with the results");
  app.add_flag("!--no-redis", a.redis, "skip the Redis tier");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    std::exit(app.exit(e));
  }
  return a;
}

// Prefill of the prompt on a real model: compute time, and the KV it leaves.
struct Prefill {
  std::unique_ptr<Model> model;
  std::unique_ptr<Generator> gen;
  Timing full;       // all N tokens (TTFT without a cache)
  Timing last_token; // the last token alone after N-1 cached (what a hit still computes)
};

Prefill RunPrefill(const std::string& path, std::span<const TokenId> prompt, int threads, int reps) {
  Prefill p;
  p.model = Take(Model::Load(path), "load " + path);
  const int64_t n = static_cast<int64_t>(prompt.size());
  p.gen = Take(Generator::Create(*p.model, threads, n, 512), "generator");
  p.full = Measure(reps, 1, nullptr, [&] { Take(p.gen->Evaluate(prompt, 0, false), "prefill"); });
  p.last_token = Measure(reps * 2, 1, nullptr, [&] { Take(p.gen->Evaluate(prompt.subspan(n - 1), n - 1, false), "last"); });
  return p;
}

json TtftJson(const ChunkSet& cs, const Prefill* pf, const std::map<std::string, double>& loads, double memcpy_gbs,
              double seq_read_gbs, int prompt_tokens) {
  json j;
  const double kv_bytes = cs.shape.chunk_kv_bytes() * cs.n_chunks;
  j["prompt_tokens"] = prompt_tokens;
  j["chunks"] = cs.n_chunks;
  j["kv_bytes"] = kv_bytes;
  j["transfer_seconds_at_memcpy"] = kv_bytes / (memcpy_gbs * 1e9);
  j["transfer_seconds_at_seq_read"] = kv_bytes / (seq_read_gbs * 1e9);
  if (pf) {
    j["prefill"] = TimingJson(pf->full, 0);
    j["last_token_forward"] = TimingJson(pf->last_token, 0);
    j["prefill_tokens_per_second"] = prompt_tokens / pf->full.median;
  }
  for (const auto& [name, secs] : loads) {
    json l;
    l["load_seconds"] = secs;
    l["load_vs_memcpy_transfer"] = secs / (kv_bytes / (memcpy_gbs * 1e9));
    if (pf) {
      l["speedup_vs_prefill"] = pf->full.median / secs;
      // A hit still computes the prompt's last token for its logits.
      l["ttft_hit_estimate_seconds"] = secs + pf->last_token.median;
      l["ttft_speedup"] = pf->full.median / (secs + pf->last_token.median);
    }
    j["loads"][name] = l;
  }
  return j;
}

std::string Machine(const std::string& disk_dir, json* m) {
  std::string cpu = "?";
  {
    std::ifstream f("/proc/cpuinfo");
    std::string line;
    while (std::getline(f, line))
      if (line.rfind("model name", 0) == 0) {
        cpu = line.substr(line.find(':') + 2);
        break;
      }
  }
  (*m)["cpu"] = cpu;
  (*m)["cores"] = static_cast<int>(::sysconf(_SC_NPROCESSORS_ONLN));
  (*m)["ram_gib"] = static_cast<double>(::sysconf(_SC_PHYS_PAGES)) * ::sysconf(_SC_PAGE_SIZE) / (1 << 30);
  utsname u;
  ::uname(&u);
  (*m)["kernel"] = std::string(u.sysname) + " " + u.release + " " + u.machine;
  std::string fs = RunCapture("df -hT " + disk_dir + " | tail -1");
  while (!fs.empty() && fs.back() == '\n') fs.pop_back();
  (*m)["disk_tier_fs"] = fs;
  std::string dev = RunCapture("lsblk -dno NAME,MODEL,ROTA,SIZE 2>/dev/null | head -5 | tr '\\n' ';'");
  (*m)["block_devices"] = dev;
  return cpu;
}

int Main(int argc, char** argv) {
  Args a = ParseArgs(argc, argv);
  std::filesystem::create_directories(a.disk_dir);
  json out;
  json machine;
  Machine(a.disk_dir, &machine);
  out["machine"] = machine;
  out["command"] = a.command;
  out["loadavg_start"] = LoadAvg();
  {
    char date[64];
    const std::time_t now = std::time(nullptr);
    std::strftime(date, sizeof date, "%Y-%m-%d %H:%M:%S %Z", std::localtime(&now));
    out["date"] = date;
  }
  out["reps"] = a.reps;
  out["threads"] = a.threads;
  out["chunk_tokens"] = kChunkTokens;

  std::fprintf(stderr, "== sequential I/O on %s\n", a.disk_dir.c_str());
  json seq = BenchSequential(a.disk_dir, a.seq_file_mb << 20, a.reps);
  out["sequential"] = seq;

  std::unique_ptr<testing::RedisTestServer> server;
  if (a.redis) {
    server = std::make_unique<testing::RedisTestServer>();
    if (!server->Start()) Die("could not start redis-server");
    out["redis_server"] = RunCapture("redis-server --version");
  }

  // Shapes: the shipped model (real KV from a prefill) and Qwen2.5-0.5B.
  struct ShapeRun {
    ChunkSet cs;
    std::unique_ptr<Prefill> pf;
  };
  std::vector<ShapeRun> runs;
  {
    ShapeRun r;
    std::fprintf(stderr, "== prefill %d tokens on %s (%d threads)\n", a.prompt_tokens, a.model.c_str(), a.threads);
    auto probe = Take(Model::Load(a.model), "load model");
    const ModelConfig& c = probe->config();
    std::vector<TokenId> prompt = PromptTokens(a.prompt_tokens, c.vocab_size);
    probe.reset();
    r.pf = std::make_unique<Prefill>(RunPrefill(a.model, prompt, a.threads, std::max(1, a.reps / 2)));
    const ModelConfig& cfg = r.pf->model->config();
    r.cs.shape = {std::filesystem::path(a.model).stem().string(), cfg.n_layers, cfg.n_kv_heads, cfg.head_dim,
                  "prefill of " + a.model};
    // The chunks' source: the generator's KV after the prefill (real KV).
    auto src = Take(ContiguousKvCache::Create(cfg.n_layers, cfg.kv_dim(), 1, a.prompt_tokens), "kv");
    Check(src->Reserve(0, a.prompt_tokens), "reserve");
    for (int l = 0; l < cfg.n_layers; ++l) {
      KvLayerView s = r.pf->gen->kv().View(0, l), d = src->View(0, l);
      for (int64_t p = 0; p < a.prompt_tokens; ++p) {
        std::memcpy(d.KRow(p), s.KRow(p), static_cast<size_t>(cfg.kv_dim()) * 2);
        std::memcpy(d.VRow(p), s.VRow(p), static_cast<size_t>(cfg.kv_dim()) * 2);
      }
    }
    r.cs.source = std::move(src);
    FillMetas(r.cs, prompt, r.pf->model->fingerprint());
    std::fprintf(stderr, "  prefill %.3f s (%.0f tok/s), last token %.4f s\n", r.pf->full.median,
                 a.prompt_tokens / r.pf->full.median, r.pf->last_token.median);
    runs.push_back(std::move(r));
  }
  {
    ShapeRun r;
    if (!a.qwen_model.empty()) {
      std::fprintf(stderr, "== prefill %d tokens on %s\n", a.prompt_tokens, a.qwen_model.c_str());
      auto probe = Take(Model::Load(a.qwen_model), "load qwen model");
      std::vector<TokenId> prompt = PromptTokens(a.prompt_tokens, probe->config().vocab_size);
      probe.reset();
      r.pf = std::make_unique<Prefill>(RunPrefill(a.qwen_model, prompt, a.threads, 1));
      const ModelConfig& cfg = r.pf->model->config();
      r.cs.shape = {"qwen2.5-0.5b-shape", cfg.n_layers, cfg.n_kv_heads, cfg.head_dim, "prefill of " + a.qwen_model};
      auto src = Take(ContiguousKvCache::Create(cfg.n_layers, cfg.kv_dim(), 1, a.prompt_tokens), "kv");
      Check(src->Reserve(0, a.prompt_tokens), "reserve");
      for (int l = 0; l < cfg.n_layers; ++l) {
        KvLayerView s = r.pf->gen->kv().View(0, l), d = src->View(0, l);
        for (int64_t p = 0; p < a.prompt_tokens; ++p) {
          std::memcpy(d.KRow(p), s.KRow(p), static_cast<size_t>(cfg.kv_dim()) * 2);
          std::memcpy(d.VRow(p), s.VRow(p), static_cast<size_t>(cfg.kv_dim()) * 2);
        }
      }
      r.cs.source = std::move(src);
      FillMetas(r.cs, prompt, r.pf->model->fingerprint());
    } else {
      r.cs.shape = {"qwen2.5-0.5b-shape", 24, 2, 64, "synthetic: gaussian fp16 (sd 1), no model"};
      auto src = Take(ContiguousKvCache::Create(24, 128, 1, a.prompt_tokens), "kv");
      Check(src->Reserve(0, a.prompt_tokens), "reserve");
      std::mt19937 rng(7);
      std::normal_distribution<float> nd(0.f, 1.f);
      for (int l = 0; l < 24; ++l) {
        KvLayerView v = src->View(0, l);
        for (int64_t p = 0; p < a.prompt_tokens; ++p)
          for (int i = 0; i < 128; ++i) {
            v.KRow(p)[i] = Fp32ToFp16(nd(rng));
            v.VRow(p)[i] = Fp32ToFp16(nd(rng));
          }
      }
      r.cs.source = std::move(src);
      FillMetas(r.cs, PromptTokens(a.prompt_tokens, 151936), std::string(32, 'a'));
    }
    runs.push_back(std::move(r));
  }

  for (ShapeRun& r : runs) {
    ChunkSet& cs = r.cs;
    json s;
    s["n_layers"] = cs.shape.n_layers;
    s["n_kv_heads"] = cs.shape.n_kv_heads;
    s["head_dim"] = cs.shape.head_dim;
    s["kv_source"] = cs.shape.kv_source;
    s["chunk_kv_bytes"] = cs.shape.chunk_kv_bytes();
    s["chunks"] = cs.n_chunks;
    std::map<std::string, double> loads;
    std::fprintf(stderr, "== %s: %d chunks of %.2f MiB KV\n", cs.shape.name.c_str(), cs.n_chunks,
                 cs.shape.chunk_kv_bytes() / (1 << 20));
    s["host"] = BenchHost(cs, a.reps, &loads);
    s["disk"] = BenchDisk(cs, a.disk_dir, a.reps, &loads, seq);
    if (server) s["redis"] = BenchRedis(cs, server->port(), a.reps, &loads);
    const double memcpy_gbs = s["host"]["memcpy"]["gbs_median"].get<double>();
    const double seq_gbs = std::max(seq["read_buffered_cold"]["gbs_median"].get<double>(),
                                    seq["read_direct"]["gbs_median"].get<double>());
    s["ttft"] = TtftJson(cs, r.pf.get(), loads, memcpy_gbs, seq_gbs, a.prompt_tokens);
    out["shapes"][cs.shape.name] = s;
  }
  out["loadavg_end"] = LoadAvg();
  std::filesystem::create_directories(std::filesystem::path(a.out).parent_path());
  std::ofstream(a.out) << out.dump(1) << "\n";
  std::fprintf(stderr, "wrote %s\n", a.out.c_str());
  return 0;
}

}  // namespace
}  // namespace strata

int main(int argc, char** argv) { return strata::Main(argc, argv); }
