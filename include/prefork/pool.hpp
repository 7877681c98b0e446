// prefork/pool.hpp: prefork::master, the Unicorn-style preforking pool.
//
// master(config).run(work) binds nothing itself: it takes the listening
// sockets of the config (or inherited_fds()), creates the scoreboard, forks
// `workers` workers that each run work(worker&) after after_fork, and then
// supervises them from one single-threaded loop: wait in poll(2) on the
// signal pipe and the workers' wake-up pipe, with the nearest deadline as
// timeout (a heartbeat, a back-off, a drain), never on a fixed interval; reap
// every dead child; handle queued signals in arrival order; kill workers
// whose heartbeat is older than `timeout`; fork workers until the wanted
// number run. The signals mean what they mean to Unicorn (docs: DESIGN.md
// section 5): QUIT graceful stop, TERM/INT quick stop, USR1 reopen logs, HUP
// reload and replace every worker (new ones first), WINCH stop the workers
// but keep the master, TTIN/TTOU one worker more/fewer, USR2 upgrade the
// program without closing a socket (upgrade.hpp), URG promote a warm worker
// to be the mold of the next workers (refork.hpp). Under systemd it reports
// READY, RELOADING, STOPPING, STATUS, WATCHDOG and EXTEND_TIMEOUT_USEC.
// The loop decides; the mechanics are apart: a worker's start in
// pool_spawn.hpp, its stop, death and reaping in pool_exits.hpp, the
// bookkeeping in pool_detail.hpp.
// Stands on fork, waitpid, kill, poll, pipe2, and /proc/self/status.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <prefork/error.hpp>
#include <prefork/exec.hpp>
#include <prefork/fd.hpp>
#include <prefork/fd_passing.hpp>
#include <prefork/file.hpp>
#include <prefork/pipe.hpp>
#include <prefork/pool_config.hpp>
#include <prefork/pool_detail.hpp>
#include <prefork/pool_exits.hpp>
#include <prefork/pool_spawn.hpp>
#include <prefork/process.hpp>
#include <prefork/refork.hpp>
#include <prefork/reuseport.hpp>
#include <prefork/scoreboard.hpp>
#include <prefork/signal.hpp>
#include <prefork/socket.hpp>
#include <prefork/systemd.hpp>
#include <prefork/upgrade.hpp>
#include <prefork/worker.hpp>

namespace prefork {

class master {
 public:
  // Checks the config and creates the scoreboard; throws
  // std::invalid_argument naming what is wrong. Forks nothing.
  explicit master(pool_config config) : config_(std::move(config)) {
    if (config_.reuseport) slots_.adopt_inherited();  // after an upgrade; before the listeners are taken
    detail::check_limits(config_);
    if (config_.listeners.empty()) {
      inherited given = take_inherited_fds();
      config_.listeners = std::move(given.fds);
      bool named = std::any_of(given.names.begin(), given.names.end(), [](auto& n) { return !n.empty(); });
      if (config_.listener_names.empty() && named) config_.listener_names = std::move(given.names);
    }
    if (config_.listeners.empty())
      throw std::invalid_argument(
          "pool_config: no listeners (none given, none inherited through PREFORK_FDS or LISTEN_FDS)");
    for (const fd& l : config_.listeners) detail::check_listener(l.get());
    detail::check_fd_names("pool_config: listener_names", config_.listener_names, config_.listeners.size());
    if (config_.reuseport) detail::slot_listeners::check(config_.listeners);
    refork_.configure(config_);
    // A new image of an in-place upgrade takes the old one's scoreboard,
    // wake-up pipe and workers instead.
    adopted_ = upgrade_.take_over(state_, config_);
    // A scoreboard of our own otherwise (with a fork_exec predecessor's
    // counters), or when the previous image's has another layout.
    if (!state_.board) detail::fresh_board(state_, config_.max_workers, upgrade_.carried_counters());
    state_.wanted = config_.workers;
    // Slot sockets handed over by an upgrade receive connections: each needs a worker.
    if (config_.reuseport) state_.wanted = std::max(state_.wanted, slots_.count());
  }

  master(const master&) = delete;
  master& operator=(const master&) = delete;

