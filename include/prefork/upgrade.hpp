// prefork/upgrade.hpp: the pool's zero-downtime upgrade (USR2), kept apart
// from the master's loop in pool.hpp. docs/upgrades.md is the operator's view.
//
// Both modes keep every listening socket open throughout, so the kernel
// keeps queueing connections and none is refused; the new program finds them
// in PREFORK_FDS, which lists the listeners only, so a program that does
// `inherited_fds()` before building its master gets exactly its sockets.
//
// fork_exec: the master spawns startup_argv() (vfork-style, so an exec error
// comes back as an exception), with the pid file renamed to "<pid>.oldbin"
// and PREFORK_UPGRADE_FROM naming the old master. The new master QUITs the
// old one once all its workers are ready (under systemd after MAINPID= and
// READY=1). The old master rolls back, pid file name included, if the new
// one dies first or is not ready within upgrade_timeout.
//
// in_place: the master forks a courier that holds the pool's state as text
// (detail::pool_state: workers, generations, which control pipe is whose)
// and execs itself, keeping the listeners, the scoreboard's memfd, the
// wake-up pipe, the workers' control pipes and the courier's pipe, all at
// their numbers; PREFORK_UPGRADE_STATE names the pipe and the courier. Every
// signal stays blocked from before the courier's fork until the new image
// has its handlers, so nothing sent meanwhile meets a default action. The
// new image reads the state, reaps the courier and adopts the workers, which
// are still its children and never noticed. A failed exec changes nothing;
// a new generation not ready within upgrade_timeout leaves the old workers
// serving (they go only once replaced) and lets the next USR2 through.
//
// The phases of an upgrade, and what each signal does in each. Signals not
// named mean what they always mean (pool.hpp): HUP, USR1, TTIN, TTOU and
// WINCH act on this master's own workers in every phase, and SIGCHLD wakes
// the loop to reap. "Stop" is the master's own stop (QUIT graceful, TERM
// and INT quick; TERM graceful with graceful_term). A QUIT's sender comes
// from siginfo (signal_info::pid), so it cannot be forged by timing.
//
//   idle: no upgrade runs.
//     USR2             fork_exec: start the new master -> starting;
//                      in_place: -> exec'ing
//     QUIT, TERM, INT  stop
//   starting (fork_exec, old master): the new master boots, for up to
//   upgrade_timeout.
//     QUIT from the new master  its workers are ready: hand over (graceful
//                      stop, silent towards systemd) -> handed_over
//     QUIT from anyone else     an operator's stop: stop, and QUIT to the
//                      new master -> stopping_both
//     TERM, INT        stop, and TERM to the new master (QUIT when the stop
//                      is graceful) -> stopping_both
//     USR2             refused
//     new master exits rollback: pid file renamed back -> idle
//     upgrade_timeout  QUIT to the new master -> rolling_back
//   rolling_back (fork_exec, old master): the new master was not ready in
//   time and was asked to stop; SIGKILL once graceful_timeout +
//   quick_stop_wait + 1 s have passed.
//     QUIT from the new master  ignored: it was told to stop, and taking
//                      its late QUIT as a hand-over would leave nobody
//     QUIT from anyone else, TERM, INT  stop -> stopping_both (TERM, INT:
//                      TERM to the new master, to hasten its stop)
//     USR2             refused
//     new master exits rolled back -> idle
//   stopping_both (fork_exec, old master): this master stops, and so does
//   the new one; the master exits once its workers and the new master are
//   reaped. SIGKILL to the new master once its stop has had its time.
//     QUIT from the new master  ignored
//     TERM, INT        a graceful stop turns quick: TERM to the new master
//     USR2             ignored while stopping
//     new master exits reaped, pid file renamed back
//   handed_over (fork_exec, old master): the new master is the service and
//   no longer ours; this master drains its workers and exits.
//     QUIT             already stopping; TERM, INT: quick, for our workers
//     USR2             ignored while stopping
//   taking_over (fork_exec, the new master, until it has QUIT the old one):
//     every signal means what it always means; if the new master stops,
//     the old one rolls back when it reaps it.
//   exec'ing (in_place, old image, from USR2 to execve): every signal is
//     blocked, none is handled. Those already queued behind USR2 go to the
//     new image with the state and are handled there first, in order; those
//     sent meanwhile stay pending through execve and are delivered once the
//     new image has its handlers. If the exec fails, the old image handles
//     them, in order, -> idle.
//   adopting (in_place, new image, until the new generation is ready, or
//   upgrade_timeout passed: -> idle).
//     QUIT, TERM, INT  stop: old and new workers alike
//     HUP              reload: yet another generation replaces both
//     USR2             refused
//
// Stands on execve(2), spawn (clone), fork, pipe2, fcntl, close_range, kill.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <prefork/error.hpp>
#include <prefork/exec.hpp>
#include <prefork/fd.hpp>
#include <prefork/file.hpp>
#include <prefork/pipe.hpp>
#include <prefork/pool_config.hpp>
#include <prefork/pool_detail.hpp>
#include <prefork/pool_exits.hpp>
#include <prefork/process.hpp>
#include <prefork/scoreboard.hpp>
#include <prefork/signal.hpp>
#include <prefork/systemd.hpp>
#include <prefork/upgrade_handover.hpp>

