#include "cache/disk_tier.h"

#include <dirent.h>
#include <fcntl.h>
#include <liburing.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <new>

#include "cache/io_executor.h"

namespace strata {
namespace {

constexpr char kMagic[8] = {'S', 'T', 'R', 'K', 'V', 'D', 'K', '1'};
constexpr uint32_t kVersion = 1;
constexpr size_t kHeaderSize = 64;
constexpr size_t kAlign = 4096;  // O_DIRECT: buffer, length and offset alignment
constexpr size_t kSegmentMin = 1 << 20;  // split I/O into parallel segments above this
constexpr int kMaxSegments = 4;
constexpr const char* kSuffix = ".kv";
constexpr const char* kTempMarker = ".tmp.";

// The tier's own file header; the payload (an encoded chunk) follows it.
// Little-endian on disk (the build targets x86-64 / aarch64 LE).
struct FileHeader {
  char magic[8];
  uint32_t version;
  uint32_t header_size;
  uint64_t payload_len;
  uint64_t payload_xxh3;
  uint64_t key_hi;
  uint64_t key_lo;
  uint64_t header_xxh3;  // of the 48 bytes above
  uint64_t reserved;
};
static_assert(sizeof(FileHeader) == kHeaderSize);

FileHeader MakeHeader(const ChunkKey& key, std::span<const uint8_t> payload) {
  FileHeader h{};
  std::memcpy(h.magic, kMagic, sizeof kMagic);
  h.version = kVersion;
  h.header_size = kHeaderSize;
  h.payload_len = payload.size();
  h.payload_xxh3 = XXH3_64bits(payload.data(), payload.size());
  h.key_hi = key.hi;
  h.key_lo = key.lo;
  h.header_xxh3 = XXH3_64bits(&h, offsetof(FileHeader, header_xxh3));
  return h;
}

// Checks everything the header alone can tell: who wrote it, for which key,
// and how long the file must be.
Status CheckHeader(const FileHeader& h, const ChunkKey& key, uint64_t file_size, const std::string& path) {
  if (std::memcmp(h.magic, kMagic, sizeof kMagic) != 0)
    return Status::Corrupt(path + ": not a Strata disk-tier chunk file (bad magic)");
  if (h.header_xxh3 != XXH3_64bits(&h, offsetof(FileHeader, header_xxh3)))
    return Status::Corrupt(path + ": header checksum mismatch");
  if (h.version != kVersion || h.header_size != kHeaderSize)
    return Status::Corrupt(path + ": unsupported disk-tier file version " + std::to_string(h.version));
  if (h.key_hi != key.hi || h.key_lo != key.lo) return Status::Corrupt(path + ": holds a different key");
  if (file_size != kHeaderSize + h.payload_len)
    return Status::Corrupt(path + ": torn file (" + std::to_string(file_size) + " bytes, header says " +
                           std::to_string(kHeaderSize + h.payload_len) + ")");
  return Status::Ok();
}

size_t RoundUp(size_t n, size_t a) { return (n + a - 1) / a * a; }

// A 4 KiB-aligned heap buffer shared by the ChunkBlobs viewing it.
std::shared_ptr<uint8_t> AlignedBuffer(size_t n) {
  auto* p = static_cast<uint8_t*>(::operator new(std::max<size_t>(n, 1), std::align_val_t(kAlign), std::nothrow));
  if (!p) return nullptr;
  return std::shared_ptr<uint8_t>(p, [](uint8_t* q) { ::operator delete(q, std::align_val_t(kAlign)); });
}

Status ErrnoStatus(int err, const std::string& what) {
  std::string msg = what + ": " + std::strerror(err);
  if (err == ENOSPC || err == EDQUOT) return Status::ResourceExhausted("disk full: " + msg);
  if (err == ENOENT) return Status::NotFound(msg);
  return Status::IoError(msg);
}

struct Segment {
  uint8_t* buf;
  size_t len;
  off_t off;
};

// Splits [buf, buf+len) at file offset `off` into up to kMaxSegments pieces,
// each a multiple of kAlign except the last, so several can be in flight.
void AddSegments(std::vector<Segment>* segs, uint8_t* buf, size_t len, off_t off) {
  if (len < 2 * kSegmentMin) {
    segs->push_back({buf, len, off});
    return;
  }
  const size_t piece = RoundUp(len / kMaxSegments + 1, kAlign);
  for (size_t done = 0; done < len; done += piece) {
    segs->push_back({buf + done, std::min(piece, len - done), off + static_cast<off_t>(done)});
  }
}

// Blocking pread/pwrite of a whole segment; a read stops early at EOF.
// Returns bytes transferred or -errno.
ssize_t SyncIo(int fd, bool write, const Segment& s, size_t already) {
  size_t done = already;
  while (done < s.len) {
    const ssize_t r = write ? ::pwrite(fd, s.buf + done, s.len - done, s.off + static_cast<off_t>(done))
                            : ::pread(fd, s.buf + done, s.len - done, s.off + static_cast<off_t>(done));
    if (r < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (r == 0) {
      if (write) return -EIO;
      break;
    }
    done += static_cast<size_t>(r);
  }
  return static_cast<ssize_t>(done);
}

std::atomic<bool> g_uring_broken{false};

// One ring per I/O thread: rings are not thread-safe, and a per-thread ring
// needs no lock. Created on first use, closed when the thread exits.
struct ThreadRing {
  io_uring ring{};
  bool tried = false;
  bool ok = false;
  io_uring* Get() {
    if (!tried) {
      tried = true;
      ok = io_uring_queue_init(16, &ring, 0) == 0;
      if (!ok) g_uring_broken = true;
    }
    return ok ? &ring : nullptr;
  }
  void Break() {
    if (ok) io_uring_queue_exit(&ring);
    ok = false;
    g_uring_broken = true;
  }
  ~ThreadRing() {
    if (ok) io_uring_queue_exit(&ring);
  }
};
thread_local ThreadRing t_ring;

// Submits all segments at once on the thread's ring and waits for them.
// done[i] receives bytes transferred or -errno. Returns false if the ring
// itself misbehaved (the caller then redoes everything with plain syscalls).
bool UringIo(io_uring* ring, int fd, bool write, const std::vector<Segment>& segs, bool fsync_after,
             std::vector<ssize_t>* done) {
  const unsigned n = static_cast<unsigned>(segs.size()) + (fsync_after ? 1u : 0u);
  for (size_t i = 0; i < segs.size(); ++i) {
    io_uring_sqe* sqe = io_uring_get_sqe(ring);
    if (!sqe) return false;
    if (write) {
      io_uring_prep_write(sqe, fd, segs[i].buf, static_cast<unsigned>(segs[i].len), static_cast<uint64_t>(segs[i].off));
    } else {
      io_uring_prep_read(sqe, fd, segs[i].buf, static_cast<unsigned>(segs[i].len), static_cast<uint64_t>(segs[i].off));
    }
    io_uring_sqe_set_data64(sqe, i);
  }
  if (fsync_after) {
    // DRAIN: the fsync starts only after every write above has completed,
    // so the data and its fsync cost one submission.
    io_uring_sqe* sqe = io_uring_get_sqe(ring);
    if (!sqe) return false;
    io_uring_prep_fsync(sqe, fd, 0);
    sqe->flags |= IOSQE_IO_DRAIN;
    io_uring_sqe_set_data64(sqe, segs.size());
  }
  int submitted;
  do {
    submitted = io_uring_submit(ring);
  } while (submitted == -EINTR);
  if (submitted < 0 || static_cast<unsigned>(submitted) != n) return false;
  done->assign(n, 0);
  for (unsigned got = 0; got < n;) {
    io_uring_cqe* cqe = nullptr;
    const int r = io_uring_wait_cqe(ring, &cqe);
    if (r == -EINTR) continue;
    if (r < 0) return false;
    const uint64_t idx = io_uring_cqe_get_data64(cqe);
    if (idx < n) (*done)[idx] = cqe->res;
    io_uring_cqe_seen(ring, cqe);
    ++got;
  }
  return true;
}

// Transfers every segment (a read may stop at EOF) and, for writes, fsyncs
// when asked. Returns total bytes transferred, or an error status.
Expected<size_t> DoIo(int fd, bool write, const std::vector<Segment>& segs, bool fsync_after, bool use_uring,
                      const std::string& path) {
  std::vector<ssize_t> done;
  bool need_fsync = fsync_after && write;
  bool ring_done = false;
  if (use_uring && !segs.empty()) {
    if (io_uring* ring = t_ring.Get()) {
      const bool fits = std::all_of(segs.begin(), segs.end(), [](const Segment& g) { return g.len < (1u << 30); });
      if (segs.size() + 1 <= 16 && fits) {
        if (UringIo(ring, fd, write, segs, need_fsync, &done)) {
          ring_done = true;
        } else {
          t_ring.Break();
        }
      }
    }
  }
  size_t total = 0;
  bool short_write = false;
  for (size_t i = 0; i < segs.size(); ++i) {
    ssize_t r = ring_done ? done[i] : 0;
    // A ring op that was interrupted or short is finished with syscalls.
    if (r == -EINTR || r == -EAGAIN) r = 0;
    if (r >= 0 && static_cast<size_t>(r) < segs[i].len) {
      if (ring_done && write) short_write = true;
      r = SyncIo(fd, write, segs[i], static_cast<size_t>(r));
    }
    if (r < 0) return ErrnoStatus(static_cast<int>(-r), std::string(write ? "writing " : "reading ") + path);
    total += static_cast<size_t>(r);
    // A short read means EOF: later segments have nothing either.
    if (!write && static_cast<size_t>(r) < segs[i].len) break;
  }
  if (need_fsync) {
    const ssize_t fr = ring_done ? done[segs.size()] : 0;
    if (ring_done && fr < 0 && fr != -EINTR) return ErrnoStatus(static_cast<int>(-fr), "fsync " + path);
    if (!ring_done || short_write || fr == -EINTR) {
      if (::fsync(fd) != 0) return ErrnoStatus(errno, "fsync " + path);
    }
  }
  return total;
}

class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      if (fd_ >= 0) ::close(fd_);
      fd_ = o.fd_;
      o.fd_ = -1;
    }
    return *this;
  }
  int get() const { return fd_; }
  // Close reporting errors (delayed write errors surface here on some filesystems).
  int Close() {
    const int r = ::close(fd_);
    fd_ = -1;
    return r;
  }

