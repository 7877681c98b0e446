// tests/integration/chaos_support.hpp: what the chaos, hostile-client and
// leak tests add to httpd_support.hpp. They look at prefork-httpd's processes
// from the outside, through /proc (proc.hpp): who the master's children are
// and in what state, how many descriptors a process holds, its resident
// size, its CPU time, its credentials. Nothing asks the server itself, so a
// wedged or dying worker cannot make a measurement lie.
#pragma once

#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdlib>
#include <set>
#include <string>
#include <vector>

#include "httpd_support.hpp"
#include "proc.hpp"

namespace chaos {

using namespace httpd_test;

// The readers of /proc (proc.hpp) by their short names: children_of(master)
// is its live workers, children_of(master, kids::zombies) the unreaped.
using prefork::test::children_of;
using prefork::test::cpu_ticks;
using prefork::test::fd_count;
using prefork::test::kids;
using prefork::test::slurp;
using prefork::test::state_of;
using prefork::test::status_line;
using prefork::test::status_number;

// Under AddressSanitizer freed memory sits in a quarantine, so a process's
// resident size says nothing about leaks (LeakSanitizer does). Under
// ThreadSanitizer each page the program touches brings shadow pages with
// it, so a worker's one step of warm-up growth reads as megabytes (2.6 MiB
// once, in hostile_test). The figures are still printed; the RSS assertions
// hold in the plain builds only.
constexpr bool rss_meaningful = !sanitized;

inline std::size_t count_of(const std::string& text, std::string_view needle) {
  std::size_t n = 0;
  for (auto at = text.find(needle); at != std::string::npos; at = text.find(needle, at + needle.size())) ++n;
  return n;
}

inline long rss_kib(pid_t pid) { return status_number(pid, "VmRSS:"); }

// Waits until the master has exactly n workers and no zombie; returns them.
inline std::vector<pid_t> wait_workers(pid_t master, std::size_t n, steady::duration patience_ = patience) {
  auto deadline = steady::now() + patience_;
  for (;;) {
    std::set<pid_t> w = children_of(master);
    if (w.size() == n && children_of(master, kids::zombies).empty()) return {w.begin(), w.end()};
    if (steady::now() >= deadline)
      throw std::runtime_error("master " + std::to_string(master) + " has " + std::to_string(w.size()) +
                               " workers and " + std::to_string(children_of(master, kids::zombies).size()) +
                               " zombies, wanted " + std::to_string(n) + " and none");
    // Nothing to wait on for a /proc change but the master's own log,
    // which the caller reads; poll at a gentle pace until the deadline.
    ::poll(nullptr, 0, 5);
  }
}

// Runs argv[1..] with RLIMIT_NOFILE soft and hard set to argv[0].
PREFORK_HELPER(with_nofile) {
  rlimit lim{};
  lim.rlim_cur = lim.rlim_max = static_cast<rlim_t>(std::atol(argv[0]));
  if (::setrlimit(RLIMIT_NOFILE, &lim) == -1) return 126;
  ::execv(argv[1], argv + 1);
  return 127;
}

// One raw request on a new connection with a deadline of its own: the
// status, or 0 if the connection closed (or the deadline passed) first.
inline int status_of(int port, std::string_view raw,
                     std::chrono::milliseconds within = std::chrono::milliseconds(20000)) {
  prefork::fd c = connect_to(port);
  send_text(c.get(), raw);
  std::string all = read_until_close(c.get(), steady::now() + within);
  if (all.compare(0, 9, "HTTP/1.1 ") != 0 || all.size() < 12) return 0;
  return std::atoi(all.c_str() + 9);
}

const std::string hello = "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n";
const std::string hello_close = "GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";

}  // namespace chaos
