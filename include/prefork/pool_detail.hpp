// prefork/pool_detail.hpp: the master's bookkeeping and the small process
// chores around it, kept apart from the master's loop in pool.hpp.
//
// pool_state is everything the master knows about its workers: pids,
// numbers, generations, scoreboard slots, control pipes, crash-loop health,
// the scoreboard itself and the wake-up pipe. It is one struct on purpose:
// an in-place upgrade hands exactly this to the new image, as the text of
// encode_handover(), read back by adopt_handover() (upgrade_handover.hpp).
// How a worker starts is pool_spawn.hpp; how it stops, dies and is reaped,
// pool_exits.hpp. The chores here: the single-thread check before fork
// (/proc/self/status), filling closed standard descriptors with /dev/null,
// ignoring SIGPIPE while the master runs, the controlling-terminal test for
// WINCH, USR1 in the master, a worker's signal dispositions, a fresh
// scoreboard; and service_notifier, what systemd hears beyond READY.
// Stands on open, fcntl, getsockopt, sigaction, sigprocmask, sendto.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <prefork/error.hpp>
#include <prefork/fd.hpp>
#include <prefork/pool_config.hpp>
#include <prefork/process.hpp>
#include <prefork/scoreboard.hpp>
#include <prefork/socket.hpp>
#include <prefork/systemd.hpp>

namespace prefork::detail {

// A worker's part in a refork (refork.hpp).
enum class refork_role : std::uint8_t {
  none,
  chosen,        // to be promoted once its replacement is ready
  promoting,     // sent the promote byte; becoming the mold
  mold,          // the mold: forks, serves nothing
  mold_retired,  // a mold no longer used (a newer mold, HUP): asked to stop
};

struct worker_record {
  pid_t pid = 0;
  unsigned index = 0;
  unsigned generation = 0;
  std::size_t slot = 0;
  fd control;  // write end of the worker's control pipe; closed once QUIT is sent
  std::chrono::steady_clock::time_point spawned{};
  std::chrono::steady_clock::time_point drain_deadline{};  // QUIT sent: SIGKILL after this
  bool ready = false;                                      // seen idle or busy in the scoreboard
  bool retiring = false;  // to be replaced (HUP, recycling), or no longer wanted
  bool quit_sent = false;
  bool term_sent = false;
  bool killed = false;  // SIGKILL sent
  refork_role role = refork_role::none;
  bool via_mold = false;  // forked by the mold; pid 0 until the worker reports it
};

// Crash-loop state of one worker number.
struct respawn_health {
  unsigned fast_deaths = 0;  // deaths within a second of starting, in a row
  std::chrono::steady_clock::time_point not_before{};
};

struct pool_state {
  std::vector<worker_record> workers;
  std::vector<respawn_health> health;  // by worker number
  unsigned generation = 0;
  unsigned wanted = 0;
  std::optional<prefork::scoreboard> board;
  fd wake_read, wake_write;  // workers write a byte here when they become ready or want recycling

  respawn_health& health_of(unsigned index) {
    if (health.size() <= index) health.resize(index + 1);
    return health[index];
  }

  // Ready workers of the current generation (not those being replaced).
  std::size_t ready_count() const {
    return static_cast<std::size_t>(std::count_if(
        workers.begin(), workers.end(), [](const worker_record& r) { return r.ready && !r.retiring; }));
  }

  std::optional<std::size_t> free_slot() const {
    for (std::size_t i = 0; i < board->size(); ++i)
      if (std::none_of(workers.begin(), workers.end(), [&](const worker_record& r) { return r.slot == i; }))
        return i;
    return std::nullopt;
  }

