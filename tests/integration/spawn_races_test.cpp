// spawn() and fork() beside other threads and an ignored SIGCHLD: a fork on
// another thread while spawn runs, a program that cannot be started when the
// kernel reaps children itself, and fork()'s refusal to copy one thread of
// many.
#include "catch.hpp"

#include <prefork/pipe.hpp>
#include <prefork/process.hpp>

#include <sys/stat.h>
#include <sys/wait.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "env_var.hpp"
#include "helpers.hpp"
#include "leak_check.hpp"

using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

namespace {

// A PATH of thousands of missing directories before the real ones: every one
// costs the spawn child an execve, which keeps it (and the parent waiting in
// clone) busy long enough for another thread's fork to land in the middle.
std::string long_path() {
  std::string path;
  // Short entries: the whole variable must stay under the kernel's 128 KiB
  // limit for one environment string.
  for (int i = 0; i < 12000; ++i) path += "/n/" + std::to_string(i) + ":";
  return path + "/usr/bin:/bin";
}

// Forks children on a thread, as fast as it can, while told to. Each child
// blocks reading `hold` until the test closes the write end, so it lives
// through every spawn that follows; before the fix it held spawn's report
// pipe open, and spawn waited for its end of file as long as the child lived.
class forker {
 public:
  forker() : hold_(prefork::pipe()), thread_([this] { run(); }) {}
  ~forker() {
    stop_ = true;
    thread_.join();
    hold_.write.reset();
    for (pid_t pid : children_) ::waitpid(pid, nullptr, 0);
  }
  forker(const forker&) = delete;
  forker& operator=(const forker&) = delete;

  std::size_t forked() const { return count_.load(); }
  // After a deadline, lets every child end, so a spawn stuck waiting on one
  // returns and the test can fail instead of hanging.
  void release_children() { hold_.write.reset(); }

 private:
  void run() {
    const int in = hold_.read.get(), out = hold_.write.get();
    while (!stop_ && children_.size() < 400) {
      pid_t pid = ::fork();  // raw: the child makes three system calls and exits
      if (pid == 0) {
        ::close(out);
        char byte;
        [[maybe_unused]] ssize_t r = ::read(in, &byte, 1);
        ::_exit(0);
      }
      if (pid > 0) children_.push_back(pid);
      count_ = children_.size();
    }
  }

  prefork::pipe_ends hold_;
  std::atomic<bool> stop_{false};
  std::atomic<std::size_t> count_{0};
  std::vector<pid_t> children_;  // the forker thread's until it is joined
  std::thread thread_;
};

// Runs `body` on this thread; if it has not returned after `limit`, a
// watchdog thread calls `unstick` so that it can.
template <class Body, class Unstick>
steady::duration timed(Body body, Unstick unstick, std::chrono::seconds limit) {
  std::mutex m;
  std::condition_variable cv;
  bool done = false;
  std::thread watchdog([&] {
    std::unique_lock<std::mutex> lock(m);
    if (!cv.wait_for(lock, limit, [&] { return done; })) unstick();
  });
  auto start = steady::now();
  try {
    body();
  } catch (...) {
    {
      std::lock_guard<std::mutex> lock(m);
      done = true;
    }
    cv.notify_all();
    watchdog.join();
    throw;
  }
  auto took = steady::now() - start;
  {
    std::lock_guard<std::mutex> lock(m);
    done = true;
  }
  cv.notify_all();
  watchdog.join();
  return took;
}

}  // namespace

