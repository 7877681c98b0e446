// httpd/uring_worker.cpp: the io_uring loop (see uring_worker.hpp and
// docs/uring.md).
#include "uring_worker.hpp"

#include <liburing.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <csignal>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <vector>

#include <prefork/error.hpp>
#include <prefork/fd.hpp>
#include <prefork/worker.hpp>

#include "connection.hpp"
#include "evented_worker.hpp"

namespace httpd {
namespace {

std::string describe(const char* call, int negative_errno) {
  return std::string(call) + ": " + std::strerror(-negative_errno);
}

// A ring of provided buffers (IORING_REGISTER_PBUF_RING) in memory of our
// own: liburing 2.3, Debian's, has no io_uring_setup_buf_ring.
class buffer_ring {
 public:
  buffer_ring() = default;
  buffer_ring(const buffer_ring&) = delete;
  buffer_ring& operator=(const buffer_ring&) = delete;
  ~buffer_ring() {
    if (ring_ && registered_) io_uring_unregister_buf_ring(ring_, group_);
    if (map_ != MAP_FAILED) ::munmap(map_, map_size_);
  }

  // entries: a power of two. 0, or a negative errno naming what failed.
  int setup(io_uring* ring, unsigned entries, unsigned size, unsigned short group) {
    entries_ = entries;
    size_ = size;
    group_ = group;
    map_size_ = entries * sizeof(io_uring_buf) + std::size_t(entries) * size;
    map_ = ::mmap(nullptr, map_size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (map_ == MAP_FAILED) return -errno;
    br_ = static_cast<io_uring_buf_ring*>(map_);
    io_uring_buf_ring_init(br_);
    io_uring_buf_reg reg{};
    reg.ring_addr = reinterpret_cast<unsigned long>(map_);
    reg.ring_entries = entries;
    reg.bgid = group;
    int r = io_uring_register_buf_ring(ring, &reg, 0);
    if (r < 0) return r;
    ring_ = ring;
    registered_ = true;
    for (unsigned i = 0; i < entries; ++i) give_back(i);
    return 0;
  }
  char* buffer(unsigned id) const {
    return static_cast<char*>(map_) + entries_ * sizeof(io_uring_buf) + std::size_t(id) * size_;
  }
  // The kernel may fill it again.
  void give_back(unsigned id) {
    io_uring_buf_ring_add(br_, buffer(id), size_, static_cast<unsigned short>(id),
                          io_uring_buf_ring_mask(entries_), 0);
    io_uring_buf_ring_advance(br_, 1);
  }
  unsigned short group() const { return group_; }

 private:
  io_uring* ring_ = nullptr;
  bool registered_ = false;
  void* map_ = MAP_FAILED;
  std::size_t map_size_ = 0;
  io_uring_buf_ring* br_ = nullptr;
  unsigned entries_ = 0, size_ = 0;
  unsigned short group_ = 0;
};

struct ring_guard {
  io_uring* ring;
  ~ring_guard() { io_uring_queue_exit(ring); }
};

// Why io_uring_setup failed, with what the system says about it.
std::string setup_failure(int r) {
  std::string why = describe("io_uring_setup", r);
  std::ifstream sysctl("/proc/sys/kernel/io_uring_disabled");
  int disabled = 0;
  if (sysctl >> disabled && disabled != 0)
    return why + " (kernel.io_uring_disabled is " + std::to_string(disabled) + ")";
  if (r == -ENOSYS) return why + " (a kernel without io_uring)";
  if (r == -EPERM) return why + " (a seccomp filter or a security module refused it)";
  return why;
}

}  // namespace

std::string uring_unavailable() {
  if (const char* e = std::getenv("PREFORK_HTTPD_NO_URING"); e && *e && std::strcmp(e, "0") != 0)
    return "disabled by PREFORK_HTTPD_NO_URING";
  io_uring ring{};
  io_uring_params params{};
  int r = io_uring_queue_init_params(8, &ring, &params);
  if (r < 0) return setup_failure(r);
  ring_guard guard{&ring};
  if (!(params.features & IORING_FEAT_EXT_ARG)) return "no IORING_FEAT_EXT_ARG (timed waits; Linux 5.11)";
  if (!(params.features & IORING_FEAT_NODROP)) return "no IORING_FEAT_NODROP (Linux 5.5)";
  io_uring_probe* probe = io_uring_get_probe_ring(&ring);
  if (!probe) return "no IORING_REGISTER_PROBE (Linux 5.6)";
  struct {
    int op;
    const char* name;
  } const needed[] = {{IORING_OP_RECV, "IORING_OP_RECV"},
                      {IORING_OP_SEND, "IORING_OP_SEND"},
                      {IORING_OP_POLL_ADD, "IORING_OP_POLL_ADD"},
                      {IORING_OP_ASYNC_CANCEL, "IORING_OP_ASYNC_CANCEL"},
                      {IORING_OP_CLOSE, "IORING_OP_CLOSE"}};
  for (const auto& op : needed) {
    if (!io_uring_opcode_supported(probe, op.op)) {
      io_uring_free_probe(probe);
      return std::string("no ") + op.name;
    }
  }
  io_uring_free_probe(probe);

  buffer_ring buffers;
  if ((r = buffers.setup(&ring, 1, 64, 0)) < 0)
    return describe("io_uring_register_buf_ring", r) + " (provided buffer rings; Linux 5.19)";

  // Multishot poll and multishot receive, tried for real: the opcodes exist
  // long before their multishot flags do.
  int pair[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, pair) == -1)
    return std::string("socketpair: ") + std::strerror(errno);
  prefork::fd mine(pair[0]), theirs(pair[1]);
  io_uring_sqe* sqe = io_uring_get_sqe(&ring);
  io_uring_prep_poll_multishot(sqe, mine.get(), POLLIN);
  sqe->user_data = 1;
  sqe = io_uring_get_sqe(&ring);
  io_uring_prep_recv_multishot(sqe, mine.get(), nullptr, 0, 0);
  sqe->flags |= IOSQE_BUFFER_SELECT;
  sqe->buf_group = buffers.group();
  sqe->user_data = 2;
  if ((r = io_uring_submit(&ring)) < 0) return describe("io_uring_enter", r);
  if (::write(theirs.get(), "x", 1) != 1)
    return std::string("write to a socket pair: ") + std::strerror(errno);

