// process.hpp, spawn.hpp, daemon.hpp with real processes: every way a child
// ends, every fd trap of spawn, signal state across spawn, daemonize's
// verdicts, and dropping root.
#include "catch.hpp"

#include <prefork/pipe.hpp>
#include <prefork/process.hpp>

#include <sys/resource.h>
#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "held_child.hpp"
#include "helpers.hpp"
#include "leak_check.hpp"
#include "proc.hpp"

using namespace std::chrono_literals;

namespace {

void say(int fd, const std::string& text) { prefork::write_all(fd, text.data(), text.size()); }

// Everything on `fd` until end of file, failing the test after `deadline`
// instead of hanging.
std::string read_to_eof(int fd, std::chrono::seconds deadline = 20s) {
  std::string out;
  auto until = std::chrono::steady_clock::now() + deadline;
  for (;;) {
    auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
    if (left.count() <= 0) throw std::runtime_error("no end of file within the deadline");
    pollfd p{fd, POLLIN, 0};
    int r = ::poll(&p, 1, static_cast<int>(left.count()));
    if (r == -1 && errno == EINTR) continue;
    if (r <= 0) continue;
    char buf[4096];
    auto got = prefork::read_some(fd, buf, sizeof buf);
    if (!got || got.bytes == 0) return out;
    out.append(buf, got.bytes);
  }
}

// Runs argv with its stdout (fd 1) captured; returns what it printed and how it ended.
std::pair<std::string, prefork::exit_status> capture(const std::vector<std::string>& argv,
                                                     prefork::spawn_options options = {}) {
  auto out = prefork::pipe();
  options.fds.emplace_back(out.write.get(), 1);
  prefork::child c = prefork::spawn(argv, options);
  out.write.reset();
  std::string text = read_to_eof(out.read.get());
  auto status = c.wait_for(20s);
  if (!status) throw std::runtime_error("child did not exit");
  return {text, *status};
}

double cpu_seconds() {
  timespec ts{};
  ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

// What follows "KEY:" on that line of this process's /proc/PID/status.
std::string proc_status_line(const std::string& key) {
  std::string line = prefork::test::status_line(::getpid(), key + ":");
  return line.empty() ? "missing" : line.substr(key.size() + 1);
}

}  // namespace

// ---- helpers: this executable, run again with --prefork-helper NAME ----

PREFORK_HELPER(print_fds) {
  std::string out;
  for (int fd : prefork::test::open_fds()) out += (out.empty() ? "" : " ") + std::to_string(fd);
  say(1, out);
  return 0;
}

// write_to N TEXT [N TEXT ...]
PREFORK_HELPER(write_to) {
  for (int i = 0; i + 1 < argc; i += 2) say(std::atoi(argv[i]), argv[i + 1]);
  return 0;
}

PREFORK_HELPER(echo_stdin) {
  say(1, prefork::read_all(0));
  return 0;
}

PREFORK_HELPER(print_signal_state) {
  say(1, proc_status_line("SigBlk") + proc_status_line("SigIgn"));
  return 0;
}

// print_env NAME...: each value or "(unset)", then the working directory.
PREFORK_HELPER(print_env) {
  std::string out;
  for (int i = 0; i < argc; ++i) {
    const char* v = std::getenv(argv[i]);
    out += std::string(argv[i]) + "=" + (v ? v : "(unset)") + "\n";
  }
  char cwd[4096];
  out += std::string("cwd=") + (::getcwd(cwd, sizeof cwd) ? cwd : "?");
  say(1, out);
  return 0;
}

PREFORK_HELPER(print_ids) {
  say(1, std::to_string(::getpid()) + " " + std::to_string(::getpgid(0)) + " " + std::to_string(::getsid(0)));
  return 0;
}

// daemonize, then: fd 3 (kept by the daemon until it exits) gets the daemon's
// PID, session and the targets of its fds 0-2; then act as argv[0] says.
PREFORK_HELPER(daemon) {
  std::string mode = argv[0];
  prefork::daemon_launch launch = prefork::daemonize();
  std::string report = std::to_string(::getpid()) + " " + std::to_string(::getsid(0));
  for (int n = 0; n <= 2; ++n) report += " " + prefork::test::fd_target(n);
  char cwd[256];
  report += std::string(" ") + (::getcwd(cwd, sizeof cwd) ? cwd : "?");
  say(3, report);
  if (mode == "ready") launch.ready();
  if (mode == "failed") launch.failed("config broken: no listeners");
  if (mode == "die_forked") {
    // A grandchild keeps the launch socket open: the launcher must notice
    // the daemon's death through its pidfd, not end of file. It lives until
    // the test closes fd 4's other end.
    if (::fork() == 0) {
      char c;
      while (::read(4, &c, 1) > 0) {
      }
      ::_exit(0);
    }
  }
  ::_exit(mode == "ready" || mode == "failed" ? 0 : 3);
}

// ---- fork, wait, kill ----

TEST_CASE("fork: exit codes come back through wait", "[fork]") {
  prefork::test::leak_check leaks;
  for (int code : {0, 3, 255}) {
    auto c = prefork::fork();
    if (!c) ::_exit(code);
    CHECK(c->pid() > 0);
    CHECK(c->pidfd() >= 0);
    prefork::exit_status s = c->wait();
    CHECK(s.exited());
    CHECK(s.code() == code);
    CHECK(s.success() == (code == 0));
    CHECK(s.describe() == "exited " + std::to_string(code));
    CHECK(c->status() == s);
    CHECK(c->pidfd() == -1);  // released once reaped
  }
  REQUIRE(leaks.problems() == "");
}

TEST_CASE("fork: kill delivers signals; a signal death is reported as such", "[fork]") {
  prefork::test::leak_check leaks;
  {
    auto hold = prefork::pipe(), ready = prefork::pipe();
    auto c = prefork::fork();
    if (!c) {
      ::signal(SIGTERM, SIG_DFL);  // Catch2 handles it in the test process
      ready.write.reset();
      char ch;
      (void)!::read(hold.read.get(), &ch, 1);  // blocks: nobody writes
      ::_exit(0);
    }
    ready.write.reset();
    CHECK(read_to_eof(ready.read.get()) == "");  // the child's SIGTERM is SIG_DFL now
    c->kill();                                   // SIGTERM by default
    prefork::exit_status s = c->wait();
    CHECK(s.signaled());
    CHECK(s.signal() == SIGTERM);
    CHECK(s.describe() == "killed by SIGTERM");
    CHECK_THROWS_WITH(c->kill(), Catch::Contains("already reaped"));
  }
  REQUIRE(leaks.problems() == "");
}

TEST_CASE("fork: SIGKILL and SIGABRT deaths, without a core file", "[fork]") {
  prefork::test::leak_check leaks;
  auto c = prefork::fork();
  if (!c) {
    ::kill(::getpid(), SIGKILL);
    ::_exit(0);
  }
  CHECK(c->wait().describe() == "killed by SIGKILL");
  auto d = prefork::fork();
  if (!d) {
    rlimit none{0, 0};
    ::setrlimit(RLIMIT_CORE, &none);
    ::signal(SIGABRT, SIG_DFL);
    ::abort();
  }
  auto s = d->wait();
  CHECK(s.signal() == SIGABRT);
  CHECK_FALSE(s.core_dumped());
  REQUIRE(leaks.problems() == "");
}

TEST_CASE("fork: wait_for times out while the child runs, without spinning, then reaps it", "[fork]") {
  prefork::test::leak_check leaks;
  auto [c, release] = prefork::test::fork_held(7);
  auto start = std::chrono::steady_clock::now();
  double cpu_before = cpu_seconds();
  CHECK_FALSE(c.wait_for(300ms));
  double cpu = cpu_seconds() - cpu_before;
  auto waited = std::chrono::steady_clock::now() - start;
  INFO("waited " << std::chrono::duration_cast<std::chrono::microseconds>(waited).count() << " us");
  CHECK(waited >= 300ms);
  CHECK(waited < 5s);
  CHECK(cpu < 0.05);  // slept in poll, did not poll in a loop
  CHECK_FALSE(c.wait_for(0ms));
  release.reset();  // the child sees end of file and exits
  auto s = c.wait_for(20s);
  REQUIRE(s);
  CHECK(s->code() == 7);
  CHECK_THROWS_AS(c.wait_for(1ms), std::logic_error);
  CHECK_THROWS_WITH(c.wait_for(1ms), Catch::Contains(std::to_string(c.pid())));
  REQUIRE(leaks.problems() == "");
}

TEST_CASE("fork: try_wait, and waiting twice is a logic error naming the PID", "[fork]") {
  prefork::test::leak_check leaks;
  auto [c, release] = prefork::test::fork_held(0);
  CHECK_FALSE(c.try_wait());
  release.reset();
  pollfd p{c.pidfd(), POLLIN, 0};
  REQUIRE(::poll(&p, 1, 20000) == 1);  // the pidfd turns readable on exit
  CHECK_NOTHROW(c.kill(SIGTERM));      // ended but not reaped: nothing to signal, no error
  std::error_code ec;
  c.kill(SIGTERM, ec);
  CHECK_FALSE(ec);
  auto s = c.try_wait();
  REQUIRE(s);
  CHECK(s->success());
  std::string pid = std::to_string(c.pid());
  CHECK_THROWS_WITH(c.wait(), Catch::Contains("child " + pid + " was already reaped"));
  CHECK_THROWS_AS(c.try_wait(), std::logic_error);
  REQUIRE(leaks.problems() == "");
}

TEST_CASE("child: the destructor kills and reaps a child still running", "[fork]") {
  prefork::test::leak_check leaks;
  {
    auto hold = prefork::pipe();
    pid_t pid;
    {
      auto c = prefork::fork();
      if (!c) {
        char ch;
        (void)!::read(hold.read.get(), &ch, 1);
        ::_exit(0);
      }
      pid = c->pid();
    }
    siginfo_t info{};
    CHECK(::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG) == -1);
    CHECK(errno == ECHILD);  // already reaped
  }
  REQUIRE(leaks.problems() == "");
}

