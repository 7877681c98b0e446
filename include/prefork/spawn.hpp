// prefork/spawn.hpp: prefork::spawn(), fork+exec whose cost does not grow
// with the parent's memory, and whose exec errors reach the parent.
//
// Built as musl's posix_spawn is: everything the child needs (argv and envp
// arrays, the PATH candidates, the fd plan) is prepared first; then
// clone(CLONE_VM | CLONE_VFORK) runs the child on a small stack inside this
// function's frame, sharing the parent's memory, so no page table is copied
// however large the parent is. The child makes only system calls: it resets
// every signal disposition and the mask, applies the fd mapping, closes every
// other descriptor (close_range, else /proc/self/fd), changes directory, sets
// what spawn_setup.hpp offers (umask, limits, user, parent-death signal) and
// execs. A failure is written as errno through a close-on-exec pipe (a
// successful exec closes it, so the parent reads end of file), and the parent
// throws it with the program's name. Signal state is reset with raw
// rt_sigaction and rt_sigprocmask: an interposed sigaction that keeps its own
// table of handlers (a sanitizer's, Java's libjsig) would update it in the
// memory the child shares with the parent, and take the parent's handlers
// away. Stands on clone, pipe2, fcntl, dup2, close_range, getdents64,
// rt_sigaction, rt_sigprocmask, setsid, setpgid, chdir, execve and exit_group.
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <prefork/error.hpp>
#include <prefork/fd.hpp>
#include <prefork/pipe.hpp>
#include <prefork/process.hpp>
#include <prefork/spawn_setup.hpp>

// AddressSanitizer keeps a shadow of every stack frame. The CLONE_VM child
// poisons the red zones of its own frames inside our stack buffer, in memory
// it shares with us, and never unpoisons them because it execs instead of
// returning; the parent must clear that shadow before the buffer is reused.
#if defined(__SANITIZE_ADDRESS__)
#define PREFORK_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PREFORK_ASAN 1
#endif
#endif
#ifdef PREFORK_ASAN
#include <sanitizer/asan_interface.h>
#endif

// ThreadSanitizer intercepts clone() and runs its fork bookkeeping in the
// child, assuming the child has its own copy of memory. With CLONE_VM that
// bookkeeping lands in the parent's thread state: afterwards the parent's
// interceptors are off and its signal handlers never run. Under TSan the
// child therefore gets copied memory (fork's cost, same behaviour); the child
// writes nothing the parent reads, so nothing else changes.
#if defined(__SANITIZE_THREAD__)
#define PREFORK_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define PREFORK_TSAN 1
#endif
#endif

#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif

namespace prefork {

struct spawn_options {
  // {fd in the parent, number in the child}. Exactly these reach the child;
  // every other descriptor is closed. Empty: the parent's 0, 1 and 2 (those
  // that are open), at the same numbers.
  std::vector<std::pair<int, int>> fds;
  // "NAME=value" entries; std::nullopt inherits the parent's environment.
  std::optional<std::vector<std::string>> env;
  // Empty inherits the parent's. A relative program path, and relative PATH
  // entries, are resolved in it (as posix_spawn_file_actions_addchdir does).
  std::filesystem::path cwd;
  bool new_process_group = false;  // setpgid(0, 0)
  bool new_session = false;        // setsid(): also a new process group
  // With new_session: fd 0, a terminal, becomes the session's controlling
  // terminal (TIOCSCTTY), as spawn_pty does with its pty.
  bool controlling_terminal = false;