extern char** environ;

namespace prefork::detail {

// fork_exec: the new master, with stdin, stdout, stderr and the listeners
// at their numbers, everything else closed, default signal dispositions.
inline child spawn_successor(const std::vector<int>& listeners, const std::vector<std::string>& names,
                             const master_totals& counters) {
  spawn_options options;
  for (int n = 0; n <= 2; ++n)
    if (::fcntl(n, F_GETFD) != -1) options.fds.emplace_back(n, n);
  for (int l : listeners) options.fds.emplace_back(l, l);
  options.env = successor_environment({"PREFORK_FDS=" + fd_list(listeners),
                                       std::string(upgrade_from_variable) + "=" + std::to_string(::getpid()),
                                       std::string(counters_variable) + "=" + encode_counters(counters)},
                                      names, true);
  options.cwd = startup_cwd();  // where a relative argv[0] was found at start
  return spawn(startup_argv(), options);
}

// Who sent a signal, for the log.
inline std::string sender_of(const signal_info& info) {
  if (info.sent_by_process()) return "pid " + std::to_string(info.pid);
  return "the kernel (a terminal, or no sender; si_code " + std::to_string(info.code) + ")";
}

// How long a new master asked to stop may take before SIGKILL, beyond its
// own stop: a round of its loop and the reaping of its workers.
inline constexpr std::chrono::milliseconds successor_stop_margin{1000};

// The master's side of USR2: the phase (the table at the top of this file),
// what it remembers, and what it does at each step. The master calls it
// from its loop: next_signal() for each signal; on_usr2, on_quit and
// on_stop from its handling of them; check() each round; reaped() for each
// child it reaps.
class upgrader {
 public:
  using clock = std::chrono::steady_clock;
  enum class phase { idle, starting, rolling_back, stopping_both, handed_over, adopting };