 private:
  int fd_;
};

Status FsyncDir(const std::string& dir) {
  Fd d(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (d.get() < 0) return ErrnoStatus(errno, "opening directory " + dir);
  if (::fsync(d.get()) != 0 && errno != EINVAL) return ErrnoStatus(errno, "fsync directory " + dir);
  return Status::Ok();
}

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

std::atomic<uint64_t> g_temp_counter{0};

std::string SubdirName(const std::string& hex) { return hex.substr(0, 2); }

}  // namespace

DiskTier::DiskTier(const DiskTierOptions& options) : options_(options) {
  direct_ok_ = options.o_direct;
  stats_.capacity_bytes = options.capacity_bytes;
}

DiskTier::~DiskTier() {
  io_.reset();  // runs every queued job first
}

Expected<std::unique_ptr<DiskTier>> DiskTier::Open(const DiskTierOptions& options) {
  if (options.dir.empty()) return Status::InvalidArgument("disk tier: no directory given");
  if (options.io_threads < 1 || options.io_threads > 64)
    return Status::InvalidArgument("disk tier: io_threads must be 1..64, got " + std::to_string(options.io_threads));
  STRATA_ASSIGN_OR_RETURN(auto policy, MakeEvictionPolicy(options.policy));
  std::unique_ptr<DiskTier> t(new DiskTier(options));
  t->policy_ = std::move(policy);
  STRATA_RETURN_IF_ERROR(t->Scan().WithContext("opening disk tier " + options.dir));
  t->io_ = std::make_unique<IoExecutor>(options.io_threads);
  return t;
}

