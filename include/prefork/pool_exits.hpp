// prefork/pool_exits.hpp: how workers leave the pool, and what the master
// makes of their leaving; the master's loop (pool.hpp) decides when.
//
// A worker asks to be recycled (max_requests, max_rss) in its scoreboard
// slot. A graceful stop is the QUIT byte on the worker's control pipe, then
// end of file; a quick stop is SIGTERM, then SIGKILL quick_stop_wait later.
// A worker whose heartbeat is older than `timeout`, or that did not drain
// within graceful_timeout, is killed. The master waits only for the
// children it knows, one waitpid(pid, WNOHANG) each, as libuv does: a child
// that a hook spawned (on_reload, a log pipe) is its owner's to wait for,
// and waitpid(-1) would steal its exit status. As PID 1 of a pid namespace,
// or as the subreaper of a refork, it reaps every child. A worker that
// dies unasked is a crash; one that does so within a second of starting,
// again and again, has its number respawned after a growing back-off
// (crash_backoff), so a program that cannot start does not fork in a loop.
//
// Stands on waitpid, kill and write.
#pragma once

#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <prefork/error.hpp>
#include <prefork/fd.hpp>
#include <prefork/pool_config.hpp>
#include <prefork/pool_detail.hpp>
#include <prefork/process.hpp>
#include <prefork/scoreboard.hpp>

