// httpd/connection.cpp: the protocol both loops share (see connection.hpp).
#include "connection.hpp"

#include <sys/sendfile.h>
#include <sys/socket.h>
#include <time.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <prefork/worker.hpp>

#include "evented_worker.hpp"
#include "proxy_protocol.hpp"
#include "spool.hpp"

namespace httpd {
namespace {

constexpr std::string_view continue_100 = "HTTP/1.1 100 Continue\r\n\r\n";
constexpr auto linger_time = std::chrono::milliseconds(500);
constexpr std::size_t kept_buffer = 16384;  // a closed slot keeps at most this much

}  // namespace

steady::time_point coarse_now() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return steady::time_point(std::chrono::duration_cast<steady::duration>(
      std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec)));
}

http_engine::http_engine(server& srv, prefork::worker& w) : srv_(srv), w_(w) {
  lim_.max_body = srv.opts.max_body;
  cap_ = max_connections();
  if (srv.opts.max_connections != 0) cap_ = std::min(cap_, srv.opts.max_connections);
  auto quarter = srv.opts.timeout / 4;
  tick_every_ = std::max(std::chrono::milliseconds(10), std::min(quarter, std::chrono::milliseconds(1000)));
}

http_engine::~http_engine() = default;

std::unique_ptr<connection> http_engine::make_connection(const limits& lim) {
  return std::make_unique<connection>(lim);
}

// Input ---------------------------------------------------------------------

void http_engine::received(connection& c) {
  if (c.proxy && !take_proxy_header(c)) return;
  if (c.idle) begin_request(c);
  drive(c);
}

void http_engine::peer_closed(connection& c) {
  if (c.proxy && !c.in.empty())
    proxy_refused(c.sock.get(), "the client closed inside the header", c.in.size());
  // The client is done sending. Whatever it sent completely still gets an
  // answer (the last one says "Connection: close"); a request cut short
  // does not.
  if (c.idle || c.close_after || c.peer_done) return close(c);
  c.peer_done = true;
  drive(c);
  if (c.sock && !c.sending() && !c.close_after) close(c);
}

// The PROXY header before the first request: its source becomes the peer.
// False while it is incomplete (the header timer set at accept runs), when
// it was refused (closed), or when nothing follows it yet.
bool http_engine::take_proxy_header(connection& c) {
  proxy_protocol::header h;
  proxy_protocol::error why = proxy_protocol::error::none;
  proxy_protocol::result r = proxy_protocol::parse(c.in.view(), h, why);
  if (r == proxy_protocol::result::incomplete) return false;
  if (r == proxy_protocol::result::error) {
    proxy_refused(c.sock.get(), proxy_protocol::describe(why), c.in.size());
    close(c);
    return false;
  }
  c.in.consume(h.length);
  if (!h.local) c.peer = h.source;
  c.proxy = false;
  return !c.in.empty();
}

void http_engine::begin_request(connection& c) {
  c.idle = false;
  c.fresh = false;
  // The duration feeds /_metrics and /_status too, not only the access log.
  // Without the log the coarse clock is enough: its ticks quantize each
  // duration, but from a random phase, so sums and means stay true, and the
  // histogram's smallest bucket is 5 ms. The precise clock would cost two
  // more reads per request.
  c.started = srv_.log.enabled() ? steady::now() : coarse_now();
  set_deadline(c, timer::header, srv_.opts.header_timeout);
}

void http_engine::drive(connection& c) {
  for (;;) {
    bool more = process(c);
    if (!c.sock || !flush(c) || !more) return;
  }
}

// Requests --------------------------------------------------------------------

