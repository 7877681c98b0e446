// worker::wait_readable in a real pool: it keeps the heartbeat going while a
// client is quiet, gives up at its own timeout, a graceful stop wins over a
// client between requests that spoke at the same moment, and a connection
// accepted just before a stop still has its first request answered.
#include <poll.h>

#include <string>

#include "pool_harness.hpp"

using namespace pool_test;

namespace {

void say(int conn, const std::string& text) {
  std::error_code ec;
  std::string line = text + "\n";
  prefork::write_all(conn, line.data(), line.size(), ec);
}

}  // namespace

TEST_CASE("wait_readable: a client quiet for longer than the heartbeat timeout keeps its worker alive",
          "[pool][worker][wait]") {
  prefork::test::leak_check leaks;
  {
    pool p(
        // A 1 s timeout (a tick every 250 ms): with 200 ms a loaded CI
        // machine once scheduled the waiting worker too late and it was
        // killed, which is the heartbeat working, not wait_readable failing.
        1, [](prefork::pool_config& c) { c.timeout = 1s; },
        [](prefork::worker& w) {
          while (prefork::fd conn = w.accept()) {
            say(conn.get(), "waiting");
            auto start = clock::now();
            bool readable = w.wait_readable(conn.get(), 2500ms);
            auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(clock::now() - start).count();
            say(conn.get(), std::string(readable ? "readable" : "timed out") +
                                (w.stopping() ? " stopping" : "") + " " + std::to_string(waited));
            readable = w.wait_readable(conn.get(), std::chrono::milliseconds(-1));  // no limit
            say(conn.get(), readable ? "readable" : "not readable");
          }
        });
    std::set<pid_t> workers = p.start(1);
    client c(p.address);
    CHECK(c.receive() == "waiting");
    // Two and a half heartbeat timeouts pass while the worker waits for us.
    std::string said = c.receive();
    INFO(said);
    REQUIRE(said.rfind("timed out ", 0) == 0);
    CHECK(std::stol(said.substr(10)) >= 2500);
    c.send("hello");
    CHECK(c.receive() == "readable");
    CHECK(children_of(p.pid()) == workers);  // never killed for silence
    CHECK(p.ev.transcript().find("SIGKILL") == std::string::npos);
    p.quit();
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("wait_readable: between requests, a stop wins over a client that spoke at the same moment",
          "[pool][worker][wait]") {
  prefork::test::leak_check leaks;
  {
    pool p(1, {}, [](prefork::worker& w) {
      while (prefork::fd conn = w.accept()) {
        say(conn.get(), "ready");
        char buf[64];
        std::size_t n = w.read(conn.get(), buf, sizeof buf);  // the first request, answered
        say(conn.get(), "got " + std::string(buf, n > 0 ? n - 1 : 0));
        // Both at once: the client's next line is queued before the
        // master's QUIT arrives (the test sends them in that order).
        pollfd stop{w.stop_fd(), POLLIN, 0};
        ::poll(&stop, 1, 20000);
        bool readable = w.wait_readable(conn.get(), std::chrono::milliseconds(-1));
        say(conn.get(), readable ? "client won" : (w.stopping() ? "stop won" : "neither"));
      }
    });
    p.start(1);
    client c(p.address);
    CHECK(c.receive() == "ready");
    c.send("one");
    CHECK(c.receive() == "got one");
    c.send("hello");
    p.signal(SIGQUIT);
    CHECK(c.receive() == "stop won");
    CHECK(c.receive() == "");  // then the connection is closed
    CHECK(p.wait_exit().describe() == "exited 0");
    CHECK(p.ev.transcript().find("SIGKILL") == std::string::npos);
  }
  CHECK(leaks.problems() == "");
}

// The race of every upgrade and graceful stop: the kernel completed the
// handshake and the worker accepted, then QUIT arrived before the client's
// first bytes. Closing now would fail a request the client has made.
TEST_CASE("wait_readable: a connection accepted just before a stop has its first request answered",
          "[pool][worker][wait]") {
  prefork::test::leak_check leaks;
  {
    pool p(1, {}, [](prefork::worker& w) {
      while (prefork::fd conn = w.accept()) {
        say(conn.get(), "accepted");
        pollfd stop{w.stop_fd(), POLLIN, 0};
        ::poll(&stop, 1, 20000);  // the stop is asked before the client speaks
        char buf[64];
        std::size_t n = w.read(conn.get(), buf, sizeof buf);
        say(conn.get(), n > 0 ? "answer to " + std::string(buf, n - 1) : "closed unheard");
        n = w.read(conn.get(), buf, sizeof buf);  // a second request is not waited for
        say(conn.get(), n > 0 ? "second answered" : "done");
      }
    });
    p.start(1);
    client c(p.address);
    CHECK(c.receive() == "accepted");
    p.signal(SIGQUIT);
    c.send("hello");
    CHECK(c.receive() == "answer to hello");
    CHECK(c.receive() == "done");
    CHECK(c.receive() == "");
    CHECK(p.wait_exit().describe() == "exited 0");
    CHECK(p.ev.transcript().find("SIGKILL") == std::string::npos);
  }
  CHECK(leaks.problems() == "");
}
