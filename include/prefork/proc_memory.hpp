// prefork/proc_memory.hpp: how much memory a process holds, from
// /proc/PID/smaps_rollup, read on demand.
//
// Rss counts every resident page a process maps, so N preforked workers
// sharing the master's pages copy-on-write add up to far more than the
// machine holds. Pss divides each shared page among the processes that map
// it: the workers' Pss adds up to what they really cost. smaps_rollup
// (Linux 4.14) gives both in one small read; the kernel walks the page
// tables to make it, so it is for a status page or a scrape, not for every
// request. Reading another process's file needs the ptrace read access a
// process of the same user has (or CAP_SYS_PTRACE).
#pragma once

#include <fcntl.h>
#include <sys/types.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>

#include <prefork/error.hpp>
#include <prefork/fd.hpp>

namespace prefork {

struct process_memory {
  std::uint64_t rss = 0;  // bytes resident
  std::uint64_t pss = 0;  // bytes resident, shared pages divided among their sharers
};

namespace detail {

// The value of "Name:   1234 kB" in bytes, or nullopt if the line is absent.
inline std::optional<std::uint64_t> smaps_field(std::string_view text, std::string_view name) {
  std::size_t at = 0;
  while (at < text.size()) {
    std::size_t end = text.find('\n', at);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(at, end - at);
    at = end + 1;
    if (line.size() <= name.size() || line.substr(0, name.size()) != name || line[name.size()] != ':')
      continue;
    std::uint64_t kb = 0;
    bool digits = false;
    for (char c : line.substr(name.size() + 1)) {
      if (c >= '0' && c <= '9') {
        kb = kb * 10 + static_cast<std::uint64_t>(c - '0');
        digits = true;
      } else if (digits) {
        break;
      }
    }
    if (digits) return kb * 1024;
  }
  return std::nullopt;
}

}  // namespace detail

// Rss and Pss of process `pid` (0: this process). ENOENT once it is gone.
inline std::optional<process_memory> read_process_memory(pid_t pid, std::error_code& ec) {
  ec.clear();
  std::string path =
      pid == 0 ? std::string("/proc/self/smaps_rollup") : "/proc/" + std::to_string(pid) + "/smaps_rollup";
  int raw = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (raw == -1) return detail::fail(ec), std::nullopt;
  fd file(raw);
  char buf[4096];
  std::string text;
  for (;;) {
    ssize_t n = ::read(raw, buf, sizeof buf);
    if (n == -1 && errno == EINTR) continue;
    if (n == -1) return detail::fail(ec), std::nullopt;
    if (n == 0) break;
    text.append(buf, static_cast<std::size_t>(n));
  }
  auto rss = detail::smaps_field(text, "Rss");
  auto pss = detail::smaps_field(text, "Pss");
  // An exiting process (or a kernel thread) has an empty rollup.
  if (!rss || !pss) return detail::fail(ec, ESRCH), std::nullopt;
  return process_memory{*rss, *pss};
}

// As above; throws std::system_error naming the PID.
inline process_memory read_process_memory(pid_t pid) {
  std::error_code ec;
  if (auto m = read_process_memory(pid, ec)) return *m;
  throw std::system_error(ec, "read_process_memory " + std::to_string(pid) + " (/proc/PID/smaps_rollup)");
}

}  // namespace prefork
