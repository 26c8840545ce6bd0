#include "cache/disk_tier.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

namespace strata {
namespace {

namespace fs = std::filesystem;

// A fresh directory per test, removed afterwards.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "strata_disk_tier_XXXXXX").string();
    path_ = ::mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    fs::permissions(path_, fs::perms::owner_all, fs::perm_options::add, ec);
    fs::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

ChunkKey Key(uint64_t i) { return ChunkKey{0x9e3779b97f4a7c15ull * (i + 1), i}; }

std::vector<uint8_t> Bytes(size_t n, uint32_t seed) {
  std::vector<uint8_t> v(n);
  std::mt19937 rng(seed);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

ChunkBlob Blob(size_t n, uint32_t seed) { return ChunkBlob::Adopt(Bytes(n, seed)); }

bool SameBytes(const ChunkBlob& b, const std::vector<uint8_t>& v) {
  return b.size() == v.size() && std::equal(v.begin(), v.end(), b.bytes().begin());
}

std::unique_ptr<DiskTier> OpenTier(DiskTierOptions o) {
  auto t = DiskTier::Open(o);
  EXPECT_TRUE(t.ok()) << (t.ok() ? "" : t.status().ToString());
  return t.ok() ? std::move(*t) : nullptr;
}

DiskTierOptions Opts(const std::string& dir, size_t cap = 0) {
  DiskTierOptions o;
  o.dir = dir;
  o.capacity_bytes = cap;
  return o;
}

TEST(DiskTierTest, PutGetContainsRemoveClear) {
  TempDir d;
  auto t = OpenTier(Opts(d.path()));
  ASSERT_TRUE(t);
  EXPECT_EQ(t->name(), "disk");
  EXPECT_TRUE(t->Health().ok());
  EXPECT_FALSE(t->Contains(Key(1)));
  EXPECT_EQ(t->Get(Key(1)).get().status().code(), StatusCode::kNotFound);

  const auto a = Bytes(10000, 1), b = Bytes(1, 2);
  ASSERT_TRUE(t->Put(Key(1), ChunkBlob::Copy(a)).get().ok());
  ASSERT_TRUE(t->Put(Key(2), ChunkBlob::Copy(b)).get().ok());
  ASSERT_TRUE(t->Put(Key(3), ChunkBlob()).get().ok());  // empty payloads are legal
  // An existing key is kept; the Put still succeeds.
  ASSERT_TRUE(t->Put(Key(1), Blob(5, 9)).get().ok());
  EXPECT_TRUE(fs::exists(t->PathFor(Key(1))));
  EXPECT_TRUE(t->Contains(Key(1)));

  auto g = t->Get(Key(1)).get();
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  EXPECT_TRUE(SameBytes(*g, a));
  auto g3 = t->Get(Key(3)).get();
  ASSERT_TRUE(g3.ok());
  EXPECT_EQ(g3->size(), 0u);
  std::array<ChunkKey, 4> chain = {Key(1), Key(2), Key(4), Key(3)};
  EXPECT_EQ(t->CountPrefix(chain), 2u);

  TierStats s = t->stats();
  EXPECT_EQ(s.puts, 3u);
  EXPECT_EQ(s.chunks, 3u);
  EXPECT_EQ(s.used_bytes, a.size() + b.size());
  EXPECT_EQ(s.hits, 2u);
  EXPECT_EQ(s.misses, 1u);

  ASSERT_TRUE(t->Remove(Key(1)).ok());
  EXPECT_EQ(t->Remove(Key(1)).code(), StatusCode::kNotFound);
  EXPECT_FALSE(t->Contains(Key(1)));
  EXPECT_FALSE(fs::exists(t->PathFor(Key(1))));
  EXPECT_EQ(t->Get(Key(1)).get().status().code(), StatusCode::kNotFound);

  ASSERT_TRUE(t->Clear().ok());
  EXPECT_FALSE(t->Contains(Key(2)));
  EXPECT_FALSE(fs::exists(t->PathFor(Key(2))));
  EXPECT_EQ(t->stats().used_bytes, 0u);
  EXPECT_EQ(t->stats().chunks, 0u);
}

TEST(DiskTierTest, RejectsBadOptions) {
  TempDir d;
  DiskTierOptions o = Opts(d.path());
  o.policy = "fifo-ish";
  EXPECT_EQ(DiskTier::Open(o).status().code(), StatusCode::kInvalidArgument);
  o = Opts("");
  EXPECT_EQ(DiskTier::Open(o).status().code(), StatusCode::kInvalidArgument);
  std::ofstream(d.path() + "/file") << "x";
  o = Opts(d.path() + "/file");
  EXPECT_FALSE(DiskTier::Open(o).ok());
}

TEST(DiskTierTest, CapacityEvictsLeastRecentlyUsedAndCallsListener) {
  TempDir d;
  auto t = OpenTier(Opts(d.path(), 3000));
  ASSERT_TRUE(t);
  std::mutex mu;
  std::vector<std::pair<ChunkKey, size_t>> evicted;
  std::vector<bool> evicted_ok;
  t->SetEvictionListener([&](const ChunkKey& k, ChunkBlob b) {
    std::lock_guard<std::mutex> l(mu);
    evicted.emplace_back(k, b.size());
    evicted_ok.push_back(SameBytes(b, Bytes(1000, static_cast<uint32_t>(k.lo))));
  });
  for (uint64_t i = 0; i < 3; ++i) ASSERT_TRUE(t->Put(Key(i), Blob(1000, static_cast<uint32_t>(i))).get().ok());
  ASSERT_TRUE(t->Get(Key(0)).get().ok());  // key 0 is now the most recent
  ASSERT_TRUE(t->Put(Key(3), Blob(1000, 3)).get().ok());
  t->Flush();
  EXPECT_TRUE(t->Contains(Key(0)));
  EXPECT_FALSE(t->Contains(Key(1)));
  EXPECT_FALSE(fs::exists(t->PathFor(Key(1))));
  ASSERT_EQ(evicted.size(), 1u);
  EXPECT_EQ(evicted[0].first, Key(1));
  EXPECT_EQ(evicted[0].second, 1000u);
  EXPECT_TRUE(evicted_ok[0]);
  TierStats s = t->stats();
  EXPECT_EQ(s.evictions, 1u);
  EXPECT_LE(s.used_bytes, 3000u);
  EXPECT_EQ(s.capacity_bytes, 3000u);

  // Larger than the whole budget: refused, counted, nothing evicted.
  EXPECT_EQ(t->Put(Key(9), Blob(3001, 9)).get().code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(t->stats().put_failures, 1u);
  EXPECT_EQ(t->stats().chunks, 3u);
}

TEST(DiskTierTest, S3FifoPolicyWorks) {
  TempDir d;
  DiskTierOptions o = Opts(d.path(), 4000);
  o.policy = "s3fifo";
  auto t = OpenTier(o);
  ASSERT_TRUE(t);
  for (uint64_t i = 0; i < 20; ++i) ASSERT_TRUE(t->Put(Key(i), Blob(1000, static_cast<uint32_t>(i))).get().ok());
  t->Flush();
  EXPECT_LE(t->stats().used_bytes, 4000u);
  EXPECT_EQ(t->stats().evictions, 16u);
  EXPECT_TRUE(t->Contains(Key(19)));
}

TEST(DiskTierTest, PinsBlockEvictionUntilTheyExpire) {
  TempDir d;
  auto t = OpenTier(Opts(d.path(), 2000));
  ASSERT_TRUE(t);
  ASSERT_TRUE(t->Put(Key(0), Blob(1000, 0)).get().ok());
  ASSERT_TRUE(t->Put(Key(1), Blob(1000, 1)).get().ok());
  EXPECT_EQ(t->Pin(Key(7), std::chrono::seconds(10)).code(), StatusCode::kNotFound);
  ASSERT_TRUE(t->Pin(Key(0), std::chrono::seconds(10)).ok());
  ASSERT_TRUE(t->Pin(Key(1), std::chrono::milliseconds(100)).ok());
  EXPECT_EQ(t->stats().pinned, 2u);
  // Everything pinned: no room.
  EXPECT_EQ(t->Put(Key(2), Blob(1000, 2)).get().code(), StatusCode::kResourceExhausted);
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
  EXPECT_EQ(t->stats().pinned, 1u);
  ASSERT_TRUE(t->Put(Key(2), Blob(1000, 2)).get().ok());  // key 1's pin expired
  EXPECT_TRUE(t->Contains(Key(0)));
  EXPECT_FALSE(t->Contains(Key(1)));
  ASSERT_TRUE(t->Unpin(Key(0)).ok());
  ASSERT_TRUE(t->Put(Key(3), Blob(1000, 3)).get().ok());
  EXPECT_FALSE(t->Contains(Key(0)));
}

TEST(DiskTierTest, RestartRebuildsIndexAndEnforcesCap) {
  TempDir d;
  {
    auto t = OpenTier(Opts(d.path()));
    ASSERT_TRUE(t);
    for (uint64_t i = 0; i < 4; ++i) {
      ASSERT_TRUE(t->Put(Key(i), Blob(1000, static_cast<uint32_t>(i))).get().ok());
      std::this_thread::sleep_for(std::chrono::milliseconds(5));  // distinct mtimes: age order
    }
  }
  {
    auto t = OpenTier(Opts(d.path()));
    ASSERT_TRUE(t);
    EXPECT_EQ(t->open_report().chunks, 4u);
    EXPECT_EQ(t->open_report().bytes, 4000u);
    EXPECT_EQ(t->stats().used_bytes, 4000u);
    auto g = t->Get(Key(2)).get();
    ASSERT_TRUE(g.ok());
    EXPECT_TRUE(SameBytes(*g, Bytes(1000, 2)));
  }
  {
    // A smaller cap: the oldest files go.
    auto t = OpenTier(Opts(d.path(), 2500));
    ASSERT_TRUE(t);
    EXPECT_EQ(t->open_report().evicted, 2u);
    EXPECT_EQ(t->open_report().chunks, 2u);
    EXPECT_FALSE(t->Contains(Key(0)));
    EXPECT_FALSE(t->Contains(Key(1)));
    EXPECT_TRUE(t->Contains(Key(3)));
  }
}

TEST(DiskTierTest, OpenDropsTornAndTempFiles) {
  TempDir d;
  std::string truncated, garbage, keep, live_tmp, dead_tmp;
  {
    auto t = OpenTier(Opts(d.path()));
    ASSERT_TRUE(t);
    for (uint64_t i = 0; i < 3; ++i) ASSERT_TRUE(t->Put(Key(i), Blob(5000, static_cast<uint32_t>(i))).get().ok());
    truncated = t->PathFor(Key(0));
    garbage = t->PathFor(Key(1));
    keep = t->PathFor(Key(2));
  }
  fs::resize_file(truncated, 3000);
  {
    std::ofstream f(garbage, std::ios::binary | std::ios::trunc);
    f << std::string(5064, 'z');  // right size, wrong header
  }
  // A writer that died (no such pid) and one still alive (this process).
  dead_tmp = keep + ".tmp.2147483600.1";
  live_tmp = keep + ".tmp." + std::to_string(::getpid()) + ".77";
  std::ofstream(dead_tmp) << "partial";
  std::ofstream(live_tmp) << "partial";
  // Files that are not the tier's are left alone.
  const std::string stranger = fs::path(keep).parent_path() / "README";
  std::ofstream(stranger) << "hi";

  auto t = OpenTier(Opts(d.path()));
  ASSERT_TRUE(t);
  EXPECT_EQ(t->open_report().chunks, 1u);
  EXPECT_EQ(t->open_report().dropped_torn, 2u);
  EXPECT_EQ(t->open_report().dropped_temp, 1u);
  EXPECT_FALSE(fs::exists(truncated));
  EXPECT_FALSE(fs::exists(garbage));
  EXPECT_FALSE(fs::exists(dead_tmp));
  EXPECT_TRUE(fs::exists(live_tmp));
  EXPECT_TRUE(fs::exists(stranger));
  EXPECT_FALSE(t->Contains(Key(0)));
  EXPECT_TRUE(t->Get(Key(2)).get().ok());
}

// Flips one payload byte behind the tier's back, keeping the header intact.
void FlipPayloadByte(const std::string& path, size_t payload_offset) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(64 + payload_offset));
  char c;
  f.get(c);
  f.seekp(static_cast<std::streamoff>(64 + payload_offset));
  f.put(static_cast<char>(c ^ 0x40));
}

TEST(DiskTierTest, GetDetectsCorruptPayload) {
  TempDir d;
  auto t = OpenTier(Opts(d.path()));
  ASSERT_TRUE(t);
  ASSERT_TRUE(t->Put(Key(1), Blob(4000, 1)).get().ok());
  ASSERT_TRUE(t->Put(Key(2), Blob(4000, 2)).get().ok());
  FlipPayloadByte(t->PathFor(Key(1)), 1234);
  auto g = t->Get(Key(1)).get();
  EXPECT_EQ(g.status().code(), StatusCode::kCorrupt);
  EXPECT_EQ(t->stats().get_failures, 1u);
  EXPECT_FALSE(fs::exists(t->PathFor(Key(1))));  // never served again
  EXPECT_EQ(t->Get(Key(1)).get().status().code(), StatusCode::kNotFound);

  // verify_on_open catches it before any Get.
  FlipPayloadByte(t->PathFor(Key(2)), 7);
  t.reset();
  DiskTierOptions o = Opts(d.path());
  o.verify_on_open = true;
  t = OpenTier(o);
  ASSERT_TRUE(t);
  EXPECT_EQ(t->open_report().dropped_torn, 1u);
  EXPECT_EQ(t->open_report().chunks, 0u);
}

TEST(DiskTierTest, WriteErrorsAreValuesNotCrashes) {
  TempDir d;
  auto t = OpenTier(Opts(d.path()));
  ASSERT_TRUE(t);
  // The key's fan-out directory replaced by a file: every write there fails.
  const fs::path sub = fs::path(t->PathFor(Key(5))).parent_path();
  fs::remove_all(sub);
  std::ofstream(sub.string()) << "not a directory";
  Status st = t->Put(Key(5), Blob(1000, 5)).get();
  EXPECT_EQ(st.code(), StatusCode::kIoError) << st.ToString();
  EXPECT_EQ(t->stats().put_failures, 1u);
  EXPECT_EQ(t->stats().used_bytes, 0u);  // the reservation was returned
  EXPECT_FALSE(t->Contains(Key(5)));
  EXPECT_EQ(t->Get(Key(5)).get().status().code(), StatusCode::kIoError);
  fs::remove(sub);
  fs::create_directory(sub);

  // A file-size limit makes the write itself fail halfway (EFBIG): the
  // nearest unprivileged stand-in for a full disk.
  struct sigaction ignore {}, old{};
  ignore.sa_handler = SIG_IGN;
  ::sigaction(SIGXFSZ, &ignore, &old);
  rlimit old_lim{};
  ::getrlimit(RLIMIT_FSIZE, &old_lim);
  rlimit lim = old_lim;
  lim.rlim_cur = 16384;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &lim), 0);
  st = t->Put(Key(6), Blob(100000, 6)).get();
  ::setrlimit(RLIMIT_FSIZE, &old_lim);
  ::sigaction(SIGXFSZ, &old, nullptr);
  EXPECT_FALSE(st.ok());
  EXPECT_EQ(t->stats().put_failures, 2u);
  EXPECT_FALSE(t->Contains(Key(6)));
  // No temp file left behind.
  for (const auto& e : fs::directory_iterator(fs::path(t->PathFor(Key(6))).parent_path()))
    ADD_FAILURE() << "left behind: " << e.path();
  // And the tier still works.
  EXPECT_TRUE(t->Put(Key(7), Blob(1000, 7)).get().ok());
  EXPECT_TRUE(t->Get(Key(7)).get().ok());
}

