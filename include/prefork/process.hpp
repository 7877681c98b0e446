// prefork/process.hpp: child processes that cannot become zombies or be
// confused with someone else's.
//
// prefork::fork() returns a prefork::child in the parent; a child owns the
// process until it has been reaped, and its destructor SIGKILLs and reaps one
// that is still running, so a child handle is [[nodiscard]] and
// child::detach() is the explicit way to let one outlive its handle. fork()
// refuses to run while other threads exist (fork_even_with_threads() is the
// opt-in for a child that only execs). Where the kernel has them (5.3+), a
// child holds a pidfd: signals go through pidfd_send_signal and waits through
// waitid(P_PIDFD), so a recycled PID can never be signalled or reaped by
// mistake, and wait_for() sleeps in poll(2) on the pidfd instead of polling.
// On older kernels the same calls fall back to kill(2) and waitid(P_PID).
// exit_status decodes what wait returns (or says the status is unknown, for
// a child the kernel reaped because SIGCHLD is ignored); signal_name()
// (signal_name.hpp) names a signal without allocating. Stands on fork,
// pidfd_open, pidfd_send_signal, kill, waitid, poll and /proc/self/status.
//
// This header also brings in spawn.hpp (prefork::spawn, vfork-style
// fork+exec) and daemon.hpp (daemonize, become_user), which build on it.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>

#include <prefork/error.hpp>
#include <prefork/fd.hpp>
#include <prefork/signal_name.hpp>

namespace prefork {

namespace detail {

// Syscall numbers from 424 on are the same on every architecture, so these
// work with C libraries whose headers predate the calls.
#ifdef SYS_pidfd_open
inline constexpr long sys_pidfd_open = SYS_pidfd_open;
#else
inline constexpr long sys_pidfd_open = 434;
#endif
#ifdef SYS_pidfd_send_signal
inline constexpr long sys_pidfd_send_signal = SYS_pidfd_send_signal;
#else
inline constexpr long sys_pidfd_send_signal = 424;
#endif
// idtype_t P_PIDFD (Linux 5.4); glibc only names it from 2.36.
inline constexpr idtype_t p_pidfd = static_cast<idtype_t>(3);

}  // namespace detail

// How a child ended: exited with a code, or killed by a signal; or, when
// someone else reaped it (the kernel does when SIGCHLD is ignored, or a
// waitpid(-1) elsewhere in the program), that it ended and nobody knows how.
class exit_status {
 public:
  // The status of a child that was reaped by someone else.
  static exit_status unknown() noexcept {
    exit_status s;
    s.known_ = false;
    return s;
  }

  // From the status waitpid(2) stores. Stop and continue reports are not
  // endings, so they are refused.
  explicit exit_status(int wait_status) {
    if (WIFEXITED(wait_status)) {
      value_ = WEXITSTATUS(wait_status);
    } else if (WIFSIGNALED(wait_status)) {
      signaled_ = true;
      value_ = WTERMSIG(wait_status);
      core_ = WCOREDUMP(wait_status);
    } else {
      throw std::invalid_argument("exit_status: wait status " + std::to_string(wait_status) +
                                  " is not a termination (stopped or continued)");
    }
  }

  // From what waitid(2) fills in.
  explicit exit_status(const siginfo_t& info) : value_(info.si_status) {
    switch (info.si_code) {
      case CLD_EXITED: break;
      case CLD_DUMPED: core_ = true; [[fallthrough]];
      case CLD_KILLED: signaled_ = true; break;
      default:
        throw std::invalid_argument("exit_status: siginfo code " + std::to_string(info.si_code) +
                                    " is not a termination (stopped, trapped or continued)");
    }
  }

  // False for unknown(): then exited(), signaled() and success() are all false.
  bool known() const noexcept { return known_; }
  bool exited() const noexcept { return known_ && !signaled_; }
  int code() const noexcept { return exited() ? value_ : -1; }  // -1 unless exited()
  bool signaled() const noexcept { return signaled_; }
  int signal() const noexcept { return signaled_ ? value_ : 0; }  // 0 unless signaled()
  bool core_dumped() const noexcept { return core_; }
  bool success() const noexcept { return exited() && value_ == 0; }