  // Runs the pool until a stop signal; returns the exit code for main (0).
  // Throws before forking anything on bad input: a thread besides this one,
  // an unwritable pid file, a pid file of a live master.
  int run(std::function<void(worker&)> work) {
    if (!work) throw std::invalid_argument("master::run: no work function");
    if (running_) throw std::logic_error("master::run: already ran");
    detail::refuse_threads("master::run");
    refork_.start();
    running_ = true;
    work_ = std::move(work);
    detail::occupy_std_fds();
    // Inherited descriptors that no listen() and no config took would stay
    // open, unused, in the master and every worker: they go now.
    inherited unused = take_inherited_fds();
    if (!config_.pid_file.empty()) pid_file_ = pid_file::create(config_.pid_file);
    detail::ignored_sigpipe no_sigpipe;  // a dead worker's control pipe must give EPIPE, not kill us
    signal_pipe sigs{SIGQUIT,  SIGTERM, SIGINT,  SIGUSR1, SIGUSR2, SIGHUP,
                     SIGWINCH, SIGTTIN, SIGTTOU, SIGURG,  SIGCHLD};
    sigs_ = &sigs;
    if (adopted_) {
      // The previous image blocked every signal for its exec; our handlers
      // are in place, so what arrived meanwhile is delivered now.
      detail::unblock_all_signals();
    } else {
      pipe_ends wake = pipe(O_NONBLOCK);
      state_.wake_read = std::move(wake.read);
      state_.wake_write = std::move(wake.write);
      state_.generation = 1;
    }
    for (const fd& l : config_.listeners) l.set_nonblocking(true);
    log("master started: " + std::to_string(config_.workers) + " workers, listening on " +
        detail::describe_listeners(config_.listeners) +
        (upgrade_.old_master() ? " (upgrade from pid " + std::to_string(upgrade_.old_master()) + ")" : ""));
    for (const std::string& line : upgrade_.take_messages()) log(line);
    if (!unused.fds.empty())
      log("closing " + std::to_string(unused.fds.size()) + " inherited descriptors (" + unused.source +
          ") that no listener took: " + detail::describe_listeners(unused.fds));
    unused = inherited();
    if (std::string problem = notifier_.start(); !problem.empty()) log(problem);
    for (;;) {
      next_wake_ = clock::time_point::max();
      try {
        // Signals first: a SIGCHLD record taken here must not stand for a
        // child that exited after the reaping.
        while (std::optional<signal_info> sig = upgrade_.next_signal(sigs)) handle_signal(*sig);
        reap_all_workers();
        detail::drain(state_.wake_read.get());
        const clock::time_point now = clock::now();
        notice_workers();
        murder_lazy_workers(now);
        wake_by(refork_.check(state_, config_, now));
        wake_by(upgrade_.check(config_, now));
        wake_by(notifier_.tick(now, state_, stop_ != stop_kind::none));
        if (stop_ == stop_kind::graceful && !state_.workers.empty())
          wake_by(notifier_.draining(now, stop_deadline_ + detail::quick_stop_wait));
        if (stop_ != stop_kind::none) {
          if (state_.workers.empty() && !upgrade_.successor_running()) break;
          enforce_stop_deadline(now);
        } else {
          maintain_worker_count(now);
        }
      } catch (const std::exception& e) {
        // Unicorn's rule: the master never dies from a bug in one round.
        log(std::string("master loop error: ") + e.what());
        wake_by(clock::now() + std::chrono::milliseconds(100));
      }
      master_sleep(sigs.fd());
    }
    log("stop complete");
    upgrade_.release();
    sigs_ = nullptr;
    state_.wake_read.reset();
    state_.wake_write.reset();
    pid_file_ = pid_file();  // removed now, while we still own it
    return 0;
  }

  const prefork::scoreboard& scoreboard() const noexcept { return *state_.board; }
  const pool_config& config() const noexcept { return config_; }
  // A refork by hand, as SIGURG (from a hook: the master has one thread).
  void refork() { refork_.request(config_); }

 private:
  using clock = std::chrono::steady_clock;
  enum class stop_kind { none, graceful, quick };

  void log(const std::string& event) const noexcept { detail::log_event(config_, event); }

  std::string name(const detail::worker_record& r) const { return detail::worker_name(r); }

  void wake_by(clock::time_point t) noexcept { next_wake_ = std::min(next_wake_, t); }

  // Sleeps until a signal, a worker's wake-up byte, or the nearest deadline.
  void master_sleep(int signal_fd) {
    int wait_ms = -1;
    if (next_wake_ != clock::time_point::max()) {
      auto left = std::chrono::ceil<std::chrono::milliseconds>(next_wake_ - clock::now()).count();
      wait_ms = static_cast<int>(std::clamp<long long>(left, 0, 1 << 30));
    }
    pollfd polls[2] = {{signal_fd, POLLIN, 0}, {state_.wake_read.get(), POLLIN, 0}};
    PREFORK_SYSCALL(poll)(polls, 2, wait_ms);  // EINTR: a signal, which is what we wait for
  }

