// prefork/spawn.hpp: prefork::spawn(), fork+exec whose cost does not grow
// with the parent's memory, and whose exec errors reach the parent.
//
// Built as musl's posix_spawn is: everything the child needs (argv and envp
// arrays, the PATH candidates, the fd plan) is prepared first; then
// clone(CLONE_VM | CLONE_VFORK) runs the child on a small stack inside this
// function's frame, sharing the parent's memory, so no page table is copied
// however large the parent is. The child makes only system calls: it resets
// every signal disposition and the mask, applies the fd mapping, closes every
// other descriptor (close_range; on any error, as under a seccomp profile
// that answers EPERM, /proc/self/fd), changes directory, sets what
// spawn_setup.hpp offers (umask, limits, user, parent-death signal) and
// execs. A failure is written as errno into memory the parent reads once the
// clone returns (as glibc's spawni does): CLONE_VFORK holds the parent until
// the child has exec'd or exited, so there is nothing to wait for, and no
// descriptor that a fork on another thread could inherit and hold open.
// The parent throws the errno with the program's name. Signal state is reset with raw
// rt_sigaction and rt_sigprocmask: an interposed sigaction that keeps its own
// table of handlers (a sanitizer's, Java's libjsig) would update it in the
// memory the child shares with the parent, and take the parent's handlers
// away. Stands on clone, fcntl, dup2, close_range, getdents64, rt_sigaction,
// rt_sigprocmask, setsid, setpgid, chdir, execve, exit_group (and mmap under
// ThreadSanitizer).
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <prefork/error.hpp>
#include <prefork/fd.hpp>
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
// child therefore gets copied memory (fork's cost, same behaviour), and its
// report goes into a MAP_SHARED page, which a copy still shares.
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
  // {fd in the parent, number in the child}. Any numbers work: a source at
  // 0, 1 or 2, mappings that swap ({1, 2}, {2, 1}), a source that is
  // another's target. The same pair twice counts once; two sources for one
  // number is an error. Every descriptor neither mapped nor inherited below
  // is closed in the child.
  std::vector<std::pair<int, int>> fds;
  // The parent's 0, 1 and 2 that `fds` does not give another source reach
  // the child unchanged, as with posix_spawn, so mapping a socket to 3 does
  // not leave the child without a stdin for its next open() to take. As
  // with posix_spawn, one that is close-on-exec does not: it is a private
  // descriptor that took a free number, not a standard stream. false:
  // exactly `fds` reach the child.
  bool inherit_stdio = true;
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

// Everything the child reads, built before the clone. The child writes only
// into `parked` and `report`, memory the parent allocated for it.
struct spawn_plan {
  const char* const* paths;  // candidates for execve, null-terminated
  char* const* argv;
  char* const* envp;
  const std::pair<int, int>* moves;
  int* parked;
  std::size_t move_count;
  const int* keep;  // sorted target numbers
  std::size_t keep_count;
  int park_at;           // above every number in play
  spawn_report* report;  // error stays 0 unless the child failed
  const char* cwd;
  const child_setup* setup;
  bool new_group, new_session;
  int rt_min;  // SIGRTMIN: a function call in glibc, so asked before the clone
  sigset_t empty_mask;
};

// Closes every descriptor in [lo, hi] but those in `keep` (sorted) by
// walking /proc/self/fd with raw getdents64 into a stack buffer (opendir()
// would allocate): for kernels without close_range (before 5.9) and for
// seccomp profiles that refuse it.
inline int close_listed(unsigned lo, unsigned hi, const int* keep, std::size_t keep_count) noexcept {
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
      unsigned long num = 0;
      const char* c = e->name;
      if (*c < '0' || *c > '9') continue;
      for (; *c >= '0' && *c <= '9'; ++c) num = num * 10 + static_cast<unsigned long>(*c - '0');
      if (num < lo || num > hi || num > INT_MAX) continue;
      int fd = static_cast<int>(num);
      if (fd == dir || std::binary_search(keep, keep + keep_count, fd)) continue;
      ::close(fd);
    }
  }
}

// The same with close_range, one call per gap between kept numbers.
inline int close_ranges(unsigned lo, unsigned hi, const int* keep, std::size_t keep_count) noexcept {
  for (std::size_t i = 0; i < keep_count; ++i) {
    auto k = static_cast<unsigned>(keep[i]);
    if (k < lo) continue;
    if (k > hi) break;
    if (k > lo && ::syscall(sys_close_range, lo, k - 1, 0U) == -1) return -1;
    lo = k + 1;
  }
  return lo <= hi ? static_cast<int>(::syscall(sys_close_range, lo, hi, 0U)) : 0;
}

// close_range where it works; on any error (ENOSYS on old kernels, EPERM or
// anything else from a container's seccomp profile) /proc/self/fd, as glibc's
// closefrom and CPython do.
inline int close_all_but(unsigned lo, unsigned hi, const int* keep, std::size_t keep_count) noexcept {
  if (close_ranges(lo, hi, keep, keep_count) == 0) return 0;
  return close_listed(lo, hi, keep, keep_count);
}

