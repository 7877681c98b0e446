// pid_file as a newcomer meets it: the check a program makes before it binds
// (so a second start says "already running as PID N", not EADDRINUSE), and
// errors that name the pid file rather than only the call that failed.
#include <doctest/doctest.h>

#include <prefork/file.hpp>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <string>

#include "temp_dir.hpp"

namespace fs = std::filesystem;

using prefork::pid_file;
using prefork::test::temp_dir;

namespace {

void spit(const fs::path& p, const std::string& text) { std::ofstream(p, std::ios::binary) << text; }

std::string message_of(const fs::path& p) {
  try {
    auto made = pid_file::create(p);
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST_CASE("pid_file::check_not_running names the live owner, and passes missing, stale and own files") {
  temp_dir dir;
  const fs::path path = dir / "app.pid";
  CHECK_FALSE(pid_file::running(path));
  CHECK_NOTHROW(pid_file::check_not_running(path));  // missing

  spit(path, "garbage\n");
  CHECK_NOTHROW(pid_file::check_not_running(path));
  spit(path, std::to_string(::getpid()) + "\n");  // ours: a master re-exec'd in place
  CHECK_NOTHROW(pid_file::check_not_running(path));

  pid_t parent = ::getppid();  // alive: it runs us
  spit(path, std::to_string(parent) + "\n");
  CHECK(pid_file::running(path) == parent);
  CHECK_THROWS_WITH_AS(
      pid_file::check_not_running(path),
      ("pid file " + path.string() + ": already running as PID " + std::to_string(parent)).c_str(),
      std::runtime_error);
  // The same words as create's, which still decides.
  CHECK(message_of(path) ==
        "pid file " + path.string() + ": already running as PID " + std::to_string(parent));
  CHECK(dir.names() == std::set<std::string>{"app.pid"});  // looked at, never touched
}

TEST_CASE("pid_file errors name the pid file, not only its directory") {
  temp_dir dir;
  const fs::path in_missing = dir / "missing" / "app.pid";
  std::string missing = message_of(in_missing);
  CHECK(missing.rfind("pid file " + in_missing.string() + ": open directory " + (dir / "missing").string(),
                      0) == 0);
  CHECK(missing.find("No such file or directory") != std::string::npos);

  spit(dir / "plain", "a file, not a directory\n");
  const fs::path under_file = dir / "plain" / "app.pid";
  std::string not_dir = message_of(under_file);
  CHECK(not_dir.rfind("pid file " + under_file.string() + ": ", 0) == 0);
  CHECK(not_dir.find("Not a directory") != std::string::npos);

  try {
    auto made = pid_file::create(in_missing);
    FAIL("created a pid file in a missing directory");
  } catch (const std::system_error& e) {
    CHECK(e.code() == std::errc::no_such_file_or_directory);  // still a system_error with its errno
  }
}
