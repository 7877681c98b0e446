// The EINTR seam of file.hpp and file_lock.hpp: open, openat, flock, fsync
// and pread fail with EINTR before doing the real call, and the library
// retries instead of failing. (Its own executable, as eintr_test.cpp is, so
// the mocked inline functions break no ODR.)
#include <fcntl.h>
#include <poll.h>
#include <sys/file.h>
#include <unistd.h>
#include <cerrno>

namespace mock {
inline int eintr_each = 0;  // how many EINTRs each call suffers before the real one
inline int interrupted = 0;
template <class Real>
auto interrupt_then(Real real) {
  static thread_local int streak = 0;
  if (streak < eintr_each) {
    ++streak;
    ++interrupted;
    errno = EINTR;
    return decltype(real())(-1);
  }
  streak = 0;
  return real();
}
inline ssize_t read(int fd, void* buf, size_t n) {
  return interrupt_then([&] { return ::read(fd, buf, n); });
}
inline ssize_t write(int fd, const void* buf, size_t n) {
  return interrupt_then([&] { return ::write(fd, buf, n); });
}
inline ssize_t pread(int fd, void* buf, size_t n, off_t at) {
  return interrupt_then([&] { return ::pread(fd, buf, n, at); });
}
inline int poll(pollfd* fds, nfds_t n, int timeout) {
  return interrupt_then([&] { return ::poll(fds, n, timeout); });
}
inline int open(const char* path, int flags, mode_t mode = 0) {
  return interrupt_then([&] { return ::open(path, flags, mode); });
}
inline int openat(int dir, const char* path, int flags, mode_t mode = 0) {
  return interrupt_then([&] { return ::openat(dir, path, flags, mode); });
}
inline int flock(int fd, int op) {
  return interrupt_then([&] { return ::flock(fd, op); });
}
inline int fsync(int fd) {
  return interrupt_then([&] { return ::fsync(fd); });
}
}  // namespace mock

#define PREFORK_SYSCALL(call) mock::call

#include <doctest/doctest.h>

#include <prefork/file.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace fs = std::filesystem;

namespace {

struct temp_dir {
  fs::path path;
  temp_dir() {
    std::string tmpl = (fs::temp_directory_path() / "prefork-eintr-XXXXXX").string();
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    path = tmpl;
  }
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace

TEST_CASE("atomic_write, pid_file and file_lock retry every interrupted call") {
  temp_dir dir;
  mock::eintr_each = 2;
  mock::interrupted = 0;
  prefork::atomic_write(dir.path / "f", "content");
  CHECK(slurp(dir.path / "f") == "content");
  // open directory, openat temp, flock, write, fsync file, fsync directory
  CHECK(mock::interrupted >= 6 * 2);

  mock::interrupted = 0;
  std::ofstream(dir.path / "app.pid") << "garbage";
  {
    auto pid = prefork::pid_file::create(dir.path / "app.pid");  // examines and replaces the stale file
    CHECK(prefork::pid_file::read(dir.path / "app.pid") == ::getpid());
  }
  CHECK(mock::interrupted > 0);

  mock::interrupted = 0;
  {
    prefork::file_lock held(dir.path / "lock");
    CHECK_FALSE(prefork::file_lock::try_lock(dir.path / "lock"));  // EINTR is not mistaken for "busy"
    CHECK_FALSE(prefork::file_lock::lock_for(dir.path / "lock", prefork::lock_kind::shared,
                                             std::chrono::milliseconds(10)));
  }
  CHECK(prefork::file_lock::try_lock(dir.path / "lock"));
  CHECK(mock::interrupted > 0);
  mock::eintr_each = 0;
}
