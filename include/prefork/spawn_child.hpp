// prefork/spawn_child.hpp: the child side of prefork::spawn(), what runs
// between clone and exec. spawn.hpp prepares a spawn_plan and clones; this
// header holds the plan, the report the child leaves for the parent, the
// close-every-other-descriptor helpers and the child function itself. Used
// by spawn.hpp only.
//
// Everything here runs on the parent's memory (CLONE_VM) on a borrowed stack,
// so it makes system calls only: no allocation, no lock, no exception, no
// return. Stands on rt_sigaction, rt_sigprocmask, setsid, setpgid, fcntl,
// dup2, close_range, getdents64, chdir, execve, exit_group (and mmap under
// ThreadSanitizer, for the report).
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstddef>
#include <new>
#include <utility>

#include <prefork/error.hpp>
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

namespace prefork::detail {

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
}  // namespace prefork::detail
