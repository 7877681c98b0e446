// prefork/socket.hpp: listening sockets, accept, and client connects, for
// every address form of socket_address.hpp.
//
// listen() sets its options before bind(2), so a connection is never
// queued on a half-configured socket; it replaces a unix socket file that
// nobody listens on any more, and names the address in every error
// ("listen 127.0.0.1:80: Permission denied"). accept() returns CLOEXEC
// descriptors and has a non-throwing form for the hot path. This header also
// brings socket_address (socket_address.hpp) and socket_pair, send_fds and
// recv_fds (fd_passing.hpp). Stands on socket, setsockopt, getsockopt, getsockname, bind, listen,
// accept4, connect, fchmod, fchmodat and lstat.
#pragma once

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <prefork/error.hpp>
#include <prefork/exec.hpp>
#include <prefork/fd.hpp>
#include <prefork/fd_passing.hpp>
#include <prefork/socket_address.hpp>

namespace prefork {

// What a listening socket is set up with. TCP options on a unix address
// (and unix_mode on a TCP one) are refused rather than ignored; nodelay,
// on by default, simply does not apply to unix sockets.
struct listen_options {
  int backlog = 1024;      // the kernel caps it at net.core.somaxconn
  bool reuseport = false;  // SO_REUSEPORT: several listeners share the port, the kernel spreads connections
  bool nodelay = true;     // TCP_NODELAY, inherited by accepted sockets
  int defer_accept_s =
      0;  // TCP_DEFER_ACCEPT: accept() wakes only once data arrived (or this many seconds passed)
  mode_t unix_mode = 0;  // permissions of a unix socket file; 0: as the umask gives
};

namespace detail {

inline void set_int_option(int sock, int level, int name, int value, const std::string& what,
                           const char* option) {
  if (::setsockopt(sock, level, name, &value, sizeof value) == -1)
    throw_system_error(what + ": setsockopt " + option);
}

// A unix socket file left by a listener that died (nobody removes it on a
// crash or SIGKILL) makes bind() fail with EADDRINUSE. It is a leftover
// when connecting to it is refused; then it is removed so bind can be
// retried. A live listener, or anything that is not a socket, stays; it
// does see the probe as a connection that closes at once. The test is racy
// only against another process that has bound the path but not yet called
// listen(); the dev/ino check narrows the window to the connect attempt.
inline bool remove_stale_unix_socket(const socket_address& addr) {
  auto* un = reinterpret_cast<const sockaddr_un*>(addr.get());
  struct stat before {};
  struct stat after {};
  if (::lstat(un->sun_path, &before) == -1) return errno == ENOENT;  // gone meanwhile: just retry
  if (!S_ISSOCK(before.st_mode)) return false;
  fd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!probe) return false;
  // Non-blocking, so a live listener with a full backlog answers EAGAIN
  // instead of leaving us waiting.
  if (::connect(probe.get(), addr.get(), addr.size()) == 0 || errno != ECONNREFUSED) return false;
  if (::lstat(un->sun_path, &after) == -1) return errno == ENOENT;
  if (after.st_dev != before.st_dev || after.st_ino != before.st_ino) return false;
  return ::unlink(un->sun_path) == 0 || errno == ENOENT;
}

inline fd listen_unix(const socket_address& addr, const listen_options& opts, const std::string& what) {
  auto* un = reinterpret_cast<const sockaddr_un*>(addr.get());
  bool abstract = un->sun_path[0] == '\0';
  if (opts.reuseport || opts.defer_accept_s != 0)
    throw std::invalid_argument(what + ": reuseport and defer_accept_s are TCP options");
  if (abstract && opts.unix_mode != 0)
    throw std::invalid_argument(what + ": an abstract socket has no file for unix_mode");
  fd sock(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!sock) throw_system_error(what + ": socket");
  // The mode goes on before bind: bind(2) creates the file with the
  // socket's mode less the umask, so it is never born more open than asked.
  // chmod after bind would leave a window in which it is.
  if (opts.unix_mode != 0 && ::fchmod(sock.get(), opts.unix_mode) == -1)
    throw_system_error(what + ": fchmod");
  if (PREFORK_SYSCALL(bind)(sock.get(), addr.get(), addr.size()) == -1) {
    if (errno != EADDRINUSE || abstract) throw_system_error(what);
    struct stat st {};
    if (::lstat(un->sun_path, &st) == 0 && !S_ISSOCK(st.st_mode))
      throw_system_error(what + " (a file that is not a socket is in the way)", EADDRINUSE);
    if (!remove_stale_unix_socket(addr)) throw_system_error(what, EADDRINUSE);
    if (PREFORK_SYSCALL(bind)(sock.get(), addr.get(), addr.size()) == -1) throw_system_error(what);
  }
  auto unlink_and_throw = [&](const std::string& call) {
    int err = errno;
    ::unlink(un->sun_path);  // we created it; leave no file without a listener
    throw_system_error(call, err);
  };
  if (opts.unix_mode != 0) {
    // The umask may have taken bits the caller asked for; give them back.
    // Only ever widens towards unix_mode, before listen() (nobody can
    // connect yet), and never through a symlink someone swapped in.
    struct stat st {};
    if (::lstat(un->sun_path, &st) == -1) unlink_and_throw(what + ": lstat");
    if ((st.st_mode & 07777) != opts.unix_mode &&
        ::fchmodat(AT_FDCWD, un->sun_path, opts.unix_mode, AT_SYMLINK_NOFOLLOW) == -1)
      unlink_and_throw(what + ": fchmodat");
  }
  if (::listen(sock.get(), opts.backlog) == -1) unlink_and_throw(what);
  return sock;
}

// Options are set before bind(2) so no connection is ever queued on a
// socket without them. An address this host cannot have (socket or bind
// failing) is reported in `ec`, so the next address of a name can be tried.
inline fd listen_inet(const socket_address& addr, const listen_options& opts, const std::string& what,
                      std::error_code& ec) {
  if (opts.unix_mode != 0) throw std::invalid_argument(what + ": unix_mode is for unix sockets");
  fd sock(::socket(addr.family(), SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!sock) {
    fail(ec);
    return fd();
  }
  // SO_REUSEADDR lets a restarted server bind while connections of the old
  // one sit in TIME_WAIT. On Linux it never lets two live listeners share a
  // port (that is SO_REUSEPORT's job), so it is always safe to set.
  set_int_option(sock.get(), SOL_SOCKET, SO_REUSEADDR, 1, what, "SO_REUSEADDR");
  if (opts.reuseport) set_int_option(sock.get(), SOL_SOCKET, SO_REUSEPORT, 1, what, "SO_REUSEPORT");
  // IPV6_V6ONLY on: "[::]:N" means IPv6 only, whatever the
  // net.ipv6.bindv6only sysctl says, so "0.0.0.0:N" can be listened on
  // beside it and peers never show up as "::ffff:1.2.3.4".
  if (addr.family() == AF_INET6)
    set_int_option(sock.get(), IPPROTO_IPV6, IPV6_V6ONLY, 1, what, "IPV6_V6ONLY");
  if (opts.nodelay) set_int_option(sock.get(), IPPROTO_TCP, TCP_NODELAY, 1, what, "TCP_NODELAY");
  if (opts.defer_accept_s > 0)
    set_int_option(sock.get(), IPPROTO_TCP, TCP_DEFER_ACCEPT, opts.defer_accept_s, what, "TCP_DEFER_ACCEPT");
  if (PREFORK_SYSCALL(bind)(sock.get(), addr.get(), addr.size()) == -1) {
    fail(ec);
    return fd();
  }
  if (::listen(sock.get(), opts.backlog) == -1) throw_system_error(what);
  return sock;
}

// Whether `sock`, an inherited descriptor, is a listening stream socket
// bound to `want`: the same family and address, and the same port (any
// port when `want` asks for port 0), or the same unix socket path or
// abstract name. That is how tableflip and einhorn find a socket again.
inline bool listens_on(int sock, const socket_address& want) {
  int value = 0;
  socklen_t len = sizeof value;
  if (::getsockopt(sock, SOL_SOCKET, SO_TYPE, &value, &len) == -1 || value != SOCK_STREAM) return false;
  len = sizeof value;
  if (::getsockopt(sock, SOL_SOCKET, SO_ACCEPTCONN, &value, &len) == -1 || value == 0) return false;
  sockaddr_storage ss{};
  len = sizeof ss;
  if (::getsockname(sock, reinterpret_cast<sockaddr*>(&ss), &len) == -1 || ss.ss_family != want.family())
    return false;
  const socket_address have(reinterpret_cast<const sockaddr*>(&ss), len);
  if (want.family() == AF_UNIX) return have.to_string() == want.to_string();
  if (want.port() != 0 && want.port() != have.port()) return false;
  if (want.family() == AF_INET)
    return std::memcmp(&reinterpret_cast<const sockaddr_in*>(want.get())->sin_addr,
                       &reinterpret_cast<const sockaddr_in*>(have.get())->sin_addr, sizeof(in_addr)) == 0;
  if (want.family() != AF_INET6) return false;
  auto* a = reinterpret_cast<const sockaddr_in6*>(want.get());
  auto* b = reinterpret_cast<const sockaddr_in6*>(have.get());
  return std::memcmp(&a->sin6_addr, &b->sin6_addr, sizeof(in6_addr)) == 0 &&
         a->sin6_scope_id == b->sin6_scope_id;
}

}  // namespace detail

// A listening socket for `address`. Errors name it: std::invalid_argument
// "listen: cannot parse address 'foo:bar': port 'bar' is not a number", or
// std::system_error "listen 127.0.0.1:80: Permission denied". A host name
// that resolves to several addresses gets the first one that binds.
//
// In the new image of an upgrade (PREFORK_FDS) or under systemd's socket
// activation (LISTEN_FDS), the inherited socket bound to `address` is
// returned instead, as it is (its options are the ones it was made with; a
// pool's listener stays non-blocking, as old workers still accept on it):
// binding again would fail, the address being taken by that very socket.
// So the same program works first started and upgraded. Inherited
// descriptors that no listen() takes are left to take_inherited_fds()
// (exec.hpp); the pool's master closes them as it starts.
inline fd listen(std::string_view address, const listen_options& opts = {}) {
  std::string what = "listen " + std::string(address);
  if (opts.backlog < 1) throw std::invalid_argument(what + ": backlog must be positive");
  if (opts.defer_accept_s < 0) throw std::invalid_argument(what + ": defer_accept_s must not be negative");
  if ((opts.unix_mode & ~mode_t(07777)) != 0) throw std::invalid_argument(what + ": unix_mode is not a mode");
  bool named = false;
  std::vector<socket_address> addrs = detail::resolve("listen", address, &named);
  fd inherited = detail::take_inherited_fd_if([&](int sock) {
    return std::any_of(addrs.begin(), addrs.end(),
                       [&](const socket_address& a) { return detail::listens_on(sock, a); });
  });
  if (inherited) return inherited;
  if (addrs.front().family() == AF_UNIX) return detail::listen_unix(addrs.front(), opts, what);

  std::error_code first_error;
  std::string first_what;
  for (const socket_address& addr : addrs) {
    std::string this_what = named ? what + " (" + addr.to_string() + ")" : what;
    std::error_code ec;
    fd sock = detail::listen_inet(addr, opts, this_what, ec);
    if (sock) return sock;
    // "Cannot assign requested address" or "Address family not supported"
    // (no IPv6 on this host, say) are the least telling errors; any other
    // one is reported instead.
    if (!first_error || first_error == std::errc::address_not_available ||
        first_error == std::errc::address_family_not_supported) {
      first_error = ec;
      first_what = this_what;
    }
  }
  throw std::system_error(first_error, first_what);
}

// The address `sock` is bound to: "127.0.0.1:41234" after listening on
// port 0, "unix:/run/app.sock", "unix:@name".
inline std::string local_address(int sock) { return socket_address::local(sock).to_string(); }

// The address of the other end of a connection, for access logs.
inline std::string peer_address(int sock) { return socket_address::peer(sock).to_string(); }

// The next connection on `listener`, CLOEXEC always; flags may add
// SOCK_NONBLOCK. On a non-blocking listener with nothing queued the result
// is an invalid fd and `ec` stays clear. EINTR is retried, and so are
// errors that belong to one queued connection rather than the listener
// (ECONNABORTED: the client reset before we got to it; EPERM: a firewall
// rule refused it; the network errors accept(2) says Linux passes on).
// EMFILE, ENFILE, ENOBUFS and the like land in `ec`.
// `peer`, when given, receives the client's address.
inline fd accept(int listener, int flags, std::error_code& ec, socket_address* peer = nullptr) noexcept {
  ec.clear();
  if ((flags & ~(SOCK_NONBLOCK | SOCK_CLOEXEC)) != 0) {
    detail::fail(ec, EINVAL);
    return fd();
  }
  for (;;) {
    sockaddr_storage ss;
    socklen_t size = sizeof ss;
    int raw = PREFORK_SYSCALL(accept4)(listener, peer ? reinterpret_cast<sockaddr*>(&ss) : nullptr,
                                       peer ? &size : nullptr, flags | SOCK_CLOEXEC);
    if (raw >= 0) {
      if (peer) *peer = socket_address(reinterpret_cast<const sockaddr*>(&ss), size);
      return fd(raw);
    }
    switch (errno) {
      case EINTR:
      case ECONNABORTED:
      case EPROTO:
      case ENETDOWN:
      case ENETUNREACH:
      case EHOSTDOWN:
      case EHOSTUNREACH:
      case ENONET:
      case EPERM: continue;
      case EAGAIN:
#if EWOULDBLOCK != EAGAIN
      case EWOULDBLOCK:
#endif
        return fd();
      default: detail::fail(ec); return fd();
    }
  }
}

inline fd accept(int listener, int flags = 0, socket_address* peer = nullptr) {
  if ((flags & ~(SOCK_NONBLOCK | SOCK_CLOEXEC)) != 0)
    throw std::invalid_argument("accept: unsupported flags " + std::to_string(flags) +
                                " (only SOCK_NONBLOCK)");
  std::error_code ec;
  fd conn = accept(listener, flags, ec, peer);
  if (ec) throw std::system_error(ec, detail::fd_what("accept", listener));
  return conn;
}

// A blocking client connection to `address` (any form listen() takes),
// CLOEXEC; each address of a host name is tried in turn.
inline fd connect(std::string_view address) {
  std::string what = "connect " + std::string(address);
  std::error_code error;
  for (const socket_address& addr : detail::resolve("connect", address)) {
    fd sock(::socket(addr.family(), SOCK_STREAM | SOCK_CLOEXEC, 0));
    int rc = sock ? PREFORK_SYSCALL(connect)(sock.get(), addr.get(), addr.size())
                  : -1;  // socket failed: errno says why
    if (rc == -1 && errno == EINTR && addr.family() != AF_UNIX) {
      // An interrupted TCP connect goes on in the background; calling
      // connect again would only say EALREADY. Wait for the outcome.
      std::error_code wait_ec;
      int err = 0;
      socklen_t len = sizeof err;
      if (!detail::wait_ready(sock.get(), POLLOUT, wait_ec))
        throw std::system_error(wait_ec, what + ": poll");
      if (::getsockopt(sock.get(), SOL_SOCKET, SO_ERROR, &err, &len) == -1)
        throw_system_error(what + ": getsockopt");
      rc = err == 0 ? 0 : -1;
      errno = err;
    } else if (rc == -1 && errno == EINTR) {
      rc = detail::retry([&] { return PREFORK_SYSCALL(connect)(sock.get(), addr.get(), addr.size()); });
    }
    if (rc == 0) return sock;
    if (!error || error == std::errc::address_not_available ||
        error == std::errc::address_family_not_supported)
      error.assign(errno, std::generic_category());
  }
  throw std::system_error(error, what);
}

}  // namespace prefork