std::string DiskTier::PathFor(const ChunkKey& key) const {
  const std::string hex = key.Hex();
  return options_.dir + "/" + SubdirName(hex) + "/" + hex + kSuffix;
}

bool DiskTier::using_io_uring() const { return options_.use_io_uring && !g_uring_broken.load(); }

Status DiskTier::Scan() {
  const std::string& dir = options_.dir;
  if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) return ErrnoStatus(errno, "creating " + dir);
  struct stat dst;
  if (::stat(dir.c_str(), &dst) != 0) return ErrnoStatus(errno, dir);
  if (!S_ISDIR(dst.st_mode)) return Status::InvalidArgument(dir + " is not a directory");
  // Fan-out directories are made on first write (256 mkdirs and a
  // directory fsync up front cost ~0.4 s on a VM disk).
  static const char kHexDigits[] = "0123456789abcdef";

  struct Found {
    ChunkKey key;
    size_t bytes;
    struct timespec mtime;
  };
  std::vector<Found> found;
  const auto now_wall = ::time(nullptr);
  for (int i = 0; i < 256; ++i) {
    const std::string subname = std::string() + kHexDigits[i >> 4] + kHexDigits[i & 15];
    const std::string sub = dir + "/" + subname;
    DIR* d = ::opendir(sub.c_str());
    if (!d) {
      if (errno == ENOENT || errno == ENOTDIR) continue;
      return ErrnoStatus(errno, "listing " + sub);
    }
    std::vector<std::string> names;
    while (dirent* e = ::readdir(d)) names.emplace_back(e->d_name);
    ::closedir(d);
    for (const std::string& name : names) {
      if (name == "." || name == "..") continue;
      const std::string path = sub + "/" + name;
      struct stat st;
      if (::lstat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
      const size_t tmp_at = name.find(kTempMarker);
      if (tmp_at != std::string::npos) {
        // A temp file is a write in progress or one that died. Keep those of
        // live processes (another tier may share the directory) unless
        // stale enough that the pid was surely reused.
        const std::string rest = name.substr(tmp_at + std::strlen(kTempMarker));
        const long pid = std::strtol(rest.c_str(), nullptr, 10);
        const bool alive = pid > 0 && (::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM);
        const bool stale = now_wall - st.st_mtime > 3600;
        if (!alive || stale) {
          if (::unlink(path.c_str()) == 0) ++open_report_.dropped_temp;
        }
        continue;
      }
      if (!EndsWith(name, kSuffix)) continue;
      const auto key = ChunkKey::FromHex(std::string_view(name).substr(0, name.size() - std::strlen(kSuffix)));
      if (!key || name.compare(0, 2, subname) != 0) continue;  // not ours; leave it
      Status ok = Status::Ok();
      {
        Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
        if (fd.get() < 0) continue;  // deleted meanwhile by another process
        FileHeader h{};
        const ssize_t r = ::pread(fd.get(), &h, sizeof h, 0);
        if (r != static_cast<ssize_t>(sizeof h)) {
          ok = Status::Corrupt(path + ": shorter than its header");
        } else {
          ok = CheckHeader(h, *key, static_cast<uint64_t>(st.st_size), path);
        }
      }
      if (ok.ok() && options_.verify_on_open) {
        auto r = ReadChunk(*key);
        if (!r.ok() && r.status().code() != StatusCode::kNotFound) ok = r.status();
      }
      if (!ok.ok()) {
        if (::unlink(path.c_str()) == 0) ++open_report_.dropped_torn;
        continue;
      }
      found.push_back({*key, static_cast<size_t>(st.st_size) - kHeaderSize, st.st_mtim});
    }
  }
  // Oldest first, so the policy's first victims are the least recently written.
  std::sort(found.begin(), found.end(), [](const Found& a, const Found& b) {
    return a.mtime.tv_sec != b.mtime.tv_sec ? a.mtime.tv_sec < b.mtime.tv_sec : a.mtime.tv_nsec < b.mtime.tv_nsec;
  });
  std::lock_guard<std::mutex> l(mu_);
  for (const Found& f : found) AdoptLocked(f.key, f.bytes);
  const auto now = Clock::now();
  while (options_.capacity_bytes && used_ > options_.capacity_bytes) {
    auto v = policy_->Victim([&](const ChunkKey& k) {
      auto it = index_.find(k);
      return it != index_.end() && PinnedLocked(k, it->second, now);
    });
    if (!v) break;
    const std::string path = PathFor(*v);
    EraseLocked(*v);
    ::unlink(path.c_str());
    ++open_report_.evicted;
  }
  open_report_.chunks = index_.size();
  open_report_.bytes = used_;
  return Status::Ok();
}

