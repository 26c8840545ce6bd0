// The disk tier on a really full disk (ENOSPC), not a stand-in such as
// RLIMIT_FSIZE: a 1 MiB tmpfs filled to the last page.
//
// Mounting needs privilege most test machines lack, so the parent test
// re-runs this binary under `unshare -rm` (a fresh user and mount
// namespace, where an unprivileged user may mount a tmpfs) with only the
// child test selected. The mount lives and dies with the child's namespace:
// nothing outside it ever sees the small filesystem, and a crash cannot
// leave a mount behind. Where unshare or the mount is refused, the parent
// skips rather than fails.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <future>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "cache/disk_tier.h"
#include "cache/host_tier.h"
#include "cache/kv_store.h"
#include "kernels/fp16.h"
#include "kv/contiguous_kv_cache.h"
#include "kv_chunk_chain.h"

extern char** environ;

namespace strata {
namespace {

namespace fs = std::filesystem;

constexpr const char* kChildEnv = "STRATA_DISK_FULL_CHILD";
constexpr const char* kChildTest = "DiskTierDiskFullChild.DISABLED_FillATinyTmpfs";
// Lines the child prints so the parent can tell "could not set up" (skip)
// from "ran and failed" (fail).
constexpr const char* kMountedMarker = "STRATA_DISK_FULL mounted";
constexpr const char* kNoMountMarker = "STRATA_DISK_FULL cannot mount";
constexpr const char* kReportMarker = "STRATA_DISK_FULL report";
constexpr size_t kTmpfsBytes = size_t{1} << 20;
constexpr size_t kHeaderBytes = 64;  // the disk tier's per-file header
constexpr unsigned long kTmpfsMagic = 0x01021994;

ChunkKey Key(uint64_t i) { return ChunkKey{0xd1b54a32d192ed03ull * (i + 7), i ^ 0x5555}; }

std::vector<uint8_t> Bytes(size_t n, uint32_t seed) {
  std::vector<uint8_t> v(n);
  std::mt19937 rng(seed);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

uint64_t FreeBytes(const std::string& dir) {
  struct statvfs s {};
  if (::statvfs(dir.c_str(), &s) != 0) return 0;
  return static_cast<uint64_t>(s.f_bavail) * s.f_frsize;
}

void Report(const std::string& line) {
  std::printf("%s %s\n", kReportMarker, line.c_str());
  std::fflush(stdout);
}

// ---------------------------------------------------------------------------
// Child side: runs inside the namespace, on the tmpfs.

struct Stored {
  size_t size;
  uint32_t seed;
};

struct Mode {
  const char* name;
  bool uring;
  bool direct;
};

// A Put's failure on a full disk must say so, as a value.
void ExpectDiskFull(const Status& st, const std::string& what) {
  EXPECT_EQ(st.code(), StatusCode::kResourceExhausted) << what << ": " << st.ToString();
  EXPECT_NE(st.message().find("disk full"), std::string::npos) << what << ": " << st.ToString();
}

// The files under `dir` are exactly the chunks in `stored`, each whole:
// no temp files, no torn or stray files, no health probes.
void ExpectFilesAreExactly(const std::string& dir, DiskTier& t, const std::map<uint64_t, Stored>& stored) {
  std::map<std::string, size_t> want;
  for (const auto& [i, s] : stored) want[t.PathFor(Key(i))] = kHeaderBytes + s.size;
  size_t seen = 0;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (e.is_directory()) continue;
    const std::string p = e.path().string();
    auto it = want.find(p);
    if (it == want.end()) {
      ADD_FAILURE() << "left behind: " << p << " (" << e.file_size() << " bytes)";
      continue;
    }
    ++seen;
    EXPECT_EQ(e.file_size(), it->second) << p;
  }
  EXPECT_EQ(seen, want.size()) << "chunk files missing";
}

void ExpectAccounting(DiskTier& t, const std::map<uint64_t, Stored>& stored) {
  size_t bytes = 0;
  for (const auto& [i, s] : stored) bytes += s.size;
  const TierStats s = t.stats();
  EXPECT_EQ(s.used_bytes, bytes);
  EXPECT_EQ(s.chunks, stored.size());
}

void ExpectReadBack(DiskTier& t, const std::map<uint64_t, Stored>& stored) {
  for (const auto& [i, s] : stored) {
    auto g = t.Get(Key(i)).get();
    ASSERT_TRUE(g.ok()) << "chunk " << i << ": " << g.status().ToString();
    const auto want = Bytes(s.size, s.seed);
    EXPECT_TRUE(g->size() == want.size() && std::equal(want.begin(), want.end(), g->bytes().begin()))
        << "chunk " << i << " of " << s.size << " bytes differs";
  }
}

void FillAndRecover(const std::string& root, const Mode& mode) {
  const std::string dir = root + "/" + mode.name;
  ASSERT_EQ(::mkdir(dir.c_str(), 0755), 0) << std::strerror(errno);
  const uint64_t free_at_start = FreeBytes(dir);
  ASSERT_GT(free_at_start, kTmpfsBytes / 2);

  DiskTierOptions o;
  o.dir = dir;
  // Far above the filesystem: the byte cap must never be what refuses.
  o.capacity_bytes = size_t{1} << 30;
  o.use_io_uring = mode.uring;
  o.o_direct = mode.direct;
  o.io_threads = 2;
  auto opened = DiskTier::Open(o);
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  std::unique_ptr<DiskTier> t = std::move(*opened);

  std::map<uint64_t, Stored> stored;
  std::vector<uint64_t> failed;
  uint64_t next = 0;
  auto put = [&](size_t size) -> Status {
    const uint64_t i = next++;
    const uint32_t seed = static_cast<uint32_t>(i * 2654435761u + 17);
    Status st = t->Put(Key(i), ChunkBlob::Adopt(Bytes(size, seed))).get();
    if (st.ok()) {
      stored[i] = {size, seed};
    } else {
      failed.push_back(i);
      ExpectDiskFull(st, "put of " + std::to_string(size) + " bytes");
    }
    return st;
  };

  // Large chunks, one at a time, until the disk refuses one.
  Status first_full = Status::Ok();
  std::vector<size_t> before_full;
  for (int n = 0; n < 64 && first_full.ok(); ++n) {
    const size_t size = 60000 + static_cast<size_t>(n) * 7919 % 40000;
    first_full = put(size);
    if (first_full.ok()) before_full.push_back(size);
  }
  ASSERT_FALSE(first_full.ok()) << "a 1 MiB tmpfs took 64 chunks of 60+ KB";
  ASSERT_GE(before_full.size(), 3u);
  const std::map<uint64_t, Stored> stored_before_full = stored;

  // Several Puts in flight at once on the full disk.
  std::vector<std::pair<uint64_t, std::future<Status>>> burst;
  std::map<uint64_t, Stored> burst_blobs;
  for (int n = 0; n < 8; ++n) {
    const uint64_t i = next++;
    const Stored s{20000 + static_cast<size_t>(n) * 3000, static_cast<uint32_t>(i + 99)};
    burst_blobs[i] = s;
    burst.emplace_back(i, t->Put(Key(i), ChunkBlob::Adopt(Bytes(s.size, s.seed))));
  }
  for (auto& [i, f] : burst) {
    Status st = f.get();
    if (st.ok()) {
      stored[i] = burst_blobs[i];
    } else {
      failed.push_back(i);
      ExpectDiskFull(st, "burst put");
    }
  }

  // Ever smaller chunks fill the last pages; when even a 1-byte chunk (one
  // page with its header) is refused, the filesystem has nothing left.
  size_t size = 32768;
  for (int n = 0; n < 2000 && size > 0; ++n) {
    if (!put(size).ok()) size /= 2;
  }
  ASSERT_EQ(size, 0u) << "never filled the last page";
  t->Flush();
  Report(std::string(mode.name) + ": " + std::to_string(before_full.size()) + " chunks stored before ENOSPC, " +
         std::to_string(stored.size()) + " in all, " + std::to_string(failed.size()) +
         " puts refused, first: " + first_full.ToString());

  TierStats s = t->stats();
  EXPECT_EQ(s.put_failures, failed.size());
  EXPECT_EQ(s.puts, stored.size());
  ExpectAccounting(*t, stored);
  ExpectFilesAreExactly(dir, *t, stored);
  for (uint64_t i : failed) EXPECT_FALSE(t->Contains(Key(i))) << "refused chunk " << i << " is indexed";
  ExpectReadBack(*t, stored);
  // Nothing is left, so the health probe cannot write its byte either.
  ExpectDiskFull(t->Health(), "health on a full disk");
  EXPECT_LT(FreeBytes(dir), 4096u);

  // A restart on the full disk finds every chunk whole and nothing to drop.
  t.reset();
  opened = DiskTier::Open(o);
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  t = std::move(*opened);
  EXPECT_EQ(t->open_report().chunks, stored.size());
  EXPECT_EQ(t->open_report().dropped_torn, 0u);
  EXPECT_EQ(t->open_report().dropped_temp, 0u);
  ExpectAccounting(*t, stored);
  ExpectReadBack(*t, stored);

  // Removing one chunk frees its pages: a refused chunk of the same size
  // now fits (the refusal left no index entry that would swallow the Put).
  const auto largest = std::max_element(stored.begin(), stored.end(), [](const auto& a, const auto& b) {
    return a.second.size < b.second.size;
  });
  const uint64_t removed = largest->first;
  const size_t freed = largest->second.size;
  ASSERT_TRUE(t->Remove(Key(removed)).ok());
  stored.erase(removed);
  EXPECT_FALSE(fs::exists(t->PathFor(Key(removed))));
  const uint64_t retry = failed.front();
  const Stored again{freed, 4242};
  Status st = t->Put(Key(retry), ChunkBlob::Adopt(Bytes(again.size, again.seed))).get();
  EXPECT_TRUE(st.ok()) << st.ToString();
  if (st.ok()) stored[retry] = again;
  t->Flush();
  ExpectAccounting(*t, stored);
  ExpectFilesAreExactly(dir, *t, stored);
  ExpectReadBack(*t, stored);

  // Clear gives every page back (no open descriptor pins an unlinked file)
  // and the disk takes the same chunks it took before it first filled.
  ASSERT_TRUE(t->Clear().ok());
  t->Flush();
  stored.clear();
  ExpectAccounting(*t, stored);
  ExpectFilesAreExactly(dir, *t, stored);
  EXPECT_EQ(FreeBytes(dir), free_at_start);
  for (const auto& [i, s0] : stored_before_full) {
    const Stored s1{s0.size, s0.seed + 1};
    st = t->Put(Key(i), ChunkBlob::Adopt(Bytes(s1.size, s1.seed))).get();
    EXPECT_TRUE(st.ok()) << "after Clear: " << st.ToString();
    if (st.ok()) stored[i] = s1;
  }
  t->Flush();
  EXPECT_TRUE(t->Health().ok());
  ExpectAccounting(*t, stored);
  ExpectFilesAreExactly(dir, *t, stored);
  ExpectReadBack(*t, stored);
  EXPECT_EQ(t->stats().put_failures, 0u) << "counters restart with the reopened tier";

  ASSERT_TRUE(t->Clear().ok());
  t.reset();
  std::error_code ec;
  fs::remove_all(dir, ec);
}

// KV for a chain of chunks as the engine stores them (real chunk encoding,
// real keys), 64 KiB of f16 per chunk.
struct KvChain : testing::KvChunkChain {
  static constexpr int kLayers = 4;
  static constexpr int kHeads = 4;
  static constexpr int kHeadDim = 64;
  static constexpr int kChunk = 16;
  explicit KvChain(int n_chunks)
      : KvChunkChain({kLayers, kHeads, kHeadDim, kChunk}, n_chunks, "0123456789abcdef0123456789abcdef", 11, 5) {}
};

// The store as the engine drives it (host RAM above a write-through disk
// tier) when the disk fills: stores keep working from RAM, the disk's
// refusals are counted, chunks that reached the disk come back exactly,
// and the disk takes chunks again once cleared.
void StoreThroughAFullDisk(const std::string& root) {
  const std::string dir = root + "/store";
  ASSERT_EQ(::mkdir(dir.c_str(), 0755), 0) << std::strerror(errno);
  constexpr int kChunks = 24;  // 1.5 MiB of chunks for a 1 MiB disk
  KvChain c(kChunks);

  HostTierOptions ho;
  ho.capacity_bytes = 16 << 20;
  auto host = HostTier::Create(ho);
  ASSERT_TRUE(host.ok()) << host.status().ToString();
  DiskTierOptions dopt;
  dopt.dir = dir;
  dopt.capacity_bytes = size_t{1} << 30;
  auto disk = DiskTier::Open(dopt);
  ASSERT_TRUE(disk.ok()) << disk.status().ToString();
  DiskTier* d = disk->get();
  std::vector<StoreTier> tiers;
  tiers.push_back(StoreTier{std::move(*host), ChunkEncoding{}, true});
  tiers.push_back(StoreTier{std::move(*disk), ChunkEncoding{}, true});
  auto made = KvStore::Create(std::move(tiers), KvStoreOptions{});
  ASSERT_TRUE(made.ok()) << made.status().ToString();
  std::unique_ptr<KvStore> store = std::move(*made);

  // One at a time, so the chunks that reached the disk are a prefix.
  for (int i = 0; i < kChunks; ++i) {
    store->Store(c.keys[i], c.Meta(i), c.Blob(i));
    store->Flush();
  }
  KvStoreStats st = store->stats();
  const TierStats ds = st.tiers[1].tier;
  const size_t on_disk = ds.chunks;
  Report("store: " + std::to_string(on_disk) + " of " + std::to_string(kChunks) + " chunks reached the disk, " +
         std::to_string(st.store_failures) + " disk writes refused");
  ASSERT_GE(on_disk, 3u);
  ASSERT_LT(on_disk, static_cast<size_t>(kChunks)) << "the disk never filled";
  EXPECT_EQ(st.stores, static_cast<uint64_t>(kChunks));
  EXPECT_EQ(st.store_failures, kChunks - on_disk);
  EXPECT_EQ(ds.put_failures, kChunks - on_disk);
  EXPECT_EQ(ds.puts, on_disk);
  EXPECT_EQ(st.tiers[0].tier.put_failures, 0u);
  size_t file_bytes = 0, files = 0;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (e.is_directory()) continue;
    ++files;
    file_bytes += e.file_size() - kHeaderBytes;
    EXPECT_EQ(e.path().string().find(".tmp."), std::string::npos) << "left behind: " << e.path();
  }
  EXPECT_EQ(files, on_disk);
  EXPECT_EQ(ds.used_bytes, file_bytes);

