// prefork-httpd's event loops end to end, the epoll one (-m evented) and
// the io_uring one (-m uring), the same test body for each
// (httpd_modes.hpp): keep-alive, pipelining, many connections, the
// timeouts, and a graceful stop with connections open. And the system calls
// an evented keep-alive request costs, counted by strace (the uring count
// is in httpd_uring_test.cpp).
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <cstdlib>
#include <fstream>
#include <initializer_list>
#include <map>
#include <set>
#include <sstream>
#include <string>

#include "catch.hpp"
#include "httpd_modes.hpp"
#include "httpd_support.hpp"
#include "leak_check.hpp"
#include "proc.hpp"
#include "temp_dir.hpp"

using namespace httpd_test;

TEST_CASE("evented and uring: 1000 requests on one keep-alive connection",
          "[httpd][evented][uring][keepalive]") {
  const std::string mode = GENERATE(as<std::string>{}, "evented", "uring");
  if (!mode_runs_here(mode)) return;
  INFO("-m " << mode);
  prefork::test::leak_check leaks;
  {
    server s({"-m", mode});
    check_mode(s, mode);
    prefork::fd c = connect_to(s.port());
    std::string pending;
    int ok = 0;
    for (int i = 0; i < 1000; ++i) {
      send_text(c.get(), hello_request);
      response r = read_response(c.get(), pending);
      if (r.status == 200 && r.body == "Hello, World!" && !r.has("connection")) ++ok;
    }
    CHECK(ok == 1000);
    CHECK(pending.empty());
    // "Connection: close" from the client ends it after the answer.
    send_text(c.get(), "GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    response last = read_response(c.get(), pending);
    CHECK(last.header("connection") == "close");
    CHECK(closed_within(c.get(), 10s));
    check_clean_stop(s);
  }
  CHECK(leaks.problems() == "");
}

// The system calls a worker makes for `requests` keep-alive requests, one
// at a time on one connection, counted by strace attached to it; empty when
// strace is missing or may not trace (the test then says so and passes).
std::map<std::string, long> syscalls_for(server& s, int requests) {
  std::map<std::string, long> calls;
  if (::access("/usr/bin/strace", X_OK) != 0) return calls;
  std::set<pid_t> workers = prefork::test::children_of(s.pid());
  REQUIRE(workers.size() == 1);
  prefork::fd c = connect_to(s.port());
  std::string pending;
  send_text(c.get(), hello_request);  // the connection is open and idle in the loop
  REQUIRE(read_response(c.get(), pending).status == 200);

  prefork::test::temp_dir dir;
  std::string summary = (dir / "summary").string();
  auto err = prefork::pipe();
  prefork::spawn_options options;
  options.fds = {{err.write.get(), 2}};
  prefork::child strace = prefork::spawn({"/usr/bin/strace", "-f", "-c", "-U", "name,calls", "-o", summary,
                                          "-p", std::to_string(*workers.begin())},
                                         options);
  err.write.reset();
  std::string said;
  auto deadline = steady::now() + patience;
  while (said.find("attached") == std::string::npos && read_some_until(err.read.get(), said, deadline)) {
  }
  if (said.find("attached") == std::string::npos) {
    strace.wait();
    WARN("strace could not attach, syscalls not counted: " << said);
    return calls;
  }
  for (int i = 0; i < requests; ++i) {
    send_text(c.get(), hello_request);
    REQUIRE(read_response(c.get(), pending).status == 200);
  }
  // One more request before strace stops: strace counts a call when it
  // returns, and the client can hold the last answer before strace has
  // seen that write return. The worker has read this one (its read is
  // counted before its write begins) but its write may or may not be.
  send_text(c.get(), hello_request);
  REQUIRE(read_response(c.get(), pending).status == 200);
  strace.kill(SIGINT);  // detaches, writes the summary, and ends by the same signal
  strace.wait();
  std::string text = prefork::test::slurp(summary);
  INFO("strace's summary:\n" << text);
  REQUIRE(text.find("total") != std::string::npos);
  std::istringstream table(text);
  for (std::string line; std::getline(table, line);) {
    std::istringstream fields(line);
    std::string name;
    long n = 0;
    if (fields >> name >> n && name != "total") calls[name] = n;
  }
  return calls;
}

TEST_CASE("evented: a keep-alive request costs one read and one write",
          "[httpd][evented][keepalive][syscalls]") {
  prefork::test::leak_check leaks;
  {
    server s({"-m", "evented", "-w", "1"});
    const int requests = 200;
    std::map<std::string, long> calls = syscalls_for(s, requests);
    if (!calls.empty()) {
      auto sum = [&](std::initializer_list<const char*> names) {
        long n = 0;
        for (const char* name : names) n += calls.count(name) ? calls[name] : 0;
        return n;
      };
      long total = 0;
      std::string table;
      for (auto& [name, n] : calls) {
        total += n;
        table += "  " + name + " " + std::to_string(n) + "\n";
      }
      INFO("strace -c of the worker for " << requests << " requests:\n" << table);
      // The request arrives, is read once and answered with one write; the
      // loop waits once in between. A few more: the loop's 1 s tick, and
      // the last wait still in progress when strace detaches. Counted over
      // `requests` and the one after them (syscalls_for), whose write may
      // have returned after strace stopped counting.
      CHECK(sum({"recvfrom", "read", "recvmsg", "readv"}) == requests + 1);
      long writes = sum({"sendto", "write", "sendmsg", "writev"});
      CHECK(writes >= requests);
      CHECK(writes <= requests + 1);
      CHECK(sum({"epoll_wait", "epoll_pwait"}) <= requests + 5);
      CHECK(total <= 3 * requests + 10);
    }
    check_clean_stop(s);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("evented and uring: HTTP/1.0 keep-alive when asked for", "[httpd][evented][uring][keepalive]") {
  const std::string mode = GENERATE(as<std::string>{}, "evented", "uring");
  if (!mode_runs_here(mode)) return;
  INFO("-m " << mode);
  prefork::test::leak_check leaks;
  {
    server s({"-m", mode});
    check_mode(s, mode);
    prefork::fd c = connect_to(s.port());
    std::string pending;
    for (int i = 0; i < 3; ++i) {
      send_text(c.get(), "GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
      response r = read_response(c.get(), pending);
      CHECK(r.version == "HTTP/1.0");
      CHECK(r.header("connection") == "keep-alive");
      CHECK(r.body == "Hello, World!");
    }
    send_text(c.get(), "GET /hello HTTP/1.0\r\n\r\n");  // no keep-alive: the default for 1.0 is close
    response r = read_response(c.get(), pending);
    CHECK(r.header("connection") == "close");
    CHECK(closed_within(c.get(), 10s));
    check_clean_stop(s);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("evented and uring: 20 pipelined requests are answered in order, in one write",
          "[httpd][evented][uring][pipelining]") {
  const std::string mode = GENERATE(as<std::string>{}, "evented", "uring");
  if (!mode_runs_here(mode)) return;
  INFO("-m " << mode);
  prefork::test::leak_check leaks;
  {
    server s({"-m", mode});
    check_mode(s, mode);
    std::string batch;
    std::vector<std::pair<std::string, bool>> expected;  // body, HEAD
    for (int i = 0; i < 20; ++i) {
      std::string n = std::to_string(i);
      switch (i % 4) {
        case 0:
          batch += hello_request;
          expected.emplace_back("Hello, World!", false);
          break;
        case 1:
          batch += "HEAD /hello HTTP/1.1\r\nHost: t\r\n\r\n";
          expected.emplace_back("", true);
          break;
        case 2:
          batch += "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: " + std::to_string(5 + n.size()) +
                   "\r\n\r\nbody-" + n;
          expected.emplace_back("body-" + n, false);
          break;
        case 3:
          batch += "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nchunk-\r\n" +
                   std::to_string(n.size()) + "\r\n" + n + "\r\n0\r\n\r\n";
          expected.emplace_back("chunk-" + n, false);
          break;
      }
    }
    prefork::fd c = connect_to(s.port());
    send_text(c.get(), batch);  // one write: the server sees them all at once
    std::string first;
    REQUIRE(read_some_until(c.get(), first, steady::now() + patience));
    // Answered with one write: the first read holds all twenty answers.
    std::string rest = first;
    for (std::size_t i = 0; i < expected.size(); ++i) {
      INFO("answer " << i);
      auto r = parse_response(rest, expected[i].second);
      REQUIRE(r);
      CHECK(r->status == 200);
      CHECK(r->body == expected[i].first);
      rest.erase(0, r->size);
    }
    CHECK(rest.empty());
    check_clean_stop(s);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("evented and uring: a large file, then pipelined requests behind it",
          "[httpd][evented][uring][sendfile]") {
  const std::string mode = GENERATE(as<std::string>{}, "evented", "uring");
  if (!mode_runs_here(mode)) return;
  INFO("-m " << mode);
  prefork::test::leak_check leaks;
  {
    char tmpl[] = "/tmp/prefork-httpd-big-XXXXXX";
    std::string root = ::mkdtemp(tmpl);
    std::string big;
    for (int i = 0; big.size() < (6u << 20); ++i) big += "line " + std::to_string(i) + "\n";
    std::ofstream(root + "/big.txt", std::ios::binary) << big;
    {
      server s({"-m", mode, root});
      check_mode(s, mode);
      prefork::fd c = connect_to(s.port());
      // The file is far larger than the socket buffer: the loop sends it in
      // parts as the client reads (evented: sendfile to EAGAIN, resumed on
      // EPOLLOUT; uring: short sends resubmitted), the pipelined requests
      // waiting behind it.
      send_text(c.get(), "GET /big.txt HTTP/1.1\r\nHost: t\r\n\r\n" + hello_request +
                             "GET /big.txt HTTP/1.1\r\nHost: t\r\nRange: bytes=-6\r\n\r\n" + hello_request);
      std::string pending;
      response first = read_response(c.get(), pending);
      CHECK(first.status == 200);
      CHECK(first.body.size() == big.size());
      CHECK(first.body == big);
      CHECK(read_response(c.get(), pending).body == "Hello, World!");
      response tail = read_response(c.get(), pending);
      CHECK(tail.status == 206);
      CHECK(tail.body == big.substr(big.size() - 6));
      CHECK(read_response(c.get(), pending).body == "Hello, World!");
      check_clean_stop(s);
    }
    std::system(("rm -rf '" + root + "'").c_str());
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("evented and uring: a file that shrinks while it is sent ends its connection, not the server",
          "[httpd][evented][uring][sendfile]") {
  const std::string mode = GENERATE(as<std::string>{}, "evented", "uring");
  if (!mode_runs_here(mode)) return;
  INFO("-m " << mode);
  prefork::test::leak_check leaks;
  {
    prefork::test::temp_dir root;
    const std::string path = (root.path / "big.bin").string();
    // Far more than loopback's socket buffers hold: the server is still
    // sending (waiting for room) when the file is cut.
    const std::size_t size = std::size_t(32) << 20;
    std::ofstream(path, std::ios::binary) << std::string(size, 'x');
    {
      // Idle timeouts far beyond the wait below: only the cut may close it.
      server s({"-m", mode, "--keepalive-timeout", "60", "--header-timeout", "60", root.path.string()});
      check_mode(s, mode);
      prefork::fd c = connect_to(s.port());
      send_text(c.get(), "GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n");
      std::string got;
      while (got.find("\r\n\r\n") == std::string::npos || got.size() < 100000)
        REQUIRE(read_some_until(c.get(), got, steady::now() + patience));
      REQUIRE(got.find("HTTP/1.1 200 ") == 0);
      REQUIRE(::truncate(path.c_str(), 0) == 0);
      // sendfile then finds nothing where the length promised more: the
      // framing cannot be kept, so the connection is closed mid-body.
      got += read_until_close(c.get());
      CHECK(closed_within(c.get(), 1s));
      CHECK(got.size() < size);
      // The worker lives on and serves the next client.
      prefork::fd d = connect_to(s.port());
      send_text(d.get(), hello_request);
      std::string pending;
      CHECK(read_response(d.get(), pending).body == "Hello, World!");
      check_clean_stop(s);
    }
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("evented and uring: 500 concurrent keep-alive connections are all served",
          "[httpd][evented][uring][concurrency]") {
  const std::string mode = GENERATE(as<std::string>{}, "evented", "uring");
  if (!mode_runs_here(mode)) return;
  INFO("-m " << mode);
  prefork::test::leak_check leaks;
  {
    server s({"-m", mode});
    check_mode(s, mode);
    std::vector<prefork::fd> conns;
    for (int i = 0; i < 500; ++i) conns.push_back(connect_to(s.port()));
    int served = 0;
    for (int round = 0; round < 2; ++round) {
      for (auto& c : conns) send_text(c.get(), hello_request);
      for (auto& c : conns) {
        std::string pending;
        response r = read_response(c.get(), pending);
        if (r.status == 200 && r.body == "Hello, World!") ++served;
      }
    }
    CHECK(served == 1000);
    conns.clear();
    check_clean_stop(s);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("evented and uring: beyond --max-connections new connections wait in the kernel's queue",
          "[httpd][evented][uring][concurrency]") {
  const std::string mode = GENERATE(as<std::string>{}, "evented", "uring");
  if (!mode_runs_here(mode)) return;
  INFO("-m " << mode);
  prefork::test::leak_check leaks;
  {
    server s({"-m", mode, "-w", "1", "--max-connections", "4"});
    check_mode(s, mode);
    // Six clients, one request each, one at a time so the worker takes them
    // in order: four are answered and kept open, two wait.
    std::vector<prefork::fd> conns;
    std::vector<std::string> pending(6);
    for (std::size_t i = 0; i < 6; ++i) {
      conns.push_back(connect_to(s.port()));
      send_text(conns.back().get(), hello_request);
      if (i < 4) CHECK(read_response(conns[i].get(), pending[i]).status == 200);
    }
    // Nothing can say "the worker has decided not to answer" but silence:
    // a bounded wait in which an answer would be the failure.
    for (std::size_t i = 4; i < 6; ++i) {
      pollfd p{conns[i].get(), POLLIN, 0};
      CHECK(::poll(&p, 1, i == 4 ? 500 : 0) == 0);
    }
    // The kept ones still work; closing two lets the two waiting in.
    send_text(conns[0].get(), hello_request);
    CHECK(read_response(conns[0].get(), pending[0]).status == 200);
    conns[0].reset();
    conns[1].reset();
    for (std::size_t i = 4; i < 6; ++i) CHECK(read_response(conns[i].get(), pending[i]).status == 200);
    conns.clear();
    check_clean_stop(s);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("evented and uring: the keep-alive timeout closes an idle connection",
          "[httpd][evented][uring][timeout]") {
  const std::string mode = GENERATE(as<std::string>{}, "evented", "uring");
  if (!mode_runs_here(mode)) return;
  INFO("-m " << mode);
  prefork::test::leak_check leaks;
  {
    server s({"-m", mode, "--keepalive-timeout", "0.5"});
    check_mode(s, mode);
    prefork::fd c = connect_to(s.port());
    std::string pending;
    send_text(c.get(), hello_request);
    CHECK(read_response(c.get(), pending).status == 200);
    auto answered = steady::now();
    CHECK(closed_within(c.get(), 10s));
    CHECK(steady::now() - answered >= 400ms);
    CHECK(steady::now() - answered < 5s);
    check_clean_stop(s);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("evented and uring: a slow header is closed while a fast client is answered",
          "[httpd][evented][uring][timeout]") {
  const std::string mode = GENERATE(as<std::string>{}, "evented", "uring");
  if (!mode_runs_here(mode)) return;
  INFO("-m " << mode);
  prefork::test::leak_check leaks;
  {
    // One worker, so both clients share its loop.
    server s({"-m", mode, "-w", "1", "--header-timeout", "1"});
    check_mode(s, mode);
    prefork::fd slow = connect_to(s.port());
    send_text(slow.get(), "GET /hello HTTP/1.1\r\nHost: t\r\nX-Slow: ");  // and nothing more
    auto start = steady::now();
    prefork::fd fast = connect_to(s.port());
    std::string pending;
    for (int i = 0; i < 50; ++i) {
      send_text(fast.get(), hello_request);
      CHECK(read_response(fast.get(), pending).body == "Hello, World!");
    }
    CHECK(steady::now() - start < 900ms);  // answered while the slow head was still pending
    std::string got = read_until_close(slow.get(), steady::now() + 10s);
    CHECK(got.find("HTTP/1.1 408 ") == 0);
    CHECK(steady::now() - start >= 900ms);
    // The fast connection lives on.
    send_text(fast.get(), hello_request);
    CHECK(read_response(fast.get(), pending).status == 200);
    check_clean_stop(s);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("evented and uring: QUIT closes idle connections and finishes the request in flight",
          "[httpd][evented][uring][quit]") {
  const std::string mode = GENERATE(as<std::string>{}, "evented", "uring");
  if (!mode_runs_here(mode)) return;
  INFO("-m " << mode);
  prefork::test::leak_check leaks;
  {
    server s({"-m", mode});
    check_mode(s, mode);
    std::vector<prefork::fd> idle;
    for (int i = 0; i < 100; ++i) {
      idle.push_back(connect_to(s.port()));
      std::string pending;
      send_text(idle.back().get(), hello_request);
      REQUIRE(read_response(idle.back().get(), pending).status == 200);
    }
    prefork::fd sleeper = connect_to(s.port());
    send_text(sleeper.get(), "GET /sleep?ms=800 HTTP/1.1\r\nHost: t\r\n\r\n");
    // The other worker answers /_status while this one sleeps.
    auto deadline = steady::now() + patience;
    while (get(s.port(), "/_status?format=json").body.find("/sleep?ms=800") == std::string::npos)
      REQUIRE(steady::now() < deadline);
    s.signal(SIGQUIT);
    std::string pending;
    response slept = read_response(sleeper.get(), pending);
    CHECK(slept.status == 200);
    CHECK(slept.body == "slept 800 ms\n");
    CHECK(slept.header("connection") == "close");
    CHECK(closed_within(sleeper.get(), 10s));
    int closed = 0;
    for (auto& c : idle)
      if (closed_within(c.get(), 10s)) ++closed;
    CHECK(closed == 100);
    prefork::exit_status st = s.stop(0);
    INFO(s.log());
    CHECK(st.describe() == "exited 0");
    CHECK(s.log().find("SIGKILL") == std::string::npos);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("evented and uring: QUIT answers a connection accepted before its first request arrived",
          "[httpd][evented][uring][quit]") {
  const std::string mode = GENERATE(as<std::string>{}, "evented", "uring");
  if (!mode_runs_here(mode)) return;
  INFO("-m " << mode);
  prefork::test::leak_check leaks;
  {
    // The admin socket has no TCP_DEFER_ACCEPT: a worker accepts a
    // connection there before its request arrives. The client connected
    // before the stop, so the stop owes it an answer; it must not be
    // closed with the idle keep-alive connections (an upgrade's old worker
    // did that, and a probe saw its connection closed unanswered).
    server s({"-m", mode, "-w", "1", "--admin-listen", "127.0.0.1:0"});
    check_mode(s, mode);
    std::string line = s.wait_log("(admin)", 0);
    const int admin = std::stoi(line.substr(line.find("127.0.0.1:") + 10));
    std::set<pid_t> workers = prefork::test::children_of(s.pid());
    REQUIRE(workers.size() == 1);
    const pid_t worker = *workers.begin();

    prefork::fd kept = connect_to(s.port());  // idle between requests: closed by the stop
    std::string pending;
    send_text(kept.get(), hello_request);
    REQUIRE(read_response(kept.get(), pending).status == 200);
    const std::size_t before = prefork::test::fd_count(worker);
    prefork::fd fresh = connect_to(admin);
    auto deadline = steady::now() + patience;
    while (prefork::test::fd_count(worker) <= before) REQUIRE(steady::now() < deadline);  // accepted

    s.signal(SIGQUIT);
    REQUIRE(closed_within(kept.get(), 10s));  // the stop has begun in the worker
    send_text(fresh.get(), "GET /_status HTTP/1.1\r\nHost: t\r\n\r\n");
    std::string rest;
    response r = read_response(fresh.get(), rest);
    CHECK(r.status == 200);
    CHECK(r.header("connection") == "close");
    CHECK(closed_within(fresh.get(), 10s));
    prefork::exit_status st = s.stop(0);
    INFO(s.log());
    CHECK(st.describe() == "exited 0");
  }
  CHECK(leaks.problems() == "");
}