namespace prefork::detail {

// The graceful stop message: the QUIT byte, then end of file, so the
// worker's stop_fd() stays readable from now on.
inline void send_quit(worker_record& r, std::chrono::steady_clock::time_point now,
                      std::chrono::milliseconds graceful_timeout) {
  if (r.quit_sent) return;
  r.quit_sent = r.retiring = true;
  r.drain_deadline = now + graceful_timeout;
  char b = static_cast<char>(SIGQUIT);
  [[maybe_unused]] io_result ignored = write_some(r.control.get(), &b, 1);
  r.control.reset();
}

// TERM and INT: how long workers get to die of SIGTERM before SIGKILL.
inline constexpr std::chrono::milliseconds quick_stop_wait{2000};

// The quick stop: SIGTERM to every worker whose pid is known (a worker
// ordered from a mold has none until it reports it).
inline void send_term(pool_state& s) noexcept {
  for (worker_record& r : s.workers) {
    r.term_sent = true;
    if (r.pid != 0) ::kill(r.pid, SIGTERM);
  }
}

// The end of a stop's time: SIGKILL to every worker still there.
inline void kill_remaining(pool_state& s, const pool_config& config) {
  for (worker_record& r : s.workers) {
    if (r.killed || r.pid == 0) continue;
    log_event(config, worker_name(r) + " still running at the end of the stop: SIGKILL");
    r.killed = true;
    ::kill(r.pid, SIGKILL);
  }
}

// First fast death: respawn at once; then 0.1s, 0.2s, 0.4s ... capped at 5s.
inline std::chrono::milliseconds crash_backoff(unsigned fast_deaths) {
  if (fast_deaths <= 1) return std::chrono::milliseconds(0);
  unsigned shift = std::min(fast_deaths - 2, 16u);
  return std::min(std::chrono::milliseconds(100LL << shift), std::chrono::milliseconds(5000));
}

// A worker that asked to be recycled (max_requests, max_rss), seen in its
// slot: counted, logged, and marked to be replaced; it serves on until its
// replacement is ready.
inline void notice_recycling(pool_state& s, const pool_config& config, worker_record& r) {
  slot_cells& c = s.board->cells(r.slot);
  auto why = static_cast<retire_reason>(c.retire.load(std::memory_order_relaxed));
  if (why == retire_reason::none || r.retiring) return;
  r.retiring = true;
  s.board->count_restart(why == retire_reason::max_requests ? restart_cause::max_requests
                                                            : restart_cause::max_rss);
  if (why == retire_reason::max_requests)
    log_event(config, worker_name(r) + " served " + std::to_string(c.requests.load()) +
                          " requests (max_requests " + std::to_string(config.max_requests) +
                          "): replacing it");
  else
    log_event(config, worker_name(r) + " is above max_rss (" + std::to_string(config.max_rss) +
                          " bytes): replacing it");
}

// SIGKILL for workers whose heartbeat is older than `timeout`, and (unless
// the pool is stopping, which has its own deadline) for those that did not
// drain within graceful_timeout. Returns when to look again.
inline std::chrono::steady_clock::time_point kill_silent_workers(pool_state& s, const pool_config& config,
                                                                 std::chrono::steady_clock::time_point now,
                                                                 bool draining_counts) {
  auto next = std::chrono::steady_clock::time_point::max();
  const std::int64_t now_ns =
      std::chrono::duration_cast<std::chrono::nanoseconds>(now.time_since_epoch()).count();
  for (worker_record& r : s.workers) {
    if (r.killed || r.pid == 0) continue;  // pid 0: ordered from the mold (reforker::check)
    if (r.quit_sent && draining_counts) {
      if (now >= r.drain_deadline) {
        log_event(config, worker_name(r) + " did not finish within graceful_timeout: SIGKILL");
        r.killed = true;
        ::kill(r.pid, SIGKILL);
        continue;
      }
      next = std::min(next, r.drain_deadline);
    }
    std::int64_t last = s.board->cells(r.slot).last_tick_ns.load(std::memory_order_relaxed);
    auto silent = std::chrono::nanoseconds(now_ns - last);
    if (silent < config.timeout) {
      next = std::min(next, from_ns(last) + config.timeout);
      continue;
    }
    r.killed = true;
    ::kill(r.pid, SIGKILL);
    s.board->count_restart(restart_cause::timeout);
    bump(s.board->master_cells().timeouts_killed);
    std::string activity = s.board->slot(r.slot).activity;
    log_event(config, worker_name(r) + " silent for " + seconds(silent) + " (timeout " +
                          seconds(config.timeout) + "), last activity \"" + activity +
                          "\": killed with SIGKILL");
  }
  return next;
}

// Calls reaped(pid, status) for each child of `known` that is gone (status
// empty when another waitpid(-1) took it first) and, with `every_child`,
// for every other child that exited.
template <class Reaped>
void reap_children(const std::vector<pid_t>& known, bool every_child, Reaped&& reaped) {
  for (pid_t pid : known) {
    int status = 0;
    pid_t got = retry([&] { return ::waitpid(pid, &status, WNOHANG); });
    if (got == pid) {
      reaped(pid, std::optional<exit_status>(exit_status(status)));
    } else if (got == -1 && errno == ECHILD) {
      reaped(pid, std::optional<exit_status>());  // someone else's waitpid(-1) took it: gone, status unknown
    }
  }
  if (!every_child) return;
  for (;;) {
    int status = 0;
    pid_t pid = retry([&] { return ::waitpid(-1, &status, WNOHANG); });
    if (pid <= 0) return;  // 0: none exited; ECHILD: no children at all
    reaped(pid, std::optional<exit_status>(exit_status(status)));
  }
}

// What the exit of worker `r` means: a crash unless it was asked to go or
// killed; within a second of starting, unasked, one more fast death of its
// number, which sets the number's back-off. Counts it in the scoreboard and
// returns the line for the log.
inline std::string account_exit(pool_state& s, const worker_record& r,
                                const std::optional<exit_status>& status,
                                std::chrono::steady_clock::time_point now) {
  std::string how = status ? status->describe() : "was reaped by another waitpid (status unknown)";
  auto lived = now - r.spawned;
  std::string line = worker_name(r) + " " + how + " after " + seconds(lived);
  respawn_health& health = s.health_of(r.index);
  bool asked_to_go = r.quit_sent || r.term_sent;
  if (!asked_to_go && !r.killed) s.board->count_restart(restart_cause::crash);
  if (!asked_to_go && lived < std::chrono::seconds(1)) {
    ++health.fast_deaths;
    auto delay = crash_backoff(health.fast_deaths);
    health.not_before = now + delay;
    if (delay.count() > 0) bump(s.board->master_cells().crash_backoffs);
    if (delay.count() > 0)
      line += "; died within a second of starting " + std::to_string(health.fast_deaths) +
              " times in a row, respawning in " + seconds(delay);
  } else {
    health.fast_deaths = 0;
  }
  return line;
}

// Frees the scoreboard slot of a reaped worker and forgets it.
inline void forget_worker(pool_state& s, std::vector<worker_record>::iterator it) {
  slot_cells& c = s.board->cells(it->slot);
  c.pid.store(0, std::memory_order_relaxed);
  c.state.store(static_cast<std::int32_t>(worker_state::free), std::memory_order_release);
  s.workers.erase(it);
}

}  // namespace prefork::detail
