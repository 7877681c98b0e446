// socket.hpp across real processes: clients in other processes reach every
// address form; descriptors passed over a unix socket work in the process
// that receives them (a pipe end written through, a listening socket
// accepted on, with a connection queued before it moved); truncated control
// data is an error there and leaves no descriptor behind; privileged ports
// refuse a non-root listener; a unix socket left by a killed process is
// replaced. The receiving side is this executable re-run as a helper.
#include "catch.hpp"

#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include <prefork/pipe.hpp>
#include <prefork/socket.hpp>

#include "helpers.hpp"
#include "leak_check.hpp"

namespace {

constexpr int deadline_ms = 20000;  // only reached when a test is failing

bool readable_within(int fd, int ms = deadline_ms) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, ms) == 1;
}

// The next message from a helper, waited for with a deadline.
std::string next_report(int sock) {
  REQUIRE(readable_within(sock));
  std::string message;
  (void)prefork::recv_fds(sock, 0, &message);  // max 0: a message, no descriptors
  return message;
}

// Runs `f` in a forked child, whose exit code is what f returns (3 when it throws).
template <class F>
pid_t fork_child(F f) {
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    int code = 3;
    try {
      code = f();
    } catch (...) {
    }
    ::_exit(code);
  }
  return pid;
}

int exit_code(pid_t pid) {
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// Starts helper `name` holding `sock` (under the same number), which it is
// told in its first argument. Everything is prepared before the fork: the
// child only clears CLOEXEC and execs.
pid_t spawn_helper(const std::string& name, int sock) {
  std::vector<std::string> args = prefork::test::helper_argv(name, {std::to_string(sock)});
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    if (::fcntl(sock, F_SETFD, 0) == 0) ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  return pid;
}

std::string reachable(int listener) {
  std::string a = prefork::local_address(listener);
  if (a.rfind("0.0.0.0:", 0) == 0) return "127.0.0.1" + a.substr(7);
  if (a.rfind("[::]:", 0) == 0) return "[::1]" + a.substr(4);
  return a;
}

std::string read_line(int fd) {
  std::string line;
  char c;
  while (readable_within(fd) && prefork::read_some(fd, &c, 1).bytes == 1 && c != '\n') line += c;
  return line;
}

struct temp_dir {
  std::string path;
  temp_dir() {
    char tmpl[] = "/tmp/prefork-socket-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    path = tmpl;
  }
  ~temp_dir() { std::filesystem::remove_all(path); }
};

}  // namespace

// Receives commands with descriptors on the socket numbered argv[0] and
// reports each outcome back as a message, until end of file:
//   "write TEXT"   fds[0] is a pipe end: write TEXT through it
//   "serve N"      fds[0] is a listening socket: accept N connections, answer
//                  each line with "echo:" + line
//   "expect MAX"   the next message is received with at most MAX descriptors
//   "starve"       as "expect 8", with only one descriptor number free
PREFORK_HELPER(fd_receiver) {
  int sock = std::atoi(argv[0]);
  auto report = [&](const std::string& text) { prefork::send_fds(sock, {}, text); };
  for (;;) {
    std::string command;
    std::vector<prefork::fd> fds;
    try {
      fds = prefork::recv_fds(sock, 4, &command);
    } catch (const std::system_error& e) {
      return e.code() == std::errc::connection_reset ? 0 : 1;
    }
    if (command.rfind("write ", 0) == 0) {
      prefork::write_all(fds.at(0).get(), command.substr(6));
      report("written");
    } else if (command.rfind("serve ", 0) == 0) {
      std::string text = "listening on " + prefork::local_address(fds.at(0).get());
      for (int n = std::stoi(command.substr(6)); n > 0; --n) {
        prefork::fd conn = prefork::accept(fds.at(0).get());
        if (!conn.cloexec()) text += "; accepted without CLOEXEC";
        std::string line = read_line(conn.get());
        prefork::write_all(conn.get(), "echo:" + line + "\n");
      }
      report(text);
    } else if (command.rfind("expect ", 0) == 0 || command == "starve") {
      std::size_t max = command == "starve" ? 8 : std::stoul(command.substr(7));
      prefork::test::leak_check leaks;
      rlimit old{};
      ::getrlimit(RLIMIT_NOFILE, &old);
      if (command == "starve") {
        // Only the lowest free descriptor number stays below the limit.
        std::set<int> open = prefork::test::open_fds();
        int free_seen = 0, limit = 0;
        while (free_seen < 2) free_seen += open.count(limit++) ? 0 : 1;
        rlimit tight = old;
        tight.rlim_cur = static_cast<rlim_t>(limit - 1);
        ::setrlimit(RLIMIT_NOFILE, &tight);
      }
      std::string outcome;
      try {
        outcome = "received " + std::to_string(prefork::recv_fds(sock, max).size());
      } catch (const std::system_error& e) {
        outcome = std::string("error ") + std::to_string(e.code().value()) + ": " + e.what();
      }
      ::setrlimit(RLIMIT_NOFILE, &old);
      report(outcome + "\nleaks: " + leaks.problems());
    } else {
      report("unknown command " + command);
    }
  }
}