  // The status as waitpid(2) would have stored it; -1 when unknown.
  int wait_status() const noexcept {
    if (!known_) return -1;
    return signaled_ ? (value_ | (core_ ? 0x80 : 0)) : (value_ << 8);
  }

  // "exited 0", "exited 3", "killed by SIGKILL", "killed by SIGSEGV (core
  // dumped)", "ended, status unknown (reaped elsewhere: ...)".
  std::string describe() const {
    if (!known_) return "ended, status unknown (reaped elsewhere: SIGCHLD ignored, or a waitpid(-1))";
    if (!signaled_) return "exited " + std::to_string(value_);
    std::string out = "killed by ";
    out += signal_name(value_);
    if (core_) out += " (core dumped)";
    return out;
  }

  friend bool operator==(const exit_status& a, const exit_status& b) noexcept {
    return a.known_ == b.known_ && a.signaled_ == b.signaled_ && a.value_ == b.value_ && a.core_ == b.core_;
  }
  friend bool operator!=(const exit_status& a, const exit_status& b) noexcept { return !(a == b); }

 private:
  exit_status() noexcept = default;

  int value_ = 0;
  bool signaled_ = false;
  bool core_ = false;
  bool known_ = true;
};

namespace detail {

// A pidfd for `pid`, or an empty fd on kernels without pidfd_open (ENOSYS).
// pidfds are always close-on-exec. Other failures are reported in `ec`.
inline fd open_pidfd(pid_t pid, std::error_code& ec) noexcept {
  ec.clear();
  long r = ::syscall(sys_pidfd_open, pid, 0);
  if (r >= 0) return fd(static_cast<int>(r));
  if (errno != ENOSYS) fail(ec);
  return fd();
}

}  // namespace detail

// Owns one child process. Moving transfers ownership; a moved-from or
// default-constructed child owns nothing (pid() == 0). [[nodiscard]]: a child
// dropped on the floor is killed at once by its destructor; detach() is how
// to let one outlive its handle on purpose.
class [[nodiscard]] child {
 public:
  child() noexcept = default;

  // Takes ownership of `pid`, a child of this process not yet reaped, with
  // its pidfd (or an empty fd where the kernel has none).
  child(pid_t pid, fd pidfd) noexcept : pid_(pid), pidfd_(std::move(pidfd)) {}

  // Wraps a PID that is already this process's child, e.g. a worker the
  // previous image of this program forked before it exec'd itself. Opens a
  // pidfd first, then checks that the PID is ours, so the check is about the
  // process the pidfd names.
  static child adopt(pid_t pid) {
    if (pid <= 0) throw std::invalid_argument("child::adopt: invalid PID " + std::to_string(pid));
    std::error_code ec;
    fd pidfd = detail::open_pidfd(pid, ec);
    if (ec) throw std::system_error(ec, "pidfd_open " + std::to_string(pid));
    child c(pid, std::move(pidfd));
    siginfo_t info{};
    if (c.waitid(&info, WEXITED | WNOHANG | WNOWAIT) == -1) {
      int err = errno;
      c.pid_ = 0;  // not ours: the destructor must not touch it
      throw_system_error("child::adopt: PID " + std::to_string(pid) + " is not a child of this process", err);
    }
    return c;
  }

  child(child&& other) noexcept
      : pid_(std::exchange(other.pid_, 0)),
        pidfd_(std::move(other.pidfd_)),
        status_(std::exchange(other.status_, {})) {}

  // Kills and reaps the child owned before, as the destructor would.
  child& operator=(child&& other) noexcept {
    if (this != &other) {
      abandon();
      pid_ = std::exchange(other.pid_, 0);
      pidfd_ = std::move(other.pidfd_);
      status_ = std::exchange(other.status_, {});
    }
    return *this;
  }
  child(const child&) = delete;
  child& operator=(const child&) = delete;

