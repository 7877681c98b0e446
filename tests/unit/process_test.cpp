// process.hpp, spawn.hpp, daemon.hpp: decoding, naming, bad input, and the
// EINTR seam of wait_for. Real children doing real work are in
// tests/integration/process_test.cpp.
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cerrno>

// wait_for sleeps in poll through the PREFORK_SYSCALL seam: these mocks fail
// with EINTR while eintr_left > 0 and pass through otherwise (this file is
// its own executable, so no other test sees them).
namespace mock {
inline int eintr_left = 0;
inline int poll_calls = 0;
inline int poll(pollfd* fds, nfds_t n, int timeout) {
  ++poll_calls;
  if (eintr_left > 0) {
    --eintr_left;
    errno = EINTR;
    return -1;
  }
  return ::poll(fds, n, timeout);
}
inline ssize_t read(int fd, void* buf, size_t n) { return ::read(fd, buf, n); }
inline ssize_t write(int fd, const void* buf, size_t n) { return ::write(fd, buf, n); }
}  // namespace mock
#define PREFORK_SYSCALL(call) mock::call

#include <doctest/doctest.h>

#include <prefork/pipe.hpp>
#include <prefork/process.hpp>

#include <chrono>
#include <cstring>

#include "held_child.hpp"
#include "leak_check.hpp"

namespace {

siginfo_t info_of(int code, int status) {
  siginfo_t info;
  std::memset(&info, 0, sizeof info);
  info.si_code = code;
  info.si_status = status;
  return info;
}

}  // namespace

TEST_CASE("exit_status decodes raw wait statuses") {
  prefork::exit_status zero(0);
  CHECK(zero.exited());
  CHECK(zero.code() == 0);
  CHECK(zero.success());
  CHECK_FALSE(zero.signaled());
  CHECK(zero.signal() == 0);
  CHECK(zero.describe() == "exited 0");

  prefork::exit_status three(3 << 8);
  CHECK(three.exited());
  CHECK(three.code() == 3);
  CHECK_FALSE(three.success());
  CHECK(three.describe() == "exited 3");
  CHECK(three.wait_status() == 3 << 8);

  prefork::exit_status killed(SIGKILL);
  CHECK(killed.signaled());
  CHECK_FALSE(killed.exited());
  CHECK(killed.signal() == SIGKILL);
  CHECK(killed.code() == -1);
  CHECK_FALSE(killed.core_dumped());
  CHECK_FALSE(killed.success());
  CHECK(killed.describe() == "killed by SIGKILL");

  prefork::exit_status segv(SIGSEGV | 0x80);
  CHECK(segv.signal() == SIGSEGV);
  CHECK(segv.core_dumped());
  CHECK(segv.describe() == "killed by SIGSEGV (core dumped)");
  CHECK(segv.wait_status() == (SIGSEGV | 0x80));

  CHECK(prefork::exit_status(255 << 8).describe() == "exited 255");
}

TEST_CASE("exit_status decodes waitid's siginfo the same way") {
  CHECK(prefork::exit_status(info_of(CLD_EXITED, 3)) == prefork::exit_status(3 << 8));
  CHECK(prefork::exit_status(info_of(CLD_EXITED, 0)).success());
  CHECK(prefork::exit_status(info_of(CLD_KILLED, SIGTERM)).describe() == "killed by SIGTERM");
  CHECK(prefork::exit_status(info_of(CLD_KILLED, SIGTERM)) == prefork::exit_status(SIGTERM));
  CHECK(prefork::exit_status(info_of(CLD_DUMPED, SIGABRT)).describe() == "killed by SIGABRT (core dumped)");
  CHECK(prefork::exit_status(info_of(CLD_EXITED, 1)) != prefork::exit_status(info_of(CLD_KILLED, 1)));
}

TEST_CASE("exit_status refuses reports that are not endings") {
  CHECK_THROWS_WITH_AS(prefork::exit_status(0x137f), doctest::Contains("not a termination"),
                       std::invalid_argument);                           // stopped by SIGSTOP
  CHECK_THROWS_AS(prefork::exit_status(0xffff), std::invalid_argument);  // continued
  CHECK_THROWS_AS(prefork::exit_status(info_of(CLD_STOPPED, SIGSTOP)), std::invalid_argument);
  CHECK_THROWS_AS(prefork::exit_status(info_of(CLD_CONTINUED, SIGCONT)), std::invalid_argument);
}

TEST_CASE("signal_name names signals and numbers the rest, in stable storage") {
  CHECK(prefork::signal_name(SIGTERM) == "SIGTERM");
  CHECK(prefork::signal_name(SIGKILL) == "SIGKILL");
  CHECK(prefork::signal_name(SIGQUIT) == "SIGQUIT");
  CHECK(prefork::signal_name(SIGWINCH) == "SIGWINCH");
  CHECK(prefork::signal_name(SIGTTIN) == "SIGTTIN");
  CHECK(prefork::signal_name(SIGCHLD) == "SIGCHLD");
  CHECK(prefork::signal_name(SIGUSR2) == "SIGUSR2");
  CHECK(prefork::signal_name(SIGRTMIN) == "SIGRTMIN+0");
  CHECK(prefork::signal_name(SIGRTMIN + 3) == "SIGRTMIN+3");
  CHECK(prefork::signal_name(0) == "signal 0");
  CHECK(prefork::signal_name(77) == "signal 77");
  CHECK(prefork::signal_name(127) == "signal 127");
  CHECK(prefork::signal_name(-1) == "invalid signal number");
  CHECK(prefork::signal_name(100000) == "invalid signal number");
  // Views stay valid: a later call does not overwrite an earlier answer.
  std::string_view a = prefork::signal_name(77), b = prefork::signal_name(99);
  CHECK(a == "signal 77");
  CHECK(b == "signal 99");
}