  bool polled = false, received = false;
  for (int turn = 0; turn < 4 && !(polled && received); ++turn) {
    __kernel_timespec wait{1, 0};
    io_uring_cqe* cqe = nullptr;
    r = io_uring_submit_and_wait_timeout(&ring, &cqe, 1, &wait, nullptr);
    if (r == -ETIME) break;
    if (r < 0 && r != -EINTR) return describe("io_uring_enter", r);
    unsigned head, seen = 0;
    io_uring_for_each_cqe(&ring, head, cqe) {
      ++seen;
      const bool more = cqe->flags & IORING_CQE_F_MORE;
      if (cqe->user_data == 1) {
        if (cqe->res < 0) return describe("multishot poll", cqe->res) + " (Linux 5.13)";
        if (!more) return "multishot poll ended after one event (Linux 5.13)";
        polled = true;
      } else if (cqe->user_data == 2) {
        if (cqe->res < 0) return describe("multishot recv", cqe->res) + " (Linux 6.0)";
        if (!(cqe->flags & IORING_CQE_F_BUFFER))
          return "multishot recv without a provided buffer (Linux 6.0)";
        if (!more) return "multishot recv ended after one completion (Linux 6.0)";
        received = true;
      }
    }
    io_uring_cq_advance(&ring, seen);
  }
  if (!polled) return "multishot poll did not complete (Linux 5.13)";
  if (!received) return "multishot recv did not complete (Linux 6.0)";
  return "";
}

namespace {

// What a completion is about: user_data is the generation (high 32 bits),
// the operation (8 bits) and the slot or listener index (24 bits), so a
// completion for a connection closed since, its slot now another's, is
// recognised by its generation.
enum op : std::uint8_t { op_recv = 1, op_send, op_poll, op_listener, op_control, op_ignore, op_closed };

std::uint64_t tag(op o, std::uint32_t index, std::uint32_t generation = 0) {
  return (std::uint64_t(generation) << 32) | (std::uint64_t(o) << 24) | (index & 0xffffffu);
}

constexpr unsigned default_buffers = 256;  // provided receive buffers per worker
constexpr unsigned buffer_size = 8192;     // bytes each
// Input kept while an answer waits to leave; beyond it, reading pauses.
constexpr std::size_t pile_limit = std::size_t(1) << 20;
constexpr std::size_t accepts_per_wakeup = 32;   // then let the sibling workers have some
constexpr unsigned feat_min_timeout = 1u << 15;  // IORING_FEAT_MIN_TIMEOUT (Linux 6.12; not in liburing 2.3)
constexpr unsigned default_min_wait_us = 50;     // how long a turn waits for more than its sends' completions

// PREFORK_HTTPD_URING_MIN_WAIT: microseconds a turn that sent waits for
// more than its sends' completions (default 50; 0: not at all), for
// comparisons.
unsigned min_wait_wanted() {
  if (const char* e = std::getenv("PREFORK_HTTPD_URING_MIN_WAIT"); e && *e) {
    unsigned long v = std::strtoul(e, nullptr, 10);
    if (v <= 100000) return static_cast<unsigned>(v);
  }
  return default_min_wait_us;
}

struct ring_connection : connection {
  using connection::connection;
  unsigned inflight = 0;     // operations whose last completion is still to come
  bool recv_armed = false;   // a multishot receive is in flight
  bool send_busy = false;    // a send, or a poll for room to send a file, is in flight
  bool read_eof = false;     // the client's EOF came (no receive again)
  bool eof_pending = false;  // ... while a send was in flight: handled once it is done
  bool paused = false;       // receiving was cancelled: input piled up behind an answer
  bool piled_fresh = false;  // a new request began arriving while an answer was leaving
  bool parked = false;       // closed, its slot waiting for its last completion
};

struct completion {
  std::uint64_t user_data;
  std::int32_t res;
  std::uint32_t flags;
};

class loop final : public http_engine {
 public:
  loop(server& srv, prefork::worker& w, io_uring& ring, unsigned buffers) : http_engine(srv, w), ring_(ring) {
    buffer_count_ = buffers;
    int r = buffers_.setup(&ring_, buffers, buffer_size, 0);
    if (r < 0) throw std::system_error(-r, std::generic_category(), "io_uring_register_buf_ring");
    accept_armed_.assign(w.listeners().size(), false);
    accept_more_.assign(w.listeners().size(), false);
    arm_control();
    start_accepting();
  }