  // Still running: SIGKILL, then reap, so no zombie is left behind. Blocks
  // only as long as the kernel takes to deliver SIGKILL; if the signal cannot
  // be sent (EPERM after the child changed user) it does not wait.
  ~child() { abandon(); }

  // The PID, also after reaping (for log lines); 0 when nothing is owned.
  pid_t pid() const noexcept { return pid_; }

  // The pidfd, for an epoll or poll loop: readable once the child has
  // exited. -1 on kernels without pidfds, and once reaped.
  int pidfd() const noexcept { return pidfd_.get(); }

  // The status once reaped (by wait, try_wait, wait_for or mark_reaped).
  const std::optional<exit_status>& status() const noexcept { return status_; }

  // Blocks until the child ends and reaps it. A child someone else reaped
  // (ECHILD: SIGCHLD is ignored, so the kernel reaps, or a waitpid(-1)
  // elsewhere got there first) is over too: exit_status::unknown().
  exit_status wait() {
    check_waitable("wait");
    siginfo_t info{};
    if (waitid(&info, WEXITED) == -1) {
      if (errno == ECHILD) return reaped_elsewhere();
      throw_system_error("waitid " + std::to_string(pid_));
    }
    return reaped(info);
  }

  // Reaps the child if it has ended; std::nullopt while it runs. As wait()
  // for one reaped elsewhere.
  std::optional<exit_status> try_wait() {
    check_waitable("try_wait");
    siginfo_t info{};
    if (waitid(&info, WEXITED | WNOHANG) == -1) {
      if (errno == ECHILD) return reaped_elsewhere();
      throw_system_error("waitid " + std::to_string(pid_));
    }
    if (info.si_pid == 0) return std::nullopt;
    return reaped(info);
  }

  // Waits up to `timeout` for the child to end and reaps it; std::nullopt if
  // it is still running then. Sleeps in poll(2) on the pidfd.
  std::optional<exit_status> wait_for(std::chrono::milliseconds timeout) {
    check_waitable("wait_for");
    using clock = std::chrono::steady_clock;
    const auto start = clock::now();
    auto left = [&] {
      // Rounded down, so an early timer wake-up is followed by one more wait.
      auto spent = std::chrono::duration_cast<std::chrono::milliseconds>(clock::now() - start);
      return spent >= timeout ? std::chrono::milliseconds(0) : timeout - spent;
    };
    if (pidfd_) {
      for (;;) {
        auto ms = std::min<std::chrono::milliseconds::rep>(left().count(), 1 << 30);
        pollfd p{pidfd_.get(), POLLIN, 0};
        int r = PREFORK_SYSCALL(poll)(&p, 1, static_cast<int>(ms));
        if (r == -1 && errno == EINTR) continue;  // with the time left recomputed
        if (r == -1) throw_system_error("poll pidfd " + std::to_string(pid_));
        if (r > 0 || ms == 0) break;
      }
      return try_wait();
    }
    // Kernels before 5.3 have no pidfd to sleep on: back off from 1 ms to
    // 50 ms between checks rather than spin.
    auto pause = std::chrono::milliseconds(1);
    for (;;) {
      if (auto s = try_wait()) return s;
      auto ms = left();
      if (ms.count() == 0) return std::nullopt;
      std::this_thread::sleep_for(std::min(pause, ms));
      pause = std::min(pause * 2, std::chrono::milliseconds(50));
    }
  }

  // Sends `sig`. A child that has already ended but is not yet reaped is not
  // an error (there is nothing left to signal); a reaped one is a logic
  // error, as its PID may already belong to another process.
  void kill(int sig = SIGTERM) const {
    std::error_code ec;
    kill(sig, ec);
    if (ec) {
      std::string what = "pidfd_send_signal ";
      what += signal_name(sig);
      throw std::system_error(ec, what + " " + std::to_string(pid_));
    }
  }
  // For noexcept callers: system errors land in `ec`; misuse (nothing owned,
  // already reaped) still throws std::logic_error.
  void kill(int sig, std::error_code& ec) const {
    if (pid_ == 0) throw std::logic_error("child::kill: no child is owned");
    if (status_) throw std::logic_error("child::kill: child " + std::to_string(pid_) + " was already reaped");
    send(sig, ec);
  }

