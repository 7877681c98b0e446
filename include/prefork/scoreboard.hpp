// prefork/scoreboard.hpp: the pool's scoreboard, one slot per worker in
// memory shared by the master and every worker.
//
// A worker writes its own slot (state, heartbeat tick, requests served, a
// short activity text) and the master reads them all: that is how the master
// knows a new worker is ready, which worker went silent and what it was
// doing, and how a status page can show the pool. The memory is a
// shared_array over a memfd (shm.hpp), created before the first fork, so a
// worker's writes are seen by the master without any system call; every cell
// is a lock-free atomic because two processes touch it at once. Times are
// CLOCK_MONOTONIC nanoseconds (std::chrono::steady_clock on Linux), which all
// processes of one boot share; heartbeats read it through clock_gettime's
// coarse variant, which is cheap enough to tick after every request.
#pragma once

#include <sys/types.h>
#include <time.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <prefork/shm.hpp>

namespace prefork {

enum class worker_state : std::int32_t {
  free = 0,  // no worker in this slot
  booting,   // forked, running after_fork; not ready yet
  idle,      // waiting in worker::accept()
  busy,      // serving a connection
  stopping,  // a graceful stop was asked for; finishing the request in hand
  mold,      // promoted: serves nothing, forks the workers of its generation (refork.hpp)
};

inline const char* to_string(worker_state s) noexcept {
  switch (s) {
    case worker_state::free: return "free";
    case worker_state::booting: return "booting";
    case worker_state::idle: return "idle";
    case worker_state::busy: return "busy";
    case worker_state::stopping: return "stopping";
    case worker_state::mold: return "mold";
  }
  return "?";
}

// One slot as read at one moment.
struct worker_info {
  pid_t pid = 0;
  unsigned index = 0;       // the worker's number, 0 .. workers-1
  unsigned generation = 0;  // HUP starts a new one
  worker_state state = worker_state::free;
  std::chrono::steady_clock::time_point started, last_tick;
  std::uint64_t requests = 0;  // since this worker started (max_requests counts these)
  std::string activity;        // worker::status()

  bool ready() const noexcept { return state == worker_state::idle || state == worker_state::busy; }
};

// The request-duration histogram's upper bounds in seconds (Prometheus's
// "le"), the last one +Inf. Fixed, so counting is one relaxed add.
inline constexpr double request_buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                             0.1,    0.25,  0.5,    1,     2.5,  5,     10};
inline constexpr std::size_t request_bucket_count = sizeof request_buckets / sizeof request_buckets[0] + 1;

// What the workers that used one slot served, over the master's life: unlike
// worker_info::requests these are not reset when a new worker takes the
// slot, so they only grow (Prometheus counters). Filled by
// worker::request_done(status, bytes, took).
struct slot_totals {
  std::uint64_t by_class[6] = {};  // [1] .. [5]: 1xx .. 5xx; [0]: anything else
  std::uint64_t bytes_sent = 0;
  std::uint64_t duration_us = 0;                     // sum of request times
  std::uint64_t buckets[request_bucket_count] = {};  // not cumulative: one per range
  std::uint64_t requests() const noexcept {
    std::uint64_t n = 0;
    for (std::uint64_t c : by_class) n += c;
    return n;
  }
};

// Why the master replaced a worker (master_totals::restarts).
enum class restart_cause : std::int32_t { crash = 0, timeout, max_requests, max_rss, reload };
inline constexpr std::size_t restart_cause_count = 5;
inline const char* to_string(restart_cause c) noexcept {
  switch (c) {
    case restart_cause::crash: return "crash";
    case restart_cause::timeout: return "timeout";
    case restart_cause::max_requests: return "max_requests";
    case restart_cause::max_rss: return "max_rss";
    case restart_cause::reload: return "reload";
  }
  return "?";
}

