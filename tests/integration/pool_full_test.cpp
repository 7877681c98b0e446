// A pool with no spare slot: max_workers == workers. New-first replacement
// (HUP, max_requests) cannot start a new worker beside the old one, so the
// workers are replaced one at a time, the old one first, and the log says
// so; the pool never waits silently for a slot that nobody frees.
#include <set>
#include <sstream>
#include <string>

#include "pool_harness.hpp"

using namespace pool_test;

namespace {

struct spawned {
  unsigned index = 0, generation = 0;
  pid_t pid = 0;
};

// The next "spawn INDEX GENERATION PID" line the pool's after_fork wrote.
spawned next_spawn(pool& p) {
  std::istringstream words(p.ev.wait_for("spawn "));
  std::string word;
  spawned s;
  words >> word >> s.index >> s.generation >> s.pid;
  return s;
}

pid_t pid_of(const std::string& answer) { return static_cast<pid_t>(std::stol(answer)); }

}  // namespace

TEST_CASE("HUP with max_workers == workers replaces the workers one at a time", "[pool][reload][full]") {
  prefork::test::leak_check leaks;
  {
    pool p(2, [](prefork::pool_config& c) { c.max_workers = 2; });
    std::set<pid_t> first = p.start(2);
    p.signal(SIGHUP);
    // The old worker goes first, and the log says why.
    std::string making_room = p.ev.wait_for("no free slot for worker");
    CHECK(making_room.find("one at a time") != std::string::npos);
    std::set<pid_t> second;
    for (int i = 0; i < 2; ++i) {
      spawned s = next_spawn(p);
      CHECK(s.generation == 2);
      CHECK(first.count(s.pid) == 0);
      second.insert(s.pid);
    }
    p.wait_ready(2);
    for (int i = 0; i < 2; ++i) p.ev.wait_for("exited 0");
    CHECK(children_of(p.pid()) == second);
    client c(p.address);
    CHECK(second.count(pid_of(c.ask("pid"))) == 1);
    c.close();
    p.quit();
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("max_requests with max_workers == workers stops the worker, then replaces it",
          "[pool][recycle][full]") {
  prefork::test::leak_check leaks;
  {
    pool p(2, [](prefork::pool_config& c) {
      c.max_workers = 2;
      c.max_requests = 3;  // 3/10 = 0: no jitter
    });
    std::set<pid_t> first = p.start(2);
    client c(p.address);
    pid_t busy = pid_of(c.ask("pid"));
    for (int i = 0; i < 2; ++i) CHECK(pid_of(c.ask("pid")) == busy);
    c.close();
    p.ev.wait_for("max_requests 3");
    CHECK(p.ev.wait_for("no free slot for worker").find("pid " + std::to_string(busy) + ",") !=
          std::string::npos);
    CHECK(p.ev.wait_for("exited 0").find("pid " + std::to_string(busy) + ",") != std::string::npos);
    spawned s = next_spawn(p);
    CHECK(first.count(s.pid) == 0);
    p.wait_ready(1);
    std::set<pid_t> now = children_of(p.pid());
    CHECK(now.size() == 2);
    CHECK(now.count(busy) == 0);
    CHECK(now.count(s.pid) == 1);
    p.quit();
  }
  CHECK(leaks.problems() == "");
}