  const StoreLookup l = store->Lookup(c.keys);
  EXPECT_EQ(l.chunks, static_cast<size_t>(kChunks));
  ASSERT_EQ(l.per_tier.size(), 2u);
  EXPECT_EQ(l.per_tier[1], on_disk);
  for (int i = 0; i < kChunks; ++i) {
    auto g = store->Fetch(c.keys[i], c.Meta(i)).get();
    ASSERT_TRUE(g.ok()) << i << ": " << g.status().ToString();
    EXPECT_TRUE(c.Matches(i, *g)) << i;
  }

  // Without the RAM copies: what reached the disk is served from it
  // exactly, the rest is a clean miss (recomputed by the engine).
  ASSERT_TRUE(store->Clear("host").ok());
  for (int i = 0; i < kChunks; ++i) {
    int served = -1;
    auto g = store->Fetch(c.keys[i], c.Meta(i), 0, &served).get();
    if (static_cast<size_t>(i) < on_disk) {
      ASSERT_TRUE(g.ok()) << i << ": " << g.status().ToString();
      EXPECT_EQ(served, 1);
      EXPECT_TRUE(c.Matches(i, *g)) << i;
    } else {
      EXPECT_EQ(g.status().code(), StatusCode::kNotFound) << i << ": " << g.status().ToString();
    }
  }
  store->Flush();

