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

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <prefork/pool.hpp>
#include <prefork/process.hpp>
#include <prefork/socket.hpp>

#include "catch.hpp"
#include "leak_check.hpp"

namespace pool_test {

using namespace std::chrono_literals;
using clock = std::chrono::steady_clock;

// Orphaned workers come to us, not to init, so no test can leave one behind
// unseen.
inline const bool subreaper = ::prctl(PR_SET_CHILD_SUBREAPER, 1) == 0;

inline std::string proc_stat_field(pid_t pid, int field) {  // field 3 = state, 4 = ppid
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return "";
  auto close = line.rfind(')');
  std::istringstream rest(line.substr(close + 2));
  std::string value;
  for (int i = 3; i <= field; ++i) rest >> value;
  return value;
}

// Live (not zombie) children of `pid`, from /proc.
inline std::set<pid_t> children_of(pid_t pid) {
  std::set<pid_t> kids;
  DIR* dir = ::opendir("/proc");
  while (dirent* e = ::readdir(dir)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    pid_t p = static_cast<pid_t>(std::atoi(e->d_name));
    if (proc_stat_field(p, 4) == std::to_string(pid) && proc_stat_field(p, 3) != "Z") kids.insert(p);
  }
  ::closedir(dir);
  return kids;
}

// Open descriptors of another process.
inline std::size_t fd_count(pid_t pid) {
  std::size_t n = 0;
  DIR* dir = ::opendir(("/proc/" + std::to_string(pid) + "/fd").c_str());
  if (!dir) return 0;
  while (dirent* e = ::readdir(dir))
    if (e->d_name[0] != '.') ++n;
  ::closedir(dir);
  return n;
}

// Lines from the pool: the log, "spawn INDEX GEN PID", and what tests add.
class events {
 public:
  events() {
    auto ends = prefork::pipe();
    read_ = std::move(ends.read);
    write_ = std::move(ends.write);
    read_.set_nonblocking(true);
    ::fcntl(write_.get(), F_SETPIPE_SZ, 1 << 20);  // a chatty master must never block on us
  }
  int write_fd() const { return write_.get(); }
  void close_write() { write_.reset(); }
  void close_read() { read_.reset(); }

  // Writes one line from any process of the pool.
  static void say(int fd, const std::string& text) {
    std::string line = text + "\n";
    std::error_code ec;
    prefork::write_all(fd, line.data(), line.size(), ec);
  }

  // The next line not yet taken that contains `needle`; fails the test with
  // the whole transcript when none comes before the deadline.
  std::string wait_for(const std::string& needle, std::chrono::milliseconds limit = 20s) {
    auto deadline = clock::now() + limit;
    for (bool more = true;;) {
      for (std::size_t i = 0; i < lines_.size(); ++i)
        if (!taken_[i] && lines_[i].find(needle) != std::string::npos) {
          taken_[i] = true;
          return lines_[i];
        }
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock::now()).count();
      if (left <= 0 || !more) {
        FAIL("no line with \"" << needle << "\" within " << limit.count() << "ms; seen:\n" << transcript());
      }
      more = pump(static_cast<int>(left));  // false: end of file, but look at what came with it
    }
  }

  // Reads what is there now, without waiting (or waiting up to wait_ms).
  bool pump(int wait_ms = 0) {
    pollfd p{read_.get(), POLLIN, 0};
    if (::poll(&p, 1, wait_ms) <= 0) return wait_ms == 0;
    char buf[4096];
    for (;;) {
      prefork::io_result r = prefork::read_some(read_.get(), buf, sizeof buf);
      if (!r || r.bytes == 0) return r.bytes != 0 || r.would_block();
      partial_.append(buf, r.bytes);
      for (std::size_t nl; (nl = partial_.find('\n')) != std::string::npos; partial_.erase(0, nl + 1)) {
        lines_.push_back(partial_.substr(0, nl));
        taken_.push_back(false);
      }
    }
  }

  std::size_t count(const std::string& needle) {
    pump();
    std::size_t n = 0;
    for (const std::string& l : lines_)
      if (l.find(needle) != std::string::npos) ++n;
    return n;
  }

  std::string transcript() const {
    std::string out;
    for (const std::string& l : lines_) out += "  " + l + "\n";
    return out;
  }

 private:
  prefork::fd read_, write_;
  std::string partial_;
  std::vector<std::string> lines_;
  std::vector<bool> taken_;
};

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
    config.log = [out](std::string_view line) { events::say(out, std::string(line)); };
    config.after_fork = [out](prefork::worker& w) {
      events::say(out, "spawn " + std::to_string(w.index()) + " " + std::to_string(w.generation()) + " " +
                           std::to_string(::getpid()));
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
        events::say(out, std::string("run failed: ") + e.what());
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

  events ev;
  std::string address;
  std::optional<prefork::scoreboard> board;
  prefork::child master;
};

}  // namespace pool_test
