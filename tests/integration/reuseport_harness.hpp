// tests/integration/reuseport_harness.hpp: what the reuseport pool tests
// share on top of pool_harness.hpp and reuseport_support.hpp: a worker that
// answers each connection with its slot and pid, the pids of the workers
// spawned by slot, a pool config with one SO_REUSEPORT listener, and a
// worker stopped (SIGSTOP) so that connections wait in its slot's queue.
#pragma once

#include <signal.h>
#include <unistd.h>

#include <map>
#include <sstream>
#include <string>
#include <thread>

#include "pool_harness.hpp"
#include "proc.hpp"
#include "reuseport_support.hpp"

namespace reuseport_test {

using pool_test::clock;

// Per connection: "<index> <pid>\n", then close.
inline void report_index(prefork::worker& w) {
  while (prefork::fd conn = w.accept()) {
    std::string line = std::to_string(w.index()) + " " + std::to_string(::getpid()) + "\n";
    std::error_code ec;
    prefork::write_all(conn.get(), line.data(), line.size(), ec);
    w.request_done();
  }
}

// The pids of the next n workers spawned, by index, once n are ready.
inline std::map<unsigned, pid_t> spawned(pool_test::pool& p, unsigned n) {
  std::map<unsigned, pid_t> by_index;
  for (unsigned i = 0; i < n; ++i) {
    std::string line = p.ev.wait_for("spawn ");
    std::istringstream in(line.substr(line.find("spawn ") + 6));
    unsigned index = 0, generation = 0;
    pid_t pid = 0;
    in >> index >> generation >> pid;
    by_index[index] = pid;
  }
  p.wait_ready(n);
  return by_index;
}

// The pool's listener: one SO_REUSEPORT socket on a free port of 127.0.0.1,
// whose number goes to `port`.
inline void reuseport_config(prefork::pool_config& c, unsigned short& port) {
  prefork::listen_options opts;
  opts.reuseport = true;
  c.reuseport = true;
  c.listeners.clear();
  c.listeners.push_back(prefork::listen("127.0.0.1:0", opts));
  port = port_of(prefork::local_address(c.listeners[0].get()));
}

// SIGSTOP to `pid`, and the kernel's word that it stopped, by `deadline`.
inline void stop_process(pid_t pid, clock::time_point deadline) {
  ::kill(pid, SIGSTOP);
  while (prefork::test::state_of(pid) != 'T' && clock::now() < deadline) std::this_thread::yield();
  REQUIRE(prefork::test::state_of(pid) == 'T');
}

}  // namespace reuseport_test
