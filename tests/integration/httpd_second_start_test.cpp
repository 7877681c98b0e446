// prefork-httpd started twice on the same address with the same pid file:
// the second start names the running master ("already running as PID N")
// instead of failing on the bind with "Address already in use".
#include <string>

#include "catch.hpp"
#include "httpd_support.hpp"
#include "leak_check.hpp"
#include "temp_dir.hpp"

using namespace httpd_test;

TEST_CASE("httpd: a second start on the same address and pid file names the running master",
          "[httpd][pidfile]") {
  prefork::test::leak_check leaks;
  {
    prefork::test::temp_dir dir;
    const std::string pid_path = (dir / "httpd.pid").string();
    server first({"-P", pid_path, "-w", "1"});
    const std::string address = "127.0.0.1:" + std::to_string(first.port());
    command_result second =
        run({"/bin/sh", "-c", "exec \"$0\" \"$@\" 2>&1", prefork::test::bin_path("prefork-httpd"), "-l",
             address, "-P", pid_path, "-w", "1"});
    INFO(second.out);
    CHECK(second.code == 1);
    CHECK(second.out.find("cannot start: pid file " + pid_path + ": already running as PID " +
                          std::to_string(first.pid())) != std::string::npos);
    CHECK(second.out.find("Address already in use") == std::string::npos);
    check_clean_stop(first);
  }
  CHECK(leaks.problems() == "");
}
