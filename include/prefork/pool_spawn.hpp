// prefork/pool_spawn.hpp: how the master starts a worker, and the worker's
// first steps until its work function runs; the master's loop (pool.hpp)
// decides which number and which scoreboard slot.
//
// The slot is made ready first (number, generation, a heartbeat of now, a
// request limit with jitter, state booting), then the worker's control
// channel: a pipe, or under refork a socket pair, since the mold receives
// orders on it. The worker is forked from the master (with every signal
// blocked, so no handler of the master's runs in the child), or ordered
// from the mold of the current generation (refork.hpp); a failure frees the
// slot again. In the child, the master's signal pipe is forgotten, a
// worker's dispositions are set before signals are unblocked, every other
// worker's control channel and the wake-up pipe's reading end are closed,
// only the worker's own reuseport sockets are kept, and the child never
// returns into the master's code: it ends in _exit, so no destructor of the
// master's objects runs (the pid file would be removed).
//
// Stands on fork, pipe2, socketpair, sigprocmask, getppid and _exit.
#pragma once

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <prefork/fd.hpp>
#include <prefork/pipe.hpp>
#include <prefork/pool_config.hpp>
#include <prefork/pool_detail.hpp>
#include <prefork/process.hpp>
#include <prefork/refork.hpp>
#include <prefork/reuseport.hpp>
#include <prefork/scoreboard.hpp>
#include <prefork/signal.hpp>
#include <prefork/socket.hpp>
#include <prefork/worker.hpp>

namespace prefork::detail {

// max_requests plus up to 10%, so workers started together do not all
// retire together.
inline std::uint64_t jittered(unsigned max_requests, std::uint64_t& seed) {
  if (max_requests == 0) return 0;
  seed ^= seed << 13;
  seed ^= seed >> 7;
  seed ^= seed << 17;
  return max_requests + seed % (max_requests / 10 + 1);
}

// The parts of the master a new worker is made from; in the child, the
// copies it trims.
struct worker_origin {
  pool_state& state;
  pool_config& config;
  reforker& refork;
  slot_listeners& slots;
  signal_pipe& sigs;
  const std::function<void(worker&)>& work;
  std::uint64_t& jitter_seed;
};

// In the child, which never returns into the master's code.
[[noreturn]] inline void become_worker(const worker_origin& o, unsigned index, std::size_t slot, fd control) {
  const pid_t master_pid = ::getppid();
  o.sigs.forget_in_child();
  worker_signals();  // also unblocks, once dispositions are right
  for (worker_record& r : o.state.workers) r.control.reset();
  o.state.wake_read.reset();
  const std::vector<fd>* mine = &o.config.listeners;
  try {
    if (o.config.reuseport) {
      mine = &o.slots.of(index, o.config.listeners);
      o.slots.keep_only(index, o.config.listeners);
    }
  } catch (const std::exception& e) {
    log_event(o.config,
              "worker " + std::to_string(index) + " (pid " + std::to_string(::getpid()) + "): " + e.what());
    ::_exit(1);
  }
  worker_life::run(o.config, *mine, *o.state.board, slot, index, std::move(control), o.state.wake_write.get(),
                   o.work, master_pid);
}

// Starts worker `index` in scoreboard slot `slot`, from the mold of the
// current generation if there is one, else from the master, and adds its
// record (pid 0 when the mold forks it, until it reports) to the state.
inline const worker_record& spawn_worker(const worker_origin& o, unsigned index, std::size_t slot,
                                         std::chrono::steady_clock::time_point now) {
  pool_state& s = o.state;
  const pool_config& config = o.config;
  worker_record* mold = o.refork.mold(s);
  if (mold == nullptr) refuse_threads("master: respawning a worker");
  slot_cells& c = s.board->cells(slot);
  const std::int64_t now_ns =
      std::chrono::duration_cast<std::chrono::nanoseconds>(now.time_since_epoch()).count();
  c.pid.store(0);
  c.index.store(index);
  c.generation.store(s.generation);
  c.started_ns.store(now_ns);
  c.last_tick_ns.store(now_ns);
  c.requests.store(0);
  c.request_limit.store(jittered(config.max_requests, o.jitter_seed));
  c.retire.store(0);
  write_activity(c, "");
  c.state.store(static_cast<std::int32_t>(worker_state::booting), std::memory_order_release);
  pid_t pid = 0;
  fd ours;
  try {
    if (config.reuseport) o.slots.of(index, config.listeners);  // opened here, where failing is safe
    // A refork's control channel is a socket: the mold receives orders on it.
    std::pair<fd, fd> control;
    if (o.refork.on()) {
      control = socket_pair(SOCK_STREAM | SOCK_NONBLOCK);
    } else {
      pipe_ends p = pipe(O_NONBLOCK);
      control = {std::move(p.read), std::move(p.write)};
    }
    if (mold != nullptr) {
      o.refork.order(*mold, slot, control.first.get());
    } else {
      (void)std::fflush(nullptr);  // or buffered output would be written twice, by both processes
      blocked_signals blocked;     // no handler of ours may run in the child
      std::optional<child> forked = prefork::fork();
      if (!forked) {
        control.second.reset();  // the master's end: the worker must see end of file when it closes
        become_worker(o, index, slot, std::move(control.first));
      }
      pid = forked->detach();
    }
    ours = std::move(control.second);  // the worker's end closes here, before it can be seen serving
  } catch (...) {
    c.state.store(static_cast<std::int32_t>(worker_state::free));  // no ghost in the scoreboard
    throw;
  }
  worker_record r;
  r.pid = pid;
  r.index = index;
  r.generation = s.generation;
  r.slot = slot;
  r.control = std::move(ours);
  r.spawned = now;
  r.via_mold = mold != nullptr;
  if (pid != 0) c.pid.store(pid);
  s.workers.push_back(std::move(r));
  return s.workers.back();
}

}  // namespace prefork::detail