  // The children the master knows: its workers, a new master of fork_exec
  // (pool_exits.hpp says why no others). A subreaper (refork) is the parent
  // of the mold's workers and of whatever else its descendants orphan.
  void reap_all_workers() {
    std::vector<pid_t> known;
    known.reserve(state_.workers.size() + 1);
    for (const detail::worker_record& r : state_.workers)
      if (r.pid != 0) known.push_back(r.pid);
    if (pid_t next = upgrade_.successor_pid()) known.push_back(next);
    detail::reap_children(
        known, ::getpid() == 1 || refork_.on(),
        [this](pid_t pid, const std::optional<exit_status>& status) { reaped(pid, status); });
  }

  void reaped(pid_t pid, const std::optional<exit_status>& status) {
    if (pid != 0) refork_.claim(state_, pid);  // a mold's worker whose pid was not read yet
    auto it = std::find_if(state_.workers.begin(), state_.workers.end(),
                           [&](const detail::worker_record& r) { return r.pid == pid; });
    // A new master reaped elsewhere is gone all the same: the upgrade must
    // learn it, or a stop would wait for it forever.
    if (upgrade_.reaped(pid, status ? *status : exit_status::unknown(), config_, pid_file_)) {
      slots_.forget_steering();  // a failed new image may have attached its own
      return;
    }
    if (it == state_.workers.end()) {
      if (status) log("reaped unknown child pid " + std::to_string(pid) + ": " + status->describe());
      return;
    }
    log(detail::account_exit(state_, *it, status, clock::now()));
    refork_.gone(*it, config_);
    detail::forget_worker(state_, it);
  }

  void handle_signal(const signal_info& info) {
    const int sig = info.signo;
    if (sig == SIGCHLD) return;  // its job was to wake us up to reap
    std::string signame(signal_name(sig));
    switch (sig) {
      case SIGQUIT: {
        // Who sent it decides whether it is a new master's hand-over.
        auto meaning = upgrade_.on_quit(config_, info);
        if (meaning == detail::upgrader::quit_meaning::ignore) return;
        if (meaning == detail::upgrader::quit_meaning::hand_over)
          notifier_.mute();  // the new master is the service
        return begin_stop(stop_kind::graceful, signame);
      }
      case SIGTERM:
        return begin_stop(config_.graceful_term ? stop_kind::graceful : stop_kind::quick, signame);
      case SIGINT: return begin_stop(stop_kind::quick, signame);
      case SIGUSR1: return detail::reopen_logs(config_, state_);
      case SIGUSR2: {
        detail::bump(state_.board->master_cells().upgrades);
        std::vector<std::string> slot_names;
        std::vector<int> slot_fds = slots_.handed_over(slot_names);
        return upgrade_.on_usr2(config_, state_, pid_file_, stop_ != stop_kind::none, *sigs_, slot_fds,
                                slot_names);
      }
      case SIGHUP: return reload();
      case SIGURG: return refork();
      case SIGWINCH:
        if (detail::has_controlling_terminal())
          return log(
              "received SIGWINCH: ignored, the master has a controlling terminal (resizing it sends WINCH)");
        state_.wanted = 0;
        return log("received SIGWINCH: stopping all workers gracefully, keeping the master and its sockets");
      case SIGTTIN:
        if (state_.wanted >= config_.max_workers)
          return log("received SIGTTIN: already at max_workers (" + std::to_string(config_.max_workers) +
                     ")");
        ++state_.wanted;
        return log("received SIGTTIN: now " + std::to_string(state_.wanted) + " workers");
      case SIGTTOU:
        if (state_.wanted > 0) --state_.wanted;
        return log("received SIGTTOU: now " + std::to_string(state_.wanted) + " workers");
      default: return log("received " + signame + ": ignored");
    }
  }

  void begin_stop(stop_kind kind, const std::string& signame) {
    if (stop_ == stop_kind::quick || (stop_ == kind))
      return log("received " + signame + ": already stopping");
    stop_ = kind;
    // After a hand-over the new master is the service: systemd must not
    // hear that it stops, nor a balancer asking the workers' health.
    if (!upgrade_.handed_over()) {
      state_.board->master_cells().stopping.store(1, std::memory_order_relaxed);
      notify("STOPPING=1");
    }
    const clock::time_point now = clock::now();
    if (kind == stop_kind::graceful) {
      stop_deadline_ = now + config_.graceful_timeout;
      log("received " + signame + ": graceful stop, " + std::to_string(state_.workers.size()) +
          " workers finish their requests (up to " + detail::seconds(config_.graceful_timeout) + ")");
      for (detail::worker_record& r : state_.workers) send_quit(r, now);
    } else {
      stop_deadline_ = now + detail::quick_stop_wait;
      log("received " + signame + ": quick stop, SIGTERM to " + std::to_string(state_.workers.size()) +
          " workers");
      detail::send_term(state_);
    }
    // Not a hand-over (that one took the new master off our hands): a new
    // master still starting must not outlive us.
    upgrade_.on_stop(config_, kind == stop_kind::graceful);
  }

