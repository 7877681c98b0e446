// httpd/blocking_worker.cpp: one connection, one request (see blocking_worker.hpp).
#include "blocking_worker.hpp"

#include <netinet/in.h>
#include <poll.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include <prefork/error.hpp>
#include <prefork/worker.hpp>

#include "buffer.hpp"
#include "proxy_protocol.hpp"
#include "spool.hpp"

namespace httpd {
namespace {

using steady = std::chrono::steady_clock;

constexpr std::string_view continue_100 = "HTTP/1.1 100 Continue\r\n\r\n";

int ms_until(steady::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - steady::now()).count();
  if (left <= 0) return 0;
  return left > 1 << 30 ? 1 << 30 : static_cast<int>(left) + 1;
}

// Waits until fd is ready for `events` or the deadline passes (false).
bool wait_for(int fd, short events, steady::time_point deadline) {
  for (;;) {
    int ms = ms_until(deadline);
    if (ms == 0) return false;
    pollfd p{fd, events, 0};
    int r = ::poll(&p, 1, ms);
    if (r > 0) return true;
    if (r == -1 && errno != EINTR) return false;
  }
}

// Sends all of `data`, waiting at most until `deadline` in total. MSG_NOSIGNAL:
// a client that went away is an error here, not a SIGPIPE.
bool send_all(int fd, std::string_view data, steady::time_point deadline, bool more) {
  while (!data.empty()) {
    ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL | (more ? MSG_MORE : 0));
    if (n > 0) {
      data.remove_prefix(static_cast<std::size_t>(n));
      continue;
    }
    if (n == -1 && errno == EINTR) continue;
    // EAGAIN: SO_SNDTIMEO ran out; go on only while the deadline allows.
    if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK) && wait_for(fd, POLLOUT, deadline)) continue;
    return false;
  }
  return true;
}

bool sendfile_all(int sock, int file, off_t offset, std::size_t length, steady::time_point deadline,
                  prefork::worker& w) {
  while (length > 0) {
    ssize_t n = ::sendfile(sock, file, &offset, length);
    if (n > 0) {
      length -= static_cast<std::size_t>(n);
      w.tick();  // a large file to a slow client is progress, not a hang
      continue;
    }
    if (n == 0) return false;  // the file shrank under us
    if (errno == EINTR) continue;
    if ((errno == EAGAIN || errno == EWOULDBLOCK) && wait_for(sock, POLLOUT, deadline)) continue;
    return false;
  }
  return true;
}

// Closing with unread input makes the kernel send RST, which can destroy the
// response before the client reads it. So: end our side, then read and
// discard for a short while until the client closes too.
void lingering_close(int fd) {
  ::shutdown(fd, SHUT_WR);
  auto deadline = steady::now() + std::chrono::milliseconds(500);
  char sink[16384];
  std::size_t total = 0;
  while (total < (1u << 20) && wait_for(fd, POLLIN, deadline)) {
    ssize_t n = ::recv(fd, sink, sizeof sink, MSG_DONTWAIT);
    if (n == -1 && errno == EINTR) continue;
    if (n <= 0) break;
    total += static_cast<std::size_t>(n);
  }
}

// The activity text "GET /path" without allocating.
void set_activity(prefork::worker& w, const request& req) {
  char text[64];
  std::size_t n = 0;
  auto put = [&](std::string_view s) {
    std::size_t k = s.size() < sizeof text - n ? s.size() : sizeof text - n;
    std::memcpy(text + n, s.data(), k);
    n += k;
  };
  put(req.method);
  put(" ");
  put(req.target);
  w.status(std::string_view(text, n));
}

class blocking_connection {
 public:
  blocking_connection(server& srv, prefork::worker& w)
      : srv_(srv), w_(w), parser_(make_limits(srv.opts)), chunks_(srv.opts.max_body, make_limits(srv.opts)) {
    out_.reserve(4096);
  }

