// prefork-httpd against hostile clients, end to end: slowloris in both
// modes, a thousand connections of garbage, oversized heads and bodies cut
// short, and the request-smuggling battery. The figures (latency under
// slowloris, resident size and descriptors after the garbage) are in
// docs/reliability.md.
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>

#include "catch.hpp"
#include "chaos_support.hpp"
#include "httpd_modes.hpp"
#include "leak_check.hpp"

using namespace chaos;

namespace {

// A state of /proc that nothing notifies: looked at every 10 ms until it
// holds or the deadline passes.
template <class F>
bool eventually(F holds, steady::duration within = patience) {
  auto deadline = steady::now() + within;
  for (;;) {
    if (holds()) return true;
    if (steady::now() >= deadline) return false;
    ::poll(nullptr, 0, 10);
  }
}

// One slow client: a head that never ends, a byte now and then.
struct slow_client {
  prefork::fd sock;
  steady::time_point first_byte;
  steady::time_point closed_at{};
  bool got_408 = false;
  std::string seen;
};

// Opens n slow clients, each with the start of a head.
std::vector<slow_client> open_slow(int port, int n) {
  std::vector<slow_client> out(static_cast<std::size_t>(n));
  for (slow_client& c : out) {
    c.sock = connect_to(port);
    c.first_byte = steady::now();
    send_text(c.sock.get(), "GET /hello HTTP/1.1\r\nHost: t\r\nX-Slow: ");
  }
  return out;
}

// Notes the slow clients the server closed; a byte to the others if asked.
void trickle(std::vector<slow_client>& clients, bool send_byte) {
  for (slow_client& c : clients) {
    if (c.closed_at != steady::time_point{}) continue;
    pollfd p{c.sock.get(), POLLIN, 0};
    if (::poll(&p, 1, 0) == 1) {
      char buf[4096];
      ssize_t n;
      while ((n = ::recv(c.sock.get(), buf, sizeof buf, MSG_DONTWAIT)) > 0)
        c.seen.append(buf, static_cast<std::size_t>(n));
      if (n == 0 || (n == -1 && errno != EAGAIN)) {
        c.closed_at = steady::now();
        c.got_408 = c.seen.rfind("HTTP/1.1 408 ", 0) == 0;
        continue;
      }
    }
    if (send_byte) ::send(c.sock.get(), "a", 1, MSG_NOSIGNAL);
  }
}

// Reads what the server said to each (noting closes) at every call, and
// sends the next byte once 100 ms have passed since the last.
void trickle_if_due(std::vector<slow_client>& clients, steady::time_point& last) {
  bool due = steady::now() - last >= std::chrono::milliseconds(100);
  if (due) last = steady::now();
  trickle(clients, due);
}

std::size_t still_open(const std::vector<slow_client>& clients) {
  return static_cast<std::size_t>(std::count_if(clients.begin(), clients.end(), [](const slow_client& c) {
    return c.closed_at == steady::time_point{};
  }));
}

double ms(steady::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

}  // namespace

TEST_CASE(
    "hostile: 500 slowloris connections in the evented and uring modes; a normal client is still answered",
    "[hostile][slowloris]") {
  const std::string mode = GENERATE(as<std::string>{}, "evented", "uring");
  if (!mode_runs_here(mode)) return;
  INFO("mode " << mode);
  prefork::test::leak_check leaks;
  {
    const auto header_timeout = std::chrono::milliseconds(2000);
    server s({"-m", mode, "-w", "2", "--header-timeout", "2"});
    check_mode(s, mode);
    std::vector<slow_client> slow = open_slow(s.port(), 500);
    std::vector<double> latencies;
    int answered = 0;
    auto last_trickle = steady::now();
    auto deadline = steady::now() + header_timeout + patience;
    // A normal client asks all the while; the slow ones get a byte every
    // 100 ms (that is their behaviour, not a wait), until the server has
    // closed every one of them.
    while (still_open(slow) > 0 && steady::now() < deadline) {
      auto t0 = steady::now();
      int status = status_of(s.port(), hello_close, std::chrono::milliseconds(10000));
      latencies.push_back(ms(steady::now() - t0));
      if (status == 200) ++answered;
      trickle_if_due(slow, last_trickle);
    }
    REQUIRE(still_open(slow) == 0);
    std::sort(latencies.begin(), latencies.end());
    double p50 = latencies[latencies.size() / 2], p99 = latencies[latencies.size() * 99 / 100],
           worst = latencies.back();
    WARN("slowloris (" << mode << "): " << latencies.size() << " normal requests, p50 " << p50 << " ms, p99 "
                       << p99 << " ms, max " << worst << " ms");
    CHECK(answered == static_cast<int>(latencies.size()));
    // The target is 100 ms at p99; on this shared two-core machine only a
    // looser bound is robust (docs/reliability.md has the measured figure).
    CHECK(p99 < 1000);
    // Each slow client was cut at the header timeout, counted from its
    // first byte, not from its last one (the trickle never resets it).
    double earliest = 1e9, latest = 0;
    int with_408 = 0;
    for (const slow_client& c : slow) {
      earliest = std::min(earliest, ms(c.closed_at - c.first_byte));
      latest = std::max(latest, ms(c.closed_at - c.first_byte));
      with_408 += c.got_408;
    }
    WARN("slow clients closed between " << earliest << " and " << latest << " ms after their first byte; "
                                        << with_408 << " with a 408");
    CHECK(earliest >= 1900);
    CHECK(latest < 2000 + 5000);
    CHECK(with_408 == 500);
    slow.clear();
    check_clean_stop(s);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("hostile: slowloris in blocking mode is cut at the header timeout too", "[hostile][slowloris]") {
  prefork::test::leak_check leaks;
  {
    // Blocking mode holds one connection per worker: six slow clients over
    // two workers take three header timeouts, and a normal client waits
    // behind them. That is why blocking mode belongs behind a buffering
    // proxy (docs/reliability.md); what is tested here is that each slow
    // client is cut at the header timeout, so the wait is bounded.
    server s({"-m", "blocking", "-w", "2", "--header-timeout", "1"});
    auto start = steady::now();
    std::vector<slow_client> slow = open_slow(s.port(), 6);
    auto last_trickle = steady::now();
    while (still_open(slow) > 0 && steady::now() - start < patience) {
      // Woken by the server's answer or close, or by the slow clients' pace
      // (a byte every 100 ms).
      std::vector<pollfd> ps;
      for (const slow_client& c : slow)
        if (c.closed_at == steady::time_point{}) ps.push_back({c.sock.get(), POLLIN, 0});
      ::poll(ps.data(), ps.size(), ms_left(last_trickle + std::chrono::milliseconds(100)));
      trickle_if_due(slow, last_trickle);
    }
    REQUIRE(still_open(slow) == 0);
    double total = ms(steady::now() - start);
    int with_408 = 0;
    for (const slow_client& c : slow) with_408 += c.got_408;
    WARN("slowloris (blocking): 6 slow clients over 2 workers all cut after " << total << " ms");
    CHECK(with_408 == 6);
    CHECK(total >= 2800);        // three rounds of a one-second header timeout
    CHECK(total < 3000 + 5000);  // and not more: each was cut on time
    CHECK(get(s.port(), "/hello").body == "Hello, World!");
    slow.clear();
    check_clean_stop(s);
  }
  CHECK(leaks.problems() == "");
}

namespace {

enum class kind {
  random_bytes,
  oversized_head,
  half_chunked,
  random_vanish,
  cut_head_vanish,
  oversized_body
};

struct hostile {
  prefork::fd sock;
  kind what;
  bool reads = false;
  std::string got;
  bool done = false;
};

std::string random_bytes(std::mt19937& rng, std::size_t n) {
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng() & 0xff);
  return s;
}

// Sends what a hostile client sends; false if the server closed first.
bool send_hostile(int sock, const std::string& data) {
  std::string_view left = data;
  auto deadline = steady::now() + patience;
  while (!left.empty()) {
    ssize_t n = ::send(sock, left.data(), left.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      left.remove_prefix(static_cast<std::size_t>(n));
      continue;
    }
    if (n == -1 && errno == EAGAIN) {
      pollfd p{sock, POLLOUT, 0};
      if (::poll(&p, 1, ms_left(deadline)) != 1) return false;
      continue;
    }
    return false;  // EPIPE, ECONNRESET: refused before the end
  }
  return true;
}

struct round_result {
  int answered = 0, closed = 0, hung = 0, vanished = 0;
  std::map<int, int> statuses;
};

// 1000 hostile connections in batches of 100 at a time.
round_result hostile_round(int port, std::mt19937& rng) {
  round_result out;
  for (int batch = 0; batch < 10; ++batch) {
    std::vector<hostile> conns(100);
    for (std::size_t i = 0; i < conns.size(); ++i) {
      hostile& h = conns[i];
      h.sock = connect_to(port);
      h.what = static_cast<kind>(rng() % 6);
      std::string data;
      switch (h.what) {
        case kind::random_bytes:
          // Ends like a head, so it is judged at once rather than at the
          // header timeout (the slowloris tests cover that).
          data = random_bytes(rng, 64 + rng() % 2048) + "\r\n\r\n";
          h.reads = true;
          break;
        case kind::oversized_head:
          data = "GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + std::string(100000, 'a') + "\r\n\r\n";
          h.reads = true;
          break;
        case kind::oversized_body:
          data =
              "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999\r\n\r\n" + std::string(1000, 'b');
          h.reads = true;
          break;
        case kind::half_chunked:
          data = "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n100\r\n" +
                 std::string(50, 'c');
          break;
        case kind::random_vanish: data = random_bytes(rng, 1 + rng() % 512); break;
        case kind::cut_head_vanish: data = "GET /hello HTTP/1.1\r\nHost: t\r\nX-Cut: "; break;
      }
      send_hostile(h.sock.get(), data);
      if (!h.reads) {
        if (rng() % 2) {  // vanish with a reset rather than a close
          linger l{1, 0};
          ::setsockopt(h.sock.get(), SOL_SOCKET, SO_LINGER, &l, sizeof l);
        }
        h.sock.reset();
        h.done = true;
        ++out.vanished;
      }
    }
    auto deadline = steady::now() + patience;
    for (hostile& h : conns) {
      if (h.done) continue;
      h.got = read_until_close(h.sock.get(), deadline);
      pollfd p{h.sock.get(), POLLIN, 0};
      bool eof = ::poll(&p, 1, 0) == 1;
      h.sock.reset();  // at once: a server lingering for our close must not wait
      if (h.got.rfind("HTTP/1.1 ", 0) == 0) {
        ++out.answered;
        ++out.statuses[std::atoi(h.got.c_str() + 9)];
      } else {
        ++(eof ? out.closed : out.hung);
      }
    }
  }
  return out;
}

std::string describe(const round_result& r) {
  std::string s = std::to_string(r.answered) + " answered (";
  for (auto [status, n] : r.statuses) s += std::to_string(status) + "x" + std::to_string(n) + " ";
  return s + "), " + std::to_string(r.closed) + " closed unanswered, " + std::to_string(r.vanished) +
         " vanished, " + std::to_string(r.hung) + " hung";
}

}  // namespace

TEST_CASE("hostile: 1000 connections of garbage, oversized heads and cut bodies leak nothing",
          "[hostile][garbage]") {
  prefork::test::leak_check leaks;
  {
    std::string mode = GENERATE(as<std::string>{}, "evented", "blocking", "uring");
    INFO("mode " << mode);
    if (!mode_runs_here(mode)) return;
    server s({"-m", mode, "-w", "2", "--header-timeout", "1", "--max-body", "65536"});
    check_mode(s, mode);
    std::vector<pid_t> workers = wait_workers(s.pid(), 2);
    std::mt19937 rng(2026);
    auto idle_fds = [&] {
      std::size_t n = 0;
      for (pid_t w : workers) n += fd_count(w);
      return n;
    };
    const std::size_t fds_at_start = idle_fds();
    // The first rounds grow what a worker keeps for reuse: a connection
    // slot per connection it ever held at once, and the allocator's
    // high-water mark. A worker that meets a new peak of concurrent large
    // requests later grows once more, by a step (PREFORK_HOSTILE_ROUNDS=24
    // shows the steps; docs/reliability.md). A leak of 1 KiB per connection
    // would exceed the bound over the next two thousand connections.
    std::vector<round_result> rounds;
    std::vector<long> rss_after_warmup;
    const char* env = std::getenv("PREFORK_HOSTILE_ROUNDS");  // scripts/soak style: more rounds by hand
    const int rounds_wanted = env && std::atoi(env) > 4 ? std::atoi(env) : 4;
    for (int round = 0; round < rounds_wanted; ++round) {
      rounds.push_back(hostile_round(s.port(), rng));
      INFO("round " << round << ": " << describe(rounds.back()));
      CHECK(rounds.back().hung == 0);
      for (auto [status, n] : rounds.back().statuses) CHECK((status >= 400 && status < 500));
      CHECK(eventually([&] { return idle_fds() == fds_at_start; }));
      if (round == 1)
        for (pid_t w : workers) rss_after_warmup.push_back(rss_kib(w));
      if (env)
        std::printf("round %d: RSS %ld KiB, %ld KiB\n", round, rss_kib(workers[0]), rss_kib(workers[1]));
    }
    INFO("last round: " << describe(rounds.back()));
    for (std::size_t i = 0; i < workers.size(); ++i) {
      long grew = rss_kib(workers[i]) - rss_after_warmup[i];
      WARN(mode << " worker " << i << ": RSS " << rss_after_warmup[i]
                << " KiB after 2000 hostile connections, grew " << grew << " KiB over the next 2000");
      if (rss_meaningful) CHECK(grew < 2048);
    }
    CHECK(wait_workers(s.pid(), 2) == workers);  // none died
    CHECK(get(s.port(), "/hello").body == "Hello, World!");
    check_clean_stop(s);
  }
  CHECK(leaks.problems() == "");
}

namespace {

struct smuggle_case {
  const char* name;
  std::string raw;
  int status;
};

std::vector<smuggle_case> smuggling_battery() {
  const std::string post = "POST /echo HTTP/1.1\r\nHost: t\r\n";
  const std::string chunked = post + "Transfer-Encoding: chunked\r\n\r\n";
  return {
      {"CL and TE", post + "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
      {"TE and CL", post + "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n", 400},
      {"two different CL", post + "Content-Length: 2\r\nContent-Length: 3\r\n\r\nhi!", 400},
      {"CL list", post + "Content-Length: 2, 2\r\n\r\nhi", 400},
      {"CL with sign", post + "Content-Length: +2\r\n\r\nhi", 400},
      {"CL negative", post + "Content-Length: -2\r\n\r\nhi", 400},
      {"CL hex", post + "Content-Length: 0x2\r\n\r\nhi", 400},
      {"CL overflow", post + "Content-Length: 99999999999999999999999\r\n\r\nhi", 400},
      {"CL two numbers", post + "Content-Length: 1 2\r\n\r\nhi", 400},
      {"obs-fold", post + "X-A: a\r\n b\r\nContent-Length: 2\r\n\r\nhi", 400},
      {"obs-fold TE", post + "Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n", 400},
      {"whitespace before first field", "GET /hello HTTP/1.1\r\n Host: t\r\n\r\n", 400},
      {"space before colon", post + "Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400},
      {"bare LF", "GET /hello HTTP/1.1\nHost: t\n\n", 400},
      {"bare LF in one line", "GET /hello HTTP/1.1\r\nHost: t\nX: y\r\n\r\n", 400},
      {"bare CR in a value", "GET /hello HTTP/1.1\r\nHost: t\r\nX-A: a\rb\r\n\r\n", 400},
      {"bare CR ending the head", "GET /hello HTTP/1.1\r\nHost: t\r\n\r\r\n", 400},
      {"NUL in a value", std::string("GET /hello HTTP/1.1\r\nHost: t\r\nX: a\0b\r\n\r\n", 40), 400},
      {"chunk size not hex", chunked + "zz\r\nhi\r\n0\r\n\r\n", 400},
      {"chunk size negative", chunked + "-2\r\nhi\r\n0\r\n\r\n", 400},
      {"chunk size 0x", chunked + "0x2\r\nhi\r\n0\r\n\r\n", 400},
      {"chunk size overflow", chunked + "fffffffffffffffff2\r\nhi\r\n0\r\n\r\n", 400},
      {"chunk size with space before", chunked + " 2\r\nhi\r\n0\r\n\r\n", 400},
      {"chunk size with sign", chunked + "+2\r\nhi\r\n0\r\n\r\n", 400},
      {"chunk longer than its size", chunked + "2\r\nhello\r\n0\r\n\r\n", 400},
      {"chunk without CRLF", chunked + "2\r\nhiXX0\r\n\r\n", 400},
      {"chunk lines with bare LF", chunked + "2\nhi\n0\n\n", 400},
      {"TE on HTTP/1.0", "POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
       400},
      {"TE chunked twice", post + "Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 400},
      {"TE header twice", post + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
       400},
      {"TE chunked not last", post + "Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", 400},
      {"TE identity", post + "Transfer-Encoding: identity\r\nContent-Length: 2\r\n\r\nhi", 400},
      {"TE xchunked", post + "Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400},
      {"TE unknown coding before chunked", post + "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501},
      {"two Hosts", "GET /hello HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400},
      {"control byte in the target", "GET /hel\x01lo HTTP/1.1\r\nHost: t\r\n\r\n", 400},
      {"HTTP/0.9", "GET /hello\r\n\r\n", 400},
  };
}

}  // namespace

TEST_CASE("hostile: the request-smuggling battery is refused and the connection closed",
          "[hostile][smuggling]") {
  prefork::test::leak_check leaks;
  {
    std::string mode = GENERATE(as<std::string>{}, "evented", "blocking", "uring");
    INFO("mode " << mode);
    if (!mode_runs_here(mode)) return;
    server s({"-m", mode, "-w", "1"});
    check_mode(s, mode);
    // A second request rides behind each: were the framing read two ways,
    // it (or part of the body) would be answered as a request of its own.
    const std::string behind = "GET /hello?smuggled HTTP/1.1\r\nHost: t\r\n\r\n";
    for (const smuggle_case& c : smuggling_battery()) {
      INFO(c.name);
      prefork::fd sock = connect_to(s.port());
      send_hostile(sock.get(), c.raw + behind);
      std::string all = read_until_close(sock.get());
      auto r = parse_response(all, false, true);
      REQUIRE(r);
      CHECK(r->status == c.status);
      CHECK(r->header("connection") == "close");
      CHECK(all.size() == r->size);  // one answer, then the close
      CHECK(all.find("Hello, World!") == std::string::npos);
    }
    // Identical duplicate Content-Length fields agree, so the framing is
    // not ambiguous: RFC 9112 section 6.3 allows taking them as one value,
    // and the parser does. Both requests are answered, in order.
    prefork::fd sock = connect_to(s.port());
    send_text(
        sock.get(),
        "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nhi" + hello_close);
    std::string all = read_until_close(sock.get());
    auto first = parse_response(all);
    REQUIRE(first);
    if (mode != "blocking") {
      CHECK(first->body == "hi");
      CHECK(all.find("Hello, World!") != std::string::npos);
    } else {
      CHECK(first->body == "hi");  // blocking: one request per connection, the second is not read
      CHECK(all.size() == first->size);
    }
    CHECK(get(s.port(), "/hello").body == "Hello, World!");
    check_clean_stop(s);
    CHECK(s.log().find("killed") == std::string::npos);
  }
  CHECK(leaks.problems() == "");
}
