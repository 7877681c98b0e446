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
};

inline const char* to_string(worker_state s) noexcept {
  switch (s) {
    case worker_state::free: return "free";
    case worker_state::booting: return "booting";
    case worker_state::idle: return "idle";
    case worker_state::busy: return "busy";
    case worker_state::stopping: return "stopping";
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
  std::uint64_t requests = 0;
  std::string activity;  // worker::status()

  bool ready() const noexcept { return state == worker_state::idle || state == worker_state::busy; }
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
};
static_assert(std::atomic<std::int64_t>::is_always_lock_free &&
                  std::atomic<std::int32_t>::is_always_lock_free,
              "the scoreboard needs lock-free atomics: a lock in shared memory dies with its holder");

}  // namespace detail

// The scoreboard. Users get it read-only (master::scoreboard(),
// worker::scoreboard()); the master and workers write through detail.
class scoreboard {
 public:
  explicit scoreboard(std::size_t slots) : cells_(slots) {}

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

  // The memfd behind the slots, to keep across an in-place exec.
  int memfd() const noexcept { return cells_.memfd(); }
  static scoreboard from_fd(int memfd) {
    return scoreboard(shared_array<detail::slot_cells>::from_fd(memfd));
  }

  // For the master and the worker: the raw cells of slot i.
  detail::slot_cells& cells(std::size_t i) const noexcept { return cells_[i]; }

 private:
  explicit scoreboard(shared_array<detail::slot_cells> cells) : cells_(std::move(cells)) {}

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
