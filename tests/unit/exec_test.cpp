// exec.hpp in one process: reading the inheritance variables (good, bad and
// not ours), refusing bad exec arguments, and a failed exec that leaves every
// descriptor flag and the environment as they were.
#include <doctest/doctest.h>

#include <prefork/exec.hpp>
#include <prefork/pipe.hpp>

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "leak_check.hpp"

namespace {

// Sets environment variables for one test and puts back what was there.
class env_guard {
 public:
  env_guard(std::initializer_list<std::pair<const char*, const char*>> vars) {
    for (const char* name :
         {"PREFORK_FDS", "PREFORK_FDNAMES", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"}) {
      const char* old = std::getenv(name);
      saved_[name] = old ? std::optional<std::string>(old) : std::nullopt;
      ::unsetenv(name);
    }
    for (const auto& [name, value] : vars) ::setenv(name, value, 1);
  }
  ~env_guard() {
    for (const auto& [name, value] : saved_) {
      if (value)
        ::setenv(name.c_str(), value->c_str(), 1);
      else
        ::unsetenv(name.c_str());
    }
  }

 private:
  std::map<std::string, std::optional<std::string>> saved_;
};

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "(unset)";
}

// fd -> F_GETFD flags for everything open.
std::map<int, int> all_flags() {
  std::map<int, int> out;
  for (int fd : prefork::test::open_fds()) out[fd] = ::fcntl(fd, F_GETFD);
  return out;
}

std::string message_of(const std::string& var, const std::string& value) {
  env_guard g{{var.c_str(), value.c_str()}};
  try {
    prefork::take_inherited_fds();
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "(no exception)";
}

}  // namespace

TEST_CASE("PREFORK_FDS: the listed descriptors are taken, named, made CLOEXEC, and the variables removed") {
  prefork::test::leak_check leaks;
  {
    auto ends = prefork::pipe();
    int a = ::fcntl(ends.read.get(), F_DUPFD, 20);  // not CLOEXEC, as after exec
    int b = ::fcntl(ends.write.get(), F_DUPFD, 20);
    std::string list = std::to_string(b) + "," + std::to_string(a);
    env_guard g{{"PREFORK_FDS", list.c_str()}, {"PREFORK_FDNAMES", "out:in"}};
    prefork::inherited got = prefork::take_inherited_fds();
    CHECK(got.source == "PREFORK_FDS");
    REQUIRE(got.fds.size() == 2);
    CHECK(got.fds[0].get() == b);
    CHECK(got.fds[1].get() == a);
    CHECK(got.fds[0].cloexec());
    CHECK(got.fds[1].cloexec());
    CHECK(got.names == std::vector<std::string>{"out", "in"});
    CHECK(env("PREFORK_FDS") == "(unset)");
    CHECK(env("PREFORK_FDNAMES") == "(unset)");
    CHECK(prefork::inherited_fds().empty());  // a second call finds nothing
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("PREFORK_FDS empty: inherited nothing, from prefork; no names means empty names") {
  {
    env_guard g{{"PREFORK_FDS", ""}};
    auto got = prefork::take_inherited_fds();
    CHECK(got.source == "PREFORK_FDS");
    CHECK(got.fds.empty());
    CHECK(env("PREFORK_FDS") == "(unset)");
  }
  auto ends = prefork::pipe();
  int a = ::fcntl(ends.read.get(), F_DUPFD, 20);
  std::string list = std::to_string(a);
  env_guard g{{"PREFORK_FDS", list.c_str()}};
  auto got = prefork::take_inherited_fds();
  CHECK(got.names == std::vector<std::string>{""});
}

TEST_CASE("nothing set: nothing inherited") {
  env_guard g{};
  auto got = prefork::take_inherited_fds();
  CHECK(got.source == "");
  CHECK(got.fds.empty());
}

TEST_CASE("malformed PREFORK_FDS is refused with the variable and its value") {
  for (const char* bad : {"x", "5,x", ",", "5,", "-1", "+5", " 5", "5 ", "99999999999", "0x5", "5;6"}) {
    CAPTURE(bad);
    std::string what = message_of("PREFORK_FDS", bad);
    CHECK(what.find("malformed PREFORK_FDS=\"" + std::string(bad) + "\"") != std::string::npos);
  }
  CHECK(message_of("PREFORK_FDS", "0,0").find("listed twice") != std::string::npos);
}

TEST_CASE("a listed descriptor that is not open is refused, and none of the others is taken") {
  prefork::test::leak_check leaks;
  {
    auto ends = prefork::pipe();
    int closed = ::fcntl(ends.read.get(), F_DUPFD_CLOEXEC, 0);
    ::close(closed);
    std::string list = std::to_string(ends.read.get()) + "," + std::to_string(closed);
    {
      env_guard g{{"PREFORK_FDS", list.c_str()}};
      CHECK_THROWS_WITH_AS(
          prefork::take_inherited_fds(),
          doctest::Contains(("descriptor " + std::to_string(closed) + ", which is not open").c_str()),
          std::runtime_error);
      CHECK(env("PREFORK_FDS") == list);  // left for the operator to see
    }
    CHECK(::fcntl(ends.read.get(), F_GETFD) != -1);  // still open: not adopted and closed
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("names that do not match the descriptors are refused") {
  auto ends = prefork::pipe();
  std::string list = std::to_string(ends.read.get());
  env_guard g{{"PREFORK_FDS", list.c_str()}, {"PREFORK_FDNAMES", "a:b"}};
  CHECK_THROWS_WITH_AS(prefork::take_inherited_fds(),
                       doctest::Contains("malformed PREFORK_FDNAMES=\"a:b\": 2 names for 1"),
                       std::runtime_error);
}

TEST_CASE("LISTEN_FDS counts only when LISTEN_PID is this process; malformed values are refused") {
  std::string me = std::to_string(::getpid());
  std::string other = std::to_string(::getpid() + 1);
  {
    env_guard g{{"LISTEN_FDS", "2"}, {"LISTEN_PID", other.c_str()}, {"LISTEN_FDNAMES", "a:b"}};
    auto got = prefork::take_inherited_fds();
    CHECK(got.source == "");
    CHECK(got.fds.empty());
    CHECK(env("LISTEN_FDS") == "2");  // meant for someone else: left alone
    CHECK(env("LISTEN_PID") == other);
  }
  {
    env_guard g{{"LISTEN_FDS", "2"}};  // no LISTEN_PID: not ours either
    CHECK(prefork::take_inherited_fds().fds.empty());
  }
  CHECK(message_of("LISTEN_PID", "abc").find("malformed LISTEN_PID=\"abc\"") != std::string::npos);
  CHECK(message_of("LISTEN_PID", "0").find("malformed LISTEN_PID") != std::string::npos);
  {
    env_guard g{{"LISTEN_PID", me.c_str()}, {"LISTEN_FDS", "two"}};
    CHECK_THROWS_WITH_AS(prefork::take_inherited_fds(), doctest::Contains("malformed LISTEN_FDS=\"two\""),
                         std::runtime_error);
  }
  {
    env_guard g{{"LISTEN_PID", me.c_str()}};
    CHECK_THROWS_WITH_AS(prefork::take_inherited_fds(), doctest::Contains("LISTEN_FDS is not set"),
                         std::runtime_error);
  }
  {
    env_guard g{{"LISTEN_PID", me.c_str()}, {"LISTEN_FDS", "1"}, {"LISTEN_FDNAMES", "a:b"}};
    CHECK_THROWS_WITH_AS(prefork::take_inherited_fds(), doctest::Contains("malformed LISTEN_FDNAMES=\"a:b\""),
                         std::runtime_error);
  }
  {
    env_guard g{{"LISTEN_PID", me.c_str()}, {"LISTEN_FDS", "0"}};
    auto got = prefork::take_inherited_fds();
    CHECK(got.source == "LISTEN_FDS");
    CHECK(got.fds.empty());
    CHECK(env("LISTEN_PID") == "(unset)");
  }
}

TEST_CASE("exec refuses bad arguments before touching anything") {
  auto ends = prefork::pipe();
  int r = ends.read.get();
  auto before = all_flags();
  CHECK_THROWS_WITH_AS(prefork::exec({}, {}), doctest::Contains("empty argv"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(prefork::exec({"/bin/true"}, {r}, {"a", "b"}), doctest::Contains("2 names for 1"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(prefork::exec({"/bin/true"}, {r}, {"a:b"}), doctest::Contains("\"a:b\""),
                       std::invalid_argument);
  CHECK_THROWS_AS(prefork::exec({"/bin/true"}, {r}, {""}), std::invalid_argument);
  CHECK_THROWS_WITH_AS(prefork::exec({"/bin/true"}, {r, r}), doctest::Contains("kept twice"),
                       std::invalid_argument);
  CHECK_THROWS_AS(prefork::exec({"/bin/true"}, {-1}), std::invalid_argument);
  int closed = ::fcntl(r, F_DUPFD_CLOEXEC, 0);
  ::close(closed);
  CHECK_THROWS_WITH_AS(prefork::exec({"/bin/true"}, {closed}),
                       doctest::Contains(("kept descriptor " + std::to_string(closed)).c_str()),
                       std::system_error);
  CHECK(all_flags() == before);
}

TEST_CASE("a failed exec throws naming the program and leaves every descriptor flag as it was") {
  prefork::test::leak_check leaks;
  {
    auto ends = prefork::pipe();
    prefork::fd inheritable(::fcntl(ends.write.get(), F_DUPFD, 0));  // someone else's, no CLOEXEC
    REQUIRE_FALSE(inheritable.cloexec());
    auto before = all_flags();

    try {
      prefork::exec({"/nonexistent/prefork-no-such-program", "arg"}, {ends.read.get()}, {"kept"});
      FAIL("exec returned");
    } catch (const std::system_error& e) {
      CHECK(e.code() == std::errc::no_such_file_or_directory);
      CHECK(std::string(e.what()).find("exec /nonexistent/prefork-no-such-program") != std::string::npos);
    }
    CHECK(all_flags() == before);
    CHECK(ends.read.cloexec());
    CHECK_FALSE(inheritable.cloexec());
    CHECK(env("PREFORK_FDS") == "(unset)");  // the new environment was built aside

    // Searched in PATH: every directory tried, the name as given reported.
    const char* old_path = std::getenv("PATH");
    std::string saved = old_path ? old_path : "";
    ::setenv("PATH", "/nonexistent-a:/nonexistent-b", 1);
    CHECK_THROWS_WITH_AS(prefork::exec({"prefork-no-such-program"}, {inheritable.get()}),
                         doctest::Contains("exec prefork-no-such-program"), std::system_error);
    ::setenv("PATH", saved.c_str(), 1);
    CHECK(all_flags() == before);

    // A file that exists but may not be executed: EACCES, flags restored.
    std::string dir = "/tmp/prefork-exec-test-" + std::to_string(::getpid());
    std::filesystem::create_directory(dir);
    std::ofstream(dir + "/plain") << "not a program\n";
    try {
      prefork::exec({dir + "/plain"}, {ends.read.get(), inheritable.get()});
      FAIL("exec returned");
    } catch (const std::system_error& e) {
      CHECK(e.code() == std::errc::permission_denied);
    }
    std::filesystem::remove_all(dir);
    CHECK(all_flags() == before);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("startup_argv and startup_cwd describe this process as it began") {
  const auto& argv = prefork::startup_argv();
  REQUIRE_FALSE(argv.empty());
  CHECK(argv[0].find("unit_exec_test") != std::string::npos);
  CHECK(&prefork::startup_argv() == &argv);  // read once
  CHECK(prefork::startup_cwd() == std::filesystem::current_path());
}
