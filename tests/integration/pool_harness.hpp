// tests/integration/pool_harness.hpp: running a real prefork pool under test.
//
// The master is a forked child of the test running master::run (in its own
// session, so it has no controlling terminal and WINCH means something). Its
// log and the workers' announcements come back as lines on one pipe (each
// line one write(2), so lines never interleave), which the test waits on with
// a deadline: no sleeps. The test process is a child subreaper, so a worker
// orphaned by a dead master becomes the test's child, and leak_check sees it.
// The test maps the master's scoreboard through a dup of its memfd.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <prefork/pool.hpp>
#include <prefork/process.hpp>
#include <prefork/socket.hpp>

#include "catch.hpp"
#include "leak_check.hpp"
#include "line_reader.hpp"
#include "proc.hpp"

namespace pool_test {

using namespace std::chrono_literals;
using clock = std::chrono::steady_clock;

// Orphaned workers come to us, not to init, so no test can leave one behind
// unseen.
inline const bool subreaper = ::prctl(PR_SET_CHILD_SUBREAPER, 1) == 0;

// The readers of /proc and the pipe the tests use, by their short names:
// children_of(pid) is the live workers of a master.
using prefork::test::children_of;
using prefork::test::fd_count;
using prefork::test::line_reader;

// A connected client speaking the test protocol: one line out, one line back.
class client {
 public:
  explicit client(const std::string& address) : sock_(prefork::connect(address)) {}
  void send(const std::string& line) { prefork::write_all(sock_.get(), line + "\n"); }
  // The next line, or "" on end of file or after `limit`.
  std::string receive(std::chrono::milliseconds limit = 20s) {
    auto deadline = clock::now() + limit;
    for (;;) {
      if (auto nl = buf_.find('\n'); nl != std::string::npos) {
        std::string line = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        return line;
      }
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock::now()).count();
      pollfd p{sock_.get(), POLLIN, 0};
      if (left <= 0 || ::poll(&p, 1, static_cast<int>(left)) <= 0) return "";
      char chunk[512];
      prefork::io_result r = prefork::read_some(sock_.get(), chunk, sizeof chunk);
      if (!r || r.bytes == 0) return "";
      buf_.append(chunk, r.bytes);
    }
  }
  std::string ask(const std::string& line) {
    send(line);
    return receive();
  }
  int get() const { return sock_.get(); }
  void close() { sock_.reset(); }

 private:
  prefork::fd sock_;
  std::string buf_;
};

// The work function of most tests. Per connection, per line:
//   "pid"    -> "<pid>"
//   "hold"   -> "holding <pid>", then waits for the next line -> "done <pid>"
//   "stick"  -> "stuck <pid>", then never ticks again (pause forever)
//   "grow"   -> touches 64 MiB, "grown <pid>"
// and counts every line as a served request.
inline void serve(prefork::worker& w) {
  while (prefork::fd conn = w.accept()) {
    std::string buf;
    char chunk[512];
    auto next_line = [&]() -> std::optional<std::string> {
      for (;;) {
        if (auto nl = buf.find('\n'); nl != std::string::npos) {
          std::string line = buf.substr(0, nl);
          buf.erase(0, nl + 1);
          return line;
        }
        prefork::io_result r = prefork::read_some(conn.get(), chunk, sizeof chunk);
        if (!r || r.bytes == 0) return std::nullopt;
        buf.append(chunk, r.bytes);
      }
    };
    auto reply = [&](const std::string& text) {
      std::error_code ec;
      std::string line = text + "\n";
      prefork::write_all(conn.get(), line.data(), line.size(), ec);
    };
    const std::string me = std::to_string(::getpid());
    while (std::optional<std::string> line = next_line()) {
      if (*line == "pid") reply(me);
      if (*line == "hold") {
        w.status("holding a request");
        reply("holding " + me);
        next_line();
        reply("done " + me);
      }
      if (*line == "stick") {
        w.status("stuck on purpose");
        reply("stuck " + me);
        for (;;) ::pause();
      }
      if (*line == "grow") {
        static std::vector<char> ballast;
        ballast.assign(64 << 20, 'x');
        reply("grown " + me);
      }
      w.request_done();
    }
  }
}

