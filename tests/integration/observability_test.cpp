// The library's observability: listen queues read from real listening
// sockets that nobody accepts on (TCP and unix), Rss/Pss of a real process
// that grew, the scoreboard's per-slot totals counted by real workers, and
// the master's counters moved by real crashes, timeouts, reloads and
// upgrades-in-name (USR2 without a program to run counts an attempt).
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <string>
#include <vector>

#include <prefork/listen_queue.hpp>
#include <prefork/proc_memory.hpp>

#include "helpers.hpp"
#include "pool_harness.hpp"
#include "temp_dir.hpp"

using namespace std::chrono_literals;
using pool_test::pool;
using prefork::test::temp_dir;

namespace {

// Polls `get` until it returns true, for up to 10 s (the kernel finishes a
// loopback handshake asynchronously to connect's return on some paths).
template <class F>
bool eventually(F get) {
  auto deadline = std::chrono::steady_clock::now() + 10s;
  while (std::chrono::steady_clock::now() < deadline) {
    if (get()) return true;
    ::poll(nullptr, 0, 5);
  }
  return get();
}

prefork::fd raw_listener(int family, const sockaddr* addr, socklen_t len, int backlog) {
  prefork::fd s(::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  REQUIRE(s.get() >= 0);
  REQUIRE(::bind(s.get(), addr, len) == 0);
  REQUIRE(::listen(s.get(), backlog) == 0);
  return s;
}

prefork::fd connect_to(int family, const sockaddr* addr, socklen_t len) {
  prefork::fd s(::socket(family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  REQUIRE(s.get() >= 0);
  int r = ::connect(s.get(), addr, len);
  REQUIRE((r == 0 || errno == EINPROGRESS));
  return s;
}

void fill_and_check(int family, const sockaddr* addr, socklen_t len, int listener) {
  prefork::listen_queue q = prefork::read_listen_queue(listener);
  CHECK(q.queued == 0);
  CHECK(q.backlog == 7);
  std::vector<prefork::fd> clients;
  for (int i = 0; i < 3; ++i) clients.push_back(connect_to(family, addr, len));
  CHECK(eventually([&] { return prefork::read_listen_queue(listener).queued == 3; }));
  CHECK(prefork::read_listen_queue(listener).backlog == 7);
  prefork::fd taken(::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC));
  REQUIRE(taken.get() >= 0);
  CHECK(prefork::read_listen_queue(listener).queued == 2);
}

}  // namespace

TEST_CASE("read_listen_queue: a TCP listener's queued connections and its backlog") {
  prefork::test::leak_check leaks;
  {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    prefork::fd l = raw_listener(AF_INET, reinterpret_cast<sockaddr*>(&a), sizeof a, 7);
    socklen_t len = sizeof a;
    REQUIRE(::getsockname(l.get(), reinterpret_cast<sockaddr*>(&a), &len) == 0);
    fill_and_check(AF_INET, reinterpret_cast<sockaddr*>(&a), sizeof a, l.get());

    // A connected (not listening) socket is refused by name.
    prefork::fd c = connect_to(AF_INET, reinterpret_cast<sockaddr*>(&a), sizeof a);
    std::error_code ec;
    CHECK(!prefork::read_listen_queue(c.get(), ec));
    CHECK(ec == std::errc::invalid_argument);
    CHECK_THROWS_WITH(prefork::read_listen_queue(c.get()), Catch::Contains("read_listen_queue fd"));
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("read_listen_queue: a unix listener, through sock_diag, without root") {
  prefork::test::leak_check leaks;
  {
    temp_dir dir;
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::string path = (dir.path / "s").string();
    std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
    prefork::fd l = raw_listener(AF_UNIX, reinterpret_cast<sockaddr*>(&a), sizeof a, 7);
    fill_and_check(AF_UNIX, reinterpret_cast<sockaddr*>(&a), sizeof a, l.get());
    std::error_code ec;
    prefork::fd notsock(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    CHECK(!prefork::read_listen_queue(notsock.get(), ec));
    CHECK(ec == std::errc::not_a_socket);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("read_process_memory: Rss and Pss of a child that touched 48 MiB") {
  prefork::test::leak_check leaks;
  {
    prefork::pipe_ends ready = prefork::pipe();
    prefork::pipe_ends hold = prefork::pipe();
    pid_t kid = prefork::test::fork_child([&] {
      hold.write.reset();  // or the read below never sees end of file
      std::vector<char> ballast(48u << 20, 'x');
      char b = 'r';
      if (::write(ready.write.get(), &b, 1) != 1) return 1;
      return ::read(hold.read.get(), &b, 1) >= 0 && ballast[12345] == 'x' ? 0 : 1;
    });
    ready.write.reset();
    char b;
    REQUIRE(::read(ready.read.get(), &b, 1) == 1);
    prefork::process_memory m = prefork::read_process_memory(kid);
    CHECK(m.rss >= 48u << 20);
    CHECK(m.pss >= 48u << 20);  // the ballast is private: all of it is the child's share
    CHECK(m.pss <= m.rss);
    prefork::process_memory self = prefork::read_process_memory(0);
    CHECK(self.rss > 0);
    CHECK(self.rss < m.rss);
    hold.write.reset();
    int status = 0;
    REQUIRE(::waitpid(kid, &status, 0) == kid);
    CHECK(status == 0);
    std::error_code ec;
    CHECK(!prefork::read_process_memory(kid, ec));
    CHECK(ec == std::errc::no_such_file_or_directory);
  }
  CHECK(leaks.problems() == "");
}

namespace {

// Per line: "200" or "404" etc. counts a request of that status, 10 bytes,
// 3 ms; "stick" stops ticking.
void counting(prefork::worker& w) {
  while (prefork::fd conn = w.accept()) {
    char buf[256];
    std::string pending;
    for (;;) {
      prefork::io_result r = prefork::read_some(conn.get(), buf, sizeof buf);
      if (!r || r.bytes == 0) break;
      pending.append(buf, r.bytes);
      std::size_t nl;
      while ((nl = pending.find('\n')) != std::string::npos) {
        std::string line = pending.substr(0, nl);
        pending.erase(0, nl + 1);
        if (line == "stick") {
          prefork::write_all(conn.get(), std::string("stuck\n"));
          for (;;) ::pause();
        }
        w.request_done(std::stoi(line), 10, 3ms);
        prefork::write_all(conn.get(), std::to_string(::getpid()) + "\n");
      }
    }
  }
}

}  // namespace

TEST_CASE("scoreboard: per-slot totals from request_done, master counters from real events") {
  prefork::test::leak_check leaks;
  {
    pool p(
        2, [](prefork::pool_config& c) { c.timeout = 1s; }, counting);
    p.start(2);
    prefork::master_totals m0 = p.board->master();
    auto now = std::chrono::system_clock::now();
    CHECK(m0.started_unix <= now);
    CHECK(m0.started_unix > now - 60s);

    pool_test::client c(p.address);
    pid_t served_by = std::stoi(c.ask("200"));
    c.ask("200");
    c.ask("404");
    c.ask("503");
    std::uint64_t total = 0, bytes = 0, in_bucket = 0, sum_us = 0;
    std::size_t slot_of_worker = 0;
    for (std::size_t i = 0; i < p.board->size(); ++i) {
      prefork::slot_totals t = p.board->totals(i);
      total += t.requests();
      bytes += t.bytes_sent;
      sum_us += t.duration_us;
      in_bucket += t.buckets[3];  // (2.5 ms, 5 ms]
      if (p.board->slot(i).pid == served_by) slot_of_worker = i;
    }
    prefork::slot_totals t = p.board->totals(slot_of_worker);
    CHECK(t.by_class[2] == 2);
    CHECK(t.by_class[4] == 1);
    CHECK(t.by_class[5] == 1);
    CHECK(total == 4);
    CHECK(bytes == 40);
    CHECK(sum_us == 12000);
    CHECK(in_bucket == 4);

    // A crash: SIGKILL from outside, the master did not ask.
    ::kill(served_by, SIGKILL);
    p.wait_spawn();
    p.wait_ready(1);
    CHECK(p.board->master().restarts[static_cast<int>(prefork::restart_cause::crash)] == 1);
    // The slot's totals outlive its worker: counters only grow.
    CHECK(p.board->totals(slot_of_worker).requests() == 4);

    // A timeout: a worker that stops ticking is killed after 1 s.
    pool_test::client s(p.address);
    CHECK(s.ask("stick") == "stuck");
    p.ev.wait_for("killed with SIGKILL");
    prefork::master_totals m1 = p.board->master();
    CHECK(m1.restarts[static_cast<int>(prefork::restart_cause::timeout)] == 1);
    CHECK(m1.timeouts_killed == 1);
    CHECK(m1.restarts[static_cast<int>(prefork::restart_cause::crash)] == 1);  // a timeout is not a crash too
    p.wait_spawn();
    p.wait_ready(1);

    // A reload replaces both workers.
    p.signal(SIGHUP);
    p.ev.wait_for("received SIGHUP: reloaded");
    CHECK(p.board->master().reloads == 1);
    CHECK(p.board->master().restarts[static_cast<int>(prefork::restart_cause::reload)] == 2);
    p.start(2);
    p.quit();
  }
  CHECK(leaks.problems() == "");
}
