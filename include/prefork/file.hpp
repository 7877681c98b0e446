// prefork/file.hpp: files that several processes, or a crash, cannot tear.
//
// atomic_write and atomic_file replace a file so that after a crash at any
// moment it holds either the whole old content or the whole new one: write a
// temp file beside the target, fsync it, rename(2) it over the target, fsync
// the directory. A writer holds flock(2) on its temp file while writing, so
// remove_stale_temps can tell the temp files of dead writers (unlocked) from
// those still being written (locked) and never removes the latter.
// pid_file is the master's pid file: created atomically with link(2) (the file
// appears already holding "PID\n"), never through a symlink, stale ones
// replaced without a race between two starting masters. file_lock
// (file_lock.hpp, included) is flock(2) as RAII. Stands on openat, write,
// fsync, renameat, linkat, unlinkat, flock, fstat and kill(pid, 0).
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

#include <prefork/error.hpp>
#include <prefork/fd.hpp>
#include <prefork/file_lock.hpp>

namespace prefork {

namespace detail {

// The directory that holds `target`, and the name inside it.
inline std::pair<std::filesystem::path, std::string> split_target(const std::filesystem::path& target) {
  std::string name = target.filename().string();
  if (name.empty() || name == "." || name == "..")
    throw std::invalid_argument("not a file path: '" + target.string() + "'");
  std::filesystem::path dir = target.parent_path();
  return {dir.empty() ? std::filesystem::path(".") : dir, name};
}

// What a system_error was thrown with, without the ": <reason>" that
// what() appends, so the error can be rethrown with more context.
inline std::string what_arg(const std::system_error& e) {
  std::string what = e.what();
  const std::string reason = ": " + e.code().message();
  if (what.size() >= reason.size() && what.compare(what.size() - reason.size(), reason.size(), reason) == 0)
    what.resize(what.size() - reason.size());
  return what;
}

inline fd open_directory(const std::filesystem::path& dir) {
  int raw = retry([&] { return PREFORK_SYSCALL(open)(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); });
  if (raw == -1) throw_system_error("open directory " + dir.string());
  return fd(raw);
}

// 64 bits that differ between processes, calls and runs. Uniqueness is
// enforced by O_EXCL; this only makes collisions rare.
inline std::uint64_t temp_nonce() noexcept {
  static std::atomic<std::uint64_t> counter{0};
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  std::uint64_t x = (static_cast<std::uint64_t>(::getpid()) << 32) ^ static_cast<std::uint64_t>(ts.tv_nsec) ^
                    (static_cast<std::uint64_t>(ts.tv_sec) << 20) ^ (++counter * 0x9e3779b97f4a7c15ULL);
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;  // splitmix64 finaliser
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// ".<name>.tmp.<pid>.<16 hex digits>": hidden, and recognisable by the sweeper.
inline std::string temp_name(std::string_view name) {
  static const char hex[] = "0123456789abcdef";
  std::uint64_t nonce = temp_nonce();
  // Cut long names so the temp name stays under NAME_MAX (255).
  std::string out = "." + std::string(name.substr(0, 200)) + ".tmp." + std::to_string(::getpid()) + ".";
  for (int shift = 60; shift >= 0; shift -= 4) out += hex[(nonce >> shift) & 0xf];
  return out;
}

inline bool is_temp_name(std::string_view n) {
  constexpr std::string_view marker = ".tmp.";
  if (n.size() < 2 + marker.size() + 2 + 16 || n[0] != '.') return false;
  for (char c : n.substr(n.size() - 16))
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  n.remove_suffix(16);
  if (n.back() != '.') return false;
  n.remove_suffix(1);
  std::size_t digits = 0;
  while (!n.empty() && n.back() >= '0' && n.back() <= '9') n.remove_suffix(1), ++digits;
  if (digits == 0 || n.size() < 2 + marker.size()) return false;
  return n.substr(n.size() - marker.size()) == marker;
}

// Creates a locked temp file beside the target. The lock is what keeps
// remove_stale_temps away; a sweeper that got between our create and our lock
// has unlinked the file, which we see as st_nlink == 0, and start over.
inline fd create_locked_temp(int dirfd, const std::filesystem::path& dir, std::string_view name, mode_t mode,
                             std::string& temp) {
  for (int attempt = 0;; ++attempt) {
    temp = temp_name(name);
    int raw = retry([&] {
      return PREFORK_SYSCALL(openat)(dirfd, temp.c_str(),
                                     O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
    });
    if (raw == -1) {
      if (errno == EEXIST && attempt < 100) continue;
      throw_system_error("open " + (dir / temp).string());
    }
    fd file(raw);
    if (retry([&] { return PREFORK_SYSCALL(flock)(file.get(), LOCK_EX); }) == -1) {
      int err = errno;
      ::unlinkat(dirfd, temp.c_str(), 0);
      throw_system_error("flock " + (dir / temp).string(), err);
    }
    struct stat st {};
    if (::fstat(file.get(), &st) == -1) {
      int err = errno;
      ::unlinkat(dirfd, temp.c_str(), 0);
      throw_system_error("fstat " + (dir / temp).string(), err);
    }
    if (st.st_nlink > 0) return file;
    if (attempt >= 100) throw std::runtime_error("temp files in " + dir.string() + " keep being removed");
  }
}

}  // namespace detail

// Replaces `target` with a new file; see atomic_write for the whole operation.
// Destroyed (or moved-over) uncommitted: the target is untouched and the temp
// file removed. The new file's mode is `mode` less the umask, as with open(2).
// A symlink at the target is replaced by the file, not followed.
class atomic_file {
 public:
  explicit atomic_file(std::filesystem::path target, mode_t mode = 0644) : target_(std::move(target)) {
    auto [dir, name] = detail::split_target(target_);
    dir_path_ = std::move(dir);
    name_ = std::move(name);
    dir_ = detail::open_directory(dir_path_);
    file_ = detail::create_locked_temp(dir_.get(), dir_path_, name_, mode, temp_);
  }
  atomic_file(atomic_file&& other) noexcept = default;
  atomic_file& operator=(atomic_file&& other) noexcept {
    if (this != &other) {
      discard();
      target_ = std::move(other.target_);
      dir_path_ = std::move(other.dir_path_);
      name_ = std::move(other.name_);
      temp_ = std::move(other.temp_);
      dir_ = std::move(other.dir_);
      file_ = std::move(other.file_);
    }
    return *this;
  }
  atomic_file(const atomic_file&) = delete;
  atomic_file& operator=(const atomic_file&) = delete;
  ~atomic_file() { discard(); }

  void write(std::string_view data) {
    if (!file_) throw std::logic_error("atomic_file::write after commit or move: " + target_.string());
    std::error_code ec;
    write_all(file_.get(), data.data(), data.size(), ec);
    if (ec) throw std::system_error(ec, "write " + temp_path().string());
  }

  // fsync, rename over the target, fsync the directory. On failure before the
  // rename, the temp file is removed and the target untouched.
  void commit() {
    if (!file_) throw std::logic_error("atomic_file::commit twice or after move: " + target_.string());
    if (detail::retry([&] { return PREFORK_SYSCALL(fsync)(file_.get()); }) == -1)
      fail("fsync " + temp_path().string());
    if (::renameat(dir_.get(), temp_.c_str(), dir_.get(), name_.c_str()) == -1)
      fail("rename " + temp_path().string() + " -> " + target_.string());
    // Renamed: the temp name is gone, so closing drops the lock and nothing is left.
    file_.reset();
    fd dir = std::move(dir_);
    // Without this the rename itself may not survive a crash.
    if (detail::retry([&] { return PREFORK_SYSCALL(fsync)(dir.get()); }) == -1)
      throw_system_error("fsync directory " + dir_path_.string());
  }

  const std::filesystem::path& target() const noexcept { return target_; }
  std::filesystem::path temp_path() const { return dir_path_ / temp_; }
  int native_handle() const noexcept { return file_.get(); }  // -1 once committed

 private:
  [[noreturn]] void fail(const std::string& what) {
    int err = errno;
    discard();
    throw_system_error(what, err);
  }
  void discard() noexcept {
    if (!file_) return;
    detail::errno_saver keep;
    ::unlinkat(dir_.get(), temp_.c_str(), 0);  // before close: the lock keeps sweepers off meanwhile
    file_.reset();
    dir_.reset();
  }

  std::filesystem::path target_, dir_path_;
  std::string name_, temp_;
  fd dir_, file_;
};

// Replaces `target` with `data` so that, whatever moment a crash hits, the
// target holds the whole old content or the whole new one: temp file in the
// same directory (O_EXCL, flocked), write, fsync, rename, fsync the directory.
// The temp file is removed on every failure path that the process survives;
// remove_stale_temps collects those of writers that were killed.
inline void atomic_write(const std::filesystem::path& target, std::string_view data, mode_t mode = 0644) {
  atomic_file file(target, mode);
  file.write(data);
  file.commit();
}

namespace detail {

// Runs `f`, turning what it throws into `ec`, for the noexcept overloads.
template <class F>
bool capture(std::error_code& ec, F&& f) noexcept {
  ec.clear();
  try {
    f();
    return true;
  } catch (const std::system_error& e) {
    ec = e.code();
  } catch (const std::invalid_argument&) {
    ec = std::make_error_code(std::errc::invalid_argument);
  } catch (const std::bad_alloc&) {
    ec = std::make_error_code(std::errc::not_enough_memory);
  } catch (...) {
    ec = std::make_error_code(std::errc::io_error);
  }
  return false;
}

}  // namespace detail

// For noexcept callers: false and `ec` set instead of an exception.
inline bool atomic_write(const std::filesystem::path& target, std::string_view data, mode_t mode,
                         std::error_code& ec) noexcept {
  return detail::capture(ec, [&] { atomic_write(target, data, mode); });
}

// Removes the temp files of atomic_file writers that died (SIGKILL, power
// loss) from `dir`, and returns how many it removed. A temp file is removed
// only if this call can flock it, which a live writer prevents; so it is
// safe to run while writers are busy. Other files are never touched.
inline std::size_t remove_stale_temps(const std::filesystem::path& dir) {
  fd dirfd = detail::open_directory(dir);
  fd listing = dirfd.dup();  // fdopendir takes ownership of the one it is given
  DIR* d = ::fdopendir(listing.get());
  if (!d) throw_system_error("fdopendir " + dir.string());
  listing.release();
  std::size_t removed = 0;
  while (dirent* e = ::readdir(d)) {
    if (!detail::is_temp_name(e->d_name)) continue;
    // O_NONBLOCK: opening a FIFO someone named like a temp file must not hang.
    int raw = ::openat(dirfd.get(), e->d_name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (raw == -1) continue;  // committed or removed meanwhile
    fd file(raw);
    struct stat locked {};
    struct stat named {};
    if (::fstat(file.get(), &locked) == -1 || !S_ISREG(locked.st_mode)) continue;
    if (::flock(file.get(), LOCK_EX | LOCK_NB) == -1) continue;  // a live writer
    // The name may have been committed and reused between our open and lock.
    if (::fstatat(dirfd.get(), e->d_name, &named, AT_SYMLINK_NOFOLLOW) == -1) continue;
    if (named.st_dev != locked.st_dev || named.st_ino != locked.st_ino) continue;
    if (::unlinkat(dirfd.get(), e->d_name, 0) == 0) ++removed;
  }
  ::closedir(d);
  return removed;
}

inline std::size_t remove_stale_temps(const std::filesystem::path& dir, std::error_code& ec) noexcept {
  std::size_t removed = 0;
  detail::capture(ec, [&] { removed = remove_stale_temps(dir); });
  return removed;
}

// The pid file of a running master. create() makes the file appear with its
// whole content at once (written to a temp file, then link(2)ed into place,
// which fails if anything, even a dangling symlink, is already there). An
// existing file naming a live process is refused; one naming a dead process,
// or holding garbage, or empty, is stale and replaced. Replacers serialise on
// flock of the stale file and recheck under it, so of any number of racing
// creators exactly one wins. (A live PID may belong to an unrelated process
// that reused it; like every pid file, this one cannot tell.)
class pid_file {
 public:
  // Creates the file holding our PID; throws "pid file PATH: already running
  // as PID N" when a live process owns it. Every error names the pid file,
  // since the call that failed (opening its directory, a temp file beside
  // it) may not.
  static pid_file create(const std::filesystem::path& path) {
    try {
      return create_here(path);
    } catch (const std::system_error& e) {
      throw std::system_error(e.code(), "pid file " + path.string() + ": " + detail::what_arg(e));
    }
  }

  // The live process, other than this one, that the file at `path` names:
  // the master already running. nullopt when the file is missing, stale or
  // ours (a master re-exec'd in place).
  static std::optional<pid_t> running(const std::filesystem::path& path) noexcept {
    std::optional<pid_t> owner = read(path);
    if (owner && *owner != ::getpid() && alive(*owner)) return owner;
    return std::nullopt;
  }

  // Throws "pid file PATH: already running as PID N" when running(path).
  // For a program to call before it binds its sockets: the master creates
  // the pid file only after, so without this a second start fails with
  // "Address already in use" instead. create() still decides, atomically.
  static void check_not_running(const std::filesystem::path& path) {
    if (std::optional<pid_t> owner = running(path)) throw already_running(path, *owner);
  }

  pid_file() noexcept = default;
  pid_file(pid_file&& other) noexcept : path_(std::exchange(other.path_, {})) {}
  pid_file& operator=(pid_file&& other) noexcept {
    if (this != &other) {
      remove_if_ours();
      path_ = std::exchange(other.path_, {});
    }
    return *this;
  }
  pid_file(const pid_file&) = delete;
  pid_file& operator=(const pid_file&) = delete;
  ~pid_file() { remove_if_ours(); }

  // Moves the file, e.g. to "<path>.oldbin" while a new master starts, and
  // back if it fails. Whatever is at `to` is replaced.
  void rename_to(const std::filesystem::path& to) {
    if (path_.empty()) throw std::logic_error("pid_file::rename_to on an empty pid_file");
    if (::rename(path_.c_str(), to.c_str()) == -1)
      throw_system_error("rename " + path_.string() + " -> " + to.string());
    path_ = to;
  }

  const std::filesystem::path& path() const noexcept { return path_; }
  explicit operator bool() const noexcept { return !path_.empty(); }

  // Forgets the file without removing it, for a successor that takes it over
  // (a re-exec'd master adopts a pid file holding its own PID through create).
  std::filesystem::path release() noexcept { return std::exchange(path_, {}); }

  // The PID a pid file names, or nullopt when it holds no valid PID.
  static std::optional<pid_t> parse(std::string_view text) noexcept {
    if (!text.empty() && text.back() == '\n') text.remove_suffix(1);
    if (text.empty() || text.size() > 10) return std::nullopt;
    long long v = 0;
    for (char c : text) {
      if (c < '0' || c > '9') return std::nullopt;
      v = v * 10 + (c - '0');
    }
    if (v <= 0 || v > 0x7fffffff) return std::nullopt;
    return static_cast<pid_t>(v);
  }

  // The PID in the file at `path`, or nullopt (missing, unreadable, garbage).
  static std::optional<pid_t> read(const std::filesystem::path& path) noexcept {
    int raw = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    if (raw == -1) return std::nullopt;
    fd file(raw);
    return parse(read_small(file.get()));
  }

 private:
  explicit pid_file(std::filesystem::path path) : path_(std::move(path)) {}

  static pid_file create_here(const std::filesystem::path& path) {
    auto [dir, name] = detail::split_target(path);
    fd dirfd = detail::open_directory(dir);
    const pid_t self = ::getpid();
    const std::string content = std::to_string(self) + "\n";
    for (int attempt = 0; attempt < 100; ++attempt) {
      std::string temp;
      fd file = detail::create_locked_temp(dirfd.get(), dir, name, 0644, temp);
      std::error_code ec;
      write_all(file.get(), content.data(), content.size(), ec);
      int linked = ec ? -1 : ::linkat(dirfd.get(), temp.c_str(), dirfd.get(), name.c_str(), 0);
      int err = ec ? ec.value() : errno;
      ::unlinkat(dirfd.get(), temp.c_str(), 0);
      file.reset();
      if (linked == 0) return pid_file(path);
      if (err != EEXIST) throw_system_error("link " + (dir / temp).string() + " -> " + path.string(), err);
      switch (examine_existing(dirfd.get(), path, name, self)) {
        case existing::ours: return pid_file(path);  // we were exec'd in place: adopt it
        case existing::gone: continue;
      }
    }
    throw std::runtime_error("pid file " + path.string() + " keeps changing; giving up");
  }

  static std::runtime_error already_running(const std::filesystem::path& path, pid_t owner) {
    return std::runtime_error("pid file " + path.string() + ": already running as PID " +
                              std::to_string(owner));
  }

  enum class existing { ours, gone };

  static std::string read_small(int file) noexcept {
    char buf[32];
    ssize_t n = detail::retry([&] { return PREFORK_SYSCALL(pread)(file, buf, sizeof buf, 0); });
    return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string();
  }

  static bool alive(pid_t pid) noexcept { return ::kill(pid, 0) == 0 || errno == EPERM; }

  // Looks at the file that made our link fail. Throws if a live process owns
  // it or it is not a regular file; removes it if it is stale. Returns `gone`
  // when the caller should try to link again.
  static existing examine_existing(int dirfd, const std::filesystem::path& path, const std::string& name,
                                   pid_t self) {
    int raw = detail::retry([&] {
      return PREFORK_SYSCALL(openat)(dirfd, name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    });
    if (raw == -1) {
      if (errno == ENOENT) return existing::gone;
      if (errno == ELOOP)
        throw std::runtime_error("pid file " + path.string() +
                                 " is a symlink; refusing to follow or replace it");
      throw_system_error("open " + path.string());
    }
    fd file(raw);
    struct stat locked {};
    struct stat named {};
    if (::fstat(file.get(), &locked) == -1) throw_system_error("fstat " + path.string());
    if (!S_ISREG(locked.st_mode))
      throw std::runtime_error("pid file " + path.string() +
                               " is not a regular file; refusing to replace it");
    // Only one replacer at a time looks at this inode; the creator that just
    // linked it holds the lock only until its close.
    if (detail::retry([&] { return PREFORK_SYSCALL(flock)(file.get(), LOCK_EX); }) == -1)
      throw_system_error("flock " + path.string());
    if (::fstatat(dirfd, name.c_str(), &named, AT_SYMLINK_NOFOLLOW) == -1 || named.st_dev != locked.st_dev ||
        named.st_ino != locked.st_ino)
      return existing::gone;  // another replacer got there first: look again
    std::optional<pid_t> owner = parse(read_small(file.get()));
    if (owner && *owner == self) return existing::ours;
    if (owner && alive(*owner)) throw already_running(path, *owner);
    if (::unlinkat(dirfd, name.c_str(), 0) == -1 && errno != ENOENT)
      throw_system_error("unlink stale " + path.string());
    return existing::gone;
  }

  // A copy inherited through fork, or a file someone else took over, names
  // another PID and is left alone. No lock is needed: a replacer only removes
  // a file whose PID is dead, and ours is alive while this runs.
  void remove_if_ours() noexcept {
    if (path_.empty()) return;
    detail::errno_saver keep;
    int raw = ::open(path_.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (raw != -1) {
      fd file(raw);
      struct stat opened {};
      struct stat named {};
      if (parse(read_small(file.get())) == ::getpid() && ::fstat(file.get(), &opened) == 0 &&
          ::lstat(path_.c_str(), &named) == 0 && opened.st_ino == named.st_ino &&
          opened.st_dev == named.st_dev)
        ::unlink(path_.c_str());
    }
    path_.clear();
  }

  std::filesystem::path path_;
};

}  // namespace prefork
