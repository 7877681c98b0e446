// prefork/signal.hpp: signals as bytes on a pipe (the self-pipe trick), and a
// clean signal state for children.
//
// A signal_pipe installs one handler for the signals it is given. The handler
// does the only thing that is safe there: it writes the signal's number, one
// byte, to a non-blocking CLOEXEC pipe, keeping errno as it found it. The
// program waits on fd() with poll(2) like on any other descriptor and takes
// the signals with next(), in the order the handlers ran, outside any handler.
// The handler runs with every signal blocked, so handlers never nest and the
// bytes are written in delivery order. At most one signal_pipe is live per
// process: a handler has no argument, so it finds the pipe through one global.
//
// SIGCHLD belongs in the master's set: its byte is what wakes the master to
// reap. The kernel merges a SIGCHLD sent while another is pending, so one byte
// may stand for several dead children; reap with waitpid(-1, WNOHANG) until it
// says there are none. SIGCHLD is installed with SA_NOCLDSTOP (a stopped or
// continued child is no reason to wake), and never ignored (SIG_IGN would make
// the kernel reap children itself and waitpid fail with ECHILD).
//
// signal_name(15) is "SIGTERM" (signal_name.hpp, included here).
//
// reset_signals() gives the calling process default dispositions and an empty
// signal mask: what a child wants before exec (caught signals are reset by
// exec itself, but ignored ones and the mask are inherited).
//
// Stands on sigaction(2), sigprocmask(2), pipe2(2), read(2), write(2), poll(2).
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <initializer_list>
#include <optional>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <prefork/error.hpp>
#include <prefork/fd.hpp>
#include <prefork/pipe.hpp>
#include <prefork/signal_name.hpp>  // signal_name(), offered here too

namespace prefork {
namespace detail {

// The write end of the live signal_pipe, or -1. Lock-free atomics are the only
// shared state a handler may touch.
inline std::atomic<int> signal_pipe_write_fd{-1};
inline std::atomic<bool> signal_pipe_live{false};

inline void signal_pipe_handler(int sig) noexcept {
  // write(2) may set errno (EAGAIN on a full pipe); the interrupted code must
  // not see that, or a check of errno after its own failed call would lie.
  int saved = errno;
  int out = signal_pipe_write_fd.load(std::memory_order_relaxed);
  if (out >= 0) {
    // A full pipe means 64 KiB of signals nobody has read; dropping this one
    // is no worse than the kernel merging a pending standard signal.
    auto byte = static_cast<unsigned char>(sig);
    [[maybe_unused]] ssize_t ignored = ::write(out, &byte, 1);
  }
  errno = saved;
}

// A short name for messages: "SIGHUP", "SIGRTMIN+2", "signal 99".
inline std::string signal_label(int sig) {
  switch (sig) {
    case SIGHUP: return "SIGHUP";
    case SIGINT: return "SIGINT";
    case SIGQUIT: return "SIGQUIT";
    case SIGKILL: return "SIGKILL";
    case SIGUSR1: return "SIGUSR1";
    case SIGUSR2: return "SIGUSR2";
    case SIGPIPE: return "SIGPIPE";
    case SIGALRM: return "SIGALRM";
    case SIGTERM: return "SIGTERM";
    case SIGCHLD: return "SIGCHLD";
    case SIGSTOP: return "SIGSTOP";
    case SIGTTIN: return "SIGTTIN";
    case SIGTTOU: return "SIGTTOU";
    case SIGWINCH: return "SIGWINCH";
    default: break;
  }
  if (sig >= SIGRTMIN && sig <= SIGRTMAX) return "SIGRTMIN+" + std::to_string(sig - SIGRTMIN);
  return "signal " + std::to_string(sig);
}

}  // namespace detail

class signal_pipe {
 public:
  explicit signal_pipe(std::initializer_list<int> signals) : signal_pipe(std::vector<int>(signals)) {}