  // In the master's constructor, before the scoreboard exists: a new image
  // of an in-place upgrade adopts the previous one's state here (true), a
  // new master of fork_exec notes whom to QUIT once ready.
  bool take_over(pool_state& s, const pool_config& config) {
    old_master_ = take_upgrade_from_variable();
    carried_ = take_counters_variable();
    std::optional<handover_source> source = take_handover_variable();
    if (!source) return false;
    // End of file once the courier has written everything and exited.
    std::string text = read_all(source->pipe.get());
    source->pipe.reset();
    child courier = child::adopt(source->courier);
    std::string how = courier.wait().describe();
    const clock::time_point now = clock::now();
    // The pool's state ends with "end"; the queued signals follow it.
    std::size_t end = text.find("\nend\n");
    std::string refused;
    upgrades_ = adopt_handover(s, end == std::string::npos ? text : text.substr(0, end + 5), now, &refused);
    queued_ = decode_queued(end == std::string::npos ? std::string() : text.substr(end + 5));
    phase_ = phase::adopting;
    deadline_ = now + config.upgrade_timeout;
    ++s.generation;
    for (worker_record& r : s.workers) r.retiring = true;  // replaced one by one as HUP does
    messages_.push_back("master re-executed in place (upgrade " + std::to_string(upgrades_) + "): adopted " +
                        std::to_string(s.workers.size()) + " workers, courier (pid " +
                        std::to_string(courier.pid()) + ") " + how + "; starting generation " +
                        std::to_string(s.generation));
    for (const worker_record& r : s.workers)
      messages_.push_back("adopted worker " + std::to_string(r.index) + " (pid " + std::to_string(r.pid) +
                          ", generation " + std::to_string(r.generation) + ")");
    if (!refused.empty())
      messages_.push_back(
          "not adopting the previous image's scoreboard: " + refused +
          "; starting a fresh one (the adopted workers tick in the old one, unseen: the new generation "
          "replaces them as HUP does)");
    else if (s.board->size() < config.max_workers)
      messages_.push_back("keeping the previous image's scoreboard of " + std::to_string(s.board->size()) +
                          " slots (max_workers " + std::to_string(config.max_workers) + " takes a restart)");
    if (!queued_.empty())
      messages_.push_back(std::to_string(queued_.size()) +
                          " signals that came after SIGUSR2 are handled now: " + signal_list(queued_));
    return true;
  }

  // Lines take_over had to say before the log was running.
  std::vector<std::string> take_messages() { return std::exchange(messages_, {}); }

  pid_t old_master() const noexcept { return old_master_; }

  // The counters the previous master handed over (either mode), for a
  // scoreboard that did not come with them.
  const std::optional<master_totals>& carried_counters() const noexcept { return carried_; }

  // The next signal for the master to handle: those an in-place upgrade
  // handed over (or a failed exec kept) first, they are the older ones.
  std::optional<signal_info> next_signal(signal_pipe& sigs) {
    if (queued_.empty()) return sigs.next_info();
    signal_info oldest = queued_.front();
    queued_.pop_front();
    return oldest;
  }

  bool in_progress() const noexcept { return successor_.pid() != 0 || phase_ == phase::adopting; }

  // A new master runs that is still ours: the master must not exit before
  // it is reaped.
  bool successor_running() const noexcept { return successor_.pid() != 0; }
  pid_t successor_pid() const noexcept { return successor_.pid(); }  // 0: none (or handed over)

  std::string progress() const {
    if (successor_.pid() != 0) return "new master pid " + std::to_string(successor_.pid()) + " is starting";
    return "generation not yet ready after upgrade " + std::to_string(upgrades_);
  }

  // USR2. `extra_fds` (named `extra_names`) go with the listeners, after
  // them: reuseport's slot sockets (reuseport.hpp).
  void on_usr2(const pool_config& config, const pool_state& s, pid_file& pid, bool stopping,
               signal_pipe& sigs, const std::vector<int>& extra_fds = {},
               const std::vector<std::string>& extra_names = {}) {
    if (stopping) return log_event(config, "received SIGUSR2: ignored while stopping");
    if (in_progress())
      return log_event(config,
                       "received SIGUSR2: an upgrade is already in progress (" + progress() + "); refused");
    refuse_threads("master: upgrade");
    std::vector<int> listeners;
    for (const fd& l : config.listeners) listeners.push_back(l.get());
    std::vector<std::string> names = config.listener_names;
    if (!extra_fds.empty()) {
      names.resize(listeners.size());
      listeners.insert(listeners.end(), extra_fds.begin(), extra_fds.end());
      names.insert(names.end(), extra_names.begin(), extra_names.end());
    }
    if (config.upgrade == upgrade_mode::fork_exec)
      return start_fork_exec(config, pid, listeners, names, s.board->master());
    exec_in_place(config, s, listeners, names, sigs);
  }

