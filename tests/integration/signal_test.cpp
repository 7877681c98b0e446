// signal.hpp with real processes: signals sent by another process, children
// dying, forked children forgetting the parent's pipe, reset_signals seen
// from outside through /proc/PID/status.
#include "catch.hpp"

#include <prefork/pipe.hpp>
#include <prefork/signal.hpp>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "helpers.hpp"
#include "leak_check.hpp"
#include "proc.hpp"

namespace {

using namespace std::chrono_literals;

// The signals the helpers send, with real-time ones among them.
std::vector<int> burst_signals() {
  return {SIGHUP, SIGUSR1, SIGUSR2, SIGALRM, SIGTTIN, SIGTTOU, SIGWINCH, SIGRTMIN + 1, SIGRTMIN + 2};
}

// A hex mask line ("SigCgt:\t0000000000000400") of /proc/PID/status.
unsigned long long status_mask(pid_t pid, const std::string& key) {
  std::string line = prefork::test::status_line(pid, key + ":");
  return line.empty() ? ~0ULL : std::stoull(line.substr(key.size() + 1), nullptr, 16);
}

bool has_bit(unsigned long long mask, int sig) { return (mask >> (sig - 1)) & 1U; }

// The signals between 32 and SIGRTMIN that the C library keeps for itself
// (glibc: thread cancellation and set*id broadcast). sigaction refuses them,
// so reset_signals cannot touch them, and the C library installs its handlers
// when it first needs them (a ThreadSanitizer build has SIGSETXID's by then).
unsigned long long libc_reserved_signals() {
  unsigned long long mask = 0;
  for (int sig = 32; sig < SIGRTMIN; ++sig) mask |= 1ULL << (sig - 1);
  return mask;
}

bool wait_readable(int fd, std::chrono::milliseconds deadline = 20s) {
  pollfd p{fd, POLLIN, 0};
  int n;
  do n = ::poll(&p, 1, static_cast<int>(deadline.count()));
  while (n == -1 && errno == EINTR);
  return n == 1;
}

// Forks and execs argv with each {source, target} descriptor pair in place.
pid_t start(const std::vector<std::string>& argv, const std::vector<std::pair<int, int>>& fds) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = ::fork();
  REQUIRE(pid != -1);
  if (pid == 0) {
    // Out of the way first, so a source never sits on another pair's target.
    std::vector<int> moved;
    for (const auto& p : fds) moved.push_back(::fcntl(p.first, F_DUPFD_CLOEXEC, 100));
    for (std::size_t i = 0; i < fds.size(); ++i) ::dup2(moved[i], fds[i].second);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  return pid;
}

int wait_exit(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) == -1 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

bool read_exactly(int fd, void* buf, std::size_t n) {
  auto* p = static_cast<char*>(buf);
  while (n > 0) {
    if (!wait_readable(fd)) return false;
    auto r = prefork::read_some(fd, p, n);
    if (!r || r.bytes == 0) return false;
    p += r.bytes;
    n -= r.bytes;
  }
  return true;
}

// Spins until `sig` is no longer pending for `pid`: the kernel has dequeued it
// and set up the handler, which runs with every signal blocked.
bool wait_delivered(pid_t pid, int sig) {
  auto deadline = std::chrono::steady_clock::now() + 20s;
  while (has_bit(status_mask(pid, "ShdPnd"), sig) || has_bit(status_mask(pid, "SigPnd"), sig)) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    ::sched_yield();
  }
  return true;
}

}  // namespace