  void run() {
    std::vector<completion> batch;
    batch.reserve(256);
    w_.tick();  // ready
    for (;;) {
      steady::time_point now = coarse_now();
      if (stop_done(now)) break;
      auto wait = std::chrono::ceil<std::chrono::nanoseconds>(wake_by(now) - now);
      wait =
          std::clamp(wait, std::chrono::nanoseconds(0), std::chrono::nanoseconds(std::chrono::seconds(60)));
      if (std::find(accept_more_.begin(), accept_more_.end(), true) != accept_more_.end())
        wait = std::chrono::nanoseconds(0);  // connections left in a listener's queue
      __kernel_timespec ts{};
      ts.tv_sec = static_cast<long long>(wait.count() / 1000000000);
      ts.tv_nsec = static_cast<long long>(wait.count() % 1000000000);
      w_.mark_idle();  // what /_status shows while the loop waits
      // The turn's sends, receives, accepts and cancels go in with the wait:
      // one system call.
      int r = submit_and_wait(ts);
      if (r < 0 && r != -ETIME && r != -EINTR && r != -EBUSY && r != -EAGAIN)
        throw std::system_error(-r, std::generic_category(), "io_uring_enter");
      w_.tick();
      turn_start_ = coarse_now();
      bool any = false;
      for (;;) {
        io_uring_cqe* cqes[256];
        unsigned n = io_uring_peek_batch_cqe(&ring_, cqes, 256);
        if (n == 0) break;
        batch.clear();
        for (unsigned i = 0; i < n; ++i) batch.push_back({cqes[i]->user_data, cqes[i]->res, cqes[i]->flags});
        io_uring_cq_advance(&ring_, n);
        if (!any) w_.mark_busy();  // until the turn's requests are answered (a /sleep included)
        any = true;
        for (const completion& c : batch) dispatch(c);
        if (n < 256) break;
      }
      // After the batch: a request among its completions is answered, not
      // dropped with a connection the stop closes as idle.
      if (stop_asked_) begin_stop();
      for (std::uint32_t i = 0; i < accept_more_.size(); ++i) {
        if (accept_more_[i] && listening_) accept_from(i);
        // Not accepting (the cap, EMFILE, the stop): the poll, armed again
        // when accepting resumes, reports what waits.
        if (!listening_) accept_more_[i] = false;
        // The multishot poll ended (cancelled, or the kernel ended it):
        // again, while we accept.
        if (!accept_armed_[i] && listening_) arm_accept(i);
      }
      if (coarse_now() >= nearest_) sweep();
    }
    io_uring_submit(&ring_);  // the last closes
  }