  // Asks the child to end with `sig`, waits up to `grace` for it, then
  // SIGKILLs it; reaps it either way. On a child already reaped, returns the
  // status it had.
  exit_status stop(std::chrono::milliseconds grace, int sig = SIGTERM) {
    if (pid_ == 0) throw std::logic_error("child::stop: no child is owned");
    if (status_) return *status_;
    kill(sig);
    if (auto ended = wait_for(grace)) return *ended;
    kill(SIGKILL);
    return wait();
  }

  // Sends `sig` to the child's process group: the child and every
  // descendant that stayed in it. The child must lead a group (spawned with
  // new_process_group or new_session) and not be reaped yet: while it is a
  // zombie or alive, no other group can have its PID as group ID.
  void kill_group(int sig) const {
    if (pid_ == 0) throw std::logic_error("child::kill_group: no child is owned");
    if (status_)
      throw std::logic_error("child::kill_group: child " + std::to_string(pid_) + " was already reaped");
    if (::getpgid(pid_) != pid_)
      throw std::logic_error(
          "child::kill_group: child " + std::to_string(pid_) +
          " does not lead a process group (spawn it with new_process_group or new_session)");
    if (::kill(-pid_, sig) == -1 && errno != ESRCH) {
      std::string what = "kill ";
      what += signal_name(sig);
      throw_system_error(what + " to process group " + std::to_string(pid_));
    }
  }

  // Gives up ownership without waiting, so the child outlives this handle:
  // the explicit way to keep a child running past the end of its owner's
  // scope. The caller must reap the PID returned (0 if nothing was owned or
  // it was already reaped), or have SIGCHLD ignored so the kernel does.
  pid_t detach() noexcept {
    pid_t pid = status_ ? 0 : pid_;
    pid_ = 0;
    pidfd_.reset();
    status_.reset();
    return pid;
  }

  // For a caller that reaps with waitpid(-1, ...) itself (the pool's
  // master): records that this child was reaped, with its status, so this
  // object never touches the PID again.
  void mark_reaped(exit_status status) noexcept {
    status_ = status;
    pidfd_.reset();
  }

 private:
  void check_waitable(const char* call) const {
    if (pid_ == 0) throw std::logic_error(std::string("child::") + call + ": no child is owned");
    if (status_)
      throw std::logic_error(std::string("child::") + call + ": child " + std::to_string(pid_) +
                             " was already reaped (" + status_->describe() + ")");
  }

  // waitid on the pidfd where there is one; P_PID on kernels that have
  // pidfd_open but not P_PIDFD (5.3).
  int waitid(siginfo_t* info, int options) const noexcept {
    info->si_pid = 0;
    int r = -1;
    if (pidfd_) {
      r = detail::retry(
          [&] { return ::waitid(detail::p_pidfd, static_cast<id_t>(pidfd_.get()), info, options); });
      if (r != -1 || errno != EINVAL) return r;
    }
    return detail::retry([&] { return ::waitid(P_PID, static_cast<id_t>(pid_), info, options); });
  }

  void send(int sig, std::error_code& ec) const noexcept {
    ec.clear();
    long r = -1;
    if (pidfd_) r = ::syscall(detail::sys_pidfd_send_signal, pidfd_.get(), sig, nullptr, 0);
    if (!pidfd_ || (r == -1 && errno == ENOSYS)) r = ::kill(pid_, sig);
    if (r == -1 && errno != ESRCH) detail::fail(ec);
  }

  exit_status reaped(const siginfo_t& info) {
    status_ = exit_status(info);
    pidfd_.reset();
    return *status_;
  }

  exit_status reaped_elsewhere() noexcept {
    status_ = exit_status::unknown();
    pidfd_.reset();
    return *status_;
  }

