// tests/support/leak_check.hpp: did a test leave a zombie, a child or an fd?
//
// Every test that forks takes a leak_check at its start and asserts at its
// end that problems() is empty. It compares /proc/self/fd with what was open
// at construction, asks waitid(WNOWAIT) for unreaped children, and scans
// /proc for live children. It returns text, not a verdict, so doctest and
// Catch2 tests use it alike:   CHECK(leaks.problems() == "");
#pragma once

#include <dirent.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>
#include <string>

namespace prefork::test {

inline std::set<int> open_fds() {
  std::set<int> fds;
  DIR* dir = ::opendir("/proc/self/fd");
  if (!dir) std::abort();
  int own = ::dirfd(dir);
  while (dirent* e = ::readdir(dir)) {
    if (e->d_name[0] == '.') continue;
    int n = std::atoi(e->d_name);
    if (n != own) fds.insert(n);
  }
  ::closedir(dir);
  return fds;
}

inline std::string fd_target(int fd) {
  char path[64], buf[512];
  std::snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  ssize_t n = ::readlink(path, buf, sizeof buf - 1);
  return n < 0 ? "?" : std::string(buf, static_cast<std::size_t>(n));
}

// PIDs of live (not yet exited) children of this process.
inline std::set<pid_t> live_children() {
  std::set<pid_t> kids;
  pid_t self = ::getpid();
  DIR* dir = ::opendir("/proc");
  if (!dir) std::abort();
  while (dirent* e = ::readdir(dir)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    std::ifstream stat(std::string("/proc/") + e->d_name + "/stat");
    std::string line;
    if (!std::getline(stat, line)) continue;  // gone meanwhile
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    auto close = line.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream rest(line.substr(close + 2));
    char state = 0;
    pid_t ppid = 0;
    rest >> state >> ppid;
    if (ppid == self && state != 'Z') kids.insert(static_cast<pid_t>(std::atoi(e->d_name)));
  }
  ::closedir(dir);
  return kids;
}

// The PID of one exited but unreaped child, or 0.
inline pid_t zombie_child() {
  siginfo_t info{};
  if (::waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT) == -1) return 0;  // ECHILD: none
  return info.si_pid;
}

class leak_check {
 public:
  leak_check() : fds_(open_fds()) {}

  // Empty when nothing leaked; otherwise one line per problem.
  std::string problems() const {
    std::string out;
    for (int fd : open_fds())
      if (!fds_.count(fd)) out += "leaked fd " + std::to_string(fd) + " -> " + fd_target(fd) + "\n";
    for (int fd : fds_)
      if (!open_fds().count(fd)) out += "fd " + std::to_string(fd) + " open before was closed\n";
    if (pid_t z = zombie_child()) out += "zombie child " + std::to_string(z) + "\n";
    for (pid_t kid : live_children()) out += "child still running: " + std::to_string(kid) + "\n";
    return out;
  }

 private:
  std::set<int> fds_;
};

}  // namespace prefork::test
