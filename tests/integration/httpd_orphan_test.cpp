// prefork-httpd's event-loop workers (evented and uring, httpd_modes.hpp)
// when their master is SIGKILLed: end of file on the control pipe is a
// graceful stop, so what a worker holds (a
// response half sent, a slow request) is finished before it exits.
#include <sys/prctl.h>

#include <fstream>
#include <set>
#include <string>

#include "catch.hpp"
#include "httpd_modes.hpp"
#include "httpd_support.hpp"
#include "leak_check.hpp"
#include "proc.hpp"
#include "temp_dir.hpp"

using namespace httpd_test;

namespace {

// The orphaned workers come to the test, which reaps them.
const bool subreaper = ::prctl(PR_SET_CHILD_SUBREAPER, 1) == 0;

}  // namespace

TEST_CASE("evented and uring: a SIGKILLed master's workers finish the responses in flight, then exit",
          "[httpd][evented][uring][orphan]") {
  REQUIRE(subreaper);
  const std::string mode = GENERATE(as<std::string>{}, "evented", "uring");
  if (!mode_runs_here(mode)) return;
  INFO("-m " << mode);
  prefork::test::leak_check leaks;
  {
    prefork::test::temp_dir root;
    std::string big;
    for (int i = 0; big.size() < (6u << 20); ++i) big += "line " + std::to_string(i) + "\n";
    std::ofstream((root / "big.txt").string(), std::ios::binary) << big;
    server s({"-m", mode, root.path.string()});
    check_mode(s, mode);
    std::set<pid_t> workers = prefork::test::children_of(s.pid());
    REQUIRE(workers.size() == 2);

    // A response far larger than the socket buffers, read only a little:
    // the rest waits in its worker until the socket has room.
    prefork::fd reader = connect_to(s.port());
    send_text(reader.get(), "GET /big.txt HTTP/1.1\r\nHost: t\r\n\r\n");
    std::string got;
    auto deadline = steady::now() + patience;
    while (got.size() < 65536) REQUIRE(read_some_until(reader.get(), got, deadline));
    // And a slow request, asleep in a worker.
    prefork::fd sleeper = connect_to(s.port());
    send_text(sleeper.get(), "GET /sleep?ms=800 HTTP/1.1\r\nHost: t\r\n\r\n");
    while (get(s.port(), "/_status?format=json").body.find("/sleep?ms=800") == std::string::npos)
      REQUIRE(steady::now() < deadline);

    s.process().kill(SIGKILL);
    CHECK(s.process().wait().describe() == "killed by SIGKILL");

    std::string pending;
    response slept = read_response(sleeper.get(), pending);
    CHECK(slept.status == 200);
    CHECK(slept.body == "slept 800 ms\n");
    CHECK(closed_within(sleeper.get(), 10s));
    got += read_until_close(reader.get());
    std::optional<response> whole = parse_response(got);
    REQUIRE(whole);
    CHECK(whole->status == 200);
    CHECK(whole->body.size() == big.size());
    CHECK(whole->body == big);

    for (pid_t w : workers) {
      prefork::child orphan = prefork::child::adopt(w);
      std::optional<prefork::exit_status> how = orphan.wait_for(patience);
      REQUIRE(how);
      CHECK(how->describe() == "exited 0");
    }
    for (int i = 0; i < 2; ++i) s.wait_log("the master is gone; stopping after the request in hand");
  }
  CHECK(leaks.problems() == "");
}
