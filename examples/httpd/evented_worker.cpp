// httpd/evented_worker.cpp: the epoll loop (see evented_worker.hpp).
#include "evented_worker.hpp"

#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <vector>

#include <prefork/error.hpp>
#include <prefork/worker.hpp>

#include "buffer.hpp"
#include "proxy_protocol.hpp"
#include "spool.hpp"

namespace httpd {
namespace {

using steady = std::chrono::steady_clock;

// The loop's clock for timeouts: CLOCK_MONOTONIC as of the kernel's last
// timer tick. It is read several times per request, and costs a few
// nanoseconds where the precise clock costs twenty (here: a third of the
// loop's own CPU time); a few milliseconds late is nothing against
// timeouts of a second. Only the access log's durations use steady::now().
steady::time_point coarse_now() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return steady::time_point(std::chrono::duration_cast<steady::duration>(std::chrono::seconds(ts.tv_sec) +
                                                                         std::chrono::nanoseconds(ts.tv_nsec)));
}

constexpr std::string_view continue_100 = "HTTP/1.1 100 Continue\r\n\r\n";
constexpr std::uint32_t control_tag = 0xffffffffu;
constexpr std::uint32_t listener_tag = 0xfffff000u;  // + listener index
constexpr std::size_t accepts_per_wakeup = 32;        // then let the sibling workers have some
constexpr auto linger_time = std::chrono::milliseconds(500);
constexpr std::size_t kept_buffer = 16384;            // a closed slot keeps at most this much

enum class phase : std::uint8_t {
  head,      // reading a request head (or idle between requests)
  body,      // reading the body of a parsed head
  draining,  // answered and shut down for writing; discarding input until EOF
};

// What the current deadline means when it passes.
enum class timer : std::uint8_t { header, keepalive, body, send, linger };

struct connection {
  connection(const limits& lim) : parser(lim), chunks(lim.max_body, lim) {}

  prefork::fd sock;
  std::uint32_t index = 0, generation = 0;
  sockaddr_storage peer{};
  bool admin = false;  // accepted on --admin-listen
  bool proxy = false;  // a PROXY header is still to come (--proxy-protocol)
  byte_buffer in;
  std::string out;
  std::size_t out_sent = 0;
  prefork::fd file;  // a file body still to send after `out`
  std::function<bool(std::string&)> generate;  // a generated body still to send after `out`
  off_t file_offset = 0;
  std::size_t file_left = 0;
  request_parser parser;
  chunked_decoder chunks;
  std::string body;          // a decoded chunked body
  prefork::fd spool;         // the body, when larger than the application keeps in memory
  std::size_t spooled = 0;   // its bytes so far
  std::size_t chunk_fed = 0;  // input bytes of the body given to `chunks`
  bool continue_sent = false;
  phase stage = phase::head;
  timer kind = timer::header;
  steady::time_point deadline;
  bool close_after = false;  // close once the output is sent
  bool linger = false;       // ... and drain input first (it was not all read)
  bool want_out = false;     // EPOLLOUT is what epoll watches
  bool idle = true;          // no request in hand: between requests, nothing buffered
  bool peer_done = false;    // the client shut down its sending side
  steady::time_point started;  // of the request in hand, for the access log

  bool sending() const { return out_sent < out.size() || file_left > 0 || generate; }
};

class loop {
 public:
  loop(server& srv, prefork::worker& w) : srv_(srv), w_(w) {
    lim_.max_body = srv.opts.max_body;
    cap_ = max_connections();
    if (srv.opts.max_connections != 0) cap_ = std::min(cap_, srv.opts.max_connections);
    ep_.reset(::epoll_create1(EPOLL_CLOEXEC));
    if (!ep_) prefork::throw_system_error("epoll_create1");
    add_listeners();
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = control_tag;
    if (::epoll_ctl(ep_.get(), EPOLL_CTL_ADD, w.stop_fd(), &ev) == -1)
      prefork::throw_system_error("epoll_ctl ADD control pipe");
    auto quarter = srv.opts.timeout / 4;
    tick_every_ = std::max(std::chrono::milliseconds(10), std::min(quarter, std::chrono::milliseconds(1000)));
  }

  void run() {
    std::vector<epoll_event> events(256);
    w_.tick();  // ready
    for (;;) {
      steady::time_point now = coarse_now();
      if (stopping_ && (live_ == 0 || now >= stop_deadline_)) return;
      steady::time_point wake = std::min(nearest_, now + tick_every_);
      if (stopping_) wake = std::min(wake, stop_deadline_);
      auto ms = std::chrono::ceil<std::chrono::milliseconds>(wake - now).count();
      w_.mark_idle();  // what /_status shows while the loop waits
      int n = ::epoll_wait(ep_.get(), events.data(), static_cast<int>(events.size()),
                           static_cast<int>(std::clamp<long long>(ms, 0, 60000)));
      if (n == -1 && errno != EINTR) prefork::throw_system_error("epoll_wait");
      w_.tick();
      if (n > 0) w_.mark_busy();  // until the turn's requests are answered (a /sleep included)
      turn_start_ = coarse_now();
      for (int i = 0; i < n; ++i) dispatch(events[static_cast<std::size_t>(i)]);
      if (coarse_now() >= nearest_) sweep();
    }
  }