// Answers every complete request in the buffer, in order, into c.out,
// stopping after one with a file body (its bytes must go first). True when
// it stopped there with input left.
bool http_engine::process(connection& c) {
  while (c.sock && !c.close_after && c.file_left == 0 && !c.generate && !c.in.empty()) {
    if (c.stage == phase::head) {
      parse_result r = c.parser.parse(c.in.view());
      if (r == parse_result::incomplete) break;
      if (r == parse_result::error) {
        reply_.error(c.parser.error_status(), c.parser.error_reason(), true);
        respond(c, nullptr);
        break;
      }
      const request& req = c.parser.get();
      if (accepts_body(srv_, req) && req.has_body()) {
        c.stage = phase::body;
        c.body.clear();
        c.chunks.reset();
        c.chunk_fed = c.parser.header_length();
        c.continue_sent = false;
        c.spool.reset();
        c.spooled = 0;
        set_deadline(c, timer::body, srv_.opts.header_timeout);
      }
    }
    std::string_view body;
    std::size_t used = c.parser.header_length();
    if (c.stage == phase::body) {
      const request& req = c.parser.get();
      c.parser.parse(c.in.view());  // re-point the request at the buffer as it is now
      // Beyond the application's body_in_memory(), the body goes to a file
      // as it arrives and leaves the buffer (the head stays).
      const std::size_t limit = srv_.body_in_memory();
      if (req.chunked) {
        chunk_progress p = c.chunks.feed(c.in.view().substr(c.chunk_fed), c.body);
        c.chunk_fed += p.consumed;
        if (p.result == chunk_progress::error) {
          reply_.error(c.chunks.error_status(), c.chunks.error_reason(), true);
          respond(c, &req);
          break;
        }
        if (c.body.size() > limit || (c.spool && p.result == chunk_progress::done)) {
          if (!spool(c, c.body)) {
            respond(c, &req);
            break;
          }
          c.body.clear();
          c.in.erase(used, c.chunk_fed - used);
          c.chunk_fed = used;
        }
        if (p.result == chunk_progress::incomplete) {
          ask_for_body(c, req);
          break;
        }
        body = c.spool ? std::string_view() : std::string_view(c.body);
        used = c.chunk_fed;
      } else {
        auto length = static_cast<std::size_t>(*req.content_length);
        if (length > limit) {
          std::size_t take = std::min(c.in.size() - used, length - c.spooled);
          if (take > 0 && !spool(c, c.in.view().substr(used, take))) {
            respond(c, &req);
            break;
          }
          c.in.erase(used, take);
          if (c.spooled < length) {
            ask_for_body(c, req);
            break;
          }
        } else {
          if (c.in.size() < used + length) {
            ask_for_body(c, req);
            break;
          }
          body = c.in.view().substr(used, length);
          used += length;
        }
      }
    }
    const request& req = c.parser.get();
    set_activity(req);  // before routing: a slow request shows what it is
    srv_.from_admin = c.admin;
    srv_.body_file = c.spool ? c.spool.get() : -1;
    srv_.body_file_size = c.spooled;
    srv_.client = &c.peer;
    srv_.client_fd = c.sock.get();
    route(srv_, req, body, reply_);
    srv_.body_file = -1;
    c.spool.reset();
    if (req.kind == verb::head) reply_.no_body = true;
    respond(c, &req);
    c.in.consume(used);
    c.parser.reset();
    c.stage = phase::head;
    if (!c.in.empty()) begin_request(c);
  }
  return c.sock && (c.file_left > 0 || c.generate) && !c.close_after && !c.in.empty();
}

// Appends data to the connection's body file, opening it first; on failure
// reply_ holds the error.
bool http_engine::spool(connection& c, std::string_view data) {
  if (!c.spool && !(c.spool = open_spool())) {
    reply_.error(
        500, std::string("cannot open a temporary file for the request body: ") + std::strerror(errno), true);
    return false;
  }
  if (!spool_write(c.spool.get(), data)) {
    reply_.error(500, "cannot write the request body to its temporary file", true);
    return false;
  }
  c.spooled += data.size();
  return true;
}

void http_engine::ask_for_body(connection& c, const request& req) {
  // Stalled means no bytes for the header timeout, not a slow upload.
  set_deadline(c, timer::body, srv_.opts.header_timeout);
  if (req.expect_continue && !c.continue_sent) {
    c.continue_sent = true;
    c.out += continue_100;
  }
}

