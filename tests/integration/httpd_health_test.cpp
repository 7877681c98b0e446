// prefork-httpd's /_health as a balancer sees it: 200 while serving, 503
// from the moment the master begins a stop (while requests in hand finish),
// 200 through a HUP's replacement of the workers, 503 "draining" while the
// --drain-file exists; and what must survive a USR2 upgrade: the master's
// counters (prefork_upgrades_total and the restarts) and which socket is the
// admin one.
#include <signal.h>
#include <sys/poll.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <fstream>
#include <optional>
#include <regex>
#include <string>

#include "catch.hpp"
#include "helpers.hpp"
#include "httpd_modes.hpp"
#include "httpd_support.hpp"
#include "leak_check.hpp"
#include "temp_dir.hpp"

using namespace httpd_test;
using prefork::test::temp_dir;

namespace {

// The value of an unlabelled (or exactly labelled) sample in /_metrics.
std::string metric(int port, const std::string& series) {
  std::string body = get(port, "/_metrics").body;
  std::size_t at = body.find("\n" + series + " ");
  if (at == std::string::npos) return "(no " + series + ")";
  at += series.size() + 2;
  return body.substr(at, body.find('\n', at) - at);
}

// Two requests held half-sent, so a stop has something to wait for: a
// POST /echo missing the end of its body, and a GET /_health missing the
// blank line that ends its head. Both are in a worker's hands on return:
// blocking mode (3 workers) shows three busy workers, the one answering
// /_metrics included; evented mode (1 worker) has read both before it
// answers a later request on a third connection.
struct held_requests {
  prefork::fd echo, health;
  std::string echo_pending, health_pending;

  held_requests(int port, const std::string& mode) {
    echo = connect_to(port);
    send_text(echo.get(), "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nab");
    health = connect_to(port);
    send_text(health.get(), "GET /_health HTTP/1.1\r\nHost: t\r\n");
    if (mode == "blocking") {
      auto deadline = steady::now() + patience;
      while (metric(port, "prefork_workers_busy") != "3") REQUIRE(steady::now() < deadline);
    } else {
      REQUIRE(get(port, "/hello").body == "Hello, World!");
    }
  }

  response finish_health() {
    send_text(health.get(), "\r\n");
    return read_response(health.get(), health_pending);
  }
  response finish_echo() {
    send_text(echo.get(), "cde");
    return read_response(echo.get(), echo_pending);
  }
};

std::string workers_for(const std::string& mode) { return mode == "blocking" ? "3" : "1"; }

// Listens on two sockets, "admin" at fd 3 and "http" at fd 4 (the admin one
// first, unlike prefork-httpd's own order), and execs argv[0] with them as
// systemd's socket activation hands them over, named.
PREFORK_HELPER(two_named_sockets) {
  prefork::fd a = prefork::listen("127.0.0.1:0");
  prefork::fd h = prefork::listen("127.0.0.1:0");
  prefork::fd a3(::fcntl(a.get(), F_DUPFD, 10)), h4(::fcntl(h.get(), F_DUPFD, 10));
  a.reset();
  h.reset();
  if (::dup2(a3.get(), 3) == -1 || ::dup2(h4.get(), 4) == -1) return 1;
  ::setenv("LISTEN_FDS", "2", 1);
  ::setenv("LISTEN_FDNAMES", "admin:http", 1);
  ::setenv("LISTEN_PID", std::to_string(::getpid()).c_str(), 1);
  ::execv(argv[0], argv);
  return 127;
}

// The ports of the sockets the log says are listening: the admin one and
// the other.
std::pair<int, int> admin_and_public(server& s, std::size_t mark) {
  int admin = 0, pub = 0;
  std::optional<std::size_t> from = mark;
  while (admin == 0 || pub == 0) {
    std::string line = s.wait_log("listening on http://127.0.0.1:", from);
    from.reset();  // on from where the last wait stopped
    int port = std::stoi(line.substr(line.find("127.0.0.1:") + 10));
    (line.find("(admin)") != std::string::npos ? admin : pub) = port;
  }
  return {admin, pub};
}

void check_admin_only_on(int admin, int pub) {
  CHECK(get(admin, "/_health").status == 200);
  CHECK(get(admin, "/_metrics").status == 200);
  CHECK(get(admin, "/hello").status == 404);
  CHECK(get(pub, "/_health").status == 404);
  CHECK(get(pub, "/_status").status == 404);
  CHECK(get(pub, "/hello").body == "Hello, World!");
}

}  // namespace