TEST(DiskTierTest, ReadOnlyDirectoryFailsHealthAndPuts) {
  if (::geteuid() == 0) GTEST_SKIP() << "root ignores directory permissions";
  TempDir d;
  auto t = OpenTier(Opts(d.path()));
  ASSERT_TRUE(t);
  for (const auto& e : fs::directory_iterator(d.path()))
    fs::permissions(e.path(), fs::perms::owner_write, fs::perm_options::remove);
  fs::permissions(d.path(), fs::perms::owner_write, fs::perm_options::remove);
  EXPECT_FALSE(t->Health().ok());
  EXPECT_EQ(t->Put(Key(1), Blob(100, 1)).get().code(), StatusCode::kIoError);
  for (const auto& e : fs::directory_iterator(d.path()))
    fs::permissions(e.path(), fs::perms::owner_write, fs::perm_options::add);
}

TEST(DiskTierTest, TwoInstancesShareOneDirectory) {
  TempDir d;
  auto a = OpenTier(Opts(d.path()));
  auto b = OpenTier(Opts(d.path()));
  ASSERT_TRUE(a && b);
  ASSERT_TRUE(a->Put(Key(1), Blob(3000, 1)).get().ok());
  // b opened before the write: it finds the file on disk.
  EXPECT_TRUE(b->Contains(Key(1)));
  auto g = b->Get(Key(1)).get();
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  EXPECT_TRUE(SameBytes(*g, Bytes(3000, 1)));
  EXPECT_EQ(b->stats().chunks, 1u);  // adopted into b's index
  // b's Put of the same key is a no-op that succeeds.
  EXPECT_TRUE(b->Put(Key(1), Blob(3000, 1)).get().ok());

  // Deleted by the other instance: a clean miss, not an error.
  ASSERT_TRUE(b->Remove(Key(1)).ok());
  EXPECT_EQ(a->Get(Key(1)).get().status().code(), StatusCode::kNotFound);
  EXPECT_EQ(a->stats().get_failures, 0u);
  EXPECT_FALSE(a->Contains(Key(1)));
  EXPECT_EQ(a->stats().chunks, 0u);
}

