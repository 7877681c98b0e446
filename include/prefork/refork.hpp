// prefork/refork.hpp: refork, new workers forked from a warmed-up worker
// (the mold) instead of from the cold master, and the bookkeeping that keeps
// them the master's own.
//
// Workers warm up lazily (tables built on first use, parsed templates,
// allocator arenas): forked from the master, each warms its own copy, and
// the pages the master shared with them copy-on-write are of no help. With
// pool_config::refork_after, once a worker of the current generation has
// served that many requests the master chooses it: a replacement starts
// first (so fewer than the configured workers never serve), then the master
// sends it the promote byte on its control channel, its work function
// returns as for a graceful stop (it never accepts again), after_promotion
// runs, and it becomes the mold: it serves no request, only forks. The
// master then starts a generation, and replaces every worker, one at a
// time, with one forked from the mold, which shares its warm pages.
//
// The master stays every worker's parent in all but name: it is a child
// subreaper (PR_SET_CHILD_SUBREAPER), the mold forks a short-lived child
// that forks the worker and exits at once, so the worker is re-parented to
// the master. The master chose the worker's scoreboard slot and sent its
// control channel (SCM_RIGHTS) with the order; the worker, once re-parented,
// writes its pid into that slot and wakes the master, which from then on
// reaps, times out and signals it as any other. A worker whose pid never
// arrives is given up at `timeout` (its control channel closed, which stops
// it should it exist; the mold, hung, is killed), and a child the master
// did not know is reaped all the same (waitpid(-1), as a subreaper must)
// and matched against the slots it was promised. A mold that dies or hangs
// (it ticks its heartbeat like a worker) is replaced from the master: new
// workers are forked from the master until the next promotion.
//
// Stands on prctl, fork, waitpid, poll, sendmsg/recvmsg (fd_passing.hpp),
// getrandom and /proc/self/statm.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <prefork/error.hpp>
#include <prefork/fd.hpp>
#include <prefork/fd_passing.hpp>
#include <prefork/pool_config.hpp>
#include <prefork/pool_detail.hpp>
#include <prefork/pool_exits.hpp>
#include <prefork/process.hpp>
#include <prefork/scoreboard.hpp>
#include <prefork/signal.hpp>
#include <prefork/worker.hpp>