  // No wanted worker number is dying at start over and over (its back-off
  // runs). The count of fast deaths only resets at a later death, so a
  // number whose worker came up ready and stays up is healthy again (else
  // the watchdog pings stop and systemd kills a service that serves), and a
  // number given up with TTOU or WINCH no longer counts.
  bool healthy() const {
    for (std::size_t i = 0; i < health.size() && i < wanted; ++i)
      if (health[i].fast_deaths >= 2 &&
          std::none_of(workers.begin(), workers.end(),
                       [&](const worker_record& r) { return r.index == i && r.ready; }))
        return false;
    return true;
  }
};

template <class Duration>
std::string seconds(Duration d) {
  char buf[32];
  (void)std::snprintf(buf, sizeof buf, "%.2fs", std::chrono::duration<double>(d).count());
  return buf;
}

inline std::string worker_name(const worker_record& r) {
  return "worker " + std::to_string(r.index) + " (pid " + std::to_string(r.pid) + ", generation " +
         std::to_string(r.generation) + ")";
}

// fork(2) copies only the calling thread: a lock another thread held (in
// malloc, in stdio) stays locked forever in the child.
inline void refuse_threads(const char* who) {
  unsigned all = thread_count_now();  // process.hpp, as prefork::fork() counts them
  if (all == 0)
    throw std::runtime_error(std::string(who) + ": cannot read the thread count from /proc/self/status");
  unsigned n = all - sanitizer_thread_count;
  if (n > 1)
    throw std::logic_error(std::string(who) + ": refusing to fork with " + std::to_string(n) +
                           " threads in the master (a lock held by another thread would stay locked in the "
                           "worker); start threads in the workers, after after_fork");
}

inline void check_listener(int sock) {
  int listening = 0;
  socklen_t len = sizeof listening;
  if (::getsockopt(sock, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) == -1 || !listening)
    throw std::invalid_argument("pool_config: listener fd " + std::to_string(sock) +
                                " is not a listening socket");
}

inline std::string describe_listeners(const std::vector<fd>& listeners) {
  std::string out;
  for (const fd& l : listeners) {
    if (!out.empty()) out += ", ";
    try {
      out += local_address(l.get());
    } catch (const std::exception&) {
      out += "fd " + std::to_string(l.get());
    }
  }
  return out;
}

// A master started with stderr (or stdin, stdout) closed would hand that
// number to its next pipe or socket, and the log would write into it.
inline void occupy_std_fds() {
  for (int n = 0; n <= 2; ++n) {
    if (::fcntl(n, F_GETFD) != -1 || errno != EBADF) continue;
    int null = ::open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null == -1) throw_system_error("open /dev/null");
    if (null != n) ::close(null);  // a lower number was free meanwhile: impossible single-threaded
  }
}

inline bool has_controlling_terminal() noexcept {
  int tty = ::open("/dev/tty", O_RDONLY | O_NOCTTY | O_CLOEXEC);
  if (tty == -1) return false;  // ENXIO: no controlling terminal
  ::close(tty);
  return true;
}

// Reads whatever is waiting on a non-blocking pipe.
inline void drain(int pipe_read) noexcept {
  char buf[256];
  while (read_some(pipe_read, buf, sizeof buf).bytes > 0) {
  }
}

// SIG_IGN for SIGPIPE while the master runs, then what was there before.
class ignored_sigpipe {
 public:
  ignored_sigpipe() {
    struct sigaction ign {};
    ign.sa_handler = SIG_IGN;
    if (::sigaction(SIGPIPE, &ign, &old_) == -1) throw_system_error("sigaction SIGPIPE");
  }
  ~ignored_sigpipe() { ::sigaction(SIGPIPE, &old_, nullptr); }
  ignored_sigpipe(const ignored_sigpipe&) = delete;
  ignored_sigpipe& operator=(const ignored_sigpipe&) = delete;

 private:
  struct sigaction old_ {};
};

// A worker's dispositions, set while every signal is still blocked (the
// master forks with all blocked) and only then unblocked, so a signal sent
// to the process group meanwhile meets the right disposition. QUIT and USR1
// come through the control pipe, so the signals are ignored (a terminal's
// ^\ reaches the whole group; the master relays it); the rest of the
// master's signals mean nothing to a worker. SIGPIPE is ignored so a client
// gone mid-write is EPIPE, not a dead worker. TERM and INT keep their
// default: exit at once.
inline void worker_signals() noexcept {
  struct sigaction act {};
  sigemptyset(&act.sa_mask);
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sig == SIGKILL || sig == SIGSTOP) continue;
    bool ignore = sig == SIGPIPE || sig == SIGQUIT || sig == SIGUSR1 || sig == SIGUSR2 || sig == SIGHUP ||
                  sig == SIGWINCH || sig == SIGTTIN || sig == SIGTTOU;
    act.sa_handler = ignore ? SIG_IGN : SIG_DFL;
    ::sigaction(sig, &act, nullptr);
  }
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
}

