// prefork/upgrade_handover.hpp: what crosses from one program to the next
// in an upgrade (upgrade.hpp is the upgrade itself, its phases and signals).
//
// The environment of the next program (the descriptor protocol's variables
// and the upgrade's own, PREFORK_UPGRADE_FROM for fork_exec and
// PREFORK_UPGRADE_STATE for in_place), in_place's exec keeping chosen
// descriptors at their numbers, the pool's state as text (detail::pool_state,
// pool_detail.hpp: encode_handover() in the old image, adopt_handover() in
// the new, the hidden descriptors' numbers included), its courier (a child
// that holds that text until the new image reads it), and the signals that
// were still queued when the old image exec'd, which travel after the state,
// so the new image handles them first, in order.
//
// Stands on execve(2), fork, fcntl, getenv/unsetenv, sigprocmask.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
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
#include <prefork/path_search.hpp>
#include <prefork/pipe.hpp>
#include <prefork/pool_detail.hpp>
#include <prefork/process.hpp>
#include <prefork/scoreboard.hpp>
#include <prefork/signal.hpp>

extern char** environ;

namespace prefork::detail {

inline constexpr char upgrade_from_variable[] = "PREFORK_UPGRADE_FROM";  // fork_exec: the old master's PID
inline constexpr char handover_variable[] = "PREFORK_UPGRADE_STATE";     // in_place: "PIPE_FD,COURIER_PID"
inline constexpr char counters_variable[] = "PREFORK_UPGRADE_COUNTERS";  // both: master_totals, "name=N,..."

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
        named(entry, handover_variable) || named(entry, counters_variable) ||
        (new_pid && named(entry, "WATCHDOG_PID")))
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
    std::string found;
    for (const std::string& candidate : path_candidates(program)) {
      struct stat st {};
      if (::stat(candidate.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
          ::access(candidate.c_str(), X_OK) == 0) {
        found = candidate;
        break;
      }
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

// The state an in-place upgrade hands over, as text: one line per fact, the
// numbers of the hidden descriptors included, "end" last (a courier that
// died half-way leaves no "end").
inline std::string encode_handover(const pool_state& s, unsigned upgrades,
                                   std::chrono::steady_clock::time_point now) {
  std::ostringstream out;
  out << "prefork-handover 1\n"
      << "upgrades " << upgrades << "\n"
      << "generation " << s.generation << "\n"
      << "board " << s.board->memfd() << " " << scoreboard_layout << " " << scoreboard_slot_size << "\n"
      << "wake " << s.wake_read.get() << " " << s.wake_write.get() << "\n";
  auto ms = [](auto d) {
    return std::max<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(d).count(), 0);
  };
  for (const worker_record& r : s.workers)
    if (r.pid != 0)  // ordered from a mold, not yet started: its channel closes with the exec, so it stops
      out << "worker " << r.pid << " " << r.index << " " << r.generation << " " << r.slot << " "
          << r.control.get() << " " << r.ready << r.retiring << r.quit_sent << r.term_sent << r.killed << " "
          << ms(now - r.spawned) << " " << (r.quit_sent ? ms(r.drain_deadline - now) : 0) << "\n";
  out << "end\n";
  return out.str();
}

// Numbers from encode_handover, in the new image.
inline std::vector<int> hidden_fds(const pool_state& s) {
  std::vector<int> out{s.board->memfd(), s.wake_read.get(), s.wake_write.get()};
  for (const worker_record& r : s.workers)
    if (r.control) out.push_back(r.control.get());
  return out;
}

// An inherited descriptor number from the state: open, ours, CLOEXEC again.
inline fd take_fd(int n, const std::string& what) {
  if (n < 0) return fd();
  if (::fcntl(n, F_GETFD) == -1)
    throw std::runtime_error("in-place upgrade: the " + what + " descriptor " + std::to_string(n) +
                             " is not open");
  fd owned(n);
  owned.set_cloexec(true);  // it had to cross one exec, and must not cross another
  return owned;
}

// Fills a fresh pool_state from the text; returns the upgrade count. A
// scoreboard of another layout (an older image says none) is not mapped:
// s.board stays empty, `refused` says why, and the caller makes a fresh one.
inline unsigned adopt_handover(pool_state& s, const std::string& text,
                               std::chrono::steady_clock::time_point now, std::string* refused = nullptr) {
  std::istringstream in(text);
  std::string line;
  unsigned upgrades = 0;
  bool complete = false;
  auto bad = [&](const std::string& why) {
    throw std::runtime_error("in-place upgrade: malformed state from the previous image (" + why + "): \"" +
                             line + "\"");
  };
  if (!std::getline(in, line) || line != "prefork-handover 1") bad("unknown format");
  while (std::getline(in, line)) {
    std::istringstream f(line);
    std::string key;
    f >> key;
    if (key == "end") {
      complete = true;
      break;
    }
    if (key == "upgrades") {
      f >> upgrades;
    } else if (key == "generation") {
      f >> s.generation;
    } else if (key == "board") {
      int n = -1;
      f >> n;
      fd board = take_fd(n, "scoreboard");
      std::uint32_t layout = 0;
      std::size_t slot_size = 0;
      if (!(f >> layout >> slot_size)) {
        f.clear();
        layout = 0;
      }
      if (layout == scoreboard_layout && slot_size == scoreboard_slot_size) {
        s.board.emplace(scoreboard::from_fd(board.release()));  // from_fd owns it
      } else {
        const std::string why =
            "its layout is " +
            (layout ? std::to_string(layout) + " (" + std::to_string(slot_size) + "-byte slots)"
                    : std::string("unversioned (an older image)")) +
            ", this image's is " + std::to_string(scoreboard_layout) + " (" +
            std::to_string(scoreboard_slot_size) + "-byte slots)";
        if (refused)
          *refused = why;
        else
          bad(why);
      }
    } else if (key == "wake") {
      int r = -1, w = -1;
      f >> r >> w;
      s.wake_read = take_fd(r, "wake-up pipe");
      s.wake_write = take_fd(w, "wake-up pipe");
    } else if (key == "worker") {
      worker_record r;
      int control = -1;
      std::string flags;
      long long age = 0, drain_left = 0;
      f >> r.pid >> r.index >> r.generation >> r.slot >> control >> flags >> age >> drain_left;
      if (flags.size() != 5) bad("worker flags");
      r.control = take_fd(control, "control pipe");
      r.ready = flags[0] == '1';
      r.retiring = flags[1] == '1';
      r.quit_sent = flags[2] == '1';
      r.term_sent = flags[3] == '1';
      r.killed = flags[4] == '1';
      r.spawned = now - std::chrono::milliseconds(age);
      r.drain_deadline = now + std::chrono::milliseconds(drain_left);
      s.workers.push_back(std::move(r));
    } else {
      bad("unknown line");
    }
    if (f.fail()) bad("bad number");
  }
  if (!complete) bad("cut short");
  if ((!s.board && (!refused || refused->empty())) || !s.wake_read || !s.wake_write)
    bad("no scoreboard or wake-up pipe");
  for (const worker_record& r : s.workers)
    if (s.board && r.slot >= s.board->size()) bad("slot out of range");
  return upgrades;
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

// The master's counters for the next image, "upgrades=1,reloads=0,...":
// names, so that an image which knows fewer or more of them takes what it
// knows. In the environment rather than the in-place state, which an older
// image would refuse for an unknown line.
inline std::string encode_counters(const master_totals& t) {
  std::string out = "upgrades=" + std::to_string(t.upgrades) + ",reloads=" + std::to_string(t.reloads) +
                    ",timeouts_killed=" + std::to_string(t.timeouts_killed) +
                    ",crash_backoffs=" + std::to_string(t.crash_backoffs);
  for (std::size_t k = 0; k < restart_cause_count; ++k)
    out += std::string(",restarts.") + to_string(static_cast<restart_cause>(k)) + "=" +
           std::to_string(t.restarts[k]);
  return out;
}

inline master_totals decode_counters(std::string_view text) {
  master_totals t;
  while (!text.empty()) {
    std::size_t comma = text.find(',');
    std::string_view item = text.substr(0, comma);
    text = comma == std::string_view::npos ? std::string_view() : text.substr(comma + 1);
    std::size_t eq = item.find('=');
    if (eq == std::string_view::npos) continue;
    std::string_view key = item.substr(0, eq);
    std::uint64_t n = 0;
    bool ok = eq + 1 < item.size();
    for (char c : item.substr(eq + 1)) {
      if (c < '0' || c > '9' || n > (~std::uint64_t{0} - 9) / 10) ok = false;
      if (ok) n = n * 10 + static_cast<std::uint64_t>(c - '0');
    }
    if (!ok) continue;
    if (key == "upgrades") t.upgrades = n;
    if (key == "reloads") t.reloads = n;
    if (key == "timeouts_killed") t.timeouts_killed = n;
    if (key == "crash_backoffs") t.crash_backoffs = n;
    for (std::size_t k = 0; k < restart_cause_count; ++k)
      if (key == std::string("restarts.") + to_string(static_cast<restart_cause>(k))) t.restarts[k] = n;
  }
  return t;
}

inline std::optional<master_totals> take_counters_variable() {
  const char* text = std::getenv(counters_variable);
  if (!text) return std::nullopt;
  master_totals t = decode_counters(text);
  ::unsetenv(counters_variable);
  return t;
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

// The signals an in-place upgrade hands to the new image, after the pool's
// state: one line each in arrival order, then a last line, so that a state
// cut short cannot lose some silently. The state of an older image has none.
inline std::string encode_queued(const std::deque<signal_info>& queued) {
  std::string out;
  for (const signal_info& i : queued)
    out += "queued " + std::to_string(i.signo) + " " + std::to_string(i.pid) + " " + std::to_string(i.uid) +
           " " + std::to_string(i.code) + "\n";
  return out + "queued-end\n";
}

inline std::deque<signal_info> decode_queued(const std::string& text) {
  std::deque<signal_info> out;
  if (text.empty()) return out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line == "queued-end") return out;
    std::istringstream f(line);
    std::string key;
    signal_info i;
    f >> key >> i.signo >> i.pid >> i.uid >> i.code;
    if (key != "queued" || f.fail() || i.signo <= 0 || i.signo >= NSIG)
      throw std::runtime_error("in-place upgrade: malformed queued signal from the previous image: \"" +
                               line + "\"");
    out.push_back(i);
  }
  throw std::runtime_error("in-place upgrade: the queued signals from the previous image were cut short");
}

inline std::string signal_list(const std::deque<signal_info>& queued) {
  std::string out;
  for (const signal_info& i : queued) out += (out.empty() ? "" : ", ") + signal_label(i.signo);
  return out;
}

}  // namespace prefork::detail