TEST_CASE("child: move assignment kills and reaps the child it replaces", "[fork]") {
  prefork::test::leak_check leaks;
  {
    auto hold = prefork::pipe();
    auto first = prefork::fork();
    if (!first) {
      char ch;
      (void)!::read(hold.read.get(), &ch, 1);
      ::_exit(0);
    }
    auto second = prefork::fork();
    if (!second) ::_exit(4);
    pid_t first_pid = first->pid();
    *first = std::move(*second);
    CHECK(second->pid() == 0);
    CHECK(first->pid() != first_pid);
    CHECK(::kill(first_pid, 0) == -1);  // gone, not even a zombie
    CHECK(first->wait().code() == 4);
  }
  REQUIRE(leaks.problems() == "");
}

TEST_CASE("child: detach hands the PID over; the object no longer kills it", "[fork]") {
  prefork::test::leak_check leaks;
  pid_t pid;
  prefork::fd release;
  {
    prefork::test::held_child c = prefork::test::fork_held(5);
    release = std::move(c.release);
    pid = c.process.detach();
    CHECK(c.process.pid() == 0);
  }
  CHECK(::kill(pid, 0) == 0);  // still alive after the object died
  release.reset();
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  CHECK(prefork::exit_status(status).code() == 5);
  REQUIRE(leaks.problems() == "");
}

