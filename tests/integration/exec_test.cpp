// exec.hpp with real exec: a listening socket crosses exec (through
// prefork::exec and through systemd-style LISTEN_FDS) and still holds the
// connections queued before it; nothing else crosses; PATH search; re-exec
// of the program as started after a chdir.
#include "catch.hpp"

#include <prefork/exec.hpp>
#include <prefork/pipe.hpp>

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "helpers.hpp"
#include "leak_check.hpp"

namespace {

// "0,1,2,5": what this process has open, its own listing excluded.
std::string fd_list() {
  std::string out;
  for (int fd : prefork::test::open_fds()) out += (out.empty() ? "" : ",") + std::to_string(fd);
  return out;
}

std::string join(const std::vector<std::string>& parts, const char* sep) {
  std::string out;
  for (const auto& p : parts) out += (out.empty() ? "" : sep) + p;
  return out;
}

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "-";
}

prefork::fd listen_loopback(int& port) {
  prefork::fd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  REQUIRE(s);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(s.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  REQUIRE(::listen(s.get(), 16) == 0);
  socklen_t len = sizeof addr;
  REQUIRE(::getsockname(s.get(), reinterpret_cast<sockaddr*>(&addr), &len) == 0);
  port = ntohs(addr.sin_port);
  return s;
}

prefork::fd connect_loopback(int port) {
  prefork::fd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  REQUIRE(s);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  REQUIRE(::connect(s.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  return s;
}

bool wait_readable(int fd, int ms = 20000) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, ms) == 1;
}

int wait_exit(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) == -1 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// Reads a child's report to EOF, with a deadline so a hung child fails the
// test instead of hanging it.
std::string read_report(int fd) {
  std::string out;
  char buf[4096];
  while (wait_readable(fd)) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n <= 0) break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  return out;
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// In a forked child: its stdout to `out`, then `body`, which should exec.
template <class Body>
pid_t fork_with_stdout(int out, Body body) {
  pid_t pid = ::fork();
  REQUIRE(pid != -1);
  if (pid == 0) {
    ::dup2(out, 1);
    try {
      body();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "child: %s\n", e.what());
    }
    ::_exit(127);
  }
  return pid;
}

}  // namespace

// Reports what it was given, then serves every inherited listener once:
// accepts, reads the client's "ping", answers "pong".
PREFORK_HELPER(exec_report) {
  std::string open_at_start = fd_list();
  std::string env_before = env("PREFORK_FDS") + "|" + env("LISTEN_FDS");
  prefork::inherited got = prefork::take_inherited_fds();
  std::vector<std::string> numbers, cloexec;
  for (const auto& f : got.fds) {
    numbers.push_back(std::to_string(f.get()));
    cloexec.push_back(f.cloexec() ? "1" : "0");
  }
  std::printf("fds=%s\nenv_before=%s\nsource=%s\nnumbers=%s\nnames=%s\ncloexec=%s\nenv_after=%s|%s|%s\n",
              open_at_start.c_str(), env_before.c_str(), got.source.c_str(), join(numbers, ",").c_str(),
              join(got.names, ":").c_str(), join(cloexec, ",").c_str(), env("PREFORK_FDS").c_str(),
              env("LISTEN_FDS").c_str(), env("LISTEN_PID").c_str());
  std::fflush(stdout);
  for (const auto& listener : got.fds) {
    if (!wait_readable(listener.get())) return 2;
    prefork::fd conn(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!conn) return 3;
    char buf[4];
    if (!wait_readable(conn.get()) || ::read(conn.get(), buf, 4) != 4) return 4;
    if (prefork::write_all(conn.get(), "pong", 4) != 4) return 5;
  }
  std::printf("served\n");
  return 0;
}

// First run: chdir away and re-exec itself as started. Second run (marked
// by the environment): report argv and the directories.
PREFORK_HELPER(reexec_after_chdir) {
  if (!std::getenv("PREFORK_TEST_REEXECED")) {
    ::setenv("PREFORK_TEST_REEXECED", "1", 1);
    if (::chdir("/") != 0) return 2;
    try {
      prefork::exec_self({});
    } catch (const std::exception& e) {
      std::printf("exec_self failed: %s\n", e.what());
    }
    return 3;
  }
  std::printf("argv=%s\ncwd=%s\nstartup_cwd=%s\nfds=%s\n", join(prefork::startup_argv(), " ").c_str(),
              std::filesystem::current_path().c_str(), prefork::startup_cwd().c_str(), fd_list().c_str());
  return 0;
}