// argv: receiver pid, rounds. fd 3: acks from the receiver; fd 4: what was
// sent, one byte per signal, after each burst. Even rounds: ascending signal
// numbers sent back to back (the kernel may hold several pending at once and
// delivers the lowest first, which is then also the first sent). Odd rounds:
// a shuffled order, each signal sent once the previous one has been taken by
// the receiver's kernel: a design that sorted or merged would fail these.
PREFORK_HELPER(signal_bursts) {
  pid_t target = static_cast<pid_t>(std::atoi(argv[0]));
  int rounds = std::atoi(argv[1]);
  std::vector<int> sigs = burst_signals();
  for (int round = 0; round < rounds; ++round) {
    std::vector<int> order = sigs;
    if (round % 2) std::shuffle(order.begin(), order.end(), std::mt19937(static_cast<unsigned>(round)));
    for (int sig : order) {
      if (::kill(target, sig) == -1) return 2;
      if (round % 2 && !wait_delivered(target, sig)) return 3;
    }
    std::string sent(order.begin(), order.end());
    if (prefork::write_all(4, sent) != sent.size()) return 4;
    char ack;
    if (!read_exactly(3, &ack, 1)) return 5;
  }
  return 0;
}

// argv: receiver pid, count. Sends `count` signals, each once the previous
// was taken, then writes one byte to fd 4.
PREFORK_HELPER(signal_one_by_one) {
  pid_t target = static_cast<pid_t>(std::atoi(argv[0]));
  int count = std::atoi(argv[1]);
  for (int i = 0; i < count; ++i) {
    int sig = i % 2 ? SIGUSR1 : SIGUSR2;
    if (::kill(target, sig) == -1 || !wait_delivered(target, sig)) return 2;
  }
  return prefork::write_all(4, "x", 1) == 1 ? 0 : 3;
}