// The master's own counters, as read at one moment. They count over the
// life of the service, not of one master process: an in-place upgrade keeps
// the scoreboard that holds them, and a fork_exec upgrade hands them to the
// new master (PREFORK_UPGRADE_COUNTERS, upgrade_handover.hpp), so they never
// go back to zero behind a Prometheus counter. started_unix is this master
// image's own start.
struct master_totals {
  std::chrono::system_clock::time_point started_unix;
  std::uint64_t restarts[restart_cause_count] = {};  // by restart_cause
  std::uint64_t timeouts_killed = 0;                 // workers killed for a silent heartbeat
  std::uint64_t crash_backoffs = 0;                  // respawns delayed after fast deaths
  std::uint64_t upgrades = 0;                        // USR2 received and an upgrade begun
  std::uint64_t reloads = 0;                         // HUP reloads done
};

namespace detail {

inline std::int64_t monotonic_ns() noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// The same clock as of the kernel's last timer tick: a few milliseconds
// behind at most, and several times cheaper to read. The heartbeat uses
// it, so a worker can tick after every request for nearly nothing.
inline std::int64_t coarse_monotonic_ns() noexcept {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

inline std::chrono::steady_clock::time_point from_ns(std::int64_t ns) noexcept {
  return std::chrono::steady_clock::time_point(
      std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::nanoseconds(ns)));
}

// Why recycling asked for a worker to be replaced.
enum class retire_reason : std::int32_t { none = 0, max_requests, max_rss };

// Per-slot totals (slot_totals), on their own cache lines so a worker's
// counting does not slow the master's reads of the slot's heartbeat.
struct alignas(64) slot_counters {
  std::atomic<std::uint64_t> by_class[6];
  std::atomic<std::uint64_t> bytes_sent;
  std::atomic<std::uint64_t> duration_us;
  std::atomic<std::uint64_t> buckets[request_bucket_count];
};

// The master's counters: one block, written by the master only.
struct master_cells {
  std::atomic<std::int64_t> started_unix_ns;
  std::atomic<std::uint64_t> restarts[restart_cause_count];
  std::atomic<std::uint64_t> timeouts_killed;
  std::atomic<std::uint64_t> crash_backoffs;
  std::atomic<std::uint64_t> upgrades;
  std::atomic<std::uint64_t> reloads;
  std::atomic<std::int32_t> stopping;  // 1 from the moment the master begins a stop (not a hand-over)
};

inline void bump(std::atomic<std::uint64_t>& counter, std::uint64_t by = 1) noexcept {
  counter.fetch_add(by, std::memory_order_relaxed);
}

// One served request into a slot's totals: a handful of relaxed adds to
// memory only this worker writes, no system call.
inline void count_request(slot_counters& c, int status, std::uint64_t bytes, std::int64_t took_ns) noexcept {
  std::size_t cls = status >= 100 && status < 600 ? static_cast<std::size_t>(status / 100) : 0;
  bump(c.by_class[cls]);
  bump(c.bytes_sent, bytes);
  if (took_ns < 0) took_ns = 0;
  bump(c.duration_us, static_cast<std::uint64_t>(took_ns / 1000));
  const double s = static_cast<double>(took_ns) / 1e9;
  std::size_t b = 0;
  while (b < request_bucket_count - 1 && s > request_buckets[b]) ++b;
  bump(c.buckets[b]);
}

// The cells of one slot. Relaxed atomics suffice for counters and ticks; the
// activity text is guarded by a sequence number (odd while being written) so
// a reader never shows half of one text and half of another.
struct slot_cells {
  static constexpr std::size_t activity_size = 64;
  std::atomic<std::int32_t> pid;
  std::atomic<std::uint32_t> index;
  std::atomic<std::uint32_t> generation;
  std::atomic<std::int32_t> state;
  std::atomic<std::int64_t> started_ns;
  std::atomic<std::int64_t> last_tick_ns;
  std::atomic<std::uint64_t> requests;
  std::atomic<std::uint64_t> request_limit;  // max_requests with jitter; 0: none
  std::atomic<std::int32_t> retire;          // retire_reason, set by the worker
  std::atomic<std::uint32_t> activity_seq;
  std::atomic<char> activity[activity_size];
  slot_counters totals;
  // The master's counters live in slot 0's cells, so everything that maps
  // the scoreboard's one memfd (a worker, an in-place upgrade's new image,
  // a test) sees them; the other slots leave these zero.
  master_cells master;
};

// The scoreboard's layout: what an in-place upgrade checks before it maps
// the previous image's memfd (adopt_handover, upgrade_handover.hpp). Bump
// the number whenever slot_cells or master_cells change; the size catches a
// forgotten bump and a build with other alignment.
inline constexpr std::uint32_t scoreboard_layout = 2;
inline constexpr std::size_t scoreboard_slot_size = sizeof(slot_cells);

static_assert(std::atomic<std::int64_t>::is_always_lock_free &&
                  std::atomic<std::int32_t>::is_always_lock_free,
              "the scoreboard needs lock-free atomics: a lock in shared memory dies with its holder");

}  // namespace detail