TEST_CASE("child: adopt wraps a child forked elsewhere; mark_reaped records an outside reap", "[fork]") {
  prefork::test::leak_check leaks;
  pid_t raw = ::fork();
  if (raw == 0) ::_exit(9);
  prefork::child adopted = prefork::child::adopt(raw);  // may already be a zombie
  CHECK(adopted.pid() == raw);
  CHECK(adopted.wait().code() == 9);

  auto c = prefork::fork();
  if (!c) ::_exit(2);
  int status = 0;
  REQUIRE(::waitpid(-1, &status, 0) == c->pid());  // as the pool's master reaps
  c->mark_reaped(prefork::exit_status(status));
  CHECK(c->status()->code() == 2);
  CHECK_THROWS_AS(c->wait(), std::logic_error);
  REQUIRE(leaks.problems() == "");
}

// ---- spawn ----

TEST_CASE("spawn: a mapped pipe carries what the parent writes; PATH is searched", "[spawn]") {
  prefork::test::leak_check leaks;
  {
    auto in = prefork::pipe();
    prefork::spawn_options o;
    o.fds = {{in.read.get(), 0}};
    auto out = prefork::pipe();
    o.fds.emplace_back(out.write.get(), 1);
    auto c = prefork::spawn(prefork::test::helper_argv("echo_stdin"), o);
    CHECK(c.pidfd() >= 0);  // from clone(CLONE_PIDFD)
    in.read.reset();
    out.write.reset();
    say(in.write.get(), "through the pipe");
    in.write.reset();
    CHECK(read_to_eof(out.read.get()) == "through the pipe");
    CHECK(c.wait().success());
  }
  auto [text, status] = capture({"echo", "found", "in", "PATH"});
  CHECK(text == "found in PATH\n");
  CHECK(status.success());
  REQUIRE(leaks.problems() == "");
}

