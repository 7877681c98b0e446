// run.hpp and child::stop / child::kill_group with real processes: output on
// both streams and input larger than a pipe never deadlock, the deadline
// escalates from SIGTERM to SIGKILL on time, max_output kills and throws,
// stop() escalates, and a group signal reaches grandchildren.
#include "catch.hpp"

#include <prefork/pipe.hpp>
#include <prefork/process.hpp>
#include <prefork/run.hpp>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <string>

#include "helpers.hpp"
#include "leak_check.hpp"

using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

namespace {

void say(int fd, const std::string& text) { prefork::write_all(fd, text.data(), text.size()); }

std::string pattern(std::size_t n, char seed) {
  std::string s(n, '\0');
  for (std::size_t i = 0; i < n; ++i) s[i] = static_cast<char>(seed + static_cast<char>(i % 23));
  return s;
}

// The first line on `fd`, waiting at most 20 s.
std::string first_line(int fd) {
  std::string line;
  auto until = clock_type::now() + 20s;
  while (line.find('\n') == std::string::npos) {
    pollfd p{fd, POLLIN, 0};
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - clock_type::now()).count();
    if (left <= 0 || ::poll(&p, 1, static_cast<int>(left)) <= 0) throw std::runtime_error("no line in time");
    char c[256];
    auto got = prefork::read_some(fd, c, sizeof c);
    if (!got || got.bytes == 0) break;
    line.append(c, got.bytes);
  }
  return line;
}

extern "C" void note_term(int) {
  const char text[] = "got TERM\n";
  [[maybe_unused]] ssize_t n = ::write(1, text, sizeof text - 1);
}

}  // namespace

// streams ERR_BYTES OUT_BYTES: all of stderr first, then stdout, so a parent
// that reads stdout to its end before stderr deadlocks.
PREFORK_HELPER(streams) {
  say(2, pattern(std::strtoul(argv[0], nullptr, 10), 'a'));
  say(1, pattern(std::strtoul(argv[1], nullptr, 10), 'A'));
  return 0;
}

// Copies stdin to stdout chunk by chunk, so it blocks on a full stdout while
// its parent still writes input.
PREFORK_HELPER(copy_through) {
  char buf[4096];
  for (;;) {
    auto got = prefork::read_some(0, buf, sizeof buf);
    if (!got) return 2;
    if (got.bytes == 0) return 0;
    say(1, std::string(buf, got.bytes));
  }
}

PREFORK_HELPER(exit_with) { return std::atoi(argv[0]); }

PREFORK_HELPER(merged) {
  say(1, "out;");
  say(2, "err;");
  say(1, "out again");
  return 0;
}

// Says "got TERM" for each SIGTERM and lives on.
PREFORK_HELPER(shrug_term) {
  struct sigaction sa {};
  sa.sa_handler = note_term;
  ::sigaction(SIGTERM, &sa, nullptr);
  say(1, "ready\n");
  for (;;) ::pause();
}

PREFORK_HELPER(flood) {
  std::string chunk = pattern(65536, 'x');
  for (;;) say(1, chunk);
}

// Tells fd 3 it is ready (after `ignore` when asked, SIGTERM is ignored), then waits.
PREFORK_HELPER(wait_for_signal) {
  if (argc > 0 && std::string(argv[0]) == "ignore") ::signal(SIGTERM, SIG_IGN);
  say(3, "ready\n");
  for (;;) ::pause();
}

// A leader and a grandchild in its group, both holding fd 3 open until they
// die; the grandchild's line comes first.
PREFORK_HELPER(family) {
  pid_t kid = ::fork();
  if (kid == 0) {
    say(3, "grandchild " + std::to_string(::getpid()) + "\n");
    for (;;) ::pause();
  }
  for (;;) ::pause();
}

TEST_CASE("run: 1 MiB on stderr and none on stdout, or 1 MiB on each, never deadlocks", "[run]") {
  prefork::test::leak_check leaks;
  auto only_err = prefork::run(prefork::test::helper_argv("streams", {"1048576", "0"}));
  CHECK(only_err.status.success());
  CHECK(only_err.out.empty());
  CHECK(only_err.err == pattern(1 << 20, 'a'));

  auto both = prefork::run(prefork::test::helper_argv("streams", {"1048576", "1048576"}));
  CHECK(both.status.success());
  CHECK(both.out == pattern(1 << 20, 'A'));
  CHECK(both.err == pattern(1 << 20, 'a'));
  CHECK_FALSE(both.timed_out);
  CHECK(leaks.problems() == "");
}