 private:
  // Completions -----------------------------------------------------------

  void dispatch(const completion& e) {
    const auto o = static_cast<op>((e.user_data >> 24) & 0xff);
    const auto index = static_cast<std::uint32_t>(e.user_data & 0xffffff);
    const auto gen = static_cast<std::uint32_t>(e.user_data >> 32);
    switch (o) {
      case op_control: return on_control(e);
      case op_listener:
        // After the batch: a request in it that takes a while (a /sleep)
        // must not hold a connection this worker just accepted while an
        // idle sibling could have had it (the epoll loop answers a new
        // connection at once; this one reads it next turn).
        if (!(e.flags & IORING_CQE_F_MORE)) accept_armed_[index] = false;
        if (e.res >= 0 && index < accept_more_.size()) accept_more_[index] = true;
        return;
      case op_ignore: return;
      case op_closed:
        // A descriptor is free: accepting that stopped for want of one goes on.
        if (--closing_ == 0 && out_of_fds_) {
          out_of_fds_ = false;
          if (!listening_ && !stopping_ && live_ < cap_) start_accepting();
        }
        return;
      default: break;
    }
    if (o == op_recv && (e.flags & IORING_CQE_F_BUFFER)) {
      // The bytes are copied into the connection's buffer (below): the
      // provided buffer goes back at once, whatever became of the connection.
      auto id = static_cast<unsigned>(e.flags >> IORING_CQE_BUFFER_SHIFT);
      if (e.res > 0 && index < conns_.size() && conns_[index]->generation == gen && conns_[index]->sock &&
          conns_[index]->stage != phase::draining) {
        connection& c = *conns_[index];
        auto n = static_cast<std::size_t>(e.res);
        std::memcpy(c.in.space(n), buffers_.buffer(id), n);
        c.in.commit(n);
      }
      buffers_.give_back(id);
    }
    if (index >= conns_.size() || conns_[index]->generation != gen) return;  // cannot happen: slots wait
    auto& c = static_cast<ring_connection&>(*conns_[index]);
    const bool last = !(e.flags & IORING_CQE_F_MORE);
    if (last) --c.inflight;
    switch (o) {
      case op_recv:
        if (last) c.recv_armed = false;
        on_recv(c, e.res, last);
        break;
      case op_send:
        c.send_busy = false;
        on_sent(c, e.res);
        break;
      case op_poll:
        c.send_busy = false;
        on_writable(c, e.res);
        break;
      default: break;
    }
    settle(c);
  }

  void on_control(const completion& e) {
    (void)e;
    if (stopping_) return;
    if (!w_.stopping()) return arm_control();  // USR1: stopping() ran on_reopen_logs
    stop_asked_ = true;
  }