TEST_CASE("spawn: no other descriptor reaches the child, CLOEXEC or not", "[spawn]") {
  prefork::test::leak_check leaks;
  {
    auto extra = prefork::pipe();
    int careless = ::dup(extra.read.get());  // not CLOEXEC, as a careless library would leave it
    REQUIRE(careless >= 0);
    prefork::fd careless_owned(careless);
    prefork::spawn_options only_mapped;
    only_mapped.inherit_stdio = false;
    auto [text, status] = capture(prefork::test::helper_argv("print_fds"), only_mapped);
    CHECK(text == "1");
    CHECK(status.success());
  }
  REQUIRE(leaks.problems() == "");
}

TEST_CASE("spawn: a fd kept at its own number is inherited (CLOEXEC cleared)", "[spawn]") {
  prefork::test::leak_check leaks;
  {
    auto side = prefork::pipe();
    int n = side.write.get();
    REQUIRE(side.write.cloexec());
    prefork::spawn_options o;
    o.fds = {{n, n}};
    auto [text, status] = capture(prefork::test::helper_argv("write_to", {std::to_string(n), "kept"}), o);
    CHECK(status.success());
    side.write.reset();
    CHECK(read_to_eof(side.read.get()) == "kept");
    CHECK(side.read.cloexec());  // the parent's flags are untouched
  }
  REQUIRE(leaks.problems() == "");
}

TEST_CASE("spawn: mappings that swap 1 and 2 both arrive", "[spawn]") {
  prefork::test::leak_check leaks;
  auto a = prefork::pipe(), b = prefork::pipe();
  // The swap needs the parent's own 1 and 2 to be the pipes, so it runs in
  // a forked child whose stdout and stderr can be replaced.
  auto middle = prefork::fork();
  if (!middle) {
    ::dup2(a.write.get(), 1);
    ::dup2(b.write.get(), 2);
    try {
      prefork::spawn_options o;
      o.fds = {{1, 2}, {2, 1}};
      auto c = prefork::spawn(prefork::test::helper_argv("write_to", {"1", "to one", "2", "to two"}), o);
      ::_exit(c.wait().code());
    } catch (...) {
      ::_exit(99);
    }
  }
  a.write.reset();
  b.write.reset();
  CHECK(read_to_eof(a.read.get()) == "to two");  // the parent's 1 became the child's 2
  CHECK(read_to_eof(b.read.get()) == "to one");
  CHECK(middle->wait().code() == 0);
  a.read.reset();
  b.read.reset();
  REQUIRE(leaks.problems() == "");
}

TEST_CASE("spawn: works, and reports failures, with fd 0 closed in the parent", "[spawn]") {
  prefork::test::leak_check leaks;
  int saved = ::fcntl(0, F_DUPFD_CLOEXEC, 10);
  REQUIRE(saved >= 0);
  ::close(0);
  std::string text;
  int missing_error = 0;
  {
    try {
      // The capture pipe takes fd 0; close-on-exec, it is not the child's stdin.
      auto result = capture(prefork::test::helper_argv("print_fds"));
      text = result.first;
      prefork::child never = prefork::spawn({"/nonexistent/prefork-missing"});
    } catch (const std::system_error& e) {
      missing_error = e.code().value();
    }
  }
  ::dup2(saved, 0);
  ::close(saved);
  const int err_flags = ::fcntl(2, F_GETFD);
  CHECK(text == (err_flags != -1 && !(err_flags & FD_CLOEXEC) ? "1 2" : "1"));  // 2 inherited, if open
  CHECK(missing_error == ENOENT);
  REQUIRE(leaks.problems() == "");
}

