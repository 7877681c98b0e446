// tests/support/leak_check.hpp: did a test leave a zombie, a child or an fd?
//
// Every test that forks takes a leak_check at its start and asserts at its
// end that problems() is empty. It compares /proc/self/fd with what was open
// at construction, asks waitid(WNOWAIT) for unreaped children, and scans
// /proc for live children (both readers are proc.hpp's). It returns text,
// not a verdict, so doctest and Catch2 tests use it alike:
//   CHECK(leaks.problems() == "");
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <set>
#include <string>

#include "proc.hpp"  // open_fds, children_of

namespace prefork::test {

inline std::string fd_target(int fd) {
  char path[64], buf[512];
  std::snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  ssize_t n = ::readlink(path, buf, sizeof buf - 1);
  return n < 0 ? "?" : std::string(buf, static_cast<std::size_t>(n));
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
    for (pid_t kid : children_of(::getpid())) out += "child still running: " + std::to_string(kid) + "\n";
    return out;
  }

 private:
  std::set<int> fds_;
};

}  // namespace prefork::test