// The child half of TwoProcessesShareOneDirectory: runs only when the
// parent starts this binary again with the directory in the environment.
TEST(DiskTierChildProcess, DISABLED_WriteReadRemove) {
  const char* dir = std::getenv("STRATA_DISK_TIER_SHARED_DIR");
  if (!dir) GTEST_SKIP() << "runs as a child of TwoProcessesShareOneDirectory";
  auto t = OpenTier(Opts(dir));
  ASSERT_TRUE(t);
  auto g = t->Get(Key(1)).get();  // written by the parent
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  EXPECT_TRUE(SameBytes(*g, Bytes(3000, 1)));
  ASSERT_TRUE(t->Put(Key(100), Blob(7000, 100)).get().ok());
  ASSERT_TRUE(t->Remove(Key(2)).ok());  // the parent still has it indexed
}

TEST(DiskTierTest, TwoProcessesShareOneDirectory) {
  TempDir d;
  auto a = OpenTier(Opts(d.path()));
  ASSERT_TRUE(a);
  ASSERT_TRUE(a->Put(Key(1), Blob(3000, 1)).get().ok());
  ASSERT_TRUE(a->Put(Key(2), Blob(3000, 2)).get().ok());
  char self[4096];
  const ssize_t n = ::readlink("/proc/self/exe", self, sizeof self - 1);
  ASSERT_GT(n, 0);
  self[n] = 0;
  const std::string cmd = "STRATA_DISK_TIER_SHARED_DIR=" + d.path() + " " + self +
                          " --gtest_also_run_disabled_tests --gtest_filter=DiskTierChildProcess.DISABLED_WriteReadRemove 2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  ASSERT_TRUE(p);
  std::string out;
  char buf[4096];
  size_t got;
  while ((got = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, got);
  const int status = ::pclose(p);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << out;
  ASSERT_NE(out.find("[  PASSED  ] 1 test"), std::string::npos) << out;

  EXPECT_TRUE(a->Contains(Key(100)));
  auto g = a->Get(Key(100)).get();
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  EXPECT_TRUE(SameBytes(*g, Bytes(7000, 100)));
  EXPECT_EQ(a->Get(Key(2)).get().status().code(), StatusCode::kNotFound);
  EXPECT_EQ(a->stats().get_failures, 0u);
}

class DiskTierIoTest : public ::testing::TestWithParam<std::tuple<bool, bool>> {};

TEST_P(DiskTierIoTest, RoundTripsOddSizes) {
  const auto [uring, direct] = GetParam();
  TempDir d;
  DiskTierOptions o = Opts(d.path());
  o.use_io_uring = uring;
  o.o_direct = direct;
  o.io_threads = 3;
  auto t = OpenTier(o);
  ASSERT_TRUE(t);
  const std::vector<size_t> sizes = {1, 4031, 4032, 4033, 8192, 100000, (3u << 20) + 17};
  std::vector<std::future<Status>> puts;
  for (size_t i = 0; i < sizes.size(); ++i) puts.push_back(t->Put(Key(i), Blob(sizes[i], static_cast<uint32_t>(i))));
  for (auto& p : puts) ASSERT_TRUE(p.get().ok());
  for (size_t i = 0; i < sizes.size(); ++i) {
    EXPECT_EQ(fs::file_size(t->PathFor(Key(i))), 64 + sizes[i]);
    auto g = t->Get(Key(i)).get();
    ASSERT_TRUE(g.ok()) << sizes[i] << ": " << g.status().ToString();
    EXPECT_TRUE(SameBytes(*g, Bytes(sizes[i], static_cast<uint32_t>(i)))) << sizes[i];
  }
  if (uring) {
    EXPECT_TRUE(t->using_io_uring());
  }
}

INSTANTIATE_TEST_SUITE_P(Modes, DiskTierIoTest,
                         ::testing::Combine(::testing::Bool(), ::testing::Bool()),
                         [](const auto& info) {
                           return std::string(std::get<0>(info.param) ? "Uring" : "Pread") +
                                  (std::get<1>(info.param) ? "Direct" : "Buffered");
                         });

TEST(DiskTierTest, ODirectOnTmpfsWorksEitherWay) {
  // tmpfs refused O_DIRECT before Linux 6.6 and accepts it since: either
  // way the tier must serve, and say which it did.
  if (!fs::is_directory("/dev/shm") || ::access("/dev/shm", W_OK) != 0) GTEST_SKIP() << "no /dev/shm";
  std::string tmpl = "/dev/shm/strata_disk_tier_XXXXXX";
  const std::string dir = ::mkdtemp(tmpl.data());
  const std::string probe = dir + "/probe";
  const int pfd = ::open(probe.c_str(), O_CREAT | O_WRONLY | O_DIRECT, 0644);
  const bool fs_allows_direct = pfd >= 0;
  if (pfd >= 0) ::close(pfd);
  ::unlink(probe.c_str());
  {
    DiskTierOptions o = Opts(dir);
    o.o_direct = true;
    auto t = OpenTier(o);
    ASSERT_TRUE(t);
    ASSERT_TRUE(t->Put(Key(1), Blob(10000, 1)).get().ok());
    auto g = t->Get(Key(1)).get();
    ASSERT_TRUE(g.ok()) << g.status().ToString();
    EXPECT_TRUE(SameBytes(*g, Bytes(10000, 1)));
    EXPECT_EQ(t->using_o_direct(), fs_allows_direct);
  }
  fs::remove_all(dir);
}

TEST(DiskTierTest, ConcurrentPutsGetsAndEvictionsStayConsistent) {
  TempDir d;
  DiskTierOptions o = Opts(d.path(), 20 * 2000);
  o.fsync = false;  // this test is about the index, not durability
  o.io_threads = 3;
  auto t = OpenTier(o);
  ASSERT_TRUE(t);
  std::atomic<int> evictions{0};
  t->SetEvictionListener([&](const ChunkKey&, ChunkBlob b) {
    EXPECT_EQ(b.size(), 2000u);
    evictions.fetch_add(1);
  });
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (int th = 0; th < 4; ++th) {
    threads.emplace_back([&, th] {
      std::mt19937 rng(static_cast<uint32_t>(th));
      for (int i = 0; i < 150; ++i) {
        const uint64_t k = rng() % 60;
        switch (rng() % 4) {
          case 0:
          case 1: {
            Status st = t->Put(Key(k), Blob(2000, static_cast<uint32_t>(k))).get();
            if (!st.ok() && st.code() != StatusCode::kResourceExhausted) bad.fetch_add(1);
            break;
          }
          case 2: {
            auto g = t->Get(Key(k)).get();
            if (g.ok() ? !SameBytes(*g, Bytes(2000, static_cast<uint32_t>(k)))
                       : g.status().code() != StatusCode::kNotFound)
              bad.fetch_add(1);
            break;
          }
          default:
            if (rng() % 8 == 0) (void)t->Remove(Key(k));
            else (void)t->Contains(Key(k));
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  t->Flush();
  EXPECT_EQ(bad.load(), 0);
  const TierStats s = t->stats();
  EXPECT_LE(s.used_bytes, 20u * 2000u);
  EXPECT_EQ(s.used_bytes, s.chunks * 2000u);
  // Index and directory agree.
  size_t files = 0;
  for (const auto& e : fs::recursive_directory_iterator(d.path())) files += e.is_regular_file() ? 1 : 0;
  EXPECT_EQ(files, s.chunks);
}

// Not a test: `--gtest_also_run_disabled_tests --gtest_filter='*DiskTierBench*'`
// prints write and read throughput for io_uring vs pread/pwrite.
TEST(DiskTierBench, DISABLED_UringVersusThreadPool) {
  const size_t kChunk = 4u << 20;
  const int kChunks = 64;
  for (bool direct : {false, true}) {
    for (bool uring : {false, true}) {
      TempDir d;
      DiskTierOptions o = Opts(d.path());
      o.use_io_uring = uring;
      o.o_direct = direct;
      o.io_threads = 2;
      auto t = OpenTier(o);
      ASSERT_TRUE(t);
      auto blob = Blob(kChunk, 1);
      auto t0 = std::chrono::steady_clock::now();
      std::vector<std::future<Status>> puts;
      for (int i = 0; i < kChunks; ++i) puts.push_back(t->Put(Key(static_cast<uint64_t>(i)), blob));
      for (auto& p : puts) ASSERT_TRUE(p.get().ok());
      const double w = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (!direct) ::sync();
      t0 = std::chrono::steady_clock::now();
      std::vector<std::future<Expected<ChunkBlob>>> gets;
      for (int i = 0; i < kChunks; ++i) gets.push_back(t->Get(Key(static_cast<uint64_t>(i))));
      for (auto& g : gets) ASSERT_TRUE(g.get().ok());
      const double r = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const double mb = static_cast<double>(kChunk) * kChunks / 1e6;
      std::printf("%-6s %-8s write+fsync %7.0f MB/s  read %7.0f MB/s\n", uring ? "uring" : "pread",
                  direct ? "O_DIRECT" : "buffered", mb / w, mb / r);
    }
  }
}

}  // namespace
}  // namespace strata
