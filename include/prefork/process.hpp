// prefork/process.hpp: child processes that cannot become zombies or be
// confused with someone else's.
//
// prefork::fork() returns a prefork::child in the parent; a child owns the
// process until it has been reaped, and its destructor SIGKILLs and reaps one
// that is still running. Where the kernel has them (5.3+), a child holds a
// pidfd: signals go through pidfd_send_signal and waits through
// waitid(P_PIDFD), so a recycled PID can never be signalled or reaped by
// mistake, and wait_for() sleeps in poll(2) on the pidfd instead of polling.
// On older kernels the same calls fall back to kill(2) and waitid(P_PID).
// exit_status decodes what wait returns; signal_name() names a signal without
// allocating. Stands on fork, pidfd_open, pidfd_send_signal, kill, waitid and
// poll.
//
// This header also brings in spawn.hpp (prefork::spawn, vfork-style
// fork+exec) and daemon.hpp (daemonize, become_user), which build on it.
#pragma once

#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>

#include <prefork/error.hpp>
#include <prefork/fd.hpp>

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

// "signal N" for every N a wait status can carry (7 bits), built at compile
// time so signal_name() can return a view that stays valid.
struct numbered_names {
  std::array<std::array<char, 12>, 128> text{};
  std::array<unsigned char, 128> size{};
  constexpr numbered_names(const char* prefix, int first) {
    for (int n = 0; n < 128; ++n) {
      auto& out = text[static_cast<std::size_t>(n)];
      std::size_t len = 0;
      for (const char* p = prefix; *p != '\0'; ++p) out[len++] = *p;
      int value = n - first;
      if (value >= 100) out[len++] = static_cast<char>('0' + value / 100);
      if (value >= 10) out[len++] = static_cast<char>('0' + value / 10 % 10);
      out[len++] = static_cast<char>('0' + (value < 0 ? 0 : value) % 10);
      size[static_cast<std::size_t>(n)] = static_cast<unsigned char>(len);
    }
  }
  constexpr std::string_view operator[](int n) const {
    return {text[static_cast<std::size_t>(n)].data(), size[static_cast<std::size_t>(n)]};
  }
};
inline constexpr numbered_names plain_signal_names("signal ", 0);
inline constexpr numbered_names realtime_signal_names("SIGRTMIN+", 0);

}  // namespace detail

// "SIGTERM", "SIGRTMIN+2", or "signal 77" for a number without a name. Never
// allocates, so it is safe in a signal handler and in the pool's log lines.
inline std::string_view signal_name(int sig) noexcept {
  switch (sig) {
    case SIGHUP: return "SIGHUP";
    case SIGINT: return "SIGINT";
    case SIGQUIT: return "SIGQUIT";
    case SIGILL: return "SIGILL";
    case SIGTRAP: return "SIGTRAP";
    case SIGABRT: return "SIGABRT";
    case SIGBUS: return "SIGBUS";
    case SIGFPE: return "SIGFPE";
    case SIGKILL: return "SIGKILL";
    case SIGUSR1: return "SIGUSR1";
    case SIGSEGV: return "SIGSEGV";
    case SIGUSR2: return "SIGUSR2";
    case SIGPIPE: return "SIGPIPE";
    case SIGALRM: return "SIGALRM";
    case SIGTERM: return "SIGTERM";
#ifdef SIGSTKFLT
    case SIGSTKFLT: return "SIGSTKFLT";
#endif
    case SIGCHLD: return "SIGCHLD";
    case SIGCONT: return "SIGCONT";
    case SIGSTOP: return "SIGSTOP";
    case SIGTSTP: return "SIGTSTP";
    case SIGTTIN: return "SIGTTIN";
    case SIGTTOU: return "SIGTTOU";
    case SIGURG: return "SIGURG";
    case SIGXCPU: return "SIGXCPU";
    case SIGXFSZ: return "SIGXFSZ";
    case SIGVTALRM: return "SIGVTALRM";
    case SIGPROF: return "SIGPROF";
    case SIGWINCH: return "SIGWINCH";
    case SIGIO: return "SIGIO";
#if defined(SIGPWR) && SIGPWR != SIGIO
    case SIGPWR: return "SIGPWR";
#endif
    case SIGSYS: return "SIGSYS";
    default: break;
  }
  // SIGRTMIN is a function call in glibc (it keeps the first two for threads).
  if (sig >= SIGRTMIN && sig <= SIGRTMAX && sig - SIGRTMIN < 128)
    return detail::realtime_signal_names[sig - SIGRTMIN];
  if (sig >= 0 && sig < 128) return detail::plain_signal_names[sig];
  return "invalid signal number";
}

// How a child ended: exited with a code, or killed by a signal.
class exit_status {
 public:
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

  bool exited() const noexcept { return !signaled_; }
  int code() const noexcept { return signaled_ ? -1 : value_; }  // -1 unless exited()
  bool signaled() const noexcept { return signaled_; }
  int signal() const noexcept { return signaled_ ? value_ : 0; }  // 0 unless signaled()
  bool core_dumped() const noexcept { return core_; }
  bool success() const noexcept { return !signaled_ && value_ == 0; }

  // The status as waitpid(2) would have stored it.
  int wait_status() const noexcept { return signaled_ ? (value_ | (core_ ? 0x80 : 0)) : (value_ << 8); }

  // "exited 0", "exited 3", "killed by SIGKILL", "killed by SIGSEGV (core dumped)".
  std::string describe() const {
    if (!signaled_) return "exited " + std::to_string(value_);
    std::string out = "killed by ";
    out += signal_name(value_);
    if (core_) out += " (core dumped)";
    return out;
  }

  friend bool operator==(const exit_status& a, const exit_status& b) noexcept {
    return a.signaled_ == b.signaled_ && a.value_ == b.value_ && a.core_ == b.core_;
  }
  friend bool operator!=(const exit_status& a, const exit_status& b) noexcept { return !(a == b); }

 private:
  int value_ = 0;
  bool signaled_ = false;
  bool core_ = false;
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
// default-constructed child owns nothing (pid() == 0).
class child {
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

  // Blocks until the child ends and reaps it.
  exit_status wait() {
    check_waitable("wait");
    siginfo_t info{};
    if (waitid(&info, WEXITED) == -1) throw_system_error("waitid " + std::to_string(pid_));
    return reaped(info);
  }

  // Reaps the child if it has ended; std::nullopt while it runs.
  std::optional<exit_status> try_wait() {
    check_waitable("try_wait");
    siginfo_t info{};
    if (waitid(&info, WEXITED | WNOHANG) == -1) throw_system_error("waitid " + std::to_string(pid_));
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

  // Gives up ownership without waiting: the caller must reap the PID
  // returned (0 if nothing was owned or it was already reaped).
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

// Forks. In the parent: the child, owned. In the child: std::nullopt.
//
// The pidfd is opened in the parent right after fork(2) rather than taken
// from clone3(CLONE_PIDFD): a raw clone3 would bypass the C library's fork
// handling (its locks and atfork handlers), and nothing can recycle the PID
// in between, since only a wait by this process could free it.
inline std::optional<child> fork() {
  pid_t pid = ::fork();
  if (pid == -1) throw_system_error("fork");
  if (pid == 0) return std::nullopt;
  std::error_code ec;
  fd pidfd = detail::open_pidfd(pid, ec);
  child c(pid, std::move(pidfd));
  if (ec) throw std::system_error(ec, "pidfd_open " + std::to_string(pid));  // c kills and reaps it
  return c;
}

}  // namespace prefork

// The rest of the process layer; each includes this header first.
#include <prefork/daemon.hpp>
#include <prefork/spawn.hpp>
