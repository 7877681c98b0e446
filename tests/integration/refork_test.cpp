// Refork (refork.hpp): a warm worker promoted to mold, the next generation
// forked from it yet supervised by the master as its own children.
#include <signal.h>

#include <set>
#include <string>
#include <vector>

#include "pool_harness.hpp"
#include "refork_harness.hpp"

using namespace pool_test;
using namespace refork_test;

TEST_CASE("refork_after: the mold forks the next generation, the master's children, and never serves",
          "[refork]") {
  prefork::test::leak_check leaks;
  {
    pool p(2, [](prefork::pool_config& c) { c.refork_after = {5}; });
    std::set<pid_t> first = p.start(2);
    pid_t busiest = serve_requests(p.address, 6);
    std::string line = p.ev.wait_for("is the mold of generation 2");
    pid_t mold = pid_in(line);
    CHECK(mold == busiest);
    // Two old ones exit: the other first worker and the one the master
    // started to replace the chosen worker before its promotion.
    std::set<pid_t> born = wait_new_generation(p, 2, 2, 2);
    // Re-parented: the master waits for them, signals them, times them out.
    for (pid_t w : born) CHECK(prefork::test::parent_of(w) == p.pid());
    std::set<pid_t> expected = born;
    expected.insert(mold);
    CHECK(children_of(p.pid()) == expected);
    CHECK(p.board->ready() == 2);
    CHECK(p.board->count(prefork::worker_state::mold) == 1);
    // Twenty connections, each served by a worker of the new generation.
    for (int i = 0; i < 20; ++i) CHECK(born.count(serve_requests(p.address, 1)) == 1);
    (void)first;
    p.quit();
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("refork: a worker from the mold that dies is reaped and replaced from the mold", "[refork]") {
  prefork::test::leak_check leaks;
  {
    pool p(2, [](prefork::pool_config& c) { c.refork_after = {3}; });
    p.start(2);
    serve_requests(p.address, 4);
    p.ev.wait_for("is the mold of generation 2");
    std::set<pid_t> born = wait_new_generation(p, 2, 2, 2);
    p.signal(SIGUSR1);  // reopen logs: for workers only, never a stray byte on the mold's channel
    p.ev.wait_for("received SIGUSR1");
    pid_t victim = *born.begin();
    ::kill(victim, SIGKILL);
    p.ev.wait_for("(pid " + std::to_string(victim) + ", generation 2) killed by SIGKILL");
    pid_t again = pid_in(p.ev.wait_for("spawned by the mold"));
    p.ev.wait_for("(pid " + std::to_string(again) + ", generation 2) ready");
    CHECK(prefork::test::parent_of(again) == p.pid());
    CHECK(p.board->ready() == 2);
    p.quit();
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("refork: a dead mold is replaced from the master, and the next promotion makes a new one",
          "[refork]") {
  prefork::test::leak_check leaks;
  {
    pool p(2, [](prefork::pool_config& c) { c.refork = true; });
    p.start(2);
    serve_requests(p.address, 2);
    p.signal(SIGURG);
    pid_t mold = pid_in(p.ev.wait_for("is the mold of generation 2"));
    wait_new_generation(p, 2, 2, 2);
    ::kill(mold, SIGKILL);
    p.ev.wait_for("is gone: new workers are forked from the master");
    p.signal(SIGTTIN);  // one more worker: from the master now
    std::string spawned = p.ev.wait_for("generation 2) spawned");
    CHECK(spawned.find("by the mold") == std::string::npos);
    p.ev.wait_for("generation 2) ready");
    p.signal(SIGURG);
    pid_t next = pid_in(p.ev.wait_for("is the mold of generation 3"));
    CHECK(next != mold);
    wait_new_generation(p, 3, 3, 3);
    CHECK(p.board->ready() == 3);
    p.quit();
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("refork: HUP forks from the master again and the refork_after counts start over", "[refork]") {
  prefork::test::leak_check leaks;
  {
    pool p(2, [](prefork::pool_config& c) { c.refork_after = {3}; });
    p.start(2);
    serve_requests(p.address, 4);
    pid_t mold = pid_in(p.ev.wait_for("is the mold of generation 2"));
    wait_new_generation(p, 2, 2, 2);
    p.signal(SIGHUP);
    for (int i = 0; i < 2; ++i) {
      std::string spawned = p.ev.wait_for("generation 3) spawned");
      CHECK(spawned.find("by the mold") == std::string::npos);
    }
    p.ev.wait_for("(pid " + std::to_string(mold) + ", generation 1) exited 0");  // the mold goes
    p.wait_ready(2);
    for (int i = 0; i < 2; ++i) p.ev.wait_for("generation 2) exited 0");
    serve_requests(p.address, 4);
    p.ev.wait_for("is the mold of generation 4");
    wait_new_generation(p, 4, 2, 2);
    p.quit();
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("refork: max_requests replaces a worker with one forked from the mold", "[refork]") {
  prefork::test::leak_check leaks;
  {
    pool p(1, [](prefork::pool_config& c) {
      c.refork_after = {2};
      c.max_requests = 20;
    });
    p.start(1);
    serve_requests(p.address, 3);
    p.ev.wait_for("is the mold of generation 2");
    pid_t born = *wait_new_generation(p, 2, 1, 1).begin();
    serve_requests(p.address, 25);  // max_requests (with up to 10% jitter) on one connection
    p.ev.wait_for("(pid " + std::to_string(born) + ", generation 2) served");
    pid_t next = pid_in(p.ev.wait_for("spawned by the mold"));
    p.ev.wait_for("(pid " + std::to_string(born) + ", generation 2) exited 0");
    CHECK(serve_requests(p.address, 1) == next);
    p.quit();
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("refork off: SIGURG is ignored with a log line", "[refork]") {
  prefork::test::leak_check leaks;
  {
    pool p(1);
    p.start(1);
    p.signal(SIGURG);
    p.ev.wait_for("refork asked for: ignored");
    serve_requests(p.address, 1);
    p.quit();
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("refork with reuseport is refused before any fork", "[refork][errors]") {
  prefork::pool_config c;
  c.refork_after = {10};
  c.reuseport = true;
  prefork::listen_options opts;
  opts.reuseport = true;
  c.listeners.push_back(prefork::listen("127.0.0.1:0", opts));
  CHECK_THROWS_AS(prefork::master(std::move(c)), std::invalid_argument);
}

TEST_CASE("refork: a hung mold is killed for silence, and workers come from the master again", "[refork]") {
  prefork::test::leak_check leaks;
  {
    pool p(1, [](prefork::pool_config& c) {
      c.refork = true;
      c.timeout = 1500ms;
    });
    p.start(1);
    serve_requests(p.address, 1);
    p.signal(SIGURG);
    pid_t mold = pid_in(p.ev.wait_for("is the mold of generation 2"));
    wait_new_generation(p, 2, 1, 1);
    ::kill(mold, SIGSTOP);
    p.ev.wait_for("(pid " + std::to_string(mold) + ", generation 1) silent for");
    p.ev.wait_for("is gone: new workers are forked from the master");
    p.signal(SIGTTIN);
    std::string spawned = p.ev.wait_for("generation 2) spawned");
    CHECK(spawned.find("by the mold") == std::string::npos);
    p.ev.wait_for("generation 2) ready");
    CHECK(p.board->ready() == 2);
    p.quit();
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("refork: a promoted worker that does not finish its request in time is stopped, not left half-mold",
          "[refork]") {
  prefork::test::leak_check leaks;
  {
    pool p(1, [](prefork::pool_config& c) {
      c.refork = true;
      c.graceful_timeout = 1s;
    });
    pid_t stuck = *p.start(1).begin();
    client holder(p.address);
    CHECK(holder.ask("hold") == "holding " + std::to_string(stuck));
    p.signal(SIGURG);
    p.ev.wait_for("to be promoted to mold");
    p.ev.wait_for("generation 1) ready");  // its replacement, from the master
    p.ev.wait_for("(pid " + std::to_string(stuck) + "): promoting to mold");
    p.ev.wait_for("(pid " + std::to_string(stuck) +
                  ", generation 1) did not become the mold within graceful_timeout");
    p.ev.wait_for("(pid " + std::to_string(stuck) +
                  ", generation 1) did not finish within graceful_timeout: SIGKILL");
    p.ev.wait_for("(pid " + std::to_string(stuck) + ", generation 1) killed by SIGKILL");
    CHECK(p.ev.count("is the mold") == 0);
    CHECK(serve_requests(p.address, 1) != stuck);
    p.quit();
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("refork: a mold with a second thread refuses to fork, and the master forks instead", "[refork]") {
  prefork::test::leak_check leaks;
  {
    pool p(1, [](prefork::pool_config& c) {
      c.refork = true;
      auto announce = c.after_fork;
      c.after_fork = [announce](prefork::worker& w) {
        announce(w);
        std::thread([] {
          for (;;) ::pause();
        }).detach();
      };
    });
    p.start(1);
    serve_requests(p.address, 1);
    p.signal(SIGURG);
    p.ev.wait_for("is the mold of generation 2");
    p.ev.wait_for("cannot fork with ");  // "2 threads" (sanitizers may add their own)
    p.ev.wait_for("is gone: new workers are forked from the master");
    std::string spawned = p.ev.wait_for("generation 2) spawned");
    CHECK(spawned.find("by the mold") == std::string::npos);
    p.ev.wait_for("generation 2) ready");
    CHECK(serve_requests(p.address, 1) > 0);
    p.quit();
  }
  CHECK(leaks.problems() == "");
}