 private:
  // Events ----------------------------------------------------------------

  void dispatch(const epoll_event& ev) {
    auto tag = static_cast<std::uint32_t>(ev.data.u64);
    auto gen = static_cast<std::uint32_t>(ev.data.u64 >> 32);
    if (tag == control_tag) return on_control();
    if (tag >= listener_tag) return on_listener(tag - listener_tag);
    if (tag >= conns_.size() || !conns_[tag] || conns_[tag]->generation != gen || !conns_[tag]->sock)
      return;  // closed earlier in this batch
    connection& c = *conns_[tag];
    if (ev.events & (EPOLLERR | EPOLLHUP)) {
      // Read what is left (a request may precede the hang-up); a reset ends it.
      if (!(ev.events & EPOLLIN) || c.stage == phase::draining) return close(c);
    }
    if (c.want_out && (ev.events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
      if (flush(c)) drive(c);  // requests that waited behind the output
      return;
    }
    if (ev.events & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_readable(c);
  }

  void on_control() {
    if (!w_.stopping()) return;  // USR1: stopping() ran on_reopen_logs
    begin_stop();
  }

  void on_listener(std::uint32_t i) {
    int listener = w_.listeners()[i].get();
    for (std::size_t k = 0; k < accepts_per_wakeup && live_ < cap_ && !stopping_; ++k) {
      sockaddr_storage peer{};
      socklen_t len = sizeof peer;
      int raw = ::accept4(listener, reinterpret_cast<sockaddr*>(&peer), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (raw == -1) {
        if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO) continue;
        if (errno == EMFILE || errno == ENFILE) {
          // Out of descriptors: stop accepting until a connection closes
          // (level-triggered epoll would spin otherwise), and hold no more
          // connections than fit from now on, so this happens once, not at
          // every close. Said once, in the error log.
          int err = errno;
          cap_ = live_ > 0 ? live_ : 1;
          remove_listeners();
          error_line(std::string("accept4: ") + (err == EMFILE ? "EMFILE" : "ENFILE") + " (" + std::strerror(err) +
                     ") with " + std::to_string(live_) + " connections open: not accepting until one closes; " +
                     "connection cap lowered to " + std::to_string(cap_));
        }
        return;
      }
      connection& c = open(prefork::fd(raw), peer);
      c.admin = srv_.admin_listener && *srv_.admin_listener == i;
      c.proxy = srv_.expects_proxy(i);
      on_readable(c);  // TCP_DEFER_ACCEPT: the request is usually there already
    }
    if (live_ >= cap_) remove_listeners();
  }

  void on_readable(connection& c) {
    if (c.stage == phase::draining) {
      char sink[16384];
      ssize_t n = ::recv(c.sock.get(), sink, sizeof sink, 0);
      if (n == 0 || (n == -1 && errno != EAGAIN && errno != EINTR)) close(c);
      return;
    }
    char* to = c.in.space(c.stage == phase::body ? 16384 : 4096);
    ssize_t n = ::recv(c.sock.get(), to, c.in.room(), 0);
    if (n == -1) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
      return close(c);
    }
    if (n == 0) {
      if (c.proxy && !c.in.empty()) proxy_refused(c.sock.get(), "the client closed inside the header", c.in.size());
      // The client is done sending. Whatever it sent completely still gets
      // an answer (the last one says "Connection: close"); a request cut
      // short does not.
      if (c.idle || c.close_after || c.peer_done) return close(c);
      c.peer_done = true;
      drive(c);
      if (c.sock && !c.sending() && !c.close_after) close(c);
      return;
    }
    c.in.commit(static_cast<std::size_t>(n));
    if (c.proxy && !take_proxy_header(c)) return;
    if (c.idle) begin_request(c);
    drive(c);
  }

  // The PROXY header before the first request: its source becomes the
  // peer. False while it is incomplete (the header timer set at accept
  // runs), when it was refused (closed), or when nothing follows it yet.
  bool take_proxy_header(connection& c) {
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

  void begin_request(connection& c) {
    c.idle = false;
    if (srv_.log.enabled()) c.started = steady::now();
    set_deadline(c, timer::header, srv_.opts.header_timeout);
  }

  // Answers what can be answered, sends it, and goes on while requests
  // wait behind a file body that has now been sent.
  void drive(connection& c) {
    for (;;) {
      bool more = process(c);
      if (!c.sock || !flush(c) || !more) return;
    }
  }

  // Requests ----------------------------------------------------------------

  // Answers every complete request in the buffer, in order, into c.out,
  // stopping after one with a file body (its bytes must go first). True
  // when it stopped there with input left.
  bool process(connection& c) {
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
        // Beyond the application's body_in_memory(), the body goes to a
        // file as it arrives and leaves the buffer (the head stays).
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

  // Appends data to the connection's body file, opening it first; on
  // failure reply_ holds the error.
  bool spool(connection& c, std::string_view data) {
    if (!c.spool && !(c.spool = open_spool())) {
      reply_.error(500, std::string("cannot open a temporary file for the request body: ") + std::strerror(errno),
                   true);
      return false;
    }
    if (!spool_write(c.spool.get(), data)) {
      reply_.error(500, "cannot write the request body to its temporary file", true);
      return false;
    }
    c.spooled += data.size();
    return true;
  }

  void ask_for_body(connection& c, const request& req) {
    // Stalled means no bytes for the header timeout, not a slow upload.
    set_deadline(c, timer::body, srv_.opts.header_timeout);
    if (req.expect_continue && !c.continue_sent) {
      c.continue_sent = true;
      c.out += continue_100;
    }
  }

  // Appends the response in reply_ to c.out and logs it.
  void respond(connection& c, const request* req) {
    // A request that took a while (/sleep) may have outlasted a QUIT: look
    // at the control pipe, so this answer already says "Connection: close".
    // Only then: the common path must not pay a read per request.
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
    const steady::duration took = steady::now() - c.started;
    if (srv_.log.enabled()) {
      const header_field* referer = req ? req->find("Referer") : nullptr;
      const header_field* agent = req ? req->find("User-Agent") : nullptr;
      srv_.log.record(c.peer, req ? req->method : "-", req ? req->target : "-", minor, reply_.status, bytes,
                      referer ? referer->value : std::string_view(), agent ? agent->value : std::string_view(), took);
    }
    if (reply_.admin)
      w_.request_done();
    else
      w_.request_done(reply_.status, bytes, took);
  }

  void set_activity(const request& req) {
    char text[64];
    std::size_t n = 0;
    for (std::string_view s : {req.method, std::string_view(" "), req.target}) {
      std::size_t k = std::min(s.size(), sizeof text - n);
      std::memcpy(text + n, s.data(), k);
      n += k;
    }
    w_.status(std::string_view(text, n));
  }

  // Output ------------------------------------------------------------------

  // Sends c.out, then the file body. True when everything went out and the
  // connection stays open for more requests; false when it waits for
  // EPOLLOUT or was closed.
  bool flush(connection& c) {
    for (unsigned pieces = 0;; ++pieces) {
      while (c.out_sent < c.out.size()) {
        ssize_t n = ::send(c.sock.get(), c.out.data() + c.out_sent, c.out.size() - c.out_sent,
                           MSG_NOSIGNAL | (c.file_left ? MSG_MORE : 0));
        if (n > 0) {
          c.out_sent += static_cast<std::size_t>(n);
          continue;
        }
        if (n == -1 && errno == EINTR) continue;
        if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK)) return wait_writable(c);
        close(c);
        return false;
      }
      while (c.file_left > 0) {
        ssize_t n = ::sendfile(c.sock.get(), c.file.get(), &c.file_offset, c.file_left);
        if (n > 0) {
          c.file_left -= static_cast<std::size_t>(n);
          continue;
        }
        if (n == -1 && errno == EINTR) continue;
        if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK)) return wait_writable(c);
        close(c);  // an error, or the file shrank: the framing is broken
        return false;
      }
      if (!c.generate) break;
      // A generated body: the next piece once the last one is sent, so it
      // is made only as fast as the client takes it. After a few pieces the
      // loop gets a turn (EPOLLOUT comes straight back while there is room).
      c.out.clear();
      c.out_sent = 0;
      if (pieces == 16) return wait_writable(c);
      if (!next_piece(c)) {
        close(c);  // the body cannot be ended well: the client sees it cut short
        return false;
      }
    }
    c.file.reset();
    c.out.clear();
    c.out_sent = 0;
    if (c.want_out) watch(c, EPOLLIN);
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