TEST_CASE("run: input larger than a pipe is written while the output is read", "[run]") {
  prefork::test::leak_check leaks;
  prefork::run_options options;
  options.input = pattern(4 << 20, '0');
  auto result = prefork::run(prefork::test::helper_argv("copy_through"), options);
  CHECK(result.status.success());
  CHECK(result.out.size() == options.input.size());
  CHECK(result.out == options.input);
  CHECK(leaks.problems() == "");
}

TEST_CASE("run: input a child never reads costs the caller no SIGPIPE", "[run]") {
  prefork::test::leak_check leaks;
  prefork::run_options options;
  options.input = pattern(4 << 20, '0');
  auto result = prefork::run(prefork::test::helper_argv("exit_with", {"5"}), options);
  CHECK(result.status.code() == 5);
  sigset_t pending;
  sigemptyset(&pending);
  ::sigpending(&pending);
  CHECK(sigismember(&pending, SIGPIPE) == 0);
  CHECK(leaks.problems() == "");
}

TEST_CASE("run: merge_stderr puts both streams in out, in order", "[run]") {
  prefork::test::leak_check leaks;
  prefork::run_options options;
  options.merge_stderr = true;
  auto result = prefork::run(prefork::test::helper_argv("merged"), options);
  CHECK(result.out == "out;err;out again");
  CHECK(result.err.empty());
  CHECK(leaks.problems() == "");
}

TEST_CASE("run: other fd mappings are kept", "[run]") {
  prefork::test::leak_check leaks;
  auto side = prefork::pipe();
  prefork::run_options options;
  options.spawn.fds = {{side.write.get(), 3}, {side.write.get(), 1}};  // the 1 is run()'s
  auto result = prefork::run(prefork::test::helper_argv("write_to_3_and_1"), options);
  side.write.reset();
  CHECK(result.status.success());
  CHECK(result.out == "to 1");
  CHECK(prefork::read_all(side.read.get()) == "to 3");
  side.read.reset();
  CHECK(leaks.problems() == "");
}

PREFORK_HELPER(write_to_3_and_1) {
  say(3, "to 3");
  say(1, "to 1");
  return 0;
}

TEST_CASE("run: a child that ignores SIGTERM is killed after the grace", "[run][timeout]") {
  prefork::test::leak_check leaks;
  prefork::run_options options;
  options.timeout = 1500ms;
  options.grace = 300ms;
  auto start = clock_type::now();
  auto result = prefork::run(prefork::test::helper_argv("shrug_term"), options);
  auto took = clock_type::now() - start;
  CHECK(result.timed_out);
  CHECK(result.status.signal() == SIGKILL);
  CHECK(result.out == "ready\ngot TERM\n");  // SIGTERM first, then SIGKILL
  CHECK(took >= 1800ms);
  CHECK(took < 1800ms + 1s);
  CHECK(leaks.problems() == "");
}

TEST_CASE("run: a child that exits in time is unaffected by the timeout", "[run][timeout]") {
  prefork::test::leak_check leaks;
  prefork::run_options options;
  options.timeout = 20s;
  auto start = clock_type::now();
  auto result = prefork::run(prefork::test::helper_argv("exit_with", {"3"}), options);
  CHECK_FALSE(result.timed_out);
  CHECK(result.status.code() == 3);
  CHECK(clock_type::now() - start < 10s);
  CHECK(leaks.problems() == "");
}

TEST_CASE("run: output past max_output kills the child and throws", "[run]") {
  prefork::test::leak_check leaks;
  prefork::run_options options;
  options.max_output = 100000;
  try {
    prefork::run(prefork::test::helper_argv("flood"), options);
    FAIL("run() returned");
  } catch (const std::runtime_error& e) {
    CHECK(std::string(e.what()).find("max_output (100000 bytes)") != std::string::npos);
  }
  CHECK(leaks.problems() == "");  // killed and reaped
}

TEST_CASE("run: a program that cannot start throws as spawn does", "[run]") {
  prefork::test::leak_check leaks;
  try {
    prefork::run({"/nonexistent/program"});
    FAIL("run() returned");
  } catch (const std::system_error& e) {
    CHECK(e.code() == std::errc::no_such_file_or_directory);
  }
  CHECK(leaks.problems() == "");
}

namespace {

prefork::child started(const std::vector<std::string>& args, prefork::pipe_ends& ready,
                       prefork::spawn_options options = {}) {
  options.fds = {{0, 0}, {1, 1}, {2, 2}, {ready.write.get(), 3}};
  prefork::child c = prefork::spawn(args, options);
  ready.write.reset();
  REQUIRE(first_line(ready.read.get()).rfind("ready", 0) == 0);
  return c;
}

}  // namespace