  // Space freed: the chunks the disk refused are stored now.
  ASSERT_TRUE(store->Clear("disk").ok());
  for (int i = static_cast<int>(on_disk); i < kChunks; ++i) store->Store(c.keys[i], c.Meta(i), c.Blob(i));
  store->Flush();
  st = store->stats();
  EXPECT_EQ(st.store_failures, kChunks - on_disk) << "a store failed after the disk was cleared";
  for (int i = static_cast<int>(on_disk); i < kChunks; ++i) {
    EXPECT_TRUE(d->Contains(c.keys[i])) << i;
    auto g = d->Get(c.keys[i]).get();
    ASSERT_TRUE(g.ok()) << i << ": " << g.status().ToString();
    EXPECT_TRUE(c.Matches(i, *g)) << i;
  }
  ASSERT_TRUE(store->Clear().ok());
  store.reset();
  std::error_code ec;
  fs::remove_all(dir, ec);
}

// Runs only when DiskTierDiskFullTest.RealEnospcOnATinyTmpfs starts this
// binary inside a fresh user and mount namespace.
TEST(DiskTierDiskFullChild, DISABLED_FillATinyTmpfs) {
  const char* root = std::getenv(kChildEnv);
  if (!root) GTEST_SKIP() << "runs as a child of DiskTierDiskFullTest.RealEnospcOnATinyTmpfs";
  // A mount made outside a private namespace would outlive the test (and
  // be seen by everyone): mount only where the parent's namespace differs.
  std::error_code ec;
  const std::string own_ns = fs::read_symlink("/proc/self/ns/mnt", ec).string();
  const std::string parent_ns =
      fs::read_symlink("/proc/" + std::to_string(::getppid()) + "/ns/mnt", ec).string();
  if (own_ns.empty() || own_ns == parent_ns) {
    std::printf("%s: not in a mount namespace of its own (%s)\n", kNoMountMarker, own_ns.c_str());
    std::fflush(stdout);
    GTEST_SKIP() << "not in a private mount namespace; run it through DiskTierDiskFullTest";
  }
  const std::string opts = "size=" + std::to_string(kTmpfsBytes) + ",mode=0755";
  if (::mount("strata-disk-full", root, "tmpfs", MS_NOSUID | MS_NODEV, opts.c_str()) != 0) {
    const int err = errno;
    std::printf("%s: mount(tmpfs) at %s: %s\n", kNoMountMarker, root, std::strerror(err));
    std::fflush(stdout);
    GTEST_SKIP() << "cannot mount a tmpfs: " << std::strerror(err);
  }
  // Filling the disk under a mount that silently went elsewhere would fill
  // the real disk: insist on the small tmpfs.
  struct statfs sf {};
  ASSERT_EQ(::statfs(root, &sf), 0);
  ASSERT_EQ(static_cast<unsigned long>(sf.f_type), kTmpfsMagic);
  ASSERT_LE(static_cast<uint64_t>(sf.f_blocks) * sf.f_bsize, 2 * kTmpfsBytes);
  std::printf("%s at %s\n", kMountedMarker, root);
  std::fflush(stdout);

  const Mode modes[] = {
      {"uring", true, false},
      {"pread", false, false},
      {"uring_direct", true, true},
      {"pread_direct", false, true},
  };
  for (const Mode& m : modes) {
    SCOPED_TRACE(m.name);
    FillAndRecover(root, m);
    if (HasFatalFailure()) return;
  }
  StoreThroughAFullDisk(root);
}

// ---------------------------------------------------------------------------
// Parent side.

struct ChildResult {
  bool spawned = false;
  int spawn_error = 0;
  bool timed_out = false;
  int wait_status = 0;
  std::string output;
};

// Starts `argv` with `env`, stdout and stderr into one pipe, and collects
// its output; kills it past `timeout`. posix_spawn: no code of ours runs
// between fork and exec (this process has threads).
ChildResult RunWithTimeout(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                           std::chrono::seconds timeout) {
  ChildResult r;
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    r.spawn_error = errno;
    return r;
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 2);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none;
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);
  std::vector<char*> cargv, cenv;
  for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  for (const auto& e : env) cenv.push_back(const_cast<char*>(e.c_str()));
  cenv.push_back(nullptr);
  pid_t pid = -1;
  r.spawn_error = ::posix_spawnp(&pid, cargv[0], &fa, &attr, cargv.data(), cenv.data());
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  ::close(fds[1]);
  if (r.spawn_error != 0) {
    ::close(fds[0]);
    return r;
  }
  r.spawned = true;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  char buf[4096];
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0 && !r.timed_out) {
      // `unshare` execs the test binary in place, so this pid is the child.
      ::kill(pid, SIGKILL);
      r.timed_out = true;
    }
    pollfd p{fds[0], POLLIN, 0};
    const int pr = ::poll(&p, 1, r.timed_out ? 1000 : static_cast<int>(std::min<int64_t>(left.count(), 1000)));
    if (pr < 0 && errno == EINTR) continue;
    if (pr == 0) {
      if (r.timed_out) break;  // killed, and whatever holds the pipe is silent
      continue;
    }
    const ssize_t n = ::read(fds[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    r.output.append(buf, static_cast<size_t>(n));
  }
  ::close(fds[0]);
  while (::waitpid(pid, &r.wait_status, 0) < 0 && errno == EINTR) {
  }
  return r;
}