TEST_CASE("spawn: exec failures are thrown in the parent with the child's errno", "[spawn]") {
  prefork::test::leak_check leaks;
  auto expect_error = [](const std::vector<std::string>& argv, const prefork::spawn_options& o, int err,
                         const std::string& text) {
    try {
      prefork::child never = prefork::spawn(argv, o);
      FAIL("spawn " << argv[0] << " did not throw");
    } catch (const std::system_error& e) {
      CHECK(e.code().value() == err);
      CHECK_THAT(e.what(), Catch::Contains(text));
    }
  };
  expect_error({"/nonexistent/prefork-missing"}, {}, ENOENT, "spawn /nonexistent/prefork-missing");
  expect_error({"prefork-no-such-program-anywhere"}, {}, ENOENT, "prefork-no-such-program-anywhere");

  char path[] = "/tmp/prefork-noexec-XXXXXX";
  int tmp = ::mkstemp(path);
  REQUIRE(tmp >= 0);
  say(tmp, "#!/bin/sh\nexit 0\n");
  ::close(tmp);
  ::chmod(path, 0644);
  expect_error({path}, {}, EACCES, path);  // even root cannot exec without an x bit
  ::unlink(path);

  prefork::spawn_options beyond_limit;  // a target number the child cannot have
  rlimit lim{};
  ::getrlimit(RLIMIT_NOFILE, &lim);
  beyond_limit.fds = {{2, static_cast<int>(std::min<rlim_t>(lim.rlim_cur, 1 << 30))}};
  expect_error({"/bin/true"}, beyond_limit, EINVAL, "spawn /bin/true: fd 2");

  prefork::spawn_options bad_cwd;
  bad_cwd.cwd = "/nonexistent/prefork-dir";
  expect_error({"/bin/true"}, bad_cwd, ENOENT, "chdir /nonexistent/prefork-dir");
  REQUIRE(leaks.problems() == "");
}

TEST_CASE("spawn: the /proc/self/fd fallback (kernels before close_range) closes all but the kept",
          "[spawn]") {
  prefork::test::leak_check leaks;
  {
    auto out = prefork::pipe(), spare = prefork::pipe();
    int careless = ::dup(spare.read.get());  // not CLOEXEC
    REQUIRE(careless >= 0);
    prefork::fd careless_owned(careless);
    const int kept = out.write.get(), spared = spare.write.get();
    auto c = prefork::fork();
    if (!c) {
      int keep[] = {std::min(kept, spared), std::max(kept, spared)};
      int r = prefork::detail::close_listed(0, ~0U, keep, 2);
      std::string left = r == 0 ? "" : "failed ";
      for (int fd : prefork::test::open_fds()) left += std::to_string(fd) + " ";
      say(out.write.get(), left);
      ::_exit(0);
    }
    out.write.reset();
    std::string expected =
        std::to_string(std::min(kept, spared)) + " " + std::to_string(std::max(kept, spared)) + " ";
    CHECK(read_to_eof(out.read.get()) == expected);
    CHECK(c->wait().success());
  }
  REQUIRE(leaks.problems() == "");
}

TEST_CASE("spawn: the child starts with default dispositions and an empty mask", "[spawn]") {
  prefork::test::leak_check leaks;
  auto old_pipe = ::signal(SIGPIPE, SIG_IGN);
  auto old_hup = ::signal(SIGHUP, SIG_IGN);
  sigset_t block, saved;
  sigemptyset(&block);
  sigaddset(&block, SIGTERM);
  sigaddset(&block, SIGUSR2);
  ::pthread_sigmask(SIG_BLOCK, &block, &saved);
  std::string text;
  {
    auto result = capture(prefork::test::helper_argv("print_signal_state"));
    text = result.first;
  }
  ::pthread_sigmask(SIG_SETMASK, &saved, nullptr);
  ::signal(SIGPIPE, old_pipe);
  ::signal(SIGHUP, old_hup);
  CHECK(text == "\t0000000000000000\t0000000000000000");  // SigBlk, SigIgn
  REQUIRE(leaks.problems() == "");
}

namespace {
volatile std::sig_atomic_t usr1_seen = 0;
void on_usr1(int) { usr1_seen = 1; }
}  // namespace

