// examples/reexec: the in-place re-exec done by hand. The real binary, real
// signals, a real socket on 127.0.0.1: its PID, its listening socket and its
// counter survive each HUP, no connection is refused or cut meanwhile (one
// queued during the exec included), and a failed exec changes nothing.
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include <prefork/process.hpp>

#include "catch.hpp"
#include "helpers.hpp"
#include "leak_check.hpp"
#include "upgrade_harness.hpp"

using namespace upgrade_test;

namespace {

// What the server says about itself on each start and re-exec.
struct announcement {
  pid_t pid = 0;
  std::string address, inode;
  long counter = -1;
};

std::string between(const std::string& line, const std::string& before, const std::string& after) {
  auto start = line.find(before);
  REQUIRE(start != std::string::npos);
  start += before.size();
  return line.substr(start, line.find(after, start) - start);
}

// "pid P [re-executed: ]listening on ADDR (socket inode I), counter N[; ...]"
announcement parse(const std::string& line) {
  announcement a;
  a.pid = static_cast<pid_t>(std::stol(between(line, "pid ", " ")));
  a.address = between(line, "listening on ", " ");
  a.inode = between(line, "socket inode ", ")");
  a.counter = std::stol(between(line, "counter ", ";"));
  return a;
}

class reexec_server {
 public:
  explicit reexec_server(std::string program = prefork::test::bin_path("prefork-reexec")) {
    prefork::spawn_options options;
    options.fds = {{out.write_fd(), 1}, {2, 2}};
    process = prefork::spawn({program, "--listen", "127.0.0.1:0"}, options);
    out.close_write();
    first = parse(out.wait_for("listening on"));
  }
  ~reexec_server() {
    if (process.pid() != 0 && !process.status()) process.kill(SIGKILL);
  }

  // The one line a connection gets.
  std::string ask() const {
    prefork::fd sock = prefork::connect(first.address);
    auto [error, reply] = read_to_eof(sock.get(), clock::now() + 20s);
    REQUIRE(error == "");
    return reply;
  }

  void stop() {
    process.kill(SIGTERM);
    out.wait_for("SIGTERM: exiting");
    std::optional<prefork::exit_status> how = process.wait_for(20s);
    REQUIRE(how);
    CHECK(how->describe() == "exited 0");
  }

  prefork::test::line_reader out;
  prefork::child process;
  announcement first;
};

std::string expected_reply(pid_t pid, long counter) {
  return "pid " + std::to_string(pid) + " counter " + std::to_string(counter) + "\n";
}

}  // namespace

TEST_CASE("reexec: PID, socket and counter survive each HUP, and no connection fails meanwhile", "[reexec]") {
  prefork::test::leak_check leaks;
  {
    reexec_server server;
    const announcement& first = server.first;
    CHECK(first.pid == server.process.pid());
    CHECK(first.counter == 0);
    CHECK(server.ask() == expected_reply(first.pid, 0));

    const std::string prefix = "pid " + std::to_string(first.pid) + " counter ";
    client_loop load(first.address, [&](int sock, std::uint64_t) -> std::string {
      auto [error, reply] = read_to_eof(sock, clock::now() + 15s);
      if (!error.empty()) return error;
      if (reply.rfind(prefix, 0) != 0 || reply.back() != '\n') return "unexpected reply \"" + reply + "\"";
      return "";
    });
    for (long round = 1; round <= 5; ++round) {
      load.wait_progress(20);
      ::kill(first.pid, SIGHUP);
      announcement now = parse(server.out.wait_for("re-executed"));
      CHECK(now.pid == first.pid);
      CHECK(now.address == first.address);
      CHECK(now.inode == first.inode);  // the very same socket, not a new one bound to the same port
      CHECK(now.counter == round);
      // The courier was reaped by the new image, which says how it ended.
      CHECK(server.out.count("courier") == static_cast<std::size_t>(round));
      CHECK(children_of(first.pid).empty());
      CHECK(children_of(first.pid, kids::zombies).empty());
    }
    load.wait_progress(20);
    load.stop();
    CHECK(load.failures() == std::vector<std::string>{});
    CHECK(server.ask() == expected_reply(first.pid, 5));
    server.stop();
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("reexec: a connection queued while the server execs is served by the new image", "[reexec]") {
  prefork::test::leak_check leaks;
  {
    reexec_server server;
    const pid_t pid = server.first.pid;
    // Stopped, the server cannot accept; the kernel still completes the
    // handshake and queues the connection. The HUP is then waiting too, and
    // the server handles signals before connections: it execs with the
    // connection in the queue.
    ::kill(pid, SIGSTOP);
    siginfo_t info{};
    REQUIRE(::waitid(P_PID, static_cast<id_t>(pid), &info, WSTOPPED) == 0);
    prefork::fd queued = prefork::connect(server.first.address);
    ::kill(pid, SIGHUP);
    ::kill(pid, SIGCONT);
    auto [error, reply] = read_to_eof(queued.get(), clock::now() + 20s);
    CHECK(error == "");
    CHECK(reply == expected_reply(pid, 1));  // counter 1: the new image answered
    CHECK(parse(server.out.wait_for("re-executed")).counter == 1);
    server.stop();
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("reexec: a failed exec leaves the server as it was, and a later HUP succeeds", "[reexec]") {
  prefork::test::leak_check leaks;
  {
    // Started through a symbolic link, which the test then removes: the
    // re-exec finds no program where the server was started from.
    char dir_template[] = "/tmp/prefork-reexec-XXXXXX";
    REQUIRE(::mkdtemp(dir_template) != nullptr);
    const std::filesystem::path dir = dir_template;
    const std::filesystem::path link = dir / "server";
    std::filesystem::create_symlink(prefork::test::bin_path("prefork-reexec"), link);
    {
      reexec_server server(link.string());
      const pid_t pid = server.first.pid;
      std::filesystem::remove(link);
      ::kill(pid, SIGHUP);
      std::string failed = server.out.wait_for("re-exec failed");
      CHECK(failed.find("No such file or directory") != std::string::npos);
      CHECK(failed.find("still pid " + std::to_string(pid) + ", counter 0") != std::string::npos);
      CHECK(server.ask() == expected_reply(pid, 0));
      CHECK(children_of(pid).empty());  // the courier was reaped
      CHECK(children_of(pid, kids::zombies).empty());

      std::filesystem::create_symlink(prefork::test::bin_path("prefork-reexec"), link);
      ::kill(pid, SIGHUP);
      announcement now = parse(server.out.wait_for("re-executed"));
      CHECK(now.counter == 1);
      CHECK(now.inode == server.first.inode);
      CHECK(server.ask() == expected_reply(pid, 1));
      server.stop();
    }
    std::filesystem::remove_all(dir);
  }
  CHECK(leaks.problems() == "");
}
