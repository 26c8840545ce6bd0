// PeerWatch: tells a blocking HTTP handler whether its client is still
// connected.
//
// cpp-httplib (0.11) keeps a connection's socket private, and a non-streaming
// handler writes nothing until generation ends, so a vanished client would
// otherwise go unnoticed while the engine keeps computing for it. The
// request carries the connection's addresses and ports, which identify the
// socket among the process's descriptors (Linux: /proc/self/fd).
//
// A client that half-closes its sending side after the request (legal HTTP/1.1,
// rare in practice) looks gone too, as it does to nginx.
//
// Thread-safety: one PeerWatch per handler thread. The descriptor is only
// peeked at, never read from or closed.
#pragma once

#include <optional>
#include <string>

namespace strata {

class PeerWatch {
 public:
  // The socket connected from remote_addr:remote_port to local_port
  // (local_addr too when it parses; numeric IPv4 or IPv6, as cpp-httplib
  // writes them). nullopt when no such socket is found (not Linux, no /proc,
  // a remote address that does not parse): the caller cannot tell, and
  // should assume the client is there.
  static std::optional<PeerWatch> Find(const std::string& remote_addr, int remote_port, const std::string& local_addr,
                                       int local_port);

  // True once the client has closed or reset the connection, or the
  // descriptor no longer belongs to it. Never blocks.
  bool PeerGone() const;

  int fd() const { return fd_; }

 private:
  // An IP address in IPv6 form (IPv4 as ::ffff:a.b.c.d) and a port.
  struct Endpoint {
    unsigned char addr[16] = {};
    int port = -1;
    bool any_addr = false;  // match any address (a local_addr that did not parse)
  };

  PeerWatch(int fd, const Endpoint& remote, const Endpoint& local) : fd_(fd), remote_(remote), local_(local) {}
  // Whether fd is a TCP socket connected from `remote` to `local`.
  static bool Matches(int fd, const Endpoint& remote, const Endpoint& local);

  int fd_ = -1;
  Endpoint remote_, local_;
};

}  // namespace strata