  void abandon() noexcept {
    if (pid_ != 0 && !status_) {
      std::error_code ec;
      send(SIGKILL, ec);
      siginfo_t info{};
      waitid(&info, ec ? WEXITED | WNOHANG : WEXITED);
    }
    pid_ = 0;
    pidfd_.reset();
    status_.reset();
  }

  pid_t pid_ = 0;
  fd pidfd_;
  std::optional<exit_status> status_;
};

namespace detail {

// How many threads this process has, from /proc/self/status, read into a
// stack buffer; 0 when that cannot be read (no /proc), which the check
// below takes as "cannot tell" rather than as a reason to refuse.
inline unsigned thread_count_now() noexcept {
  int file = ::open("/proc/self/status", O_RDONLY | O_CLOEXEC);
  if (file == -1) return 0;
  char buf[8192];
  std::size_t used = 0;
  for (;;) {
    io_result r = read_some(file, buf + used, sizeof buf - 1 - used);
    if (!r || r.bytes == 0) break;
    used += r.bytes;
    if (used == sizeof buf - 1) break;
  }
  ::close(file);
  buf[used] = '\0';
  const char* line = std::strstr(buf, "\nThreads:");
  if (!line) return 0;
  unsigned n = 0;
  for (const char* c = line + 9; *c != '\n' && *c != '\0'; ++c)
    if (*c >= '0' && *c <= '9') n = n * 10 + static_cast<unsigned>(*c - '0');
  return n;
}

// ThreadSanitizer's runtime keeps a background thread of its own and takes
// care of it around fork; it is not the program's.
#if defined(__SANITIZE_THREAD__)
inline constexpr unsigned sanitizer_thread_count = 1;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
inline constexpr unsigned sanitizer_thread_count = 1;
#else
inline constexpr unsigned sanitizer_thread_count = 0;
#endif
#else
inline constexpr unsigned sanitizer_thread_count = 0;
#endif

// The pidfd is opened in the parent right after fork(2) rather than taken
// from clone3(CLONE_PIDFD): a raw clone3 would bypass the C library's fork
// handling (its locks and atfork handlers), and nothing can recycle the PID
// in between, since only a wait by this process could free it.
inline std::optional<child> fork_now() {
  pid_t pid = ::fork();
  if (pid == -1) throw_system_error("fork");
  if (pid == 0) return std::nullopt;
  std::error_code ec;
  fd pidfd = open_pidfd(pid, ec);
  child c(pid, std::move(pidfd));
  if (ec) throw std::system_error(ec, "pidfd_open " + std::to_string(pid));  // c kills and reaps it
  return c;
}

}  // namespace detail

// Forks. In the parent: the child, owned. In the child: std::nullopt.
//
// Refuses (std::logic_error, before forking) when the process has other
// threads: the child would get only the calling one, and a lock another
// thread held at that moment (in malloc, in stdio, in the program's own
// code) would stay locked in the child forever. Fork before starting
// threads; to run a program from a threaded process use spawn(), which is
// safe there.
[[nodiscard]] inline std::optional<child> fork() {
  unsigned threads = detail::thread_count_now();
  if (threads > 1 + detail::sanitizer_thread_count)
    throw std::logic_error("fork: refusing to fork with " +
                           std::to_string(threads - detail::sanitizer_thread_count) +
                           " threads running (the child would have only this one, and a lock another "
                           "thread holds would stay locked in it); fork before starting threads, use "
                           "spawn() to run a program, or fork_even_with_threads() if the child calls only "
                           "async-signal-safe functions until it execs or _exits");
  return detail::fork_now();
}

// fork() without the thread check, for a child that calls only
// async-signal-safe functions (dup2, sigprocmask, execve, _exit...) until it
// execs or exits, which is safe whatever other threads hold.
[[nodiscard]] inline std::optional<child> fork_even_with_threads() { return detail::fork_now(); }

}  // namespace prefork

// The rest of the process layer; each includes this header first.
#include <prefork/daemon.hpp>
#include <prefork/spawn.hpp>
