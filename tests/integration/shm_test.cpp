// shm.hpp across real processes: atomic counters from several children add up
// exactly, a shared<T> written before fork is seen after it (both ways), and
// a memfd kept across a real exec is mapped again with from_fd.
#include "catch.hpp"

#include <prefork/fd.hpp>
#include <prefork/shm.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "helpers.hpp"
#include "leak_check.hpp"

using prefork::test::fork_child;

namespace {

struct board {
  std::atomic<std::uint64_t> total;
  std::uint32_t slot[8];  // plain data: each child writes only its own
  char note[32];
};

// fork + exec of a helper of this executable, with `keep` inherited (its
// CLOEXEC cleared in the child only, between fork and exec).
pid_t exec_helper(const std::string& name, const std::vector<std::string>& args, int keep) {
  auto argv_strings = prefork::test::helper_argv(name, args);
  std::vector<char*> argv;
  for (auto& a : argv_strings) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = ::fork();
  REQUIRE(pid != -1);
  if (pid == 0) {
    if (::fcntl(keep, F_SETFD, 0) == -1) ::_exit(126);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  return pid;
}

int wait_exit(pid_t pid) {
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

constexpr int increments = 100000;

}  // namespace

// argv: memfd number, how many increments. Maps the counter and bumps it.
PREFORK_HELPER(shm_increment) {
  if (argc != 2) return 2;
  try {
    auto counter = prefork::shared<std::atomic<long>>::from_fd(std::atoi(argv[0]));
    for (long i = 0, n = std::atol(argv[1]); i < n; ++i) counter->fetch_add(1, std::memory_order_relaxed);
  } catch (const std::system_error& e) {
    std::fprintf(stderr, "shm_increment: %s\n", e.what());
    return 99;
  }
  return 0;
}

// argv: memfd number. Tries to map it as the wrong type and reports the error.
PREFORK_HELPER(shm_wrong_type) {
  try {
    prefork::shared<board>::from_fd(std::atoi(argv[0]));
  } catch (const std::invalid_argument& e) {
    std::printf("%s\n", e.what());
    return std::strstr(e.what(), "expected") ? 0 : 1;
  }
  return 3;
}

// argv: memfd number. Maps a shared_array whose size comes from the memfd.
PREFORK_HELPER(shm_array) {
  auto a = prefork::shared_array<std::atomic<int>>::from_fd(std::atoi(argv[0]));
  for (std::size_t i = 0; i < a.size(); ++i) a[i] += static_cast<int>(i) * 10;
  return static_cast<int>(a.size());
}

TEST_CASE("shared_array of atomics: increments from 4 children add up exactly", "[shm]") {
  prefork::test::leak_check leaks;
  {
    prefork::shared_array<std::atomic<std::uint64_t>> counters(16);
    std::vector<pid_t> kids;
    for (int child = 0; child < 4; ++child) {
      kids.push_back(fork_child([&] {
        for (int i = 0; i < increments; ++i)
          for (auto& c : counters) c.fetch_add(1, std::memory_order_relaxed);
        return 0;
      }));
    }
    for (pid_t k : kids) CHECK(wait_exit(k) == 0);
    for (auto& c : counters) CHECK(c.load() == 4u * increments);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("shared<T> written before fork is seen by children, and their writes by the parent", "[shm]") {
  prefork::test::leak_check leaks;
  {
    prefork::shared<board> b;
    std::strcpy(b->note, "from parent");
    std::vector<pid_t> kids;
    for (std::uint32_t child = 0; child < 8; ++child) {
      kids.push_back(fork_child([&, child] {
        if (std::strcmp(b->note, "from parent") != 0) return 1;
        b->slot[child] = 1000 + child;
        b->total.fetch_add(child + 1);
        return 0;
      }));
    }
    for (pid_t k : kids) CHECK(wait_exit(k) == 0);
    for (std::uint32_t child = 0; child < 8; ++child) CHECK(b->slot[child] == 1000 + child);
    CHECK(b->total.load() == 36);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("a private (non-shared) copy really is private: the test above could fail", "[shm]") {
  prefork::test::leak_check leaks;
  int plain = 0;  // ordinary memory, copied on write by fork
  pid_t kid = fork_child([&] {
    plain = 5;
    return 0;
  });
  CHECK(wait_exit(kid) == 0);
  CHECK(plain == 0);
  CHECK(leaks.problems() == "");
}

TEST_CASE("from_fd across exec: helpers map the kept memfd and update the same memory", "[shm][exec]") {
  prefork::test::leak_check leaks;
  {
    prefork::shared<std::atomic<long>> counter;
    *counter = 41;
    std::vector<pid_t> kids;
    for (int i = 0; i < 4; ++i)
      kids.push_back(
          exec_helper("shm_increment", {std::to_string(counter.memfd()), "10000"}, counter.memfd()));
    for (pid_t k : kids) CHECK(wait_exit(k) == 0);
    CHECK(counter->load() == 41 + 4 * 10000);

    CHECK(wait_exit(exec_helper("shm_wrong_type", {std::to_string(counter.memfd())}, counter.memfd())) == 0);

    prefork::shared_array<std::atomic<int>> array(7);
    CHECK(wait_exit(exec_helper("shm_array", {std::to_string(array.memfd())}, array.memfd())) == 7);
    for (std::size_t i = 0; i < array.size(); ++i) CHECK(array[i] == static_cast<int>(i) * 10);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("without clearing CLOEXEC the memfd does not reach the exec'd helper", "[shm][exec]") {
  prefork::test::leak_check leaks;
  {
    prefork::shared<std::atomic<long>> counter;
    auto argv_strings = prefork::test::helper_argv("shm_increment", {std::to_string(counter.memfd()), "1"});
    std::vector<char*> argv;
    for (auto& a : argv_strings) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_t pid = ::fork();
    REQUIRE(pid != -1);
    if (pid == 0) {
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    CHECK(wait_exit(pid) == 99);  // from_fd threw: no such descriptor
    CHECK(counter->load() == 0);
  }
  CHECK(leaks.problems() == "");
}