  explicit signal_pipe(const std::vector<int>& signals) {
    for (int sig : signals) {
      if (sig <= 0 || sig >= NSIG)
        throw std::invalid_argument("signal_pipe: " + std::to_string(sig) + " is not a signal number");
      if (sig == SIGKILL || sig == SIGSTOP)
        throw std::invalid_argument("signal_pipe: " + detail::signal_label(sig) + " cannot be caught");
    }
    if (detail::signal_pipe_live.exchange(true))
      throw std::logic_error(
          "signal_pipe: another signal_pipe is already live in this process "
          "(a handler has one global pipe to write to); destroy it first");
    owner_ = true;
    try {
      pipe_ends ends = pipe(O_NONBLOCK);
      read_ = std::move(ends.read);
      write_ = std::move(ends.write);
      detail::signal_pipe_write_fd.store(write_.get());
      for (int sig : signals) {
        bool seen = false;
        for (const auto& s : saved_) seen = seen || s.first == sig;
        if (seen) continue;
        struct sigaction action {};
        action.sa_handler = detail::signal_pipe_handler;
        // Every signal blocked while the handler runs: handlers never nest,
        // so the bytes go into the pipe in the order the kernel delivered.
        sigfillset(&action.sa_mask);
        // SA_RESTART: the handler only queues a byte, so a read, write or
        // accept it interrupted can simply go on; the application sees far
        // fewer EINTRs. poll(2) and friends still return EINTR (the kernel
        // never restarts them), which is harmless: the pipe is readable.
        action.sa_flags = SA_RESTART | (sig == SIGCHLD ? SA_NOCLDSTOP : 0);
        struct sigaction old {};
        if (::sigaction(sig, &action, &old) == -1)
          throw_system_error("sigaction " + detail::signal_label(sig));
        saved_.emplace_back(sig, old);
      }
    } catch (...) {
      release();
      throw;
    }
  }

  signal_pipe(signal_pipe&& other) noexcept
      : read_(std::move(other.read_)),
        write_(std::move(other.write_)),
        saved_(std::move(other.saved_)),
        owner_(std::exchange(other.owner_, false)) {}

  // At most one signal_pipe is live, so at most one side owns handlers here.
  signal_pipe& operator=(signal_pipe&& other) noexcept {
    if (this != &other) {
      release();
      read_ = std::move(other.read_);
      write_ = std::move(other.write_);
      saved_ = std::move(other.saved_);
      owner_ = std::exchange(other.owner_, false);
    }
    return *this;
  }

  signal_pipe(const signal_pipe&) = delete;
  signal_pipe& operator=(const signal_pipe&) = delete;

  // Restores the dispositions found at construction; signals still unread
  // are dropped.
  ~signal_pipe() { release(); }

  // Readable while at least one signal is waiting for next().
  int fd() const noexcept { return read_.get(); }

  // The signals handled, without duplicates, in the order given.
  std::vector<int> signals() const {
    std::vector<int> out;
    for (const auto& s : saved_) out.push_back(s.first);
    return out;
  }

  // The oldest signal not yet taken, or nullopt when none is waiting. Never
  // blocks. One byte per call, so fd() stays readable exactly as long as a
  // signal is waiting.
  std::optional<int> next(std::error_code& ec) noexcept {
    ec.clear();
    unsigned char byte = 0;
    io_result r = read_some(read_.get(), &byte, 1);
    if (r && r.bytes == 1) return static_cast<int>(byte);
    if (!r && !r.would_block()) detail::fail(ec, r.error);
    return std::nullopt;
  }

  std::optional<int> next() {
    std::error_code ec;
    std::optional<int> sig = next(ec);
    if (ec) throw std::system_error(ec, "read signal pipe " + std::to_string(read_.get()));
    return sig;
  }