  // A listener is readable: accept as the epoll loop does (accept4, up to
  // accepts_per_wakeup, the cap, EMFILE). Not io_uring's accept: it waits
  // on the listener exclusively, so one worker's request takes every
  // wakeup, even while that worker is busy in a handler (a /sleep, a slow
  // application) and cannot accept; new connections then wait for it
  // while its siblings idle (docs/uring.md).
  void accept_from(std::uint32_t i) {
    accept_more_[i] = false;
    int listener = w_.listeners()[i].get();
    for (std::size_t k = 0; live_ < cap_ && !stopping_; ++k) {
      if (k == accepts_per_wakeup) {
        // Then let the sibling workers have some; the rest after this turn
        // (the poll reports a listener becoming readable, not being so).
        accept_more_[i] = true;
        return;
      }
      sockaddr_storage peer{};
      socklen_t len = sizeof peer;
      int raw = ::accept4(listener, reinterpret_cast<sockaddr*>(&peer), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (raw == -1) {
        if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO) continue;
        if ((errno == EMFILE || errno == ENFILE) && closing_ > 0) {
          // Closes through the ring free descriptors a little later than
          // close(2) would: not a new episode, only wait for them.
          stop_accepting();
          out_of_fds_ = true;
          return;
        }
        if (errno == EMFILE || errno == ENFILE) out_of_descriptors(errno);
        return;
      }
      take(prefork::fd(raw), peer, i);
    }
    if (live_ >= cap_) stop_accepting();
  }

  void take(prefork::fd sock, const sockaddr_storage& peer, std::size_t listener) {
    auto& c = static_cast<ring_connection&>(open(std::move(sock), peer, listener));
    c.inflight = 0;
    c.recv_armed = c.send_busy = c.read_eof = c.eof_pending = c.paused = c.piled_fresh = c.parked = false;
    // The first request is read at once, as the epoll loop does it
    // (TCP_DEFER_ACCEPT: it is usually there already): a worker that
    // accepted two connections must not answer the second only after a
    // slow first one. One recv per connection, not per request.
    char* to = c.in.space(4096);
    ssize_t n = ::recv(c.sock.get(), to, c.in.room(), 0);
    if (n > 0) {
      c.in.commit(static_cast<std::size_t>(n));
      received(c);
    } else if (n == 0) {
      c.read_eof = true;
      return peer_closed(c);
    } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      return close(c);
    }
    // Answered with "Connection: close" already (and nothing to drain):
    // no receive to arm, and none to cancel at the close.
    if (c.sock && !c.read_eof && !(c.close_after && !c.linger)) arm_recv(c);
  }

  void on_recv(ring_connection& c, int res, bool last) {
    if (!c.sock) return;
    if (res > 0) {
      if (c.stage == phase::draining) {
        // Discarded (above).
      } else if (c.send_busy) {
        // An answer is on its way out of c.out: the new input waits for it,
        // as the epoll loop leaves it in the socket meanwhile.
        if (c.in.size() == static_cast<std::size_t>(res) && c.stage == phase::head) c.piled_fresh = true;
        if (c.in.size() > pile_limit && c.recv_armed && !c.paused) pause(c);
      } else {
        if (c.idle) c.piled_fresh = false;
        received(c);
      }
    } else if (res == 0) {
      c.read_eof = true;
      if (c.stage == phase::draining) return close(c);
      if (c.send_busy)
        c.eof_pending = true;
      else
        peer_closed(c);
      return;
    } else if (res == -ENOBUFS) {
      // More receives completed in one turn than there are buffers: each
      // was copied and given back, so re-arming is all there is to do. Said
      // once: many such turns cost re-arms, and more buffers would help.
      if (!std::exchange(buffers_ran_out_, true))
        error_line("-m uring: the " + std::to_string(buffer_count_) +
                   " provided receive buffers ran out (ENOBUFS); receiving re-armed " +
                   "(PREFORK_HTTPD_URING_BUFFERS sets their number)");
    } else if (res != -ECANCELED && res != -EINTR && res != -EAGAIN) {
      return close(c);  // reset, or the like
    }
    // The multishot receive ended (the provided buffers ran out, or it was
    // cancelled to pause, or the kernel ended it): again, unless paused.
    if (last && c.sock && !c.recv_armed && !c.paused && !c.read_eof) arm_recv(c);
  }