  void serve(int fd, bool proxy) {
    steady::time_point start = steady::now();
    in_.clear();
    parser_.reset();
    reply_.clear();
    spool_.reset();
    bool linger = false;
    int status = 0;
    std::size_t sent = 0;
    std::string_view method = "-", target = "-", referer, agent;
    int minor = 1;

    // The head. The first read waits by SO_RCVTIMEO (the header timeout);
    // later ones wait in poll for what is left of it. A PROXY header comes
    // first, within the same time.
    steady::time_point deadline = start + srv_.opts.header_timeout;
    sockaddr_storage peer{};
    peer.ss_family = AF_UNSPEC;
    if (proxy && !read_proxy_header(fd, deadline, peer)) return;
    srv_.client = peer.ss_family == AF_UNSPEC ? nullptr : &peer;
    srv_.client_fd = fd;
    parse_result pr = in_.empty() ? parse_result::incomplete : parser_.parse(in_.view());
    for (bool first = !proxy; pr == parse_result::incomplete; first = false) {
      if (!first && !wait_for(fd, POLLIN, deadline)) break;
      char* to = in_.space(4096);
      ssize_t n = ::recv(fd, to, in_.room(), 0);
      if (n == -1 && errno == EINTR) continue;
      if (n <= 0) {
        if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) return;  // gone
        break;                                                               // SO_RCVTIMEO ran out
      }
      in_.commit(static_cast<std::size_t>(n));
      pr = parser_.parse(in_.view());
      if (pr != parse_result::incomplete) break;
      if (steady::now() >= deadline) break;
    }
    if (pr == parse_result::incomplete) {
      if (in_.empty()) return;  // a silent client gets no answer, only the close
      reply_.error(408, "the request head did not arrive within the header timeout", true);
      linger = true;
    } else if (pr == parse_result::error) {
      reply_.error(parser_.error_status(), parser_.error_reason(), true);
      linger = true;
    } else {
      const request& req = parser_.get();
      method = req.method;
      target = req.target;
      minor = req.minor_version;
      set_activity(w_, req);
      std::string_view body;
      used_ = parser_.header_length();
      if (accepts_body(srv_, req) && req.has_body() && !read_body(fd, body)) linger = true;
      // read_body may have moved the buffer; the parser re-pointed req at it.
      method = req.method;
      target = req.target;
      if (const header_field* f = req.find("Referer")) referer = f->value;
      if (const header_field* f = req.find("User-Agent")) agent = f->value;
      if (!linger) {
        srv_.body_file = spool_ ? spool_.get() : -1;
        srv_.body_file_size = spooled_;
        route(srv_, req, body, reply_);
        srv_.body_file = -1;
        spool_.reset();
        if (req.kind == verb::head) reply_.no_body = true;
        // Pipelined bytes after the request are not read either: closing
        // over them would reset the connection under the answer.
        linger = reply_.close || in_.size() > used_;
      }
    }

