// httpd/evented_worker.cpp: the epoll loop (see evented_worker.hpp); the
// protocol it drives is connection.hpp's.
#include "evented_worker.hpp"

#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include <prefork/error.hpp>
#include <prefork/worker.hpp>

#include "connection.hpp"

namespace httpd {
namespace {

constexpr std::uint32_t control_tag = 0xffffffffu;
constexpr std::uint32_t listener_tag = 0xfffff000u;  // + listener index
constexpr std::size_t accepts_per_wakeup = 32;       // then let the sibling workers have some

struct epoll_connection : connection {
  using connection::connection;
  bool want_out = false;  // EPOLLOUT is what epoll watches
};

class loop final : public http_engine {
 public:
  loop(server& srv, prefork::worker& w) : http_engine(srv, w) {
    ep_.reset(::epoll_create1(EPOLL_CLOEXEC));
    if (!ep_) prefork::throw_system_error("epoll_create1");
    start_accepting();
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = control_tag;
    if (::epoll_ctl(ep_.get(), EPOLL_CTL_ADD, w.stop_fd(), &ev) == -1)
      prefork::throw_system_error("epoll_ctl ADD control pipe");
  }

  void run() {
    std::vector<epoll_event> events(256);
    w_.tick();  // ready
    for (;;) {
      steady::time_point now = coarse_now();
      if (stop_done(now)) return;
      auto ms = std::chrono::ceil<std::chrono::milliseconds>(wake_by(now) - now).count();
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
    if (tag >= conns_.size() || conns_[tag]->generation != gen || !conns_[tag]->sock)
      return;  // closed earlier in this batch
    auto& c = static_cast<epoll_connection&>(*conns_[tag]);
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
        // Level-triggered epoll would spin on a listener it cannot accept from.
        if (errno == EMFILE || errno == ENFILE) out_of_descriptors(errno);
        return;
      }
      auto& c = static_cast<epoll_connection&>(open(prefork::fd(raw), peer, i));
      c.want_out = false;
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.u64 = (static_cast<std::uint64_t>(c.generation) << 32) | c.index;
      if (::epoll_ctl(ep_.get(), EPOLL_CTL_ADD, c.sock.get(), &ev) == -1)
        prefork::throw_system_error("epoll_ctl ADD connection");
      on_readable(c);  // TCP_DEFER_ACCEPT: the request is usually there already
    }
    if (live_ >= cap_) stop_accepting();
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
    if (n == 0) return peer_closed(c);
    c.in.commit(static_cast<std::size_t>(n));
    received(c);
  }

  // Output ------------------------------------------------------------------

  bool flush(connection& base) override {
    auto& c = static_cast<epoll_connection&>(base);
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
      switch (send_file(c)) {
        case file_sent::all: break;
        case file_sent::socket_full: return wait_writable(c);
        case file_sent::broken: close(c); return false;  // the client sees the body cut short
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
    if (c.want_out) watch(c, EPOLLIN);
    return output_done(c);
  }

  bool wait_writable(epoll_connection& c) {
    if (!c.want_out) watch(c, EPOLLOUT);
    set_deadline(c, timer::send, srv_.opts.timeout / 2);
    return false;
  }

  // Connections -----------------------------------------------------------

  std::unique_ptr<connection> make_connection(const limits& lim) override {
    return std::make_unique<epoll_connection>(lim);
  }

  void watch(epoll_connection& c, std::uint32_t what) {
    epoll_event ev{};
    ev.events = what;
    ev.data.u64 = (static_cast<std::uint64_t>(c.generation) << 32) | c.index;
    ::epoll_ctl(ep_.get(), EPOLL_CTL_MOD, c.sock.get(), &ev);
    c.want_out = (what & EPOLLOUT) != 0;
  }

  void close(connection& c) override {
    if (!c.sock) return;
    c.sock.reset();  // close(2) also takes it out of the epoll set
    release(c);
  }

  void start_accepting() override {
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

  void stop_accepting() override {
    // Stopping for good: the stop fd stays readable from now on, and
    // watching it would spin.
    if (stopping_ && !control_removed_) {
      ::epoll_ctl(ep_.get(), EPOLL_CTL_DEL, w_.stop_fd(), nullptr);
      control_removed_ = true;
    }
    if (!listening_) return;
    // EPOLLEXCLUSIVE cannot be modified, only removed and added again.
    for (const prefork::fd& l : w_.listeners()) ::epoll_ctl(ep_.get(), EPOLL_CTL_DEL, l.get(), nullptr);
    listening_ = false;
  }

  prefork::fd ep_;
  bool control_removed_ = false;
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
