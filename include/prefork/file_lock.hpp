// prefork/file_lock.hpp: flock(2) as RAII, waiting, trying, or waiting a while.
//
// file_lock serialises processes around a file: writers of one log, one
// upgrade at a time, a cron job that must not overlap itself. The lock
// belongs to the open file description, so it is released when the last
// descriptor to it closes, even by a crash: no stale lock survives its
// holder. Stands on open, flock, and inotify (to wake the timed wait).
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <sys/file.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <optional>

#include <prefork/error.hpp>
#include <prefork/fd.hpp>

namespace prefork {

enum class lock_kind { exclusive, shared };

// flock(2) on a file, created if missing (mode 0644 less the umask), released
// on destruction. The lock belongs to the open file description: a second
// file_lock on the same path in the same process conflicts like another
// process would; a child forked while it is held shares it until both close;
// exec drops it (CLOEXEC). flock locks are advisory and, on NFS, emulated.
class file_lock {
 public:
  // Waits as long as it takes.
  explicit file_lock(const std::filesystem::path& path, lock_kind kind = lock_kind::exclusive)
      : file_(open_lockable(path)), kind_(kind) {
    if (detail::retry([&] { return PREFORK_SYSCALL(flock)(file_.get(), operation(kind)); }) == -1)
      throw_system_error("flock " + path.string());
  }

  // The lock if it is free now, else nullopt.
  static std::optional<file_lock> try_lock(const std::filesystem::path& path,
                                           lock_kind kind = lock_kind::exclusive) {
    fd file = open_lockable(path);
    if (!lock_now(file.get(), kind, path)) return std::nullopt;
    return file_lock(std::move(file), kind);
  }

  // The lock if it becomes free within `timeout`, else nullopt. Linux has no
  // timed flock, and interrupting a blocked one takes a signal handler, which
  // a library must not install. So this retries a non-blocking flock, woken
  // by inotify when some holder closes the file (the usual way a lock is let
  // go) and otherwise every 50 ms at the latest, for holders that unlock
  // without closing.
  static std::optional<file_lock> lock_for(const std::filesystem::path& path, lock_kind kind,
                                           std::chrono::milliseconds timeout) {
    using clock = std::chrono::steady_clock;
    const auto deadline = clock::now() + timeout;
    fd file = open_lockable(path);
    int raw = ::inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
    fd watch(raw);  // no inotify (limit reached): plain 50 ms retries
    if (watch && ::inotify_add_watch(watch.get(), path.c_str(), IN_CLOSE) == -1) watch.reset();
    for (;;) {
      if (lock_now(file.get(), kind, path)) return file_lock(std::move(file), kind);
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock::now());
      if (left.count() <= 0) return std::nullopt;
      int wait_ms = static_cast<int>(std::min<long long>(left.count() + 1, 50));
      pollfd p{watch.get(), POLLIN, 0};
      ::poll(&p, watch ? 1 : 0, wait_ms);  // EINTR: just try again
      char events[4096];
      if (watch)
        while (::read(watch.get(), events, sizeof events) > 0) {
        }
    }
  }

  file_lock(file_lock&&) noexcept = default;
  file_lock& operator=(file_lock&&) noexcept = default;
  file_lock(const file_lock&) = delete;
  file_lock& operator=(const file_lock&) = delete;
  ~file_lock() = default;  // closing the last descriptor releases the lock

  // Releases now (the object is empty afterwards).
  void unlock() noexcept { file_.reset(); }

  lock_kind kind() const noexcept { return kind_; }
  int native_handle() const noexcept { return file_.get(); }
  explicit operator bool() const noexcept { return static_cast<bool>(file_); }

 private:
  file_lock(fd file, lock_kind kind) noexcept : file_(std::move(file)), kind_(kind) {}

  static int operation(lock_kind kind) noexcept { return kind == lock_kind::shared ? LOCK_SH : LOCK_EX; }

  static bool lock_now(int file, lock_kind kind, const std::filesystem::path& path) {
    if (detail::retry([&] { return PREFORK_SYSCALL(flock)(file, operation(kind) | LOCK_NB); }) == 0)
      return true;
    if (errno == EWOULDBLOCK) return false;
    throw_system_error("flock " + path.string());
  }

  // Read-only is enough for flock, and lets a reader lock a file it may not
  // write. A directory can be locked too.
  static fd open_lockable(const std::filesystem::path& path) {
    int raw = detail::retry(
        [&] { return PREFORK_SYSCALL(open)(path.c_str(), O_RDONLY | O_CREAT | O_CLOEXEC, 0644); });
    if (raw == -1 && errno == EISDIR)
      raw = detail::retry(
          [&] { return PREFORK_SYSCALL(open)(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); });
    if (raw == -1) throw_system_error("open " + path.string());
    return fd(raw);
  }

  fd file_;
  lock_kind kind_ = lock_kind::exclusive;
};

}  // namespace prefork