  // "NAME=value", added or replacing, on top of env (or the parent's).
  std::vector<std::string> env_set;
  std::vector<std::string> env_unset;  // names removed from env (or the parent's)
  // PR_SET_PDEATHSIG: the child gets this signal when the thread that
  // spawned it ends, and also at once if the parent died before it was set.
  int parent_death_signal = 0;
  std::optional<mode_t> umask;
  std::vector<std::pair<int, rlimit>> rlimits;  // setrlimit(resource, value) in the child
  // As root: setgroups({gid}, or {} with only uid), setgid, setuid, in that
  // order; a failure fails the spawn as an exec error does.
  std::optional<uid_t> uid;
  std::optional<gid_t> gid;
};

namespace detail {

#ifdef SYS_close_range
inline constexpr long sys_close_range = SYS_close_range;
#else
inline constexpr long sys_close_range = 436;
#endif

// The kernel's signal set: one bit per signal 1..NSIG-1 (8 bytes on most
// architectures), not the C library's 128-byte sigset_t.
inline constexpr std::size_t kernel_sigset_bytes = static_cast<std::size_t>(NSIG - 1) / 8;

#ifdef PREFORK_TSAN
inline constexpr int spawn_clone_flags = CLONE_VFORK | SIGCHLD;
#else
inline constexpr int spawn_clone_flags = CLONE_VM | CLONE_VFORK | SIGCHLD;
#endif

// What a failed child reports: errno and where it failed.
enum class spawn_step : int { none, session, group, fds, close, chdir, setup, exec };
struct spawn_report {
  int error;
  spawn_step step;
  int detail;  // the fd concerned, for the fds step
};
static_assert(sizeof(spawn_report) <= PIPE_BUF, "one write(2), so it arrives whole");

// Everything the child reads, built before the clone. The child writes only
// into `parked`, memory the parent allocated for it.
struct spawn_plan {
  const char* const* paths;  // candidates for execve, null-terminated
  char* const* argv;
  char* const* envp;
  const std::pair<int, int>* moves;
  int* parked;
  std::size_t move_count;
  const int* keep;  // sorted target numbers
  std::size_t keep_count;
  int park_at;  // above every number in play
  int report_fd;
  const char* cwd;
  const child_setup* setup;
  bool new_group, new_session;
  int rt_min;  // SIGRTMIN: a function call in glibc, so asked before the clone
  sigset_t empty_mask;
};

// Closes [lo, hi] except `spare`, the report pipe, which exec closes later.
inline int close_span(unsigned lo, unsigned hi, int spare) noexcept {
  auto one = [](unsigned a, unsigned b) { return a > b ? 0L : ::syscall(sys_close_range, a, b, 0U); };
  if (spare >= 0 && static_cast<unsigned>(spare) >= lo && static_cast<unsigned>(spare) <= hi) {
    auto s = static_cast<unsigned>(spare);
    if (s > lo && one(lo, s - 1) == -1) return -1;
    return s < hi ? static_cast<int>(one(s + 1, hi)) : 0;
  }
  return static_cast<int>(one(lo, hi));
}

// Without close_range (Linux < 5.9): walk /proc/self/fd with raw getdents64
// into a stack buffer, since opendir() would allocate.
inline int close_listed(const spawn_plan& p) noexcept {
  int dir = ::open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir == -1) return -1;
  alignas(8) char buf[1024];
  for (;;) {
    long n = ::syscall(SYS_getdents64, dir, buf, sizeof buf);
    if (n <= 0) {
      ::close(dir);
      return n == 0 ? 0 : -1;
    }
    for (long at = 0; at < n;) {
      struct entry {
        unsigned long long ino;
        long long off;
        unsigned short reclen;
        unsigned char type;
        char name[1];
      };
      const auto* e = reinterpret_cast<const entry*>(buf + at);
      at += e->reclen;
      int num = 0;
      const char* c = e->name;
      if (*c < '0' || *c > '9') continue;
      for (; *c >= '0' && *c <= '9'; ++c) num = num * 10 + (*c - '0');
      if (num == dir || num == p.report_fd || std::binary_search(p.keep, p.keep + p.keep_count, num))
        continue;
      ::close(num);
    }
  }
}

// The child. It shares the parent's memory and runs on a borrowed stack, so it
// allocates nothing, takes no lock and never returns: exec or exit_group.
inline int spawn_child(void* arg) noexcept {
  spawn_plan& p = *static_cast<spawn_plan*>(arg);
  spawn_report report{0, spawn_step::none, -1};

  // Dispositions first, while every signal is still blocked: a parent handler
  // run here would run on the parent's memory. Ignored ones too, since
  // SIG_IGN survives exec. An all-zero kernel sigaction is SIG_DFL with no
  // flags and an empty mask, whatever the architecture's field order; the
  // kernel refuses KILL and STOP, which is fine.
  {
    alignas(8) const unsigned char dfl[64] = {};
    for (int sig = 1; sig < NSIG; ++sig) {
      if (sig >= 32 && sig < p.rt_min) continue;  // the C library's own (cancellation, set*id)
      ::syscall(SYS_rt_sigaction, sig, dfl, nullptr, kernel_sigset_bytes);
    }
  }

  // Raw syscalls: these wrappers are plain today, but set*id-style wrappers
  // synchronise threads, which would be fatal here.
  if (p.new_session) {
    if (::syscall(SYS_setsid) == -1) {
      report.step = spawn_step::session;
      goto fail;
    }
  } else if (p.new_group && ::syscall(SYS_setpgid, 0, 0) == -1) {
    report.step = spawn_step::group;
    goto fail;
  }

  // Park every source above all numbers in play before moving any, so a
  // mapping that swaps (1 -> 2, 2 -> 1) cannot clobber its own input. A fd
  // kept at its own number needs its CLOEXEC cleared by hand: dup2(fd, fd)
  // does nothing.
  report.step = spawn_step::fds;
  for (std::size_t i = 0; i < p.move_count; ++i) {
    auto [from, to] = p.moves[i];
    report.detail = from;
    if (from == to) {
      if (::fcntl(from, F_SETFD, 0) == -1) goto fail;
      p.parked[i] = -1;
    } else if ((p.parked[i] = ::fcntl(from, F_DUPFD_CLOEXEC, p.park_at)) == -1) {
      goto fail;
    }
  }
  for (std::size_t i = 0; i < p.move_count; ++i) {
    report.detail = p.moves[i].second;
    if (p.parked[i] != -1 && ::dup2(p.parked[i], p.moves[i].second) == -1) goto fail;
  }

  report.step = spawn_step::close;
  {
    unsigned lo = 0;
    int r = 0;
    for (std::size_t i = 0; i < p.keep_count && r == 0; ++i) {
      auto k = static_cast<unsigned>(p.keep[i]);
      if (k > lo) r = close_span(lo, k - 1, p.report_fd);
      lo = k + 1;
    }
    if (r == 0) r = close_span(lo, ~0U, p.report_fd);
    if (r == -1 && errno == ENOSYS) r = close_listed(p);
    if (r == -1) goto fail;
  }

  if (p.cwd && ::chdir(p.cwd) == -1) {
    report.step = spawn_step::chdir;
    goto fail;
  }

  report.step = spawn_step::setup;
  if ((report.detail = apply_child_setup(*p.setup)) != 0) goto fail;

  ::syscall(SYS_rt_sigprocmask, SIG_SETMASK, &p.empty_mask, nullptr, kernel_sigset_bytes);

  // As execvp: try each PATH candidate; EACCES on one is reported only if no
  // later one succeeds; errors other than "not here" stop the search.
  report.step = spawn_step::exec;
  {
    bool denied = false;
    for (const char* const* path = p.paths; *path; ++path) {
      ::execve(*path, p.argv, p.envp);
      int err = errno;
      if (err == EACCES) {
        denied = true;
      } else if (err != ENOENT && err != ENOTDIR && err != ESTALE && err != ENODEV && err != ETIMEDOUT) {
        break;
      }
    }
    if (denied &&
        (errno == ENOENT || errno == ENOTDIR || errno == ESTALE || errno == ENODEV || errno == ETIMEDOUT))
      errno = EACCES;
  }

fail:
  report.error = errno;
  // Smaller than PIPE_BUF, so it arrives whole or not at all.
  [[maybe_unused]] ssize_t ignored = ::write(p.report_fd, &report, sizeof report);
  // Not _exit: a sanitizer's _exit wrapper does its end-of-process work,
  // which here would run on the parent's memory.
  ::syscall(SYS_exit_group, 127);
  return 127;  // not reached
}

inline std::string spawn_failure(const std::string& program, const spawn_report& r,
                                 const spawn_options& options) {
  std::string what = "spawn " + program;
  switch (r.step) {
    case spawn_step::session: return what + ": setsid";
    case spawn_step::group: return what + ": setpgid";
    case spawn_step::fds: return what + ": fd " + std::to_string(r.detail);
    case spawn_step::close: return what + ": closing inherited fds";
    case spawn_step::chdir: return what + ": chdir " + options.cwd.string();
    case spawn_step::setup:
      return what + ": " +
             setup_failure(r.detail, options.rlimits, options.uid, options.gid, options.parent_death_signal);
    default: return what;
  }
}

}  // namespace detail