    status = reply_.status;
    out_.clear();
    append_response(out_, reply_, srv_.clock.now(), false, minor);
    steady::time_point send_deadline = steady::now() + srv_.opts.timeout;
    bool with_file = reply_.file && !reply_.no_body;
    if (send_all(fd, out_, send_deadline, with_file)) {
      sent = reply_.no_body ? 0 : (with_file ? 0 : reply_.body_bytes().size());
      if (with_file && sendfile_all(fd, reply_.file.get(), reply_.file_offset, reply_.file_length, send_deadline, w_))
        sent = reply_.file_length;
      if (reply_.generate && !reply_.no_body) sent = send_generated(fd);
    }
    const steady::duration took = steady::now() - start;
    if (srv_.log.enabled()) {
      socklen_t len = sizeof peer;
      if (peer.ss_family == AF_UNSPEC && ::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &len) == -1)
        peer.ss_family = AF_UNSPEC;
      srv_.log.record(peer, method, target, minor, status, sent, referer, agent, took);
    }
    reply_.file.reset();
    if (linger) lingering_close(fd);
    if (reply_.admin)
      w_.request_done();
    else
      w_.request_done(status, sent, took);
  }

 private:
  static limits make_limits(const options& o) {
    limits l;
    l.max_body = o.max_body;
    return l;
  }

  // Sends a generated body piece by piece, each made once the last is sent;
  // returns the body bytes sent. A generator that throws ends the body
  // short (the connection closes after this response anyway).
  std::size_t send_generated(int fd) {
    std::size_t sent = 0;
    for (bool more = true, failed = false; more && !failed;) {
      out_.clear();
      std::size_t bytes = 0;
      while (more && out_.size() < 16384) {  // a send per tiny piece would cost more than making it
        piece_.clear();
        try {
          more = reply_.generate(piece_);
        } catch (const std::exception& e) {
          log_line(std::string("handler error: a generated body failed: ") + e.what());
          failed = true;
          break;
        } catch (...) {
          log_line("handler error: a generated body failed");
          failed = true;
          break;
        }
        append_chunk(out_, piece_, !more);
        bytes += piece_.size();
      }
      if (failed) break;
      if (!send_all(fd, out_, steady::now() + srv_.opts.timeout, false)) break;
      sent += bytes;
      w_.tick();  // a long body to a reading client is progress, not a hang
    }
    reply_.generate = nullptr;
    return sent;
  }

  // Reads the PROXY header into `peer` (left AF_UNSPEC for LOCAL and
  // UNKNOWN) and consumes it; what followed it stays in in_. False: the
  // connection is refused (said in the error log) or gone.
  bool read_proxy_header(int fd, steady::time_point deadline, sockaddr_storage& peer) {
    proxy_protocol::header h;
    proxy_protocol::error why = proxy_protocol::error::none;
    for (bool first = true;; first = false) {
      if (!first && !wait_for(fd, POLLIN, deadline)) break;
      char* to = in_.space(512);
      ssize_t n = ::recv(fd, to, in_.room(), 0);
      if (n == -1 && errno == EINTR) continue;
      if (n == 0 && in_.empty()) return false;  // a port scan, a balancer's connect-only check
      if (n <= 0) break;
      in_.commit(static_cast<std::size_t>(n));
      proxy_protocol::result r = proxy_protocol::parse(in_.view(), h, why);
      if (r == proxy_protocol::result::done) {
        in_.consume(h.length);
        if (!h.local) peer = h.source;
        return true;
      }
      if (r == proxy_protocol::result::error) break;
      if (steady::now() >= deadline) break;
    }
    proxy_refused(fd,
                  why != proxy_protocol::error::none ? proxy_protocol::describe(why)
                                                     : "no complete header before the header timeout or the close",
                  in_.size());
    return false;
  }

  // Reads the body of the parsed request; on failure reply_ holds the error.
  bool read_body(int fd, std::string_view& body) {
    const std::size_t head = parser_.header_length();
    const request& req = parser_.get();
    bool sent_continue = false;
    auto more = [&]() -> bool {
      if (req.expect_continue && !sent_continue) {
        sent_continue = true;
        if (!send_all(fd, continue_100, steady::now() + srv_.opts.timeout, false)) return false;
      }
      // Between body reads the header timeout applies again: a client that
      // stalls mid-body is as stuck as one that stalls mid-head.
      if (!wait_for(fd, POLLIN, steady::now() + srv_.opts.header_timeout)) {
        reply_.error(408, "the request body stalled for longer than the header timeout", true);
        return false;
      }
      char* to = in_.space(16384);
      ssize_t n = ::recv(fd, to, in_.room(), 0);
      if (n <= 0) {
        reply_.error(400, "the connection ended inside the request body", true);
        return false;
      }
      in_.commit(static_cast<std::size_t>(n));
      parser_.parse(in_.view());  // re-points the request at the grown buffer
      return true;
    };
    // Beyond the application's body_in_memory(), the body goes to a file
    // as it arrives and leaves the buffer (the head stays where it is).
    const std::size_t limit = srv_.body_in_memory();
    spool_.reset();
    spooled_ = 0;
    auto to_spool = [&](std::string_view data) -> bool {
      if (!spool_ && !(spool_ = open_spool())) {
        reply_.error(500, std::string("cannot open a temporary file for the request body: ") + std::strerror(errno),
                     true);
        return false;
      }
      if (!spool_write(spool_.get(), data)) {
        reply_.error(500, "cannot write the request body to its temporary file", true);
        return false;
      }
      spooled_ += data.size();
      return true;
    };
    if (req.chunked) {
      chunks_.reset();
      body_.clear();
      std::size_t fed = head;
      for (;;) {
        chunk_progress p = chunks_.feed(in_.view().substr(fed), body_);
        fed += p.consumed;
        if (body_.size() > limit || (spool_ && p.result == chunk_progress::done)) {
          if (!to_spool(body_)) return false;
          body_.clear();
          in_.erase(head, fed - head);
          fed = head;
        }
        if (p.result == chunk_progress::done) break;
        if (p.result == chunk_progress::error) {
          reply_.error(chunks_.error_status(), chunks_.error_reason(), true);
          return false;
        }
        if (!more()) return false;
      }
      body = spool_ ? std::string_view() : std::string_view(body_);
      used_ = fed;
      return true;
    }
    const std::size_t length = static_cast<std::size_t>(*req.content_length);
    if (length > limit) {
      for (std::size_t left = length;;) {
        std::size_t take = std::min(in_.size() - head, left);
        if (take > 0 && !to_spool(in_.view().substr(head, take))) return false;
        in_.erase(head, take);
        left -= take;
        if (left == 0) break;
        if (!more()) return false;
      }
      body = {};
      used_ = head;
      return true;
    }
    while (in_.size() < head + length)
      if (!more()) return false;
    body = in_.view().substr(head, length);
    used_ = head + length;
    return true;
  }

  server& srv_;
  prefork::worker& w_;
  request_parser parser_;
  chunked_decoder chunks_;
  byte_buffer in_;
  std::string out_, body_, piece_;
  prefork::fd spool_;        // the body of the request in hand, when too large for memory
  std::size_t spooled_ = 0;  // its size
  reply reply_;
  std::size_t used_ = 0;  // bytes of the buffer the request took
};

}  // namespace