// The child shares the parent's memory: nothing it does to its own signal
// state may reach the parent's (a sanitizer's bookkeeping in clone or
// sigaction once did, and the parent's handlers went silent).
TEST_CASE("spawn: the parent keeps its handlers and its mask, after a success and a failure", "[spawn]") {
  prefork::test::leak_check leaks;
  struct sigaction act {};
  struct sigaction old_usr1 {};
  act.sa_handler = on_usr1;
  REQUIRE(::sigaction(SIGUSR1, &act, &old_usr1) == 0);
  sigset_t block, saved;
  sigemptyset(&block);
  sigaddset(&block, SIGUSR2);
  ::pthread_sigmask(SIG_BLOCK, &block, &saved);
  {
    auto result = capture(prefork::test::helper_argv("print_signal_state"));
    CHECK(result.second.success());
    CHECK(result.first == "\t0000000000000000\t0000000000000000");  // the child's SigBlk, SigIgn
  }
  CHECK_THROWS_AS(prefork::spawn({"/nonexistent/program"}), std::system_error);
  sigset_t now;
  ::pthread_sigmask(SIG_SETMASK, nullptr, &now);
  CHECK(sigismember(&now, SIGUSR2) == 1);
  struct sigaction current {};
  REQUIRE(::sigaction(SIGUSR1, nullptr, &current) == 0);
  CHECK(current.sa_handler == on_usr1);
  usr1_seen = 0;
  ::raise(SIGUSR1);  // delivered before raise returns
  CHECK(usr1_seen == 1);
  ::pthread_sigmask(SIG_SETMASK, &saved, nullptr);
  ::sigaction(SIGUSR1, &old_usr1, nullptr);
  REQUIRE(leaks.problems() == "");
}

TEST_CASE("spawn: a huge RLIMIT_NOFILE does not slow it, and high fds are closed", "[spawn]") {
  prefork::test::leak_check leaks;
  rlimit saved{};
  REQUIRE(::getrlimit(RLIMIT_NOFILE, &saved) == 0);
  rlimit huge = saved;
  huge.rlim_cur = saved.rlim_max;
  if (::geteuid() == 0) {  // root may go to the kernel's ceiling
    std::ifstream nr("/proc/sys/fs/nr_open");
    rlim_t ceiling = 0;
    if (nr >> ceiling) huge.rlim_cur = huge.rlim_max = ceiling;
    if (::setrlimit(RLIMIT_NOFILE, &huge) == -1)
      huge.rlim_cur = huge.rlim_max = saved.rlim_max;  // no CAP_SYS_RESOURCE
  }
  REQUIRE(::setrlimit(RLIMIT_NOFILE, &huge) == 0);
  auto side = prefork::pipe();
  int high = static_cast<int>(huge.rlim_cur - 1);
  REQUIRE(::dup2(side.read.get(), high) == high);  // not CLOEXEC
  int high_cloexec = ::fcntl(side.read.get(), F_DUPFD_CLOEXEC, high / 2);
  REQUIRE(high_cloexec >= 0);
  auto start = std::chrono::steady_clock::now();
  std::string text;
  {
    prefork::spawn_options only_mapped;
    only_mapped.inherit_stdio = false;
    auto result = capture(prefork::test::helper_argv("print_fds"), only_mapped);
    text = result.first;
  }
  auto took = std::chrono::steady_clock::now() - start;
  ::close(high);
  ::close(high_cloexec);
  side = {};
  ::setrlimit(RLIMIT_NOFILE, &saved);
  INFO("limit " << huge.rlim_cur << ", spawn + run + wait took "
                << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms");
  CHECK(text == "1");
  CHECK(took < 2s);  // a close() loop to the limit would take far longer
  REQUIRE(leaks.problems() == "");
}

TEST_CASE("spawn: threads allocating in the parent neither deadlock nor crash it", "[spawn]") {
  prefork::test::leak_check leaks;
  std::atomic<bool> stop{false};
  std::atomic<long> churned{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      std::mt19937 rng(static_cast<unsigned>(t));
      std::vector<std::unique_ptr<char[]>> held(64);
      while (!stop.load(std::memory_order_relaxed)) {
        std::size_t size = 1u << (rng() % 16);
        auto block = std::make_unique<char[]>(size);
        block[size - 1] = 1;
        held[rng() % held.size()] = std::move(block);
        churned.fetch_add(1, std::memory_order_relaxed);
      }
    });
  int ok = 0;
  auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < 200; ++i) ok += prefork::spawn({"/bin/true"}).wait().success() ? 1 : 0;
  auto took = std::chrono::steady_clock::now() - start;
  stop = true;
  for (auto& t : threads) t.join();
  INFO("200 spawns took " << std::chrono::duration_cast<std::chrono::milliseconds>(took).count()
                          << " ms while " << churned.load() << " blocks were allocated");
  CHECK(ok == 200);
  CHECK(churned.load() > 0);
  REQUIRE(leaks.problems() == "");
}

