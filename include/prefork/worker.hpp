// prefork/worker.hpp: prefork::worker, what a forked worker process holds.
//
// A worker serves connections from the listening sockets it shares with its
// siblings, keeps its scoreboard slot up to date, and listens to its master
// on a control pipe, never through signals, so application code never sees
// EINTR: the master writes a signal number (QUIT: stop after the request in
// hand; USR1: reopen logs) and the worker reads it between requests, in
// accept(), wait_readable() or stopping(). A graceful stop is the QUIT byte
// followed by end of file, so stop_fd() stays readable from then on. End of
// file with no QUIT before it means the master died; that too is a graceful
// stop, not an exit on the spot: a worker that holds a request (a response
// half sent by an event loop) finishes it, since its client did nothing wrong.
//
// accept() waits in poll(2) on every listener and the control pipe at once,
// waking at least every timeout/4 to tick the heartbeat, so only a worker
// stuck inside a request is ever killed for silence. The listeners are
// non-blocking: every idle worker wakes for a connection (poll has no
// exclusive wake-up), the losers get EAGAIN and go back to poll.
//
// A connection-oriented worker (a line protocol, HTTP keep-alive) holds a
// connection across many requests; its "request in hand" is the one it has
// read and not yet answered, not the whole connection. wait_readable() and
// read() wait for the client and for the master at once, so a client that
// keeps an idle connection open cannot hold a graceful stop.
//
// PR_SET_PDEATHSIG is deliberately not used: end of file on the control pipe
// already tells an idle worker at once, and a busy one finishes the request
// in hand (its client gets an answer) before it notices; the death signal
// would also fire on the exit of the forking *thread*, not process, and is
// cleared by a set-user-ID exec. The cost: a worker stuck forever in a
// request outlives a SIGKILLed master until someone kills it.
// Stands on poll, accept4, read, write, pread (/proc/self/statm).
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <prefork/error.hpp>
#include <prefork/fd.hpp>
#include <prefork/pool_config.hpp>
#include <prefork/scoreboard.hpp>

namespace prefork {

class master;

namespace detail {
class worker_life;
// On a worker's control channel: become the mold (refork.hpp). SIGURG's
// number, as the master's signal for a refork by hand.
inline constexpr char promote_byte = static_cast<char>(SIGURG);
}  // namespace detail

class worker {
 public:
  worker(const worker&) = delete;
  worker& operator=(const worker&) = delete;

  // The worker's number, 0 .. workers-1; a replacement takes the number of
  // the worker it replaces.
  unsigned index() const noexcept { return index_; }
  // 1 for the first workers; each HUP starts a new generation.
  unsigned generation() const noexcept { return generation_; }
  // The worker's slot in scoreboard().
  std::size_t slot() const noexcept { return slot_; }
  const std::vector<fd>& listeners() const noexcept { return *listeners_; }
  // Which of listeners() the connection accept() returned last came from.
  std::size_t last_listener() const noexcept { return last_listener_; }
  const prefork::scoreboard& scoreboard() const noexcept { return *board_; }

  // Heartbeat. accept() ticks by itself; call tick() inside long requests.
  // The first tick (or accept) after after_fork makes the worker ready. It
  // costs a few nanoseconds (a store of CLOCK_MONOTONIC_COARSE), so an
  // event loop can tick every turn.
  void tick() noexcept {
    cells().last_tick_ns.store(detail::coarse_monotonic_ns(), std::memory_order_relaxed);
    if (state() == worker_state::booting) {
      set_state(worker_state::idle);
      wake_master();
    }
  }

  // A short text shown in the scoreboard and in the log if the worker is
  // killed for silence ("GET /x"); longer texts are cut at 63 bytes.
  void status(std::string_view activity) noexcept { detail::write_activity(cells(), activity); }

  // Counts one served request (scoreboard, max_requests) and checks max_rss.
  void request_done() noexcept {
    std::uint64_t served = cells().requests.fetch_add(1, std::memory_order_relaxed) + 1;
    tick();
    std::uint64_t limit = cells().request_limit.load(std::memory_order_relaxed);
    if (limit != 0 && served >= limit) ask_retirement(detail::retire_reason::max_requests);
    // The master looks at request counts when it wakes: a refork_after count
    // reached is worth waking it for.
    for (std::uint64_t due : config_->refork_after)
      if (served == due) wake_master();
    check_rss();
  }