// The write end of the current pool's event pipe, for work functions that
// report on their own (set before the master is forked).
inline int event_fd = -1;

// A pool run by a forked master.
class pool {
 public:
  using tweak = std::function<void(prefork::pool_config&)>;

  explicit pool(unsigned workers, const tweak& adjust = {},
                std::function<void(prefork::worker&)> work = serve, std::function<void()> in_master = {}) {
    prefork::pool_config config;
    config.workers = workers;
    config.timeout = 30s;
    config.graceful_timeout = 10s;
    config.listeners.push_back(prefork::listen("127.0.0.1:0"));
    address = prefork::local_address(config.listeners[0].get());
    const int out = event_fd = ev.write_fd();
    config.log = [out](std::string_view line) { line_reader::say(out, std::string(line)); };
    config.after_fork = [out](prefork::worker& w) {
      line_reader::say(out, "spawn " + std::to_string(w.index()) + " " + std::to_string(w.generation()) +
                                " " + std::to_string(::getpid()));
    };
    if (adjust) adjust(config);
    auto m = std::make_unique<prefork::master>(std::move(config));
    board.emplace(prefork::scoreboard::from_fd(::fcntl(m->scoreboard().memfd(), F_DUPFD_CLOEXEC, 0)));
    std::fflush(nullptr);  // the master's own fflush before each fork would repeat our buffered output
    std::optional<prefork::child> forked = prefork::fork();
    if (!forked) {
      ev.close_read();
      ::setsid();
      int code = 3;
      try {
        if (in_master) in_master();
        code = m->run(std::move(work));
      } catch (const std::exception& e) {
        line_reader::say(out, std::string("run failed: ") + e.what());
      }
      ::_exit(code);
    }
    master = std::move(*forked);
    ev.close_write();  // the master's copy is the one that matters; ours would hide its exit
  }

  // A test that failed half-way leaves the master running: kill it, and the
  // workers that came to us (the subreaper) when it died, so the next test
  // starts clean. A passing test has reaped the master already.
  ~pool() {
    if (master.pid() == 0 || master.status() || master.try_wait()) return;
    master.kill(SIGKILL);
    master.wait();
    for (pid_t orphan : children_of(::getpid())) {
      ::kill(orphan, SIGKILL);
      ::waitpid(orphan, nullptr, 0);
    }
  }
  pool(const pool&) = delete;
  pool& operator=(const pool&) = delete;

  pid_t pid() const { return master.pid(); }

  // Waits for the first n workers to be spawned and ready; their PIDs.
  std::set<pid_t> start(std::size_t n) {
    std::set<pid_t> pids;
    for (std::size_t i = 0; i < n; ++i) pids.insert(wait_spawn());
    wait_ready(n);
    return pids;
  }
  void signal(int sig) const { ::kill(master.pid(), sig); }

  // PIDs of the workers spawned, in spawn order, from the "spawn" lines.
  pid_t wait_spawn(std::chrono::milliseconds limit = 20s) {
    std::string line = ev.wait_for("spawn ", limit);
    return static_cast<pid_t>(std::stol(line.substr(line.rfind(' ') + 1)));
  }
  void wait_ready(std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) ev.wait_for(") ready");
  }

  prefork::exit_status wait_exit(std::chrono::milliseconds limit = 20s) {
    std::optional<prefork::exit_status> status = master.wait_for(limit);
    if (!status) FAIL("the master did not exit within " << limit.count() << "ms; log:\n" << ev.transcript());
    return *status;
  }

  // QUIT, exit 0, and the scoreboard says nobody is left.
  void quit() {
    signal(SIGQUIT);
    CHECK(wait_exit().describe() == "exited 0");
    CHECK(board->count(prefork::worker_state::free) == board->size());
  }

  line_reader ev;
  std::string address;
  std::optional<prefork::scoreboard> board;
  prefork::child master;
};

}  // namespace pool_test