  // fork_exec, on USR2: idle -> starting.
  void start_fork_exec(const pool_config& config, pid_file& pid, const std::vector<int>& listeners,
                       const std::vector<std::string>& names, const master_totals& counters) {
    std::string renamed;
    try {
      if (pid) {
        pid.rename_to(config.pid_file.string() + ".oldbin");
        renamed = ", pid file renamed to " + pid.path().string();
      }
      successor_ = spawn_successor(listeners, names, counters);
    } catch (const std::exception& e) {
      std::string restored = restore_pid_file(config, pid);
      return log_event(config, std::string("upgrade failed: cannot start the new master: ") + e.what() +
                                   restored + "; still serving");
    }
    phase_ = phase::starting;
    deadline_ = clock::now() + config.upgrade_timeout;
    successor_signal_ = 0;
    killed_ = false;
    log_event(config, "received SIGUSR2: upgrading: started new master pid " +
                          std::to_string(successor_.pid()) + " (" + startup_argv()[0] + ")" + renamed +
                          "; waiting up to " + seconds(config.upgrade_timeout) + " for its workers");
  }

  // in_place, on USR2: exec'ing. Returns only if the exec failed; the
  // master then goes on exactly as before, with the signals that came
  // after USR2 still to handle.
  void exec_in_place(const pool_config& config, const pool_state& s, const std::vector<int>& listeners,
                     const std::vector<std::string>& names, signal_pipe& sigs) {
    notify("RELOADING=1");
    const unsigned next = upgrades_ + 1;
    pipe_ends ends = pipe();
    std::vector<int> hidden = hidden_fds(s);
    hidden.push_back(ends.read.get());
    // Blocked until the new image has its handlers (its run() unblocks):
    // a signal now would run our handler in the courier, one during the
    // exec would meet the default action, which for most is death. Those
    // sent from now on stay pending, and pending signals survive execve.
    blocked_signals held;
    // Those already queued behind this USR2 would die with the pipe: they
    // go to the new image with the state, in order. SIGCHLD only wakes the
    // loop, and the new image reaps in its first round anyway.
    while (std::optional<signal_info> i = sigs.next_info())
      if (i->signo != SIGCHLD) queued_.push_back(*i);
    const std::string text = encode_handover(s, next, clock::now()) + encode_queued(queued_);
    child courier = fork_courier(text, ends);
    ends.write.reset();  // the new image's end of file is the courier's exit
    std::string where = startup_argv()[0];
    log_event(
        config,
        "received SIGUSR2: upgrading in place (upgrade " + std::to_string(next) + "): exec'ing " + where +
            "; courier pid " + std::to_string(courier.pid()) +
            (queued_.empty() ? "" : "; handing over the signals queued since: " + signal_list(queued_)));
    try {
      exec_handing_over(listeners, names, hidden,
                        {std::string(handover_variable) + "=" + std::to_string(ends.read.get()) + "," +
                             std::to_string(courier.pid()),
                         std::string(counters_variable) + "=" + encode_counters(s.board->master())});
    } catch (const std::exception& e) {
      ends.read.reset();  // a courier still writing gets EPIPE and ends
      std::string how = courier.wait().describe();
      notify("READY=1");
      log_event(config, std::string("upgrade failed: ") + e.what() +
                            "; the old image goes on unchanged (courier " + how + ")");
    }
  }

