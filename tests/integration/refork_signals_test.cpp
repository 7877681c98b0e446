// Refork with the master's other controls: TTIN, TTOU and WINCH while a mold
// is alive, max_rss, and a fork_exec upgrade (prefork-httpd) whose old
// master has a mold. The harness is pool_harness.hpp and refork_harness.hpp.
#include <signal.h>
#include <sys/wait.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "httpd_support.hpp"
#include "pool_harness.hpp"
#include "refork_harness.hpp"

using namespace pool_test;
using namespace refork_test;
namespace fs = std::filesystem;

namespace {

// Set by after_promotion in the mold only: a worker that has it was forked
// from the mold (the master's copy stays 0).
pid_t mold_marker = 0;

// Refork by hand (SIGURG), and each worker says "marker <pid> <mold_marker>"
// from after_fork: which process it was forked from.
prefork::pool_config& with_marker(prefork::pool_config& c) {
  c.refork = true;
  const int out = event_fd;
  auto announce = c.after_fork;
  c.after_fork = [announce, out](prefork::worker& w) {
    announce(w);
    line_reader::say(out, "marker " + std::to_string(::getpid()) + " " + std::to_string(mold_marker));
  };
  c.after_promotion = [](prefork::worker&) { mold_marker = ::getpid(); };
  return c;
}

// The mold_marker a worker inherited, from its "marker" line.
pid_t marker_of(pool& p, pid_t worker) {
  std::string line = p.ev.wait_for("marker " + std::to_string(worker) + " ");
  return static_cast<pid_t>(std::stol(line.substr(line.rfind(' ') + 1)));
}

// A pool of `n` workers of generation 2, forked from the mold; the mold's pid.
pid_t reforked(pool& p, std::size_t n) {
  p.start(n);
  serve_requests(p.address, 1);
  p.signal(SIGURG);
  pid_t mold = pid_in(p.ev.wait_for("is the mold of generation 2"));
  for (pid_t w : wait_new_generation(p, 2, n, n)) CHECK(marker_of(p, w) == mold);
  return mold;
}

std::size_t own_rss() {
  std::ifstream statm("/proc/self/statm");
  std::size_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
}

}  // namespace

