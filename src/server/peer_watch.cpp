#include "server/peer_watch.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace strata {

namespace {

// Both families in one form so a dual-stack listener's ::ffff:127.0.0.1 and
// a plain 127.0.0.1 compare equal.
void MapV4(const in_addr& a, unsigned char out[16]) {
  std::memset(out, 0, 10);
  out[10] = 0xff;
  out[11] = 0xff;
  std::memcpy(out + 12, &a, 4);
}

bool ParseAddr(std::string s, unsigned char out[16]) {
  if (s.size() >= 2 && s.front() == '[' && s.back() == ']') s = s.substr(1, s.size() - 2);
  // Link-local scope ids ("fe80::1%eth0") are not part of the address bytes.
  if (const size_t pct = s.find('%'); pct != std::string::npos) s.resize(pct);
  in_addr v4{};
  if (inet_pton(AF_INET, s.c_str(), &v4) == 1) {
    MapV4(v4, out);
    return true;
  }
  in6_addr v6{};
  if (inet_pton(AF_INET6, s.c_str(), &v6) == 1) {
    std::memcpy(out, &v6, 16);
    return true;
  }
  return false;
}

bool FromSockaddr(const sockaddr_storage& ss, unsigned char addr[16], int* port) {
  if (ss.ss_family == AF_INET) {
    sockaddr_in a;
    std::memcpy(&a, &ss, sizeof a);
    MapV4(a.sin_addr, addr);
    *port = ntohs(a.sin_port);
    return true;
  }
  if (ss.ss_family == AF_INET6) {
    sockaddr_in6 a;
    std::memcpy(&a, &ss, sizeof a);
    std::memcpy(addr, &a.sin6_addr, 16);
    *port = ntohs(a.sin6_port);
    return true;
  }
  return false;
}

bool SameEndpoint(const sockaddr_storage& ss, const unsigned char want_addr[16], bool any_addr, int want_port) {
  unsigned char addr[16];
  int port = -1;
  if (!FromSockaddr(ss, addr, &port)) return false;
  return port == want_port && (any_addr || std::memcmp(addr, want_addr, 16) == 0);
}

}  // namespace

bool PeerWatch::Matches(int fd, const Endpoint& remote, const Endpoint& local) {
  int type = 0;
  socklen_t len = sizeof type;
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0 || type != SOCK_STREAM) return false;
  sockaddr_storage ss{};
  len = sizeof ss;
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0 ||
      !SameEndpoint(ss, remote.addr, remote.any_addr, remote.port)) {
    return false;
  }
  ss = {};
  len = sizeof ss;
  return getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) == 0 && SameEndpoint(ss, local.addr, local.any_addr, local.port);
}

std::optional<PeerWatch> PeerWatch::Find(const std::string& remote_addr, int remote_port, const std::string& local_addr,
                                         int local_port) {
  Endpoint remote, local;
  if (remote_port <= 0 || local_port <= 0 || !ParseAddr(remote_addr, remote.addr)) return std::nullopt;
  remote.port = remote_port;
  local.port = local_port;
  local.any_addr = !ParseAddr(local_addr, local.addr);

  DIR* dir = opendir("/proc/self/fd");
  if (!dir) return std::nullopt;
  const int self = dirfd(dir);
  int found = -1;
  while (const dirent* e = readdir(dir)) {
    char* end = nullptr;
    const long n = std::strtol(e->d_name, &end, 10);
    if (end == e->d_name || *end != '\0' || n < 0 || n == self) continue;
    const int fd = static_cast<int>(n);
    struct stat st {};
    if (fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode)) continue;
    if (Matches(fd, remote, local)) {
      found = fd;
      break;
    }
  }
  closedir(dir);
  if (found < 0) return std::nullopt;
  return PeerWatch(found, remote, local);
}

bool PeerWatch::PeerGone() const {
  // Only the handler's own connection thread closes this socket, so its
  // number should not be reused under us; checking is cheap insurance
  // against peeking at somebody else's connection.
  if (!Matches(fd_, remote_, local_)) return true;
  char c;
  const ssize_t n = recv(fd_, &c, 1, MSG_PEEK | MSG_DONTWAIT);
  if (n > 0) return false;  // a pipelined request waits to be read: still there
  if (n == 0) return true;  // orderly close
  return !(errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR);
}

}  // namespace strata