  // As above, and adds the request to the slot's totals (scoreboard::totals:
  // status class, bytes sent, duration histogram): relaxed adds, no system call.
  void request_done(int status, std::uint64_t bytes_sent, std::chrono::nanoseconds took) noexcept {
    detail::count_request(cells().totals, status, bytes_sent, took.count());
    request_done();
  }

  // True once a graceful stop was asked for, by QUIT or by the master's death
  // (end of file on the control pipe). Reads what the master sent (running
  // on_reopen_logs for USR1) without blocking.
  bool stopping() const {
    read_control();
    return stopping_;
  }

  // Waits until `conn` is readable (bytes, end of file or an error to read),
  // ticking the heartbeat, for at most `timeout` (negative: no limit). False
  // when the time ran out or a graceful stop was asked (stopping() tells
  // which). Between requests a stop wins over a client that spoke at the
  // same moment, so a chatty client cannot hold QUIT for the whole
  // graceful_timeout. A connection just accepted is different: its client
  // has made a request it expects an answer to, which is usually already
  // here or a few microseconds behind the handshake, and closing it then
  // would fail that request (during an upgrade, say, where the old workers
  // stop while connections still arrive). So until the first time `conn`
  // is found readable, a stop gives it up to first_request_grace to speak.
  // Call it between requests on a kept connection, never in the middle of one.
  bool wait_readable(int conn, std::chrono::milliseconds timeout) {
    const bool forever = timeout.count() < 0;
    const auto deadline =
        std::chrono::steady_clock::now() + (forever ? std::chrono::milliseconds(0) : timeout);
    pollfd p[2] = {{conn, POLLIN, 0}, {control_.get(), POLLIN, 0}};
    for (;;) {
      if (stopping_) {
        if (conn != unheard_) return false;
        unheard_ = -1;
        const auto until = std::chrono::steady_clock::now() + first_request_grace;
        const auto end = forever ? until : std::min(until, deadline);
        pollfd first{conn, POLLIN, 0};
        for (;;) {
          auto left = std::chrono::ceil<std::chrono::milliseconds>(end - std::chrono::steady_clock::now());
          if (left.count() <= 0) return false;
          int ready = PREFORK_SYSCALL(poll)(&first, 1,
                                            static_cast<int>(std::min<std::int64_t>(left.count(), tick_ms_)));
          if (ready == -1 && errno != EINTR) throw_system_error("poll fd " + std::to_string(conn));
          tick();
          if (ready == 1) return true;
        }
      }
      int wait_ms = tick_ms_;
      if (!forever) {
        auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0) return false;
        wait_ms = static_cast<int>(std::min<std::int64_t>(left.count(), tick_ms_));
      }
      int ready = PREFORK_SYSCALL(poll)(p, 2, wait_ms);
      if (ready == -1 && errno != EINTR) throw_system_error("poll fd " + std::to_string(conn));
      tick();
      if (ready <= 0) continue;
      if (p[1].revents != 0) {
        control_checked_ns_ = detail::monotonic_ns();
        read_control();
        if (stopping_) continue;  // decided at the top of the loop
      }
      if (p[0].revents != 0) {
        if (conn == unheard_) unheard_ = -1;
        return true;
      }
    }
  }

  // How long a graceful stop waits for the first request of a connection
  // accepted just before it (see wait_readable).
  static constexpr std::chrono::milliseconds first_request_grace{1000};

  // One read(2) from a client, after wait_readable: the bytes read, or 0
  // when the connection is done: the client closed it, the read failed, the
  // timeout passed, or a stop was asked while the client was between
  // requests. A non-blocking `conn` is waited on again after EAGAIN.
  std::size_t read(int conn, void* buf, std::size_t size,
                   std::chrono::milliseconds timeout = std::chrono::milliseconds(-1)) {
    for (;;) {
      if (!wait_readable(conn, timeout)) return 0;
      io_result r = read_some(conn, buf, size);
      if (!r.would_block()) return r ? r.bytes : 0;
    }
  }

  // Readable when the master has something to say, and for good once a
  // graceful stop was asked for: put it in an epoll loop and call stopping()
  // when it fires. (A promotion to mold, refork.hpp, is a graceful stop that
  // fires it once: stopping() stays true, but the channel is the mold's now.)
  int stop_fd() const noexcept { return control_.get(); }