TEST_CASE("refork: TTIN forks the new worker from the mold, and the master supervises it",
          "[refork][signals]") {
  prefork::test::leak_check leaks;
  {
    pool p(2, [](prefork::pool_config& c) { with_marker(c); });
    pid_t mold = reforked(p, 2);
    p.signal(SIGTTIN);
    pid_t added = pid_in(p.ev.wait_for("spawned by the mold"));
    p.ev.wait_for("(pid " + std::to_string(added) + ", generation 2) ready");
    CHECK(marker_of(p, added) == mold);  // the mold's memory, not the master's
    CHECK(prefork::test::parent_of(added) == p.pid());
    CHECK(p.board->ready() == 3);
    // Supervised: killed, it is reaped and replaced, again from the mold.
    ::kill(added, SIGKILL);
    p.ev.wait_for("(pid " + std::to_string(added) + ", generation 2) killed by SIGKILL");
    pid_t again = pid_in(p.ev.wait_for("spawned by the mold"));
    p.ev.wait_for("(pid " + std::to_string(again) + ", generation 2) ready");
    CHECK(marker_of(p, again) == mold);
    CHECK(prefork::test::parent_of(again) == p.pid());
    CHECK(children_of(p.pid()).size() == 4);  // three workers and the mold
    p.quit();
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("refork: TTOU stops workers, never the mold, down to none; TTIN then forks from the mold again",
          "[refork][signals]") {
  prefork::test::leak_check leaks;
  {
    pool p(2, [](prefork::pool_config& c) { with_marker(c); });
    pid_t mold = reforked(p, 2);
    std::set<pid_t> workers = children_of(p.pid());
    workers.erase(mold);
    REQUIRE(workers.size() == 2);
    for (std::size_t left : {1u, 0u}) {
      p.signal(SIGTTOU);
      std::string stopping = p.ev.wait_for("no longer wanted: asking it to stop");
      pid_t stopped = pid_in(stopping);
      CHECK(stopped != mold);
      CHECK(workers.count(stopped) == 1);
      p.ev.wait_for("(pid " + std::to_string(stopped) + ", generation 2) exited 0");
      workers.erase(stopped);
      std::set<pid_t> expected = workers;
      expected.insert(mold);
      CHECK(children_of(p.pid()) == expected);
      CHECK(p.board->ready() == left);
    }
    // No worker: the mold waits, warm, for the next one.
    CHECK(p.board->count(prefork::worker_state::mold) == 1);
    CHECK(p.ev.count("no longer wanted") == 2);
    p.signal(SIGTTIN);
    pid_t added = pid_in(p.ev.wait_for("spawned by the mold"));
    p.ev.wait_for("(pid " + std::to_string(added) + ", generation 2) ready");
    CHECK(marker_of(p, added) == mold);
    CHECK(serve_requests(p.address, 1) == added);
    p.quit();
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("refork: WINCH stops every worker and keeps the mold; TTIN forks from it, QUIT stops it",
          "[refork][signals]") {
  prefork::test::leak_check leaks;
  {
    pool p(2, [](prefork::pool_config& c) { with_marker(c); });
    pid_t mold = reforked(p, 2);
    p.signal(SIGWINCH);
    p.ev.wait_for("received SIGWINCH: stopping all workers");
    for (int i = 0; i < 2; ++i) p.ev.wait_for("generation 2) exited 0");
    CHECK(children_of(p.pid()) == std::set<pid_t>{mold});
    CHECK(p.board->ready() == 0);
    CHECK(p.board->count(prefork::worker_state::mold) == 1);
    p.signal(SIGTTIN);
    pid_t added = pid_in(p.ev.wait_for("spawned by the mold"));
    p.ev.wait_for("(pid " + std::to_string(added) + ", generation 2) ready");
    CHECK(marker_of(p, added) == mold);
    p.quit();
    p.ev.wait_for("(pid " + std::to_string(mold) + ", generation 1) exited 0");
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("refork: a worker above max_rss is replaced by one forked from the mold", "[refork][recycle]") {
  prefork::test::leak_check leaks;
  {
    const std::size_t limit = own_rss() + (32u << 20);  // a worker starts near our size; "grow" adds 64 MiB
    pool p(1, [&](prefork::pool_config& c) {
      with_marker(c);
      c.max_rss = limit;
    });
    pid_t mold = reforked(p, 1);
    client c(p.address);
    pid_t fat = static_cast<pid_t>(std::stol(c.ask("grow").substr(6)));
    c.close();
    CHECK(p.ev.wait_for("above max_rss").find("(pid " + std::to_string(fat) + ",") != std::string::npos);
    pid_t next = pid_in(p.ev.wait_for("spawned by the mold"));
    p.ev.wait_for("(pid " + std::to_string(next) + ", generation 2) ready");
    p.ev.wait_for("(pid " + std::to_string(fat) + ", generation 2) exited 0");
    CHECK(marker_of(p, next) == mold);
    CHECK(prefork::test::parent_of(next) == p.pid());
    CHECK(children_of(p.pid()) == std::set<pid_t>{mold, next});
    CHECK(serve_requests(p.address, 1) == next);
    p.quit();
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE(
    "refork: a fork_exec upgrade with a mold alive: the old master, its mold and workers go, no request lost",
    "[refork][upgrade][httpd]") {
  prefork::test::leak_check leaks;
  fs::path dir = fs::temp_directory_path() / ("prefork-refork-upgrade-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const fs::path pid_path = dir / "httpd.pid";
  {
    httpd_test::server s({"-w", "2", "--refork-after", "5", "--upgrade", "fork-exec", "--graceful-timeout",
                          "5", "-P", pid_path.string()});
    const pid_t old_master = s.pid();
    for (int i = 0; i < 12 && s.log().find("is the mold of generation 2") == std::string::npos; ++i)
      CHECK(httpd_test::get(s.port(), "/hello").status == 200);
    pid_t mold = pid_in(s.wait_log("is the mold of generation 2", 0));
    s.wait_log("refork complete", 0);
    std::set<pid_t> old = children_of(old_master);  // the mold and its two workers
    CHECK(old.size() == 3);
    CHECK(old.count(mold) == 1);
    httpd_test::hello_loop load(s.port());
    load.wait_for_more(50);
    s.signal(SIGUSR2);
    auto old_status = s.process().wait_for(std::chrono::duration_cast<std::chrono::milliseconds>(20s));
    REQUIRE(old_status);
    CHECK(old_status->describe() == "exited 0");
    // We are a subreaper (pool_harness.hpp): the old master's orphans are ours.
    std::ifstream in(pid_path);
    pid_t new_master = 0;
    in >> new_master;
    REQUIRE(new_master > 0);
    CHECK(new_master != old_master);
    load.wait_for_more(50);
    load.finish();
    INFO("server log:\n" << s.log());
    CHECK(load.failed() == 0);
    CHECK(load.served() >= 100);
    for (pid_t gone : old) CHECK(::kill(gone, 0) == -1);  // reaped by the old master before it exited
    std::set<pid_t> now = children_of(new_master);
    CHECK(now.size() >= 2);
    for (pid_t w : now) CHECK(old.count(w) == 0);
    CHECK(::kill(new_master, SIGQUIT) == 0);
    int status = 0;
    CHECK(::waitpid(new_master, &status, 0) == new_master);
    CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 0));
  }
  fs::remove_all(dir);
  CHECK(leaks.problems() == "");
}

TEST_CASE("refork: a worker above max_rss once promoted does not become the mold: no endless recycling",
          "[refork][recycle]") {
  prefork::test::leak_check leaks;
  {
    const std::size_t limit = own_rss() + (32u << 20);
    pool p(2, [&](prefork::pool_config& c) {
      with_marker(c);
      c.max_rss = limit;
      c.after_promotion = [](prefork::worker&) {  // warms up more than a worker may hold
        static std::vector<char> warm;
        warm.assign(64 << 20, 'x');
        mold_marker = ::getpid();
      };
    });
    std::set<pid_t> first = p.start(2);
    pid_t chosen = serve_requests(p.address, 1);
    p.signal(SIGURG);
    p.ev.wait_for("(pid " + std::to_string(chosen) + "): promoting to mold");
    p.ev.wait_for("above max_rss (" + std::to_string(limit) + "): every worker forked from it would be too");
    p.ev.wait_for("(pid " + std::to_string(chosen) + ") died before it became the mold");
    p.ev.wait_for("(pid " + std::to_string(chosen) + ", generation 1) exited 1");
    // Its replacement, from the master, and the other first worker serve on;
    // nothing is forked from it, nothing recycled (a worker checks its RSS
    // after every request).
    for (int i = 0; i < 20; ++i) serve_requests(p.address, 1);
    CHECK(children_of(p.pid()).size() == 2);
    p.signal(SIGTTIN);
    std::string spawned = p.ev.wait_for("worker 2 (pid ");
    CHECK(spawned.find("generation 1) spawned") != std::string::npos);
    CHECK(spawned.find("by the mold") == std::string::npos);
    pid_t added = pid_in(spawned);
    CHECK(marker_of(p, added) == 0);
    p.ev.wait_for("(pid " + std::to_string(added) + ", generation 1) ready");
    CHECK(p.ev.count("is the mold") == 0);
    CHECK(p.ev.count("is above max_rss") == 0);
    CHECK(p.board->ready() == 3);
    (void)first;
    p.quit();
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("refork: a worker the mold forked just before it stopped is still waited for",
          "[refork][signals]") {
  // TTIN then QUIT at once: the mold forks the worker, reads QUIT and exits,
  // and the worker may tell its pid only after the master has seen the mold
  // go. The master must wait for it, not take it for never started and
  // leave it behind. A race, so tried a number of times, with two spinning
  // processes to keep the CPUs busy: the worker is the late one more often.
  prefork::test::leak_check leaks;
  std::vector<prefork::child> spinners;
  for (int i = 0; i < 2; ++i) {
    std::optional<prefork::child> c = prefork::fork();
    if (!c)
      for (;;) {
      }
    spinners.push_back(std::move(*c));
  }
  const std::set<pid_t> busy{spinners[0].pid(), spinners[1].pid()};
  for (int round = 0; round < 20; ++round) {
    INFO("round " << round);
    {
      pool p(1, [](prefork::pool_config& c) { c.refork = true; });
      p.start(1);
      serve_requests(p.address, 1);
      p.signal(SIGURG);
      p.ev.wait_for("refork complete");
      p.signal(SIGTTIN);
      p.ev.wait_for("received SIGTTIN");
      p.signal(SIGQUIT);
      CHECK(p.wait_exit().describe() == "exited 0");
    }
    CHECK(prefork::test::zombie_child() == 0);
    CHECK(children_of(::getpid()) == busy);  // nothing of the pool's is left
  }
  for (prefork::child& c : spinners) {
    c.kill(SIGKILL);
    c.wait();
  }
  CHECK(leaks.problems() == "");
}