namespace prefork {

// 64 random bits from the kernel (getrandom), for reseeding a generator in
// after_fork: a forked worker inherits its parent's generator state, so two
// workers forked from one mold would draw the same "random" numbers.
inline std::uint64_t fresh_seed() {
  std::uint64_t seed = 0;
  auto* p = reinterpret_cast<unsigned char*>(&seed);
  std::size_t got = 0;
  while (got < sizeof seed) {
    ssize_t n = ::getrandom(p + got, sizeof seed - got, 0);
    if (n == -1 && errno == EINTR) continue;
    if (n == -1) throw_system_error("getrandom 8 bytes");
    got += static_cast<std::size_t>(n);
  }
  return seed;
}

namespace detail {

// This process's resident set in bytes, as the worker's max_rss check reads
// it (/proc/self/statm); 0 if unreadable.
inline std::uint64_t resident_bytes() noexcept {
  fd statm(::open("/proc/self/statm", O_RDONLY | O_CLOEXEC));
  if (!statm) return 0;
  char buf[128];
  ssize_t r = ::pread(statm.get(), buf, sizeof buf - 1, 0);
  if (r <= 0) return 0;
  buf[r] = '\0';
  // "size resident shared ...", in pages.
  char* end = nullptr;
  (void)std::strtoul(buf, &end, 10);
  if (end == buf || *end != ' ') return 0;
  char* start = end + 1;
  unsigned long resident = std::strtoul(start, &end, 10);
  if (end == start) return 0;
  return static_cast<std::uint64_t>(resident) * static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
}

// What a mold hands back in the worker it forked: the slot and the control
// channel the master chose for it.
struct mold_order {
  std::size_t slot = 0;
  fd control;
};

// The mold's loop, in a promoted worker whose work function returned.
// Returns only in a worker it forked; the mold itself exits in here, on
// anything but an order (the master's QUIT, end of file: the master is gone).
inline mold_order run_mold(const pool_config& config, const scoreboard& board, std::size_t slot, fd channel,
                           int wake_fd, pid_t master) {
  slot_cells& me = board.cells(slot);
  const std::string name = "mold (pid " + std::to_string(::getpid()) + ", worker " +
                           std::to_string(me.index.load()) + " of generation " +
                           std::to_string(me.generation.load()) + ")";
  auto tick = [&] { me.last_tick_ns.store(coarse_monotonic_ns(), std::memory_order_relaxed); };
  auto wake = [wake_fd] {
    char b = 'm';
    [[maybe_unused]] ssize_t r = ::write(wake_fd, &b, 1);
  };
  auto leave = [&](int code, const std::string& why) {
    log_event(config, name + ": " + why);
    (void)std::fflush(nullptr);
    ::_exit(code);
  };
  // A forked worker starts with the mold's resident pages (fork copies the
  // page tables): from a mold above max_rss, every worker would be replaced
  // at its first check, and its replacement too, without end.
  if (config.max_rss != 0)
    if (std::uint64_t rss = resident_bytes(); rss > config.max_rss)
      leave(1, "resident " + std::to_string(rss) + " bytes, above max_rss (" +
                   std::to_string(config.max_rss) +
                   "): every worker forked from it would be too; not becoming the mold");
  tick();
  me.state.store(static_cast<std::int32_t>(worker_state::mold), std::memory_order_release);
  wake();
  auto quarter = config.timeout.count() / 4;
  const int tick_ms = static_cast<int>(std::clamp<long long>(quarter, 10, 60000));
  for (;;) {
    tick();
    pollfd p{channel.get(), POLLIN, 0};
    int ready = PREFORK_SYSCALL(poll)(&p, 1, tick_ms);
    if (ready == -1 && errno != EINTR) leave(1, std::string("poll: ") + std::strerror(errno));
    if (ready <= 0) continue;
    std::string text;
    std::vector<fd> got;
    try {
      got = recv_fds(channel.get(), 1, &text);
    } catch (const std::exception&) {
      leave(0, "stopping (the master said QUIT or is gone)");
    }
    if (got.size() != 1 || text.rfind("slot ", 0) != 0) leave(1, "malformed order \"" + text + "\"");
    mold_order order{std::stoul(text.substr(5)), std::move(got[0])};
    if (order.slot >= board.size()) leave(1, "order for slot " + text + " past the scoreboard");
    // fork copies only this thread: a lock another one holds stays locked.
    unsigned threads = thread_count_now();
    if (threads > 1 + sanitizer_thread_count)
      leave(1, "cannot fork with " + std::to_string(threads - sanitizer_thread_count) +
                   " threads (stop them before the work function returns; start them in after_fork)");
    (void)std::fflush(nullptr);
    pid_t middle = 0;
    {
      blocked_signals blocked;  // the short-lived child runs none of our handlers
      middle = ::fork();
      if (middle == 0) {
        // The short-lived child: only async-signal-safe calls until _exit.
        pid_t worker = ::fork();
        if (worker != 0) ::_exit(worker == -1 ? 1 : 0);
        // The worker. Its parent exits at once; until the kernel has
        // re-parented it to the master (the subreaper), the master could
        // not wait for it, so it tells its pid only then.
        for (int i = 0; i < 20000 && ::getppid() != master; ++i) {
          timespec pause{0, 100000};
          ::nanosleep(&pause, nullptr);
        }
        if (::getppid() != master) ::_exit(1);  // the master is gone: nobody would supervise us
        channel.reset();
        board.cells(order.slot).pid.store(::getpid(), std::memory_order_release);
        wake();
        return order;
      }
    }
    order.control.reset();
    if (middle == -1) leave(1, std::string("fork: ") + std::strerror(errno));
    int status = 0;
    (void)retry([&] { return ::waitpid(middle, &status, 0); });
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) leave(1, "fork of a new worker failed");
  }
}

// A worker process's life, from the master's fork to its _exit: serve;
// promoted, be the mold; in a worker the mold forked, serve again, with the
// slot and control channel the master chose for it.
class worker_life {
 public:
  [[noreturn]] static void run(const pool_config& config, const std::vector<fd>& listeners,
                               const scoreboard& board, std::size_t slot, unsigned index, fd control,
                               int wake_fd, const std::function<void(worker&)>& work, pid_t master) {
    int code = 0;
    try {
      for (;;) {
        slot_cells& c = board.cells(slot);
        c.pid.store(::getpid());
        fd channel;
        {
          worker w(worker::setup{&config, &listeners, &board, slot, index, c.generation.load(),
                                 std::move(control), wake_fd});
          if (config.after_fork) config.after_fork(w);
          work(w);
          if (!w.promoted_ || w.quit_) break;
          if (config.after_promotion) config.after_promotion(w);
          channel = std::move(w.control_);
        }
        mold_order next = run_mold(config, board, slot, std::move(channel), wake_fd, master);
        worker_signals();  // the mold forked with every signal blocked
        slot = next.slot;
        control = std::move(next.control);
        index = board.cells(slot).index.load();
      }
    } catch (const std::exception& e) {
      log_event(config,
                "worker " + std::to_string(index) + " (pid " + std::to_string(::getpid()) + "): " + e.what());
      code = 1;
    } catch (...) {
      code = 1;
    }
    (void)std::fflush(nullptr);
    ::_exit(code);
  }
};

// The master's side: when to promote, which mold serves the current
// generation, and the workers it forked whose pid has not arrived yet.
class reforker {
 public:
  using clock = std::chrono::steady_clock;