TEST_CASE("a client in another process reaches every address form", "[socket]") {
  prefork::test::leak_check leaks;
  {
    temp_dir dir;
    const std::string forms[] = {"127.0.0.1:0",
                                 "0.0.0.0:0",
                                 "[::1]:0",
                                 "[::]:0",
                                 "localhost:0",
                                 "unix:" + dir.path + "/a.sock",
                                 "unix:@prefork-it-" + std::to_string(::getpid())};
    for (const std::string& form : forms) {
      CAPTURE(form);
      prefork::fd l = prefork::listen(form);
      std::string target = reachable(l.get());
      pid_t client = fork_child([&] {
        prefork::fd c = prefork::connect(target);
        prefork::write_all(c.get(), "hello from " + std::to_string(::getpid()) + "\n");
        return read_line(c.get()) == "welcome" ? 0 : 1;
      });
      REQUIRE(readable_within(l.get()));
      prefork::fd conn = prefork::accept(l.get());
      CHECK(read_line(conn.get()) == "hello from " + std::to_string(client));
      prefork::write_all(conn.get(), "welcome\n");
      CHECK(exit_code(client) == 0);
    }
  }
  REQUIRE(leaks.problems() == "");
}

TEST_CASE("a pipe end passed to another process is written through there", "[socket][fds]") {
  prefork::test::leak_check leaks;
  {
    auto [mine, theirs] = prefork::socket_pair();
    pid_t helper = spawn_helper("fd_receiver", theirs.get());
    theirs.reset();
    auto p = prefork::pipe();  // made after the fork: the helper can only have it by being sent it
    prefork::send_fds(mine.get(), {p.write.get()}, "write through the pipe");
    p.write.reset();
    CHECK(next_report(mine.get()) == "written");
    REQUIRE(readable_within(p.read.get()));
    mine.reset();  // the helper exits, closing its copy of the write end
    CHECK(prefork::read_all(p.read.get()) == "through the pipe");
    CHECK(exit_code(helper) == 0);
  }
  REQUIRE(leaks.problems() == "");
}

TEST_CASE("a listening socket passed to another process accepts there, queued connections included",
          "[socket][fds]") {
  prefork::test::leak_check leaks;
  {
    auto [mine, theirs] = prefork::socket_pair();
    pid_t helper = spawn_helper("fd_receiver", theirs.get());
    theirs.reset();
    prefork::fd l = prefork::listen("127.0.0.1:0");
    std::string addr = prefork::local_address(l.get());
    prefork::fd early = prefork::connect(addr);  // queued before the socket moves
    prefork::write_all(early.get(), "early\n");
    prefork::send_fds(mine.get(), {l.get()}, "serve 2");
    l.reset();  // from now on only the helper holds the listener
    prefork::fd late = prefork::connect(addr);
    prefork::write_all(late.get(), "late\n");
    CHECK(read_line(early.get()) == "echo:early");
    CHECK(read_line(late.get()) == "echo:late");
    CHECK(next_report(mine.get()) == "listening on " + addr);
    mine.reset();
    CHECK(exit_code(helper) == 0);
  }
  REQUIRE(leaks.problems() == "");
}

