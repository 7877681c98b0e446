// file.hpp in one process: atomic_write/atomic_file, the temp-file sweep,
// pid_file rules, file_lock conflicts (flock locks belong to the open file,
// so two opens in one process conflict just as two processes would).
#include <doctest/doctest.h>

#include <prefork/file.hpp>
#include <prefork/pipe.hpp>

#include <sys/stat.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include "leak_check.hpp"
#include "temp_dir.hpp"

namespace fs = std::filesystem;

using prefork::test::slurp;
using prefork::test::temp_dir;

namespace {

void spit(const fs::path& p, const std::string& text) { std::ofstream(p, std::ios::binary) << text; }

mode_t mode_of(const fs::path& p) {
  struct stat st {};
  REQUIRE(::stat(p.c_str(), &st) == 0);
  return st.st_mode & 07777;
}

bool can_flock(const fs::path& p) {
  prefork::fd f(::open(p.c_str(), O_RDONLY | O_CLOEXEC));
  REQUIRE(f);
  return ::flock(f.get(), LOCK_EX | LOCK_NB) == 0;
}

// A PID above pid_max: no process can have it.
constexpr pid_t no_such_pid = 2147483646;

}  // namespace

TEST_CASE("atomic_write creates and replaces, with the asked mode, and leaves nothing beside") {
  prefork::test::leak_check leaks;
  temp_dir dir;
  mode_t old_mask = ::umask(022);
  prefork::atomic_write(dir / "conf", "first");
  CHECK(slurp(dir / "conf") == "first");
  CHECK(mode_of(dir / "conf") == 0644);
  prefork::atomic_write(dir / "conf", std::string(100000, 'z'), 0600);
  CHECK(slurp(dir / "conf") == std::string(100000, 'z'));
  CHECK(mode_of(dir / "conf") == 0600);
  prefork::atomic_write(dir / "empty", "");
  CHECK(slurp(dir / "empty").empty());
  ::umask(old_mask);
  CHECK(dir.names() == std::set<std::string>{"conf", "empty"});
  CHECK(leaks.problems() == "");
}

TEST_CASE("atomic_write works for the longest file names") {
  temp_dir dir;
  std::string longest(255, 'n');
  prefork::atomic_write(dir / longest, "long");
  CHECK(slurp(dir / longest) == "long");
  CHECK(dir.names() == std::set<std::string>{longest});
}

TEST_CASE("atomic_write on a relative path writes in the working directory") {
  temp_dir dir;
  fs::path old = fs::current_path();
  fs::current_path(dir.path);
  prefork::atomic_write("rel", "x");
  fs::current_path(old);
  CHECK(slurp(dir / "rel") == "x");
}