  void on_sent(ring_connection& c, int res) {
    if (!c.sock) return;
    if (res < 0) {
      if (res == -EINTR || res == -EAGAIN) return after_output(c);  // flush sends again
      return close(c);
    }
    c.out_sent += static_cast<std::size_t>(res);
    // A short send: the socket buffer is full, the client reads slowly.
    if (c.out_sent < c.out.size()) set_deadline(c, timer::send, srv_.opts.timeout / 2);
    after_output(c);
  }

  void on_writable(ring_connection& c, int res) {
    if (!c.sock) return;
    if (res < 0 && res != -EINTR && res != -EAGAIN) return close(c);
    after_output(c);
  }

  // A send or poll is done: send on, and once everything went out, what
  // waited behind it (input, the client's EOF, a paused receive).
  void after_output(ring_connection& c) {
    if (!flush(c)) return;
    if (c.paused) {
      c.paused = false;
      if (!c.recv_armed && !c.read_eof) arm_recv(c);
    }
    if (!c.in.empty()) {
      if (std::exchange(c.piled_fresh, false) && c.stage == phase::head) begin_request(c);
      drive(c);
    }
    if (c.sock && c.eof_pending && !c.send_busy) {
      c.eof_pending = false;
      peer_closed(c);
    }
  }

  // Output ------------------------------------------------------------------

  bool flush(connection& base) override {
    auto& c = static_cast<ring_connection&>(base);
    if (c.send_busy) return false;  // its completion sends on
    for (;;) {
      if (c.out_sent < c.out.size()) {
        queue_send(c);
        return false;
      }
      // Files: sendfile(2) straight away (the page cache does not block),
      // and a poll through the ring when the socket is full.
      switch (send_file(c)) {
        case file_sent::all: break;
        case file_sent::socket_full: queue_poll(c); return false;
        case file_sent::broken: close(c); return false;  // the client sees the body cut short
      }
      if (!c.generate) break;
      // A generated body: the next piece once the last one is sent, so it
      // is made only as fast as the client takes it.
      c.out.clear();
      c.out_sent = 0;
      if (!next_piece(c)) {
        close(c);  // the body cannot be ended well: the client sees it cut short
        return false;
      }
    }
    return output_done(c);
  }

  void queue_send(ring_connection& c) {
    io_uring_sqe* s = sqe();
    io_uring_prep_send(s, c.sock.get(), c.out.data() + c.out_sent, c.out.size() - c.out_sent,
                       MSG_NOSIGNAL | (c.file_left ? MSG_MORE : 0));
    s->user_data = tag(op_send, c.index, c.generation);
    c.send_busy = true;
    ++c.inflight;
    ++sends_;
  }

