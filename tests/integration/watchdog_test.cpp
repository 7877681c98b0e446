// The master's watchdog pings (WATCHDOG=1 every half WATCHDOG_USEC) stop
// while a worker number dies at start over and over, so systemd restarts a
// service that cannot serve. A number whose worker then comes up and stays
// up is healthy again: the pings must resume, or systemd kills a service
// that serves. The test plays systemd: NOTIFY_SOCKET is an abstract
// datagram socket it reads.
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cstddef>
#include <cstring>
#include <stdexcept>
#include <string>

#include <prefork/shm.hpp>

#include "env_var.hpp"
#include "notify_support.hpp"
#include "pool_harness.hpp"

using namespace pool_test;

namespace {

// systemd's end of NOTIFY_SOCKET, in the abstract namespace ("@name").
class notify_receiver {
 public:
  notify_receiver()
      : name_("@prefork-watchdog-test-" + std::to_string(::getpid())),
        sock_(notify_test::bind_notify_socket(name_, SOCK_NONBLOCK)) {}

  const std::string& name() const { return name_; }

  // Throws away everything received so far.
  void drain() {
    char buf[4096];
    while (::recv(sock_.get(), buf, sizeof buf, 0) >= 0) {
    }
  }

  // How many datagrams saying WATCHDOG=1 arrive until `wanted` did or
  // `limit` passed.
  int count_pings(int wanted, std::chrono::milliseconds limit) {
    const auto deadline = clock::now() + limit;
    int pings = 0;
    while (pings < wanted) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock::now()).count();
      if (left <= 0) break;
      pollfd p{sock_.get(), POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left)) <= 0) continue;
      char buf[4096];
      ssize_t n = ::recv(sock_.get(), buf, sizeof buf, 0);
      if (n < 0) continue;
      std::string text(buf, static_cast<std::size_t>(n));
      if (("\n" + text + "\n").find("\nWATCHDOG=1\n") != std::string::npos) ++pings;
    }
    return pings;
  }

 private:
  std::string name_;
  prefork::fd sock_;
};

}  // namespace

TEST_CASE("a worker number that died at start twice, then came up, keeps the watchdog pinged",
          "[pool][watchdog][systemd]") {
  prefork::test::leak_check leaks;
  {
    notify_receiver systemd;
    prefork::test::env_var notify("NOTIFY_SOCKET", systemd.name());
    prefork::test::env_var usec("WATCHDOG_USEC", "1000000");  // WatchdogSec=1: a ping every 0.5 s
    prefork::test::env_var for_pid("WATCHDOG_PID", std::nullopt);
    prefork::shared<std::atomic<int>> boots;  // shared by the master's children: every boot counts
    pool p(1, [&](prefork::pool_config& c) {
      c.after_fork = [announce = c.after_fork, count = boots.get()](prefork::worker& w) {
        announce(w);
        if (count->fetch_add(1) < 2) throw std::runtime_error("failing at boot on purpose");
      };
    });
    p.wait_spawn();
    p.wait_spawn();
    p.ev.wait_for("2 times in a row, respawning in");  // the back-off: the watchdog pauses
    p.wait_spawn();
    p.wait_ready(1);
    CHECK(boots->load() == 3);

    // What was sent before is gone; from now on the pings must come again,
    // each within a watchdog period.
    systemd.drain();
    CHECK(systemd.count_pings(3, std::chrono::milliseconds(10000)) == 3);
    p.quit();
  }
  CHECK(leaks.problems() == "");
}