TEST_CASE("atomic_write errors name the call and the path; bad paths are refused") {
  temp_dir dir;
  CHECK_THROWS_WITH_AS(prefork::atomic_write(dir / "missing" / "f", "x"),
                       doctest::Contains(("open directory " + (dir / "missing").string()).c_str()),
                       std::system_error);
  CHECK_THROWS_AS(prefork::atomic_write(dir.path / "", "x"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(prefork::atomic_write(dir / "..", "x"), doctest::Contains("not a file path"),
                       std::invalid_argument);
  fs::create_directory(dir / "sub");
  // Renaming a file over a directory fails: the temp file must go too.
  CHECK_THROWS_WITH_AS(prefork::atomic_write(dir / "sub", "x"), doctest::Contains("rename"),
                       std::system_error);
  CHECK(dir.names() == std::set<std::string>{"sub"});
  std::error_code ec;
  CHECK_FALSE(prefork::atomic_write(dir / "sub", "x", 0644, ec));
  CHECK(ec == std::errc::is_a_directory);
  CHECK(prefork::atomic_write(dir / "f", "x", 0644, ec));
  CHECK_FALSE(ec);
  CHECK(prefork::remove_stale_temps(dir / "nope", ec) == 0);
  CHECK(ec == std::errc::no_such_file_or_directory);
}

TEST_CASE("atomic_file: temp file beside the target, locked and CLOEXEC, renamed on commit") {
  prefork::test::leak_check leaks;
  temp_dir dir;
  spit(dir / "t", "old");
  {
    prefork::atomic_file f(dir / "t");
    fs::path temp = f.temp_path();
    CHECK(temp.parent_path() == dir.path);
    std::string name = temp.filename().string();
    CHECK(name.rfind(".t.tmp." + std::to_string(::getpid()) + ".", 0) == 0);
    CHECK(prefork::detail::is_temp_name(name));
    CHECK(fs::exists(temp));
    CHECK_FALSE(can_flock(temp));
    CHECK((::fcntl(f.native_handle(), F_GETFD) & FD_CLOEXEC) != 0);
    f.write("ne");
    f.write("w");
    CHECK(slurp(dir / "t") == "old");
    f.commit();
    CHECK(slurp(dir / "t") == "new");
    CHECK_FALSE(fs::exists(temp));
    CHECK(f.native_handle() == -1);
    CHECK_THROWS_AS(f.write("more"), std::logic_error);
    CHECK_THROWS_AS(f.commit(), std::logic_error);
  }
  CHECK(dir.names() == std::set<std::string>{"t"});
  CHECK(leaks.problems() == "");
}

TEST_CASE("atomic_file destroyed or moved over uncommitted: target unchanged, no temp left") {
  prefork::test::leak_check leaks;
  temp_dir dir;
  spit(dir / "t", "old");
  {
    prefork::atomic_file f(dir / "t");
    f.write("never seen");
  }
  CHECK(slurp(dir / "t") == "old");
  CHECK(dir.names() == std::set<std::string>{"t"});
  {
    prefork::atomic_file a(dir / "t"), b(dir / "t");
    CHECK(a.temp_path() != b.temp_path());
    a.write("from a");
    b.write("from b");
    fs::path a_temp = a.temp_path();
    a = std::move(b);  // a's own temp is discarded
    CHECK_FALSE(fs::exists(a_temp));
    prefork::atomic_file c(std::move(a));
    CHECK_THROWS_AS(a.commit(), std::logic_error);
    c.commit();
  }
  CHECK(slurp(dir / "t") == "from b");
  CHECK(dir.names() == std::set<std::string>{"t"});
  { prefork::atomic_file never_created(dir / "new"); }
  CHECK(dir.names() == std::set<std::string>{"t"});
  CHECK(leaks.problems() == "");
}

TEST_CASE("temp names are recognised exactly") {
  using prefork::detail::is_temp_name;
  CHECK(is_temp_name(".x.tmp.1.0123456789abcdef"));
  CHECK(is_temp_name(".a.b.tmp.tmp.99.fedcba9876543210"));
  CHECK_FALSE(is_temp_name("x.tmp.1.0123456789abcdef"));   // not hidden
  CHECK_FALSE(is_temp_name(".x.tmp..0123456789abcdef"));   // no pid
  CHECK_FALSE(is_temp_name(".x.tmp.1.0123456789abcdeF"));  // not our hex
  CHECK_FALSE(is_temp_name(".x.tmp.1.0123456789abcde"));   // short nonce
  CHECK_FALSE(is_temp_name("..tmp.1.0123456789abcdef"));   // no name
  CHECK_FALSE(is_temp_name(".x.tmq.1.0123456789abcdef"));
  CHECK_FALSE(is_temp_name(""));
}

TEST_CASE("remove_stale_temps removes unlocked temp files only, and nothing else") {
  prefork::test::leak_check leaks;
  temp_dir dir;
  spit(dir / "t", "target");
  spit(dir / ".t.tmp.12345.00000000deadbeef", "dead writer's half");
  spit(dir / ".t.tmp.x.00000000deadbeef", "not ours: no pid");
  spit(dir / "t.tmp.12345.00000000deadbeef", "not ours: not hidden");
  REQUIRE(::mkfifo((dir / ".f.tmp.1.0000000000000000").c_str(), 0600) == 0);  // must not hang or be removed
  prefork::atomic_file live(dir / "t");
  live.write("half");
  CHECK(prefork::remove_stale_temps(dir.path) == 1);
  CHECK(fs::exists(live.temp_path()));
  CHECK(dir.names() == std::set<std::string>{"t", ".t.tmp.x.00000000deadbeef", "t.tmp.12345.00000000deadbeef",
                                             ".f.tmp.1.0000000000000000",
                                             live.temp_path().filename().string()});
  live.commit();
  CHECK(slurp(dir / "t") == "half");
  CHECK(prefork::remove_stale_temps(dir.path) == 0);
  CHECK_THROWS_WITH_AS(prefork::remove_stale_temps(dir / "nope"), doctest::Contains("nope"),
                       std::system_error);
  CHECK(leaks.problems() == "");
}

TEST_CASE("pid_file writes our PID, holds no fd, and is removed by its destructor") {
  prefork::test::leak_check leaks;
  temp_dir dir;
  {
    auto pid = prefork::pid_file::create(dir / "app.pid");
    CHECK(pid.path() == dir / "app.pid");
    CHECK(slurp(dir / "app.pid") == std::to_string(::getpid()) + "\n");
    CHECK(prefork::pid_file::read(dir / "app.pid") == ::getpid());
    CHECK(dir.names() == std::set<std::string>{"app.pid"});  // no temp left behind
    CHECK(leaks.problems() == "");                           // no fd held either
  }
  CHECK(dir.names().empty());
}

TEST_CASE("pid_file refuses a live owner, naming its PID") {
  temp_dir dir;
  pid_t parent = ::getppid();  // alive: it runs us
  spit(dir / "app.pid", std::to_string(parent) + "\n");
  CHECK_THROWS_WITH_AS(prefork::pid_file::create(dir / "app.pid"),
                       doctest::Contains(("already running as PID " + std::to_string(parent)).c_str()),
                       std::runtime_error);
  CHECK(slurp(dir / "app.pid") == std::to_string(parent) + "\n");
  CHECK(dir.names() == std::set<std::string>{"app.pid"});
}

TEST_CASE("pid_file replaces stale files: dead PID, garbage, empty, zero, negative") {
  temp_dir dir;
  for (std::string stale :
       {std::to_string(no_such_pid) + "\n", std::string("garbage\n"), std::string(), std::string("0\n"),
        std::string("-5\n"), std::string("12 34\n"), std::string(1000, '7')}) {
    CAPTURE(stale);
    spit(dir / "app.pid", stale);
    auto pid = prefork::pid_file::create(dir / "app.pid");
    CHECK(slurp(dir / "app.pid") == std::to_string(::getpid()) + "\n");
  }
  CHECK(dir.names().empty());
}

TEST_CASE("pid_file holding our own PID (an in-place re-exec) is adopted") {
  temp_dir dir;
  spit(dir / "app.pid", std::to_string(::getpid()) + "\n");
  {
    auto pid = prefork::pid_file::create(dir / "app.pid");
    CHECK(pid);
  }
  CHECK_FALSE(fs::exists(dir / "app.pid"));
}

TEST_CASE("pid_file refuses a symlink, dangling or not, and what is not a regular file") {
  temp_dir dir;
  spit(dir / "victim", "precious\n");
  fs::create_symlink(dir / "victim", dir / "app.pid");
  CHECK_THROWS_WITH_AS(prefork::pid_file::create(dir / "app.pid"), doctest::Contains("symlink"),
                       std::runtime_error);
  CHECK(slurp(dir / "victim") == "precious\n");
  fs::remove(dir / "app.pid");
  fs::create_symlink(dir / "nowhere", dir / "app.pid");
  CHECK_THROWS_WITH_AS(prefork::pid_file::create(dir / "app.pid"), doctest::Contains("symlink"),
                       std::runtime_error);
  CHECK_FALSE(fs::exists(dir / "nowhere"));
  fs::remove(dir / "app.pid");
  fs::create_directory(dir / "app.pid");
  CHECK_THROWS_WITH_AS(prefork::pid_file::create(dir / "app.pid"), doctest::Contains("not a regular file"),
                       std::runtime_error);
  CHECK(dir.names() == std::set<std::string>{"victim", "app.pid"});
}

TEST_CASE("pid_file destructor removes the file only while it holds our PID") {
  temp_dir dir;
  {
    auto pid = prefork::pid_file::create(dir / "app.pid");
    spit(dir / "app.pid", "1\n");  // someone else's now
  }
  CHECK(slurp(dir / "app.pid") == "1\n");
}

TEST_CASE("pid_file rename_to moves it (and back); release forgets it; moves transfer it") {
  temp_dir dir;
  {
    auto pid = prefork::pid_file::create(dir / "app.pid");
    pid.rename_to(dir / "app.pid.oldbin");
    CHECK(pid.path() == dir / "app.pid.oldbin");
    CHECK(dir.names() == std::set<std::string>{"app.pid.oldbin"});
    pid.rename_to(dir / "app.pid");
    CHECK(dir.names() == std::set<std::string>{"app.pid"});
    prefork::pid_file moved = std::move(pid);
    CHECK_FALSE(pid);
    CHECK(pid.path().empty());
    CHECK_THROWS_AS(pid.rename_to(dir / "x"), std::logic_error);
    CHECK(moved.path() == dir / "app.pid");
    CHECK_THROWS_WITH_AS(moved.rename_to(dir / "no" / "such"), doctest::Contains("rename"),
                         std::system_error);
  }
  CHECK(dir.names().empty());
  {
    auto pid = prefork::pid_file::create(dir / "app.pid");
    CHECK(pid.release() == dir / "app.pid");
  }
  CHECK(prefork::pid_file::read(dir / "app.pid") == ::getpid());
}

TEST_CASE("pid_file::parse accepts a positive decimal PID with an optional newline") {
  using prefork::pid_file;
  CHECK(pid_file::parse("42\n") == 42);
  CHECK(pid_file::parse("42") == 42);
  CHECK(pid_file::parse("2147483647") == 2147483647);
  CHECK_FALSE(pid_file::parse("2147483648"));
  CHECK_FALSE(pid_file::parse("42\n\n"));
  CHECK_FALSE(pid_file::parse(" 42"));
  CHECK_FALSE(pid_file::parse("\n"));
  CHECK_FALSE(pid_file::parse("0"));
}

TEST_CASE("file_lock: exclusive excludes all, shared admits shared, unlock frees") {
  prefork::test::leak_check leaks;
  temp_dir dir;
  fs::path path = dir / "lock";
  {
    prefork::file_lock held(path);  // created on demand
    CHECK(fs::exists(path));
    CHECK(held.kind() == prefork::lock_kind::exclusive);
    CHECK((::fcntl(held.native_handle(), F_GETFD) & FD_CLOEXEC) != 0);
    CHECK_FALSE(prefork::file_lock::try_lock(path));
    CHECK_FALSE(prefork::file_lock::try_lock(path, prefork::lock_kind::shared));
    held.unlock();
    CHECK_FALSE(held);
    auto again = prefork::file_lock::try_lock(path);
    CHECK(again);
  }
  {
    prefork::file_lock r1(path, prefork::lock_kind::shared);
    auto r2 = prefork::file_lock::try_lock(path, prefork::lock_kind::shared);
    CHECK(r2);
    CHECK_FALSE(prefork::file_lock::try_lock(path));
  }
  prefork::file_lock dir_lock(dir.path);  // directories lock too
  CHECK_FALSE(prefork::file_lock::try_lock(dir.path));
  CHECK_THROWS_WITH_AS(prefork::file_lock(dir / "no" / "lock"), doctest::Contains("open"), std::system_error);
  dir_lock.unlock();
  CHECK(leaks.problems() == "");
}

TEST_CASE("file_lock::lock_for times out, and wakes when the holder closes") {
  prefork::test::leak_check leaks;
  temp_dir dir;
  fs::path path = dir / "lock";
  std::optional<prefork::file_lock> held(std::in_place, path);
  auto start = std::chrono::steady_clock::now();
  CHECK_FALSE(prefork::file_lock::lock_for(path, prefork::lock_kind::shared, std::chrono::milliseconds(120)));
  auto waited = std::chrono::steady_clock::now() - start;
  CHECK(waited >= std::chrono::milliseconds(120));
  CHECK(waited < std::chrono::seconds(5));
  CHECK_FALSE(
      prefork::file_lock::lock_for(path, prefork::lock_kind::exclusive, std::chrono::milliseconds(0)));

  auto ready = prefork::pipe();
  std::thread releaser([&] {
    char c;
    REQUIRE(prefork::read_some(ready.read.get(), &c, 1).bytes == 1);
    held.reset();
  });
  prefork::write_all(ready.write.get(), "go", 1);
  auto got = prefork::file_lock::lock_for(path, prefork::lock_kind::exclusive, std::chrono::seconds(30));
  releaser.join();
  CHECK(got);
  got.reset();
  ready.read.reset();
  ready.write.reset();
  CHECK(leaks.problems() == "");
}