TEST_CASE("an empty child owns nothing and says so") {
  prefork::child none;
  CHECK(none.pid() == 0);
  CHECK(none.pidfd() == -1);
  CHECK_FALSE(none.status());
  CHECK_THROWS_WITH_AS(none.wait(), doctest::Contains("no child"), std::logic_error);
  CHECK_THROWS_AS(none.try_wait(), std::logic_error);
  CHECK_THROWS_AS(none.kill(), std::logic_error);
  CHECK(none.detach() == 0);
}

TEST_CASE("adopt refuses bad PIDs and processes that are not our children") {
  prefork::test::leak_check leaks;
  CHECK_THROWS_AS(prefork::child::adopt(0), std::invalid_argument);
  CHECK_THROWS_AS(prefork::child::adopt(-5), std::invalid_argument);
  CHECK_THROWS_WITH_AS(prefork::child::adopt(1), doctest::Contains("not a child of this process"),
                       std::system_error);
  CHECK_THROWS_AS(prefork::child::adopt(::getpid()), std::system_error);
  CHECK(leaks.problems() == "");
}

TEST_CASE("spawn refuses bad input clearly and leaks nothing") {
  prefork::test::leak_check leaks;
  CHECK_THROWS_WITH_AS(prefork::spawn({}), doctest::Contains("argv is empty"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(prefork::spawn({""}), doctest::Contains("argv[0] is empty"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(prefork::spawn({std::string("a\0b", 3)}), doctest::Contains("NUL"),
                       std::invalid_argument);

  prefork::spawn_options negative;
  negative.fds = {{-1, 1}};
  CHECK_THROWS_WITH_AS(prefork::spawn({"/bin/true"}, negative),
                       doctest::Contains("negative fd in mapping {-1 -> 1}"), std::invalid_argument);
  negative.fds = {{1, -3}};
  CHECK_THROWS_AS(prefork::spawn({"/bin/true"}, negative), std::invalid_argument);

  prefork::spawn_options twice;
  twice.fds = {{1, 1}, {2, 1}};
  CHECK_THROWS_WITH_AS(prefork::spawn({"/bin/true"}, twice),
                       doctest::Contains("fd 1 in the child is mapped from two different descriptors"),
                       std::invalid_argument);

  prefork::spawn_options closed;
  closed.fds = {{1000000, 1}};
  try {
    prefork::child c = prefork::spawn({"/bin/true"}, closed);
    FAIL("spawn with a closed source fd did not throw");
  } catch (const std::system_error& e) {
    CHECK(e.code() == std::errc::bad_file_descriptor);
    CHECK(std::string(e.what()).find("fd 1000000") != std::string::npos);
  }

  prefork::spawn_options env;
  env.env = std::vector<std::string>{"GOOD=1", "BAD"};
  CHECK_THROWS_WITH_AS(prefork::spawn({"/bin/true"}, env), doctest::Contains("'BAD' is not NAME=value"),
                       std::invalid_argument);
  CHECK(leaks.problems() == "");
}

TEST_CASE("become_user names the user or group it cannot find, before changing anything") {
  CHECK_THROWS_WITH_AS(prefork::become_user("prefork-no-such-user"),
                       doctest::Contains("no such user 'prefork-no-such-user'"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(prefork::become_user("nobody", "prefork-no-such-group"),
                       doctest::Contains("no such group 'prefork-no-such-group'"), std::invalid_argument);
  CHECK(::getuid() == ::geteuid());  // still whoever we were
}

TEST_CASE("daemon_launch reports once; a second report is a logic error") {
  int sv[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
  prefork::fd launcher(sv[0]);
  prefork::daemon_launch launch{prefork::fd(sv[1])};
  CHECK(launch.pending());
  launch.ready();
  CHECK_FALSE(launch.pending());
  CHECK_THROWS_AS(launch.ready(), std::logic_error);
  CHECK_THROWS_AS(launch.failed("late"), std::logic_error);
  std::string got = prefork::read_all(launcher.get());
  CHECK(got == std::string("R\0\0\0\0", 5));
}

TEST_CASE("wait_for carries on through EINTR, keeping its deadline") {
  prefork::test::leak_check leaks;
  {
    auto [c, release] = prefork::test::fork_held(6);
    // Without a pidfd (kernels before 5.3, or valgrind, which does not know
    // pidfd_open) wait_for has no poll to be interrupted in; the deadline
    // and the status must hold all the same.
    const bool sleeps_in_poll = c.pidfd() >= 0;
    if (!sleeps_in_poll) MESSAGE("no pidfd here: the EINTR seam of poll is not exercised");
    mock::eintr_left = 3;
    mock::poll_calls = 0;
    auto start = std::chrono::steady_clock::now();
    CHECK_FALSE(c.wait_for(std::chrono::milliseconds(100)));
    CHECK(std::chrono::steady_clock::now() - start >= std::chrono::milliseconds(100));
    if (sleeps_in_poll) CHECK(mock::poll_calls >= 4);  // three interrupted, then the real wait
    release.reset();
    mock::eintr_left = 2;
    auto s = c.wait_for(std::chrono::seconds(20));
    REQUIRE(s);
    CHECK(s->code() == 6);
    if (sleeps_in_poll) CHECK(mock::eintr_left == 0);
  }
  CHECK(leaks.problems() == "");
}