void DiskTier::AdoptLocked(const ChunkKey& key, size_t bytes) {
  Entry e;
  e.bytes = bytes;
  e.id = next_id_++;
  index_.emplace(key, std::move(e));
  policy_->Insert(key, bytes);
  used_ += bytes;
}

void DiskTier::EraseLocked(const ChunkKey& key) {
  auto it = index_.find(key);
  if (it != index_.end()) {
    used_ -= it->second.bytes;
    index_.erase(it);
  }
  policy_->Erase(key);
}

bool DiskTier::PinnedLocked(const ChunkKey&, const Entry& e, Clock::time_point now) const {
  return e.writing || e.pin_until > now;
}

bool DiskTier::ProbeAndAdopt(const ChunkKey& key) {
  std::lock_guard<std::mutex> l(mu_);
  return ProbeAndAdoptLocked(key, std::nullopt);
}

bool DiskTier::ProbeAndAdoptLocked(const ChunkKey& key, std::optional<size_t> bytes) {
  if (index_.count(key)) return true;
  // The stat runs under the lock: our own Remove/evict/Clear unlinks while
  // the key is marked, so a file seen here is not one we are deleting.
  if (deleting_.count(key) || clearing_ > 0) return false;
  const std::string path = PathFor(key);
  struct stat st;
  if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode) || static_cast<size_t>(st.st_size) < kHeaderSize)
    return false;
  AdoptLocked(key, bytes.value_or(static_cast<size_t>(st.st_size) - kHeaderSize));
  return true;
}

bool DiskTier::Contains(const ChunkKey& key) { return ProbeAndAdopt(key); }

Expected<ChunkBlob> DiskTier::ReadChunk(const ChunkKey& key) {
  const std::string path = PathFor(key);
  bool direct = options_.o_direct && direct_ok_.load();
  int fd_raw = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | (direct ? O_DIRECT : 0));
  if (fd_raw < 0 && direct && errno == EINVAL) {
    direct_ok_ = false;  // the filesystem refuses O_DIRECT (tmpfs)
    direct = false;
    fd_raw = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  }
  if (fd_raw < 0) return ErrnoStatus(errno, "opening " + path);
  Fd fd(fd_raw);
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return ErrnoStatus(errno, "stat " + path);
  const size_t size = static_cast<size_t>(st.st_size);
  if (size < kHeaderSize) return Status::Corrupt(path + ": shorter than its header");
  const size_t want = direct ? RoundUp(size, kAlign) : size;
  std::shared_ptr<uint8_t> buf = AlignedBuffer(want);
  if (!buf) return Status::ResourceExhausted("out of memory reading " + path);
  std::vector<Segment> segs;
  AddSegments(&segs, buf.get(), want, 0);
  auto got = DoIo(fd.get(), /*write=*/false, segs, false, options_.use_io_uring, path);
  if (!got.ok() && direct && got.status().code() == StatusCode::kIoError) {
    // Some filesystems accept O_DIRECT at open and refuse it at read.
    direct_ok_ = false;
    Fd plain(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (plain.get() < 0) return ErrnoStatus(errno, "opening " + path);
    segs.clear();
    AddSegments(&segs, buf.get(), size, 0);
    got = DoIo(plain.get(), false, segs, false, options_.use_io_uring, path);
  }
  if (!got.ok()) return got.status();
  if (*got < size) return Status::Corrupt(path + ": truncated while reading");
  FileHeader h;
  std::memcpy(&h, buf.get(), sizeof h);
  STRATA_RETURN_IF_ERROR(CheckHeader(h, key, size, path));
  const uint8_t* payload = buf.get() + kHeaderSize;
  if (XXH3_64bits(payload, h.payload_len) != h.payload_xxh3)
    return Status::Corrupt(path + ": payload checksum mismatch");
  return ChunkBlob::View(std::span<const uint8_t>(payload, h.payload_len), std::move(buf));
}

