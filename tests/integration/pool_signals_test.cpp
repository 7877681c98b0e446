// The master's signals: TTIN/TTOU, WINCH, HUP, USR1. USR2, the upgrade, needs a
// master that can re-execute itself: upgrade_test.cpp.
// Real processes, signals and 127.0.0.1 sockets; see pool_harness.hpp.
#include <atomic>
#include <memory>
#include <thread>

#include "pool_harness.hpp"

using namespace pool_test;

namespace {

pid_t pid_of(const std::string& reply) { return static_cast<pid_t>(std::stol(reply)); }

// Watches the scoreboard until `done` says so; returns the fewest ready
// workers seen. Reads shared memory in a tight loop: a dip lasting a few
// microseconds would show.
template <class Done>
std::size_t min_ready_until(pool& p, Done done) {
  std::size_t fewest = p.board->ready();
  auto deadline = clock::now() + 20s;
  while (!done() && clock::now() < deadline)
    for (int i = 0; i < 1000; ++i) fewest = std::min(fewest, p.board->ready());
  REQUIRE(done());
  return fewest;
}

}  // namespace

TEST_CASE("TTIN adds a worker, TTOU removes one", "[pool][ttin]") {
  prefork::test::leak_check leaks;
  {
    pool p(2);
    p.start(2);
    p.signal(SIGTTIN);
    p.ev.wait_for("received SIGTTIN: now 3 workers");
    pid_t third = p.wait_spawn();
    p.wait_ready(1);
    CHECK(children_of(p.pid()).size() == 3);
    CHECK(children_of(p.pid()).count(third) == 1);
    p.signal(SIGTTOU);
    p.ev.wait_for("received SIGTTOU: now 2 workers");
    CHECK(p.ev.wait_for("no longer wanted").find("worker 2 ") != std::string::npos);
    CHECK(p.ev.wait_for("exited 0").find("pid " + std::to_string(third) + ",") != std::string::npos);
    CHECK(children_of(p.pid()).size() == 2);
    // One at a time: the kernel merges a signal sent while one is pending.
    p.signal(SIGTTOU);
    p.ev.wait_for("now 1 workers");
    p.signal(SIGTTOU);
    p.ev.wait_for("now 0 workers");
    p.ev.wait_for("exited 0");
    p.ev.wait_for("exited 0");
    CHECK(children_of(p.pid()).empty());
    p.quit();
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("WINCH without a terminal stops the workers, keeps the master and its queue", "[pool][winch]") {
  prefork::test::leak_check leaks;
  {
    pool p(2);
    p.start(2);
    const std::size_t fds = fd_count(p.pid());
    p.signal(SIGWINCH);
    p.ev.wait_for("received SIGWINCH: stopping all workers");
    p.ev.wait_for("exited 0");
    p.ev.wait_for("exited 0");
    CHECK(children_of(p.pid()).empty());
    CHECK(p.board->ready() == 0);
    // The listening socket stays open in the master: the kernel queues.
    client c(p.address);
    c.send("pid");
    CHECK(c.receive(100ms) == "");  // nobody serves it yet
    p.signal(SIGTTIN);
    pid_t next = p.wait_spawn();
    CHECK(pid_of(c.receive()) == next);   // the queued connection is served
    CHECK(fd_count(p.pid()) == fds - 1);  // one control pipe instead of two
    c.close();
    p.quit();
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("HUP reloads and replaces every worker, never fewer than N ready", "[pool][hup]") {
  prefork::test::leak_check leaks;
  {
    pool p(3, [](prefork::pool_config& c) {
      auto log = c.log;  // the hook reports through the test's event pipe
      c.on_reload = [log] { log("on_reload ran"); };
    });
    std::set<pid_t> old = p.start(3);
    const std::size_t fds = fd_count(p.pid());
    for (int round = 2; round <= 3; ++round) {
      p.signal(SIGHUP);
      std::size_t exited = 0;
      std::size_t fewest = min_ready_until(p, [&] {
        exited = p.ev.count("exited 0");
        return exited == 3u * static_cast<unsigned>(round - 1) && p.board->ready() == 3;
      });
      CHECK(fewest >= 3);
      CHECK(p.ev.count("on_reload ran") == static_cast<std::size_t>(round - 1));
      std::set<pid_t> now;
      for (int i = 0; i < 3; ++i) {
        std::string line = p.ev.wait_for("spawn ");
        CHECK(line.find(" " + std::to_string(round) + " ") != std::string::npos);  // the new generation
        now.insert(static_cast<pid_t>(std::stol(line.substr(line.rfind(' ') + 1))));
      }
      CHECK(children_of(p.pid()) == now);
      for (std::size_t i = 0; i < p.board->size(); ++i) {
        prefork::worker_info w = p.board->slot(i);
        if (w.state != prefork::worker_state::free) CHECK(w.generation == static_cast<unsigned>(round));
      }
      for (pid_t gone : old) CHECK(now.count(gone) == 0);
      old = now;
    }
    CHECK(fd_count(p.pid()) == fds);
    p.quit();
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("USR1 reaches on_reopen_logs in the master and in every worker", "[pool][usr1]") {
  prefork::test::leak_check leaks;
  {
    pool p(3, [](prefork::pool_config& c) {
      auto log = c.log;
      c.on_reopen_logs = [log] { log("reopen " + std::to_string(::getpid())); };
    });
    std::set<pid_t> everyone = p.start(3);
    everyone.insert(p.pid());
    p.signal(SIGUSR1);
    std::set<pid_t> reopened;
    for (int i = 0; i < 4; ++i) {
      std::string line = p.ev.wait_for("reopen ");
      reopened.insert(static_cast<pid_t>(std::stol(line.substr(7))));
    }
    CHECK(reopened == everyone);
    // Still serving, nobody replaced.
    CHECK(everyone.count(pid_of(client(p.address).ask("pid"))) == 1);
    CHECK(p.ev.count("spawned") == 3);
    p.quit();
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("on_ready runs in the master once the workers are all ready: at start and after HUP",
          "[pool][on_ready]") {
  prefork::test::leak_check leaks;
  {
    pool p(2, [](prefork::pool_config& c) {
      auto log = c.log;
      c.on_ready = [log] { log("on_ready in " + std::to_string(::getpid())); };
    });
    p.start(2);
    CHECK(p.ev.wait_for("on_ready in ") == "on_ready in " + std::to_string(p.pid()));
    p.signal(SIGHUP);
    for (int i = 0; i < 2; ++i) p.wait_spawn();
    CHECK(p.ev.wait_for("on_ready in ") == "on_ready in " + std::to_string(p.pid()));
    CHECK(p.ev.count("on_ready in ") == 2);
    p.quit();
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("a worker that never waits for a connection (the accept fast path) still sees QUIT",
          "[pool][quit]") {
  prefork::test::leak_check leaks;
  {
    pool p(1);
    p.start(1);
    // Keep a connection always queued, so accept() never needs to poll.
    std::atomic<bool> done{false};
    std::atomic<int> served{0};
    std::thread load([&] {
      std::vector<std::unique_ptr<client>> queued;
      while (!done) {
        queued.push_back(std::make_unique<client>(p.address));
        queued.push_back(std::make_unique<client>(p.address));
        if (queued.front()->ask("pid").empty()) break;  // the pool has stopped serving
        ++served;
        queued.erase(queued.begin());
        if (queued.size() > 8) queued.erase(queued.begin());
      }
    });
    const auto warm_until = std::chrono::steady_clock::now() + 20s;
    while (served < 50 && !done && std::chrono::steady_clock::now() < warm_until) std::this_thread::yield();
    if (served < 50) {
      done = true;
      load.join();
      FAIL("the pool served " << served << " requests, not 50, before the deadline; log:\n"
                              << p.ev.transcript());
    }
    p.signal(SIGQUIT);
    CHECK(p.wait_exit().describe() == "exited 0");
    done = true;
    load.join();
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("mark_busy and mark_idle show in the scoreboard for workers with their own event loop",
          "[pool][scoreboard]") {
  prefork::test::leak_check leaks;
  {
    auto own_loop = [](prefork::worker& w) {
      w.tick();  // ready
      w.mark_busy();
      bool busy = w.scoreboard().slot(w.slot()).state == prefork::worker_state::busy;
      w.mark_idle();
      bool idle = w.scoreboard().slot(w.slot()).state == prefork::worker_state::idle;
      line_reader::say(event_fd,
                       std::string("states ") + (busy ? "busy" : "?") + " " + (idle ? "idle" : "?"));
      pollfd p{w.stop_fd(), POLLIN, 0};
      while (!w.stopping()) ::poll(&p, 1, 100);
      w.mark_busy();  // a stopping worker stays "stopping"
      line_reader::say(event_fd,
                       "after stop " + std::string(prefork::to_string(w.scoreboard().slot(w.slot()).state)));
    };
    pool p(1, {}, own_loop);
    p.start(1);
    CHECK(p.ev.wait_for("states ") == "states busy idle");
    p.signal(SIGQUIT);
    CHECK(p.ev.wait_for("after stop ") == "after stop stopping");
    CHECK(p.wait_exit().describe() == "exited 0");
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("WINCH with a controlling terminal is ignored, with a log line (resizing a terminal sends it)",
          "[pool][winch]") {
  prefork::test::leak_check leaks;
  {
    // In the master (a session leader without a terminal): open a new
    // pseudo-terminal without O_NOCTTY, which makes it the controlling one.
    auto take_a_terminal = [] {
      int master_side = ::posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
      if (master_side == -1 || ::grantpt(master_side) != 0 || ::unlockpt(master_side) != 0) ::_exit(4);
      const char* name = ::ptsname(master_side);
      if (name == nullptr || ::open(name, O_RDWR | O_CLOEXEC) == -1) ::_exit(5);
    };
    pool p(2, {}, serve, take_a_terminal);
    std::set<pid_t> workers = p.start(2);
    p.signal(SIGWINCH);
    p.ev.wait_for("received SIGWINCH: ignored, the master has a controlling terminal");
    CHECK(workers.count(pid_of(client(p.address).ask("pid"))) == 1);  // the same workers still serve
    CHECK(p.ev.count("exited") == 0);
    p.quit();
  }
  CHECK(leaks.problems() == "");
}
