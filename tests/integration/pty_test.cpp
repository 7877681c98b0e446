// pty.hpp with real processes: the child sees a terminal on 0, 1 and 2 that
// is its controlling terminal, its output arrives on the master, input
// written to the master reaches it, and ^C there is its SIGINT.
#include "catch.hpp"

#include <prefork/pty.hpp>

#include <sys/ioctl.h>
#include <termios.h>

#include <chrono>
#include <csignal>
#include <string>

#include "helpers.hpp"
#include "leak_check.hpp"

using namespace std::chrono_literals;

namespace {

void say(int fd, const std::string& text) { prefork::write_all(fd, text.data(), text.size()); }

// Reads the master until `needle` has arrived (true) or the other side is
// gone or 20 s have passed (false); everything read is kept in `seen`.
bool read_until(int master, const std::string& needle, std::string& seen) {
  auto until = std::chrono::steady_clock::now() + 20s;
  while (seen.find(needle) == std::string::npos) {
    auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
    pollfd p{master, POLLIN, 0};
    if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) <= 0) return false;
    char buf[512];
    auto got = prefork::read_some(master, buf, sizeof buf);
    if (!got || got.bytes == 0) return false;  // EIO: every holder of the terminal side is gone
    seen.append(buf, got.bytes);
  }
  return true;
}

}  // namespace

// Describes its terminal, then answers one line of input.
PREFORK_HELPER(on_terminal) {
  winsize size{};
  ::ioctl(0, TIOCGWINSZ, &size);
  std::string out = "tty";
  for (int n = 0; n <= 2; ++n) out += ::isatty(n) ? " yes" : " no";
  out += ::getsid(0) == ::getpid() ? " leader" : " member";
  out += ::tcgetpgrp(0) == ::getpgrp() ? " foreground" : " background";
  out += " " + std::to_string(size.ws_row) + "x" + std::to_string(size.ws_col) + "\n";
  say(1, out);
  std::string line;
  char c;
  while (prefork::read_some(0, &c, 1).bytes == 1 && c != '\n') line += c;
  say(2, "got: " + line + "\n");
  return 0;
}

PREFORK_HELPER(wait_for_interrupt) {
  say(1, "waiting\n");
  for (;;) ::pause();
}

TEST_CASE("spawn_pty: the child's 0, 1 and 2 are its controlling terminal", "[pty]") {
  prefork::test::leak_check leaks;
  {
    prefork::pty_child pty = prefork::spawn_pty(prefork::test::helper_argv("on_terminal"));
    CHECK(pty.master.cloexec());
    std::string seen;
    REQUIRE(read_until(pty.master.get(), "\r\n", seen));
    CHECK(seen == "tty yes yes yes leader foreground 24x80\r\n");
    say(pty.master.get(), "hello\n");
    CHECK(read_until(pty.master.get(), "got: hello\r\n", seen));  // after the echo of our input
    CHECK(seen.find("hello\r\n") < seen.find("got: hello"));
    CHECK(pty.process.wait_for(20s) == std::optional<prefork::exit_status>(prefork::exit_status(0)));
    CHECK_FALSE(read_until(pty.master.get(), "never", seen));  // EIO, not a hang: the terminal side is closed
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("spawn_pty: ^C written to the master interrupts the child", "[pty]") {
  prefork::test::leak_check leaks;
  {
    prefork::pty_child pty = prefork::spawn_pty(prefork::test::helper_argv("wait_for_interrupt"));
    std::string seen;
    REQUIRE(read_until(pty.master.get(), "waiting\r\n", seen));
    say(pty.master.get(), "\x03");
    auto status = pty.process.wait_for(20s);
    REQUIRE(status);
    CHECK(status->signal() == SIGINT);
  }
  CHECK(leaks.problems() == "");
}