void set_inherited_timeouts(int listener, const options& o) {
  auto to_tv = [](std::chrono::milliseconds ms) {
    timeval tv{};
    tv.tv_sec = static_cast<time_t>(ms.count() / 1000);
    tv.tv_usec = static_cast<suseconds_t>((ms.count() % 1000) * 1000);
    return tv;
  };
  timeval rcv = to_tv(o.header_timeout);
  // A send stuck this long means the client stopped reading; well under the
  // heartbeat timeout, so the worker gives up before the master kills it.
  timeval snd = to_tv(o.timeout / 2);
  if (::setsockopt(listener, SOL_SOCKET, SO_RCVTIMEO, &rcv, sizeof rcv) == -1)
    prefork::throw_system_error("setsockopt SO_RCVTIMEO fd " + std::to_string(listener));
  if (::setsockopt(listener, SOL_SOCKET, SO_SNDTIMEO, &snd, sizeof snd) == -1)
    prefork::throw_system_error("setsockopt SO_SNDTIMEO fd " + std::to_string(listener));
}

void run_blocking(server& srv, prefork::worker& w) {
  blocking_connection conn(srv, w);
  w.tick();  // ready: the master counts this worker from now on
  // worker::accept() is the fast path already: a queued connection costs one
  // accept4, and the control pipe is read at most every 100 ms. It is also
  // what keeps the scoreboard true (busy from the moment a connection is
  // taken), which a raw accept4 of our own here did not: a fresh worker's
  // first connections were served while /_status still said "idle".
  while (prefork::fd conn_fd = w.accept()) {
    srv.from_admin = srv.admin_listener && *srv.admin_listener == w.last_listener();
    conn.serve(conn_fd.get(), srv.expects_proxy(w.last_listener()));
    srv.client = nullptr;  // it pointed into serve()'s frame
    srv.client_fd = -1;
  }
}

}  // namespace httpd
