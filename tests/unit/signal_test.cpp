// signal.hpp in one process: raise(3) delivers synchronously to the calling
// thread, so order, errno and dispositions can be checked exactly.
#include <doctest/doctest.h>

#include <prefork/signal.hpp>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>

#include <chrono>
#include <vector>

#include "leak_check.hpp"

namespace {

void custom_handler(int) {}

struct sigaction disposition(int sig) {
  struct sigaction now {};
  REQUIRE(::sigaction(sig, nullptr, &now) == 0);
  return now;
}

using handler_type = void (*)(int);
bool handler_is(int sig, handler_type expected) { return disposition(sig).sa_handler == expected; }

// The signal_pipe's handler takes siginfo (SA_SIGINFO), so it is in sa_sigaction.
bool is_pipe_handler(int sig) {
  struct sigaction now = disposition(sig);
  return (now.sa_flags & SA_SIGINFO) != 0 && now.sa_sigaction == prefork::detail::signal_pipe_handler;
}

bool readable(int fd) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, 0) == 1;
}

std::vector<int> drain(prefork::signal_pipe& sp) {
  std::vector<int> out;
  while (auto sig = sp.next()) out.push_back(*sig);
  return out;
}

}  // namespace

TEST_CASE("signal_pipe hands signals over in the order they arrived, then nothing") {
  prefork::test::leak_check leaks;
  {
    prefork::signal_pipe sp{SIGUSR1, SIGUSR2, SIGHUP, SIGWINCH, SIGRTMIN + 3};
    CHECK_FALSE(readable(sp.fd()));
    CHECK_FALSE(sp.next());
    // Descending and repeated: a pending-bitmask design would sort and merge.
    std::vector<int> sent{SIGWINCH, SIGHUP, SIGRTMIN + 3, SIGUSR2, SIGUSR1, SIGHUP, SIGHUP};
    for (int sig : sent) ::raise(sig);
    CHECK(readable(sp.fd()));
    CHECK(drain(sp) == sent);
    CHECK_FALSE(readable(sp.fd()));
    CHECK(sp.signals() == std::vector<int>{SIGUSR1, SIGUSR2, SIGHUP, SIGWINCH, SIGRTMIN + 3});
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("the pipe is CLOEXEC and non-blocking; the handler masks every signal and restarts calls") {
  prefork::signal_pipe sp{SIGUSR1, SIGCHLD};
  int flags = ::fcntl(sp.fd(), F_GETFD);
  CHECK((flags & FD_CLOEXEC) != 0);
  CHECK((::fcntl(sp.fd(), F_GETFL) & O_NONBLOCK) != 0);
  struct sigaction usr1 = disposition(SIGUSR1);
  CHECK((usr1.sa_flags & SA_RESTART) != 0);
  CHECK(sigismember(&usr1.sa_mask, SIGTERM) == 1);
  CHECK(sigismember(&usr1.sa_mask, SIGRTMAX) == 1);
  CHECK((disposition(SIGCHLD).sa_flags & SA_NOCLDSTOP) != 0);
  CHECK((usr1.sa_flags & SA_NOCLDSTOP) == 0);
}

TEST_CASE("the handler keeps errno, even when the pipe is full and its write fails") {
  prefork::signal_pipe sp{SIGUSR1, SIGUSR2};
  REQUIRE(::fcntl(sp.fd(), F_SETPIPE_SZ, 4096) != -1);
  int capacity = ::fcntl(sp.fd(), F_GETPIPE_SZ);
  REQUIRE(capacity > 0);
  int clobbered = 0;
  for (int i = 0; i < capacity + 500; ++i) {
    int mark = 1000 + i % 100;  // not an errno value write(2) could produce
    errno = mark;
    ::raise(i % 2 ? SIGUSR1 : SIGUSR2);
    if (errno != mark) ++clobbered;
  }
  CHECK(clobbered == 0);
  // The pipe did fill: the writes after the last whole record failed with
  // EAGAIN, and no record was torn.
  CHECK(drain(sp).size() == static_cast<std::size_t>(capacity) / sizeof(prefork::signal_info));
}

TEST_CASE("next_info says who sent each signal, and how; next() still gives the number") {
  prefork::signal_pipe sp{SIGUSR1, SIGUSR2, SIGHUP};
  ::kill(::getpid(), SIGUSR1);
  ::raise(SIGUSR2);  // tgkill: SI_TKILL
  sigval value{};
  ::sigqueue(::getpid(), SIGHUP, value);
  ::kill(::getpid(), SIGUSR2);
  std::optional<prefork::signal_info> a = sp.next_info();
  REQUIRE(a);
  CHECK(a->signo == SIGUSR1);
  CHECK(a->pid == ::getpid());
  CHECK(a->uid == ::getuid());
  CHECK(a->code == SI_USER);
  CHECK(a->sent_by_process());
  std::optional<prefork::signal_info> b = sp.next_info();
  REQUIRE(b);
  CHECK(b->signo == SIGUSR2);
  CHECK(b->code == SI_TKILL);
  CHECK(b->pid == ::getpid());
  std::optional<prefork::signal_info> c = sp.next_info();
  REQUIRE(c);
  CHECK(c->signo == SIGHUP);
  CHECK(c->code == SI_QUEUE);
  CHECK(sp.next() == SIGUSR2);  // a mixed reader takes whole records too
  CHECK_FALSE(sp.next_info());
  CHECK_FALSE(readable(sp.fd()));
}

TEST_CASE("destroying the signal_pipe restores the dispositions found at construction") {
  prefork::test::leak_check leaks;
  struct sigaction custom {};
  custom.sa_handler = custom_handler;
  sigemptyset(&custom.sa_mask);
  custom.sa_flags = SA_NODEFER;
  struct sigaction ignore {};
  ignore.sa_handler = SIG_IGN;
  struct sigaction old_usr1 {};
  struct sigaction old_usr2 {};
  REQUIRE(::sigaction(SIGUSR1, &custom, &old_usr1) == 0);
  REQUIRE(::sigaction(SIGUSR2, &ignore, &old_usr2) == 0);
  {
    prefork::signal_pipe sp{SIGUSR1, SIGUSR2, SIGWINCH};
    CHECK(is_pipe_handler(SIGUSR1));
    CHECK(is_pipe_handler(SIGUSR2));
    CHECK(is_pipe_handler(SIGWINCH));
  }
  CHECK(handler_is(SIGUSR1, custom_handler));
  CHECK((disposition(SIGUSR1).sa_flags & SA_NODEFER) != 0);
  CHECK(handler_is(SIGUSR2, SIG_IGN));
  CHECK(handler_is(SIGWINCH, SIG_DFL));
  ::sigaction(SIGUSR1, &old_usr1, nullptr);
  ::sigaction(SIGUSR2, &old_usr2, nullptr);
  CHECK(leaks.problems() == "");
}

TEST_CASE("only one signal_pipe is live at a time; moving passes the slot on") {
  prefork::test::leak_check leaks;
  {
    prefork::signal_pipe first{SIGUSR1};
    CHECK_THROWS_WITH_AS(prefork::signal_pipe({SIGUSR2}), doctest::Contains("already live"),
                         std::logic_error);
    CHECK(handler_is(SIGUSR2, SIG_DFL));  // the refused one touched nothing

    prefork::signal_pipe moved(std::move(first));
    CHECK(first.fd() == -1);
    ::raise(SIGUSR1);
    CHECK(moved.next() == SIGUSR1);
    CHECK_THROWS_AS(prefork::signal_pipe({SIGUSR2}), std::logic_error);

    { prefork::signal_pipe gone = std::move(first); }  // an empty one: destroying it restores nothing
    CHECK(is_pipe_handler(SIGUSR1));
    prefork::signal_pipe assigned = std::move(first);  // empty too
    assigned = std::move(moved);
    CHECK(moved.fd() == -1);
    ::raise(SIGUSR1);
    CHECK(assigned.next() == SIGUSR1);
  }
  CHECK(handler_is(SIGUSR1, SIG_DFL));
  prefork::signal_pipe again{SIGUSR2};  // the slot is free once the owner is gone
  CHECK(again.fd() >= 0);
}

TEST_CASE("signals that cannot be caught are refused by name, and leave the slot free") {
  CHECK_THROWS_WITH_AS(prefork::signal_pipe({SIGUSR1, SIGKILL}),
                       doctest::Contains("SIGKILL cannot be caught"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(prefork::signal_pipe({SIGSTOP}), doctest::Contains("SIGSTOP"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(prefork::signal_pipe({0}), doctest::Contains("0 is not a signal number"),
                       std::invalid_argument);
  CHECK_THROWS_AS(prefork::signal_pipe({NSIG}), std::invalid_argument);
  CHECK_THROWS_AS(prefork::signal_pipe(std::vector<int>{-1}), std::invalid_argument);
  CHECK(handler_is(SIGUSR1, SIG_DFL));
  prefork::signal_pipe ok(std::vector<int>{SIGUSR1, SIGUSR1});  // duplicates are harmless
  CHECK(ok.signals() == std::vector<int>{SIGUSR1});
}

TEST_CASE("a signal the C library reserves fails in sigaction, naming it; earlier ones are put back") {
  prefork::test::leak_check leaks;
  int reserved = SIGRTMIN - 1;  // glibc keeps 32 and 33 for threads; musl 32 to 34
  CHECK_THROWS_WITH_AS(prefork::signal_pipe({SIGUSR1, reserved}),
                       doctest::Contains(("sigaction signal " + std::to_string(reserved)).c_str()),
                       std::system_error);
  CHECK(handler_is(SIGUSR1, SIG_DFL));
  {
    prefork::signal_pipe ok{SIGUSR1};  // the failure released the slot
    CHECK(ok.fd() >= 0);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("blocked_signals holds signals back until it restores the mask") {
  prefork::signal_pipe sp{SIGUSR1, SIGUSR2};
  {
    prefork::blocked_signals block;
    ::raise(SIGUSR1);
    CHECK_FALSE(sp.next());
    {
      prefork::blocked_signals only{SIGUSR2};  // nested: restores "everything blocked"
    }
    ::raise(SIGUSR2);
    CHECK_FALSE(sp.next());
  }
  std::vector<int> got = drain(sp);
  CHECK(got.size() == 2);
  sigset_t now;
  ::sigprocmask(SIG_SETMASK, nullptr, &now);
  CHECK(sigismember(&now, SIGUSR1) == 0);
  {
    prefork::blocked_signals only{SIGUSR2};
    ::raise(SIGUSR1);
    ::raise(SIGUSR2);
    CHECK(drain(sp) == std::vector<int>{SIGUSR1});
    only.restore();
    CHECK(drain(sp) == std::vector<int>{SIGUSR2});
  }
}

TEST_CASE("wait_next returns a pending signal at once and gives up after the timeout") {
  prefork::signal_pipe sp{SIGUSR1};
  ::raise(SIGUSR1);
  CHECK(sp.wait_next(std::chrono::milliseconds(10000)) == SIGUSR1);
  auto start = std::chrono::steady_clock::now();
  CHECK_FALSE(sp.wait_next(std::chrono::milliseconds(30)));
  CHECK(std::chrono::steady_clock::now() - start >= std::chrono::milliseconds(30));
}

TEST_CASE("reset_signals gives default dispositions and an empty mask") {
  struct sigaction ignore {};
  ignore.sa_handler = SIG_IGN;
  struct sigaction custom {};
  custom.sa_handler = custom_handler;
  REQUIRE(::sigaction(SIGPIPE, &ignore, nullptr) == 0);
  REQUIRE(::sigaction(SIGRTMIN + 1, &custom, nullptr) == 0);
  sigset_t some;
  sigemptyset(&some);
  sigaddset(&some, SIGTERM);
  sigaddset(&some, SIGRTMAX);
  REQUIRE(::sigprocmask(SIG_BLOCK, &some, nullptr) == 0);
  prefork::reset_signals();
  CHECK(handler_is(SIGPIPE, SIG_DFL));
  CHECK(handler_is(SIGRTMIN + 1, SIG_DFL));
  sigset_t now;
  ::sigprocmask(SIG_SETMASK, nullptr, &now);
  CHECK(sigismember(&now, SIGTERM) == 0);
  CHECK(sigismember(&now, SIGRTMAX) == 0);
}
