// The prefork pool: workers, replacement after death, stops, bad input.
// Real processes, signals and 127.0.0.1 sockets; see pool_harness.hpp.
#include <sys/resource.h>

#include <sys/stat.h>

#include <condition_variable>
#include <filesystem>
#include <mutex>

#include "pool_harness.hpp"

using namespace pool_test;
namespace fs = std::filesystem;

namespace {

fs::path temp_dir() {
  char tmpl[] = "/tmp/prefork-pool-XXXXXX";
  REQUIRE(::mkdtemp(tmpl) != nullptr);
  return tmpl;
}

}  // namespace

TEST_CASE("the master forks N workers, its children, and every worker serves", "[pool]") {
  prefork::test::leak_check leaks;
  {
    pool p(4);
    std::set<pid_t> spawned = p.start(4);
    CHECK(children_of(p.pid()) == spawned);
    CHECK(p.board->ready() == 4);
    // Each worker serves one connection at a time, so four open
    // connections are served by four different workers.
    std::vector<std::unique_ptr<client>> clients;
    std::set<pid_t> served;
    for (int i = 0; i < 4; ++i) {
      clients.push_back(std::make_unique<client>(p.address));
      served.insert(static_cast<pid_t>(std::stol(clients.back()->ask("pid"))));
    }
    CHECK(served == spawned);
    CHECK(p.board->count(prefork::worker_state::busy) == 4);
    clients.clear();
    p.quit();
    CHECK(p.ev.count("stop complete") == 1);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("SIGKILL of a worker: a replacement serves and the count returns to N", "[pool]") {
  prefork::test::leak_check leaks;
  {
    pool p(3);
    p.start(3);
    const std::size_t fds = fd_count(p.pid());
    for (int round = 0; round < 3; ++round) {
      pid_t victim = static_cast<pid_t>(std::stol(client(p.address).ask("pid")));
      ::kill(victim, SIGKILL);
      CHECK(p.ev.wait_for("killed by SIGKILL").find("pid " + std::to_string(victim) + ",") !=
            std::string::npos);
      pid_t replacement = p.wait_spawn();
      p.wait_ready(1);
      std::set<pid_t> now = children_of(p.pid());
      CHECK(now.size() == 3);
      CHECK(now.count(replacement) == 1);
      CHECK(now.count(victim) == 0);
    }
    // Every worker serves, replacements included.
    std::vector<std::unique_ptr<client>> clients;
    std::set<pid_t> served;
    for (int i = 0; i < 3; ++i) {
      clients.push_back(std::make_unique<client>(p.address));
      served.insert(static_cast<pid_t>(std::stol(clients.back()->ask("pid"))));
    }
    CHECK(served == children_of(p.pid()));
    clients.clear();
    CHECK(fd_count(p.pid()) == fds);
    p.quit();
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("QUIT lets the request in hand complete, then exits 0 and removes the pid file", "[pool][quit]") {
  prefork::test::leak_check leaks;
  fs::path dir = temp_dir();
  fs::path pid_path = dir / "master.pid";
  {
    pool p(2, [&](prefork::pool_config& c) { c.pid_file = pid_path; });
    p.start(2);
    CHECK(prefork::pid_file::read(pid_path) == p.pid());
    client c(p.address);
    std::string held = c.ask("hold");
    REQUIRE(held.rfind("holding ", 0) == 0);
    p.signal(SIGQUIT);
    p.ev.wait_for("graceful stop");
    // The idle worker leaves; the busy one is still finishing.
    p.ev.wait_for("exited 0");
    CHECK(p.master.try_wait() == std::nullopt);
    c.send("finish");
    CHECK(c.receive() == "done " + held.substr(8));
    c.close();  // the worker is free to go
    CHECK(p.wait_exit().describe() == "exited 0");
    CHECK_FALSE(fs::exists(pid_path));
  }
  fs::remove_all(dir);
  CHECK(leaks.problems() == "");
}

TEST_CASE("TERM and INT stop at once, even with a stuck worker", "[pool][term]") {
  prefork::test::leak_check leaks;
  int sig = GENERATE(SIGTERM, SIGINT);
  {
    pool p(2);
    p.start(2);
    client c(p.address);
    REQUIRE(c.ask("stick").rfind("stuck ", 0) == 0);
    auto start = clock::now();
    p.signal(sig);
    CHECK(p.wait_exit().describe() == "exited 0");
    CHECK(clock::now() - start < 3s);
    CHECK(p.ev.count("quick stop") == 1);
    CHECK(c.receive() == "");  // the stuck worker is gone, and its connection with it
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("graceful_term: TERM finishes the requests in hand", "[pool][term]") {
  prefork::test::leak_check leaks;
  {
    pool p(1, [](prefork::pool_config& c) { c.graceful_term = true; });
    p.start(1);
    client c(p.address);
    std::string held = c.ask("hold");
    REQUIRE(held.rfind("holding ", 0) == 0);
    p.signal(SIGTERM);
    p.ev.wait_for("graceful stop");
    CHECK(p.master.try_wait() == std::nullopt);
    c.send("finish");
    CHECK(c.receive() == "done " + held.substr(8));
    c.close();
    CHECK(p.wait_exit().describe() == "exited 0");
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("bad input is refused with a clear error before any fork", "[pool][errors]") {
  prefork::test::leak_check leaks;
  auto config_with_listener = [] {
    prefork::pool_config c;
    c.listeners.push_back(prefork::listen("127.0.0.1:0"));
    c.log = [](std::string_view) {};
    return c;
  };
  auto noop = [](prefork::worker&) {};
  {
    prefork::pool_config c = config_with_listener();
    c.workers = 0;
    CHECK_THROWS_MATCHES(prefork::master(std::move(c)), std::invalid_argument,
                         Catch::Matchers::Message("pool_config: workers must be at least 1"));
  }
  {
    ::unsetenv("PREFORK_FDS");
    ::unsetenv("LISTEN_FDS");
    prefork::pool_config c;
    CHECK_THROWS_WITH(prefork::master(std::move(c)), Catch::Contains("no listeners"));
  }
  {
    prefork::pool_config c = config_with_listener();
    auto pipe = prefork::pipe();
    c.listeners.push_back(std::move(pipe.read));
    CHECK_THROWS_WITH(prefork::master(std::move(c)), Catch::Contains("is not a listening socket"));
  }
  {
    prefork::pool_config c = config_with_listener();
    c.listener_names = {"web", "admin"};
    CHECK_THROWS_WITH(prefork::master(std::move(c)),
                      Catch::Contains("pool_config: listener_names: 2 names for 1 descriptors"));
    prefork::pool_config d = config_with_listener();
    d.listener_names = {"web:admin"};
    CHECK_THROWS_WITH(prefork::master(std::move(d)), Catch::Contains("\"web:admin\" is empty or holds ':'"));
  }
  {
    prefork::pool_config c = config_with_listener();
    c.pid_file = "/nonexistent-prefork-dir/master.pid";
    prefork::master m(std::move(c));
    CHECK_THROWS_WITH(m.run(noop), Catch::Contains("/nonexistent-prefork-dir"));
  }
  {
    fs::path dir = temp_dir();
    {
      std::ofstream(dir / "master.pid") << ::getppid() << "\n";  // a live process
      prefork::pool_config c = config_with_listener();
      c.pid_file = dir / "master.pid";
      prefork::master m(std::move(c));
      CHECK_THROWS_WITH(m.run(noop),
                        Catch::Contains("already running as PID " + std::to_string(::getppid())));
    }
    fs::remove_all(dir);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("a master with a second thread refuses to fork, and says why", "[pool][errors]") {
  prefork::test::leak_check leaks;
  {
    prefork::pool_config c;
    c.listeners.push_back(prefork::listen("127.0.0.1:0"));
    prefork::master m(std::move(c));
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    std::thread other([&] {
      std::unique_lock<std::mutex> lock(mu);
      cv.wait(lock, [&] { return done; });
    });
    CHECK_THROWS_WITH(m.run([](prefork::worker&) {}),
                      Catch::Contains("refusing to fork with 2 threads") && Catch::Contains("after_fork"));
    {
      std::lock_guard<std::mutex> lock(mu);
      done = true;
    }
    cv.notify_one();
    other.join();
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("a master started with stderr closed still logs nowhere harmful and serves", "[pool]") {
  prefork::test::leak_check leaks;
  {
    // The default log (no config.log): it must not write into a socket or
    // pipe that took the number 2.
    auto quiet = [](prefork::pool_config& c) {
      c.log = nullptr;
      auto announce = c.after_fork;
      c.after_fork = [announce](prefork::worker& w) {
        w.tick();  // ready from here on
        announce(w);
      };
    };
    pool p(2, quiet, serve, [] { ::close(2); });
    p.wait_spawn();
    p.wait_spawn();
    CHECK(p.board->ready() == 2);
    for (int i = 0; i < 5; ++i) CHECK_FALSE(client(p.address).ask("pid").empty());
    p.quit();
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("stop_fd: readable for USR1 (stopping() false), then for good once stopping", "[pool][stop_fd]") {
  prefork::test::leak_check leaks;
  {
    // A worker with its own event loop, as an epoll server would have.
    auto loop = [](prefork::worker& w) {
      w.tick();
      line_reader::say(event_fd, "loop ready");
      pollfd p{w.stop_fd(), POLLIN, 0};
      for (;;) {
        ::poll(&p, 1, -1);
        if (!w.stopping()) {
          line_reader::say(event_fd, "woken, not stopping");
          continue;
        }
        // Level-triggered for good: a loop that looks again still sees it.
        bool still = ::poll(&p, 1, 0) == 1 && ::poll(&p, 1, 0) == 1;
        line_reader::say(event_fd,
                         still ? "stopping, stop_fd still readable" : "stopping, stop_fd went quiet");
        line_reader::say(event_fd, w.accept() ? "accept gave a connection" : "accept gave none");
        return;
      }
    };
    auto reopen_hook = [](prefork::pool_config& c) {
      auto log = c.log;
      c.on_reopen_logs = [log] { log("reopen " + std::to_string(::getpid())); };
    };
    pool p(1, reopen_hook, loop);
    pid_t worker = p.wait_spawn();
    p.ev.wait_for("loop ready");
    p.signal(SIGUSR1);
    p.ev.wait_for("reopen " + std::to_string(worker));
    p.ev.wait_for("woken, not stopping");
    p.signal(SIGQUIT);
    p.ev.wait_for("stopping, stop_fd still readable");
    p.ev.wait_for("accept gave none");
    CHECK(p.wait_exit().describe() == "exited 0");
    CHECK(p.ev.count("stop_fd went quiet") == 0);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("a master that grew a thread refuses to respawn, logs why, and keeps the old workers",
          "[pool][errors]") {
  prefork::test::leak_check leaks;
  {
    // on_reload runs in the master: a thread started there makes the
    // replacement fork unsafe.
    auto start_thread = [](prefork::pool_config& c) {
      c.on_reload = [] {
        static int never[2];
        if (::pipe(never) == 0)
          std::thread([] {
            char b;
            (void)::read(never[0], &b, 1);
          }).detach();
      };
    };
    pool p(1, start_thread);
    pid_t old = *p.start(1).begin();
    p.signal(SIGHUP);
    std::string refused = p.ev.wait_for("cannot start worker 0");
    CHECK(refused.find("refusing to fork with 2 threads") != std::string::npos);
    CHECK(std::stol(client(p.address).ask("pid")) == old);  // the old worker still serves
    p.quit();
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("accept() out of descriptors: logs once, waits instead of spinning or throwing, still stops",
          "[pool][emfile]") {
  prefork::test::leak_check leaks;
  {
    auto starving = [](prefork::worker& w) {
      // The lowest free descriptor becomes the limit: accept4 must fail.
      int lowest = ::fcntl(0, F_DUPFD_CLOEXEC, 0);
      ::close(lowest);
      rlimit lim{};
      ::getrlimit(RLIMIT_NOFILE, &lim);
      lim.rlim_cur = static_cast<rlim_t>(lowest);
      ::setrlimit(RLIMIT_NOFILE, &lim);
      prefork::fd conn = w.accept();
      line_reader::say(event_fd, conn ? "accepted" : "accept returned: stopping");
    };
    pool p(1, {}, starving);
    p.start(1);
    client c(p.address);  // queued; the worker cannot take it
    p.ev.wait_for("pausing accepts until descriptors are free");
    p.signal(SIGQUIT);
    p.ev.wait_for("accept returned: stopping");
    CHECK(p.wait_exit().describe() == "exited 0");
    CHECK(p.ev.count("pausing accepts") == 1);
    CHECK(p.ev.count("exited 0") >= 1);
  }
  CHECK(leaks.problems() == "");
}
