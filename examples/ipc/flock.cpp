// ipc-flock: flock(2) to serialise the writers of one log file.
//
// Good for: mutual exclusion between any processes that can open the same
// file, related or not, with no shared memory: log writers, one cron job at a
// time, one upgrade at a time. The kernel drops the lock when its holder
// exits or crashes, so a dead holder never wedges the others. Costs: two
// system calls per critical section (lock and unlock, here open and close as
// well), a file on a local file system (NFS emulates flock with fcntl locks),
// and it is advisory: a writer that does not take the lock is not stopped.
//
// Each record below goes out in several write(2) calls, as formatted logging
// often does; without the lock, records of the four writers would
// interleave. The parent checks that every line is one whole record.
#include <prefork/file.hpp>
#include <prefork/process.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

int main() {
  const int writers = 4, records = 50;
  std::string dir = (std::filesystem::temp_directory_path() / "ipc-flock-XXXXXX").string();
  if (!::mkdtemp(dir.data())) return 1;
  const std::string log = dir + "/app.log";
  std::fflush(stdout);
  std::vector<prefork::child> kids;
  for (int w = 0; w < writers; ++w) {
    auto kid = prefork::fork();
    if (!kid) {
      prefork::fd out(::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644));
      for (int i = 0; i < records; ++i) {
        prefork::file_lock lock(log);  // held for the whole record
        prefork::write_all(out.get(), "writer " + std::to_string(w));
        prefork::write_all(out.get(), " record " + std::to_string(i));
        prefork::write_all(out.get(), " " + std::string(100, char('a' + w)) + " end\n");
      }
      ::_exit(0);
    }
    kids.push_back(std::move(*kid));
  }
  bool ok = true;
  for (auto& k : kids) ok = k.wait().success() && ok;

  std::ifstream in(log);
  int lines = 0, whole = 0;
  for (std::string line; std::getline(in, line); ++lines) {
    int w = -1, i = -1;
    char tail[128] = "";
    if (std::sscanf(line.c_str(), "writer %d record %d %127s", &w, &i, tail) == 3 &&
        std::string(tail) == std::string(100, char('a' + w)) && line.size() > 4 &&
        line.compare(line.size() - 4, 4, " end") == 0)
      ++whole;
  }
  std::filesystem::remove_all(dir);
  std::printf("%d writers wrote %d lines, %d of them whole records\n", writers, lines, whole);
  ok = ok && lines == writers * records && whole == lines;
  std::printf("%s\n", ok ? "flock: OK" : "flock: FAILED");
  return ok ? 0 : 1;
}