TEST_CASE("stop: a child that ends on SIGTERM returns that status", "[stop]") {
  prefork::test::leak_check leaks;
  auto ready = prefork::pipe();
  prefork::child c = started(prefork::test::helper_argv("wait_for_signal"), ready);
  auto start = clock_type::now();
  prefork::exit_status status = c.stop(20s);
  CHECK(status.signal() == SIGTERM);
  CHECK(clock_type::now() - start < 10s);
  CHECK(c.stop(20s) == status);  // reaped: the same status again
  ready.read.reset();
  CHECK(leaks.problems() == "");
}

TEST_CASE("stop: a child that ignores the signal is killed at the deadline", "[stop]") {
  prefork::test::leak_check leaks;
  auto ready = prefork::pipe();
  prefork::child c = started(prefork::test::helper_argv("wait_for_signal", {"ignore"}), ready);
  auto start = clock_type::now();
  prefork::exit_status status = c.stop(300ms);
  auto took = clock_type::now() - start;
  CHECK(status.signal() == SIGKILL);
  CHECK(took >= 300ms);
  CHECK(took < 300ms + 5s);
  ready.read.reset();
  CHECK(leaks.problems() == "");
}

TEST_CASE("stop: another signal can be asked for", "[stop]") {
  prefork::test::leak_check leaks;
  auto ready = prefork::pipe();
  prefork::child c = started(prefork::test::helper_argv("wait_for_signal", {"ignore"}), ready);
  CHECK(c.stop(20s, SIGINT).signal() == SIGINT);
  ready.read.reset();
  CHECK(leaks.problems() == "");
}

TEST_CASE("kill_group reaches a grandchild in the group", "[group]") {
  prefork::test::leak_check leaks;
  auto alive = prefork::pipe();
  prefork::spawn_options options;
  options.new_process_group = true;
  options.fds = {{0, 0}, {1, 1}, {2, 2}, {alive.write.get(), 3}};
  prefork::child leader = prefork::spawn(prefork::test::helper_argv("family"), options);
  alive.write.reset();
  std::string line = first_line(alive.read.get());
  REQUIRE(line.rfind("grandchild ", 0) == 0);
  pid_t grandchild = std::atoi(line.c_str() + 11);
  CHECK(::getpgid(grandchild) == leader.pid());

  leader.kill_group(SIGTERM);
  // End of file: every holder of fd 3, the grandchild too, is gone.
  pollfd p{alive.read.get(), POLLIN, 0};
  REQUIRE(::poll(&p, 1, 20000) == 1);
  char c;
  CHECK(prefork::read_some(alive.read.get(), &c, 1).bytes == 0);
  CHECK(leader.wait().signal() == SIGTERM);
  alive.read.reset();
  CHECK(leaks.problems() == "");
}

TEST_CASE("kill_group refuses a child that leads no group, and a reaped one", "[group]") {
  prefork::test::leak_check leaks;
  auto ready = prefork::pipe();
  prefork::child c = started(prefork::test::helper_argv("wait_for_signal"), ready);
  CHECK_THROWS_AS(c.kill_group(SIGTERM), std::logic_error);
  c.kill(SIGKILL);
  c.wait();
  CHECK_THROWS_AS(c.kill_group(SIGTERM), std::logic_error);
  ready.read.reset();
  CHECK(leaks.problems() == "");
}

TEST_CASE("run: with new_process_group the deadline stops the whole group", "[run][timeout][group]") {
  prefork::test::leak_check leaks;
  auto alive = prefork::pipe();
  prefork::run_options options;
  options.spawn.new_process_group = true;
  options.spawn.fds = {{alive.write.get(), 3}};
  options.timeout = 1s;
  options.grace = 5s;
  auto start = clock_type::now();
  auto result = prefork::run(prefork::test::helper_argv("family"), options);
  alive.write.reset();
  CHECK(result.timed_out);
  CHECK(result.status.signal() == SIGTERM);
  CHECK(clock_type::now() - start < 4s);
  // The grandchild was there, and is gone: it held fd 3 too.
  pollfd p{alive.read.get(), POLLIN, 0};
  REQUIRE(::poll(&p, 1, 20000) == 1);
  CHECK(prefork::read_all(alive.read.get()).rfind("grandchild ", 0) == 0);
  alive.read.reset();
  CHECK(leaks.problems() == "");
}