Status DiskTier::WriteChunk(const ChunkKey& key, const ChunkBlob& blob) {
  const std::string final_path = PathFor(key);
  {
    // Another process sharing the directory may have stored it already.
    struct stat st;
    if (::stat(final_path.c_str(), &st) == 0 && static_cast<size_t>(st.st_size) == kHeaderSize + blob.size())
      return Status::Ok();
  }
  const std::string tmp = final_path + kTempMarker + std::to_string(::getpid()) + "." +
                          std::to_string(g_temp_counter.fetch_add(1));
  const FileHeader header = MakeHeader(key, blob.bytes());
  const size_t file_size = kHeaderSize + blob.size();

  Status st = Status::Ok();
  const std::string subdir = options_.dir + "/" + SubdirName(key.Hex());
  auto write_file = [&](bool direct) -> Status {
    const int flags = O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | (direct ? O_DIRECT : 0);
    Fd fd(::open(tmp.c_str(), flags, 0644));
    if (fd.get() < 0 && errno == ENOENT) {
      // First chunk in this fan-out directory (or someone removed it).
      if (::mkdir(subdir.c_str(), 0755) != 0 && errno != EEXIST) return ErrnoStatus(errno, "creating " + subdir);
      if (options_.fsync) STRATA_RETURN_IF_ERROR(FsyncDir(options_.dir));
      fd = Fd(::open(tmp.c_str(), flags, 0644));
    }
    if (fd.get() < 0) return ErrnoStatus(errno, "creating " + tmp);
    std::vector<Segment> segs;
    std::shared_ptr<uint8_t> staging;
    if (direct) {
      // O_DIRECT wants aligned memory and whole blocks: stage header and
      // payload in one aligned buffer, trim the padding afterwards.
      const size_t padded = RoundUp(file_size, kAlign);
      staging = AlignedBuffer(padded);
      if (!staging) return Status::ResourceExhausted("out of memory writing " + tmp);
      std::memcpy(staging.get(), &header, kHeaderSize);
      if (!blob.empty()) std::memcpy(staging.get() + kHeaderSize, blob.bytes().data(), blob.size());
      std::memset(staging.get() + file_size, 0, padded - file_size);
      AddSegments(&segs, staging.get(), padded, 0);
    } else {
      // Buffered: header and payload straight from the caller's bytes.
      segs.push_back({const_cast<uint8_t*>(reinterpret_cast<const uint8_t*>(&header)), kHeaderSize, 0});
      if (!blob.empty())
        AddSegments(&segs, const_cast<uint8_t*>(blob.bytes().data()), blob.size(), static_cast<off_t>(kHeaderSize));
    }
    // With O_DIRECT the fsync must follow the truncation, so it is separate.
    const bool fsync_in_io = options_.fsync && !direct;
    auto w = DoIo(fd.get(), /*write=*/true, segs, fsync_in_io, options_.use_io_uring, tmp);
    if (!w.ok()) return w.status();
    if (direct) {
      if (::ftruncate(fd.get(), static_cast<off_t>(file_size)) != 0) return ErrnoStatus(errno, "truncating " + tmp);
      if (options_.fsync && ::fsync(fd.get()) != 0) return ErrnoStatus(errno, "fsync " + tmp);
    }
    if (fd.Close() != 0) return ErrnoStatus(errno, "closing " + tmp);
    return Status::Ok();
  };

  const bool direct = options_.o_direct && direct_ok_.load();
  st = write_file(direct);
  if (!st.ok() && direct && st.code() == StatusCode::kIoError) {
    // EINVAL at open or write: this filesystem does not do O_DIRECT.
    Status plain = write_file(false);
    if (plain.ok()) direct_ok_ = false;
    st = plain;
  }
  if (st.ok() && ::rename(tmp.c_str(), final_path.c_str()) != 0) st = ErrnoStatus(errno, "renaming " + tmp);
  if (!st.ok()) {
    ::unlink(tmp.c_str());
    return st;
  }
  if (options_.fsync) {
    st = FsyncDir(subdir);
    if (!st.ok()) {
      // A failed Put is dropped from the index; a whole file left under the
      // final name would hold disk space that used_bytes no longer counts.
      ::unlink(final_path.c_str());
      return st;
    }
  }
  return Status::Ok();
}

