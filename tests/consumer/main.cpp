// A program that uses prefork the way a user would: the umbrella header,
// compiled with the consumer's own strict warnings, and a real fork and pipe.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <prefork.hpp>

#include <sys/wait.h>

TEST_CASE("a consumer forks a child that answers through a prefork pipe") {
  auto ends = prefork::pipe();
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ends.read.reset();
    prefork::write_all(ends.write.get(), "hello from the child");
    ::_exit(0);
  }
  ends.write.reset();
  CHECK(prefork::read_all(ends.read.get()) == "hello from the child");
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  CHECK(WIFEXITED(status));
  CHECK(std::string(PREFORK_VERSION_STRING).size() >= 5);
}
