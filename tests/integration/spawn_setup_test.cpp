// spawn_options' child setup with real processes: environment edits, umask,
// a resource limit, dropping root, the parent-death signal (also when the
// parent dies before the child could ask for it), and the error_code
// overloads of spawn and exec.
#include "catch.hpp"

#include <prefork/exec.hpp>
#include <prefork/pipe.hpp>
#include <prefork/process.hpp>
#include <prefork/run.hpp>

#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "helpers.hpp"
#include "leak_check.hpp"
#include "proc.hpp"

using namespace std::chrono_literals;

extern char** environ;

namespace {

void say(int fd, const std::string& text) { prefork::write_all(fd, text.data(), text.size()); }

std::string output_of(const std::string& helper, const prefork::spawn_options& options,
                      std::vector<std::string> args = {}) {
  prefork::run_options run;
  run.spawn = options;
  run.timeout = 20s;
  prefork::run_result r = prefork::run(prefork::test::helper_argv(helper, std::move(args)), run);
  REQUIRE(r.status.success());
  return r.out;
}

// Waits up to 20 s for end of file on `fd`; what was read before it, or
// std::nullopt if it did not come.
std::optional<std::string> until_eof(int fd) {
  std::string out;
  auto until = std::chrono::steady_clock::now() + 20s;
  for (;;) {
    auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
    pollfd p{fd, POLLIN, 0};
    if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) <= 0) return std::nullopt;
    char buf[256];
    auto got = prefork::read_some(fd, buf, sizeof buf);
    if (!got || got.bytes == 0) return out;
    out.append(buf, got.bytes);
  }
}

}  // namespace

PREFORK_HELPER(dump_env) {
  std::string out;
  for (char** e = environ; *e; ++e) out += std::string(*e) + "\n";
  say(1, out);
  return 0;
}

PREFORK_HELPER(print_umask) {
  mode_t m = ::umask(0);
  say(1, std::to_string(m));
  return 0;
}

// The NOFILE limits, then what raising the hard one gave.
PREFORK_HELPER(raise_nofile) {
  rlimit r{};
  ::getrlimit(RLIMIT_NOFILE, &r);
  std::string out = std::to_string(r.rlim_cur) + "/" + std::to_string(r.rlim_max);
  rlimit more{r.rlim_max + 1, r.rlim_max + 1};
  out += ::setrlimit(RLIMIT_NOFILE, &more) == 0 ? " raised" : std::string(" ") + std::strerror(errno);
  say(1, out);
  return 0;
}

PREFORK_HELPER(print_ids) {
  say(1, prefork::test::status_line(::getpid(), "Uid:") + "\n" +
             prefork::test::status_line(::getpid(), "Gid:") + "\n" +
             prefork::test::status_line(::getpid(), "Groups:") + "\n");
  return 0;
}

// Says "ready" on fd 3 and waits to be killed.
PREFORK_HELPER(linger) {
  say(3, "ready\n");
  for (;;) ::pause();
}

extern "C" void say_term(int) {
  const char text[] = "got TERM\n";
  [[maybe_unused]] ssize_t n = ::write(3, text, sizeof text - 1);
  ::_exit(0);
}

// Catches SIGTERM (saying so on fd 3), then tells its parent on fd 4 that it can go.
PREFORK_HELPER(catch_term) {
  struct sigaction sa {};
  sa.sa_handler = say_term;
  ::sigaction(SIGTERM, &sa, nullptr);
  say(4, "ready\n");
  for (;;) ::pause();
}

TEST_CASE("env_set and env_unset edit the inherited environment", "[env]") {
  prefork::test::leak_check leaks;
  ::setenv("PREFORK_KEEP", "kept", 1);
  ::setenv("PREFORK_DROP", "dropped", 1);
  ::setenv("PREFORK_CHANGE", "old", 1);
  prefork::spawn_options options;
  options.env_set = {"PREFORK_CHANGE=new", "PREFORK_ADDED=a=b"};
  options.env_unset = {"PREFORK_DROP", "PREFORK_NEVER_SET"};
  std::string env = output_of("dump_env", options);
  CHECK(env.find("\nPREFORK_KEEP=kept\n") != std::string::npos);
  CHECK(env.find("PREFORK_DROP") == std::string::npos);
  CHECK(env.find("\nPREFORK_CHANGE=new\n") != std::string::npos);
  CHECK(env.find("PREFORK_CHANGE=old") == std::string::npos);
  CHECK(env.find("\nPREFORK_ADDED=a=b\n") != std::string::npos);
  CHECK(env.find("\nPATH=") != std::string::npos);  // the rest is inherited
  ::unsetenv("PREFORK_KEEP");
  ::unsetenv("PREFORK_DROP");
  ::unsetenv("PREFORK_CHANGE");
  CHECK(leaks.problems() == "");
}