  void enforce_stop_deadline(clock::time_point now) {
    if (now < stop_deadline_) return wake_by(stop_deadline_);
    detail::kill_remaining(state_, config_);
  }

  void send_quit(detail::worker_record& r, clock::time_point now) {
    detail::send_quit(r, now, config_.graceful_timeout);
  }

  void reload() {
    if (stop_ != stop_kind::none) return log("received SIGHUP: ignored while stopping");
    notify("RELOADING=1");
    if (config_.on_reload) {
      try {
        config_.on_reload();
      } catch (const std::exception& e) {
        notify("READY=1");
        return log(std::string("received SIGHUP: on_reload failed, keeping the current workers: ") +
                   e.what());
      }
    }
    ++state_.generation;
    detail::bump(state_.board->master_cells().reloads);
    state_.board->count_restart(restart_cause::reload, state_.workers.size());
    state_.wanted = config_.workers;  // a reload re-reads the count, undoing TTIN, TTOU and WINCH
    announced_generation_ = false;
    for (detail::worker_record& r : state_.workers) r.retiring = true;
    refork_.on_reload(state_, config_, clock::now());
    log("received SIGHUP: reloaded; replacing " + std::to_string(state_.workers.size()) +
        " workers with generation " + std::to_string(state_.generation));
  }

  // Reads the scoreboard: who became ready, who asked to be recycled.
  void notice_workers() {
    // First the pids that workers forked by the mold wrote into their slots.
    refork_.notice(state_, config_, stop_ == stop_kind::none && !upgrade_.in_progress() && state_.wanted > 0,
                   clock::now());
    for (detail::worker_record& r : state_.workers) {
      auto s = static_cast<worker_state>(state_.board->cells(r.slot).state.load(std::memory_order_acquire));
      if (!r.ready && (s == worker_state::idle || s == worker_state::busy)) {
        r.ready = true;
        log(name(r) + " ready");
      }
      detail::notice_recycling(state_, config_, r);
    }
    if (!announced_generation_ && stop_ == stop_kind::none && state_.ready_count() >= state_.wanted) {
      announced_generation_ = true;
      notify(upgrade_.ready_prefix() + "READY=1\nSTATUS=" + std::to_string(state_.ready_count()) +
             " workers ready");
      upgrade_.generation_ready(config_, state_, state_.ready_count());
      try {
        if (config_.on_ready) config_.on_ready();
      } catch (const std::exception& e) {
        log(std::string("on_ready failed: ") + e.what());
      }
    }
  }

  void murder_lazy_workers(clock::time_point now) {
    wake_by(detail::kill_silent_workers(state_, config_, now, stop_ == stop_kind::none));
  }

  void maintain_worker_count(clock::time_point now) {
    // With reuseport a slot beyond the wanted ones keeps a worker until its
    // queue is drained (reuseport.hpp).
    unsigned limit = state_.wanted;
    if (config_.reuseport) {
      wake_by(slots_.retire(state_.wanted, config_, now, [&](unsigned index) {
        return std::any_of(state_.workers.begin(), state_.workers.end(),
                           [&](const detail::worker_record& r) { return r.index == index; });
      }));
      limit = std::max(limit, slots_.count());
    }
    auto needed = [&](unsigned index) { return index < state_.wanted || slots_.draining(index); };
    for (unsigned index = 0; index < limit; ++index) {
      if (!needed(index)) continue;
      detail::worker_record* active = nullptr;
      for (detail::worker_record& r : state_.workers)
        if (r.index == index && !r.retiring) active = &r;
      if (active == nullptr) {
        detail::respawn_health& health = state_.health_of(index);
        if (now < health.not_before) {
          wake_by(health.not_before);
          continue;
        }
        if (refork_.mold(state_) != nullptr && refork_.one_booting(state_)) continue;  // one at a time
        std::optional<std::size_t> slot = state_.free_slot();
        if (!slot) {
          make_room(index, now);  // a reap frees one, and SIGCHLD wakes us then
          continue;
        }
        try {
          spawn(index, *slot, now);
          waiting_for_slot_ = false;
        } catch (const std::exception& e) {
          health.not_before = now + std::chrono::seconds(1);
          wake_by(health.not_before);
          log("cannot start worker " + std::to_string(index) + ": " + e.what() + "; retrying in 1s");
        }
      } else if (active->ready) {
        // Its replacement serves now: only then may the old one go.
        for (detail::worker_record& r : state_.workers)
          if (r.index == index && r.retiring && !r.quit_sent && r.role != detail::refork_role::mold &&
              r.role != detail::refork_role::promoting) {
            if (r.role == detail::refork_role::chosen) {
              refork_.promote(r, config_, now);
              wake_by(r.drain_deadline);
              continue;
            }
            log(name(r) + " replaced by pid " + std::to_string(active->pid) + ": asking it to stop");
            send_quit(r, now);
          }
      }
    }
    for (detail::worker_record& r : state_.workers)
      if (!needed(r.index) && !r.quit_sent && r.role != detail::refork_role::mold) {
        log(name(r) + " no longer wanted: asking it to stop");
        send_quit(r, now);
      }
    if (config_.reuseport) slots_.steer(state_.wanted, config_.listeners, config_, now);
  }