std::future<Expected<ChunkBlob>> DiskTier::Get(const ChunkKey& key) {
  {
    std::lock_guard<std::mutex> l(mu_);
    auto it = index_.find(key);
    if (it != index_.end()) {
      policy_->Touch(key);
      if (it->second.writing) {
        // Read-your-writes while the file is still being written.
        ++stats_.hits;
        stats_.bytes_read += it->second.pending.size();
        return ReadyFuture<Expected<ChunkBlob>>(it->second.pending);
      }
    } else if (deleting_.count(key)) {
      ++stats_.misses;
      return ReadyFuture<Expected<ChunkBlob>>(Status::NotFound("chunk " + key.Hex() + " is being evicted"));
    }
  }
  return io_->Async<Expected<ChunkBlob>>([this, key]() -> Expected<ChunkBlob> {
    const auto t0 = Clock::now();
    Expected<ChunkBlob> r = ReadChunk(key);
    const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
    // Every corrupt answer of a whole-file read is the file's own fault.
    FinishRead(key, r, secs, /*count_hit=*/true, /*damaged=*/!r.ok() && r.status().code() == StatusCode::kCorrupt,
               r.ok() ? std::optional<size_t>(r->size()) : std::nullopt);
    return r;
  });
}

void DiskTier::FinishRead(const ChunkKey& key, const Expected<ChunkBlob>& r, double secs, bool count_hit, bool damaged,
                          std::optional<size_t> payload_bytes) {
  bool unlink_bad = false;
  {
    std::lock_guard<std::mutex> l(mu_);
    auto it = index_.find(key);
    const bool erasable = it != index_.end() && !it->second.writing;
    if (r.ok()) {
      if (count_hit) ++stats_.hits;
      stats_.bytes_read += r->size();
      stats_.get_seconds += secs;
      if (it == index_.end()) ProbeAndAdoptLocked(key, payload_bytes);
    } else if (r.status().code() == StatusCode::kNotFound) {
      // Absent, or deleted by another process: a clean miss.
      ++stats_.misses;
      if (erasable) EraseLocked(key);
    } else {
      ++stats_.get_failures;
      if (damaged) {
        unlink_bad = true;
        if (erasable) EraseLocked(key);
      }
    }
  }
  if (unlink_bad) ::unlink(PathFor(key).c_str());
}

std::future<Status> DiskTier::Put(const ChunkKey& key, ChunkBlob blob) {
  std::vector<Victim> victims;
  uint64_t id = 0;
  Status fail = Status::Ok();
  {
    std::lock_guard<std::mutex> l(mu_);
    if (index_.count(key)) return ReadyFuture(Status::Ok());
    // Being evicted or removed right now: storing it again would race with
    // the unlink. A cache may drop a Put; this one counts as stored-then-evicted.
    if (deleting_.count(key)) return ReadyFuture(Status::Ok());
    const size_t cap = options_.capacity_bytes;
    if (cap && blob.size() > cap) {
      ++stats_.put_failures;
      return ReadyFuture(Status::ResourceExhausted("chunk of " + std::to_string(blob.size()) +
                                                   " bytes exceeds the disk tier's capacity of " +
                                                   std::to_string(cap) + " bytes"));
    }
    const auto now = Clock::now();
    while (cap && used_ + blob.size() > cap) {
      auto v = policy_->Victim([&](const ChunkKey& k) {
        auto it = index_.find(k);
        return it != index_.end() && PinnedLocked(k, it->second, now);
      });
      if (!v) break;
      auto it = index_.find(*v);
      if (it == index_.end()) {  // policy and index disagree; heal
        policy_->Erase(*v);
        continue;
      }
      victims.push_back({*v, it->second.bytes});
      EraseLocked(*v);
      deleting_.insert(*v);
      ++stats_.evictions;
    }
    if (cap && used_ + blob.size() > cap) {
      ++stats_.put_failures;
      fail = Status::ResourceExhausted("disk tier full: every chunk is pinned or being written (" +
                                       std::to_string(used_) + " of " + std::to_string(cap) + " bytes)");
    } else {
      Entry e;
      e.bytes = blob.size();
      e.id = id = next_id_++;
      e.writing = true;
      e.pending = blob;
      index_.emplace(key, std::move(e));
      policy_->Insert(key, blob.size());
      used_ += blob.size();
    }
    ++in_flight_;
  }
  if (!fail.ok()) {
    // Chunks already evicted on the way still go to the listener.
    io_->Submit([this, victims = std::move(victims)] {
      ProcessVictims(victims);
      FinishPut(ChunkKey{}, 0, Status::Ok(), 0, 0);
    });
    return ReadyFuture(std::move(fail));
  }
  return io_->Async<Status>([this, key, id, blob = std::move(blob), victims = std::move(victims)]() {
    ProcessVictims(victims);
    const auto t0 = Clock::now();
    Status st = WriteChunk(key, blob);
    FinishPut(key, id, st, blob.size(), std::chrono::duration<double>(Clock::now() - t0).count());
    return st;
  });
}