TEST_CASE("env_set and env_unset edit an explicit env", "[env]") {
  prefork::test::leak_check leaks;
  prefork::spawn_options options;
  options.env = std::vector<std::string>{"A=1", "B=2", "C=3"};
  options.env_set = {"B=two", "D=4", "D=four"};
  options.env_unset = {"C", "B"};  // B is set again: env_set is applied on top
  CHECK(output_of("dump_env", options) == "A=1\nB=two\nD=four\n");
  CHECK(leaks.problems() == "");
}

TEST_CASE("a malformed env_set or env_unset entry is refused before anything starts", "[env]") {
  prefork::test::leak_check leaks;
  prefork::spawn_options options;
  options.env_set = {"NOVALUE"};
  CHECK_THROWS_AS(prefork::spawn({"true"}, options), std::invalid_argument);
  options.env_set.clear();
  options.env_unset = {"A=B"};
  CHECK_THROWS_AS(prefork::spawn({"true"}, options), std::invalid_argument);
  CHECK(leaks.problems() == "");
}

TEST_CASE("umask is set in the child only", "[umask]") {
  prefork::test::leak_check leaks;
  mode_t ours = ::umask(022);
  prefork::spawn_options options;
  options.umask = 0077;
  CHECK(output_of("print_umask", options) == std::to_string(0077));
  CHECK(output_of("print_umask", {}) == std::to_string(022));
  ::umask(ours);
  CHECK(leaks.problems() == "");
}

TEST_CASE("an rlimit is set in the child, which cannot raise it", "[rlimit]") {
  prefork::test::leak_check leaks;
  prefork::spawn_options options;
  options.rlimits = {{RLIMIT_NOFILE, rlimit{64, 64}}};
  if (::geteuid() == 0) {  // root may raise a hard limit: drop it first
    options.uid = 65534;
    options.gid = 65534;
  }
  CHECK(output_of("raise_nofile", options) == "64/64 " + std::string(std::strerror(EPERM)));
  rlimit ours{};
  ::getrlimit(RLIMIT_NOFILE, &ours);
  CHECK(ours.rlim_max != 64);
  CHECK(leaks.problems() == "");
}

