// file.hpp across real processes: atomic_write under SIGKILL, the temp-file
// sweep, ten masters racing for one pid file, flock between processes.
#include "catch.hpp"

#include <prefork/file.hpp>
#include <prefork/pipe.hpp>

#include <poll.h>
#include <signal.h>
#include <sys/wait.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "helpers.hpp"
#include "leak_check.hpp"
#include "temp_dir.hpp"

namespace fs = std::filesystem;

using prefork::test::fork_child;
using prefork::test::slurp;
using prefork::test::temp_dir;

namespace {

int wait_exit(pid_t pid) {
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// Reads one byte, failing the test if none comes within 30 s.
char read_byte(int fd) {
  pollfd p{fd, POLLIN, 0};
  REQUIRE(::poll(&p, 1, 30000) == 1);
  char c = 0;
  REQUIRE(prefork::read_some(fd, &c, 1).bytes == 1);
  return c;
}

std::string read_line(int fd) {
  std::string out;
  for (char c; (c = read_byte(fd)) != '\n';) out += c;
  return out;
}

// Version v of the file: a header naming v, the body length and a checksum,
// then a body made from v; a torn or mixed file fails check_version.
std::string make_version(unsigned v) {
  std::size_t len = 20000 + (v % 7) * 9000;  // sizes differ, so truncation shows too
  std::string body(len, '\0');
  std::uint32_t x = v * 2654435761u;
  for (auto& c : body) c = static_cast<char>('a' + ((x = x * 1103515245u + 12345u) >> 16) % 26);
  std::uint64_t sum = 0;
  for (unsigned char c : body) sum = sum * 31 + c;
  return "v=" + std::to_string(v) + " len=" + std::to_string(len) + " sum=" + std::to_string(sum) + "\n" +
         body;
}

// The version the content is, or -1 when it is no complete version.
long check_version(const std::string& content) {
  unsigned v = 0;
  if (std::sscanf(content.c_str(), "v=%u ", &v) != 1) return -1;
  return content == make_version(v) ? static_cast<long>(v) : -1;
}

}  // namespace

TEST_CASE("atomic_write: SIGKILL at random moments never leaves a torn file; the sweep collects temps",
          "[file][crash]") {
  prefork::test::leak_check leaks;
  temp_dir dir;
  const fs::path target = dir / "data";
  prefork::atomic_write(target, make_version(0));
  std::mt19937 rng(std::random_device{}());
  int temps_left = 0;
  std::set<long> seen;
  unsigned next_version = 1;
  for (int round = 0; round < 200; ++round) {
    auto progress = prefork::pipe();
    const unsigned first = next_version;
    pid_t pid = fork_child([&] {
      progress.read.reset();
      std::vector<std::string> versions;
      for (unsigned v = first; v < first + 4; ++v) versions.push_back(make_version(v));
      // Each write reports itself; the parent kills after a random number.
      for (std::size_t i = 0;; ++i) {
        prefork::write_all(progress.write.get(), "s", 1);
        prefork::atomic_write(target, versions[i % versions.size()]);
      }
      return 0;
    });
    progress.write.reset();
    int reads = std::uniform_int_distribution<int>(1, 3)(rng);
    for (int i = 0; i < reads; ++i) REQUIRE(read_byte(progress.read.get()) == 's');
    // A few microseconds more of random spread inside the write in hand.
    std::atomic<int> spin{std::uniform_int_distribution<int>(0, 200000)(rng)};  // atomic: not optimised away
    while (spin.fetch_sub(1, std::memory_order_relaxed) > 0) {
    }
    REQUIRE(::kill(pid, SIGKILL) == 0);
    REQUIRE(wait_exit(pid) == 128 + SIGKILL);
    next_version += 4;

    long v = check_version(slurp(target));
    INFO("round " << round);
    REQUIRE(v >= 0);
    seen.insert(v);
    std::size_t removed = prefork::remove_stale_temps(dir.path);
    REQUIRE(removed <= 1);  // at most the write in hand when the kill came
    temps_left += static_cast<int>(removed);
    REQUIRE(dir.names() == std::set<std::string>{"data"});
  }
  // Proof that the kills did land inside writes, and that writes completed.
  CHECK(temps_left > 0);
  CHECK(seen.size() > 10);
  prefork::atomic_write(target, "after");
  CHECK(slurp(target) == "after");
  CHECK(dir.names() == std::set<std::string>{"data"});
  CHECK(leaks.problems() == "");
}

TEST_CASE("remove_stale_temps never removes the temp file of a live writer in another process", "[file]") {
  prefork::test::leak_check leaks;
  temp_dir dir;
  auto started = prefork::pipe(), proceed = prefork::pipe();
  pid_t pid = fork_child([&] {
    started.read.reset();
    proceed.write.reset();
    prefork::atomic_file f(dir / "t");
    f.write("part one ");
    prefork::write_all(started.write.get(), f.temp_path().filename().string() + "\n");
    char c;
    if (prefork::read_some(proceed.read.get(), &c, 1).bytes != 1) return 1;
    f.write("part two");
    f.commit();
    return 0;
  });
  started.write.reset();
  proceed.read.reset();
  std::string temp = read_line(started.read.get());
  CHECK(prefork::detail::is_temp_name(temp));
  CHECK(prefork::remove_stale_temps(dir.path) == 0);
  CHECK(dir.names() == std::set<std::string>{temp});
  prefork::write_all(proceed.write.get(), "go", 1);
  CHECK(wait_exit(pid) == 0);
  CHECK(slurp(dir / "t") == "part one part two");
  CHECK(dir.names() == std::set<std::string>{"t"});
  started.read.reset();
  proceed.write.reset();
  CHECK(leaks.problems() == "");
}

TEST_CASE("ten processes race to create one pid file: exactly one wins, also over a stale file",
          "[file][pid]") {
  prefork::test::leak_check leaks;
  temp_dir dir;
  const fs::path path = dir / "master.pid";
  const std::vector<std::string> before = {"", "999999999\n", "junk", "2147483646\n", ""};
  for (std::size_t round = 0; round < before.size(); ++round) {
    INFO("round " << round << " starting with '" << before[round] << "'");
    if (round > 0) std::ofstream(path) << before[round];
    auto gate = prefork::pipe(), results = prefork::pipe(), hold = prefork::pipe();
    std::vector<pid_t> pids;
    for (int i = 0; i < 10; ++i) {
      pids.push_back(fork_child([&] {
        gate.write.reset();
        results.read.reset();
        hold.write.reset();
        char c;
        prefork::read_some(gate.read.get(), &c, 1);  // EOF: everyone starts at once
        std::string line;
        std::optional<prefork::pid_file> mine;
        try {
          mine = prefork::pid_file::create(path);
          line = "W " + std::to_string(::getpid()) + "\n";
        } catch (const std::runtime_error& e) {
          line = std::string("L ") + e.what() + "\n";
        }
        prefork::write_all(results.write.get(), line);  // short: one atomic pipe write
        prefork::read_some(hold.read.get(), &c, 1);     // the winner keeps its file until told
        return 0;
      }));
    }
    gate.read.reset();
    results.write.reset();
    hold.read.reset();
    gate.write.reset();
    std::vector<std::string> winners, losers;
    for (int i = 0; i < 10; ++i) {
      std::string line = read_line(results.read.get());
      (line[0] == 'W' ? winners : losers).push_back(line);
    }
    REQUIRE(winners.size() == 1);
    std::string winner_pid = winners[0].substr(2);
    CHECK(prefork::pid_file::read(path) == std::atoi(winner_pid.c_str()));
    for (auto& l : losers) CHECK_THAT(l, Catch::Contains("already running as PID " + winner_pid));
    hold.write.reset();
    for (pid_t p : pids) CHECK(wait_exit(p) == 0);
    CHECK(dir.names().empty());  // the winner removed its file, nothing else was left
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("a pid file of a process that died is stale and replaced", "[file][pid]") {
  prefork::test::leak_check leaks;
  temp_dir dir;
  pid_t dead = fork_child([&] {
    prefork::pid_file::create(dir / "app.pid").release();  // dies leaving it behind
    return 0;
  });
  REQUIRE(wait_exit(dead) == 0);
  REQUIRE(prefork::pid_file::read(dir / "app.pid") == dead);
  {
    auto mine = prefork::pid_file::create(dir / "app.pid");
    CHECK(prefork::pid_file::read(dir / "app.pid") == ::getpid());
  }
  CHECK(dir.names().empty());
  CHECK(leaks.problems() == "");
}

TEST_CASE("a forked child's copy of a pid_file does not remove the parent's file", "[file][pid]") {
  prefork::test::leak_check leaks;
  temp_dir dir;
  {
    auto mine = prefork::pid_file::create(dir / "app.pid");
    pid_t pid = fork_child([&] {
      { prefork::pid_file copy = std::move(mine); }  // destroyed in the child
      return 0;
    });
    REQUIRE(wait_exit(pid) == 0);
    CHECK(prefork::pid_file::read(dir / "app.pid") == ::getpid());
    // A second master is refused while we live.
    pid_t rival = fork_child([&] {
      try {
        prefork::pid_file::create(dir / "app.pid");
      } catch (const std::runtime_error& e) {
        return std::string(e.what()).find("already running as PID " + std::to_string(::getppid())) !=
                       std::string::npos
                   ? 0
                   : 2;
      }
      return 3;
    });
    CHECK(wait_exit(rival) == 0);
  }
  CHECK(dir.names().empty());
  CHECK(leaks.problems() == "");
}

TEST_CASE("file_lock between processes: exclusive, shared, try, timeout, and waiting", "[file][lock]") {
  prefork::test::leak_check leaks;
  temp_dir dir;
  const fs::path path = dir / "lock";
  for (auto kind : {prefork::lock_kind::exclusive, prefork::lock_kind::shared}) {
    const bool exclusive = kind == prefork::lock_kind::exclusive;
    INFO((exclusive ? "child holds exclusive" : "child holds shared"));
    auto locked = prefork::pipe(), release = prefork::pipe();
    pid_t holder = fork_child([&] {
      locked.read.reset();
      release.write.reset();
      prefork::file_lock held(path, kind);
      prefork::write_all(locked.write.get(), "L", 1);
      char c;
      prefork::read_some(release.read.get(), &c, 1);
      // Said before the lock goes: whoever gets it next must see this first.
      prefork::write_all(locked.write.get(), "R", 1);
      return 0;
    });
    locked.write.reset();
    release.read.reset();
    REQUIRE(read_byte(locked.read.get()) == 'L');

    CHECK_FALSE(prefork::file_lock::try_lock(path, prefork::lock_kind::exclusive));
    CHECK(static_cast<bool>(prefork::file_lock::try_lock(path, prefork::lock_kind::shared)) == !exclusive);
    auto start = std::chrono::steady_clock::now();
    CHECK_FALSE(
        prefork::file_lock::lock_for(path, prefork::lock_kind::exclusive, std::chrono::milliseconds(100)));
    CHECK(std::chrono::steady_clock::now() - start >= std::chrono::milliseconds(100));

    release.write.reset();
    prefork::file_lock mine(path, prefork::lock_kind::exclusive);  // waits for the child to let go
    pollfd p{locked.read.get(), POLLIN, 0};
    CHECK(::poll(&p, 1, 0) == 1);
    CHECK(read_byte(locked.read.get()) == 'R');
    CHECK(wait_exit(holder) == 0);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("file_lock::lock_for in another process gets the lock as soon as it is released", "[file][lock]") {
  prefork::test::leak_check leaks;
  temp_dir dir;
  const fs::path path = dir / "lock";
  std::optional<prefork::file_lock> held(std::in_place, path);
  auto waiting = prefork::pipe(), result = prefork::pipe();
  pid_t waiter = fork_child([&] {
    waiting.read.reset();
    result.read.reset();
    held.reset();  // the child's copy of our descriptor: closing it keeps our lock (shared description)
    prefork::write_all(waiting.write.get(), "w", 1);
    auto got = prefork::file_lock::lock_for(path, prefork::lock_kind::exclusive, std::chrono::seconds(30));
    prefork::write_all(result.write.get(), got ? "Y" : "N", 1);
    return 0;
  });
  waiting.write.reset();
  result.write.reset();
  REQUIRE(read_byte(waiting.read.get()) == 'w');
  pollfd p{result.read.get(), POLLIN, 0};
  CHECK(::poll(&p, 1, 150) == 0);  // still waiting: we hold it
  auto start = std::chrono::steady_clock::now();
  held.reset();
  CHECK(read_byte(result.read.get()) == 'Y');
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(10));
  CHECK(wait_exit(waiter) == 0);
  waiting.read.reset();
  result.read.reset();
  CHECK(leaks.problems() == "");
}