TEST_CASE("spawn: returns at once while another thread forks children that live on", "[spawn][threads]") {
  prefork::test::leak_check leaks;
  char script[] = "/tmp/prefork-noexec-XXXXXX";
  int tmp = ::mkstemp(script);
  REQUIRE(tmp >= 0);
  ::close(tmp);
  ::chmod(script, 0644);  // exists, not executable: EACCES
  {
    prefork::test::env_var path("PATH", long_path());
    forker f;
    std::vector<std::string> slow;
    int not_found = 0, denied = 0, ran = 0;
    auto took = timed(
        [&] {
          for (int round = 0; round < 12; ++round) {
            prefork::child c = prefork::spawn({"true"});
            ran += c.wait().success();
            try {
              prefork::child never = prefork::spawn({"prefork-no-such-program-anywhere"});
            } catch (const std::system_error& e) {
              not_found += e.code().value() == ENOENT;
            }
            try {
              prefork::child never = prefork::spawn({script});
            } catch (const std::system_error& e) {
              denied += e.code().value() == EACCES;
            }
          }
        },
        [&] { f.release_children(); }, 15s);
    INFO("children forked meanwhile: " << f.forked());
    CHECK(f.forked() > 0);
    CHECK(took < 10s);  // before the fix: stuck until the watchdog released the forked children
    CHECK(ran == 12);
    CHECK(not_found == 12);
    CHECK(denied == 12);
  }
  ::unlink(script);
  CHECK(leaks.problems() == "");
}

TEST_CASE("spawn with SIGCHLD ignored: exec errors keep their errno; wait() says the status is unknown",
          "[spawn][sigchld]") {
  prefork::test::leak_check leaks;
  struct sigaction ignore {
  }, old{};
  ignore.sa_handler = SIG_IGN;
  REQUIRE(::sigaction(SIGCHLD, &ignore, &old) == 0);
  int error = 0;
  std::string what;
  std::optional<prefork::exit_status> waited, timed_wait;
  std::string wait_error;
  try {
    try {
      prefork::child never = prefork::spawn({"/nonexistent/prefork-missing"});
    } catch (const std::system_error& e) {  // before the fix: "waitid: No child processes"
      error = e.code().value();
      what = e.what();
    }
    prefork::child quick = prefork::spawn({"/bin/sh", "-c", "exit 3"});
    waited = quick.wait();  // before the fix: threw ECHILD
    prefork::child slower = prefork::spawn({"/bin/sh", "-c", "exit 4"});
    timed_wait = slower.wait_for(20s);
  } catch (const std::exception& e) {
    wait_error = e.what();
  }
  ::sigaction(SIGCHLD, &old, nullptr);
  CHECK(wait_error == "");
  CHECK(error == ENOENT);
  CHECK(what.find("/nonexistent/prefork-missing") != std::string::npos);
  REQUIRE(waited);
  CHECK(!waited->known());
  CHECK(!waited->exited());
  CHECK(!waited->signaled());
  CHECK(!waited->success());
  CHECK(waited->describe().find("status unknown") != std::string::npos);
  REQUIRE(timed_wait);
  CHECK(!timed_wait->known());
  CHECK(leaks.problems() == "");
}

TEST_CASE("fork: refused while other threads run, unless asked for explicitly", "[fork][threads]") {
  prefork::test::leak_check leaks;
  {
    std::mutex m;
    std::condition_variable cv;
    bool stop = false;
    std::thread other([&] {
      std::unique_lock<std::mutex> lock(m);
      cv.wait(lock, [&] { return stop; });
    });
    std::string refusal;
    try {
      std::optional<prefork::child> c = prefork::fork();
      if (!c) ::_exit(0);  // before the fix: forked; the child leaves at once
      c->wait();
    } catch (const std::logic_error& e) {
      refusal = e.what();
    }
    std::optional<prefork::exit_status> opted_in;
    {
      std::optional<prefork::child> c = prefork::fork_even_with_threads();
      if (!c) ::_exit(7);  // only async-signal-safe calls in this child
      opted_in = c->wait_for(20s);
    }
    {
      std::lock_guard<std::mutex> lock(m);
      stop = true;
    }
    cv.notify_all();
    other.join();
    CHECK(refusal.find("fork: refusing to fork with 2 threads running") != std::string::npos);
    CHECK(refusal.find("fork_even_with_threads()") != std::string::npos);
    REQUIRE(opted_in);
    CHECK(opted_in->code() == 7);

    // One thread again: fork() works.
    std::optional<prefork::child> c = prefork::fork();
    if (!c) ::_exit(5);
    CHECK(c->wait().code() == 5);
  }
  CHECK(leaks.problems() == "");
}