void DiskTier::ProcessVictims(const std::vector<Victim>& victims) {
  if (victims.empty()) return;
  EvictionListener listener;
  {
    std::lock_guard<std::mutex> l(mu_);
    listener = listener_;
  }
  for (const Victim& v : victims) {
    ChunkBlob blob;
    bool have = false;
    if (listener) {
      auto r = ReadChunk(v.key);
      if (r.ok()) {
        blob = std::move(*r);
        have = true;
      }
    }
    ::unlink(PathFor(v.key).c_str());
    {
      std::lock_guard<std::mutex> l(mu_);
      deleting_.erase(v.key);
    }
    if (have) listener(v.key, std::move(blob));
  }
}

void DiskTier::FinishPut(const ChunkKey& key, uint64_t id, const Status& st, size_t bytes, double secs) {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (id != 0) {
      auto it = index_.find(key);
      const bool mine = it != index_.end() && it->second.id == id;
      if (st.ok()) {
        ++stats_.puts;
        stats_.bytes_written += bytes;
        stats_.put_seconds += secs;
        if (mine) {
          it->second.writing = false;
          it->second.pending = ChunkBlob();
        } else if (it == index_.end()) {
          // Removed or cleared while being written. Unlinked under the lock
          // so that no new Put of the key can slip in between.
          ::unlink(PathFor(key).c_str());
        }
      } else {
        ++stats_.put_failures;
        if (mine) EraseLocked(key);
      }
    }
    --in_flight_;
  }
  flushed_cv_.notify_all();
}

void DiskTier::Flush() {
  std::unique_lock<std::mutex> l(mu_);
  flushed_cv_.wait(l, [this] { return in_flight_ == 0; });
}

Status DiskTier::Remove(const ChunkKey& key) {
  bool known;
  {
    std::lock_guard<std::mutex> l(mu_);
    known = index_.count(key) > 0;
    if (known) EraseLocked(key);
    deleting_.insert(key);
  }
  const std::string path = PathFor(key);
  const int r = ::unlink(path.c_str());
  const int err = errno;
  {
    std::lock_guard<std::mutex> l(mu_);
    deleting_.erase(key);
  }
  if (r != 0) {
    if (err != ENOENT) return ErrnoStatus(err, "removing " + path);
    if (!known) return Status::NotFound("chunk " + key.Hex() + " is not in the disk tier");
  }
  return Status::Ok();
}

Status DiskTier::Clear() {
  {
    std::lock_guard<std::mutex> l(mu_);
    for (const auto& [k, e] : index_) policy_->Erase(k);
    index_.clear();
    used_ = 0;
    ++clearing_;
  }
  // Every chunk file, also those of other processes sharing the directory;
  // temp files are left to their writers (ours are dropped in FinishPut).
  Status first_error = Status::Ok();
  static const char kHexDigits[] = "0123456789abcdef";
  for (int i = 0; i < 256; ++i) {
    const std::string sub = options_.dir + "/" + kHexDigits[i >> 4] + kHexDigits[i & 15];
    DIR* d = ::opendir(sub.c_str());
    if (!d) continue;
    std::vector<std::string> names;
    while (dirent* e = ::readdir(d)) names.emplace_back(e->d_name);
    ::closedir(d);
    for (const std::string& name : names) {
      if (!EndsWith(name, kSuffix) || name.find(kTempMarker) != std::string::npos) continue;
      const std::string path = sub + "/" + name;
      if (::unlink(path.c_str()) != 0 && errno != ENOENT && first_error.ok())
        first_error = ErrnoStatus(errno, "removing " + path);
    }
  }
  {
    std::lock_guard<std::mutex> l(mu_);
    --clearing_;
  }
  return first_error;
}

Status DiskTier::Pin(const ChunkKey& key, std::chrono::milliseconds ttl) {
  for (int attempt = 0; attempt < 2; ++attempt) {
    {
      std::lock_guard<std::mutex> l(mu_);
      auto it = index_.find(key);
      if (it != index_.end()) {
        it->second.pin_until = std::max(it->second.pin_until, Clock::now() + ttl);
        return Status::Ok();
      }
    }
    if (attempt == 0 && !ProbeAndAdopt(key)) break;
  }
  return Status::NotFound("chunk " + key.Hex() + " is not in the disk tier");
}

Status DiskTier::Unpin(const ChunkKey& key) {
  std::lock_guard<std::mutex> l(mu_);
  auto it = index_.find(key);
  if (it == index_.end()) return Status::NotFound("chunk " + key.Hex() + " is not in the disk tier");
  it->second.pin_until = Clock::time_point{};
  return Status::Ok();
}

