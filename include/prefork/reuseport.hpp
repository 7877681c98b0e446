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
// Retiring a slot (TTOU, WINCH, HUP after TTIN) without losing its queue.
// Closing a listener resets every connection in its accept queue, so new
// connections must first stop reaching the slot, then its worker must
// drain what waits there, and only then may the socket close. The master
// attaches a classic BPF program to each listener's reuseport group
// (SO_ATTACH_REUSEPORT_CBPF: "ld rand; mod #n; ret a"), which picks one of
// the group's first n sockets, n the slots that take new connections. The
// kernel numbers a group's sockets in the order they joined it (listen())
// and, when one closes, moves the last into its place
// (reuseport_detach_sock); an index the program returns beyond the group
// falls back to the kernel's hash over all of them. So the invariant kept
// here: slot i is socket i of its group. Slot 0 joined first (the
// configured listener), slots are opened in index order, and they are
// closed highest first, a drained slot waiting for those above it. A TTIN
// during a drain takes the slot back as it is, at its place. A new image
// after USR2 inherits the sockets, their order and the old program, and
// attaches its own on its first round.
// Drained means: its queue is empty (TCP_INFO) and `settle` has passed
// since the steering changed, for handshakes whose SYN reached the slot
// before (their final ACK still lands in its queue; a lost SYN-ACK is
// resent after 1 s). Until then the slot keeps a worker, a new one if its
// worker died or was asked to stop too early. Random, not a hash of the
// flow: the program sees only the packet after the TCP header and the
// skb's rxhash, often 0 on loopback; which socket takes a SYN only matters
// once per connection. The other ways are unsound here: eBPF
// (SO_ATTACH_REUSEPORT_EBPF with a sockarray map) needs bpf(2), often
// denied to unprivileged processes and containers, and libbpf or
// hand-written bytecode; net.ipv4.tcp_migrate_req (Linux 5.14) moves a
// closing listener's queue to a sibling, but it is a per-namespace
// setting, off by default, that a library must not flip behind the
// administrator's back. If attaching fails (seccomp, a kernel before 4.5),
// slots are never retired: they keep their workers, as before TTOU could.
#pragma once

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <linux/filter.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <prefork/error.hpp>
#include <prefork/exec.hpp>
#include <prefork/fd.hpp>
#include <prefork/listen_queue.hpp>
#include <prefork/pool_config.hpp>
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

  using clock = std::chrono::steady_clock;
  static constexpr std::chrono::milliseconds settle{2000};

  // First in the master's round: which slots beyond `wanted` still drain
  // (draining()), and the closing of drained slots that no worker runs on
  // (`has_worker(index)`), highest first. Returns when to look again.
  template <class HasWorker>
  clock::time_point retire(unsigned wanted, const pool_config& config, clock::time_point now,
                           HasWorker has_worker) {
    const unsigned keep = std::max(wanted, 1u);
    draining_.assign(count(), false);
    unsteered_.resize(count());
    clock::time_point next = clock::time_point::max();
    for (unsigned i = count() - 1; i >= keep; --i) {
      const std::optional<clock::time_point>& since = unsteered_[i];
      std::size_t queued = 0;
      for (const fd& l : slots_[i - 1]) queued += queue_of(l.get());
      draining_[i] = !steered_ok_ || !since || now < *since + settle || queued != 0;
      if (draining_[i])
        next = std::min(next, since && now < *since + settle ? *since + settle : now + poll_every);
    }
    while (count() > keep && !draining_[count() - 1] && !has_worker(count() - 1)) {
      const unsigned top = count() - 1;
      slots_.pop_back();
      unsteered_.pop_back();
      log_event(config, "slot " + std::to_string(top) + " drained and retired: its sockets are closed");
    }
    if (count() > keep && next == clock::time_point::max()) next = now + poll_every;  // a worker to exit
    return next;
  }

  // Whether slot `index` is beyond the wanted ones but still needs a
  // worker to drain it (as of the last retire()).
  bool draining(unsigned index) const noexcept { return index < draining_.size() && draining_[index]; }

  // Last in the master's round, after the spawns opened new slots: new
  // connections go to slots 0 .. max(wanted, 1) - 1 (those open), none to
  // the slots beyond, which start to drain.
  void steer(unsigned wanted, const std::vector<fd>& base, const pool_config& config, clock::time_point now) {
    const unsigned n = std::min(std::max(wanted, 1u), count());
    if (n != steered_ && steered_ok_) {
      for (const fd& l : base) {
        sock_filter code[] = {
            {BPF_LD | BPF_W | BPF_ABS, 0, 0, static_cast<std::uint32_t>(SKF_AD_OFF + SKF_AD_RANDOM)},
            {BPF_ALU | BPF_MOD | BPF_K, 0, 0, n},
            {BPF_RET | BPF_A, 0, 0, 0},
        };
        sock_fprog prog{static_cast<unsigned short>(sizeof code / sizeof code[0]), code};
        if (::setsockopt(l.get(), SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, &prog, sizeof prog) == -1) {
          steered_ok_ = false;
          log_event(config, "reuseport: cannot steer new connections on " + local_address(l.get()) +
                                " (SO_ATTACH_REUSEPORT_CBPF: " + std::strerror(errno) +
                                "); slots are never retired");
          break;
        }
      }
      if (steered_ok_) steered_ = n;
    }
    unsteered_.resize(count());
    for (unsigned i = 0; i < count(); ++i) {
      if (i < n || !steered_ok_) {
        unsteered_[i].reset();
      } else if (!unsteered_[i]) {
        unsteered_[i] = now;
        log_event(config, "reuseport: slot " + std::to_string(i) +
                              " takes no new connections; it closes once its queue is drained");
      }
    }
  }

  // After a failed upgrade: the new image attached its own program, which
  // must be replaced on the next round.
  void forget_steering() noexcept { steered_ = 0; }

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

  static std::size_t queue_of(int sock) noexcept {
    std::error_code ec;
    std::optional<listen_queue> q = tcp_listen_queue(sock, ec);
    return q ? q->queued : 1;  // unreadable: not known to be empty
  }

  static constexpr char name_prefix[] = "prefork.slot.";
  static constexpr std::chrono::milliseconds poll_every{25};  // a queue has no "now empty" event
  std::vector<std::vector<fd>> slots_;                        // slots_[i]: slot i + 1's sockets
  std::vector<std::optional<clock::time_point>> unsteered_;  // [i]: since when slot i takes no new connection
  std::vector<bool> draining_;                               // [i]: slot i still needs a worker
  unsigned steered_ = 0;                                     // n of the program attached, 0: none yet
  bool steered_ok_ = true;
};

}  // namespace prefork::detail