// Closes [lo, hi] except `spare` (-1: none).
inline int close_span(unsigned lo, unsigned hi, int spare) noexcept {
  const int keep[1] = {spare};
  return close_all_but(lo, hi, keep, spare >= 0 ? 1 : 0);
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
  if (close_all_but(0, ~0U, p.keep, p.keep_count) == -1) goto fail;

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
  // Field by field: a struct copy may become a call to memcpy. error last,
  // and never 0, since it is what tells the parent the child failed.
  p.report->step = report.step;
  p.report->detail = report.detail;
  p.report->error = errno != 0 ? errno : EIO;
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

// The child's report: in this frame when the child shares our memory, in a
// MAP_SHARED page when it gets a copy (under ThreadSanitizer).
class spawn_report_slot {
 public:
#ifdef PREFORK_TSAN
  spawn_report_slot() {
    void* page =
        ::mmap(nullptr, sizeof(spawn_report), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED) throw_system_error("mmap spawn report");
    at_ = new (page) spawn_report{0, spawn_step::none, -1};
  }
  ~spawn_report_slot() { ::munmap(at_, sizeof(spawn_report)); }
#else
  spawn_report_slot() noexcept = default;
  ~spawn_report_slot() = default;
#endif
  spawn_report_slot(const spawn_report_slot&) = delete;
  spawn_report_slot& operator=(const spawn_report_slot&) = delete;
  spawn_report* get() noexcept { return at_; }

 private:
#ifdef PREFORK_TSAN
  spawn_report* at_;
#else
  spawn_report own_{0, spawn_step::none, -1};
  spawn_report* at_ = &own_;
#endif
};

}  // namespace detail

// Runs argv[0] (searched in PATH when it has no '/', as execvp does, using the
// parent's PATH) with argv as its arguments. Returns once the program is
// running; if it could not be started (missing, not executable, a bad cwd,
// a bad fd), throws std::system_error with the child's errno and the
// program's name. The child starts with default signal dispositions, an
// empty signal mask, the descriptors `options.fds` maps and (unless
// options.inherit_stdio is false) the parent's other 0, 1 and 2. A file
// that is neither a binary nor a #! script fails with ENOEXEC: unlike
// execvp, and like posix_spawnp, there is no retry with /bin/sh.
//
// [[nodiscard]]: the child handle kills the program when it goes out of
// scope; to let the program outlive it, call detach() (and reap the PID, or
// ignore SIGCHLD). Safe to call while other threads run and fork: nothing
// the child needs passes through a descriptor they could inherit.
[[nodiscard]] inline child spawn(const std::vector<std::string>& argv, const spawn_options& options = {}) {
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
  std::vector<std::pair<int, int>> moves;
  for (auto [from, to] : options.fds) {
    if (from < 0 || to < 0)
      throw std::invalid_argument("spawn " + program + ": negative fd in mapping {" + std::to_string(from) +
                                  " -> " + std::to_string(to) + "}");
    if (::fcntl(from, F_GETFD) == -1)
      throw_system_error("spawn " + program + ": fd " + std::to_string(from) + " (to be " +
                         std::to_string(to) + " in the child)");
    if (std::find(moves.begin(), moves.end(), std::make_pair(from, to)) == moves.end())
      moves.emplace_back(from, to);
  }
  if (options.inherit_stdio)
    for (int n = 0; n <= 2; ++n) {
      bool mapped = std::any_of(moves.begin(), moves.end(), [n](const auto& m) { return m.second == n; });
      int flags = ::fcntl(n, F_GETFD);
      if (!mapped && flags != -1 && !(flags & FD_CLOEXEC)) moves.emplace_back(n, n);
    }
  std::vector<int> keep;
  int highest = 2;
  for (auto [from, to] : moves) {
    keep.push_back(to);
    highest = std::max({highest, from, to});
  }
  std::sort(keep.begin(), keep.end());
  if (auto dup = std::adjacent_find(keep.begin(), keep.end()); dup != keep.end())
    throw std::invalid_argument("spawn " + program + ": fd " + std::to_string(*dup) +
                                " in the child is mapped from two different descriptors");
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
  detail::spawn_report_slot report;

  detail::spawn_plan plan{};
  plan.paths = paths.data();
  plan.argv = args.data();
  plan.envp = envs.empty() ? environ : envs.data();
  plan.moves = moves.data();
  plan.parked = parked.data();
  plan.move_count = moves.size();
  plan.keep = keep.data();
  plan.keep_count = keep.size();
  plan.park_at = highest + 1;
  plan.report = report.get();
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
  if (pid == -1) throw_system_error("clone " + program, clone_error);

  fd owned_pidfd(pidfd);
  std::error_code ec;
  if (!owned_pidfd) owned_pidfd = detail::open_pidfd(pid, ec);  // kernels that ignored CLONE_PIDFD
  child started(pid, std::move(owned_pidfd));
  // The child has exec'd or exited by now (CLONE_VFORK): its report is final.
  const detail::spawn_report failure = *report.get();
  if (failure.error == 0) {
    if (ec) throw std::system_error(ec, "pidfd_open " + std::to_string(pid));
    return started;
  }
  // It has exited with 127. With SIGCHLD ignored the kernel has reaped it
  // already, which wait() reports as an unknown status: the errno is what
  // matters.
  started.wait();
  throw_system_error(detail::spawn_failure(program, failure, options), failure.error);
}

// The same for a caller that must not throw on a system error: `ec` gets the
// errno the throwing spawn would carry (ENOENT for a missing program, the
// child's errno for a failed setup step), and the child returned is empty.
// Misuse (an empty argv, a malformed option) still throws.
[[nodiscard]] inline child spawn(const std::vector<std::string>& argv, const spawn_options& options,
                                 std::error_code& ec) {
  ec.clear();
  try {
    return spawn(argv, options);
  } catch (const std::system_error& e) {
    ec = e.code();
    return child();
  }
}

}  // namespace prefork
