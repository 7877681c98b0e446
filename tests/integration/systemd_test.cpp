// systemd.hpp against a real AF_UNIX datagram socket bound by the test, in
// the two address forms systemd uses, and the watchdog variables.
#include "catch.hpp"

#include <prefork/systemd.hpp>

#include <poll.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string>

#include "env_var.hpp"
#include "helpers.hpp"
#include "leak_check.hpp"
#include "notify_support.hpp"

namespace {

using prefork::test::env_var;

using namespace std::chrono_literals;

// One datagram and the PID the kernel vouches for, as systemd reads it.
std::pair<std::string, pid_t> receive(int sock) {
  pollfd p{sock, POLLIN, 0};
  REQUIRE(::poll(&p, 1, 20000) == 1);
  std::optional<notify_test::notification> got = notify_test::read_notification(sock);
  REQUIRE(got);
  return {got->text, got->sender};
}

std::string unique(const char* what) {
  static std::atomic<int> counter{0};
  return std::string("prefork-") + what + "-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
}

// The message watchdog_interval() throws (std::runtime_error), or "".
std::string watchdog_error() {
  try {
    prefork::watchdog_interval();
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("notify sends one datagram to a NOTIFY_SOCKET path", "[systemd]") {
  prefork::test::leak_check leaks;
  {
    auto dir = std::filesystem::temp_directory_path() / unique("notify");
    std::filesystem::create_directory(dir);
    std::string path = (dir / "notify.sock").string();
    prefork::fd sock = notify_test::bind_notify_socket(path);
    env_var e("NOTIFY_SOCKET", path);
    CHECK(prefork::notify("READY=1\nSTATUS=2 workers"));
    auto [text, pid] = receive(sock.get());
    CHECK(text == "READY=1\nSTATUS=2 workers");
    CHECK(pid == ::getpid());
    CHECK(prefork::notify("WATCHDOG=1"));
    CHECK(receive(sock.get()).first == "WATCHDOG=1");
    std::filesystem::remove_all(dir);
  }
  CHECK(leaks.problems() == "");  // the sending socket is not left open
}

TEST_CASE("notify reaches an abstract NOTIFY_SOCKET ('@name')", "[systemd]") {
  prefork::test::leak_check leaks;
  {
    std::string name = "@" + unique("abstract");
    prefork::fd sock = notify_test::bind_notify_socket(name);
    env_var e("NOTIFY_SOCKET", name);
    std::error_code ec;
    CHECK(prefork::notify("RELOADING=1", ec));
    CHECK_FALSE(ec);
    CHECK(receive(sock.get()).first == "RELOADING=1");
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("notify from a child process carries the child's PID", "[systemd][fork]") {
  prefork::test::leak_check leaks;
  {
    std::string name = "@" + unique("child");
    prefork::fd sock = notify_test::bind_notify_socket(name);
    env_var e("NOTIFY_SOCKET", name);
    pid_t child = ::fork();
    REQUIRE(child != -1);
    if (child == 0) {
      std::error_code ec;
      ::_exit(prefork::notify("MAINPID=1234", ec) ? 0 : 1);
    }
    auto [text, pid] = receive(sock.get());
    CHECK(text == "MAINPID=1234");
    CHECK(pid == child);
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 0));
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("notify without NOTIFY_SOCKET returns false and sends nothing", "[systemd]") {
  {
    env_var e("NOTIFY_SOCKET", std::nullopt);
    CHECK_FALSE(prefork::notify("READY=1"));
    std::error_code ec;
    CHECK_FALSE(prefork::notify("READY=1", ec));
    CHECK_FALSE(ec);
  }
  env_var e("NOTIFY_SOCKET", std::string());
  CHECK_FALSE(prefork::notify("READY=1"));
}

TEST_CASE("notify failures name the socket; the error_code overload reports them", "[systemd]") {
  prefork::test::leak_check leaks;
  {
    std::string missing = "/nonexistent/" + unique("gone") + ".sock";
    env_var e("NOTIFY_SOCKET", missing);
    std::error_code ec;
    CHECK_FALSE(prefork::notify("READY=1", ec));
    CHECK(ec == std::errc::no_such_file_or_directory);
    try {
      prefork::notify("READY=1");
      FAIL("notify did not throw");
    } catch (const std::system_error& err) {
      CHECK(std::string(err.what()).find("NOTIFY_SOCKET=" + missing) != std::string::npos);
    }
  }
  {
    env_var e("NOTIFY_SOCKET", "vsock:2:1234");
    std::error_code ec;
    CHECK_FALSE(prefork::notify("READY=1", ec));
    CHECK(ec == std::errc::address_family_not_supported);
  }
  {
    env_var e("NOTIFY_SOCKET", "/" + std::string(200, 'x'));
    CHECK_THROWS_AS(prefork::notify("READY=1"), std::system_error);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("watchdog_interval reads WATCHDOG_USEC, for this process only", "[systemd]") {
  std::string me = std::to_string(::getpid());
  {
    env_var u("WATCHDOG_USEC", std::nullopt);
    CHECK_FALSE(prefork::watchdog_interval());
  }
  {
    env_var u("WATCHDOG_USEC", "30000000");
    env_var p("WATCHDOG_PID", std::nullopt);
    CHECK(prefork::watchdog_interval() == std::chrono::microseconds(30000000));
  }
  {
    env_var u("WATCHDOG_USEC", "500000");
    env_var p("WATCHDOG_PID", me);
    CHECK(prefork::watchdog_interval() == 500ms);
  }
  {
    env_var u("WATCHDOG_USEC", "500000");
    env_var p("WATCHDOG_PID", std::to_string(::getpid() + 1));
    CHECK_FALSE(prefork::watchdog_interval());  // meant for another process
  }
  for (const char* bad : {"", "0", "-5", "+5", "12s", "abc", "99999999999999999999999"}) {
    env_var u("WATCHDOG_USEC", std::string(bad));
    env_var p("WATCHDOG_PID", std::nullopt);
    CAPTURE(bad);
    CHECK(watchdog_error().find("malformed WATCHDOG_USEC=\"" + std::string(bad) + "\"") != std::string::npos);
  }
  {
    env_var u("WATCHDOG_USEC", "500000");
    env_var p("WATCHDOG_PID", "me");
    CHECK(watchdog_error().find("malformed WATCHDOG_PID=\"me\"") != std::string::npos);
  }
}

TEST_CASE("notify with patience gives up with EAGAIN on a manager that stopped reading", "[systemd]") {
  prefork::test::leak_check leaks;
  {
    std::string name = "@" + unique("notify-full");
    prefork::fd sock = notify_test::bind_notify_socket(name);  // never read from
    env_var e("NOTIFY_SOCKET", name);
    std::error_code ec;
    int sent = 0;
    // The receiver's queue holds net.unix.max_dgram_qlen datagrams; after
    // that each call waits its patience out and reports EAGAIN.
    while (sent < 10000 && prefork::notify("STATUS=filling", ec, std::chrono::milliseconds(20))) ++sent;
    CHECK(sent > 0);
    CHECK(sent < 10000);
    CHECK(ec == std::errc::resource_unavailable_try_again);
    // Drained by one read, the queue takes the next datagram again.
    CHECK(receive(sock.get()).first == "STATUS=filling");
    CHECK(prefork::notify("READY=1", ec, std::chrono::milliseconds(0)));
    CHECK_FALSE(ec);
  }
  CHECK(leaks.problems() == "");
}
