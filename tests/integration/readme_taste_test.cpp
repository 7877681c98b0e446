// The README's "A taste", built verbatim (tests/readme), meets a port in use:
// one line on stderr and exit 1, not "terminate called" and an abort.
#include <algorithm>
#include <optional>
#include <string>
#include <system_error>

#include "catch.hpp"
#include "httpd_support.hpp"
#include "leak_check.hpp"

using namespace httpd_test;

TEST_CASE("README's A taste: a port in use is one line and exit 1", "[readme][taste]") {
  prefork::test::leak_check leaks;
  {
    // The program binds 127.0.0.1:7007. Hold it; if another process already
    // does (another test running the same program), it is in use all the same.
    std::optional<prefork::fd> held;
    try {
      held.emplace(prefork::listen("127.0.0.1:7007"));
    } catch (const std::system_error& e) {
      REQUIRE(e.code() == std::errc::address_in_use);
    }
    auto err = prefork::pipe();
    prefork::fd null(::open("/dev/null", O_WRONLY | O_CLOEXEC));
    prefork::child taste =
        start_process({prefork::test::bin_path("readme_taste")}, null.get(), err.write.get());
    err.write.reset();
    std::string said = read_until_close(err.read.get());
    std::optional<prefork::exit_status> how = taste.wait_for(patience);
    REQUIRE(how);
    INFO("stderr: " << said);
    CHECK(how->describe() == "exited 1");
    CHECK(std::count(said.begin(), said.end(), '\n') == 1);
    CHECK(said.rfind("echo: ", 0) == 0);
    // A master started by someone else (its pid file is /tmp/echo.pid) is
    // reported before the bind; otherwise the bind fails.
    bool in_use = said == "echo: listen 127.0.0.1:7007: Address already in use\n";
    bool running = said.find("echo: pid file /tmp/echo.pid: already running as PID ") == 0;
    CHECK((in_use || running));
  }
  CHECK(leaks.problems() == "");
}
