// tests/support/proc.hpp: what the kernel says about a process, from /proc.
//
// Tests that run real processes (a pool, prefork-httpd, an upgrading master)
// check them from the outside: whose children are they and in what state,
// how many descriptors they hold, their CPU time, a line of their status.
// Asking the process itself would let a wedged or dying one lie; /proc
// cannot. Every reader takes one look, now: a test reads only after an event
// (a log line, an exit) said the state is reached, or polls with a deadline.
//
// A process can vanish between two looks, and one that is gone reads as
// gone (state 0, no children, no descriptors), never as an error: the tests
// ask "is it dead yet?" as often as "is it alive?".
#pragma once

#include <dirent.h>
#include <unistd.h>

#include <cstdlib>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "temp_dir.hpp"  // slurp

namespace prefork::test {

// The fields of /proc/PID/stat after "(comm)", so that index 0 is field 3 of
// proc(5), the state, and index 1 the parent; empty once the process is gone.
// comm is whatever the process named itself, spaces and ')' included, so the
// fields start after the last ')'.
inline std::vector<std::string> stat_fields(pid_t pid) {
  std::string line = slurp("/proc/" + std::to_string(pid) + "/stat");
  std::vector<std::string> out;
  auto close = line.rfind(')');
  if (close == std::string::npos || close + 2 > line.size()) return out;
  std::istringstream rest(line.substr(close + 2));
  for (std::string f; rest >> f;) out.push_back(f);
  return out;
}

// 'R', 'S', 'T', 'Z'...; 0 once the process is gone (reaped).
inline char state_of(pid_t pid) {
  auto f = stat_fields(pid);
  return f.empty() ? '\0' : f[0][0];
}

// 0 once the process is gone.
inline pid_t parent_of(pid_t pid) {
  auto f = stat_fields(pid);
  return f.size() > 1 ? static_cast<pid_t>(std::atol(f[1].c_str())) : 0;
}

// User plus system CPU time, in clock ticks (sysconf(_SC_CLK_TCK) a second);
// -1 once the process is gone.
inline long cpu_ticks(pid_t pid) {
  auto f = stat_fields(pid);
  return f.size() > 12 ? std::atol(f[11].c_str()) + std::atol(f[12].c_str()) : -1;
}

// Which children children_of() lists: a zombie has exited but is not reaped
// yet, which is a leak or a step of a test, never a worker.
enum class kids { live, zombies, all };

// The children of `parent`, found by the parent field of every process in
// /proc. (/proc/PID/task/PID/children would be cheaper, but it lists only
// what that one thread forked, and needs CONFIG_PROC_CHILDREN.)
inline std::set<pid_t> children_of(pid_t parent, kids which = kids::live) {
  std::set<pid_t> out;
  DIR* dir = ::opendir("/proc");
  if (!dir) std::abort();  // no /proc must not read as "no children": leak checks rely on it
  while (dirent* e = ::readdir(dir)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    auto pid = static_cast<pid_t>(std::atol(e->d_name));
    auto f = stat_fields(pid);
    if (f.size() < 2 || std::atol(f[1].c_str()) != parent) continue;  // gone meanwhile, or not ours
    bool zombie = f[0] == "Z";
    if (which == kids::all || zombie == (which == kids::zombies)) out.insert(pid);
  }
  ::closedir(dir);
  return out;
}

// The descriptors open in a process, from /proc/PID/fd: this process's when
// pid is 0, without the one that reads the directory; another's is empty
// once it is gone (ours cannot be, so a failure there aborts).
inline std::set<int> open_fds(pid_t pid = 0) {
  std::set<int> fds;
  std::string path = pid == 0 ? "/proc/self/fd" : "/proc/" + std::to_string(pid) + "/fd";
  DIR* dir = ::opendir(path.c_str());
  if (!dir) {
    if (pid == 0) std::abort();
    return fds;
  }
  int own = pid == 0 ? ::dirfd(dir) : -1;
  while (dirent* e = ::readdir(dir)) {
    if (e->d_name[0] == '.') continue;
    int n = std::atoi(e->d_name);
    if (n != own) fds.insert(n);
  }
  ::closedir(dir);
  return fds;
}

inline std::size_t fd_count(pid_t pid) { return open_fds(pid).size(); }

// The line of /proc/PID/status that starts with `name` ("VmRSS:", "Uid:"),
// whole; "" when there is none or the process is gone.
inline std::string status_line(pid_t pid, const std::string& name) {
  std::string s = "\n" + slurp("/proc/" + std::to_string(pid) + "/status");
  auto at = s.find("\n" + name);
  if (at == std::string::npos) return "";
  auto eol = s.find('\n', at + 1);
  return s.substr(at + 1, eol == std::string::npos ? std::string::npos : eol - at - 1);
}

// The first number on that line ("Uid:" gives the real uid, "VmRSS:" KiB);
// -1 when there is no such line.
inline long status_number(pid_t pid, const std::string& name) {
  std::string line = status_line(pid, name);
  return line.empty() ? -1 : std::strtol(line.c_str() + name.size(), nullptr, 10);
}

}  // namespace prefork::test
