// bench_pool: figures for the prefork pool, printed, never judged.
//
//   respawn latency   SIGKILL of a worker -> its replacement's first ready
//                     tick (CLOCK_MONOTONIC in both processes), 100 kills
//   connection spread 10000 sequential connections to 4 workers sharing one
//                     listening socket: how many each worker took
//
// Each worker killed has lived over a second, so the crash-loop back-off
// (which would rightly slow down a worker dying young) is not measured.
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <prefork/pool.hpp>
#include <prefork/process.hpp>
#include <prefork/socket.hpp>

#include "catch.hpp"

namespace {

using namespace std::chrono_literals;

std::int64_t now_ns() { return prefork::detail::monotonic_ns(); }

// A pool run by a forked master. Each worker writes "PID READY_NS\n" to the
// announcement pipe once it is ready, then answers each connection with its
// PID and closes it.
struct bench_pool {
  explicit bench_pool(unsigned workers) {
    auto ends = prefork::pipe();
    announcements = std::move(ends.read);
    prefork::pool_config config;
    config.workers = workers;
    config.listeners.push_back(prefork::listen("127.0.0.1:0", {4096}));
    address = prefork::local_address(config.listeners[0].get());
    config.log = [](std::string_view) {};
    prefork::master m(std::move(config));
    std::fflush(nullptr);  // or the master would print our buffered lines again
    std::optional<prefork::child> forked = prefork::fork();
    if (!forked) {
      announcements.reset();
      ::setsid();
      const int out = ends.write.get();
      ::_exit(m.run([out](prefork::worker& w) {
        w.tick();
        std::string line = std::to_string(::getpid()) + " " + std::to_string(now_ns()) + "\n";
        prefork::write_all(out, line);
        const std::string me = std::to_string(::getpid());
        while (prefork::fd conn = w.accept()) {
          std::error_code ec;
          prefork::write_all(conn.get(), me.data(), me.size(), ec);
          w.request_done();
        }
      }));
    }
    master = std::move(*forked);
  }
  ~bench_pool() {
    master.kill(SIGQUIT);
    master.wait();
  }

  // The next announcement: {pid, ready time}.
  std::pair<pid_t, std::int64_t> next_ready() {
    std::string line;
    char c;
    while (prefork::read_some(announcements.get(), &c, 1).bytes == 1 && c != '\n') line += c;
    auto space = line.find(' ');
    REQUIRE(space != std::string::npos);
    return {static_cast<pid_t>(std::stol(line.substr(0, space))), std::stoll(line.substr(space + 1))};
  }

  prefork::fd announcements;
  std::string address;
  prefork::child master;
};

double percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<std::size_t>(p * static_cast<double>(v.size())))];
}

}  // namespace

TEST_CASE("respawn latency: SIGKILL of a worker to its replacement's first ready tick") {
  const unsigned n = 100;
  bench_pool pool(n);
  std::vector<pid_t> victims;
  for (unsigned i = 0; i < n; ++i) victims.push_back(pool.next_ready().first);
  ::usleep(1100 * 1000);  // every worker older than a second: no crash-loop back-off
  std::vector<double> ms;
  for (pid_t victim : victims) {
    std::int64_t killed = now_ns();
    ::kill(victim, SIGKILL);
    std::int64_t ready = pool.next_ready().second;
    ms.push_back(static_cast<double>(ready - killed) / 1e6);
  }
  std::printf("respawn latency over %zu kills: median %.3f ms, p99 %.3f ms, max %.3f ms\n", ms.size(),
              percentile(ms, 0.5), percentile(ms, 0.99), *std::max_element(ms.begin(), ms.end()));
}

TEST_CASE("connection spread: 10000 connections over 4 workers") {
  bench_pool pool(4);
  for (int i = 0; i < 4; ++i) pool.next_ready();
  std::map<std::string, int> taken;
  auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < 10000; ++i) {
    prefork::fd conn = prefork::connect(pool.address);
    taken[prefork::read_all(conn.get())]++;
  }
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("connection spread over 4 workers (10000 sequential connections, %.0f/s):", 10000 / seconds);
  for (const auto& [pid, count] : taken) std::printf(" %d", count);
  std::printf("\n");
}
