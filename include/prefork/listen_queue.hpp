// prefork/listen_queue.hpp: how many connections wait in a listening
// socket's accept queue, and how many it may hold.
//
// The number an operator of a preforking server watches most: connections
// the kernel has accepted that no worker has taken yet. It grows when every
// worker is busy, long before clients time out. Linux gives it without root
// for both kinds of listener this library opens:
//   TCP: getsockopt(TCP_INFO) on the listening socket; for a socket in
//        LISTEN, tcpi_unacked is the current accept queue and tcpi_sacked
//        the backlog it was given (capped by net.core.somaxconn).
//   unix: a sock_diag netlink query for the socket's inode with
//        UDIAG_SHOW_RQLEN; for a listener, rqueue is the queue and wqueue
//        the backlog.
// Each read is one or a few system calls: meant for a status page or a
// scrape, not for every request.
#pragma once

#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <linux/unix_diag.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <system_error>

#include <prefork/error.hpp>
#include <prefork/fd.hpp>

namespace prefork {

struct listen_queue {
  std::uint32_t queued = 0;   // connections waiting for accept()
  std::uint32_t backlog = 0;  // the most the kernel queues before refusing or dropping
};

namespace detail {

// A listener's protocol family, or -1 (ec set).
inline int socket_family(int sock, std::error_code& ec) noexcept {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getsockname(sock, reinterpret_cast<sockaddr*>(&ss), &len) == -1) return fail(ec), -1;
  return ss.ss_family;
}

inline std::optional<listen_queue> tcp_listen_queue(int sock, std::error_code& ec) noexcept {
  tcp_info info{};
  socklen_t len = sizeof info;
  if (::getsockopt(sock, IPPROTO_TCP, TCP_INFO, &info, &len) == -1) return fail(ec), std::nullopt;
  if (info.tcpi_state != 10 /* TCP_LISTEN */) return fail(ec, EINVAL), std::nullopt;
  return listen_queue{info.tcpi_unacked, info.tcpi_sacked};
}

inline std::optional<listen_queue> unix_listen_queue(int sock, std::error_code& ec) noexcept {
  struct stat st {};
  if (::fstat(sock, &st) == -1) return fail(ec), std::nullopt;
  int nl = ::socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
  if (nl == -1) return fail(ec), std::nullopt;
  fd guard(nl);
  struct {
    nlmsghdr head;
    unix_diag_req req;
  } ask{};
  ask.head.nlmsg_len = sizeof ask;
  ask.head.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  ask.head.nlmsg_flags = NLM_F_REQUEST;
  ask.req.sdiag_family = AF_UNIX;
  ask.req.udiag_states = 1u << 10;  // TCP_LISTEN: the kernel's name for a listening unix socket too
  ask.req.udiag_ino = static_cast<std::uint32_t>(st.st_ino);
  ask.req.udiag_show = UDIAG_SHOW_RQLEN;
  ask.req.udiag_cookie[0] = ask.req.udiag_cookie[1] = ~0u;  // INET_DIAG_NOCOOKIE: any socket with this inode
  sockaddr_nl kernel{};
  kernel.nl_family = AF_NETLINK;
  if (::sendto(nl, &ask, sizeof ask, 0, reinterpret_cast<sockaddr*>(&kernel), sizeof kernel) == -1)
    return fail(ec), std::nullopt;
  alignas(nlmsghdr) char buf[1024];
  ssize_t n;
  do n = ::recv(nl, buf, sizeof buf, 0);
  while (n == -1 && errno == EINTR);
  if (n == -1) return fail(ec), std::nullopt;
  auto* h = reinterpret_cast<nlmsghdr*>(buf);
  if (!NLMSG_OK(h, static_cast<unsigned>(n))) return fail(ec, EPROTO), std::nullopt;
  if (h->nlmsg_type == NLMSG_ERROR) {
    auto* e = static_cast<nlmsgerr*>(NLMSG_DATA(h));
    return fail(ec, e->error ? -e->error : EPROTO), std::nullopt;
  }
  auto* msg = static_cast<unix_diag_msg*>(NLMSG_DATA(h));
  if (msg->udiag_state != 10) return fail(ec, EINVAL), std::nullopt;
  int left = static_cast<int>(h->nlmsg_len) - static_cast<int>(NLMSG_LENGTH(sizeof *msg));
  for (auto* a = reinterpret_cast<rtattr*>(msg + 1); RTA_OK(a, left); a = RTA_NEXT(a, left)) {
    if (a->rta_type != UNIX_DIAG_RQLEN) continue;
    unix_diag_rqlen q{};
    std::memcpy(&q, RTA_DATA(a), sizeof q);
    return listen_queue{q.udiag_rqueue, q.udiag_wqueue};
  }
  return fail(ec, ENODATA), std::nullopt;
}

}  // namespace detail

// The accept queue of listening socket `sock` (TCP over IPv4/IPv6, or unix
// stream). Fails with EINVAL if it is not listening, EAFNOSUPPORT for other
// families.
inline std::optional<listen_queue> read_listen_queue(int sock, std::error_code& ec) noexcept {
  ec.clear();
  int family = detail::socket_family(sock, ec);
  if (family == AF_INET || family == AF_INET6) return detail::tcp_listen_queue(sock, ec);
  if (family == AF_UNIX) return detail::unix_listen_queue(sock, ec);
  if (family != -1) detail::fail(ec, EAFNOSUPPORT);
  return std::nullopt;
}

// As above; throws std::system_error naming the descriptor.
inline listen_queue read_listen_queue(int sock) {
  std::error_code ec;
  if (auto q = read_listen_queue(sock, ec)) return *q;
  throw std::system_error(ec, "read_listen_queue fd " + std::to_string(sock));
}

}  // namespace prefork
