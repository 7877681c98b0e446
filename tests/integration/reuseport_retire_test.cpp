// pool_config::reuseport: TTOU and WINCH retire a slot without losing one
// connection of its queue. Under a client loop: the retiring slot's worker
// is stopped (SIGSTOP) until connections wait on its socket, TTOU, then
// SIGCONT: every connection is answered, none reset, none that started
// after the master said the slot was out of the steering reaches it, and
// its socket is closed in the end (/proc/net/tcp). TTIN afterwards opens
// the slot again, at its place in the reuseport group, and it serves.
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <map>

#include "reuseport_harness.hpp"

using namespace pool_test;
using namespace reuseport_test;

namespace {

std::size_t settled_unanswered(std::vector<conn>& conns, unsigned short port, clock::time_point deadline) {
  for (;;) {
    REQUIRE(clock::now() < deadline);
    collect(conns, 20ms);
    std::size_t open = 0;
    for (const conn& c : conns) open += !c.done;
    if (open == listening_on(port).queued) return open;
  }
}

// Connections to `address` until answers came from each of `want`.
std::set<std::string> answers_from(const std::string& address, const std::set<std::string>& want) {
  std::set<std::string> seen;
  for (int i = 0; i < 200 && seen != want; ++i) seen.insert(client(address).receive());
  return seen;
}

}  // namespace

TEST_CASE("reuseport: TTOU retires the last slot after its worker drained its queue; none is lost",
          "[pool][reuseport]") {
  prefork::test::leak_check leaks;
  {
    unsigned short port = 0;
    pool p(
        2, [&](prefork::pool_config& c) { reuseport_config(c, port); }, report_index);
    std::map<unsigned, pid_t> by_index = spawned(p, 2);
    const std::string address = "127.0.0.1:" + std::to_string(port);
    REQUIRE(listening_on(port).inodes.size() == 2);
    const pid_t last = by_index.at(1);
    auto deadline = clock::now() + 20s;
    stop_process(last, deadline);

    // Connections until some wait on the stopped worker's slot.
    std::vector<conn> conns;
    std::size_t queued = 0;
    while (queued < 4) {
      for (int i = 0; i < 8; ++i) conns.push_back(conn{prefork::connect(address), "", false, "", false});
      queued = settled_unanswered(conns, port, deadline);
    }

    // TTOU under a client loop; SIGCONT once the slot is out of the steering.
    p.signal(SIGTTOU);
    bool steered = false, retired = false;
    std::size_t after_retired = 0;
    while (after_retired < 20) {
      REQUIRE(clock::now() < deadline);
      conns.push_back(conn{prefork::connect(address), "", false, "", steered});
      collect(conns, 2ms);
      if (!steered && p.ev.count("slot 1 takes no new connections") > 0) {
        steered = true;
        ::kill(last, SIGCONT);
      }
      if (!retired) retired = p.ev.count("slot 1 drained and retired") > 0;
      after_retired += retired;
    }
    for (;;) {
      std::size_t open = 0;
      for (const conn& c : conns) open += !c.done;
      if (open == 0 || clock::now() >= deadline) break;
      collect(conns, 100ms);
    }

    std::vector<std::string> failures, misrouted;
    std::size_t by_last = 0;
    for (const conn& c : conns) {
      if (c.got.find('\n') == std::string::npos) {
        failures.push_back(c.error.empty() ? "no answer in 20s" : c.error);
        continue;
      }
      if (c.got == "1 " + std::to_string(last) + "\n") ++by_last;
      if (c.steered && c.got != "0 " + std::to_string(by_index.at(0)) + "\n") misrouted.push_back(c.got);
    }
    INFO("opened " << conns.size() << ", queued on the stopped slot " << queued << "; log:\n"
                   << p.ev.transcript());
    CHECK(failures == std::vector<std::string>{});
    CHECK(misrouted == std::vector<std::string>{});
    CHECK(by_last >= queued);
    p.ev.wait_for("worker 1 (pid " + std::to_string(last) + ", generation 1) exited 0");
    CHECK(listening_on(port).inodes.size() == 1);
    CHECK(children_of(p.pid()) == std::set<pid_t>{by_index.at(0)});

    // TTIN: slot 1 is opened again, last in the group, and the steering
    // takes it in.
    p.signal(SIGTTIN);
    std::map<unsigned, pid_t> back = spawned(p, 1);
    REQUIRE(back.count(1) == 1);
    CHECK(listening_on(port).inodes.size() == 2);
    const std::set<std::string> both{"0 " + std::to_string(by_index.at(0)),
                                     "1 " + std::to_string(back.at(1))};
    CHECK(answers_from(address, both) == both);
    p.quit();
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("reuseport: WINCH drains and closes every slot but 0, where connections wait for TTIN",
          "[pool][reuseport]") {
  prefork::test::leak_check leaks;
  {
    unsigned short port = 0;
    pool p(
        3, [&](prefork::pool_config& c) { reuseport_config(c, port); }, report_index);
    std::map<unsigned, pid_t> by_index = spawned(p, 3);
    const std::string address = "127.0.0.1:" + std::to_string(port);
    REQUIRE(listening_on(port).inodes.size() == 3);
    p.signal(SIGWINCH);
    // Highest first: slot 1 may only close once slot 2 has.
    p.ev.wait_for("slot 2 drained and retired");
    p.ev.wait_for("slot 1 drained and retired");
    for (int i = 0; i < 3; ++i) p.ev.wait_for("exited 0");
    CHECK(listening_on(port).inodes.size() == 1);
    CHECK(children_of(p.pid()).empty());
    // Connections wait in slot 0's queue meanwhile.
    std::vector<std::unique_ptr<client>> waiting;
    for (int i = 0; i < 16; ++i) waiting.push_back(std::make_unique<client>(address));
    p.signal(SIGTTIN);
    CHECK(p.ev.wait_for("received SIGTTIN").find("now 1 workers") != std::string::npos);
    pid_t first = spawned(p, 1).at(0);
    for (auto& c : waiting) CHECK(c->receive() == "0 " + std::to_string(first));
    waiting.clear();
    p.signal(SIGTTIN);
    pid_t second = spawned(p, 1).at(1);
    const std::set<std::string> both{"0 " + std::to_string(first), "1 " + std::to_string(second)};
    CHECK(answers_from(address, both) == both);
    p.quit();
  }
  CHECK(leaks.problems() == "");
}
