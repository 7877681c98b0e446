// prefork/error.hpp: how the library reports failure.
//
// Setup and control calls throw std::system_error whose what() names the
// failing call and its argument ("bind 127.0.0.1:80: Permission denied").
// Hot-path calls return a result instead. Every system call that can be
// interrupted goes through one seam, PREFORK_SYSCALL, and is retried on EINTR
// by detail::retry; a test can define PREFORK_SYSCALL before including any
// prefork header to inject EINTR and prove the retry (as {fmt}'s posix mock
// tests do). Stands on errno and <system_error> only.
#pragma once

#include <cerrno>
#include <string>
#include <string_view>
#include <system_error>

#include <prefork/version.hpp>

// The syscall seam. Defined to the global function by default; a test
// translation unit may define it to a mock namespace instead.
#ifndef PREFORK_SYSCALL
#define PREFORK_SYSCALL(call) ::call
#endif

namespace prefork {

// The error for `what` failing with errno value `err` (default: errno now).
inline std::system_error system_error(std::string_view what, int err = errno) {
  return std::system_error(err, std::generic_category(), std::string(what));
}

// Throws system_error(what, err). Marked cold so error paths stay out of the way.
[[noreturn]] inline void throw_system_error(std::string_view what, int err = errno) {
  throw system_error(what, err);
}

namespace detail {

// Calls `call` until it does not fail with EINTR. `call` returns -1 and sets
// errno on failure, as system calls do.
template <class Call>
auto retry(Call&& call) noexcept(noexcept(call())) -> decltype(call()) {
  for (;;) {
    auto result = call();
    if (result != -1 || errno != EINTR) return result;
  }
}

// Restores errno when it goes out of scope: for cleanup code on error paths
// (a close() or unlink() must not overwrite the errno being reported).
class errno_saver {
 public:
  errno_saver() noexcept : saved_(errno) {}
  ~errno_saver() { errno = saved_; }
  errno_saver(const errno_saver&) = delete;
  errno_saver& operator=(const errno_saver&) = delete;

 private:
  int saved_;
};

// Sets `ec` from errno (or `err`) and returns false: `return fail(ec);`.
inline bool fail(std::error_code& ec, int err = errno) noexcept {
  ec.assign(err, std::generic_category());
  return false;
}

}  // namespace detail
}  // namespace prefork
