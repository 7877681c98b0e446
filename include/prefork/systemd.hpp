// prefork/systemd.hpp: talking to systemd without libsystemd.
//
// notify() is sd_notify(3): one datagram with newline-separated KEY=VALUE
// assignments ("READY=1", "RELOADING=1", "STATUS=3 workers", "WATCHDOG=1")
// sent to the AF_UNIX socket named in $NOTIFY_SOCKET, either a path or, when
// it starts with '@', a name in the abstract namespace. Without the variable
// the process is not supervised that way and notify() returns false, so a
// program calls it unconditionally. The sender's PID travels with the
// datagram as kernel-supplied credentials; systemd accepts messages from the
// main process only, unless the unit says NotifyAccess=all.
//
// watchdog_interval() reads WATCHDOG_USEC (and WATCHDOG_PID, which must be
// this process): send "WATCHDOG=1" at least that often, systemd's advice being
// every half interval. Socket activation (LISTEN_FDS) is in exec.hpp, with
// the rest of descriptor inheritance.
//
// Stands on socket(2) (SOCK_CLOEXEC), connect(2), send(2) and poll(2).
#pragma once

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <charconv>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>

#include <prefork/error.hpp>
#include <prefork/fd.hpp>

namespace prefork {

// Sends `state` to systemd. Returns false with `ec` clear when NOTIFY_SOCKET
// is not set; false with `ec` set when sending failed (EAFNOSUPPORT for an
// address that is neither a path nor '@'-abstract, ENAMETOOLONG when it does
// not fit a sockaddr_un); true once the datagram is sent. Allocates nothing.
//
// The send blocks while systemd's queue is full, as libsystemd's does:
// READY=1 must not be dropped because the manager was momentarily busy.
// With `patience`, it waits at most that long (0: not at all) and then fails
// with EAGAIN: for a loop that must not hang on a manager that stopped
// reading (the pool's master sends its STATUS and WATCHDOG lines that way).
inline bool notify(std::string_view state, std::error_code& ec,
                   std::optional<std::chrono::milliseconds> patience = std::nullopt) noexcept {
  ec.clear();
  const char* where = std::getenv("NOTIFY_SOCKET");
  if (!where || !*where) return false;
  std::string_view name(where);
  if (name.front() != '/' && name.front() != '@') return detail::fail(ec, EAFNOSUPPORT);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (name.size() >= sizeof addr.sun_path) return detail::fail(ec, ENAMETOOLONG);
  std::memcpy(addr.sun_path, name.data(), name.size());
  auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size());
  if (name.front() == '@')
    addr.sun_path[0] = '\0';  // abstract: the name is the bytes after the NUL, no terminator
  else
    len = static_cast<socklen_t>(len + 1);
  prefork::fd sock(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | (patience ? SOCK_NONBLOCK : 0), 0));
  if (!sock) return detail::fail(ec);
  // Connected, a datagram socket polls writable only once the receiver's
  // queue has room (unconnected, poll would say yes at once and we would spin).
  if (detail::retry([&] {
        return PREFORK_SYSCALL(connect)(sock.get(), reinterpret_cast<const sockaddr*>(&addr), len);
      }) == -1)
    return detail::fail(ec);
  const auto deadline = std::chrono::steady_clock::now() + patience.value_or(std::chrono::milliseconds(0));
  for (;;) {
    // MSG_NOSIGNAL: a vanished receiver must not kill us with SIGPIPE.
    ssize_t sent = detail::retry(
        [&] { return PREFORK_SYSCALL(send)(sock.get(), state.data(), state.size(), MSG_NOSIGNAL); });
    if (sent != -1) return true;
    auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (errno != EAGAIN || !patience || left.count() <= 0) return detail::fail(ec);
    pollfd p{sock.get(), POLLOUT, 0};
    detail::retry([&] { return PREFORK_SYSCALL(poll)(&p, 1, static_cast<int>(left.count())); });
  }
}

// The same; throws std::system_error naming NOTIFY_SOCKET on failure.
//
//   prefork::notify("READY=1\nSTATUS=4 workers");
inline bool notify(std::string_view state) {
  std::error_code ec;
  bool sent = notify(state, ec);
  if (ec) {
    const char* where = std::getenv("NOTIFY_SOCKET");
    throw std::system_error(ec, "notify: sendto NOTIFY_SOCKET=" + std::string(where ? where : ""));
  }
  return sent;
}

// How often systemd expects "WATCHDOG=1": WATCHDOG_USEC, when set and, if
// WATCHDOG_PID is set, meant for this process; nullopt otherwise. Malformed
// values throw std::runtime_error naming the variable and its value.
inline std::optional<std::chrono::microseconds> watchdog_interval() {
  auto parse = [](const char* variable, const char* text) {
    std::string_view s(text);
    std::uint64_t value = 0;
    auto [end, err] = std::from_chars(s.data(), s.data() + s.size(), value);
    if (s.empty() || s.front() == '-' || s.front() == '+' || err != std::errc() ||
        end != s.data() + s.size() || value == 0 ||
        value > static_cast<std::uint64_t>(std::chrono::microseconds::max().count()))
      throw std::runtime_error("watchdog: malformed " + std::string(variable) + "=\"" + std::string(s) +
                               "\": expected a positive decimal number");
    return value;
  };
  const char* usec = std::getenv("WATCHDOG_USEC");
  if (!usec) return std::nullopt;
  std::uint64_t interval = parse("WATCHDOG_USEC", usec);
  if (const char* pid = std::getenv("WATCHDOG_PID"))
    if (parse("WATCHDOG_PID", pid) != static_cast<std::uint64_t>(::getpid())) return std::nullopt;
  return std::chrono::microseconds(static_cast<std::chrono::microseconds::rep>(interval));
}

}  // namespace prefork