  // Submits and waits. A send to a socket with room completes as it is
  // submitted, and its completion alone would end the wait: the loop would
  // turn once for the sends and once more for the next requests. Where the
  // kernel has IORING_FEAT_MIN_TIMEOUT (6.12), the wait is for the sends'
  // completions and one event more, but for min_wait at most once anything
  // is there: one system call per turn, and a send that must wait for
  // room delays nothing.
  int submit_and_wait(__kernel_timespec& ts) {
    const unsigned sends = std::exchange(sends_, 0);
    if (!(ring_.features & feat_min_timeout) || sends == 0 || min_wait_us_ == 0) {
      io_uring_cqe* first = nullptr;
      return io_uring_submit_and_wait_timeout(&ring_, &first, 1, &ts, nullptr);
    }
    // What io_uring_submit does, with the argument liburing 2.3 cannot pass.
    io_uring_sq& sq = ring_.sq;
    const unsigned tail = sq.sqe_tail;
    if (sq.sqe_head != tail) {
      sq.sqe_head = tail;
      io_uring_smp_store_release(sq.ktail, tail);
    }
    const unsigned to_submit = tail - io_uring_smp_load_acquire(sq.khead);
    io_uring_getevents_arg arg{};
    arg.sigmask_sz = _NSIG / 8;
    arg.pad = min_wait_us_;  // min_wait_usec in kernels that have it
    arg.ts = reinterpret_cast<std::uint64_t>(&ts);
    // The ring's descriptor registered (io_uring_register_ring_fd): no file
    // lookup per call. liburing 2.3 marks it with bit 0 of int_flags.
    const bool registered = ring_.int_flags & 1;
    long r = ::syscall(
        __NR_io_uring_enter, registered ? ring_.enter_ring_fd : ring_.ring_fd, to_submit, sends + 1,
        IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG | (registered ? IORING_ENTER_REGISTERED_RING : 0), &arg,
        sizeof arg);
    return r < 0 ? -errno : static_cast<int>(r);
  }

  void queue_poll(ring_connection& c) {
    io_uring_sqe* s = sqe();
    io_uring_prep_poll_add(s, c.sock.get(), POLLOUT);
    s->user_data = tag(op_poll, c.index, c.generation);
    c.send_busy = true;
    ++c.inflight;
    set_deadline(c, timer::send, srv_.opts.timeout / 2);
  }

  // Connections -----------------------------------------------------------

  std::unique_ptr<connection> make_connection(const limits& lim) override {
    return std::make_unique<ring_connection>(lim);
  }

  void arm_recv(ring_connection& c) {
    io_uring_sqe* s = sqe();
    io_uring_prep_recv_multishot(s, c.sock.get(), nullptr, 0, 0);
    s->flags |= IOSQE_BUFFER_SELECT;
    s->buf_group = buffers_.group();
    s->user_data = tag(op_recv, c.index, c.generation);
    c.recv_armed = true;
    ++c.inflight;
  }

  // Enough input waits behind an answer the client does not read: stop
  // receiving until the answer is out.
  void pause(ring_connection& c) {
    c.paused = true;
    io_uring_sqe* s = sqe();
    io_uring_prep_cancel64(s, tag(op_recv, c.index, c.generation), 0);
    s->user_data = tag(op_ignore, 0);
  }

  void close(connection& base) override {
    auto& c = static_cast<ring_connection&>(base);
    if (!c.sock) return;
    const int fd = c.sock.release();
    // Closing the descriptor would not end a multishot receive or a send
    // waiting for room: cancel what is in flight on it first, then close,
    // both in the next submission (a hard link: the close happens even when
    // there was nothing to cancel).
    if (c.inflight > 0) {
      io_uring_sqe* s = sqe();
      io_uring_prep_cancel_fd(s, fd, IORING_ASYNC_CANCEL_ALL);
      s->flags |= IOSQE_IO_HARDLINK;
      s->user_data = tag(op_ignore, 0);
    }
    io_uring_sqe* s = sqe();
    io_uring_prep_close(s, fd);
    s->user_data = tag(op_closed, 0);
    ++closing_;
    c.eof_pending = c.paused = c.piled_fresh = false;
    // The slot waits for its operations' last completions: a completion
    // must never find another connection in it.
    c.parked = c.inflight > 0;
    release(c, c.parked);
  }

  // A closed connection's slot is free once nothing of it is in flight.
  void settle(ring_connection& c) {
    if (c.parked && c.inflight == 0 && !c.sock) {
      c.parked = false;
      recycle(c);
    }
  }

  bool input_pending(connection& c) override {
    char b;
    return ::recv(c.sock.get(), &b, 1, MSG_PEEK | MSG_DONTWAIT) > 0;
  }

  void arm_accept(std::size_t i) {
    io_uring_sqe* s = sqe();
    io_uring_prep_poll_multishot(s, w_.listeners()[i].get(), POLLIN);
    s->user_data = tag(op_listener, static_cast<std::uint32_t>(i));
    accept_armed_[i] = true;
  }