TEST_CASE("/_health: 503 from the moment QUIT begins a graceful stop; requests in hand finish",
          "[httpd][health]") {
  prefork::test::leak_check leaks;
  {
    std::string mode = GENERATE(as<std::string>{}, "evented", "blocking", "uring");
    INFO(mode);
    if (!mode_runs_here(mode)) return;
    server s({"-m", mode, "-w", workers_for(mode), "--graceful-timeout", "20"});
    check_mode(s, mode);
    response before = get(s.port(), "/_health");
    CHECK(before.status == 200);
    CHECK(before.body == "ok\n");
    held_requests held(s.port(), mode);
    s.signal(SIGQUIT);
    s.wait_log("graceful stop");
    // The stop began; the workers wait for what they hold.
    response health = held.finish_health();
    CHECK(health.status == 503);
    CHECK(health.body == "stopping\n");
    response echo = held.finish_echo();
    CHECK(echo.status == 200);
    CHECK(echo.body == "abcde");
    prefork::exit_status st = s.stop(0);
    INFO("server log:\n" << s.log());
    CHECK(st.describe() == "exited 0");
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("/_health: 200 while HUP replaces the workers (the service goes on)", "[httpd][health]") {
  prefork::test::leak_check leaks;
  {
    std::string mode = GENERATE(as<std::string>{}, "evented", "blocking", "uring");
    INFO(mode);
    if (!mode_runs_here(mode)) return;
    server s({"-m", mode, "-w", workers_for(mode), "--graceful-timeout", "20"});
    check_mode(s, mode);
    held_requests held(s.port(), mode);
    s.signal(SIGHUP);
    // Every old worker is asked to stop once its replacement is ready; the
    // one holding the health check finishes it as a retiring worker.
    for (int i = 0; i < std::stoi(workers_for(mode)); ++i) s.wait_log(": asking it to stop");
    response health = held.finish_health();
    CHECK(health.status == 200);
    CHECK(health.body == "ok\n");
    CHECK(held.finish_echo().body == "abcde");
    check_clean_stop(s);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("/_health: 503 \"draining\" while the --drain-file exists, serving goes on", "[httpd][health]") {
  prefork::test::leak_check leaks;
  {
    std::string mode = GENERATE(as<std::string>{}, "evented", "blocking");
    INFO(mode);
    temp_dir dir;
    const std::string drain = dir.path.string() + "/drain";
    server s({"-m", mode, "--drain-file", drain});
    CHECK(get(s.port(), "/_health").status == 200);
    { std::ofstream(drain) << ""; }
    response draining = get(s.port(), "/_health");
    CHECK(draining.status == 503);
    CHECK(draining.body == "draining\n");
    CHECK(get(s.port(), "/hello").body == "Hello, World!");
    REQUIRE(::unlink(drain.c_str()) == 0);
    CHECK(get(s.port(), "/_health").body == "ok\n");
    check_clean_stop(s);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("the master's counters survive USR2: prefork_upgrades_total and restarts go on counting",
          "[httpd][upgrade][metrics]") {
  prefork::test::leak_check leaks;
  {
    std::string kind = GENERATE(as<std::string>{}, "fork-exec", "in-place");
    INFO(kind);
    temp_dir dir;
    const std::string pid_path = dir.path.string() + "/httpd.pid";
    server s({"--upgrade", kind, "-P", pid_path, "--graceful-timeout", "5"});
    CHECK(metric(s.port(), "prefork_upgrades_total") == "0");
    // A worker killed: one restart by crash, to be carried too.
    std::string status = get(s.port(), "/_status?format=json").body;
    std::smatch m;
    REQUIRE(std::regex_search(status, m, std::regex("\"pid\":([0-9]+)")));
    REQUIRE(::kill(std::stoi(m[1]), SIGKILL) == 0);
    const std::string crash = "prefork_worker_restarts_total{cause=\"crash\"}";
    auto deadline = steady::now() + patience;
    while (metric(s.port(), crash) != "1") REQUIRE(steady::now() < deadline);
    pid_t master = s.pid();
    for (int n = 1; n <= 2; ++n) {
      REQUIRE(::kill(master, SIGUSR2) == 0);
      if (kind == "in-place") {
        s.wait_log("upgrade " + std::to_string(n) + " complete");
      } else {
        // The new master QUITs the old one once its workers are ready.
        REQUIRE(gone_within(master, std::chrono::duration_cast<std::chrono::milliseconds>(patience)));
        if (n == 1) REQUIRE(s.process().wait().describe() == "exited 0");
        master = read_pid(pid_path);
      }
      CHECK(metric(s.port(), "prefork_upgrades_total") == std::to_string(n));
      CHECK(metric(s.port(), crash) == "1");
    }
    INFO("server log:\n" << s.log());
    if (kind == "in-place") {
      check_clean_stop(s);
    } else {
      REQUIRE(::kill(master, SIGQUIT) == 0);
      CHECK(gone_within(master, std::chrono::duration_cast<std::chrono::milliseconds>(patience)));
    }
  }
  CHECK(leaks.problems() == "");
}

// USR2 in `kind` mode: the new image serves the admin routes on the same
// admin socket only; then the server stops cleanly.
void upgrade_then_stop(server& s, const std::string& kind, const std::string& pid_path, int admin, int pub) {
  pid_t master = s.pid();
  std::size_t mark = s.log_mark();
  REQUIRE(::kill(master, SIGUSR2) == 0);
  if (kind == "in-place") {
    s.wait_log("upgrade 1 complete");
  } else {
    REQUIRE(gone_within(master, std::chrono::duration_cast<std::chrono::milliseconds>(patience)));
    REQUIRE(s.process().wait().describe() == "exited 0");
    master = read_pid(pid_path);
  }
  auto [admin2, pub2] = admin_and_public(s, mark);
  CHECK(admin2 == admin);
  CHECK(pub2 == pub);
  check_admin_only_on(admin, pub);
  INFO("server log:\n" << s.log());
  if (kind == "in-place") {
    check_clean_stop(s);
  } else {
    REQUIRE(::kill(master, SIGQUIT) == 0);
    CHECK(gone_within(master, std::chrono::duration_cast<std::chrono::milliseconds>(patience)));
  }
}

TEST_CASE("the admin socket is known by its name, not its place, before and after USR2",
          "[httpd][upgrade][admin]") {
  prefork::test::leak_check leaks;
  {
    std::string kind = GENERATE(as<std::string>{}, "fork-exec", "in-place");
    INFO(kind);
    temp_dir dir;
    const std::string pid_path = dir.path.string() + "/httpd.pid";
    // Handed over as systemd does, the admin socket first.
    server s({"--upgrade", kind, "-P", pid_path, "--graceful-timeout", "5"}, false,
             prefork::test::helper_argv("two_named_sockets", {}));
    s.wait_log("ready: ");
    auto [admin, pub] = admin_and_public(s, 0);
    check_admin_only_on(admin, pub);
    upgrade_then_stop(s, kind, pid_path, admin, pub);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("--admin-listen (also with --reuseport): after USR2 the admin routes stay on the admin socket only",
          "[httpd][upgrade][admin]") {
  prefork::test::leak_check leaks;
  {
    std::string kind = GENERATE(as<std::string>{}, "fork-exec", "in-place");
    bool reuseport = GENERATE(false, true);
    INFO(kind << (reuseport ? " --reuseport" : ""));
    temp_dir dir;
    const std::string pid_path = dir.path.string() + "/httpd.pid";
    std::vector<std::string> args{"--upgrade",      kind,         "-P", pid_path, "--graceful-timeout", "5",
                                  "--admin-listen", "127.0.0.1:0"};
    if (reuseport) args.push_back("--reuseport");
    server s(args);
    auto [admin, pub] = admin_and_public(s, 0);
    CHECK(pub == s.port());
    check_admin_only_on(admin, pub);
    upgrade_then_stop(s, kind, pid_path, admin, pub);
  }
  CHECK(leaks.problems() == "");
}