TEST_CASE("exec keeps a listener, queued connections included, and closes everything else", "[exec]") {
  prefork::test::leak_check leaks;
  {
    int port = 0;
    prefork::fd listener = listen_loopback(port);
    // Queued in the kernel before the exec; nobody has accepted it yet.
    prefork::fd client = connect_loopback(port);
    REQUIRE(prefork::write_all(client.get(), "ping", 4) == 4);
    auto report = prefork::pipe();
    std::vector<std::string> argv = prefork::test::helper_argv("exec_report");
    int kept = listener.get();
    pid_t pid = fork_with_stdout(report.write.get(), [&] {
      int stray = ::open("/dev/null", O_RDONLY);  // without O_CLOEXEC, as careless code does
      (void)stray;
      prefork::exec(argv, {kept}, {"http"});
    });
    report.write.reset();
    listener.reset();  // only the exec'd helper holds it now
    std::string out = read_report(report.read.get());
    char answer[4] = {};
    REQUIRE(wait_readable(client.get()));
    CHECK(::read(client.get(), answer, 4) == 4);
    CHECK(std::string(answer, 4) == "pong");
    CHECK(wait_exit(pid) == 0);
    INFO(out);
    CHECK(contains(out, "fds=0,1,2," + std::to_string(kept) + "\n"));
    CHECK(contains(out, "env_before=" + std::to_string(kept) + "|-\n"));
    CHECK(contains(out, "source=PREFORK_FDS\n"));
    CHECK(contains(out, "numbers=" + std::to_string(kept) + "\n"));
    CHECK(contains(out, "names=http\n"));
    CHECK(contains(out, "cloexec=1\n"));
    CHECK(contains(out, "env_after=-|-|-\n"));
    CHECK(contains(out, "served\n"));
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("systemd socket activation: LISTEN_FDS from 3, LISTEN_PID must be the process", "[exec][systemd]") {
  prefork::test::leak_check leaks;
  for (bool ours : {true, false}) {
    DYNAMIC_SECTION((ours ? "LISTEN_PID matches" : "LISTEN_PID is another process")) {
      int port = 0;
      prefork::fd listener = listen_loopback(port);
      prefork::fd client = connect_loopback(port);
      REQUIRE(prefork::write_all(client.get(), "ping", 4) == 4);
      auto report = prefork::pipe();
      std::vector<std::string> argv = prefork::test::helper_argv("exec_report");
      std::vector<char*> args;
      for (auto& a : argv) args.push_back(a.data());
      args.push_back(nullptr);
      int raw = listener.get();
      pid_t pid = fork_with_stdout(report.write.get(), [&] {
        // As systemd hands them over: at 3, without CLOEXEC, described in
        // the environment; a plain execv.
        int moved = ::fcntl(raw, F_DUPFD_CLOEXEC, 10);
        ::dup2(moved, 3);
        // systemd passes nothing else; this test's runner may have left
        // inheritable descriptors open, which a plain execv would pass on.
        ::syscall(SYS_close_range, 4U, ~0U, 0U);
        ::setenv("LISTEN_FDS", "1", 1);
        ::setenv("LISTEN_FDNAMES", "web", 1);
        ::setenv("LISTEN_PID", std::to_string(ours ? ::getpid() : ::getppid()).c_str(), 1);
        ::execv(args[0], args.data());
      });
      report.write.reset();
      listener.reset();
      std::string out = read_report(report.read.get());
      CHECK(wait_exit(pid) == 0);
      INFO(out);
      CHECK(contains(out, "fds=0,1,2,3\n"));
      if (ours) {
        char answer[4] = {};
        REQUIRE(wait_readable(client.get()));
        CHECK(::read(client.get(), answer, 4) == 4);
        CHECK(std::string(answer, 4) == "pong");
        CHECK(contains(out, "source=LISTEN_FDS\nnumbers=3\nnames=web\ncloexec=1\n"));
        CHECK(contains(out, "env_after=-|-|-\n"));
      } else {
        CHECK(contains(out, "source=\nnumbers=\nnames=\n"));
        CHECK(contains(out, "env_after=-|1|" + std::to_string(::getpid()) + "\n"));  // not ours: left alone
      }
      CHECK(contains(out, "served\n"));
    }
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("exec searches PATH for a bare program name", "[exec]") {
  prefork::test::leak_check leaks;
  {
    auto report = prefork::pipe();
    std::string self = prefork::test::self_exe();
    std::string dir = self.substr(0, self.rfind('/'));
    std::string name = self.substr(self.rfind('/') + 1);
    pid_t pid = fork_with_stdout(report.write.get(), [&] {
      ::setenv("PATH", ("/nonexistent:" + dir).c_str(), 1);
      prefork::exec({name, "--prefork-helper", "exec_report"}, {});
    });
    report.write.reset();
    std::string out = read_report(report.read.get());
    CHECK(wait_exit(pid) == 0);
    INFO(out);
    CHECK(contains(out, "fds=0,1,2\n"));
    CHECK(contains(out, "env_before=|-\n"));  // PREFORK_FDS published, empty
    CHECK(contains(out, "source=PREFORK_FDS\n"));
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("exec_self after chdir runs the program as started, a relative argv[0] included", "[exec]") {
  prefork::test::leak_check leaks;
  {
    auto report = prefork::pipe();
    std::string self = prefork::test::self_exe();
    std::string dir = self.substr(0, self.rfind('/'));
    std::string relative = "./" + self.substr(self.rfind('/') + 1);
    std::vector<std::string> argv{relative, "--prefork-helper", "reexec_after_chdir"};
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    pid_t pid = fork_with_stdout(report.write.get(), [&] {
      ::unsetenv("PREFORK_TEST_REEXECED");
      if (::chdir(dir.c_str()) == 0) ::execv(args[0], args.data());
    });
    report.write.reset();
    std::string out = read_report(report.read.get());
    CHECK(wait_exit(pid) == 0);
    INFO(out);
    CHECK(contains(out, "argv=" + relative + " --prefork-helper reexec_after_chdir\n"));
    CHECK(contains(out, "cwd=/\nstartup_cwd=/\n"));  // the second image did start in /
    CHECK(contains(out, "fds=0,1,2\n"));
  }
  CHECK(leaks.problems() == "");
}