TEST_CASE("a limit the kernel refuses fails the spawn with its errno", "[rlimit]") {
  prefork::test::leak_check leaks;
  prefork::spawn_options options;
  options.rlimits = {{RLIMIT_CORE, rlimit{0, 0}}, {RLIMIT_NOFILE, rlimit{10, 5}}};  // soft above hard
  try {
    prefork::child started = prefork::spawn({"true"}, options);
    FAIL("spawn returned");
  } catch (const std::system_error& e) {
    CHECK(e.code() == std::errc::invalid_argument);
    CHECK(std::string(e.what()).find("spawn true: setrlimit " + std::to_string(RLIMIT_NOFILE) + " 10/5") !=
          std::string::npos);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("uid and gid drop root with the groups", "[ids]") {
  if (::geteuid() != 0) {
    WARN("not root: uid and gid cannot be dropped here");
    return;
  }
  prefork::test::leak_check leaks;
  prefork::spawn_options options;
  options.uid = 65534;
  options.gid = 65533;
  CHECK(output_of("print_ids", options) ==
        "Uid:\t65534\t65534\t65534\t65534\nGid:\t65533\t65533\t65533\t65533\nGroups:\t65533 \n");

  prefork::spawn_options uid_only;
  uid_only.uid = 65534;  // root's supplementary groups are not kept
  CHECK(output_of("print_ids", uid_only) ==
        "Uid:\t65534\t65534\t65534\t65534\nGid:\t0\t0\t0\t0\nGroups:\t \n");
  CHECK(leaks.problems() == "");
}

TEST_CASE("a failed uid or gid change fails the spawn as an exec error does", "[ids]") {
  prefork::test::leak_check leaks;
  prefork::spawn_options options;
  options.uid = static_cast<uid_t>(-1);  // never a valid user: EINVAL, or EPERM for a non-root caller
  options.gid = ::getegid();
  std::error_code ec;
  prefork::child none = prefork::spawn({"true"}, options, ec);
  CHECK(none.pid() == 0);
  if (::geteuid() == 0) {
    CHECK(ec == std::errc::invalid_argument);
    try {
      prefork::child started = prefork::spawn({"true"}, options);
      FAIL("spawn returned");
    } catch (const std::system_error& e) {
      CHECK(e.code() == ec);
      CHECK(std::string(e.what()).find("spawn true: setuid 4294967295") != std::string::npos);
    }
  } else {
    CHECK(ec == std::errc::operation_not_permitted);  // setgroups
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("the error_code overloads give the errno the throwing ones carry", "[ec]") {
  prefork::test::leak_check leaks;
  for (const char* program : {"/nonexistent/program", "/dev/null", "no-such-program-in-path"}) {
    std::error_code thrown;
    try {
      prefork::child started = prefork::spawn({program});
    } catch (const std::system_error& e) {
      thrown = e.code();
    }
    std::error_code ec = std::make_error_code(std::errc::interrupted);
    prefork::child c = prefork::spawn({program}, {}, ec);
    CHECK(c.pid() == 0);
    CHECK(ec);
    CHECK(ec == thrown);
  }
  std::error_code ok = std::make_error_code(std::errc::interrupted);
  prefork::child c = prefork::spawn({"true"}, {}, ok);
  CHECK_FALSE(ok);
  CHECK(c.wait().success());

  for (const char* program : {"/nonexistent/program", "/dev/null"}) {
    std::error_code thrown;
    try {
      prefork::exec({program}, {});
    } catch (const std::system_error& e) {
      thrown = e.code();
    }
    std::error_code ec;
    prefork::exec({program}, {}, ec);  // returns: the exec failed, this process goes on
    CHECK(ec);
    CHECK(ec == thrown);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("parent_death_signal reaches the child when its parent dies", "[pdeathsig]") {
  prefork::test::leak_check leaks;
  auto told = prefork::pipe();
  std::optional<prefork::child> middle = prefork::fork();
  if (!middle) {
    told.read.reset();
    auto go = prefork::pipe();
    prefork::spawn_options options;
    options.parent_death_signal = SIGTERM;
    options.fds = {{2, 2}, {told.write.get(), 3}, {go.write.get(), 4}};
    try {
      prefork::child kid = prefork::spawn(prefork::test::helper_argv("catch_term"), options);
      go.write.reset();
      char c;
      prefork::read_some(go.read.get(), &c, 1);  // the handler is in place
      kid.detach();                              // ours to abandon: the kernel is to signal it
    } catch (const std::exception& e) {
      std::fprintf(stderr, "middle: %s\n", e.what());
      ::_exit(1);
    }
    ::_exit(0);
  }
  told.write.reset();
  CHECK(middle->wait().success());
  CHECK(until_eof(told.read.get()) == std::optional<std::string>("got TERM\n"));
  told.read.reset();
  CHECK(leaks.problems() == "");
}

// The race: the parent dies after the clone but before the child's prctl.
// The child is held at its first instruction with ptrace while its parent
// is killed, then let go; it must die before it execs.
TEST_CASE("parent_death_signal when the parent died before the child set it", "[pdeathsig]") {
  prefork::test::leak_check leaks;
  auto told = prefork::pipe();
  auto go = prefork::pipe();
  std::optional<prefork::child> middle = prefork::fork();
  if (!middle) {
    told.read.reset();
    go.write.reset();
    char c;
    prefork::read_some(go.read.get(), &c, 1);  // traced by now
    prefork::spawn_options options;
    options.parent_death_signal = SIGKILL;
    options.fds = {{2, 2}, {told.write.get(), 3}};
    try {
      prefork::spawn(prefork::test::helper_argv("linger"), options).detach();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "middle: %s\n", e.what());
    }
    ::_exit(0);
  }
  told.write.reset();
  go.read.reset();
  pid_t m = middle->pid();
  if (::ptrace(PTRACE_SEIZE, m, nullptr, reinterpret_cast<void*>(PTRACE_O_TRACEVFORK)) == -1) {
    middle->kill(SIGKILL);
    middle->wait();
    WARN("ptrace is not allowed here: " << std::strerror(errno) << "; the race is not tested");
    return;
  }
  say(go.write.get(), "g");
  go.write.reset();
  int status = 0;
  REQUIRE(::waitpid(m, &status, __WALL) == m);  // the vfork event stop
  REQUIRE(status >> 8 == (SIGTRAP | (PTRACE_EVENT_VFORK << 8)));
  unsigned long kid = 0;
  REQUIRE(::ptrace(PTRACE_GETEVENTMSG, m, nullptr, &kid) == 0);
  auto k = static_cast<pid_t>(kid);
  REQUIRE(::waitpid(k, &status, __WALL) == k);  // held before its first instruction
  ::kill(m, SIGKILL);
  CHECK(middle->wait().signal() == SIGKILL);
  CHECK(prefork::test::parent_of(k) != m);  // handed to a reaper
  REQUIRE(::ptrace(PTRACE_DETACH, k, nullptr, nullptr) == 0);

  std::optional<std::string> said = until_eof(told.read.get());
  if (!said) ::kill(k, SIGKILL);                  // it escaped and runs on: the bug this test is for
  CHECK(said == std::optional<std::string>(""));  // dead before exec: "ready" never came
  told.read.reset();
  CHECK(leaks.problems() == "");
}
