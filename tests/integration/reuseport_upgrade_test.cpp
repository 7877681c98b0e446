// pool_config::reuseport through USR2 (both modes) and HUP, under a client
// loop: not one connection fails, and the slot sockets the kernel queues on
// are the very same ones after each upgrade (their inodes in /proc/net/tcp),
// so no queue was ever closed. The master is this test binary run as a
// helper, so its startup_argv() runs the helper again.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>
#include <string>

#include <prefork/pool.hpp>
#include <prefork/process.hpp>

#include "catch.hpp"
#include "helpers.hpp"
#include "leak_check.hpp"
#include "reuseport_support.hpp"
#include "upgrade_harness.hpp"

using namespace upgrade_test;

namespace {

// Echoes until the client closes; "who\n" alone is answered with the
// worker's index instead.
void echo_or_index(prefork::worker& w) {
  while (prefork::fd conn = w.accept()) {
    char buf[16384];
    for (bool first = true;; first = false) {
      prefork::io_result got = prefork::read_some(conn.get(), buf, sizeof buf);
      std::error_code ec;
      if (first && got && std::string_view(buf, got.bytes) == "who\n") {
        std::string index = std::to_string(w.index()) + "\n";
        prefork::write_all(conn.get(), index.data(), index.size(), ec);
        break;
      }
      if (!got || got.bytes == 0 || prefork::write_all(conn.get(), buf, got.bytes, ec) != got.bytes) break;
    }
    w.request_done();
  }
}

std::set<std::string> listeners_on(unsigned short port) { return reuseport_test::listening_on(port).inodes; }

// The worker indices that answer "who" within a few hundred connections,
// until all of `want` did.
std::set<std::string> indices_answering(const std::string& address, const std::set<std::string>& want) {
  std::set<std::string> seen;
  for (int i = 0; i < 300 && seen != want; ++i) {
    prefork::fd sock = prefork::connect(address);
    prefork::write_all(sock.get(), std::string("who\n"));
    auto [error, got] = read_to_eof(sock.get(), clock::now() + 10s);
    seen.insert(error.empty() ? got : error);
  }
  return seen;
}

// A reuseport master of `mode` with `workers` on a listener of its own,
// its log on `log`.
prefork::child start_master(const std::string& mode, const std::string& workers,
                            prefork::test::line_reader& log, std::string& address) {
  prefork::listen_options opts;
  opts.reuseport = true;
  prefork::fd listener = prefork::listen("127.0.0.1:0", opts);
  address = prefork::local_address(listener.get());
  return spawn_master(prefork::test::helper_argv("reuseport_master", {mode, workers}), listener, log);
}

// USR2 in `mode`; the master to talk to afterwards.
void upgrade(const std::string& mode, prefork::child& master, prefork::test::line_reader& log, int round) {
  const pid_t old = master.pid();
  ::kill(old, SIGUSR2);
  if (mode == "fork_exec") {
    std::string line = log.wait_for("received SIGUSR2: upgrading: started new master pid ");
    const pid_t next = static_cast<pid_t>(std::stol(line.substr(line.find("master pid ") + 11)));
    log.wait_for("prefork[" + std::to_string(old) + "]: stop complete");
    std::optional<prefork::exit_status> how = master.wait_for(20s);
    REQUIRE(how);
    CHECK(how->describe() == "exited 0");
    master = prefork::child::adopt(next);
  } else {
    log.wait_for("upgrade " + std::to_string(round) + " complete");
  }
}

}  // namespace