// Runs argv[0] (searched in PATH when it has no '/', as execvp does, using the
// parent's PATH) with argv as its arguments. Returns once the program is
// running; if it could not be started (missing, not executable, a bad cwd,
// a bad fd), throws std::system_error with the child's errno and the
// program's name. The child starts with default signal dispositions, an
// empty signal mask, and only the descriptors `options.fds` names. A file
// that is neither a binary nor a #! script fails with ENOEXEC: unlike
// execvp, and like posix_spawnp, there is no retry with /bin/sh.
inline child spawn(const std::vector<std::string>& argv, const spawn_options& options = {}) {
  if (argv.empty()) throw std::invalid_argument("spawn: argv is empty (argv[0] names the program)");
  if (argv[0].empty()) throw std::invalid_argument("spawn: argv[0] is empty");
  for (std::size_t i = 0; i < argv.size(); ++i)
    if (argv[i].find('\0') != std::string::npos)
      throw std::invalid_argument("spawn: argv[" + std::to_string(i) + "] holds a NUL byte");
  if (options.env)
    for (const auto& e : *options.env)
      if (e.find('=') == std::string::npos || e.find('\0') != std::string::npos)
        throw std::invalid_argument("spawn " + argv[0] + ": environment entry '" + e + "' is not NAME=value");
  const std::string& program = argv[0];

  // The fd plan. Sources are checked here so a closed one is a clear error
  // instead of a failure in the child.
  std::vector<std::pair<int, int>> moves = options.fds;
  if (moves.empty()) {
    for (int n = 0; n <= 2; ++n)
      if (::fcntl(n, F_GETFD) != -1) moves.emplace_back(n, n);
  }
  std::vector<int> keep;
  int highest = 2;
  for (auto [from, to] : moves) {
    if (from < 0 || to < 0)
      throw std::invalid_argument("spawn " + program + ": negative fd in mapping {" + std::to_string(from) +
                                  " -> " + std::to_string(to) + "}");
    if (::fcntl(from, F_GETFD) == -1)
      throw_system_error("spawn " + program + ": fd " + std::to_string(from) + " (to be " +
                         std::to_string(to) + " in the child)");
    keep.push_back(to);
    highest = std::max({highest, from, to});
  }
  std::sort(keep.begin(), keep.end());
  if (auto dup = std::adjacent_find(keep.begin(), keep.end()); dup != keep.end())
    throw std::invalid_argument("spawn " + program + ": fd " + std::to_string(*dup) +
                                " in the child is mapped more than once");
  std::vector<int> parked(moves.size(), -1);

  std::vector<std::string> candidates;
  if (program.find('/') != std::string::npos) {
    candidates.push_back(program);
  } else {
    const char* path = std::getenv("PATH");
    std::string_view dirs = path ? path : "/bin:/usr/bin";
    for (;;) {
      auto colon = dirs.find(':');
      std::string_view dir = dirs.substr(0, colon);
      candidates.push_back((dir.empty() ? std::string(".") : std::string(dir)) + "/" + program);
      if (colon == std::string_view::npos) break;
      dirs.remove_prefix(colon + 1);
    }
  }
  std::vector<const char*> paths;
  paths.reserve(candidates.size() + 1);
  for (const auto& c : candidates) paths.push_back(c.c_str());
  paths.push_back(nullptr);
  std::vector<char*> args;
  args.reserve(argv.size() + 1);
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::vector<std::string> edited;
  const bool edit_env = !options.env_set.empty() || !options.env_unset.empty();
  if (edit_env) edited = detail::edited_environment(options.env, options.env_set, options.env_unset, program);
  std::vector<char*> envs;
  if (edit_env || options.env) {
    for (const auto& e : edit_env ? edited : *options.env) envs.push_back(const_cast<char*>(e.c_str()));
    envs.push_back(nullptr);
  }
  const detail::child_setup setup = detail::make_child_setup(options, program);
  std::string cwd = options.cwd.string();

  // The report pipe's write end must survive the fd plan: keep it off every
  // target number.
  auto report = prefork::pipe();
  if (std::binary_search(keep.begin(), keep.end(), report.write.get())) {
    int moved = ::fcntl(report.write.get(), F_DUPFD_CLOEXEC, highest + 1);
    if (moved == -1) throw_system_error("fcntl F_DUPFD_CLOEXEC " + std::to_string(report.write.get()));
    report.write.reset(moved);
  }

  detail::spawn_plan plan{};
  plan.paths = paths.data();
  plan.argv = args.data();
  plan.envp = envs.empty() ? environ : envs.data();
  plan.moves = moves.data();
  plan.parked = parked.data();
  plan.move_count = moves.size();
  plan.keep = keep.data();
  plan.keep_count = keep.size();
  plan.park_at = std::max(highest, report.write.get()) + 1;
  plan.report_fd = report.write.get();
  plan.cwd = cwd.empty() ? nullptr : cwd.c_str();
  plan.setup = &setup;
  plan.new_group = options.new_process_group;
  plan.new_session = options.new_session;
  plan.rt_min = SIGRTMIN;
  sigemptyset(&plan.empty_mask);

  // Every signal blocked across the clone, so no handler runs in the child
  // on the parent's memory before it resets the dispositions; cancellation
  // off, so the parent cannot be torn out of here with the child half made.
  sigset_t all, saved_mask;
  sigfillset(&all);
  int saved_cancel = 0;
  ::pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &saved_cancel);
  ::pthread_sigmask(SIG_SETMASK, &all, &saved_mask);
  // The child's stack: small (it calls nothing deep), inside this frame, and
  // dead once the parent resumes, which CLONE_VFORK delays until exec or exit.
  alignas(16) char stack[32768];
  int pidfd = -1;
  pid_t pid = ::clone(detail::spawn_child, stack + sizeof stack, detail::spawn_clone_flags | CLONE_PIDFD,
                      &plan, &pidfd);
  if (pid == -1 && errno == EINVAL) {  // Linux < 5.2 may refuse CLONE_PIDFD
    pidfd = -1;
    pid = ::clone(detail::spawn_child, stack + sizeof stack, detail::spawn_clone_flags, &plan, nullptr);
  }
  int clone_error = errno;