TEST_CASE("spawn: environment override, inheritance, and working directory", "[spawn]") {
  prefork::test::leak_check leaks;
  ::setenv("PREFORK_INHERITED", "yes", 1);
  {
    auto [text, status] =
        capture(prefork::test::helper_argv("print_env", {"PREFORK_INHERITED", "PREFORK_SET"}));
    CHECK(text ==
          "PREFORK_INHERITED=yes\nPREFORK_SET=(unset)\ncwd=" + std::filesystem::current_path().string());
    CHECK(status.success());
  }
  {
    prefork::spawn_options o;
    o.env = std::vector<std::string>{"PREFORK_SET=42"};
    o.cwd = "/tmp";
    auto [text, status] =
        capture(prefork::test::helper_argv("print_env", {"PREFORK_INHERITED", "PREFORK_SET", "PATH"}), o);
    CHECK(text == "PREFORK_INHERITED=(unset)\nPREFORK_SET=42\nPATH=(unset)\ncwd=/tmp");
  }
  ::unsetenv("PREFORK_INHERITED");
  REQUIRE(leaks.problems() == "");
}

TEST_CASE("spawn: new process group and new session", "[spawn]") {
  prefork::test::leak_check leaks;
  auto ids = [](const std::string& text) {
    std::istringstream in(text);
    pid_t pid = 0, pgid = 0, sid = 0;
    in >> pid >> pgid >> sid;
    return std::array<pid_t, 3>{pid, pgid, sid};
  };
  prefork::spawn_options group;
  group.new_process_group = true;
  auto g = ids(capture(prefork::test::helper_argv("print_ids"), group).first);
  CHECK(g[1] == g[0]);
  CHECK(g[2] == ::getsid(0));

  prefork::spawn_options session;
  session.new_session = true;
  auto s = ids(capture(prefork::test::helper_argv("print_ids"), session).first);
  CHECK(s[1] == s[0]);
  CHECK(s[2] == s[0]);

  auto plain = ids(capture(prefork::test::helper_argv("print_ids")).first);
  CHECK(plain[1] == ::getpgid(0));
  REQUIRE(leaks.problems() == "");
}

// ---- daemonize ----

namespace {

struct daemon_run {
  prefork::exit_status launcher;
  std::string launcher_stderr;
  std::string daemon_report;  // "pid sid fd0 fd1 fd2 cwd"
};

// Runs the `daemon` helper in `mode` with stdout going to `stdout_fd` (-1:
// a pipe), waits for the launcher, then for the daemon to be gone (its end of
// the report pipe closes when it exits).
daemon_run run_daemon(const std::string& mode, int stdout_fd = -1, prefork::pipe_ends* release = nullptr) {
  auto report = prefork::pipe(), err = prefork::pipe(), out = prefork::pipe();
  prefork::spawn_options o;
  o.fds = {{out.read.get(), 0},
           {stdout_fd >= 0 ? stdout_fd : out.write.get(), 1},
           {err.write.get(), 2},
           {report.write.get(), 3}};
  if (release) o.fds.emplace_back(release->read.get(), 4);
  auto launcher = prefork::spawn(prefork::test::helper_argv("daemon", {mode}), o);
  report.write.reset();
  err.write.reset();
  out = {};
  if (release) release->read.reset();
  std::string launcher_stderr = read_to_eof(err.read.get());
  auto status = launcher.wait_for(20s);
  if (!status) throw std::runtime_error("launcher did not exit");
  if (release) release->write.reset();  // lets a grandchild that holds the socket go
  return {*status, launcher_stderr, read_to_eof(report.read.get())};
}

std::vector<std::string> words(const std::string& text) {
  std::istringstream in(text);
  std::vector<std::string> out;
  for (std::string w; in >> w;) out.push_back(w);
  return out;
}

}  // namespace