TEST_CASE("truncated control data in the receiving process: an error, and nothing leaks there",
          "[socket][fds][ctrunc]") {
  prefork::test::leak_check leaks;
  {
    auto [mine, theirs] = prefork::socket_pair();
    pid_t helper = spawn_helper("fd_receiver", theirs.get());
    theirs.reset();
    auto p = prefork::pipe();
    std::vector<int> three(3, p.write.get());

    // More than the receiver asked for.
    prefork::send_fds(mine.get(), {}, "expect 1");
    prefork::send_fds(mine.get(), three, "three");
    std::string report = next_report(mine.get());
    CHECK(report.rfind("error " + std::to_string(EMSGSIZE) + ": recv_fds fd ", 0) == 0);
    CHECK(report.find(": peer sent 3 descriptors, at most 1 expected: Message too long\nleaks: ") !=
          std::string::npos);
    CHECK(report.substr(report.find("\nleaks: ")) == "\nleaks: ");

    // The receiver runs out of descriptor numbers halfway through.
    prefork::send_fds(mine.get(), {}, "starve");
    prefork::send_fds(mine.get(), three, "three");
    report = next_report(mine.get());
    CHECK(report.rfind("error " + std::to_string(EMFILE) + ": recv_fds fd ", 0) == 0);
    CHECK(report.find(
              ": 3 descriptors sent, 1 received (control data truncated): Too many open files\nleaks: ") !=
          std::string::npos);
    CHECK(report.substr(report.find("\nleaks: ")) == "\nleaks: ");

    // Both errors left the stream in step.
    prefork::send_fds(mine.get(), {}, "expect 3");
    prefork::send_fds(mine.get(), three, "three");
    CHECK(next_report(mine.get()) == "received 3\nleaks: ");
    p.write.reset();
    prefork::send_fds(mine.get(), {}, "expect 0");
    prefork::send_fds(mine.get(), {}, "none");
    CHECK(next_report(mine.get()) == "received 0\nleaks: ");
    mine.reset();
    CHECK(exit_code(helper) == 0);
    REQUIRE(readable_within(p.read.get()));
    CHECK(prefork::read_all(p.read.get()) == "");  // every copy of the write end is closed
  }
  REQUIRE(leaks.problems() == "");
}

TEST_CASE("a privileged port, or a directory it may not write, refuses a non-root listener",
          "[socket][errors]") {
  int unprivileged_start = 1024;
  std::ifstream("/proc/sys/net/ipv4/ip_unprivileged_port_start") >> unprivileged_start;
  if (unprivileged_start <= 80) {
    WARN("skipped: net.ipv4.ip_unprivileged_port_start is " << unprivileged_start);
    return;
  }
  prefork::test::leak_check leaks;
  {
    temp_dir dir;
    REQUIRE(::chmod(dir.path.c_str(), 0755) == 0);  // root-owned (or ours): nobody cannot create in it
    auto result = prefork::pipe();
    pid_t child = fork_child([&] {
      result.read.reset();
      if (::geteuid() == 0) {
        // Root may bind anything, so drop to nobody, as a daemon would.
        if (::setgroups(0, nullptr) != 0 || ::setgid(65534) != 0 || ::setuid(65534) != 0) return 4;
      }
      std::string out;
      for (std::string addr : {std::string("127.0.0.1:80"), "unix:" + dir.path + "/x.sock"}) {
        try {
          prefork::fd l = prefork::listen(addr);
          out += "listened on " + addr + "\n";
        } catch (const std::system_error& e) {
          out += std::string(e.what()) + "\n";
        }
      }
      prefork::write_all(result.write.get(), out);
      return 0;
    });
    result.write.reset();
    REQUIRE(readable_within(result.read.get()));
    std::string out = prefork::read_all(result.read.get());
    CHECK(exit_code(child) == 0);
    CHECK(out ==
          "listen 127.0.0.1:80: Permission denied\nlisten unix:" + dir.path + "/x.sock: Permission denied\n");
  }
  REQUIRE(leaks.problems() == "");
}

TEST_CASE("a unix socket left by a killed listener is replaced; while it lives, listen is refused",
          "[socket][unix]") {
  prefork::test::leak_check leaks;
  {
    temp_dir dir;
    std::string addr = "unix:" + dir.path + "/killed.sock";
    auto ready = prefork::pipe(), hold = prefork::pipe();
    pid_t owner = fork_child([&] {
      ready.read.reset();
      hold.write.reset();
      prefork::fd l = prefork::listen(addr);
      prefork::write_all(ready.write.get(), "r");
      char c;
      (void)prefork::read_some(hold.read.get(), &c, 1);  // until killed
      return 0;
    });
    ready.write.reset();
    hold.read.reset();
    REQUIRE(readable_within(ready.read.get()));
    CHECK_THROWS_WITH(prefork::listen(addr), "listen " + addr + ": Address already in use");
    REQUIRE(::kill(owner, SIGKILL) == 0);
    CHECK(exit_code(owner) == 128 + SIGKILL);
    REQUIRE(std::filesystem::exists(dir.path + "/killed.sock"));  // nobody cleaned up after it

    prefork::fd l = prefork::listen(addr);
    prefork::fd client = prefork::connect(addr);
    prefork::fd conn = prefork::accept(l.get());
    prefork::write_all(client.get(), "x\n");
    CHECK(read_line(conn.get()) == "x");
  }
  REQUIRE(leaks.problems() == "");
}
