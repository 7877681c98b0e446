// pool_config::reuseport and a fork_exec upgrade whose new image fails
// after it attached its own steering program to the listener's reuseport
// group: the old master must attach its program again (pool.hpp calls
// forget_steering() when it reaps a failed new master), or the new image's
// program goes on steering new connections as the dead image wanted.
//
// The old master runs 3 workers and is told TTOU: it steers new
// connections to slots 0 and 1 ("mod 2") while slot 2 drains. USR2 at
// once, while slot 2 is still open: the new image inherits all three slots,
// so it wants 3 workers and attaches "mod 3", then dies before any worker
// of its own is ready. Afterwards no new connection may reach the draining
// slot 2, every connection is answered by a live old worker, and slot 2 is
// retired as it would have been. The master is this test binary run as a
// helper (upgrade_harness.hpp), so its startup_argv() runs the helper
// again; a switch file dooms the new image.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <string_view>

#include <prefork/pool.hpp>
#include <prefork/process.hpp>

#include "catch.hpp"
#include "helpers.hpp"
#include "leak_check.hpp"
#include "reuseport_harness.hpp"
#include "upgrade_harness.hpp"

using namespace upgrade_test;

namespace {

constexpr const char* doomed = "steer-then-die";

// The slot and worker pid that answer `n` fresh connections; a connection
// without an answer is counted in `unanswered`.
std::map<unsigned, std::set<pid_t>> answers(const std::string& address, int n, int& unanswered) {
  std::map<unsigned, std::set<pid_t>> seen;
  for (int i = 0; i < n; ++i) {
    prefork::fd sock = prefork::connect(address);
    auto [error, got] = read_to_eof(sock.get(), clock::now() + 10s);
    std::istringstream in(got);
    unsigned index = 0;
    pid_t pid = 0;
    if (!error.empty() || !(in >> index >> pid)) {
      ++unanswered;
      continue;
    }
    seen[index].insert(pid);
  }
  return seen;
}

}  // namespace

// WORKERS: a fork_exec reuseport pool on the listener of PREFORK_FDS whose
// workers answer each connection with "<slot> <pid>". When the switch file
// says so, this image is the doomed one: its workers exit at once, and the
// master dies when it first hears of that, which is on the round after the
// one that forked them and attached its steering program.
PREFORK_HELPER(steering_master) {
  if (argc != 1) return 2;
  const bool doom = boot_switch() == doomed;
  try {
    prefork::pool_config config;
    config.upgrade = prefork::upgrade_mode::fork_exec;
    config.workers = static_cast<unsigned>(std::stoul(argv[0]));
    config.reuseport = true;
    config.graceful_timeout = 5s;
    config.timeout = 10s;
    if (doom) {
      config.after_fork = [](prefork::worker&) { ::_exit(0); };
      config.log = [](std::string_view line) {
        prefork::detail::default_log(line);
        if (line.find(") exited") == std::string_view::npos) return;
        while (::wait(nullptr) > 0 || errno == EINTR) {
        }
        say("doomed master " + std::to_string(::getpid()) + ": steered, dying");
        ::_exit(3);
      };
    }
    prefork::master master(std::move(config));
    return master.run(reuseport_test::report_index);
  } catch (const std::exception& e) {
    say(std::string("master failed: ") + e.what());
    return 1;
  }
}

TEST_CASE("reuseport: a new image that steers, then dies before it is ready: the old master steers again",
          "[reuseport][upgrade][rollback]") {
  prefork::test::leak_check leaks;
  {
    helper_master m("prefork-steer");
    prefork::listen_options opts;
    opts.reuseport = true;
    prefork::fd listener = prefork::listen("127.0.0.1:0", opts);
    m.address = prefork::local_address(listener.get());
    m.master = spawn_master(prefork::test::helper_argv("steering_master", {"3"}), listener, m.log,
                            {"UPGRADE_TEST_SWITCH=" + m.switch_path.string()});
    listener.reset();
    for (int i = 0; i < 3; ++i) m.log.wait_for(") ready");
    const pid_t old = m.pid();
    const std::set<pid_t> workers = children_of(old);
    REQUIRE(workers.size() == 3);

    m.signal(SIGTTOU);
    m.log.wait_for("reuseport: slot 2 takes no new connections");
    int unanswered = 0;
    std::map<unsigned, std::set<pid_t>> before = answers(m.address, 60, unanswered);
    CHECK(before.count(2) == 0);

    m.set_switch(doomed);
    m.signal(SIGUSR2);
    const pid_t next = number_after(m.log.wait_for("upgrading: started new master pid "), "pid ");
    m.log.wait_for("doomed master " + std::to_string(next) + ": steered, dying");
    std::string failed = m.log.wait_for("upgrade failed");
    CHECK(failed.find("new master (pid " + std::to_string(next) + ") exited 3 before it was ready") !=
          std::string::npos);
    // A round of the old master after the one that reaped the new master,
    // so that round's steering is done.
    m.signal(SIGUSR1);
    m.log.wait_for("prefork[" + std::to_string(old) + "]: received SIGUSR1");

    // 60 connections: under a "mod 3" left behind, slot 2 takes none of
    // them with a chance of (2/3)^60, about 3e-11.
    std::map<unsigned, std::set<pid_t>> after = answers(m.address, 60, unanswered);
    CHECK(after.count(2) == 0);
    for (const auto& [index, pids] : after) {
      INFO("slot " << index);
      for (pid_t pid : pids) CHECK(workers.count(pid) == 1);
    }
    m.log.wait_for("slot 2 drained and retired");
    answers(m.address, 20, unanswered);
    CHECK(unanswered == 0);

    m.signal(SIGQUIT);
    m.log.wait_for("prefork[" + std::to_string(old) + "]: stop complete");
    std::optional<prefork::exit_status> how = m.master.wait_for(20s);
    REQUIRE(how);
    CHECK(how->describe() == "exited 0");
  }
  CHECK(leaks.problems() == "");
}