TEST_CASE("daemonize: ready() makes the launcher exit 0; the daemon is detached", "[daemon]") {
  prefork::test::leak_check leaks;
  auto r = run_daemon("ready");
  CHECK(r.launcher.describe() == "exited 0");
  CHECK(r.launcher_stderr == "");
  auto w = words(r.daemon_report);
  REQUIRE(w.size() == 6);
  CHECK(std::stoi(w[1]) != ::getsid(0));      // a session of its own...
  CHECK(std::stoi(w[1]) != std::stoi(w[0]));  // ...whose leader it is not
  CHECK(w[2] == "/dev/null");
  CHECK(w[3] == "/dev/null");  // a pipe is not kept
  CHECK(w[4] == "/dev/null");
  CHECK(w[5] == "/");
  REQUIRE(leaks.problems() == "");
}

TEST_CASE("daemonize: stdout already redirected to a file is kept", "[daemon]") {
  prefork::test::leak_check leaks;
  char path[] = "/tmp/prefork-daemon-log-XXXXXX";
  int log = ::mkstemp(path);
  REQUIRE(log >= 0);
  auto r = run_daemon("ready", log);
  ::close(log);
  ::unlink(path);
  auto w = words(r.daemon_report);
  REQUIRE(w.size() == 6);
  CHECK(w[3] == std::string(path));
  CHECK(w[4] == "/dev/null");
  REQUIRE(leaks.problems() == "");
}

TEST_CASE("daemonize: failed(why) makes the launcher print why and exit 1", "[daemon]") {
  prefork::test::leak_check leaks;
  auto r = run_daemon("failed");
  CHECK(r.launcher.describe() == "exited 1");
  CHECK(r.launcher_stderr == "config broken: no listeners\n");
  REQUIRE(leaks.problems() == "");
}

TEST_CASE("daemonize: a daemon dying before ready() fails the launch", "[daemon]") {
  prefork::test::leak_check leaks;
  auto r = run_daemon("die");
  CHECK(r.launcher.describe() == "exited 1");
  CHECK_THAT(r.launcher_stderr, Catch::Contains("exited before it was ready"));
  CHECK_THAT(r.launcher_stderr, Catch::Contains(words(r.daemon_report).at(0)));  // names its PID
  REQUIRE(leaks.problems() == "");
}

TEST_CASE("daemonize: death is noticed even while a forked child holds the channel", "[daemon]") {
  prefork::test::leak_check leaks;
  auto release = prefork::pipe();
  auto r = run_daemon("die_forked", -1, &release);
  CHECK(r.launcher.describe() == "exited 1");
  CHECK_THAT(r.launcher_stderr, Catch::Contains("exited before it was ready"));
  REQUIRE(leaks.problems() == "");
}

// ---- become_user ----

TEST_CASE("become_user: root becomes nobody and cannot come back", "[user]") {
  if (::geteuid() != 0) {
    WARN("not root: become_user cannot be tested here");
    return;
  }
  prefork::test::leak_check leaks;
  {
    auto result = prefork::pipe();
    auto c = prefork::fork();
    if (!c) {
      std::string out;
      try {
        prefork::become_user("nobody", "nogroup");
        gid_t groups[64];
        int n = ::getgroups(64, groups);
        out = std::to_string(::getuid()) + " " + std::to_string(::geteuid()) + " " +
              std::to_string(::getgid()) + " " + std::to_string(::getegid()) + " [";
        for (int i = 0; i < n; ++i) out += (i ? " " : "") + std::to_string(groups[i]);
        out += std::string("] ") + (::setuid(0) == -1 ? "locked" : "ROOT");
      } catch (const std::exception& e) {
        out = std::string("error: ") + e.what();
      }
      say(result.write.get(), out);
      ::_exit(0);
    }
    result.write.reset();
    std::string text = read_to_eof(result.read.get());
    CHECK(c->wait().success());
    passwd* nobody = ::getpwnam("nobody");
    group* nogroup = ::getgrnam("nogroup");
    REQUIRE(nobody);
    REQUIRE(nogroup);
    std::string uid = std::to_string(nobody->pw_uid), gid = std::to_string(nogroup->gr_gid);
    // root's supplementary groups are gone; initgroups lists only the new GID.
    CHECK(text == uid + " " + uid + " " + gid + " " + gid + " [" + gid + "] locked");
  }
  REQUIRE(leaks.problems() == "");
}
