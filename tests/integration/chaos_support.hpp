// tests/integration/chaos_support.hpp: looking at prefork-httpd's processes
// from the outside, through /proc, for the chaos, hostile-client and leak
// tests: who the master's children are and in what state, how many
// descriptors a process holds, its resident size, its CPU time, its
// credentials. Nothing here asks the server itself, so a wedged or dying
// worker cannot make a measurement lie.
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "httpd_support.hpp"

namespace chaos {

using namespace httpd_test;

// Under AddressSanitizer freed memory sits in a quarantine, so a process's
// resident size says nothing about leaks (LeakSanitizer does): the figures
// are still printed, the RSS assertions are skipped.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool rss_meaningful = false;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool rss_meaningful = false;
#else
constexpr bool rss_meaningful = true;
#endif
#else
constexpr bool rss_meaningful = true;
#endif

inline std::string slurp(const std::string& file) {
  std::ifstream in(file, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

inline std::size_t count_of(const std::string& text, std::string_view needle) {
  std::size_t n = 0;
  for (auto at = text.find(needle); at != std::string::npos; at = text.find(needle, at + needle.size())) ++n;
  return n;
}

// Fields of /proc/PID/stat after "(comm)": index 0 is the state.
inline std::vector<std::string> stat_fields(pid_t pid) {
  std::string line = slurp("/proc/" + std::to_string(pid) + "/stat");
  auto close = line.rfind(')');
  std::vector<std::string> out;
  if (close == std::string::npos) return out;
  std::istringstream rest(line.substr(close + 2));
  for (std::string f; rest >> f;) out.push_back(f);
  return out;
}

inline char state_of(pid_t pid) {
  auto f = stat_fields(pid);
  return f.empty() ? '?' : f[0][0];
}

// User plus system CPU time, in clock ticks.
inline long cpu_ticks(pid_t pid) {
  auto f = stat_fields(pid);
  return f.size() > 12 ? std::atol(f[11].c_str()) + std::atol(f[12].c_str()) : -1;
}

struct child_info {
  pid_t pid;
  char state;
};

// The children of pid, zombies included (a zombie is what we look for).
inline std::vector<child_info> children_of(pid_t pid) {
  std::vector<child_info> out;
  std::string p = std::to_string(pid);
  std::istringstream list(slurp("/proc/" + p + "/task/" + p + "/children"));
  for (pid_t kid; list >> kid;) out.push_back({kid, state_of(kid)});
  return out;
}

// Live (not zombie) children: the workers of a master.
inline std::vector<pid_t> workers_of(pid_t master) {
  std::vector<pid_t> out;
  for (const child_info& c : children_of(master))
    if (c.state != 'Z' && c.state != '?') out.push_back(c.pid);
  return out;
}

inline std::size_t zombies_of(pid_t master) {
  std::size_t n = 0;
  for (const child_info& c : children_of(master))
    if (c.state == 'Z') ++n;
  return n;
}

inline std::size_t fd_count(pid_t pid) {
  std::size_t n = 0;
  DIR* d = ::opendir(("/proc/" + std::to_string(pid) + "/fd").c_str());
  if (!d) return 0;
  while (dirent* e = ::readdir(d))
    if (e->d_name[0] != '.') ++n;
  ::closedir(d);
  return n;
}

// A line of /proc/PID/status, as the number after the name ("VmRSS:", "Uid:").
inline long status_number(pid_t pid, const std::string& name) {
  std::string s = slurp("/proc/" + std::to_string(pid) + "/status");
  auto at = s.find("\n" + name);
  return at == std::string::npos ? -1 : std::strtol(s.c_str() + at + 1 + name.size(), nullptr, 10);
}

inline std::string status_line(pid_t pid, const std::string& name) {
  std::string s = slurp("/proc/" + std::to_string(pid) + "/status");
  auto at = s.find("\n" + name);
  if (at == std::string::npos) return "";
  auto eol = s.find('\n', at + 1);
  return s.substr(at + 1, eol - at - 1);
}

inline long rss_kib(pid_t pid) { return status_number(pid, "VmRSS:"); }

// Waits until the master has exactly n workers and no zombie; returns them.
inline std::vector<pid_t> wait_workers(pid_t master, std::size_t n, steady::duration patience_ = patience) {
  auto deadline = steady::now() + patience_;
  for (;;) {
    auto w = workers_of(master);
    if (w.size() == n && zombies_of(master) == 0) return w;
    if (steady::now() >= deadline)
      throw std::runtime_error("master " + std::to_string(master) + " has " + std::to_string(w.size()) +
                               " workers and " + std::to_string(zombies_of(master)) + " zombies, wanted " +
                               std::to_string(n) + " and none");
    // Nothing to wait on for a /proc change but the master's own log,
    // which the caller reads; poll at a gentle pace until the deadline.
    ::poll(nullptr, 0, 5);
  }
}

// Runs argv[1..] with RLIMIT_NOFILE soft and hard set to argv[0].
PREFORK_HELPER(with_nofile) {
  rlimit lim{};
  lim.rlim_cur = lim.rlim_max = static_cast<rlim_t>(std::atol(argv[0]));
  if (::setrlimit(RLIMIT_NOFILE, &lim) == -1) return 126;
  ::execv(argv[1], argv + 1);
  return 127;
}

// One raw request on a new connection with a deadline of its own: the
// status, or 0 if the connection closed (or the deadline passed) first.
inline int status_of(int port, std::string_view raw,
                     std::chrono::milliseconds within = std::chrono::milliseconds(20000)) {
  prefork::fd c = connect_to(port);
  send_text(c.get(), raw);
  std::string all = read_until_close(c.get(), steady::now() + within);
  if (all.compare(0, 9, "HTTP/1.1 ") != 0 || all.size() < 12) return 0;
  return std::atoi(all.c_str() + 9);
}

const std::string hello = "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n";
const std::string hello_close = "GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";

}  // namespace chaos