  // Waits up to `timeout` for a signal (a negative timeout waits forever).
  // For programs whose only event source is signals; a loop watching other
  // descriptors polls fd() with them instead.
  std::optional<int> wait_next(std::chrono::milliseconds timeout) {
    if (std::optional<int> sig = next()) return sig;
    auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      int wait_ms = -1;
      if (timeout.count() >= 0) {
        auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        wait_ms = left.count() <= 0 ? 0 : static_cast<int>(std::min<long long>(left.count(), 1 << 30));
      }
      pollfd p{read_.get(), POLLIN, 0};
      int n = detail::retry([&] { return PREFORK_SYSCALL(poll)(&p, 1, wait_ms); });
      if (n == -1) throw_system_error("poll signal pipe " + std::to_string(read_.get()));
      if (std::optional<int> sig = next()) return sig;
      if (n == 0 && wait_ms >= 0) return std::nullopt;
    }
  }

  // For a child just forked from the process that owns this signal_pipe (a
  // worker forked by the master): puts back, in the child only, the
  // dispositions found at construction and closes the child's copies of the
  // pipe, so the child's signals no longer land in the parent's pipe and the
  // child may create its own signal_pipe. The parent is untouched: the
  // dispositions are per process and the parent's descriptors stay open.
  // Async-signal-safe (sigaction and close only). A signal arriving between
  // fork and this call would still reach the parent's pipe: block signals
  // around the fork (blocked_signals) and unblock after this call.
  void forget_in_child() noexcept { release(); }

 private:
  void release() noexcept {
    // Dispositions first: once they are back, no handler can run and write.
    for (auto it = saved_.rbegin(); it != saved_.rend(); ++it) ::sigaction(it->first, &it->second, nullptr);
    saved_.clear();
    if (!std::exchange(owner_, false)) return;
    detail::signal_pipe_write_fd.store(-1);
    read_.reset();
    write_.reset();
    detail::signal_pipe_live.store(false);
  }

  prefork::fd read_;
  prefork::fd write_;
  std::vector<std::pair<int, struct sigaction>> saved_;
  bool owner_ = false;  // this object holds the process's one live slot
};

// Blocks signals for the calling thread while it lives and then restores the
// mask it found. Around a fork, it keeps a signal from running the parent's
// handler in the child before the child has reset it.
class blocked_signals {
 public:
  // Every signal (the kernel silently keeps KILL and STOP unblockable).
  blocked_signals() noexcept {
    sigset_t all;
    sigfillset(&all);
    block(all);
  }
  explicit blocked_signals(std::initializer_list<int> signals) noexcept {
    sigset_t some;
    sigemptyset(&some);
    for (int sig : signals) sigaddset(&some, sig);
    block(some);
  }
  blocked_signals(const blocked_signals&) = delete;
  blocked_signals& operator=(const blocked_signals&) = delete;
  ~blocked_signals() { restore(); }

  // Puts the previous mask back now (the destructor then does nothing).
  // Signals that arrived meanwhile are delivered on return.
  void restore() noexcept {
    if (std::exchange(active_, false)) ::sigprocmask(SIG_SETMASK, &previous_, nullptr);
  }

 private:
  // sigprocmask rather than pthread_sigmask: on Linux both change the calling
  // thread's mask, and sigprocmask needs no libpthread on older glibc.
  void block(const sigset_t& set) noexcept { active_ = ::sigprocmask(SIG_BLOCK, &set, &previous_) == 0; }

  sigset_t previous_{};
  bool active_ = false;
};

// Default disposition for every signal that can have one (1..NSIG-1 except
// KILL and STOP, real-time signals included; the C library refuses the
// signals it reserves for itself, which is fine) and then an empty mask, in
// that order so no pending signal meets an inherited handler. Async-signal-
// safe: for a child between fork and exec, or at the top of a worker.
inline void reset_signals() noexcept {
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sig == SIGKILL || sig == SIGSTOP) continue;
    ::sigaction(sig, &dfl, nullptr);
  }
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
}

}  // namespace prefork
