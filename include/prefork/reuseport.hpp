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
//
// Not yet here: retiring a slot (TTOU), which the master refuses with
// reuseport. Closing a slot's socket resets its queue, so new connections
// must first stop reaching it, then its worker must drain it. Two ways are
// sound: a classic BPF program on the group (SO_ATTACH_REUSEPORT_CBPF,
// "ld rand; mod #n; ret a") re-attached with n one lower, which never
// selects the last socket of the group; slots are opened in index order and
// only the highest is ever retired, so the group's order is the slots'. Or
// net.ipv4.tcp_migrate_req (Linux 5.14), which moves a closing listener's
// queue to another socket of the group; it is a per-network-namespace
// setting, off by default, that a library must not turn on behind the
// administrator's back, so it can only be a bonus. The BPF way is the one
// to build.
#pragma once

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstdlib>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <prefork/error.hpp>
#include <prefork/exec.hpp>
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
  // Lower slots are opened first, so a slot's place in the kernel's
  // reuseport group follows its index.
  const std::vector<fd>& of(unsigned index, const std::vector<fd>& base) {
    if (index == 0) return base;
    if (slots_.size() < index) slots_.resize(index);
    for (std::vector<fd>& slot : slots_) {
      slot.resize(base.size());
      for (std::size_t k = 0; k < base.size(); ++k)
        if (!slot[k]) slot[k] = open_like(base[k].get());
      if (&slot == &slots_[index - 1]) break;
    }
    return slots_[index - 1];
  }

  // How many slots have sockets: slot 0 and those opened since.
  unsigned count() const noexcept { return static_cast<unsigned>(slots_.size()) + 1; }

  // USR2, both modes: every slot socket, after the listeners, named
  // "prefork.slot.<index>.<listener number>" in PREFORK_FDNAMES, so the
  // new image puts each back in its slot, queue and all.
  std::vector<int> handed_over(std::vector<std::string>& names) const {
    std::vector<int> fds;
    for (std::size_t i = 0; i < slots_.size(); ++i)
      for (std::size_t k = 0; k < slots_[i].size(); ++k)
        if (slots_[i][k]) {
          fds.push_back(slots_[i][k].get());
          names.push_back(std::string(name_prefix) + std::to_string(i + 1) + "." + std::to_string(k));
        }
    return fds;
  }

  // In the new image: takes the slot sockets an old master handed over out
  // of the inherited descriptors, before listen() or the master looks there.
  void adopt_inherited() {
    inherited_store& store = inherited_fds_store();
    std::lock_guard<std::mutex> hold(store.lock);
    inherited& rest = untaken_inherited_fds(store);
    for (std::size_t i = 0; i < rest.fds.size();) {
      const std::string& name = rest.names[i];
      std::size_t index = 0, k = 0;
      if (!parse_name(name, index, k)) {
        ++i;
        continue;
      }
      if (slots_.size() < index) slots_.resize(index);
      if (slots_[index - 1].size() <= k) slots_[index - 1].resize(k + 1);
      slots_[index - 1][k] = std::move(rest.fds[i]);
      rest.fds.erase(rest.fds.begin() + static_cast<std::ptrdiff_t>(i));
      rest.names.erase(rest.names.begin() + static_cast<std::ptrdiff_t>(i));
    }
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
  // "prefork.slot.<index>.<k>", index at least 1.
  static bool parse_name(const std::string& name, std::size_t& index, std::size_t& k) {
    const std::string_view prefix(name_prefix);
    if (name.compare(0, prefix.size(), prefix) != 0) return false;
    const char* p = name.c_str() + prefix.size();
    char* end = nullptr;
    errno = 0;
    index = static_cast<std::size_t>(std::strtoul(p, &end, 10));
    if (end == p || *end != '.' || errno != 0 || index == 0 || index > 65536) return false;
    p = end + 1;
    k = static_cast<std::size_t>(std::strtoul(p, &end, 10));
    return end != p && *end == '\0' && errno == 0 && k < 65536;
  }

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

  static constexpr char name_prefix[] = "prefork.slot.";
  std::vector<std::vector<fd>> slots_;  // slots_[i]: slot i + 1's sockets
};

}  // namespace prefork::detail
