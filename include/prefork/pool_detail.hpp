// prefork/pool_detail.hpp: the master's bookkeeping and the small process
// chores around it, kept apart from the master's loop in pool.hpp.
//
// pool_state is everything the master knows about its workers: pids,
// numbers, generations, scoreboard slots, control pipes, crash-loop health,
// the scoreboard itself and the wake-up pipe. It is one struct on purpose:
// an in-place upgrade hands exactly this to the new image. The chores: the
// single-thread check before fork (/proc/self/status), filling closed
// standard descriptors with /dev/null, ignoring SIGPIPE while the master
// runs, the controlling-terminal test for WINCH, and a worker's signal
// dispositions. Stands on open, fcntl, getsockopt, sigaction, sigprocmask.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <prefork/error.hpp>
#include <prefork/fd.hpp>
#include <prefork/scoreboard.hpp>
#include <prefork/socket.hpp>

namespace prefork::detail {

struct worker_record {
  pid_t pid = 0;
  unsigned index = 0;
  unsigned generation = 0;
  std::size_t slot = 0;
  fd control;  // write end of the worker's control pipe; closed once QUIT is sent
  std::chrono::steady_clock::time_point spawned{};
  std::chrono::steady_clock::time_point drain_deadline{};  // QUIT sent: SIGKILL after this
  bool ready = false;     // seen idle or busy in the scoreboard
  bool retiring = false;  // to be replaced (HUP, recycling), or no longer wanted
  bool quit_sent = false;
  bool term_sent = false;
  bool killed = false;  // SIGKILL sent
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
};

// TERM and INT: how long workers get to die of SIGTERM before SIGKILL.
inline constexpr std::chrono::milliseconds quick_stop_wait{2000};

// First fast death: respawn at once; then 0.1s, 0.2s, 0.4s ... capped at 5s.
inline std::chrono::milliseconds crash_backoff(unsigned fast_deaths) {
  if (fast_deaths <= 1) return std::chrono::milliseconds(0);
  unsigned shift = std::min(fast_deaths - 2, 16u);
  return std::min(std::chrono::milliseconds(100LL << shift), std::chrono::milliseconds(5000));
}

// max_requests plus up to 10%, so workers started together do not all
// retire together.
inline std::uint64_t jittered(unsigned max_requests, std::uint64_t& seed) {
  if (max_requests == 0) return 0;
  seed ^= seed << 13;
  seed ^= seed >> 7;
  seed ^= seed << 17;
  return max_requests + seed % (max_requests / 10 + 1);
}

template <class Duration>
std::string seconds(Duration d) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2fs", std::chrono::duration<double>(d).count());
  return buf;
}

inline unsigned thread_count() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("Threads:", 0) == 0) return static_cast<unsigned>(std::stoul(line.substr(8)));
  throw std::runtime_error("cannot read the thread count from /proc/self/status");
}

// fork(2) copies only the calling thread: a lock another thread held (in
// malloc, in stdio) stays locked forever in the child.
inline void refuse_threads(const char* who) {
  unsigned n = thread_count();
  if (n > 1)
    throw std::logic_error(std::string(who) + ": refusing to fork with " + std::to_string(n) +
                           " threads in the master (a lock held by another thread would stay locked in the "
                           "worker); start threads in the workers, after after_fork");
}

inline void check_listener(int sock) {
  int listening = 0;
  socklen_t len = sizeof listening;
  if (::getsockopt(sock, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) == -1 || !listening)
    throw std::invalid_argument("pool_config: listener fd " + std::to_string(sock) + " is not a listening socket");
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

}  // namespace prefork::detail
