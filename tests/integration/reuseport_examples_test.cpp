// --reuseport in prefork-httpd (blocking and evented workers) and
// prefork-echo: one listening socket per worker on the port, every request
// answered, and a SIGKILLed worker's socket stays (its replacement takes
// it: same inodes in /proc/net/tcp).
#include <signal.h>

#include "catch.hpp"
#include "httpd_support.hpp"
#include "leak_check.hpp"
#include "proc.hpp"
#include "reuseport_support.hpp"

using namespace httpd_test;
using reuseport_test::listening_on;

TEST_CASE("prefork-httpd --reuseport: a socket per worker, kept through a worker's death",
          "[httpd][reuseport]") {
  const std::string mode = GENERATE(std::string("blocking"), std::string("evented"));
  prefork::test::leak_check leaks;
  {
    server s({"--reuseport", "-m", mode});
    const auto port = static_cast<unsigned short>(s.port());
    const std::set<std::string> sockets = listening_on(port).inodes;
    CHECK(sockets.size() == 2);
    for (int i = 0; i < 20; ++i) CHECK(get(s.port(), "/hello").status == 200);
    std::set<pid_t> workers = prefork::test::children_of(s.pid());
    REQUIRE(workers.size() == 2);
    ::kill(*workers.begin(), SIGKILL);
    s.wait_log("killed by SIGKILL");
    s.wait_log(") ready");
    CHECK(listening_on(port).inodes == sockets);
    for (int i = 0; i < 20; ++i) CHECK(get(s.port(), "/hello").status == 200);
    check_clean_stop(s);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("prefork-echo --reuseport: a socket per worker, and it echoes", "[echo][reuseport]") {
  prefork::test::leak_check leaks;
  {
    auto out = prefork::pipe();
    auto err = prefork::pipe();
    prefork::child echo = start_process(
        {prefork::test::bin_path("prefork-echo"), "--listen", "127.0.0.1:0", "--workers", "2", "--reuseport"},
        out.write.get(), err.write.get());
    out.write.reset();
    err.write.reset();
    std::string banner;
    REQUIRE(read_some_until(out.read.get(), banner, steady::now() + patience));
    REQUIRE(banner.rfind("listening on 127.0.0.1:", 0) == 0);
    const std::string address = banner.substr(13, banner.find('\n') - 13);
    std::string log;
    while (log.find(") ready", log.find(") ready") + 1) == std::string::npos)
      REQUIRE(read_some_until(err.read.get(), log, steady::now() + patience));
    CHECK(listening_on(reuseport_test::port_of(address)).inodes.size() == 2);
    for (int i = 0; i < 10; ++i) {
      prefork::fd c = prefork::connect(address);
      prefork::write_all(c.get(), "hello\n");
      ::shutdown(c.get(), SHUT_WR);
      CHECK(prefork::read_all(c.get()) == "hello\n");
    }
    echo.kill(SIGQUIT);
    CHECK(echo.wait().describe() == "exited 0");
  }
  CHECK(leaks.problems() == "");
}
