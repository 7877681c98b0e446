// The EINTR seam: every interruptible call in the library goes through
// PREFORK_SYSCALL. This file routes it to mocks that fail with EINTR before
// doing the real call, and proves the library retries instead of failing.
// (Its own executable, so the mocked inline functions break no ODR.)
#include <poll.h>
#include <unistd.h>
#include <cerrno>

namespace mock {
inline int eintr_left = 0;  // how many calls fail with EINTR before the real one
inline int calls = 0;
template <class Real>
auto interrupt_then(Real real) {
  ++calls;
  if (eintr_left > 0) {
    --eintr_left;
    errno = EINTR;
    return decltype(real())(-1);
  }
  return real();
}
inline ssize_t read(int fd, void* buf, size_t n) {
  return interrupt_then([&] { return ::read(fd, buf, n); });
}
inline ssize_t write(int fd, const void* buf, size_t n) {
  return interrupt_then([&] { return ::write(fd, buf, n); });
}
inline int poll(pollfd* fds, nfds_t n, int timeout) {
  return interrupt_then([&] { return ::poll(fds, n, timeout); });
}
}  // namespace mock

#define PREFORK_SYSCALL(call) mock::call

#include <doctest/doctest.h>

#include <prefork/fd.hpp>
#include <prefork/pipe.hpp>

TEST_CASE("read_some and write_some retry EINTR instead of reporting it") {
  auto ends = prefork::pipe();
  mock::eintr_left = 3;
  mock::calls = 0;
  auto w = prefork::write_some(ends.write.get(), "abc", 3);
  CHECK(w);
  CHECK(w.bytes == 3);
  CHECK(mock::calls == 4);
  mock::eintr_left = 5;
  mock::calls = 0;
  char buf[8];
  auto r = prefork::read_some(ends.read.get(), buf, sizeof buf);
  CHECK(r);
  CHECK(r.bytes == 3);
  CHECK(mock::calls == 6);
}

TEST_CASE("write_all and read_all retry EINTR all the way through") {
  auto ends = prefork::pipe();
  mock::eintr_left = 2;
  CHECK(prefork::write_all(ends.write.get(), "hello", 5) == 5);
  ends.write.reset();
  mock::eintr_left = 2;
  CHECK(prefork::read_all(ends.read.get()) == "hello");
  CHECK(mock::eintr_left == 0);
}