  void start_accepting() override {
    listening_ = true;
    for (std::size_t i = 0; i < accept_armed_.size(); ++i)
      if (!accept_armed_[i]) arm_accept(i);
  }

  void stop_accepting() override {
    if (!listening_) return;
    listening_ = false;
    for (std::size_t i = 0; i < accept_armed_.size(); ++i) {
      if (!accept_armed_[i]) continue;
      io_uring_sqe* s = sqe();
      io_uring_prep_cancel64(s, tag(op_listener, static_cast<std::uint32_t>(i)), 0);
      s->user_data = tag(op_ignore, 0);
    }
  }

  void arm_control() {
    io_uring_sqe* s = sqe();
    io_uring_prep_poll_add(s, w_.stop_fd(), POLLIN);
    s->user_data = tag(op_control, 0);
  }

  // A submission entry; when the queue is full, what is in it goes first.
  io_uring_sqe* sqe() {
    io_uring_sqe* s = io_uring_get_sqe(&ring_);
    while (!s) {
      int r = io_uring_submit(&ring_);
      if (r < 0 && r != -EINTR && r != -EBUSY && r != -EAGAIN)
        throw std::system_error(-r, std::generic_category(), "io_uring_submit");
      s = io_uring_get_sqe(&ring_);
    }
    return s;
  }

  io_uring& ring_;
  buffer_ring buffers_;
  std::vector<bool> accept_armed_;
  std::vector<bool> accept_more_;  // stopped at accepts_per_wakeup: more after this turn
  bool stop_asked_ = false;
  unsigned sends_ = 0;  // sends queued this turn
  unsigned buffer_count_ = 0;
  bool buffers_ran_out_ = false;              // ENOBUFS was said
  unsigned min_wait_us_ = min_wait_wanted();  // 0: a turn's wait ends at its sends' completions
  std::size_t closing_ = 0;                   // closes submitted through the ring, not yet done
  bool out_of_fds_ = false;                   // accept4 said EMFILE while closes were pending
};

// The ring for the loop: task work run only when the loop waits
// (DEFER_TASKRUN, Linux 6.1), else at least not interrupting it
// (COOP_TASKRUN, 5.19), else plain.
int setup_ring(io_uring& ring) {
  const unsigned tries[] = {IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_SUBMIT_ALL,
                            IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SUBMIT_ALL, 0};
  int r = -EINVAL;
  for (unsigned flags : tries) {
    io_uring_params p{};
    p.flags = flags | IORING_SETUP_CQSIZE;
    p.cq_entries = 8192;
    r = io_uring_queue_init_params(1024, &ring, &p);
    if (r == 0) return 0;
    if (r != -EINVAL) return r;
  }
  return r;
}

unsigned buffers_wanted() {
  // PREFORK_HTTPD_URING_BUFFERS: the provided buffers' count (a power of
  // two), for tests that run them out.
  if (const char* e = std::getenv("PREFORK_HTTPD_URING_BUFFERS"); e && *e) {
    unsigned long v = std::strtoul(e, nullptr, 10);
    if (v >= 1 && v <= 32768 && (v & (v - 1)) == 0) return static_cast<unsigned>(v);
  }
  return default_buffers;
}

}  // namespace

void run_uring(server& srv, prefork::worker& w) {
  io_uring ring{};
  if (int r = setup_ring(ring); r < 0) {
    // The master's probe passed, this process's setup did not (it runs as
    // --user, say, and kernel.io_uring_disabled is 1): serve all the same.
    log_line("-m uring: " + describe("io_uring_setup", r) +
             " in the worker: running the evented loop instead");
    return run_evented(srv, w);
  }
  ring_guard guard{&ring};
  io_uring_register_ring_fd(&ring);  // where the kernel can (5.18): a lookup less per io_uring_enter
  loop l(srv, w, ring, buffers_wanted());
  l.run();
}

}  // namespace httpd