// MODE WORKERS: a reuseport pool on the listener of PREFORK_FDS.
PREFORK_HELPER(reuseport_master) {
  if (argc != 2) return 2;
  try {
    prefork::pool_config config;
    config.upgrade = std::string(argv[0]) == "in_place" ? prefork::upgrade_mode::in_place
                                                        : prefork::upgrade_mode::fork_exec;
    config.workers = static_cast<unsigned>(std::stoul(argv[1]));
    config.reuseport = true;
    config.graceful_timeout = 5s;
    config.timeout = 10s;
    config.after_fork = [](prefork::worker& w) {
      say("spawn " + std::to_string(w.index()) + " " + std::to_string(w.generation()) + " " +
          std::to_string(::getpid()));
    };
    prefork::master master(std::move(config));
    return master.run(echo_or_index);
  } catch (const std::exception& e) {
    say(std::string("master failed: ") + e.what());
    return 1;
  }
}

TEST_CASE(
    "reuseport: USR2 in both modes keeps every slot socket, HUP retires the extra one; no connection fails",
    "[reuseport][upgrade]") {
  const std::string mode = GENERATE(std::string("fork_exec"), std::string("in_place"));
  prefork::test::leak_check leaks;
  {
    prefork::test::line_reader log;
    std::string address;
    prefork::child master = start_master(mode, "2", log, address);
    const unsigned short port = reuseport_test::port_of(address);
    for (int i = 0; i < 2; ++i) log.wait_for(") ready");
    client_loop load(address);
    for (int round = 1; round <= 2; ++round) {
      // A third slot, beyond the new images' configured 2: it must be served too.
      ::kill(master.pid(), SIGTTIN);
      log.wait_for("received SIGTTIN: now 3 workers");
      // Its socket is opened before its worker is forked.
      const auto deadline = clock::now() + 20s;
      while (listeners_on(port).size() < 3 && clock::now() < deadline) std::this_thread::yield();
      const std::set<std::string> slots = listeners_on(port);
      CHECK(slots.size() == 3);  // slot 0 (the listener), slots 1 and 2
      load.wait_progress(20);
      upgrade(mode, master, log, round);
      CHECK(listeners_on(port) == slots);
      load.wait_progress(20);
      // HUP restores the configured 2 workers: slot 2 is drained, then closed.
      ::kill(master.pid(), SIGHUP);
      log.wait_for("received SIGHUP");
      for (int i = 0; i < 2; ++i) log.wait_for("replaced by pid");
      log.wait_for("slot 2 drained and retired");
      const std::set<std::string> after = listeners_on(port);
      CHECK(after.size() == 2);
      CHECK(std::includes(slots.begin(), slots.end(), after.begin(), after.end()));
    }
    load.finish();
    ::kill(master.pid(), SIGQUIT);
    std::optional<prefork::exit_status> how = master.wait_for(20s);
    REQUIRE(how);
    CHECK(how->describe() == "exited 0");
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("reuseport: after TTOU, a new image steers connections to the slot it opens again",
          "[reuseport][upgrade]") {
  const std::string mode = GENERATE(std::string("fork_exec"), std::string("in_place"));
  prefork::test::leak_check leaks;
  {
    prefork::test::line_reader log;
    std::string address;
    prefork::child master = start_master(mode, "2", log, address);
    const unsigned short port = reuseport_test::port_of(address);
    for (int i = 0; i < 2; ++i) log.wait_for(") ready");
    CHECK(indices_answering(address, {"0\n", "1\n"}) == std::set<std::string>{"0\n", "1\n"});
    // The old master's program steers everything to slot 0 now.
    ::kill(master.pid(), SIGTTOU);
    log.wait_for("slot 1 drained and retired");
    CHECK(listeners_on(port).size() == 1);
    client_loop load(address);
    upgrade(mode, master, log, 1);
    load.finish();
    // The new image, configured with 2 workers, opened slot 1 again and
    // attached its own program.
    CHECK(listeners_on(port).size() == 2);
    CHECK(indices_answering(address, {"0\n", "1\n"}) == std::set<std::string>{"0\n", "1\n"});
    ::kill(master.pid(), SIGQUIT);
    std::optional<prefork::exit_status> how = master.wait_for(20s);
    REQUIRE(how);
    CHECK(how->describe() == "exited 0");
  }
  CHECK(leaks.problems() == "");
}
