// prefork/pool_config.hpp: pool_config, everything a prefork pool is told,
// the check of its numbers, and the default log line the pool writes for
// each lifecycle event.
//
// The default log writes one line per event to standard error, with a UTC
// timestamp and the PID, in a single write(2) so lines from the master and
// its workers never interleave mid-line; a failed write (closed stderr, a
// reader gone) is ignored, as a logger must never take a server down. Stands
// on clock_gettime, gmtime_r and write.
#pragma once

#include <time.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <prefork/fd.hpp>

namespace prefork {

class worker;

enum class upgrade_mode { fork_exec, in_place };

struct pool_config {
  unsigned workers = 1;
  std::chrono::milliseconds timeout{60000};           // a worker silent this long is SIGKILLed
  std::chrono::milliseconds graceful_timeout{30000};  // QUIT: how long workers may finish
  std::vector<fd> listeners;                          // empty: take_inherited_fds()
  std::filesystem::path pid_file;                     // optional
  upgrade_mode upgrade = upgrade_mode::fork_exec;
  // Optional, one per listener ("http", "admin"): handed to the new image
  // with the listeners on USR2 (PREFORK_FDNAMES), so a program that finds its
  // sockets by name, as under systemd's socket activation, finds them again.
  // Taken from the environment with the listeners when those are inherited.
  std::vector<std::string> listener_names;
  // One SO_REUSEPORT socket per worker index (slot) and listener, opened and
  // kept by the master, so the kernel spreads connections over the workers
  // and a dead worker's queue waits for its replacement (reuseport.hpp).
  // The listeners must have SO_REUSEPORT (listen_options::reuseport).
  bool reuseport = false;
  // USR2: how long the new workers may take to be ready. fork_exec then
  // stops the new master and the old one carries on; in_place (whose old
  // workers serve until replaced) accepts another USR2 from then on.
  std::chrono::milliseconds upgrade_timeout{60000};
  bool graceful_term = false;  // TERM stops gracefully, as containers expect
  unsigned max_requests = 0;   // replace a worker after this many (with jitter)
  std::size_t max_rss = 0;     // replace a worker above this RSS (bytes)
  // Scoreboard slots: the most workers alive at once, old and new together
  // while HUP or recycling replaces them. 0: 2 * workers + 8. TTIN stops
  // at this many. With no slot free (max_workers == workers) workers are
  // replaced one at a time: the old one stops first, then its replacement
  // starts in its slot.
  unsigned max_workers = 0;
  // Refork (refork.hpp): when a worker of the current generation has served
  // refork_after[k] requests (k = 0, 1, ... one per promotion; Pitchfork's
  // default is 50, 100, 1000), it becomes the mold the next workers are
  // forked from, sharing its warm memory. `refork` alone allows promotions
  // by hand only (SIGURG, master::refork()). HUP starts the counts over.
  std::vector<std::uint64_t> refork_after;
  bool refork = false;
  std::function<void(worker&)> after_fork;       // in the worker (forked by the master or by a mold)
  std::function<void(worker&)> after_promotion;  // in a worker that becomes the mold, before its first fork
  std::function<void()> on_reload;               // HUP, in the master
  // In the master, each time the wanted workers are all ready: at start
  // (the moment to tell a launcher or a supervisor), after HUP, after USR2.
  std::function<void()> on_ready;
  std::function<void()> on_reopen_logs;       // USR1, in master and workers
  std::function<void(std::string_view)> log;  // one line per lifecycle event
};

namespace detail {

// The numbers of a config, checked: throws std::invalid_argument naming the
// wrong one. Fills in max_workers' default.
inline void check_limits(pool_config& config) {
  if (config.workers == 0) throw std::invalid_argument("pool_config: workers must be at least 1");
  if (config.timeout.count() <= 0) throw std::invalid_argument("pool_config: timeout must be positive");
  if (config.graceful_timeout.count() < 0)
    throw std::invalid_argument("pool_config: graceful_timeout is negative");
  if (config.upgrade_timeout.count() <= 0)
    throw std::invalid_argument("pool_config: upgrade_timeout must be positive");
  if (config.max_workers == 0) config.max_workers = 2 * config.workers + 8;
  if (config.max_workers < config.workers)
    throw std::invalid_argument("pool_config: max_workers (" + std::to_string(config.max_workers) +
                                ") is below workers (" + std::to_string(config.workers) + ")");
}

// "2026-11-27T03:20:01.123Z prefork[1234]: <event>\n" to fd 2.
inline void default_log(std::string_view event) noexcept {
  timespec now{};
  ::clock_gettime(CLOCK_REALTIME, &now);
  tm utc{};
  ::gmtime_r(&now.tv_sec, &utc);
  char head[80];
  int n = std::snprintf(head, sizeof head,
                        "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ prefork[%ld]: ", utc.tm_year + 1900,
                        utc.tm_mon + 1, utc.tm_mday, utc.tm_hour, utc.tm_min, utc.tm_sec,
                        now.tv_nsec / 1000000, static_cast<long>(::getpid()));
  if (n < 0) return;
  try {
    std::string line(head, static_cast<std::size_t>(n));
    line.append(event).push_back('\n');
    std::error_code ec;
    write_all(STDERR_FILENO, line.data(), line.size(), ec);
  } catch (...) {  // std::bad_alloc: drop the line
  }
}

// Sends one event to config.log, or the default log; a throwing user log
// must not break the pool's loop.
inline void log_event(const pool_config& config, std::string_view event) noexcept {
  if (!config.log) return default_log(event);
  try {
    config.log(event);
  } catch (...) {
    default_log(event);
  }
}

}  // namespace detail
}  // namespace prefork
