// tests/integration/refork_harness.hpp: what the refork tests share on top
// of pool_harness.hpp: requests that say which worker served them, and the
// log lines of a generation forked from the mold.
#pragma once

#include <set>
#include <string>

#include "pool_harness.hpp"

namespace refork_test {

// Opens a connection and asks "pid" `n` times on it: n requests served by
// one worker. Its pid.
inline pid_t serve_requests(const std::string& address, int n) {
  pool_test::client c(address);
  std::string pid;
  for (int i = 0; i < n; ++i) pid = c.ask("pid");
  REQUIRE(!pid.empty());
  return static_cast<pid_t>(std::stol(pid));
}

// The pid in "... (pid 123) is the mold ...".
inline pid_t pid_in(const std::string& line) {
  auto at = line.find("(pid ");
  REQUIRE(at != std::string::npos);
  return static_cast<pid_t>(std::stol(line.substr(at + 5)));
}

// Waits until the generation forked from the mold serves alone: `n` workers
// spawned by the mold and ready, and `old` workers of older generations gone.
inline std::set<pid_t> wait_new_generation(pool_test::pool& p, unsigned generation, std::size_t n,
                                           std::size_t old) {
  std::set<pid_t> born;
  for (std::size_t i = 0; i < n; ++i) born.insert(pid_in(p.ev.wait_for("spawned by the mold")));
  for (std::size_t i = 0; i < n; ++i) p.ev.wait_for("generation " + std::to_string(generation) + ") ready");
  for (std::size_t i = 0; i < old; ++i) p.ev.wait_for(") exited 0");
  return born;
}

}  // namespace refork_test