// A new scoreboard for the master: at the first start, after a fork_exec
// upgrade (`carried`: the previous master's counters), or after an in-place
// upgrade from an image whose scoreboard has another layout. That image's
// workers, adopted, still tick in its memfd, not here: their slots show them
// as of now (so no heartbeat timeout before the new generation replaces
// them as HUP does, which is within upgrade_timeout unless it fails).
inline void fresh_board(pool_state& s, std::size_t max_workers, const std::optional<master_totals>& carried) {
  std::size_t slots = max_workers;
  for (const worker_record& r : s.workers) slots = std::max(slots, r.slot + 1);
  s.board.emplace(slots);
  if (carried) s.board->carry_counters(*carried);
  const std::int64_t now_ns = monotonic_ns();
  for (const worker_record& r : s.workers) {
    slot_cells& c = s.board->cells(r.slot);
    c.pid.store(r.pid);
    c.index.store(r.index);
    c.generation.store(r.generation);
    c.started_ns.store(now_ns);
    c.last_tick_ns.store(now_ns);
    c.state.store(static_cast<std::int32_t>(r.ready ? worker_state::idle : worker_state::booting));
  }
}

// USR1 in the master: its own hook, then the USR1 byte to every worker.
inline void reopen_logs(const pool_config& config, const pool_state& s) {
  log_event(config, "received SIGUSR1: reopening logs in the master and " + std::to_string(s.workers.size()) +
                        " workers");
  if (config.on_reopen_logs) {
    try {
      config.on_reopen_logs();
    } catch (const std::exception& e) {
      log_event(config, std::string("on_reopen_logs failed in the master: ") + e.what());
    }
  }
  char b = static_cast<char>(SIGUSR1);
  for (const worker_record& r : s.workers)  // a mold reads only orders on its channel, and logs little
    if (r.control && (r.role == refork_role::none || r.role == refork_role::chosen))
      write_some(r.control.get(), &b, 1);  // full or broken: the worker is busy or gone
}

// notify() with bounded patience: the master's loop must not stall behind
// a service manager that does not read (a datagram queue holds only
// net.unix.max_dgram_qlen messages, 10 on a bare kernel). False: dropped.
inline bool notify_service(std::string_view what, std::chrono::milliseconds patience) noexcept {
  std::error_code ec;
  return notify(what, ec, patience);
}

// What the master tells systemd besides READY, RELOADING and STOPPING: a
// STATUS line whenever the worker counts change, WATCHDOG=1 every half
// WATCHDOG_USEC while the workers are healthy, and EXTEND_TIMEOUT_USEC
// while a graceful drain may outlast systemd's stop timeout. Without
// NOTIFY_SOCKET each call costs one getenv.
class service_notifier {
 public:
  using clock = std::chrono::steady_clock;

  // Reads WATCHDOG_USEC; returns what was wrong with it, or "".
  std::string start() {
    try {
      if (std::optional<std::chrono::microseconds> every = watchdog_interval()) watchdog_ = *every / 2;
    } catch (const std::exception& e) {
      return std::string(e.what()) + "; no watchdog pings";
    }
    return "";
  }

  // After a fork_exec hand-over the new master speaks for the service; a
  // STATUS, a watchdog ping or a timeout from the retiring one would lie.
  void mute() noexcept { muted_ = true; }

  // Each round of the master's loop. Returns when to come back.
  clock::time_point tick(clock::time_point now, const pool_state& s, bool stopping) {
    if (muted_) return clock::time_point::max();
    std::string status = stopping ? "stopping, " + std::to_string(s.workers.size()) + " workers left"
                                  : std::to_string(s.ready_count()) + " of " + std::to_string(s.wanted) +
                                        " workers ready, generation " + std::to_string(s.generation);
    const bool healthy = s.healthy();
    if (status != status_) {
      status_ = status;
      send("STATUS=" + status);
    }
    if (watchdog_.count() == 0) return clock::time_point::max();
    if (healthy && now >= next_ping_) {
      send("WATCHDOG=1");
      next_ping_ = now + watchdog_;
    }
    return healthy ? next_ping_ : clock::time_point::max();
  }

  // While a graceful stop drains workers until `until` (then SIGKILL): the
  // time left, with a margin for the kill and the reaping, renewed every
  // few seconds so systemd never gives up first.
  clock::time_point draining(clock::time_point now, clock::time_point until) {
    if (muted_) return clock::time_point::max();
    if (now < next_extend_) return next_extend_;
    auto left = std::chrono::duration_cast<std::chrono::microseconds>(until - now) + std::chrono::seconds(5);
    send("EXTEND_TIMEOUT_USEC=" + std::to_string(left.count()));
    next_extend_ = now + std::chrono::seconds(3);
    return next_extend_;
  }

  static void send(std::string_view what) noexcept { notify_service(what, std::chrono::milliseconds(0)); }

 private:
  std::string status_;
  std::chrono::microseconds watchdog_{0};
  clock::time_point next_ping_{}, next_extend_{};
  bool muted_ = false;
};

}  // namespace prefork::detail
