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
// Stands on execve(2), spawn (clone), fork, pipe2, fcntl, close_range, kill.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
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
#include <prefork/process.hpp>
#include <prefork/scoreboard.hpp>
#include <prefork/signal.hpp>
#include <prefork/systemd.hpp>

extern char** environ;

namespace prefork::detail {

inline constexpr char upgrade_from_variable[] = "PREFORK_UPGRADE_FROM";  // fork_exec: the old master's PID
inline constexpr char handover_variable[] = "PREFORK_UPGRADE_STATE";     // in_place: "PIPE_FD,COURIER_PID"

// Our environment for the next program: without the descriptor protocol's
// variables (the caller adds PREFORK_FDS; the listeners' names, if any, are
// added here), our own upgrade variables, and, for a new PID, WATCHDOG_PID
// (systemd's watchdog then applies to whoever is the main process).
inline std::vector<std::string> successor_environment(std::vector<std::string> extra,
                                                      const std::vector<std::string>& names, bool new_pid) {
  std::vector<std::string> env;
  auto named = [](std::string_view entry, std::string_view name) {
    return entry.size() > name.size() && entry.substr(0, name.size()) == name && entry[name.size()] == '=';
  };
  for (char** e = environ; e && *e; ++e) {
    std::string_view entry(*e);
    if (is_protocol_variable(entry) || named(entry, upgrade_from_variable) ||
        named(entry, handover_variable) || (new_pid && named(entry, "WATCHDOG_PID")))
      continue;
    env.emplace_back(entry);
  }
  for (std::string& x : extra) env.push_back(std::move(x));
  if (!names.empty()) {
    std::string list = "PREFORK_FDNAMES=";
    for (std::size_t i = 0; i < names.size(); ++i) list += (i ? ":" : "") + names[i];
    env.push_back(std::move(list));
  }
  return env;
}

inline std::string fd_list(const std::vector<int>& fds) {
  std::string out;
  for (int n : fds) out += (out.empty() ? "" : ",") + std::to_string(n);
  return out;
}

// fork_exec: the new master, with stdin, stdout, stderr and the listeners
// at their numbers, everything else closed, default signal dispositions.
inline child spawn_successor(const std::vector<int>& listeners, const std::vector<std::string>& names) {
  spawn_options options;
  for (int n = 0; n <= 2; ++n)
    if (::fcntl(n, F_GETFD) != -1) options.fds.emplace_back(n, n);
  for (int l : listeners) options.fds.emplace_back(l, l);
  options.env = successor_environment({"PREFORK_FDS=" + fd_list(listeners),
                                       std::string(upgrade_from_variable) + "=" + std::to_string(::getpid())},
                                      names, true);
  options.cwd = startup_cwd();  // where a relative argv[0] was found at start
  return spawn(startup_argv(), options);
}

// in_place: execs startup_argv() keeping `listeners` (published in
// PREFORK_FDS) and `hidden` (not published: their numbers travel in the
// state) at their numbers. Returns only by throwing, with every descriptor
// flag as it was.
inline void exec_handing_over(const std::vector<int>& listeners, const std::vector<std::string>& names,
                              const std::vector<int>& hidden, std::vector<std::string> extra_env) {
  const std::vector<std::string>& argv = startup_argv();
  std::string program = argv[0];
  if (program.find('/') == std::string::npos) {
    // Looked up in PATH again, so a binary installed elsewhere in PATH since
    // is what runs.
    const char* path = std::getenv("PATH");
    std::string_view dirs = path ? path : "/usr/local/bin:/usr/bin:/bin";
    std::string found;
    while (found.empty()) {
      std::size_t colon = dirs.find(':');
      std::string dir(dirs.substr(0, colon));
      std::string candidate = (dir.empty() ? "." : dir) + "/" + program;
      struct stat st {};
      if (::stat(candidate.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
          ::access(candidate.c_str(), X_OK) == 0)
        found = candidate;
      if (colon == std::string_view::npos) break;
      dirs.remove_prefix(colon + 1);
    }
    if (found.empty()) throw_system_error("exec " + program + " (searched in PATH)", ENOENT);
    program = found;
  } else if (program.front() != '/' && !startup_cwd().empty()) {
    program = (startup_cwd() / program).string();
  }
  extra_env.push_back("PREFORK_FDS=" + fd_list(listeners));
  std::vector<std::string> env = successor_environment(std::move(extra_env), names, false);
  std::vector<char*> argv_ptrs, env_ptrs;
  for (const std::string& a : argv) argv_ptrs.push_back(const_cast<char*>(a.c_str()));
  argv_ptrs.push_back(nullptr);
  for (const std::string& e : env) env_ptrs.push_back(const_cast<char*>(e.c_str()));
  env_ptrs.push_back(nullptr);

  (void)std::fflush(nullptr);  // exec discards stdio buffers
  std::vector<fd_flags> before = descriptor_flags();
  try {
    cloexec_from_3(before);
    for (const std::vector<int>* list : {&listeners, &hidden})
      for (int k : *list)
        if (::fcntl(k, F_SETFD, 0) == -1) throw_system_error("exec: fcntl F_SETFD 0 " + std::to_string(k));
  } catch (...) {
    restore_descriptor_flags(before);
    throw;
  }
  ::execve(program.c_str(), argv_ptrs.data(), env_ptrs.data());
  int err = errno;
  restore_descriptor_flags(before);
  throw_system_error("exec " + program, err);
}

// The courier: a child that writes `text` into `out` and exits, so the new
// image can read state of any size while the old one has already exec'd.
// Everything is prepared by the caller; the child only closes, writes and
// exits. Signals must be blocked around this call.
inline child fork_courier(const std::string& text, pipe_ends& ends) {
  std::optional<child> forked = prefork::fork();
  if (!forked) {
    // Its copies of the control pipes and the rest go at once: a courier
    // waiting for a slow reader must not keep a worker's pipe open.
    close_span(3, ~0U, ends.write.get());
    std::error_code ec;
    write_all(ends.write.get(), text.data(), text.size(), ec);
    ::_exit(ec ? 1 : 0);
  }
  return std::move(*forked);
}

// The hand-over variable, read and removed: the courier's pipe and PID.
struct handover_source {
  fd pipe;
  pid_t courier = 0;
};
inline std::optional<handover_source> take_handover_variable() {
  const char* text = std::getenv(handover_variable);
  if (!text) return std::nullopt;
  std::string value = text;
  ::unsetenv(handover_variable);
  int pipe_fd = -1, courier = 0;
  std::size_t comma = value.find(',');
  if (comma == std::string::npos || !parse_int(value.substr(0, comma), pipe_fd) ||
      !parse_int(value.substr(comma + 1), courier) || courier == 0)
    throw std::runtime_error("in-place upgrade: malformed " + std::string(handover_variable) + "=\"" + value +
                             "\"");
  return handover_source{take_fd(pipe_fd, "state pipe"), static_cast<pid_t>(courier)};
}

// fork_exec: the old master's PID when this master is its successor.
inline pid_t take_upgrade_from_variable() {
  const char* text = std::getenv(upgrade_from_variable);
  if (!text) return 0;
  int pid = 0;
  if (!parse_int(text, pid) || pid <= 0)
    throw std::runtime_error("malformed " + std::string(upgrade_from_variable) + "=\"" + text + "\"");
  ::unsetenv(upgrade_from_variable);
  return static_cast<pid_t>(pid);
}

// The new image of an in-place upgrade, once its handlers are in place:
// what arrived while the old one blocked everything for its exec is
// delivered now.
inline void unblock_all_signals() noexcept {
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
}

// The master's side of USR2: what it remembers while an upgrade runs, and
// what it does at each step. The master calls it from its loop.
class upgrader {
 public:
  using clock = std::chrono::steady_clock;

  // In the master's constructor, before the scoreboard exists: a new image
  // of an in-place upgrade adopts the previous one's state here (true), a
  // new master of fork_exec notes whom to QUIT once ready.
  bool take_over(pool_state& s, const pool_config& config) {
    old_master_ = take_upgrade_from_variable();
    std::optional<handover_source> source = take_handover_variable();
    if (!source) return false;
    // End of file once the courier has written everything and exited.
    std::string text = read_all(source->pipe.get());
    source->pipe.reset();
    child courier = child::adopt(source->courier);
    std::string how = courier.wait().describe();
    const clock::time_point now = clock::now();
    upgrades_ = adopt_handover(s, text, now);
    pending_ = true;
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
    if (s.board->size() < config.max_workers)
      messages_.push_back("keeping the previous image's scoreboard of " + std::to_string(s.board->size()) +
                          " slots (max_workers " + std::to_string(config.max_workers) + " takes a restart)");
    return true;
  }

  // Lines take_over had to say before the log was running.
  std::vector<std::string> take_messages() { return std::exchange(messages_, {}); }

  pid_t old_master() const noexcept { return old_master_; }

  // fork_exec: the new master while it is this master's child to reap, or 0.
  pid_t successor_pid() const noexcept { return successor_.pid(); }

  bool in_progress() const noexcept { return successor_.pid() != 0 || pending_; }

  std::string progress() const {
    if (successor_.pid() != 0) return "new master pid " + std::to_string(successor_.pid()) + " is starting";
    return "generation not yet ready after upgrade " + std::to_string(upgrades_);
  }

  // USR2.
  void on_usr2(const pool_config& config, const pool_state& s, pid_file& pid, bool stopping) {
    if (stopping) return log_event(config, "received SIGUSR2: ignored while stopping");
    if (in_progress())
      return log_event(config,
                       "received SIGUSR2: an upgrade is already in progress (" + progress() + "); refused");
    refuse_threads("master: upgrade");
    std::vector<int> listeners;
    for (const fd& l : config.listeners) listeners.push_back(l.get());
    if (config.upgrade == upgrade_mode::fork_exec) return start_fork_exec(config, pid, listeners);
    exec_in_place(config, s, listeners);
  }

  // fork_exec, on USR2.
  void start_fork_exec(const pool_config& config, pid_file& pid, const std::vector<int>& listeners) {
    std::string renamed;
    try {
      if (pid) {
        pid.rename_to(config.pid_file.string() + ".oldbin");
        renamed = ", pid file renamed to " + pid.path().string();
      }
      successor_ = spawn_successor(listeners, config.listener_names);
    } catch (const std::exception& e) {
      std::string restored = restore_pid_file(config, pid);
      return log_event(config, std::string("upgrade failed: cannot start the new master: ") + e.what() +
                                   restored + "; still serving");
    }
    deadline_ = clock::now() + config.upgrade_timeout;
    quit_sent_ = killed_ = false;
    log_event(config, "received SIGUSR2: upgrading: started new master pid " +
                          std::to_string(successor_.pid()) + " (" + startup_argv()[0] + ")" + renamed +
                          "; waiting up to " + seconds(config.upgrade_timeout) + " for its workers");
  }

  // in_place, on USR2. Returns only if the exec failed; the master then
  // goes on exactly as before.
  void exec_in_place(const pool_config& config, const pool_state& s, const std::vector<int>& listeners) {
    notify("RELOADING=1");
    const unsigned next = upgrades_ + 1;
    pipe_ends ends = pipe();
    const std::string text = encode_handover(s, next, clock::now());
    std::vector<int> hidden = hidden_fds(s);
    hidden.push_back(ends.read.get());
    // Blocked until the new image has its handlers (its run() unblocks):
    // a signal now would run our handler in the courier, one during the
    // exec would meet the default action, which for most is death.
    blocked_signals held;
    child courier = fork_courier(text, ends);
    ends.write.reset();  // the new image's end of file is the courier's exit
    std::string where = startup_argv()[0];
    log_event(config, "received SIGUSR2: upgrading in place (upgrade " + std::to_string(next) +
                          "): exec'ing " + where + "; courier pid " + std::to_string(courier.pid()));
    try {
      exec_handing_over(listeners, config.listener_names, hidden,
                        {std::string(handover_variable) + "=" + std::to_string(ends.read.get()) + "," +
                         std::to_string(courier.pid())});
    } catch (const std::exception& e) {
      ends.read.reset();  // a courier still writing gets EPIPE and ends
      std::string how = courier.wait().describe();
      notify("READY=1");
      log_event(config, std::string("upgrade failed: ") + e.what() +
                            "; the old image goes on unchanged (courier " + how + ")");
    }
  }

  // Each round of the loop: the new master's deadline. Returns when to look
  // again (time_point::max() for never).
  clock::time_point check(const pool_config& config, clock::time_point now) {
    if (pending_) {
      // The old workers serve on (they go only once replaced); a fixed
      // binary may now be tried with another USR2.
      if (now < deadline_) return deadline_;
      pending_ = false;
      log_event(config, "upgrade " + std::to_string(upgrades_) +
                            ": the new generation is not ready within upgrade_timeout (" +
                            seconds(config.upgrade_timeout) +
                            "); the old workers keep serving, USR2 is accepted again");
    }
    if (successor_.pid() == 0) return clock::time_point::max();
    if (!quit_sent_) {
      if (now < deadline_) return deadline_;
      log_event(config, "new master (pid " + std::to_string(successor_.pid()) +
                            ") not ready within upgrade_timeout (" + seconds(config.upgrade_timeout) +
                            "): asking it to stop");
      quit_sent_ = true;
      successor_.kill(SIGQUIT);
      // Its own graceful stop takes up to graceful_timeout, then it kills.
      deadline_ = now + config.graceful_timeout + quick_stop_wait;
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
  // took over: roll back.
  bool reaped(pid_t pid, const exit_status& how, const pool_config& config, pid_file& pid_file) {
    if (successor_.pid() == 0 || pid != successor_.pid()) return false;
    successor_.mark_reaped(how);
    successor_ = child();
    std::string why = quit_sent_ ? " after it was not ready within upgrade_timeout" : " before it was ready";
    std::string restored = restore_pid_file(config, pid_file);
    log_event(config, "upgrade failed: new master (pid " + std::to_string(pid) + ") " + how.describe() + why +
                          restored + "; still serving (send USR2 again to retry)");
    return true;
  }

  // What a QUIT means while a new master runs: the hand-over it asked for
  // (true: stop gracefully, without telling systemd the service stops), or,
  // if we are already rolling back, nothing (two masters QUITting each
  // other would leave none).
  enum class quit_meaning { stop, hand_over, ignore };
  quit_meaning on_quit(const pool_config& config) {
    if (successor_.pid() == 0) return quit_meaning::stop;
    if (quit_sent_) {
      log_event(config, "received SIGQUIT while rolling back the upgrade (new master pid " +
                            std::to_string(successor_.pid()) +
                            " was asked to stop): ignored; send it again later");
      return quit_meaning::ignore;
    }
    pid_t next = successor_.detach();  // it outlives us: never kill or wait for it
    handed_over_ = true;
    log_event(config, "received SIGQUIT: new master pid " + std::to_string(next) +
                          " is ready; handing over, stopping gracefully");
    return quit_meaning::hand_over;
  }

  bool handed_over() const noexcept { return handed_over_; }

  // What READY=1 goes with: a new master of fork_exec tells systemd, in the
  // same datagram, that it is the main process now.
  std::string ready_prefix() const {
    return old_master_ != 0 ? "MAINPID=" + std::to_string(::getpid()) + "\n" : std::string();
  }

  // The master's wanted workers are all ready (first start, HUP, upgrade),
  // and systemd was told.
  void generation_ready(const pool_config& config, const pool_state& s, std::size_t ready) {
    if (pending_) {
      pending_ = false;
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

  // The master is done: a new master still starting is left running.
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

  child successor_;  // fork_exec: the new master until it takes over or dies
  clock::time_point deadline_{};
  bool quit_sent_ = false, killed_ = false, handed_over_ = false;
  pid_t old_master_ = 0;   // fork_exec, in the new master: whom to QUIT once ready
  unsigned upgrades_ = 0;  // in_place upgrades so far
  bool pending_ = false;   // in_place: the new generation is not ready yet
  std::vector<std::string> messages_;
};

}  // namespace prefork::detail
