// prefork/fd.hpp: prefork::fd, the owning file descriptor, and the read and
// write loops every other header uses.
//
// An fd owns one descriptor and closes it exactly once. It is move-only, so a
// descriptor cannot be closed twice or forgotten. close(2) is never retried on
// EINTR: Linux releases the descriptor before it can be interrupted, and a
// retry could close a number another thread has just been given. Stands on
// close, fcntl (F_DUPFD_CLOEXEC, F_GETFD/F_SETFD, F_GETFL/F_SETFL), read,
// write and poll.
#pragma once

#include <cstddef>
#include <string>
#include <system_error>
#include <utility>

#include <fcntl.h>
#include <poll.h>
#include <sys/types.h>
#include <unistd.h>

#include <prefork/error.hpp>

namespace prefork {

// [[nodiscard]]: every function that returns a new descriptor (dup, listen,
// accept, connect...) hands over the only owner of it; dropping that closes
// the descriptor at once.
class [[nodiscard]] fd {
 public:
  fd() noexcept = default;
  explicit fd(int raw) noexcept : raw_(raw) {}
  fd(fd&& other) noexcept : raw_(other.release()) {}
  fd& operator=(fd&& other) noexcept {
    if (this != &other) reset(other.release());
    return *this;
  }
  fd(const fd&) = delete;
  fd& operator=(const fd&) = delete;
  ~fd() { reset(); }

  int get() const noexcept { return raw_; }
  explicit operator bool() const noexcept { return raw_ >= 0; }

  // Gives up ownership: the caller now closes the descriptor.
  int release() noexcept { return std::exchange(raw_, -1); }

  // Closes what is owned (errors ignored: there is nothing left to do about
  // them) and takes `raw` instead.
  void reset(int raw = -1) noexcept {
    int old = std::exchange(raw_, raw);
    if (old >= 0 && old != raw) ::close(old);
  }

  // Closes now and reports the error close(2) gives (EIO on NFS, say),
  // which the destructor cannot. The fd is empty afterwards either way.
  void close() {
    int old = release();
    if (old >= 0 && ::close(old) == -1 && errno != EINTR) throw_system_error("close");
  }

  // A second descriptor for the same open file, CLOEXEC from birth.
  [[nodiscard]] fd dup() const {
    int raw = ::fcntl(raw_, F_DUPFD_CLOEXEC, 0);
    if (raw == -1) throw_system_error("fcntl F_DUPFD_CLOEXEC " + std::to_string(raw_));
    return fd(raw);
  }

  // The library never needs set_cloexec(true) itself (everything it opens is
  // CLOEXEC already); clearing it is how a descriptor is kept across exec.
  void set_cloexec(bool on) const {
    int flags = ::fcntl(raw_, F_GETFD);
    if (flags == -1) throw_system_error("fcntl F_GETFD " + std::to_string(raw_));
    int wanted = on ? (flags | FD_CLOEXEC) : (flags & ~FD_CLOEXEC);
    if (wanted != flags && ::fcntl(raw_, F_SETFD, wanted) == -1)
      throw_system_error("fcntl F_SETFD " + std::to_string(raw_));
  }
  bool cloexec() const {
    int flags = ::fcntl(raw_, F_GETFD);
    if (flags == -1) throw_system_error("fcntl F_GETFD " + std::to_string(raw_));
    return (flags & FD_CLOEXEC) != 0;
  }

  void set_nonblocking(bool on) const {
    int flags = ::fcntl(raw_, F_GETFL);
    if (flags == -1) throw_system_error("fcntl F_GETFL " + std::to_string(raw_));
    int wanted = on ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK);
    if (wanted != flags && ::fcntl(raw_, F_SETFL, wanted) == -1)
      throw_system_error("fcntl F_SETFL " + std::to_string(raw_));
  }
  bool nonblocking() const {
    int flags = ::fcntl(raw_, F_GETFL);
    if (flags == -1) throw_system_error("fcntl F_GETFL " + std::to_string(raw_));
    return (flags & O_NONBLOCK) != 0;
  }

 private:
  int raw_ = -1;
};

// The outcome of one hot-path read or write: a byte count, or an errno value.
// EINTR never shows here (it is retried); EAGAIN does, as would_block().
struct io_result {
  std::size_t bytes = 0;
  int error = 0;

  explicit operator bool() const noexcept { return error == 0; }
  bool would_block() const noexcept { return error == EAGAIN || error == EWOULDBLOCK; }
};

// One read(2): bytes == 0 with no error is end of file.
inline io_result read_some(int fd, void* buf, std::size_t n) noexcept {
  ssize_t r = detail::retry([&] { return PREFORK_SYSCALL(read)(fd, buf, n); });
  if (r < 0) return {0, errno};
  return {static_cast<std::size_t>(r), 0};
}

// One write(2).
inline io_result write_some(int fd, const void* buf, std::size_t n) noexcept {
  ssize_t r = detail::retry([&] { return PREFORK_SYSCALL(write)(fd, buf, n); });
  if (r < 0) return {0, errno};
  return {static_cast<std::size_t>(r), 0};
}

namespace detail {

// Waits until `fd` is ready for `events`; used when a blocking helper meets a
// non-blocking descriptor.
inline bool wait_ready(int fd, short events, std::error_code& ec) noexcept {
  pollfd p{fd, events, 0};
  if (retry([&] { return PREFORK_SYSCALL(poll)(&p, 1, -1); }) == -1) return fail(ec);
  return true;
}

}  // namespace detail

// Writes all n bytes, looping over short writes, EINTR, and EAGAIN on a
// non-blocking descriptor (by waiting in poll). Returns the bytes written,
// which is n unless `ec` is set.
inline std::size_t write_all(int fd, const void* data, std::size_t n, std::error_code& ec) noexcept {
  ec.clear();
  const char* p = static_cast<const char*>(data);
  std::size_t done = 0;
  while (done < n) {
    io_result r = write_some(fd, p + done, n - done);
    if (r.would_block()) {
      if (!detail::wait_ready(fd, POLLOUT, ec)) break;
      continue;
    }
    if (!r) {
      detail::fail(ec, r.error);
      break;
    }
    done += r.bytes;
  }
  return done;
}

inline std::size_t write_all(int fd, const void* data, std::size_t n) {
  std::error_code ec;
  std::size_t done = write_all(fd, data, n, ec);
  if (ec) throw std::system_error(ec, "write to fd " + std::to_string(fd));
  return done;
}

inline std::size_t write_all(int fd, std::string_view data) {
  return write_all(fd, data.data(), data.size());
}

// Reads until end of file.
inline std::string read_all(int fd, std::error_code& ec) {
  ec.clear();
  std::string out;
  char buf[16384];
  for (;;) {
    io_result r = read_some(fd, buf, sizeof buf);
    if (r.would_block()) {
      if (!detail::wait_ready(fd, POLLIN, ec)) break;
      continue;
    }
    if (!r) {
      detail::fail(ec, r.error);
      break;
    }
    if (r.bytes == 0) break;
    out.append(buf, r.bytes);
  }
  return out;
}

inline std::string read_all(int fd) {
  std::error_code ec;
  std::string out = read_all(fd, ec);
  if (ec) throw std::system_error(ec, "read from fd " + std::to_string(fd));
  return out;
}

}  // namespace prefork
