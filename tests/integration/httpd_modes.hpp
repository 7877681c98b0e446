// tests/integration/httpd_modes.hpp: one test body run in each worker mode
// it applies to.
//
//   std::string mode = GENERATE(as<std::string>{}, "evented", "uring");
//   if (!mode_runs_here(mode)) return;  // WARNs why
//   server s({"-m", mode, ...});
//   check_mode(s, mode);
//
// The uring mode runs only where prefork-httpd was built with liburing and
// the kernel lets this process set up a ring; prefork-httpd then falls back
// to evented on its own. `-m uring --check` names the mode that would run,
// asked once per test process: elsewhere the uring variant says so with a
// WARN and passes. Where it runs, check_mode insists the start line names
// uring, since a silent fallback would pass every uring test while testing
// the evented loop twice.
#pragma once

#include <string>

#include "catch.hpp"
#include "httpd_support.hpp"

namespace httpd_test {

// Why `-m uring` would not run the io_uring loop here; "" when it would.
inline const std::string& uring_missing() {
  static const std::string why = [] {
    command_result r = run({prefork::test::bin_path("prefork-httpd"), "-m", "uring", "--check"}, true);
    if (r.code == 0 && r.out.find(", uring mode)") != std::string::npos) return std::string();
    return "prefork-httpd -m uring --check: " + r.out;
  }();
  return why;
}

// False, with a WARN saying why, when `mode` cannot run on this machine.
inline bool mode_runs_here(const std::string& mode) {
  if (mode != "uring" || uring_missing().empty()) return true;
  WARN("SKIP the uring variant: io_uring is unavailable here (" << uring_missing() << ")");
  return false;
}

// The mode a started server says it runs: the "ready" line ends with it.
inline std::string running_mode(const server& s) {
  const std::string& log = s.log();
  auto at = log.find("ready: ");
  if (at == std::string::npos) return "";
  std::string line = log.substr(at, log.find('\n', at) - at);
  for (const char* m : {"uring", "evented", "blocking"})
    if (line.find(std::string(m) + " mode") != std::string::npos) return m;
  return "";
}

#define check_mode(s, mode)             \
  do {                                  \
    INFO("server log:\n" << (s).log()); \
    REQUIRE(running_mode(s) == (mode)); \
  } while (0)

}  // namespace httpd_test