  // The next connection from any listener (blocking, CLOEXEC), or an invalid
  // fd once the worker is stopping. Marks the worker idle while it waits and
  // busy when it returns a connection. Under load a connection is already
  // queued: it is taken with one accept4 and nothing else, and the control
  // pipe is read at most every 100 ms (the listeners are non-blocking, so a
  // worker that loses the race for a connection falls through to poll).
  fd accept() {
    std::int64_t now = detail::monotonic_ns();
    if (now - control_checked_ns_ >= 100'000'000) {
      control_checked_ns_ = now;
      read_control();
    }
    if (stopping_) return fd();
    tick();  // the first one makes the worker ready and tells the master
    const std::size_t n = listeners_->size();
    for (std::size_t k = 0; k < n; ++k) {
      if (fd conn = take_connection(polls_[(next_listener_ + k) % n].fd, (next_listener_ + k) % n))
        return conn;
    }
    set_state(worker_state::idle);
    for (;;) {
      // Out of descriptors (EMFILE and kin): the listeners would poll
      // readable at once and spin, so wait on the control pipe alone for a
      // moment, then try again.
      const bool starved = starved_;
      for (std::size_t i = 0; starved && i < n; ++i) polls_[i].fd = ~polls_[i].fd;  // poll skips fd < 0
      int ready =
          PREFORK_SYSCALL(poll)(polls_.data(), polls_.size(), starved ? std::min(tick_ms_, 100) : tick_ms_);
      int poll_errno = errno;
      for (std::size_t i = 0; starved && i < n; ++i) polls_[i].fd = ~polls_[i].fd;
      starved_ = false;
      if (ready == -1 && poll_errno != EINTR) throw_system_error("poll", poll_errno);
      tick();
      check_rss();
      if (ready <= 0 && !starved) continue;
      if (ready > 0 && polls_[n].revents != 0) {
        control_checked_ns_ = detail::monotonic_ns();
        read_control();
        if (stopping_) return fd();
      }
      // Start after the listener served last, so one busy socket cannot
      // starve the others.
      for (std::size_t k = 0; k < n; ++k) {
        std::size_t i = (next_listener_ + k) % n;
        if (!starved && polls_[i].revents == 0) continue;
        if (!starved && (polls_[i].revents & POLLNVAL))
          throw std::logic_error("worker: listener fd " + std::to_string(polls_[i].fd) + " is not open");
        if (fd conn = take_connection(polls_[i].fd, i)) return conn;
      }
    }
  }

  // For workers that run their own event loop over listeners() and
  // stop_fd() instead of calling accept(): what the scoreboard (and
  // /_status pages built on it) shows while connections are in hand. A
  // connection taken with a bare accept4 changes no state, so such a
  // worker must say busy itself, or its slot still says idle.
  void mark_busy() noexcept {
    if (state() != worker_state::stopping) set_state(worker_state::busy);
  }
  void mark_idle() noexcept {
    if (state() != worker_state::stopping) set_state(worker_state::idle);
  }

 private:
  friend class master;
  friend class detail::worker_life;

  struct setup {
    const pool_config* config;
    const std::vector<fd>* listeners;
    const prefork::scoreboard* board;
    std::size_t slot;
    unsigned index, generation;
    fd control;   // read end of the control pipe
    int wake_fd;  // write end of the master's wake-up pipe (owned by the master's copy)
  };

  explicit worker(setup s)
      : config_(s.config),
        listeners_(s.listeners),
        board_(s.board),
        slot_(s.slot),
        index_(s.index),
        generation_(s.generation),
        control_(std::move(s.control)),
        wake_fd_(s.wake_fd) {
    // A quarter of the timeout: the master's deadline is never missed even
    // when a tick comes late, and an idle pool wakes rarely.
    auto quarter = config_->timeout.count() / 4;
    tick_ms_ = static_cast<int>(quarter < 10 ? 10 : (quarter > 60000 ? 60000 : quarter));
    for (const fd& l : *listeners_) polls_.push_back(pollfd{l.get(), POLLIN, 0});
    polls_.push_back(pollfd{control_.get(), POLLIN, 0});
    if (config_->max_rss != 0) statm_.reset(::open("/proc/self/statm", O_RDONLY | O_CLOEXEC));
  }