std::string SelfExe() {
  char self[4096];
  const ssize_t n = ::readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) return "";
  self[n] = 0;
  return self;
}

// The child must not write the parent's test report nor take part in its
// sharding or premature-exit detection.
std::vector<std::string> ChildEnv(const std::string& dir) {
  std::vector<std::string> env;
  for (char** e = environ; *e; ++e) {
    const std::string_view v(*e);
    if (v.starts_with("GTEST_") || v.starts_with("TEST_PREMATURE_EXIT_FILE=") || v.starts_with("XML_OUTPUT_FILE=") ||
        v.starts_with(std::string(kChildEnv) + "="))
      continue;
    env.emplace_back(v);
  }
  env.push_back(std::string(kChildEnv) + "=" + dir);
  return env;
}

TEST(DiskTierDiskFullTest, RealEnospcOnATinyTmpfs) {
  const std::string self = SelfExe();
  ASSERT_FALSE(self.empty());
  std::string tmpl = (fs::temp_directory_path() / "strata_disk_full_XXXXXX").string();
  ASSERT_NE(::mkdtemp(tmpl.data()), nullptr) << std::strerror(errno);
  const std::string dir = tmpl;

  const std::vector<std::string> argv = {"unshare",
                                         "-rm",
                                         self,
                                         "--gtest_also_run_disabled_tests",
                                         std::string("--gtest_filter=") + kChildTest,
                                         "--gtest_color=no"};
  // Sanitized builds run the child several times slower.
  const auto timeout = std::chrono::seconds(std::getenv("STRATA_SANITIZED") ? 120 : 60);
  const ChildResult r = RunWithTimeout(argv, ChildEnv(dir), timeout);
  std::error_code ec;
  fs::remove_all(dir, ec);  // empty: the tmpfs was only ever mounted in the child's namespace

  if (!r.spawned) GTEST_SKIP() << "cannot run unshare: " << std::strerror(r.spawn_error);
  ASSERT_FALSE(r.timed_out) << "the child hung and was killed after " << timeout.count() << " s:\n" << r.output;
  if (r.output.find(kNoMountMarker) != std::string::npos)
    GTEST_SKIP() << "the child could not mount its tmpfs:\n" << r.output;
  if (r.output.find(std::string("[ RUN      ] ") + kChildTest) == std::string::npos)
    GTEST_SKIP() << "unshare -rm is not permitted here (user or mount namespaces are off):\n" << r.output;

  // From here on the child ran on a real tiny disk: every problem is a failure.
  std::istringstream lines(r.output);
  for (std::string line; std::getline(lines, line);)
    if (line.starts_with(kReportMarker)) std::printf("%s\n", line.c_str() + std::strlen(kReportMarker) + 1);
  EXPECT_NE(r.output.find(kMountedMarker), std::string::npos) << r.output;
  ASSERT_TRUE(WIFEXITED(r.wait_status)) << "child died by signal " << WTERMSIG(r.wait_status) << ":\n" << r.output;
  EXPECT_EQ(WEXITSTATUS(r.wait_status), 0) << r.output;
  EXPECT_NE(r.output.find("[  PASSED  ] 1 test"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("[  SKIPPED ]"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace strata
