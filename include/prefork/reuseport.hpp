// prefork/reuseport.hpp: the per-slot SO_REUSEPORT listeners of a pool
// with pool_config::reuseport.
//
// Plain SO_REUSEPORT, where each worker opens its own socket, loses
// connections: when a worker dies its socket closes, and the kernel resets
// every connection still waiting in that socket's accept queue. Here the
// master opens and owns one socket per worker index (slot) and per
// configured listener, all in the listener's reuseport group; a worker
// accepts only on its slot's sockets. A dead worker's queue therefore stays
// open in the master, and its replacement, started on the same index,
// accepts what waited there. Slot 0 is the configured listeners
// themselves, so they must have been opened with SO_REUSEPORT
// (listen_options::reuseport). Stands on socket, getsockopt, setsockopt,
// getsockname, bind and listen.
#pragma once

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <stdexcept>
#include <string>
#include <vector>

#include <prefork/error.hpp>
#include <prefork/fd.hpp>
#include <prefork/socket.hpp>
#include <prefork/socket_address.hpp>

namespace prefork::detail {

class slot_listeners {
 public:
  // Refuses listeners that cannot share their port: not TCP, or without
  // SO_REUSEPORT (binding a second socket would fail, or worse, succeed on
  // a socket outside the group).
  static void check(const std::vector<fd>& base) {
    for (const fd& l : base) {
      int family = socket_address::local(l.get()).family();
      if (family != AF_INET && family != AF_INET6)
        throw std::invalid_argument("pool_config: reuseport needs TCP listeners, and " +
                                    local_address(l.get()) + " is not one");
      if (get(l.get(), SOL_SOCKET, SO_REUSEPORT) == 0)
        throw std::invalid_argument(
            "pool_config: reuseport needs listeners opened with SO_REUSEPORT "
            "(listen_options::reuseport), and " +
            local_address(l.get()) + " was not");
    }
  }

  // The sockets of slot `index`, opened on first use, in the master, before
  // the fork (a failure is the master's to log and retry). Slot 0 is `base`.
  const std::vector<fd>& of(unsigned index, const std::vector<fd>& base) {
    if (index == 0) return base;
    if (slots_.size() < index) slots_.resize(index);
    std::vector<fd>& mine = slots_[index - 1];
    if (mine.empty())
      for (const fd& l : base) mine.push_back(open_like(l.get()));
    return mine;
  }

  // In a new worker: every socket but its own slot's goes, so a slot that
  // is closed later is closed for good, not kept alive by old copies.
  void keep_only(unsigned index, std::vector<fd>& base) noexcept {
    if (index != 0)
      for (fd& l : base) l.reset();
    for (std::size_t i = 0; i < slots_.size(); ++i)
      if (i + 1 != index)
        for (fd& l : slots_[i]) l.reset();
  }

 private:
  static int get(int sock, int level, int name) {
    int value = 0;
    socklen_t len = sizeof value;
    if (::getsockopt(sock, level, name, &value, &len) == -1)
      throw_system_error("getsockopt fd " + std::to_string(sock));
    return value;
  }

  // A new member of `like`'s reuseport group: same address, same options,
  // same backlog (TCP_INFO's tcpi_sacked is a listener's backlog).
  static fd open_like(int like) {
    const socket_address addr = socket_address::local(like);
    const std::string what = "reuseport slot socket on " + addr.to_string();
    fd sock(::socket(addr.family(), SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!sock) throw_system_error(what + ": socket");
    set_int_option(sock.get(), SOL_SOCKET, SO_REUSEADDR, 1, what, "SO_REUSEADDR");
    set_int_option(sock.get(), SOL_SOCKET, SO_REUSEPORT, 1, what, "SO_REUSEPORT");
    if (addr.family() == AF_INET6)
      set_int_option(sock.get(), IPPROTO_IPV6, IPV6_V6ONLY, get(like, IPPROTO_IPV6, IPV6_V6ONLY), what,
                     "IPV6_V6ONLY");
    set_int_option(sock.get(), IPPROTO_TCP, TCP_NODELAY, get(like, IPPROTO_TCP, TCP_NODELAY), what,
                   "TCP_NODELAY");
    if (int defer = get(like, IPPROTO_TCP, TCP_DEFER_ACCEPT); defer != 0)
      set_int_option(sock.get(), IPPROTO_TCP, TCP_DEFER_ACCEPT, defer, what, "TCP_DEFER_ACCEPT");
    tcp_info info{};
    socklen_t len = sizeof info;
    int backlog = SOMAXCONN;
    if (::getsockopt(like, IPPROTO_TCP, TCP_INFO, &info, &len) == 0 && info.tcpi_sacked > 0)
      backlog = static_cast<int>(info.tcpi_sacked);
    if (PREFORK_SYSCALL(bind)(sock.get(), addr.get(), addr.size()) == -1) throw_system_error(what + ": bind");
    if (::listen(sock.get(), backlog) == -1) throw_system_error(what + ": listen");
    return sock;
  }

  std::vector<std::vector<fd>> slots_;  // slots_[i]: slot i + 1's sockets
};

}  // namespace prefork::detail