  bool on() const noexcept { return on_; }

  void configure(const pool_config& config) {
    on_ = config.refork || !config.refork_after.empty();
    if (on_ && config.reuseport)
      throw std::invalid_argument(
          "pool_config: refork does not work with reuseport yet (a mold holds one "
          "slot's sockets only)");
  }

  // Before the first fork: orphans of our descendants, the mold's workers
  // first of all, become our children.
  void start() const {
    if (on_ && ::prctl(PR_SET_CHILD_SUBREAPER, 1) == -1) throw_system_error("prctl PR_SET_CHILD_SUBREAPER 1");
  }

  // SIGURG or master::refork(): promote the busiest ready worker soon.
  void request(const pool_config& config) {
    if (!on_)
      return log_event(config,
                       "refork asked for: ignored, refork is off (pool_config::refork, refork_after)");
    manual_ = true;
    log_event(config, "refork asked for: promoting a worker to mold");
  }

  // HUP: the new configuration is forked from the master, and the cycle of
  // refork_after starts over. The mold goes.
  void on_reload(pool_state& s, const pool_config& config, clock::time_point now) {
    stage_ = 0;
    manual_ = timing_ = false;
    for (worker_record& r : s.workers) {
      if (r.role == refork_role::mold) send_quit(r, now, config.graceful_timeout);
      r.role = r.role == refork_role::mold ? refork_role::mold_retired : refork_role::none;
    }
    mold_generation_ = 0;
  }

  // The mold that serves the current generation, ready for orders.
  worker_record* mold(pool_state& s) const {
    if (mold_generation_ != s.generation) return nullptr;
    for (worker_record& r : s.workers)
      if (r.role == refork_role::mold && !r.quit_sent && !r.killed && r.pid != 0) return &r;
    return nullptr;
  }

  // One worker at a time from the mold: the next only once the last is ready.
  bool one_booting(const pool_state& s) const {
    return std::any_of(s.workers.begin(), s.workers.end(),
                       [](const worker_record& r) { return r.via_mold && !r.ready && !r.killed; });
  }

  // Sends the order; the caller has filled the slot's cells.
  void order(worker_record& mold, std::size_t slot, int worker_end) {
    send_fds(mold.control.get(), {worker_end}, "slot " + std::to_string(slot));
  }

