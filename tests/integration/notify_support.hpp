// tests/integration/notify_support.hpp: systemd's end of NOTIFY_SOCKET, as
// the tests play it. A datagram socket bound at a path or an abstract name
// ("@name"), with SO_PASSCRED, so each message carries the sender's PID,
// vouched for by the kernel: systemd checks it against the unit's main PID,
// and so do the tests. How a test reads (at once, on a thread, only when
// asked) is its own; the socket and one datagram are shared.
#pragma once

#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>

#include <cstddef>
#include <cstring>
#include <optional>
#include <string>

#include <prefork/fd.hpp>

#include "catch.hpp"

namespace notify_test {

// A datagram socket at `name`: a path, or "@..." for the abstract namespace;
// `flags` adds to SOCK_DGRAM | SOCK_CLOEXEC (SOCK_NONBLOCK).
inline prefork::fd bind_notify_socket(const std::string& name, int flags = 0) {
  prefork::fd s(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | flags, 0));
  REQUIRE(s);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  REQUIRE(name.size() < sizeof addr.sun_path);
  std::memcpy(addr.sun_path, name.data(), name.size());
  auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size());
  if (name[0] == '@') addr.sun_path[0] = '\0';
  REQUIRE(::bind(s.get(), reinterpret_cast<sockaddr*>(&addr), len) == 0);
  int on = 1;
  REQUIRE(::setsockopt(s.get(), SOL_SOCKET, SO_PASSCRED, &on, sizeof on) == 0);
  return s;
}

struct notification {
  std::string text;
  pid_t sender = 0;  // from SCM_CREDENTIALS
};

// The next datagram waiting on `sock`, with its sender; none when nothing
// is waiting on a non-blocking socket (or recvmsg fails).
inline std::optional<notification> read_notification(int sock) {
  char text[4096];
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(ucred))];
  iovec iov{text, sizeof text};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t n = ::recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
  if (n < 0) return std::nullopt;
  notification out;
  out.text.assign(text, static_cast<std::size_t>(n));
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS) {
      ucred cred{};
      std::memcpy(&cred, CMSG_DATA(c), sizeof cred);
      out.sender = cred.pid;
    }
  return out;
}

}  // namespace notify_test