TEST_CASE("1000 signals sent in bursts by another process arrive, none lost, none reordered", "[signal]") {
  prefork::test::leak_check leaks;
  {
    std::vector<int> sigs = burst_signals();
    prefork::signal_pipe sp(sigs);
    auto acks = prefork::pipe();
    auto report = prefork::pipe();
    const int rounds = 112;  // 9 signals each: 1008
    pid_t helper = start(
        prefork::test::helper_argv("signal_bursts", {std::to_string(::getpid()), std::to_string(rounds)}),
        {{acks.read.get(), 3}, {report.write.get(), 4}});
    acks.read.reset();
    report.write.reset();
    std::string problems;
    int received = 0;
    for (int round = 0; round < rounds && problems.empty(); ++round) {
      std::string got;
      while (got.size() < sigs.size()) {
        if (auto sig = sp.next()) {
          got.push_back(static_cast<char>(*sig));
          ++received;
        } else if (!wait_readable(sp.fd())) {
          problems =
              "round " + std::to_string(round) + ": only " + std::to_string(got.size()) + " signals arrived";
          break;
        }
      }
      std::string sent(sigs.size(), '\0');
      if (problems.empty() && !read_exactly(report.read.get(), sent.data(), sent.size()))
        problems = "round " + std::to_string(round) + ": no report from the helper";
      if (problems.empty() && got != sent) {
        problems = "round " + std::to_string(round) + ": sent";
        for (char c : sent) problems += " " + std::to_string(c);
        problems += ", received";
        for (char c : got) problems += " " + std::to_string(c);
      }
      if (problems.empty()) prefork::write_all(acks.write.get(), "k", 1);
    }
    acks.write.reset();  // lets a helper blocked on an ack see EOF if we failed
    CHECK(problems == "");
    CHECK(received == rounds * static_cast<int>(sigs.size()));
    CHECK(wait_exit(helper) == 0);
    CHECK_FALSE(sp.next());
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("errno survives handlers that run while the program works, their writes failing", "[signal]") {
  prefork::test::leak_check leaks;
  {
    prefork::signal_pipe sp{SIGUSR1, SIGUSR2};
    // Fill the pipe first, so every handler run below meets EAGAIN.
    REQUIRE(::fcntl(sp.fd(), F_SETPIPE_SZ, 4096) != -1);
    int capacity = ::fcntl(sp.fd(), F_GETPIPE_SZ);
    for (int i = 0; i < capacity; ++i) ::raise(SIGUSR1);
    auto report = prefork::pipe();
    pid_t helper = start(prefork::test::helper_argv("signal_one_by_one", {std::to_string(::getpid()), "300"}),
                         {{report.write.get(), 4}});
    report.write.reset();
    long checks = 0, clobbered = 0;
    pollfd p{report.read.get(), POLLIN, 0};
    auto deadline = std::chrono::steady_clock::now() + 20s;
    // volatile: the compiler may not assume errno stays put in the loop.
    volatile int* err = &errno;
    while (::poll(&p, 1, 0) != 1 && std::chrono::steady_clock::now() < deadline) {
      *err = 4242;
      for (int i = 0; i < 10000; ++i, ++checks)
        if (*err != 4242) {
          ++clobbered;
          *err = 4242;
        }
    }
    CHECK(clobbered == 0);
    CHECK(checks > 0);
    CHECK(wait_exit(helper) == 0);
    // Exactly the records raised before: all 300 handler runs found the pipe full.
    std::size_t taken = 0;
    while (sp.next()) ++taken;
    CHECK(taken == static_cast<std::size_t>(capacity) / sizeof(prefork::signal_info));
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("SIGCHLD through the pipe wakes the parent to reap; stops do not wake it", "[signal][chld]") {
  prefork::test::leak_check leaks;
  {
    prefork::signal_pipe sp{SIGCHLD};
    // A child that stops itself: SA_NOCLDSTOP keeps that out of the pipe.
    pid_t stopper = ::fork();
    REQUIRE(stopper != -1);
    if (stopper == 0) {
      ::raise(SIGSTOP);
      ::_exit(0);
    }
    siginfo_t info{};
    REQUIRE(::waitid(P_PID, static_cast<id_t>(stopper), &info, WSTOPPED | WNOWAIT) == 0);
    CHECK_FALSE(sp.next());  // the handler would have run before waitid returned
    ::kill(stopper, SIGKILL);

    const int children = 5;
    for (int i = 0; i < children; ++i) {
      pid_t pid = ::fork();
      REQUIRE(pid != -1);
      if (pid == 0) ::_exit(7);
    }
    int reaped = 0, bytes = 0, wrong = 0;
    while (reaped < children + 1) {
      auto sig = sp.wait_next(20s);
      if (!sig) break;
      ++bytes;
      CHECK(*sig == SIGCHLD);
      // One byte may stand for several children: reap until none is left.
      for (;;) {
        int status = 0;
        pid_t pid = ::waitpid(-1, &status, WNOHANG);
        if (pid <= 0) break;
        ++reaped;
        if (pid != stopper && !(WIFEXITED(status) && WEXITSTATUS(status) == 7)) ++wrong;
      }
    }
    CHECK(reaped == children + 1);
    CHECK(wrong == 0);
    CHECK(bytes >= 1);
    CHECK(bytes <= children + 1);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("forget_in_child: the child drops the parent's pipe and handlers, the parent keeps both",
          "[signal][fork]") {
  prefork::test::leak_check leaks;
  {
    prefork::signal_pipe sp{SIGUSR1, SIGUSR2};
    int parent_read = sp.fd();
    auto result = prefork::pipe();
    pid_t pid;
    {
      prefork::blocked_signals block;  // nothing may reach the parent's pipe from the child
      pid = ::fork();
      REQUIRE(pid != -1);
      if (pid == 0) {
        sp.forget_in_child();
        block.restore();
        char code = 'o';
        unsigned long long caught = status_mask(::getpid(), "SigCgt");
        if (has_bit(caught, SIGUSR1) || has_bit(caught, SIGUSR2))
          code = 'h';  // handlers still there
        else if (::fcntl(parent_read, F_GETFD) != -1)
          code = 'f';  // the copy still open
        else {
          try {
            prefork::signal_pipe own{SIGUSR1};
            ::raise(SIGUSR1);
            if (own.next() != SIGUSR1) code = 'n';
          } catch (...) {
            code = 'x';
          }
        }
        if (code == 'o') ::kill(::getppid(), SIGUSR2);  // the parent's handler, through its pipe
        [[maybe_unused]] auto w = ::write(result.write.get(), &code, 1);
        ::_exit(0);
      }
    }
    result.write.reset();
    char code = 0;
    REQUIRE(read_exactly(result.read.get(), &code, 1));
    CHECK(code == 'o');
    CHECK(sp.wait_next(20s) == SIGUSR2);
    CHECK_FALSE(sp.next());  // the child's own USR1 stayed in the child
    CHECK(wait_exit(pid) == 0);
    unsigned long long caught = status_mask(::getpid(), "SigCgt");
    CHECK(has_bit(caught, SIGUSR1));
    CHECK(has_bit(caught, SIGUSR2));
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("reset_signals in a child: default dispositions and an empty mask, seen in /proc",
          "[signal][fork]") {
  prefork::test::leak_check leaks;
  {
    struct sigaction ignore {};
    struct sigaction old_pipe {};
    struct sigaction old_winch {};
    ignore.sa_handler = SIG_IGN;
    REQUIRE(::sigaction(SIGPIPE, &ignore, &old_pipe) == 0);
    REQUIRE(::sigaction(SIGWINCH, &ignore, &old_winch) == 0);
    prefork::signal_pipe sp{SIGHUP, SIGRTMIN + 4};
    prefork::blocked_signals blocked{SIGTERM, SIGUSR2, SIGRTMAX};
    pid_t self = ::getpid();
    // The state a child inherits, so the check below can fail.
    CHECK(has_bit(status_mask(self, "SigIgn"), SIGPIPE));
    CHECK(has_bit(status_mask(self, "SigCgt"), SIGRTMIN + 4));
    CHECK(has_bit(status_mask(self, "SigBlk"), SIGRTMAX));

    auto ready = prefork::pipe();
    auto go = prefork::pipe();
    pid_t pid = ::fork();
    REQUIRE(pid != -1);
    if (pid == 0) {
      prefork::reset_signals();
      go.write.reset();
      ready.write.reset();  // EOF tells the parent the reset is done
      char c;
      [[maybe_unused]] auto r = ::read(go.read.get(), &c, 1);  // until the parent has looked
      ::_exit(0);
    }
    ready.write.reset();
    go.read.reset();
    char c;
    CHECK(::read(ready.read.get(), &c, 1) == 0);
    CHECK(status_mask(pid, "SigBlk") == 0);
    CHECK(status_mask(pid, "SigIgn") == 0);
    CHECK((status_mask(pid, "SigCgt") & ~libc_reserved_signals()) == 0);
    go.write.reset();
    CHECK(wait_exit(pid) == 0);
    blocked.restore();
    ::sigaction(SIGPIPE, &old_pipe, nullptr);
    ::sigaction(SIGWINCH, &old_winch, nullptr);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("next_info names the process that sent a signal, and the child behind SIGCHLD", "[signal][fork]") {
  prefork::test::leak_check leaks;
  {
    prefork::signal_pipe sp{SIGQUIT, SIGCHLD};
    pid_t self = ::getpid();
    pid_t pid = ::fork();
    REQUIRE(pid != -1);
    if (pid == 0) {
      ::kill(self, SIGQUIT);
      ::_exit(0);
    }
    std::optional<prefork::signal_info> quit = sp.wait_next_info(20s);
    REQUIRE(quit);
    CHECK(quit->signo == SIGQUIT);
    CHECK(quit->pid == pid);
    CHECK(quit->code == SI_USER);
    CHECK(quit->sent_by_process());
    std::optional<prefork::signal_info> chld = sp.wait_next_info(20s);
    REQUIRE(chld);
    CHECK(chld->signo == SIGCHLD);
    CHECK(chld->pid == pid);
    CHECK(chld->code == CLD_EXITED);
    CHECK_FALSE(chld->sent_by_process());
    CHECK(wait_exit(pid) == 0);
  }
  CHECK(leaks.problems() == "");
}