  // Each round, after the scoreboard is read: pids that arrived, a mold
  // that is ready, a worker to choose. `may_choose`: not stopping, not
  // upgrading, workers wanted.
  void notice(pool_state& s, const pool_config& config, bool may_choose, clock::time_point now) {
    for (worker_record& r : s.workers) {
      slot_cells& c = s.board->cells(r.slot);
      if (r.pid == 0) {
        if (pid_t pid = c.pid.load(std::memory_order_acquire)) {
          r.pid = pid;
          log_event(config, "worker " + std::to_string(r.index) + " (pid " + std::to_string(pid) +
                                ", generation " + std::to_string(r.generation) + ") spawned by the mold");
        }
      }
      if (r.role == refork_role::promoting &&
          c.state.load(std::memory_order_acquire) == static_cast<std::int32_t>(worker_state::mold))
        promoted(s, r, config, now);
    }
    if (timing_ && mold_generation_ == s.generation && s.ready_count() >= s.wanted &&
        std::all_of(s.workers.begin(), s.workers.end(), [&](const worker_record& r) {
          return r.role == refork_role::mold || (r.generation == s.generation && r.ready);
        })) {
      timing_ = false;
      log_event(config, "refork complete: generation " + std::to_string(s.generation) + " of " +
                            std::to_string(s.ready_count()) + " workers forked from the mold, " +
                            seconds(now - chosen_at_) + " after the promotion began");
    }
    if (!may_choose || !on_ || busy(s)) return;
    worker_record* best = nullptr;
    for (worker_record& r : s.workers) {
      if (!r.ready || r.retiring || r.generation != s.generation || r.pid == 0) continue;
      if (best == nullptr || requests(s, r) > requests(s, *best)) best = &r;
    }
    if (best == nullptr) return;
    const bool due = stage_ < config.refork_after.size() && requests(s, *best) >= config.refork_after[stage_];
    if (!due && !manual_) return;
    if (due) ++stage_;
    manual_ = false;
    best->role = refork_role::chosen;
    best->retiring = true;  // a replacement starts first; promoted once it is ready
    chosen_at_ = now;
    log_event(config, "worker " + std::to_string(best->index) + " (pid " + std::to_string(best->pid) +
                          ") served " + std::to_string(requests(s, *best)) +
                          " requests: to be promoted to mold once its replacement is ready");
  }

  // The chosen worker's replacement is ready: stop serving, become the mold.
  void promote(worker_record& r, const pool_config& config, clock::time_point now) {
    r.role = refork_role::promoting;
    r.drain_deadline = now + config.graceful_timeout;  // to finish what it holds and become the mold
    char b = promote_byte;
    [[maybe_unused]] io_result ignored = write_some(r.control.get(), &b, 1);
    log_event(config, "worker " + std::to_string(r.index) + " (pid " + std::to_string(r.pid) +
                          "): promoting to mold");
  }

  // A child the master reaped: true if it was a worker of a pending slot
  // (its pid had not been read yet), whose record now carries the pid.
  bool claim(pool_state& s, pid_t pid) const {
    for (worker_record& r : s.workers)
      if (r.pid == 0 && s.board->cells(r.slot).pid.load(std::memory_order_acquire) == pid) {
        r.pid = pid;
        return true;
      }
    return false;
  }

