// prefork-httpd's USR2 upgrades under a client loop, both upgrade modes,
// every worker mode: every request made while the binary is replaced gets its whole
// answer. (The pool's own upgrade protocol, with its rollbacks, is tested
// in upgrade_test.cpp; this proves the server built on it keeps the promise.)
#include <sys/syscall.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <thread>

#include "catch.hpp"
#include "httpd_modes.hpp"
#include "httpd_support.hpp"
#include "leak_check.hpp"

using namespace httpd_test;
namespace fs = std::filesystem;

TEST_CASE("prefork-httpd in-place upgrades (USR2) under load: same PID, no request lost",
          "[httpd][upgrade]") {
  for (const char* mode : {"evented", "blocking", "uring"}) {
    if (!mode_runs_here(mode)) continue;
    DYNAMIC_SECTION("-m " << mode) {
      prefork::test::leak_check leaks;
      {
        server s({"-m", mode, "--upgrade", "in-place", "--graceful-timeout", "5"});
        check_mode(s, mode);
        const pid_t master = s.pid();
        hello_loop load(s.port());
        load.wait_for_more(50);
        for (int n = 1; n <= 3; ++n) {
          s.signal(SIGUSR2);
          s.wait_log("upgrade " + std::to_string(n) + " complete");
          load.wait_for_more(50);
        }
        load.finish();
        INFO("server log:\n" << s.log());
        CHECK(load.failed() == 0);
        CHECK(load.served() >= 200);
        CHECK(s.pid() == master);
        CHECK(get(s.port(), "/hello").body == "Hello, World!");
        CHECK(s.stop().describe() == "exited 0");
      }
      CHECK(leaks.problems() == "");
    }
  }
}

TEST_CASE("prefork-httpd fork_exec upgrade (USR2) under load: a new master takes over, no request lost",
          "[httpd][upgrade]") {
  for (const char* mode : {"evented", "blocking", "uring"}) {
    if (!mode_runs_here(mode)) continue;
    DYNAMIC_SECTION("-m " << mode) {
      prefork::test::leak_check leaks;
      fs::path dir = fs::temp_directory_path() / ("prefork-httpd-upgrade-" + std::to_string(::getpid()));
      fs::create_directories(dir);
      const fs::path pid_path = dir / "httpd.pid";
      {
        server s({"-m", mode, "--upgrade", "fork-exec", "--graceful-timeout", "5", "-P", pid_path.string()});
        check_mode(s, mode);
        const pid_t old_master = s.pid();
        REQUIRE(read_pid(pid_path) == old_master);
        hello_loop load(s.port());
        load.wait_for_more(50);
        s.signal(SIGUSR2);
        // The new master starts its workers, then QUITs the old one, which
        // drains and exits 0: that is the end of the upgrade.
        auto old_status =
            s.process().wait_for(std::chrono::duration_cast<std::chrono::milliseconds>(patience));
        REQUIRE(old_status);
        CHECK(old_status->describe() == "exited 0");
        const pid_t new_master = read_pid(pid_path);
        load.wait_for_more(50);
        load.finish();
        INFO("server log:\n" << s.log());
        CHECK(load.failed() == 0);
        CHECK(load.served() >= 100);
        CHECK(new_master != old_master);
        CHECK_FALSE(fs::exists(pid_path.string() + ".oldbin"));
        // The new master is not our child: stop it by its PID and watch it go.
        REQUIRE(new_master > 0);
        REQUIRE(::kill(new_master, SIGQUIT) == 0);
        CHECK(gone_within(new_master, 20s));
      }
      fs::remove_all(dir);
      CHECK(leaks.problems() == "");
    }
  }
}