// The scoreboard. Users get it read-only (master::scoreboard(),
// worker::scoreboard()); the master and workers write through detail.
class scoreboard {
 public:
  explicit scoreboard(std::size_t slots) : cells_(slots) { stamp_start(); }

  std::size_t size() const noexcept { return cells_.size(); }

  // A snapshot of slot i (throws std::out_of_range past size()).
  worker_info slot(std::size_t i) const {
    if (i >= size())
      throw std::out_of_range("scoreboard slot " + std::to_string(i) + " of " + std::to_string(size()));
    const detail::slot_cells& c = cells_[i];
    worker_info w;
    w.pid = c.pid.load(std::memory_order_relaxed);
    w.index = c.index.load(std::memory_order_relaxed);
    w.generation = c.generation.load(std::memory_order_relaxed);
    w.state = static_cast<worker_state>(c.state.load(std::memory_order_acquire));
    w.started = detail::from_ns(c.started_ns.load(std::memory_order_relaxed));
    w.last_tick = detail::from_ns(c.last_tick_ns.load(std::memory_order_relaxed));
    w.requests = c.requests.load(std::memory_order_relaxed);
    w.activity = read_activity(c);
    return w;
  }

  // Slot i's totals over the master's life (throws past size()).
  slot_totals totals(std::size_t i) const {
    if (i >= size())
      throw std::out_of_range("scoreboard totals " + std::to_string(i) + " of " + std::to_string(size()));
    const detail::slot_counters& c = cells_[i].totals;
    slot_totals t;
    for (std::size_t k = 0; k < 6; ++k) t.by_class[k] = c.by_class[k].load(std::memory_order_relaxed);
    t.bytes_sent = c.bytes_sent.load(std::memory_order_relaxed);
    t.duration_us = c.duration_us.load(std::memory_order_relaxed);
    for (std::size_t k = 0; k < request_bucket_count; ++k)
      t.buckets[k] = c.buckets[k].load(std::memory_order_relaxed);
    return t;
  }

  // The master's counters.
  master_totals master() const noexcept {
    const detail::master_cells& m = cells_[0].master;
    master_totals t;
    t.started_unix =
        std::chrono::system_clock::time_point(std::chrono::duration_cast<std::chrono::system_clock::duration>(
            std::chrono::nanoseconds(m.started_unix_ns.load(std::memory_order_relaxed))));
    for (std::size_t k = 0; k < restart_cause_count; ++k)
      t.restarts[k] = m.restarts[k].load(std::memory_order_relaxed);
    t.timeouts_killed = m.timeouts_killed.load(std::memory_order_relaxed);
    t.crash_backoffs = m.crash_backoffs.load(std::memory_order_relaxed);
    t.upgrades = m.upgrades.load(std::memory_order_relaxed);
    t.reloads = m.reloads.load(std::memory_order_relaxed);
    return t;
  }

  // True from the moment the master began to stop (QUIT, TERM, INT), so a
  // health check can say so while the workers still finish their requests.
  // Not set when an old master stops after handing over to a new one, nor
  // for workers retired by HUP: the service goes on then.
  bool master_stopping() const noexcept {
    return cells_[0].master.stopping.load(std::memory_order_relaxed) != 0;
  }

  // How many slots are in `s` now.
  std::size_t count(worker_state s) const noexcept {
    std::size_t n = 0;
    for (std::size_t i = 0; i < size(); ++i)
      if (cells_[i].state.load(std::memory_order_relaxed) == static_cast<std::int32_t>(s)) ++n;
    return n;
  }