  // Every slot is taken, by old workers that are to be replaced (HUP,
  // recycling, an in-place upgrade) and their replacements: max_workers is
  // workers, or close to it. New first cannot work then, so the workers are
  // replaced one at a time: once nobody is on the way out and every
  // replacement started so far is ready, one old worker (this number's own
  // first) is asked to stop, and its replacement takes its slot. One worker
  // fewer serves meanwhile, never more than one.
  void make_room(unsigned index, clock::time_point now) {
    bool leaving = std::any_of(state_.workers.begin(), state_.workers.end(),
                               [](const auto& r) { return r.quit_sent || r.term_sent || r.killed; });
    bool booting = std::any_of(state_.workers.begin(), state_.workers.end(),
                               [](const auto& r) { return !r.retiring && !r.ready; });
    bool in_progress = leaving || booting;
    detail::worker_record* old = nullptr;
    if (!in_progress)
      for (detail::worker_record& r : state_.workers)
        if (r.retiring && r.role == detail::refork_role::none &&
            (old == nullptr || (r.index == index && old->index != index)))
          old = &r;
    if (old != nullptr) {
      log("no free slot for worker " + std::to_string(index) + " (max_workers " +
          std::to_string(config_.max_workers) + "): replacing one at a time, asking " + name(*old) +
          " to stop first");
      send_quit(*old, now);
      waiting_for_slot_ = true;
    } else if (!waiting_for_slot_) {
      waiting_for_slot_ = true;
      log("no free slot for worker " + std::to_string(index) + " (max_workers " +
          std::to_string(config_.max_workers) + "): waiting for " +
          (leaving ? "a worker to exit" : "a new worker to be ready"));
    }
  }

  // From the mold of the current generation if there is one (refork.hpp),
  // else from the master (pool_spawn.hpp).
  void spawn(unsigned index, std::size_t slot, clock::time_point now) {
    const detail::worker_record& r = detail::spawn_worker(
        {state_, config_, refork_, slots_, *sigs_, work_, jitter_seed_}, index, slot, now);
    wake_by(now + config_.timeout);  // its heartbeat deadline, should after_fork hang before the first tick
    if (r.pid != 0) log(name(r) + " spawned");
  }

  // READY, RELOADING, STOPPING, MAINPID: worth waiting for, a little.
  static void notify(std::string_view what) noexcept {
    detail::notify_service(what, std::chrono::seconds(2));
  }

  pool_config config_;
  std::function<void(worker&)> work_;
  detail::pool_state state_;
  detail::upgrader upgrade_;
  detail::slot_listeners slots_;
  detail::service_notifier notifier_;
  detail::reforker refork_;
  bool adopted_ = false;  // this image took over from an in-place upgrade
  pid_file pid_file_;
  signal_pipe* sigs_ = nullptr;
  bool running_ = false;
  bool announced_generation_ = false;
  bool waiting_for_slot_ = false;  // said so in the log
  stop_kind stop_ = stop_kind::none;
  clock::time_point stop_deadline_{};
  clock::time_point next_wake_{};
  std::uint64_t jitter_seed_ = static_cast<std::uint64_t>(::getpid()) * 0x9E3779B97F4A7C15ull ^
                               static_cast<std::uint64_t>(detail::monotonic_ns());
};

}  // namespace prefork
