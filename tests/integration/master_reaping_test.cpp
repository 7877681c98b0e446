// The master waits only for its own children (workers, a new master of
// fork_exec): a child that a hook of the program spawned in the master is
// the hook's to wait for, with its real exit status, as libuv leaves
// children it did not start alone.
#include <signal.h>
#include <sys/wait.h>

#include <memory>
#include <optional>
#include <string>

#include <prefork/spawn.hpp>

#include "pool_harness.hpp"

using namespace pool_test;

TEST_CASE("a child spawned by on_reload keeps its exit status for the hook that waits on it",
          "[pool][reload][reap]") {
  prefork::test::leak_check leaks;
  {
    // In the master: the child the first HUP started, waited for by the second.
    auto started = std::make_shared<std::optional<prefork::child>>();
    pool p(1, [started](prefork::pool_config& c) {
      c.on_reload = [started, out = event_fd] {
        if (!*started) {
          *started = prefork::spawn({"/bin/sh", "-c", "exit 7"});
          // Exited, not reaped: the master's next reaping round (right
          // after this hook) sees a dead child that is not its worker.
          siginfo_t info{};
          ::waitid(P_PID, static_cast<id_t>((*started)->pid()), &info, WEXITED | WNOWAIT);
          line_reader::say(out, "hook spawned " + std::to_string((*started)->pid()));
          return;
        }
        std::string how;
        try {
          how = (*started)->wait().describe();
        } catch (const std::exception& e) {
          how = std::string("wait failed: ") + e.what();
        }
        started->reset();
        line_reader::say(out, "hook child " + how);
      };
    });
    p.start(1);
    p.signal(SIGHUP);
    p.ev.wait_for("hook spawned ");
    p.wait_spawn();  // the reload's worker: the master reaped (or not) since the hook ran
    p.wait_ready(1);
    p.signal(SIGHUP);
    CHECK(p.ev.wait_for("hook child ") == "hook child exited 7");
    p.wait_spawn();
    p.wait_ready(1);
    CHECK(p.ev.count("reaped unknown child") == 0);
    client c(p.address);
    CHECK(!c.ask("pid").empty());
    c.close();
    p.quit();
  }
  CHECK(leaks.problems() == "");
}