  // Each round of the loop: the deadlines of the phase. Returns when to
  // look again (time_point::max() for never).
  clock::time_point check(const pool_config& config, clock::time_point now) {
    if (phase_ == phase::adopting) {
      // The old workers serve on (they go only once replaced); a fixed
      // binary may now be tried with another USR2.
      if (now < deadline_) return deadline_;
      phase_ = phase::idle;
      log_event(config, "upgrade " + std::to_string(upgrades_) +
                            ": the new generation is not ready within upgrade_timeout (" +
                            seconds(config.upgrade_timeout) +
                            "); the old workers keep serving, USR2 is accepted again");
    }
    if (successor_.pid() == 0) return clock::time_point::max();
    if (phase_ == phase::starting) {
      if (now < deadline_) return deadline_;
      log_event(config, "new master (pid " + std::to_string(successor_.pid()) +
                            ") not ready within upgrade_timeout (" + seconds(config.upgrade_timeout) +
                            "): asking it to stop");
      phase_ = phase::rolling_back;
      stop_successor(config, SIGQUIT, now);
      return deadline_;
    }
    if (!killed_ && now >= deadline_) {
      log_event(config, "new master (pid " + std::to_string(successor_.pid()) + ") still running: SIGKILL");
      killed_ = true;
      successor_.kill(SIGKILL);
    }
    return killed_ ? clock::time_point::max() : deadline_;
  }

  // A reaped child: true if it was the new master, which died before it
  // took over: roll back, or, if this master stops, it is one less to wait for.
  bool reaped(pid_t pid, const exit_status& how, const pool_config& config, pid_file& pid_file) {
    if (successor_.pid() == 0 || pid != successor_.pid()) return false;
    successor_.mark_reaped(how);
    successor_ = child();
    const phase was = std::exchange(phase_, phase::idle);
    std::string restored = restore_pid_file(config, pid_file);
    std::string line = "new master (pid " + std::to_string(pid) + ") " + how.describe();
    if (was == phase::stopping_both)
      log_event(config, line + ", stopped with this master" + restored);
    else
      log_event(config, "upgrade failed: " + line +
                            (was == phase::rolling_back ? " after it was not ready within upgrade_timeout"
                                                        : " before it was ready") +
                            restored + "; still serving (send USR2 again to retry)");
    return true;
  }

  // What a QUIT means while a new master runs. From the new master itself
  // (its PID in siginfo), while it starts: the hand-over it asks for (stop
  // gracefully, without telling systemd the service stops). From anyone
  // else: an operator's stop, of both masters (on_stop follows). From the
  // new master once it was asked to stop: nothing, since taking it as a
  // hand-over would leave no master serving.
  enum class quit_meaning { stop, hand_over, ignore };
  quit_meaning on_quit(const pool_config& config, const signal_info& info) {
    if (successor_.pid() == 0) return quit_meaning::stop;
    const std::string next = std::to_string(successor_.pid());
    const bool from_successor = info.sent_by_process() && info.pid == successor_.pid();
    if (from_successor && phase_ == phase::starting) {
      successor_.detach();  // it outlives us: never kill or wait for it
      phase_ = phase::handed_over;
      log_event(config,
                "received SIGQUIT: new master pid " + next + " is ready; handing over, stopping gracefully");
      return quit_meaning::hand_over;
    }
    if (from_successor) {
      log_event(config, "received SIGQUIT from the new master (pid " + next +
                            "), which was asked to stop: not a hand-over, ignored");
      return quit_meaning::ignore;
    }
    log_event(config, "received SIGQUIT from " + sender_of(info) + ", not from the new master (pid " + next +
                          "): a stop, not a hand-over");
    return quit_meaning::stop;
  }

