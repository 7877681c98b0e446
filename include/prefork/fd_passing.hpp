// prefork/fd_passing.hpp: socket_pair(), and descriptors sent from one
// process to another over a unix socket (send_fds/recv_fds).
//
// A descriptor passed as SCM_RIGHTS arrives as a new descriptor for the
// same open file: a listening socket handed to a new master, a connection
// handed to a worker. Each send_fds() is one framed message (a small header
// giving the descriptor count and the message length, then the message),
// so recv_fds() knows where it ends on a stream socket and can tell when
// descriptors were lost. Received descriptors are CLOEXEC from birth
// (MSG_CMSG_CLOEXEC), and owned at once, so when anything is wrong,
// control data truncated (MSG_CTRUNC: more descriptors than the receiver
// allowed, or it ran out of descriptors) included, every one that did
// arrive is closed before the error is thrown. Part of socket.hpp. Stands
// on socketpair, sendmsg, recvmsg, send and poll.
#pragma once

#include <poll.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <prefork/error.hpp>
#include <prefork/fd.hpp>

namespace prefork {

// A connected pair of unix sockets, both CLOEXEC. type: SOCK_STREAM,
// SOCK_SEQPACKET or SOCK_DGRAM, optionally | SOCK_NONBLOCK.
[[nodiscard]] inline std::pair<fd, fd> socket_pair(int type = SOCK_STREAM) {
  int base = type & ~(SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (base != SOCK_STREAM && base != SOCK_SEQPACKET && base != SOCK_DGRAM)
    throw std::invalid_argument("socket_pair: unsupported type " + std::to_string(type));
  int raw[2];
  if (::socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, raw) == -1) throw_system_error("socketpair");
  return {fd(raw[0]), fd(raw[1])};
}

// The kernel's limit on descriptors in one message (SCM_MAX_FD).
inline constexpr std::size_t max_fds_per_message = 253;
// A message rides along with descriptors; bulk data belongs elsewhere.
// Capped so a datagram or seqpacket receiver knows its buffer size.
inline constexpr std::size_t max_fd_message = 65536;

namespace detail {

struct fd_header {
  std::uint32_t magic;  // tells a send_fds() frame from stray bytes
  std::uint32_t fds;
  std::uint32_t length;
};
inline constexpr std::uint32_t fd_header_magic = 0x70664431;  // "pfD1"

inline std::string fd_passing_what(const char* call, int sock) {
  return std::string(call) + " fd " + std::to_string(sock);
}

// Sends or receives exactly n bytes (no descriptors), through EINTR, short
// counts and EAGAIN; MSG_NOSIGNAL turns a closed peer into EPIPE, not SIGPIPE.
inline void transfer_exact(bool sending, int sock, char* p, std::size_t n, const std::string& what) {
  while (n > 0) {
    ssize_t r = retry([&] {
      return sending ? PREFORK_SYSCALL(send)(sock, p, n, MSG_NOSIGNAL) : PREFORK_SYSCALL(recv)(sock, p, n, 0);
    });
    std::error_code ec;
    if (r == -1 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (!wait_ready(sock, sending ? POLLOUT : POLLIN, ec)) throw std::system_error(ec, what + ": poll");
      continue;
    }
    if (r == -1) throw_system_error(what);
    if (r == 0) throw_system_error(what + ": peer closed the connection mid-message", EPROTO);
    p += r;
    n -= static_cast<std::size_t>(r);
  }
}

inline int socket_type(int sock, const std::string& what) {
  int type = 0;
  socklen_t len = sizeof type;
  if (::getsockopt(sock, SOL_SOCKET, SO_TYPE, &type, &len) == -1)
    throw_system_error(what + ": getsockopt SO_TYPE");
  return type;
}

}  // namespace detail

// Sends `fds` (copies of them: the caller's stay open) and `message` as one
// message. Blocks until sent, on a non-blocking socket too.
inline void send_fds(int sock, const std::vector<int>& fds, std::string_view message = "") {
  std::string what = detail::fd_passing_what("send_fds", sock);
  if (fds.size() > max_fds_per_message)
    throw std::invalid_argument(what + ": " + std::to_string(fds.size()) + " descriptors, at most " +
                                std::to_string(max_fds_per_message) + " fit in one message");
  if (message.size() > max_fd_message)
    throw std::invalid_argument(what + ": message of " + std::to_string(message.size()) + " bytes, at most " +
                                std::to_string(max_fd_message));
  for (int f : fds)
    if (f < 0) throw std::invalid_argument(what + ": invalid descriptor " + std::to_string(f));

  detail::fd_header header{detail::fd_header_magic, static_cast<std::uint32_t>(fds.size()),
                           static_cast<std::uint32_t>(message.size())};
  iovec iov[2] = {{&header, sizeof header}, {const_cast<char*>(message.data()), message.size()}};
  std::vector<cmsghdr> control((CMSG_SPACE(sizeof(int) * fds.size()) + sizeof(cmsghdr) - 1) /
                               sizeof(cmsghdr));
  msghdr msg{};
  msg.msg_iov = iov;
  msg.msg_iovlen = message.empty() ? 1 : 2;
  if (!fds.empty()) {
    msg.msg_control = control.data();
    msg.msg_controllen = static_cast<decltype(msg.msg_controllen)>(CMSG_SPACE(sizeof(int) * fds.size()));
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = static_cast<decltype(c->cmsg_len)>(CMSG_LEN(sizeof(int) * fds.size()));
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  ssize_t sent;
  for (;;) {
    sent = detail::retry([&] { return PREFORK_SYSCALL(sendmsg)(sock, &msg, MSG_NOSIGNAL); });
    if (sent >= 0) break;
    std::error_code ec;
    if (errno != EAGAIN && errno != EWOULDBLOCK) throw_system_error(what);
    if (!detail::wait_ready(sock, POLLOUT, ec)) throw std::system_error(ec, what + ": poll");
  }
  // A stream socket may take part of it; the descriptors went with the first
  // byte, the rest is plain data.
  auto done = static_cast<std::size_t>(sent);
  if (done < sizeof header) {
    detail::transfer_exact(true, sock, reinterpret_cast<char*>(&header) + done, sizeof header - done, what);
    done = sizeof header;
  }
  std::size_t body_done = done - sizeof header;
  detail::transfer_exact(true, sock, const_cast<char*>(message.data()) + body_done,
                         message.size() - body_done, what);
}

// Receives one send_fds() message: at most `max` descriptors, all CLOEXEC,
// and its text into *message. Waits for it, on a non-blocking socket too.
// Throws std::system_error when the peer closed the connection before a
// message (ECONNRESET), sent more than `max` descriptors (EMSGSIZE), or
// the descriptors could not all be received (MSG_CTRUNC, EMFILE); the
// message is read to its end first, so a stream stays in step, and every
// descriptor that did arrive is closed.
[[nodiscard]] inline std::vector<fd> recv_fds(int sock, std::size_t max, std::string* message = nullptr) {
  std::string what = detail::fd_passing_what("recv_fds", sock);
  if (max > max_fds_per_message)
    throw std::invalid_argument(what + ": max " + std::to_string(max) + " is above the kernel's " +
                                std::to_string(max_fds_per_message));
  bool stream = detail::socket_type(sock, what) == SOCK_STREAM;

  detail::fd_header header{};
  std::string body(stream ? 0 : max_fd_message, '\0');
  // On a stream only the header is read with the control data: the
  // descriptors ride on its first byte, and the body may be long.
  iovec iov[2] = {{&header, sizeof header}, {&body[0], body.size()}};
  std::vector<cmsghdr> control((CMSG_SPACE(sizeof(int) * max) + sizeof(cmsghdr) - 1) / sizeof(cmsghdr));
  msghdr msg{};
  msg.msg_iov = iov;
  msg.msg_iovlen = stream ? 1 : 2;
  if (max > 0) {
    msg.msg_control = control.data();
    msg.msg_controllen = static_cast<decltype(msg.msg_controllen)>(CMSG_SPACE(sizeof(int) * max));
  }
  ssize_t got;
  for (;;) {
    got = detail::retry([&] { return PREFORK_SYSCALL(recvmsg)(sock, &msg, MSG_CMSG_CLOEXEC); });
    if (got >= 0) break;
    std::error_code ec;
    if (errno != EAGAIN && errno != EWOULDBLOCK) throw_system_error(what);
    if (!detail::wait_ready(sock, POLLIN, ec)) throw std::system_error(ec, what + ": poll");
  }

  // Owned before anything is checked, so every error path closes them.
  std::vector<fd> fds;
  if (msg.msg_controllen > 0) {
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      std::size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (std::size_t i = 0; i < n; ++i) {
        int raw;
        std::memcpy(&raw, CMSG_DATA(c) + i * sizeof(int), sizeof raw);
        fds.emplace_back(raw);
      }
    }
  }
  if (got == 0 && fds.empty()) throw_system_error(what + ": peer closed the connection", ECONNRESET);

  auto done = static_cast<std::size_t>(got);
  if (stream && done < sizeof header) {
    detail::transfer_exact(false, sock, reinterpret_cast<char*>(&header) + done, sizeof header - done, what);
    done = sizeof header;
  }
  if (done < sizeof header || header.magic != detail::fd_header_magic || header.length > max_fd_message ||
      header.fds > max_fds_per_message)
    throw_system_error(what + ": not a send_fds message", EPROTO);
  if (stream) {
    body.resize(header.length);
    detail::transfer_exact(false, sock, &body[0], body.size(), what);
  } else {
    if ((msg.msg_flags & MSG_TRUNC) != 0 || done - sizeof header != header.length)
      throw_system_error(what + ": message length does not match its header", EPROTO);
    body.resize(header.length);
  }

  if (header.fds > max)
    throw_system_error(what + ": peer sent " + std::to_string(header.fds) + " descriptors, at most " +
                           std::to_string(max) + " expected",
                       EMSGSIZE);
  if ((msg.msg_flags & MSG_CTRUNC) != 0 || fds.size() != header.fds)
    throw_system_error(what + ": " + std::to_string(header.fds) + " descriptors sent, " +
                           std::to_string(fds.size()) + " received (control data truncated)",
                       EMFILE);
  if (message) *message = std::move(body);
  return fds;
}

}  // namespace prefork
