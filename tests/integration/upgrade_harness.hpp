// tests/integration/upgrade_harness.hpp: what the upgrade tests (and the
// reexec example's test) share: a client loop that keeps connecting while the
// test upgrades the server, and remembers every connection that did not get
// its whole answer. The lines a server prints are read with
// prefork::test::line_reader, who is whose child with proc.hpp.
//
// The client loop runs on a thread of the test process. It starts after the
// server is spawned (spawn is safe with threads; fork is not) and is joined
// before the leak check. Each connection is one full exchange: connect, send,
// read to end of file, compare. A refused connect, a reset, an early end of
// file or a wrong answer is a failure, with its description kept for the
// report; "every connection succeeds" is then a check that the list is empty.
//
// upgrade_test and upgrade_signals_test run their master as a helper of the
// test binary (so its startup_argv() runs the helper again) in a directory
// of its own: helper_master starts it, helper_pool_config builds its pool
// from its arguments, and boot_switch says how a boot is to go. spawn_master
// starts any master with its listener, as reuseport_upgrade_test's too.
#pragma once

#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <prefork/fd.hpp>
#include <prefork/pool_config.hpp>
#include <prefork/process.hpp>
#include <prefork/socket.hpp>
#include <prefork/spawn.hpp>
#include <prefork/worker.hpp>

#include "catch.hpp"
#include "line_reader.hpp"
#include "proc.hpp"

namespace upgrade_test {

using namespace std::chrono_literals;
using clock = std::chrono::steady_clock;

// A master that exits leaves its children (a new master, workers) to us, not
// to init, so each one is reaped and seen by the leak check.
inline const bool subreaper = ::prctl(PR_SET_CHILD_SUBREAPER, 1) == 0;

// Who is whose child, from /proc (proc.hpp): children_of(pid) for the live
// ones, children_of(pid, kids::zombies) for the unreaped.
using prefork::test::children_of;
using prefork::test::kids;

// One line on stderr, which the test reads; one write(2), so lines from
// the masters and workers never interleave.
inline void say(const std::string& text) {
  std::string line = text + "\n";
  std::error_code ec;
  prefork::write_all(2, line.data(), line.size(), ec);
}

// The pid (or any number) that follows `before` in a line the master said.
inline pid_t number_after(const std::string& line, const std::string& before) {
  auto at = line.find(before);
  REQUIRE(at != std::string::npos);
  return static_cast<pid_t>(std::stol(line.substr(at + before.size())));
}

// A worker's body: echoes each connection until the client shuts its side
// down, ticking the heartbeat while it waits.
inline void echo(prefork::worker& w) {
  while (prefork::fd conn = w.accept()) {
    char buf[16384];
    for (;;) {
      pollfd p{conn.get(), POLLIN, 0};
      if (::poll(&p, 1, 500) == -1 && errno != EINTR) break;
      w.tick();
      if (p.revents == 0) continue;
      prefork::io_result got = prefork::read_some(conn.get(), buf, sizeof buf);
      std::error_code ec;
      if (!got || got.bytes == 0 || prefork::write_all(conn.get(), buf, got.bytes, ec) != got.bytes) break;
    }
    w.request_done();
  }
}

// Everything the peer sends until it closes, or an error text: "" plus the
// bytes on success. Never waits past `deadline`.
inline std::pair<std::string, std::string> read_to_eof(int sock, clock::time_point deadline) {
  std::string got;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock::now()).count();
    if (left <= 0) return {"no end of file after " + std::to_string(got.size()) + " bytes", got};
    pollfd p{sock, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left)) <= 0) continue;
    char buf[4096];
    prefork::io_result r = prefork::read_some(sock, buf, sizeof buf);
    if (!r)
      return {
          std::string("read: ") + std::strerror(r.error) + " after " + std::to_string(got.size()) + " bytes",
          got};
    if (r.bytes == 0) return {"", got};
    got.append(buf, r.bytes);
  }
}

// One echo round trip on a fresh connection: "" when the whole payload came
// back, else what went wrong.
inline std::string echo_exchange(int sock, std::uint64_t n) {
  std::string payload = "connection " + std::to_string(n) + " " + std::string(n % 3000, 'x') + "\n";
  std::error_code ec;
  prefork::write_all(sock, payload.data(), payload.size(), ec);
  if (ec) return "write: " + ec.message();
  ::shutdown(sock, SHUT_WR);  // the echo server's cue to finish
  auto [error, got] = read_to_eof(sock, clock::now() + 15s);
  if (!error.empty()) return error;
  if (got != payload)
    return "short or wrong answer: " + std::to_string(got.size()) + " of " + std::to_string(payload.size()) +
           " bytes";
  return "";
}

// Connects to `address` again and again, one exchange at a time, until
// stopped. Each failure is kept as "connection N: what".
class client_loop {
 public:
  using exchange = std::function<std::string(int sock, std::uint64_t n)>;

  explicit client_loop(std::string address, exchange ex = echo_exchange)
      : address_(std::move(address)), exchange_(std::move(ex)), thread_([this] { run(); }) {}
  ~client_loop() { stop(); }
  client_loop(const client_loop&) = delete;
  client_loop& operator=(const client_loop&) = delete;