  // Appends the next pieces of c's generated body to c.out, about 16 KiB
  // of them (a send per tiny piece would cost more than making it), with
  // the last-chunk once the generator says it is done. False if it threw.
  bool next_piece(connection& c) {
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

  bool wait_writable(connection& c) {
    if (!c.want_out) watch(c, EPOLLOUT);
    set_deadline(c, timer::send, srv_.opts.timeout / 2);
    return false;
  }

  void finish(connection& c) {
    if (!c.linger) return close(c);
    ::shutdown(c.sock.get(), SHUT_WR);
    c.stage = phase::draining;
    set_deadline(c, timer::linger, linger_time);
  }

  // Connections -----------------------------------------------------------

  connection& open(prefork::fd sock, const sockaddr_storage& peer) {
    std::uint32_t i;
    if (!free_.empty()) {
      i = free_.back();
      free_.pop_back();
    } else {
      i = static_cast<std::uint32_t>(conns_.size());
      conns_.push_back(std::make_unique<connection>(lim_));
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
    c.close_after = c.linger = c.want_out = c.peer_done = c.proxy = false;
    c.idle = true;
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = (static_cast<std::uint64_t>(c.generation) << 32) | i;
    if (::epoll_ctl(ep_.get(), EPOLL_CTL_ADD, c.sock.get(), &ev) == -1)
      prefork::throw_system_error("epoll_ctl ADD connection");
    ++live_;
    set_deadline(c, timer::header, srv_.opts.header_timeout);
    return c;
  }

  void watch(connection& c, std::uint32_t what) {
    epoll_event ev{};
    ev.events = what;
    ev.data.u64 = (static_cast<std::uint64_t>(c.generation) << 32) | c.index;
    ::epoll_ctl(ep_.get(), EPOLL_CTL_MOD, c.sock.get(), &ev);
    c.want_out = (what & EPOLLOUT) != 0;
  }

  void close(connection& c) {
    if (!c.sock) return;
    c.sock.reset();  // close(2) also takes it out of the epoll set
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
    free_.push_back(c.index);
    --live_;
    if (!listening_ && !stopping_ && live_ < cap_) add_listeners();
  }

  void set_deadline(connection& c, timer kind, std::chrono::milliseconds span) {
    c.kind = kind;
    c.deadline = coarse_now() + span;
    nearest_ = std::min(nearest_, c.deadline);
  }

  // Closes what timed out and finds the next deadline.
  void sweep() {
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
                         c.kind == timer::header ? "the request head did not arrive within the header timeout"
                                                 : "the request body stalled for longer than the header timeout",
                         true);
            respond(c, nullptr);
            flush(c);
          }
          break;
        case timer::keepalive:
        case timer::send:
        case timer::linger:
          close(c);
          break;
      }
      if (c.sock) nearest_ = std::min(nearest_, c.deadline);
    }
  }

  // Stopping --------------------------------------------------------------

  void begin_stop() {
    if (stopping_) return;
    stopping_ = true;
    stop_deadline_ = coarse_now() + srv_.opts.graceful_timeout;
    remove_listeners();
    // The stop fd stays readable from now on; watching it would spin.
    ::epoll_ctl(ep_.get(), EPOLL_CTL_DEL, w_.stop_fd(), nullptr);
    for (auto& p : conns_)
      if (p->sock && p->idle && !p->sending()) close(*p);
  }

  void add_listeners() {
    const auto& ls = w_.listeners();
    for (std::size_t i = 0; i < ls.size(); ++i) {
      epoll_event ev{};
      ev.events = EPOLLIN | EPOLLEXCLUSIVE;
      ev.data.u64 = listener_tag + i;
      if (::epoll_ctl(ep_.get(), EPOLL_CTL_ADD, ls[i].get(), &ev) == -1)
        prefork::throw_system_error("epoll_ctl ADD listener " + std::to_string(ls[i].get()));
    }
    listening_ = true;
  }

  void remove_listeners() {
    if (!listening_) return;
    // EPOLLEXCLUSIVE cannot be modified, only removed and added again.
    for (const prefork::fd& l : w_.listeners()) ::epoll_ctl(ep_.get(), EPOLL_CTL_DEL, l.get(), nullptr);
    listening_ = false;
  }

  server& srv_;
  prefork::worker& w_;
  limits lim_;
  prefork::fd ep_;
  std::vector<std::unique_ptr<connection>> conns_;
  std::vector<std::uint32_t> free_;
  std::size_t live_ = 0, cap_ = 0;
  bool listening_ = false, stopping_ = false;
  steady::time_point nearest_ = steady::time_point::max(), stop_deadline_, turn_start_;
  std::chrono::milliseconds tick_every_{1000};
  reply reply_;
  std::string piece_;  // a generated body's piece, reused
};

}  // namespace

std::size_t max_connections() {
  rlimit lim{};
  if (::getrlimit(RLIMIT_NOFILE, &lim) == -1 || lim.rlim_cur == RLIM_INFINITY) return 10000;
  // Room for the listeners, the logs, files being sent and the like.
  rlim_t usable = lim.rlim_cur > 128 ? (lim.rlim_cur - 64) / 2 : 32;
  return static_cast<std::size_t>(std::min<rlim_t>(usable, 10000));
}

void run_evented(server& srv, prefork::worker& w) {
  loop l(srv, w);
  l.run();
}

}  // namespace httpd
