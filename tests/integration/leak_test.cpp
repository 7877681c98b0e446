// prefork-httpd over many requests through one worker: after a warm-up its
// resident size must not grow (by less than 1 MiB) and its descriptor count
// must come back to what it was. The suite sends PREFORK_LEAK_REQUESTS
// (default 20000) per mode; scripts/soak sends a million and prints the
// figures, which docs/reliability.md records. Each run prints one line:
//   leak-figures mode=evented requests=... rss_warm_kib=... rss_end_kib=... ...
#include <cstdio>
#include <cstdlib>

#include "catch.hpp"
#include "chaos_support.hpp"
#include "leak_check.hpp"

using namespace chaos;

namespace {

long requests_wanted() {
  const char* env = std::getenv("PREFORK_LEAK_REQUESTS");
  long n = env && *env ? std::atol(env) : 20000;
  return n > 0 ? n : 20000;
}

// n requests, a third each: keep-alive one at a time, keep-alive pipelined
// sixteen per write, and a new connection per request. Blocking mode
// answers every request with "Connection: close", so there all of them
// take a new connection. Returns how many were answered 200.
long drive(int port, long n, bool keep_alive) {
  long ok = 0, sent = 0;
  std::string pending;
  prefork::fd c;
  auto fresh = [&] {
    c = connect_to(port);
    pending.clear();
  };
  if (keep_alive) {
    fresh();
    for (; sent < n / 3; ++sent) {
      send_text(c.get(), hello);
      ok += read_response(c.get(), pending).status == 200;
    }
    std::string batch;
    for (int i = 0; i < 16; ++i) batch += hello;
    for (; sent + 16 <= 2 * n / 3; sent += 16) {
      send_text(c.get(), batch);
      for (int i = 0; i < 16; ++i) ok += read_response(c.get(), pending).status == 200;
    }
    c.reset();
  }
  for (; sent < n; ++sent) ok += status_of(port, hello_close) == 200;
  return ok;
}

}  // namespace

TEST_CASE("leak: many requests through one worker grow neither its memory nor its descriptors", "[leak]") {
  prefork::test::leak_check leaks;
  {
    std::string mode = GENERATE(as<std::string>{}, "evented", "blocking");
    INFO("mode " << mode);
    const long n = requests_wanted();
    server s({"-m", mode, "-w", "1"});
    pid_t worker = wait_workers(s.pid(), 1)[0];
    const std::size_t fds_idle = fd_count(worker);
    const long warm_up = std::max(2000L, n / 50);
    CHECK(drive(s.port(), warm_up, mode == "evented") == warm_up);
    REQUIRE(fd_count(worker) == fds_idle);
    const long rss_warm = rss_kib(worker);
    auto t0 = steady::now();
    long ok = drive(s.port(), n, mode == "evented");
    double seconds = std::chrono::duration<double>(steady::now() - t0).count();
    // The server closes its side of the last connections on its own time.
    auto deadline = steady::now() + patience;
    while (fd_count(worker) != fds_idle && steady::now() < deadline) ::poll(nullptr, 0, 10);
    const std::size_t fds_end = fd_count(worker);
    const long rss_end = rss_kib(worker);
    std::printf(
        "leak-figures mode=%s requests=%ld answered=%ld seconds=%.1f rate=%.0f/s rss_warm_kib=%ld "
        "rss_end_kib=%ld grew_kib=%ld fds_idle=%zu fds_end=%zu\n",
        mode.c_str(), n, ok, seconds, static_cast<double>(n) / seconds, rss_warm, rss_end, rss_end - rss_warm,
        fds_idle, fds_end);
    std::fflush(stdout);
    CHECK(ok == n);
    if (rss_meaningful) CHECK(rss_end - rss_warm < 1024);
    CHECK(fds_end == fds_idle);
    CHECK(children_of(s.pid()) == std::set<pid_t>{worker});  // the same worker served them all
    check_clean_stop(s);
  }
  CHECK(leaks.problems() == "");
}
