// The pool's supervision: heartbeat timeouts, crash loops, a dead master,
// recycling by max_requests and max_rss.
// Real processes, signals and 127.0.0.1 sockets; see pool_harness.hpp.
#include <sys/syscall.h>

#include "pool_harness.hpp"

using namespace pool_test;

namespace {

pid_t pid_of(const std::string& reply) {
  return static_cast<pid_t>(std::stol(reply.substr(reply.rfind(' ') + 1)));
}

double seconds_between(clock::time_point a, clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

template <class Done>
std::size_t min_ready_until(pool& p, Done done) {
  std::size_t fewest = p.board->ready();
  auto deadline = clock::now() + 20s;
  while (!done() && clock::now() < deadline)
    for (int i = 0; i < 1000; ++i) fewest = std::min(fewest, p.board->ready());
  REQUIRE(done());
  return fewest;
}

std::size_t own_rss() {
  std::ifstream statm("/proc/self/statm");
  std::size_t size = 0, rss = 0;
  statm >> size >> rss;
  return rss * static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
}

}  // namespace

TEST_CASE("a worker stuck in a request is killed after timeout and replaced; the log says who and what",
          "[pool][heartbeat]") {
  prefork::test::leak_check leaks;
  {
    pool p(2, [](prefork::pool_config& c) { c.timeout = 1s; });
    p.start(2);
    client c(p.address);
    auto asked = clock::now();
    pid_t stuck = pid_of(c.ask("stick"));
    std::string killed = p.ev.wait_for("killed with SIGKILL");
    double after = seconds_between(asked, clock::now());
    CHECK(after >= 0.9);
    CHECK(after < 5.0);
    CHECK(killed.find("pid " + std::to_string(stuck) + ",") != std::string::npos);
    CHECK(killed.find("silent for 1.") != std::string::npos);
    CHECK(killed.find("last activity \"stuck on purpose\"") != std::string::npos);
    CHECK(c.receive() == "");  // its connection died with it
    pid_t replacement = p.wait_spawn();
    p.wait_ready(1);
    CHECK(children_of(p.pid()).size() == 2);
    CHECK(children_of(p.pid()).count(replacement) == 1);
    p.quit();
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("an idle worker is never killed for silence", "[pool][heartbeat]") {
  prefork::test::leak_check leaks;
  {
    // A timeout of 1 s (a tick every 250 ms) leaves 750 ms for a worker to
    // be scheduled late on a loaded machine; with 200 ms this test once saw
    // kills at a load average of 15 on 2 cores.
    pool p(2, [](prefork::pool_config& c) { c.timeout = 1s; });
    std::set<pid_t> first = p.start(2);
    // Two and a half timeouts of idleness, watching the log all along: the
    // workers tick from inside accept(), so no kill line may come.
    for (auto end = clock::now() + 2500ms; clock::now() < end && p.ev.count("SIGKILL") == 0;)
      p.ev.pump(static_cast<int>(
                    std::chrono::duration_cast<std::chrono::milliseconds>(end - clock::now()).count()) +
                1);
    CHECK(p.ev.count("SIGKILL") == 0);
    CHECK(children_of(p.pid()) == first);
    CHECK(p.ev.count("spawned") == 2);
    p.quit();
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("a crash-looping worker is respawned with growing back-off; the master stays up and stops cleanly",
          "[pool][crash]") {
  prefork::test::leak_check leaks;
  {
    auto crash = [](prefork::worker&) { ::_exit(3); };
    pool p(1, {}, crash);
    std::vector<clock::time_point> spawns;
    for (int i = 0; i < 6; ++i) {
      p.wait_spawn();
      spawns.push_back(clock::now());
    }
    // Deaths 2, 3, 4, 5 are followed by 0.1, 0.2, 0.4, 0.8s of back-off.
    double last_gap = seconds_between(spawns[4], spawns[5]);
    CHECK(last_gap >= 0.75);
    CHECK(last_gap > seconds_between(spawns[2], spawns[3]) * 2);
    CHECK(p.ev.count("exited 3") >= 5);
    CHECK(p.ev.count("died within a second of starting 5 times in a row, respawning in 0.80s") == 1);
    CHECK(p.master.try_wait() == std::nullopt);
    p.quit();
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("SIGKILL of the master: every worker exits by itself at once, even idle in accept",
          "[pool][orphan]") {
  prefork::test::leak_check leaks;
  {
    // A long timeout: the workers' poll would not wake on its own for
    // seconds, so only end of file on the control pipe can end them.
    pool p(3, [](prefork::pool_config& c) { c.timeout = 60s; });
    std::set<pid_t> workers = p.start(3);
    auto killed_at = clock::now();
    p.master.kill(SIGKILL);
    CHECK(p.master.wait().describe() == "killed by SIGKILL");
    // We are the subreaper: the orphans are our children now.
    for (pid_t w : workers) {
      prefork::child orphan = prefork::child::adopt(w);
      std::optional<prefork::exit_status> how = orphan.wait_for(5s);
      REQUIRE(how);
      CHECK(how->describe() == "exited 0");
    }
    CHECK(seconds_between(killed_at, clock::now()) < 2.0);
    CHECK(p.ev.count("the master is gone") == 3);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("max_requests replaces a worker, new one first: never fewer than N ready", "[pool][recycle]") {
  prefork::test::leak_check leaks;
  {
    pool p(2, [](prefork::pool_config& c) { c.max_requests = 5; });  // 5/10 = 0: no jitter
    std::set<pid_t> first = p.start(2);
    // One connection with 5 requests: its worker reaches the limit.
    client c(p.address);
    pid_t busy = pid_of(c.ask("pid"));
    for (int i = 0; i < 3; ++i) CHECK(pid_of(c.ask("pid")) == busy);
    bool sent = false;
    std::size_t fewest = min_ready_until(p, [&] {
      // The fifth request happens inside the watch, as does the hand-over.
      if (!sent) {
        sent = true;
        CHECK(pid_of(c.ask("pid")) == busy);
        c.close();
      }
      return p.ev.count("exited 0") == 1 && p.board->ready() == 2;
    });
    CHECK(fewest >= 2);
    std::string why = p.ev.wait_for("max_requests 5");
    CHECK(why.find("pid " + std::to_string(busy) + ",") != std::string::npos);
    CHECK(why.find("served 5 requests") != std::string::npos);
    CHECK(p.ev.wait_for("exited 0").find("pid " + std::to_string(busy) + ",") != std::string::npos);
    std::set<pid_t> now = children_of(p.pid());
    CHECK(now.size() == 2);
    CHECK(now.count(busy) == 0);
    p.quit();
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("max_rss replaces a worker that grew, new one first: never fewer than N ready", "[pool][recycle]") {
  prefork::test::leak_check leaks;
  {
    const std::size_t limit = own_rss() + (32u << 20);  // a worker starts near our size; "grow" adds 64 MiB
    pool p(2, [&](prefork::pool_config& c) { c.max_rss = limit; });
    p.start(2);
    client c(p.address);
    pid_t fat = 0;
    std::size_t fewest = min_ready_until(p, [&] {
      if (fat == 0) {
        fat = pid_of(c.ask("grow"));
        c.close();
      }
      return p.ev.count("exited 0") == 1 && p.board->ready() == 2;
    });
    CHECK(fewest >= 2);
    CHECK(p.ev.wait_for("above max_rss").find("pid " + std::to_string(fat) + ",") != std::string::npos);
    CHECK(p.ev.wait_for("exited 0").find("pid " + std::to_string(fat) + ",") != std::string::npos);
    CHECK(children_of(p.pid()).count(fat) == 0);
    CHECK(children_of(p.pid()).size() == 2);
    p.quit();
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("a worker hanging in after_fork, before its first tick, is killed after timeout too",
          "[pool][heartbeat]") {
  prefork::test::leak_check leaks;
  char dir[] = "/tmp/prefork-hang-XXXXXX";
  REQUIRE(::mkdtemp(dir) != nullptr);
  const std::string marker = std::string(dir) + "/hung";
  {
    // The first worker to start hangs; its replacement does not.
    auto hang_once = [&](prefork::pool_config& c) {
      c.timeout = 1s;
      auto announce = c.after_fork;
      c.after_fork = [announce, marker](prefork::worker& w) {
        announce(w);
        int f = ::open(marker.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
        if (f == -1) return;
        ::close(f);
        w.status("hanging in after_fork");
        for (;;) ::pause();
      };
    };
    pool p(1, hang_once);
    pid_t hung = p.wait_spawn();
    std::string killed = p.ev.wait_for("killed with SIGKILL");
    CHECK(killed.find("pid " + std::to_string(hung) + ",") != std::string::npos);
    CHECK(killed.find("\"hanging in after_fork\"") != std::string::npos);
    pid_t next = p.wait_spawn();
    p.wait_ready(1);
    CHECK(std::stol(client(p.address).ask("pid")) == next);
    p.quit();
  }
  ::unlink(marker.c_str());
  ::rmdir(dir);
  CHECK(leaks.problems() == "");
}
