// prefork-httpd's io_uring mode, counted: the system calls a keep-alive
// request costs with many connections busy, by perf, beside the evented
// loop's. The loop's own seams, the PREFORK_HTTPD_NO_URING switch and the
// seccomp fallback are in httpd_uring_test.cpp; the behaviour both loops
// share is tested once for both (httpd_evented_test.cpp and the others that
// use httpd_modes.hpp).
#include <poll.h>
#include <unistd.h>

#include <cctype>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "catch.hpp"
#include "httpd_modes.hpp"
#include "httpd_support.hpp"
#include "leak_check.hpp"
#include "proc.hpp"
#include "temp_dir.hpp"

using namespace httpd_test;

namespace {

// GET /hello on every connection, each sending its next request when the
// previous answer is whole (no pipelining), until `total` were answered.
// Each poll's answers are all read before the next requests go out, so
// they leave together, as from many clients at once; lean (no assertion
// per request), so the client is not what keeps the server waiting.
void keep_busy(std::vector<prefork::fd>& conns, int total) {
  std::vector<std::string> pending(conns.size());
  std::vector<pollfd> polled;
  std::vector<int> next;
  int sent = 0, answered = 0, bad = 0;
  for (auto& c : conns) {
    polled.push_back({c.get(), POLLIN, 0});
    if (sent < total) {
      send_text(c.get(), hello_request);
      ++sent;
    }
  }
  auto deadline = steady::now() + patience;
  char buf[65536];
  while (answered < total) {
    REQUIRE(::poll(polled.data(), polled.size(), ms_left(deadline)) > 0);
    next.clear();
    for (std::size_t i = 0; i < polled.size(); ++i) {
      if (!polled[i].revents) continue;
      ssize_t n = ::read(polled[i].fd, buf, sizeof buf);
      REQUIRE(n > 0);
      pending[i].append(buf, static_cast<std::size_t>(n));
      while (auto r = parse_response(pending[i])) {
        pending[i].erase(0, r->size);
        if (r->status != 200) ++bad;
        ++answered;
        if (sent < total) {
          next.push_back(polled[i].fd);
          ++sent;
        }
      }
    }
    for (int fd : next) send_text(fd, hello_request);
  }
  CHECK(bad == 0);
}

// Reads perf's answer to a control command ("ack\n").
void wait_ack(int fd) {
  std::string ack;
  auto deadline = steady::now() + patience;
  while (ack.find("ack") == std::string::npos) REQUIRE(read_some_until(fd, ack, deadline));
}

// System calls entered by `pids` (summed) while `load` runs, counted by
// perf's raw_syscalls:sys_enter tracepoint; -1, with a WARN, when perf is
// missing or may not count here. perf starts with the counter off and turns
// it on and off on command (--control), so only the load is counted, not
// perf's own start-up nor the time it takes to attach.
template <typename Load>
long syscalls_during(const std::set<pid_t>& pids, Load load) {
  const char* perf = "/usr/bin/perf";
  if (::access(perf, X_OK) != 0) {
    WARN("SKIP the count: " << perf << " is missing (Debian: apt-get install linux-perf)");
    return -1;
  }
  std::string list;
  for (pid_t p : pids) list += (list.empty() ? "" : ",") + std::to_string(p);
  prefork::test::temp_dir dir;
  std::string out = (dir / "perf.csv").string();
  auto control = prefork::pipe(), ack = prefork::pipe(), err = prefork::pipe();
  prefork::spawn_options options;
  options.fds = {{control.read.get(), 3}, {ack.write.get(), 4}, {err.write.get(), 2}};
  prefork::child counter = prefork::spawn({perf, "stat", "-e", "raw_syscalls:sys_enter", "-x", ",", "-o", out,
                                           "-D", "-1", "--control", "fd:3,4", "-p", list},
                                          options);
  control.read.reset();
  ack.write.reset();
  err.write.reset();
  send_text(control.write.get(), "enable\n");
  std::string ack_text;
  auto deadline = steady::now() + patience;
  while (ack_text.find("ack") == std::string::npos && read_some_until(ack.read.get(), ack_text, deadline)) {
  }
  if (ack_text.find("ack") == std::string::npos) {
    std::string said;
    while (read_some_until(err.read.get(), said, steady::now() + 2s)) {
    }
    counter.kill(SIGKILL);
    counter.wait();
    WARN("SKIP the count: perf stat could not count here: " << said);
    return -1;
  }
  load();
  send_text(control.write.get(), "disable\n");
  wait_ack(ack.read.get());
  counter.kill(SIGINT);  // perf writes its summary and exits
  auto status = counter.wait_for(std::chrono::duration_cast<std::chrono::milliseconds>(patience));
  if (!status) {
    counter.kill(SIGKILL);
    counter.wait();
  }
  std::string text = prefork::test::slurp(out);
  INFO("perf stat's output:\n" << text);
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);)
    if (line.find("raw_syscalls:sys_enter") != std::string::npos) {
      REQUIRE(std::isdigit(static_cast<unsigned char>(line[0])));
      return std::stol(line);
    }
  FAIL("no raw_syscalls:sys_enter count in perf's output");
  return -1;
}

}  // namespace

// The figure the io_uring mode exists for (docs/uring.md): with many
// connections busy, one io_uring_enter submits the answers of a loop turn
// and collects the next requests, so a request costs well under one call.
// The evented loop is counted the same way for comparison (about two: a
// read and a write each, plus a share of epoll_wait). Concurrency matters:
// one connection at a time would give one io_uring_enter per request.
// Measured here (2 workers, 2 cores shared with this client): uring 0.1 to
// 0.3 per request, evented 2.0 to 2.3. Under a sanitizer this client is
// slowed as much as the server, the batches thin out, and the bound is
// looser (one run in seven gave 0.73 with 32 connections under ASan).
TEST_CASE("uring: a keep-alive request costs well under one system call, with 64 busy connections",
          "[httpd][uring][syscalls]") {
  const std::string mode = GENERATE(as<std::string>{}, "uring", "evented");
  if (!mode_runs_here(mode)) return;
  INFO("-m " << mode);
  prefork::test::leak_check leaks;
  {
    server s({"-m", mode, "-w", "2"});
    check_mode(s, mode);
    std::set<pid_t> workers = prefork::test::children_of(s.pid());
    REQUIRE(workers.size() == 2);
    std::vector<prefork::fd> conns;
    for (int i = 0; i < 64; ++i) conns.push_back(connect_to(s.port()));
    keep_busy(conns, 64);  // every connection accepted and idle in a loop
    const int requests = 4000;
    long calls = syscalls_during(workers, [&] { keep_busy(conns, requests); });
    if (calls >= 0) {
      double per_request = static_cast<double>(calls) / requests;
      WARN("-m " << mode << ": " << calls << " system calls by the 2 workers for " << requests
                 << " keep-alive requests over 64 connections: " << per_request << " per request");
      if (mode == "uring")
        CHECK(per_request < (sanitized ? 0.75 : 0.5));
      else
        CHECK(per_request > 1.5);  // one read and one write each: the measure sees them
    }
    conns.clear();
    check_clean_stop(s);
  }
  CHECK(leaks.problems() == "");
}