// Appends the response in reply_ to c.out and logs it.
void http_engine::respond(connection& c, const request* req) {
  // A request that took a while (/sleep) may have outlasted a QUIT: look at
  // the control pipe, so this answer already says "Connection: close". Only
  // then: the common path must not pay a read per request.
  steady::time_point now = coarse_now();
  if (!stopping_ && now - turn_start_ > std::chrono::milliseconds(50)) {
    turn_start_ = now;
    if (w_.stopping()) begin_stop();
  }
  bool keep = req && req->keep_alive && !reply_.close && !stopping_ && !c.close_after && !c.peer_done;
  if (!keep) {
    c.close_after = true;
    // Input we did not read (a body we refused, pipelined requests after a
    // framing error) would make close() send RST and lose the answer.
    c.linger = reply_.close || !req;
  }
  int minor = req ? req->minor_version : 1;
  append_response(c.out, reply_, srv_.clock.now(), keep, minor);
  std::size_t bytes = reply_.no_body ? 0 : reply_.content_length();
  if (reply_.file && !reply_.no_body) {
    c.file = std::move(reply_.file);
    c.file_offset = reply_.file_offset;
    c.file_left = reply_.file_length;
  }
  reply_.file.reset();
  if (reply_.generate && !reply_.no_body) c.generate = std::move(reply_.generate);
  reply_.generate = nullptr;
  const steady::duration took = (srv_.log.enabled() ? steady::now() : now) - c.started;
  if (srv_.log.enabled()) {
    const header_field* referer = req ? req->find("Referer") : nullptr;
    const header_field* agent = req ? req->find("User-Agent") : nullptr;
    srv_.log.record(c.peer, req ? req->method : "-", req ? req->target : "-", minor, reply_.status, bytes,
                    referer ? referer->value : std::string_view(), agent ? agent->value : std::string_view(),
                    took);
  }
  if (reply_.admin)
    w_.request_done();
  else
    w_.request_done(reply_.status, bytes, took);
}

void http_engine::set_activity(const request& req) {
  char text[64];
  std::size_t n = 0;
  for (std::string_view s : {req.method, std::string_view(" "), req.target}) {
    std::size_t k = std::min(s.size(), sizeof text - n);
    std::memcpy(text + n, s.data(), k);
    n += k;
  }
  w_.status(std::string_view(text, n));
}

// Output ----------------------------------------------------------------------

bool http_engine::output_done(connection& c) {
  c.file.reset();
  c.out.clear();
  c.out_sent = 0;
  if (c.close_after) {
    finish(c);
    return false;
  }
  if (c.in.empty() && c.stage == phase::head) {
    if (stopping_ || c.peer_done) {
      close(c);
      return false;
    }
    c.idle = true;
    set_deadline(c, timer::keepalive, srv_.opts.keepalive_timeout);
  }
  return true;
}

http_engine::file_sent http_engine::send_file(connection& c) {
  while (c.file_left > 0) {
    ssize_t n = ::sendfile(c.sock.get(), c.file.get(), &c.file_offset, c.file_left);
    if (n > 0) {
      c.file_left -= static_cast<std::size_t>(n);
      continue;
    }
    if (n == -1 && errno == EINTR) continue;
    if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK)) return file_sent::socket_full;
    return file_sent::broken;  // an error, or the file shrank (sendfile gave 0)
  }
  return file_sent::all;
}

bool http_engine::next_piece(connection& c) {
  bool more = true;
  while (more && c.out.size() < 16384) {
    piece_.clear();
    try {
      more = c.generate(piece_);
    } catch (const std::exception& e) {
      log_line(std::string("handler error: a generated body failed: ") + e.what());
      return false;
    } catch (...) {
      log_line("handler error: a generated body failed");
      return false;
    }
    append_chunk(c.out, piece_, !more);
  }
  if (!more) c.generate = nullptr;
  return true;
}

void http_engine::finish(connection& c) {
  if (!c.linger) return close(c);
  ::shutdown(c.sock.get(), SHUT_WR);
  c.stage = phase::draining;
  set_deadline(c, timer::linger, linger_time);
}

// Connections -----------------------------------------------------------------