  // The master begins a stop that is not a hand-over, or hastens one
  // (QUIT, then TERM): a new master still ours stops the same way, and the
  // master exits only once it is reaped. Quick is TERM, not KILL: the new
  // master then stops its own workers (TERM, SIGKILL after quick_stop_wait)
  // and removes its pid file, where KILL would orphan its workers, who would
  // finish their requests, unsupervised, only when they noticed. SIGKILL
  // comes only if it has not exited by the deadline.
  void on_stop(const pool_config& config, bool graceful) {
    if (successor_.pid() == 0 || killed_) return;
    phase_ = phase::stopping_both;
    const int sig = graceful ? SIGQUIT : SIGTERM;
    const std::string next = std::to_string(successor_.pid());
    if (successor_signal_ == SIGTERM || successor_signal_ == sig)
      return log_event(config, "the new master (pid " + next + ") is stopping already; waiting for it");
    stop_successor(config, sig, clock::now());
    log_event(config, "stopping the new master (pid " + next + ") too: " + signal_label(sig) +
                          ", SIGKILL after " + seconds(deadline_ - clock::now()));
  }

  bool handed_over() const noexcept { return phase_ == phase::handed_over; }

  // What READY=1 goes with: a new master of fork_exec tells systemd, in the
  // same datagram, that it is the main process now.
  std::string ready_prefix() const {
    return old_master_ != 0 ? "MAINPID=" + std::to_string(::getpid()) + "\n" : std::string();
  }

  // The master's wanted workers are all ready (first start, HUP, upgrade),
  // and systemd was told.
  void generation_ready(const pool_config& config, const pool_state& s, std::size_t ready) {
    if (phase_ == phase::adopting) {
      phase_ = phase::idle;
      log_event(config, "upgrade " + std::to_string(upgrades_) + " complete: generation " +
                            std::to_string(s.generation) + " ready (" + std::to_string(ready) + " workers)");
    }
    if (old_master_ == 0) return;
    pid_t old = std::exchange(old_master_, 0);
    // Our parent is the old master unless it died meanwhile; then the PID
    // may be anyone's by now.
    if (::getppid() != old)
      return log_event(config, "all " + std::to_string(ready) + " workers ready; the old master (pid " +
                                   std::to_string(old) + ") is gone already");
    log_event(config, "all " + std::to_string(ready) + " workers ready: asking the old master (pid " +
                          std::to_string(old) + ") to stop");
    ::kill(old, SIGQUIT);
  }

  // The master is done. The new master was reaped or handed over by now;
  // should a bug leave one, it is not killed on the way out.
  void release() noexcept { successor_.detach(); }

  // READY, RELOADING, MAINPID: worth waiting for, a little.
  static void notify(std::string_view what) noexcept { notify_service(what, std::chrono::seconds(2)); }

 private:
  static std::string restore_pid_file(const pool_config& config, pid_file& pid) {
    if (!pid) return "";
    try {
      pid.rename_to(config.pid_file);
      return "; pid file restored to " + config.pid_file.string();
    } catch (const std::exception& e) {
      return std::string("; pid file NOT restored: ") + e.what();
    }
  }

  // Asks the new master to stop (QUIT: gracefully, TERM: quickly); SIGKILL
  // follows at deadline_ if it has not exited, its own stop taking up to
  // graceful_timeout (QUIT) and then quick_stop_wait before it kills its
  // workers.
  void stop_successor(const pool_config& config, int sig, clock::time_point now) {
    successor_signal_ = sig;
    successor_.kill(sig);
    deadline_ = now + (sig == SIGQUIT ? config.graceful_timeout : std::chrono::milliseconds(0)) +
                quick_stop_wait + successor_stop_margin;
  }

  phase phase_ = phase::idle;
  child successor_;  // fork_exec: the new master until it takes over or is reaped
  clock::time_point deadline_{};
  int successor_signal_ = 0;              // what the new master was last asked to stop with
  bool killed_ = false;                   // SIGKILL sent to the new master
  pid_t old_master_ = 0;                  // fork_exec, in the new master: whom to QUIT once ready
  unsigned upgrades_ = 0;                 // in_place upgrades so far
  std::optional<master_totals> carried_;  // the previous master's counters (either mode)
  std::deque<signal_info> queued_;        // in_place: signals to handle before the pipe's
  std::vector<std::string> messages_;
};

}  // namespace prefork::detail