  // One non-blocking accept4 on listener number i: a connection, or an
  // invalid fd when another worker won it or the client gave up already.
  fd take_connection(int listener, std::size_t i) {
    int conn = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
    if (conn >= 0) {
      starved_logged_ = false;
      last_listener_ = i;
      next_listener_ = (i + 1) % listeners_->size();
      set_state(worker_state::busy);
      unheard_ = conn;
      return fd(conn);
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR || errno == ECONNABORTED ||
        errno == EPROTO || errno == EPERM)
      return fd();
    if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
      if (!starved_logged_) {  // once per episode, not once per try
        starved_logged_ = true;
        detail::log_event(*config_, worker_name() + ": accept4: " + std::strerror(errno) +
                                        "; pausing accepts until descriptors are free");
      }
      starved_ = true;
      return fd();
    }
    throw_system_error("accept4 fd " + std::to_string(listener));
  }

  detail::slot_cells& cells() const noexcept { return board_->cells(slot_); }
  worker_state state() const noexcept {
    return static_cast<worker_state>(cells().state.load(std::memory_order_relaxed));
  }
  void set_state(worker_state s) const noexcept {
    cells().state.store(static_cast<std::int32_t>(s), std::memory_order_release);
  }

  // One byte is enough: the master only needs to wake up and look at the
  // scoreboard. A full pipe means it will wake anyway.
  void wake_master() const noexcept {
    char b = 'w';
    [[maybe_unused]] ssize_t r = ::write(wake_fd_, &b, 1);
  }

  void ask_retirement(detail::retire_reason why) noexcept {
    auto none = static_cast<std::int32_t>(detail::retire_reason::none);
    if (cells().retire.compare_exchange_strong(none, static_cast<std::int32_t>(why))) wake_master();
  }

  // pread on a kept /proc/self/statm: one system call per check, no open.
  void check_rss() noexcept {
    if (!statm_) return;
    char buf[128];
    ssize_t r = ::pread(statm_.get(), buf, sizeof buf - 1, 0);
    if (r <= 0) return;
    buf[r] = '\0';
    // statm is "size resident shared ...", in pages.
    char* end = nullptr;
    (void)std::strtoul(buf, &end, 10);
    if (end == buf || *end != ' ') return;
    char* rss_start = end + 1;
    unsigned long rss_pages = std::strtoul(rss_start, &end, 10);
    if (end == rss_start) return;
    if (rss_pages * static_cast<unsigned long>(::sysconf(_SC_PAGESIZE)) > config_->max_rss)
      ask_retirement(detail::retire_reason::max_rss);
  }

  void read_control() const {
    if (control_eof_) return;
    bool reopen = false;
    bool waited = false;
    char buf[64];
    for (;;) {
      io_result r = read_some(control_.get(), buf, sizeof buf);
      if (r.would_block() && stopping_ && !waited && !(promoted_ && !quit_)) {
        // The master closes its end right after writing QUIT: wait for
        // that end of file, which keeps stop_fd() readable from now on.
        waited = true;
        pollfd p{control_.get(), POLLIN, 0};
        PREFORK_SYSCALL(poll)(&p, 1, 1000);
        continue;
      }
      if (r.would_block() || !r) break;
      if (r.bytes == 0) {
        control_eof_ = quit_ = true;
        if (!stopping_) {
          stopping_ = true;
          detail::log_event(*config_, worker_name() +
                                          ": end of file on the control pipe, the master is gone; "
                                          "stopping after the request in hand");
        }
        break;
      }
      for (std::size_t i = 0; i < r.bytes; ++i) {
        if (buf[i] == SIGQUIT) stopping_ = quit_ = true;
        if (buf[i] == detail::promote_byte) stopping_ = promoted_ = true;
        if (buf[i] == SIGUSR1) reopen = true;
      }
    }
    if (stopping_) set_state(worker_state::stopping);
    if (reopen && config_->on_reopen_logs) {
      try {
        config_->on_reopen_logs();
      } catch (const std::exception& e) {
        detail::log_event(*config_, worker_name() + ": on_reopen_logs failed: " + e.what());
      }
    }
  }

  std::string worker_name() const {
    return "worker " + std::to_string(index_) + " (pid " + std::to_string(::getpid()) + ")";
  }

  const pool_config* config_;
  const std::vector<fd>* listeners_;
  const prefork::scoreboard* board_;
  std::size_t slot_;
  unsigned index_, generation_;
  fd control_;
  int wake_fd_;
  int tick_ms_ = 1000;
  std::vector<pollfd> polls_;
  std::size_t next_listener_ = 0;
  std::size_t last_listener_ = 0;
  std::int64_t control_checked_ns_ = 0;
  bool starved_ = false;         // the last accept4 ran out of descriptors
  int unheard_ = -1;             // the connection accept() returned, until it is first found readable
  bool starved_logged_ = false;  // and that episode was logged
  fd statm_;
  mutable bool stopping_ = false;
  mutable bool control_eof_ = false;
  // Promoted to mold (refork.hpp): a graceful stop, after which the process
  // forks workers instead of exiting, unless a real stop (quit_) came too.
  mutable bool promoted_ = false;
  mutable bool quit_ = false;
};

}  // namespace prefork
