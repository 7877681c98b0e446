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
// ThreadSanitizer). The child's side is spawn_child.hpp; the attributes it
// may set besides (umask, limits, user...) are spawn_setup.hpp.
#pragma once

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
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
#include <prefork/path_search.hpp>
#include <prefork/process.hpp>
#include <prefork/spawn_child.hpp>
#include <prefork/spawn_setup.hpp>

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

  const std::vector<std::string> candidates = detail::path_candidates(program);
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