  // Workers that are serving or waiting for a connection, as of one moment.
  // Slots change while they are read: a new worker in slot 0 read before it
  // became ready and the old one it replaces in slot 5 read after it began
  // stopping would show a dip that never happened. So the slots are read
  // twice, until two passes agree (a "double collect"): then every value
  // held at once, between the passes.
  std::size_t ready() const {
    std::vector<bool> first(size()), again(size());
    auto collect = [this](std::vector<bool>& out) {
      for (std::size_t i = 0; i < out.size(); ++i) {
        auto s = static_cast<worker_state>(cells_[i].state.load(std::memory_order_acquire));
        out[i] = s == worker_state::idle || s == worker_state::busy;
      }
    };
    collect(first);
    for (int attempt = 0; attempt < 1000; ++attempt) {
      collect(again);
      if (again == first) break;
      first.swap(again);
    }
    return static_cast<std::size_t>(std::count(again.begin(), again.end(), true));
  }

  // The memfd behind the slots and the master's counters, to keep across
  // an in-place exec (which so keeps counting; a fork+exec upgrade's new
  // master has a scoreboard of its own and is handed the counters).
  int memfd() const noexcept { return cells_.memfd(); }
  static scoreboard from_fd(int memfd) {
    return scoreboard(shared_array<detail::slot_cells>::from_fd(memfd));
  }

  // For the master and the worker: the raw cells of slot i.
  detail::slot_cells& cells(std::size_t i) const noexcept { return cells_[i]; }
  // For the master: its counters (one-line bumps where it logs the events).
  detail::master_cells& master_cells() const noexcept { return cells_[0].master; }
  void count_restart(restart_cause why, std::uint64_t n = 1) const noexcept {
    detail::bump(cells_[0].master.restarts[static_cast<std::size_t>(why)], n);
  }
  // For a new master: the counters of the one before it, added to its own.
  void carry_counters(const master_totals& from) const noexcept {
    detail::master_cells& m = cells_[0].master;
    for (std::size_t k = 0; k < restart_cause_count; ++k) detail::bump(m.restarts[k], from.restarts[k]);
    detail::bump(m.timeouts_killed, from.timeouts_killed);
    detail::bump(m.crash_backoffs, from.crash_backoffs);
    detail::bump(m.upgrades, from.upgrades);
    detail::bump(m.reloads, from.reloads);
  }

 private:
  explicit scoreboard(shared_array<detail::slot_cells> cells) : cells_(std::move(cells)) {}

  void stamp_start() noexcept {
    cells_[0].master.started_unix_ns.store(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                               std::chrono::system_clock::now().time_since_epoch())
                                               .count(),
                                           std::memory_order_relaxed);
  }

  static std::string read_activity(const detail::slot_cells& c) {
    char buf[detail::slot_cells::activity_size];
    for (int attempt = 0; attempt < 100; ++attempt) {
      std::uint32_t before = c.activity_seq.load(std::memory_order_acquire);
      if (before & 1u) continue;  // being written
      std::size_t n = 0;
      for (; n < sizeof buf; ++n) {
        // Acquire: the second look at the sequence below cannot move above
        // these loads, and a character from a write in progress makes it
        // see that write's odd number. (No fences: ThreadSanitizer does
        // not model them, and these cost nothing more on x86 or ARMv8.)
        buf[n] = c.activity[n].load(std::memory_order_acquire);
        if (buf[n] == '\0') break;
      }
      if (c.activity_seq.load(std::memory_order_relaxed) == before) return std::string(buf, n);
    }
    return "(being written)";
  }

  shared_array<detail::slot_cells> cells_;
};

namespace detail {

// The writer side of the activity text (one writer: the slot's worker).
inline void write_activity(slot_cells& c, std::string_view text) noexcept {
  std::uint32_t seq = c.activity_seq.load(std::memory_order_relaxed);
  c.activity_seq.store(seq + 1, std::memory_order_relaxed);
  // Release: whoever reads one of these characters also sees seq + 1.
  std::size_t n = text.size() < slot_cells::activity_size - 1 ? text.size() : slot_cells::activity_size - 1;
  for (std::size_t i = 0; i < n; ++i) c.activity[i].store(text[i], std::memory_order_release);
  c.activity[n].store('\0', std::memory_order_release);
  c.activity_seq.store(seq + 2, std::memory_order_release);
}

}  // namespace detail
}  // namespace prefork