connection& http_engine::open(prefork::fd sock, const sockaddr_storage& peer, std::size_t listener) {
  std::uint32_t i;
  if (!free_.empty()) {
    i = free_.back();
    free_.pop_back();
  } else {
    i = static_cast<std::uint32_t>(conns_.size());
    conns_.push_back(make_connection(lim_));
  }
  connection& c = *conns_[i];
  c.index = i;
  ++c.generation;
  c.sock = std::move(sock);
  c.peer = peer;
  c.in.clear();
  c.out.clear();
  c.out_sent = 0;
  c.file.reset();
  c.file_left = 0;
  c.generate = nullptr;
  c.parser.reset();
  c.stage = phase::head;
  c.close_after = c.linger = c.peer_done = false;
  c.idle = c.fresh = true;
  c.admin = srv_.admin_listener && *srv_.admin_listener == listener;
  c.proxy = srv_.expects_proxy(listener);
  ++live_;
  set_deadline(c, timer::header, srv_.opts.header_timeout);
  return c;
}

void http_engine::release(connection& c, bool keep_slot) {
  c.file.reset();
  c.spool.reset();
  c.generate = nullptr;
  c.file_left = 0;
  c.out.clear();
  c.out_sent = 0;
  // The slot is reused, and kept: what one large request grew must not
  // stay with it (a worker's slots times its largest request otherwise).
  c.in.clear_and_trim(kept_buffer);
  if (c.out.capacity() > kept_buffer) std::string().swap(c.out);
  if (c.body.capacity() > kept_buffer) std::string().swap(c.body);
  if (!keep_slot) free_.push_back(c.index);
  --live_;
  if (!listening_ && !stopping_ && live_ < cap_) start_accepting();
}

void http_engine::set_deadline(connection& c, timer kind, std::chrono::milliseconds span) {
  c.kind = kind;
  c.deadline = coarse_now() + span;
  nearest_ = std::min(nearest_, c.deadline);
}

void http_engine::sweep() {
  steady::time_point now = coarse_now();
  nearest_ = steady::time_point::max();
  for (auto& p : conns_) {
    connection& c = *p;
    if (!c.sock) continue;
    if (c.deadline > now) {
      nearest_ = std::min(nearest_, c.deadline);
      continue;
    }
    switch (c.kind) {
      case timer::header:
      case timer::body:
        if (c.proxy) proxy_refused(c.sock.get(), "no complete header within the header timeout", c.in.size());
        if (c.idle || c.sending()) {
          close(c);
        } else {
          // A head or body that stalled: say so, then close.
          reply_.error(408,
                       c.kind == timer::header
                           ? "the request head did not arrive within the header timeout"
                           : "the request body stalled for longer than the header timeout",
                       true);
          respond(c, nullptr);
          flush(c);
        }
        break;
      case timer::keepalive:
      case timer::send:
      case timer::linger: close(c); break;
    }
    if (c.sock) nearest_ = std::min(nearest_, c.deadline);
  }
}

// Stopping ----------------------------------------------------------------------

void http_engine::out_of_descriptors(int err) {
  cap_ = live_ > 0 ? live_ : 1;
  stop_accepting();
  error_line(std::string("accept4: ") + (err == EMFILE ? "EMFILE" : "ENFILE") + " (" + std::strerror(err) +
             ") with " + std::to_string(live_) + " connections open: not accepting until one closes; " +
             "connection cap lowered to " + std::to_string(cap_));
}

void http_engine::begin_stop() {
  if (stopping_) return;
  stopping_ = true;
  stop_deadline_ = coarse_now() + srv_.opts.graceful_timeout;
  stop_accepting();
  for (auto& p : conns_)
    if (p->sock && p->idle && !p->fresh && !p->sending() && !input_pending(*p)) close(*p);
}

steady::time_point http_engine::wake_by(steady::time_point now) const {
  steady::time_point wake = std::min(nearest_, now + tick_every_);
  if (stopping_) wake = std::min(wake, stop_deadline_);
  return wake;
}

}  // namespace httpd