  // Workers ordered from a mold whose pid never came (`timeout`), or whose
  // mold is gone without forking them: given up. Returns when to look again.
  clock::time_point check(pool_state& s, const pool_config& config, clock::time_point now) {
    clock::time_point next = clock::time_point::max();
    const bool mold_alive = std::any_of(s.workers.begin(), s.workers.end(), [](const worker_record& r) {
      return r.role == refork_role::mold && !r.killed;
    });
    for (worker_record& r : s.workers) {
      if (r.role != refork_role::promoting) continue;
      if (now < r.drain_deadline) {
        next = std::min(next, r.drain_deadline);
        continue;
      }
      log_event(config,
                worker_name(r) + " did not become the mold within graceful_timeout: asking it to stop");
      r.role = refork_role::none;
      send_quit(r, now, config.graceful_timeout);
      next = std::min(next, r.drain_deadline);  // SIGKILL then, as for any drain
    }
    for (auto it = s.workers.begin(); it != s.workers.end();) {
      if (it->pid != 0) {
        ++it;
        continue;
      }
      auto deadline = it->spawned + config.timeout;
      if ((mold_alive || forked(*it)) && now < deadline) {
        next = std::min(next, deadline);
        ++it;
        continue;
      }
      log_event(config, "worker " + std::to_string(it->index) + " ordered from the mold never started" +
                            (mold_alive ? " within timeout: killing the mold" : " (the mold is gone)"));
      if (mold_alive)
        for (worker_record& m : s.workers)
          if (m.role == refork_role::mold && !m.killed && m.pid != 0) {
            m.killed = true;
            ::kill(m.pid, SIGKILL);
          }
      slot_cells& c = s.board->cells(it->slot);
      c.state.store(static_cast<std::int32_t>(worker_state::free), std::memory_order_release);
      it = s.workers.erase(it);  // closes its control channel: such a worker, if any, stops
    }
    return next;
  }

  // A worker record is gone (reaped): what it means for the refork.
  void gone(const worker_record& r, const pool_config& config) {
    if (r.role == refork_role::mold && mold_generation_ != 0 && !r.quit_sent) {
      mold_generation_ = 0;
      log_event(config, "the mold (pid " + std::to_string(r.pid) +
                            ") is gone: new workers are forked from the master until the next promotion");
    } else if (r.role == refork_role::promoting || r.role == refork_role::chosen) {
      log_event(config, "worker " + std::to_string(r.index) + " (pid " + std::to_string(r.pid) +
                            ") died before it became the mold");
    }
  }

 private:
  // Whether a worker ordered from a mold that is gone exists: the worker's
  // end of its channel was held by the mold, its short-lived child and the
  // worker only, and the mold reaps that child before it reads another
  // message. Open: the worker is our child already (re-parented when that
  // child exited) and has yet to write its pid: wait for it, or it would
  // outlive a stopping master. Closed: the mold died before forking it.
  static bool forked(const worker_record& r) {
    pollfd p{r.control.get(), POLLRDHUP, 0};
    if (PREFORK_SYSCALL(poll)(&p, 1, 0) != 1) return true;
    return (p.revents & (POLLHUP | POLLRDHUP | POLLERR | POLLNVAL)) == 0;
  }

  static std::uint64_t requests(const pool_state& s, const worker_record& r) {
    return s.board->cells(r.slot).requests.load(std::memory_order_relaxed);
  }

  // A promotion already under way.
  static bool busy(const pool_state& s) {
    return std::any_of(s.workers.begin(), s.workers.end(), [](const worker_record& r) {
      return r.role == refork_role::chosen || r.role == refork_role::promoting;
    });
  }

  // The promoted worker is the mold: a new generation, forked from it; the
  // previous mold and every worker of older generations are replaced.
  void promoted(pool_state& s, worker_record& r, const pool_config& config, clock::time_point now) {
    for (worker_record& old : s.workers)
      if (old.role == refork_role::mold) {
        send_quit(old, now, config.graceful_timeout);
        old.role = refork_role::mold_retired;
      }
    r.role = refork_role::mold;
    ++s.generation;
    mold_generation_ = s.generation;
    timing_ = true;
    std::size_t replaced = 0;
    for (worker_record& w : s.workers)
      if (&w != &r && !w.retiring) {
        w.retiring = true;
        ++replaced;
      }
    log_event(config, "worker " + std::to_string(r.index) + " (pid " + std::to_string(r.pid) +
                          ") is the mold of generation " + std::to_string(s.generation) + " after " +
                          seconds(now - chosen_at_) + "; replacing " + std::to_string(replaced) +
                          " workers with workers forked from it, one at a time");
  }

  bool on_ = false;
  bool manual_ = false;
  bool timing_ = false;           // a generation is being forked from the mold: log when it is complete
  std::size_t stage_ = 0;         // the next refork_after count
  unsigned mold_generation_ = 0;  // the generation the mold forks; 0: none
  clock::time_point chosen_at_{};
};

}  // namespace detail
}  // namespace prefork