  void stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }

  std::uint64_t done() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return done_;
  }

  // Waits until `more` further exchanges have completed (successfully or
  // not): proof that the loop really ran across whatever the test just did.
  void wait_progress(std::uint64_t more, std::chrono::milliseconds limit = 20s) {
    std::unique_lock<std::mutex> lock(mutex_);
    std::uint64_t target = done_ + more;
    if (!progress_.wait_for(lock, limit, [&] { return done_ >= target; }))
      FAIL("the client loop made no progress: " << done_ << " of " << target << " exchanges");
  }

  std::vector<std::string> failures() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return failures_;
  }

  // The end of a test under load: ten more exchanges after the last thing
  // the test did, then the loop stops; none may have failed all along.
  void finish() {
    wait_progress(10);
    stop();
    CHECK(failures() == std::vector<std::string>{});
  }

 private:
  void run() {
    for (std::uint64_t n = 0; !stop_; ++n) {
      std::string what;
      try {
        prefork::fd sock = prefork::connect(address_);
        what = exchange_(sock.get(), n);
      } catch (const std::exception& e) {
        what = e.what();
      }
      std::lock_guard<std::mutex> lock(mutex_);
      if (!what.empty() && failures_.size() < 50)
        failures_.push_back("connection " + std::to_string(n) + ": " + what);
      ++done_;
      progress_.notify_all();
    }
  }

  std::string address_;
  exchange exchange_;
  std::atomic<bool> stop_{false};
  mutable std::mutex mutex_;
  std::condition_variable progress_;
  std::uint64_t done_ = 0;
  std::vector<std::string> failures_;
  std::thread thread_;  // last: starts once everything above exists
};

// In the master helper: the first line of the file UPGRADE_TEST_SWITCH
// names ("hang": the workers never become ready; "" when there is none).
inline std::string boot_switch() {
  std::string word;
  if (const char* path = std::getenv("UPGRADE_TEST_SWITCH")) {
    std::ifstream in(path);
    std::getline(in, word);
  }
  return word;
}

// In the master helper: its pool, from its first arguments MODE WORKERS
// GRACEFUL_MS UPGRADE_TIMEOUT_MS PID_FILE. Each worker says "spawn INDEX
// GENERATION PID"; with `hang` it then never becomes ready.
inline prefork::pool_config helper_pool_config(char** argv, bool hang) {
  prefork::pool_config config;
  config.upgrade =
      std::string(argv[0]) == "in_place" ? prefork::upgrade_mode::in_place : prefork::upgrade_mode::fork_exec;
  config.workers = static_cast<unsigned>(std::stoul(argv[1]));
  config.graceful_timeout = std::chrono::milliseconds(std::stol(argv[2]));
  config.upgrade_timeout = std::chrono::milliseconds(std::stol(argv[3]));
  config.timeout = 10s;
  config.pid_file = argv[4];
  config.after_fork = [hang](prefork::worker& w) {
    say("spawn " + std::to_string(w.index()) + " " + std::to_string(w.generation()) + " " +
        std::to_string(::getpid()));
    while (hang) ::pause();
  };
  return config;
}

// Spawns a master: `listener` as its descriptor 3 (PREFORK_FDS=3), its
// stderr into `log`, our environment plus `env_extra`.
inline prefork::child spawn_master(const std::vector<std::string>& argv, const prefork::fd& listener,
                                   prefork::test::line_reader& log, std::vector<std::string> env_extra = {}) {
  prefork::spawn_options options;
  options.fds = {{0, 0}, {1, 1}, {log.write_fd(), 2}, {listener.get(), 3}};
  std::vector<std::string> env;
  for (char** e = environ; *e; ++e) env.emplace_back(*e);
  env.push_back("PREFORK_FDS=3");
  for (std::string& x : env_extra) env.push_back(std::move(x));
  options.env = env;
  prefork::child master = prefork::spawn(argv, options);
  log.close_write();
  return master;
}

// A master helper under test, in a directory of its own: /tmp/NAME-XXXXXX
// with its pid file, the .oldbin name a fork_exec upgrade gives it, and the
// switch file. Its log (stderr) is read from `log`.
class helper_master {
 public:
  explicit helper_master(const std::string& name) {
    std::string dir_template = "/tmp/" + name + "-XXXXXX";
    REQUIRE(::mkdtemp(dir_template.data()) != nullptr);
    dir = dir_template;
    pid_path = dir / "master.pid";
    oldbin_path = dir / "master.pid.oldbin";
    switch_path = dir / "switch";
  }

  // SIGKILL to a master still running and to any child left to us (only
  // after a failed test); the directory goes.
  ~helper_master() {
    if (master.pid() != 0 && !master.status()) master.kill(SIGKILL);
    master = prefork::child();
    for (pid_t orphan : children_of(::getpid(), kids::all)) {
      ::kill(orphan, SIGKILL);
      ::waitpid(orphan, nullptr, 0);
    }
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }

  helper_master(const helper_master&) = delete;
  helper_master& operator=(const helper_master&) = delete;

  // Spawns `argv` with a new listener on 127.0.0.1:0 (spawn_master), with
  // UPGRADE_TEST_SWITCH and `env_extra` in its environment, and waits until
  // `workers` workers are ready. Ours is closed: if the master lost its
  // socket, clients are refused.
  void start(const std::vector<std::string>& argv, unsigned workers,
             std::vector<std::string> env_extra = {}) {
    prefork::fd listener = prefork::listen("127.0.0.1:0");
    address = prefork::local_address(listener.get());
    env_extra.insert(env_extra.begin(), "UPGRADE_TEST_SWITCH=" + switch_path.string());
    master = spawn_master(argv, listener, log, std::move(env_extra));
    listener.reset();
    for (unsigned i = 0; i < workers; ++i) log.wait_for(") ready");
  }

  pid_t pid() const { return master.pid(); }
  void signal(int sig) const { ::kill(master.pid(), sig); }
  void set_switch(const std::string& how) const { std::ofstream(switch_path) << how << "\n"; }

  prefork::test::line_reader log;
  std::filesystem::path dir, pid_path, oldbin_path, switch_path;
  std::string address;
  prefork::child master;
};

}  // namespace upgrade_test