#ifdef PREFORK_ASAN
  __asan_unpoison_memory_region(stack, sizeof stack);
#endif
  ::pthread_sigmask(SIG_SETMASK, &saved_mask, nullptr);
  ::pthread_setcancelstate(saved_cancel, nullptr);
  report.write.reset();
  if (pid == -1) throw_system_error("clone " + program, clone_error);

  fd owned_pidfd(pidfd);
  std::error_code ec;
  if (!owned_pidfd) owned_pidfd = detail::open_pidfd(pid, ec);  // kernels that ignored CLONE_PIDFD
  child started(pid, std::move(owned_pidfd));
  if (ec) throw std::system_error(ec, "pidfd_open " + std::to_string(pid));

  detail::spawn_report failure{};
  io_result got = read_some(report.read.get(), &failure, sizeof failure);
  if (!got) throw std::system_error(got.error, std::generic_category(), "read spawn report of " + program);
  if (got.bytes == 0) return started;  // end of file: the exec closed the pipe
  started.wait();                      // it has exited already, with 127
  if (got.bytes != sizeof failure)
    throw std::runtime_error("spawn " + program + ": truncated report from child");
  throw_system_error(detail::spawn_failure(program, failure, options), failure.error);
}

// The same for a caller that must not throw on a system error: `ec` gets the
// errno the throwing spawn would carry (ENOENT for a missing program, the
// child's errno for a failed setup step), and the child returned is empty.
// Misuse (an empty argv, a malformed option) still throws.
inline child spawn(const std::vector<std::string>& argv, const spawn_options& options, std::error_code& ec) {
  ec.clear();
  try {
    return spawn(argv, options);
  } catch (const std::system_error& e) {
    ec = e.code();
    return child();
  }
}

}  // namespace prefork
