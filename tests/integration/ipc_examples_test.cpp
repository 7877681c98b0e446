// examples/ipc: each program runs, says what happened, exits 0, and leaves
// nothing behind (no FIFO, no temp directory, no queue or semaphore name).
#include "catch.hpp"

#include <prefork/pipe.hpp>
#include <prefork/process.hpp>

#include <dirent.h>

#include <filesystem>
#include <regex>
#include <set>
#include <string>

#include "helpers.hpp"
#include "leak_check.hpp"

namespace {

struct run_result {
  std::string status;
  std::string out;
};

run_result run(const std::string& program) {
  auto out = prefork::pipe();
  prefork::spawn_options o;
  o.fds = {{out.write.get(), 1}, {2, 2}};
  auto kid = prefork::spawn({prefork::test::bin_path(program)}, o);
  out.write.reset();
  std::string text = prefork::read_all(out.read.get());
  return {kid.wait().describe(), text};
}

// Names in a directory that start with `prefix` (an empty set if the
// directory does not exist, as /dev/mqueue may not be mounted).
std::set<std::string> names_with(const char* dir, const std::string& prefix) {
  std::set<std::string> out;
  std::error_code ec;
  for (auto it = std::filesystem::directory_iterator(dir, ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    std::string name = it->path().filename().string();
    if (name.rfind(prefix, 0) == 0) out.insert(name);
  }
  return out;
}

}  // namespace

TEST_CASE("ipc examples run, report success, and leave nothing behind", "[ipc]") {
  prefork::test::leak_check leaks;
  const auto tmp = std::filesystem::temp_directory_path().string();
  const auto tmp_before = names_with(tmp.c_str(), "ipc-");
  const auto shm_before = names_with("/dev/shm", "sem.prefork-ipc-");
  const auto mq_before = names_with("/dev/mqueue", "prefork-ipc-");

  struct expectation {
    const char* program;
    const char* ok_line;
    const char* detail;  // a regex the output must match too
  };
  const expectation all[] = {
      {"ipc-pipe", "pipe: OK", "line 3 from child [0-9]+\n"},
      {"ipc-fifo", "fifo: OK", "reader [0-9]+ got: hello through the FIFO\n"},
      {"ipc-flock", "flock: OK", "4 writers wrote 200 lines, 200 of them whole records"},
      {"ipc-shm-counter", "shm-counter: OK", "counter 1000000, expected 1000000"},
      {"ipc-mmap-file", "mmap-file: OK", "the file itself holds: written by [0-9]+"},
      {"ipc-fd-passing", "fd-passing: OK", "read \"a secret with no name\" from fd [0-9]+"},
      {"ipc-mqueue", "mqueue: OK", "received message 1 \\(priority 5\\)\nreceived message 3"},
      {"ipc-semaphore", "semaphore: OK", "total 80000, overlaps 0"},
  };
  for (const auto& e : all) {
    INFO(e.program);
    auto r = run(e.program);
    INFO(r.out);
    CHECK(r.status == "exited 0");
    CHECK(r.out.find(std::string(e.ok_line) + "\n") != std::string::npos);
    CHECK(std::regex_search(r.out, std::regex(e.detail)));
  }

  CHECK(names_with(tmp.c_str(), "ipc-") == tmp_before);
  CHECK(names_with("/dev/shm", "sem.prefork-ipc-") == shm_before);
  CHECK(names_with("/dev/mqueue", "prefork-ipc-") == mq_before);
  CHECK(leaks.problems() == "");
}

TEST_CASE("ipc-fifo removes its FIFO and directory", "[ipc]") {
  auto r = run("ipc-fifo");
  std::smatch m;
  REQUIRE(std::regex_search(r.out, m, std::regex("FIFO at (\\S+)\n")));
  std::filesystem::path fifo = m[1].str();
  CHECK_FALSE(std::filesystem::exists(fifo));
  CHECK_FALSE(std::filesystem::exists(fifo.parent_path()));
}
