// pool_config::reuseport: one SO_REUSEPORT socket per worker slot, owned by
// the master, so that no connection queued on a slot is ever lost. The
// worker reports its index and pid on each connection, so the test knows
// which slot answered; the accept queues are read from /proc/net/tcp
// (rx_queue of a listening socket is its accept queue).
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <map>

#include "reuseport_harness.hpp"

using namespace pool_test;
using namespace reuseport_test;

namespace {

// Plain SO_REUSEPORT, as elsewhere: each worker opens its own socket on
// `naive_port` and closes it when it dies.
unsigned short naive_port = 0;
void report_index_own_socket(prefork::worker& w) {
  prefork::listen_options opts;
  opts.reuseport = true;
  prefork::fd own = prefork::listen("127.0.0.1:" + std::to_string(naive_port), opts);
  w.tick();  // ready: it never calls w.accept()
  for (;;) {
    pollfd polls[2] = {{own.get(), POLLIN, 0}, {w.stop_fd(), POLLIN, 0}};
    if (::poll(polls, 2, -1) == -1) continue;
    if (polls[1].revents != 0) return;
    prefork::fd conn(::accept4(own.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!conn) continue;
    std::string line = std::to_string(w.index()) + " " + std::to_string(::getpid()) + "\n";
    std::error_code ec;
    prefork::write_all(conn.get(), line.data(), line.size(), ec);
  }
}

std::size_t queued_on(unsigned short port) { return listening_on(port).queued; }

struct outcome {
  std::size_t opened = 0, queued = 0, by_replacement = 0;
  std::vector<std::string> failures;
};

// Under a client loop: stops the worker of index 1 (SIGSTOP), opens
// connections until at least three wait in the queues of `port` (the
// stopped worker's), SIGKILLs it and reads every connection to its end.
outcome stop_fill_kill(pool& p, unsigned short port, const std::map<unsigned, pid_t>& by_index) {
  outcome out;
  const pid_t victim = by_index.at(1);
  auto deadline = clock::now() + 20s;
  stop_process(victim, deadline);
  std::vector<conn> conns;
  const std::string address = "127.0.0.1:" + std::to_string(port);
  for (;;) {
    REQUIRE(clock::now() < deadline);
    for (int i = 0; i < 8; ++i) conns.push_back(conn{prefork::connect(address), "", false, ""});
    // Settled: each connection answered or waiting in a queue.
    for (;;) {
      REQUIRE(clock::now() < deadline);
      collect(conns, 50ms);
      std::size_t answered = 0;
      for (const conn& c : conns) answered += c.done || c.got.find('\n') != std::string::npos;
      if (answered + queued_on(port) == conns.size()) break;
    }
    out.queued = queued_on(port);
    if (out.queued >= 3) break;
  }
  ::kill(victim, SIGKILL);
  pid_t replacement = p.wait_spawn();
  for (;;) {
    bool open = false;
    for (const conn& c : conns) open |= !c.done;
    if (!open || clock::now() >= deadline) break;
    collect(conns, 100ms);
  }
  out.opened = conns.size();
  for (const conn& c : conns) {
    if (c.got.find('\n') == std::string::npos) {
      out.failures.push_back(c.error.empty() ? "no answer in 20s" : c.error);
      continue;
    }
    if (c.got == "1 " + std::to_string(replacement) + "\n") ++out.by_replacement;
  }
  return out;
}

}  // namespace

TEST_CASE("reuseport: the kernel spreads connections over the slots", "[pool][reuseport]") {
  prefork::test::leak_check leaks;
  {
    unsigned short port = 0;
    pool p(
        2, [&](prefork::pool_config& c) { reuseport_config(c, port); }, report_index);
    std::map<unsigned, pid_t> by_index = spawned(p, 2);
    const std::string address = "127.0.0.1:" + std::to_string(port);
    std::set<std::string> answers;
    for (int i = 0; i < 64 && answers.size() < 2; ++i) answers.insert(client(address).receive());
    CHECK(answers ==
          std::set<std::string>{"0 " + std::to_string(by_index[0]), "1 " + std::to_string(by_index[1])});
    p.quit();
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("reuseport refuses listeners without SO_REUSEPORT", "[pool][reuseport]") {
  prefork::pool_config c;
  c.reuseport = true;
  c.listeners.push_back(prefork::listen("127.0.0.1:0"));
  CHECK_THROWS_AS(prefork::master(std::move(c)), std::invalid_argument);
}

TEST_CASE("reuseport: a SIGKILLed worker's queue is served by its replacement", "[pool][reuseport]") {
  prefork::test::leak_check leaks;
  {
    unsigned short port = 0;
    pool p(
        2, [&](prefork::pool_config& c) { reuseport_config(c, port); }, report_index);
    std::map<unsigned, pid_t> by_index = spawned(p, 2);
    // The master holds one socket per slot: two listeners on the port.
    outcome out = stop_fill_kill(p, port, by_index);
    INFO("opened " << out.opened << ", queued on the stopped slot " << out.queued);
    CHECK(out.queued >= 3);
    CHECK(out.failures == std::vector<std::string>{});
    CHECK(out.by_replacement >= out.queued);
    p.quit();
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("plain SO_REUSEPORT, a socket per worker process, loses the dead worker's queue",
          "[pool][reuseport]") {
  prefork::test::leak_check leaks;
  {
    // The port is held by a bound socket that never listens, so the
    // workers' own sockets are the only listeners on it.
    prefork::fd hold(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    int one = 1;
    REQUIRE(::setsockopt(hold.get(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) == 0);
    sockaddr_in any{};
    any.sin_family = AF_INET;
    any.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(hold.get(), reinterpret_cast<sockaddr*>(&any), sizeof any) == 0);
    naive_port = port_of(prefork::local_address(hold.get()));
    pool p(2, {}, report_index_own_socket);
    std::map<unsigned, pid_t> by_index = spawned(p, 2);
    outcome out = stop_fill_kill(p, naive_port, by_index);
    INFO("opened " << out.opened << ", queued on the stopped worker " << out.queued);
    CHECK(out.queued >= 3);
    CHECK(out.failures.size() >= out.queued);
    CHECK(out.by_replacement == 0);
    p.quit();
  }
  CHECK(leaks.problems() == "");
}
