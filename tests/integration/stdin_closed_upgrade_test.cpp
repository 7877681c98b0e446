// A master started with stdin closed: its listener is descriptor 0, and a
// fork_exec upgrade must still hand it to the new master (spawn's fd mapping
// once refused "fd 0 in the child is mapped more than once", because 0 was
// both the listener and stdin). The master is this test binary run as a
// helper; a client loop connects all along and every exchange must succeed.
#include <signal.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include <prefork/pool.hpp>
#include <prefork/process.hpp>

#include "catch.hpp"
#include "helpers.hpp"
#include "leak_check.hpp"
#include "upgrade_harness.hpp"

using namespace upgrade_test;
namespace fs = std::filesystem;

// The master: PID_FILE. Started with 0 closed, it listens and gets 0; a new
// image finds its listener in PREFORK_FDS.
PREFORK_HELPER(stdin_closed_master) {
  if (argc != 1) return 2;
  try {
    prefork::pool_config config;
    config.upgrade = prefork::upgrade_mode::fork_exec;
    config.workers = 1;
    config.timeout = std::chrono::seconds(10);
    config.graceful_timeout = std::chrono::seconds(2);
    config.upgrade_timeout = std::chrono::seconds(20);
    config.pid_file = argv[0];
    std::vector<prefork::fd> inherited = prefork::inherited_fds();
    if (inherited.empty()) inherited.push_back(prefork::listen("127.0.0.1:0"));
    say("boot " + std::to_string(::getpid()) + ": listener at fd " + std::to_string(inherited[0].get()) +
        " " + prefork::local_address(inherited[0].get()));
    config.listeners = std::move(inherited);
    prefork::master master(std::move(config));
    return master.run(echo);
  } catch (const std::exception& e) {
    say(std::string("master failed: ") + e.what());
    return 1;
  }
}

TEST_CASE("fork_exec: a master started with stdin closed, its listener at fd 0, upgrades",
          "[upgrade][fork_exec][stdin]") {
  prefork::test::leak_check leaks;
  char dir_template[] = "/tmp/prefork-stdin-XXXXXX";
  REQUIRE(::mkdtemp(dir_template) != nullptr);
  const fs::path dir = dir_template, pid_path = dir / "master.pid";
  {
    prefork::test::line_reader log;
    prefork::spawn_options options;
    options.fds = {{1, 1}, {log.write_fd(), 2}};
    options.inherit_stdio = false;  // no stdin at all
    prefork::child master =
        prefork::spawn(prefork::test::helper_argv("stdin_closed_master", {pid_path.string()}), options);
    log.close_write();
    const std::string p = "prefork[" + std::to_string(master.pid()) + "]: ";
    std::string boot = log.wait_for("boot " + std::to_string(master.pid()) + ": listener at fd ");
    REQUIRE(boot.find("listener at fd 0 ") != std::string::npos);
    const std::string address = boot.substr(boot.rfind(' ') + 1);
    log.wait_for(") ready");

    client_loop load(address);
    load.wait_progress(10);
    ::kill(master.pid(), SIGUSR2);
    // Before the fix: "upgrade failed: spawn ...: fd 0 in the child is mapped more than once".
    pid_t next =
        number_after(log.wait_for(p + "received SIGUSR2: upgrading: started new master pid "), "pid ");
    log.wait_for("boot " + std::to_string(next) + ": listener at fd 0 " + address);
    log.wait_for(p + "stop complete");
    std::optional<prefork::exit_status> old_end = master.wait_for(std::chrono::seconds(20));
    REQUIRE(old_end);
    CHECK(old_end->describe() == "exited 0");
    master = prefork::child::adopt(next);  // ours: we are the subreaper
    CHECK(prefork::pid_file::read(pid_path) == next);
    load.finish();

    ::kill(next, SIGQUIT);
    log.wait_for("prefork[" + std::to_string(next) + "]: stop complete");
    std::optional<prefork::exit_status> end = master.wait_for(std::chrono::seconds(20));
    REQUIRE(end);
    CHECK(end->describe() == "exited 0");
  }
  std::error_code ec;
  fs::remove_all(dir, ec);
  CHECK(leaks.problems() == "");
}
