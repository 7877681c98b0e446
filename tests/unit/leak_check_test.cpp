// The leak checker every forking test relies on must itself catch leaks.
#include <doctest/doctest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <prefork/pipe.hpp>

#include "leak_check.hpp"

TEST_CASE("leak_check sees a leaked fd") {
  prefork::test::leak_check leaks;
  auto ends = prefork::pipe();
  CHECK(leaks.problems().find("leaked fd " + std::to_string(ends.read.get())) != std::string::npos);
  ends = {};
  CHECK(leaks.problems() == "");
}

TEST_CASE("leak_check sees a zombie and a running child") {
  prefork::test::leak_check leaks;
  pid_t dead = ::fork();
  if (dead == 0) ::_exit(0);
  // Wait for the exit without reaping it, so the zombie stays for the check.
  siginfo_t info{};
  REQUIRE(::waitid(P_PID, static_cast<id_t>(dead), &info, WEXITED | WNOWAIT) == 0);
  CHECK(leaks.problems().find("zombie child " + std::to_string(dead)) != std::string::npos);
  REQUIRE(::waitpid(dead, nullptr, 0) == dead);

  auto gate = prefork::pipe();
  pid_t live = ::fork();
  if (live == 0) {
    gate.write.reset();
    char c;
    (void)::read(gate.read.get(), &c, 1);  // until the parent closes the gate
    ::_exit(0);
  }
  gate.read.reset();
  CHECK(leaks.problems().find("child still running: " + std::to_string(live)) != std::string::npos);
  gate.write.reset();
  REQUIRE(::waitpid(live, nullptr, 0) == live);
  CHECK(leaks.problems() == "");
}