void DiskTier::SetEvictionListener(EvictionListener listener) {
  std::lock_guard<std::mutex> l(mu_);
  listener_ = std::move(listener);
}

Status DiskTier::Health() {
  const std::string probe = options_.dir + "/.health." + std::to_string(::getpid()) + "." +
                            std::to_string(g_temp_counter.fetch_add(1));
  Fd fd(::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
  if (fd.get() < 0) return ErrnoStatus(errno, "disk tier directory is not writable: " + probe);
  const char b = 0;
  const ssize_t w = ::write(fd.get(), &b, 1);
  const int err = errno;
  fd.Close();
  ::unlink(probe.c_str());
  if (w != 1) return ErrnoStatus(err, "disk tier directory is not writable: " + probe);
  return Status::Ok();
}

TierStats DiskTier::stats() const {
  std::lock_guard<std::mutex> l(mu_);
  TierStats s = stats_;
  s.used_bytes = used_;
  s.capacity_bytes = options_.capacity_bytes;
  s.chunks = index_.size();
  const auto now = Clock::now();
  s.pinned = 0;
  for (const auto& [k, e] : index_) s.pinned += e.pin_until > now ? 1 : 0;
  return s;
}

// A range read opens the file, checks the tier header (key, version, and
// that the file is as long as the header says: a torn file fails here) and
// preads just the range. The whole-payload checksum cannot be checked
// without reading everything; the caller verifies what it reads (the chunk
// format checksums its header and every layer section). Buffered I/O: ranges
// are neither aligned nor large, and the sections of one chunk are read back
// to back, so the page cache's read-ahead helps.
Expected<ChunkBlob> DiskTier::ReadRange(const ChunkKey& key, ByteRange range, bool* damaged) {
  const std::string path = PathFor(key);
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return ErrnoStatus(errno, "opening " + path);
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return ErrnoStatus(errno, "stat " + path);
  const size_t size = static_cast<size_t>(st.st_size);
  FileHeader h;
  *damaged = true;  // until the file's own header checks out
  if (size < kHeaderSize) return Status::Corrupt(path + ": shorter than its header");
  std::vector<Segment> segs{{reinterpret_cast<uint8_t*>(&h), kHeaderSize, 0}};
  auto got = DoIo(fd.get(), /*write=*/false, segs, false, /*use_uring=*/false, path);
  if (!got.ok()) return got.status();
  if (*got < kHeaderSize) return Status::Corrupt(path + ": truncated while reading");
  STRATA_RETURN_IF_ERROR(CheckHeader(h, key, size, path));
  *damaged = false;
  // Past the end of an intact file: the caller's idea of the chunk is wrong
  // (its reader will report the chunk if the chunk itself is bad).
  if (range.offset > h.payload_len || range.length > h.payload_len - range.offset) {
    return Status::Corrupt(path + ": range [" + std::to_string(range.offset) + ", +" + std::to_string(range.length) +
                           ") runs past the " + std::to_string(h.payload_len) + "-byte chunk");
  }
  std::vector<uint8_t> buf(range.length);
  if (range.length > 0) {
    segs.clear();
    AddSegments(&segs, buf.data(), buf.size(), static_cast<off_t>(kHeaderSize + range.offset));
    got = DoIo(fd.get(), /*write=*/false, segs, false, options_.use_io_uring, path);
    if (!got.ok()) return got.status();
    if (*got < buf.size()) return Status::Corrupt(path + ": truncated while reading");
  }
  return ChunkBlob::Adopt(std::move(buf));
}

std::future<Expected<ChunkBlob>> DiskTier::GetRange(const ChunkKey& key, ByteRange range) {
  {
    std::lock_guard<std::mutex> l(mu_);
    auto it = index_.find(key);
    if (it != index_.end()) {
      if (range.offset == 0) policy_->Touch(key);
      if (it->second.writing) {
        // Read-your-writes while the file is still being written.
        Expected<ChunkBlob> part = SliceBlob(it->second.pending, range, key);
        if (part.ok()) {
          if (range.offset == 0) ++stats_.hits;
          stats_.bytes_read += part->size();
        } else {
          ++stats_.get_failures;
        }
        return ReadyFuture<Expected<ChunkBlob>>(std::move(part));
      }
    } else if (deleting_.count(key)) {
      ++stats_.misses;
      return ReadyFuture<Expected<ChunkBlob>>(Status::NotFound("chunk " + key.Hex() + " is being evicted"));
    }
  }
  return io_->Async<Expected<ChunkBlob>>([this, key, range]() -> Expected<ChunkBlob> {
    const auto t0 = Clock::now();
    bool damaged = false;
    Expected<ChunkBlob> r = ReadRange(key, range, &damaged);
    const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
    FinishRead(key, r, secs, /*count_hit=*/range.offset == 0, damaged && !r.ok() && r.status().code() == StatusCode::kCorrupt,
               std::nullopt);
    return r;
  });
}

}  // namespace strata
