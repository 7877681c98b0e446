// prefork/spawn_setup.hpp: the process attributes spawn() can set in the
// child before exec: environment edits, umask, resource limits, user and
// group, a parent-death signal and a controlling terminal. spawn.hpp holds
// the options and calls these; nothing here is used on its own.
//
// The environment is computed in the parent, like everything else the child
// reads. The child's steps are raw system calls: the C library's set*id
// wrappers stop every thread of the process to change them all, which in a
// child sharing the parent's memory would signal the parent's threads. The
// order is fixed by what each step needs: the terminal once fd 0 is in
// place; limits while the child may still raise them; supplementary groups
// and group before the user, since changing the user gives up the right to
// change the others (a failure anywhere fails the spawn: no half-dropped
// child runs); the parent-death signal last, because the kernel clears it
// when credentials change. Stands on ioctl(TIOCSCTTY), umask, setrlimit,
// setgroups, setgid, setuid, prctl(PR_SET_PDEATHSIG), getppid and kill.
#pragma once

#include <signal.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

extern char** environ;

namespace prefork::detail {

// 32-bit x86 and ARM kept 16-bit IDs under the plain names.
#ifdef SYS_setuid32
inline constexpr long sys_setuid = SYS_setuid32, sys_setgid = SYS_setgid32, sys_setgroups = SYS_setgroups32;
#else
inline constexpr long sys_setuid = SYS_setuid, sys_setgid = SYS_setgid, sys_setgroups = SYS_setgroups;
#endif

// What the child does after its descriptors are in place; built by the parent.
struct child_setup {
  bool controlling_terminal = false;
  bool set_umask = false;
  mode_t umask = 0;
  const std::pair<int, rlimit>* rlimits = nullptr;
  std::size_t rlimit_count = 0;
  bool set_ids = false;  // setgroups, then the two below
  bool set_gid = false, set_uid = false;
  gid_t gid = 0;
  uid_t uid = 0;
  int parent_death_signal = 0;
  pid_t parent = 0;  // getpid() before the clone: who the child's parent must still be
};

// Which setup step failed, in the report's detail: the step, and for a
// limit its index in the options, times 256.
enum setup_step : int { setup_terminal = 1, setup_rlimit, setup_groups, setup_gid, setup_uid, setup_pdeath };

// In the child: 0, or the failed step with errno set. Raw calls only.
inline int apply_child_setup(const child_setup& s) noexcept {
  if (s.controlling_terminal && ::ioctl(0, TIOCSCTTY, 0) == -1) return setup_terminal;
  if (s.set_umask) ::umask(s.umask);
  for (std::size_t i = 0; i < s.rlimit_count; ++i)
    if (::setrlimit(s.rlimits[i].first, &s.rlimits[i].second) == -1)
      return setup_rlimit | static_cast<int>(i << 8);
  if (s.set_ids) {
    gid_t only = s.gid;
    if (::syscall(sys_setgroups, s.set_gid ? 1 : 0, s.set_gid ? &only : nullptr) == -1) return setup_groups;
    if (s.set_gid && ::syscall(sys_setgid, s.gid) == -1) return setup_gid;
    if (s.set_uid && ::syscall(sys_setuid, s.uid) == -1) return setup_uid;
  }
  if (s.parent_death_signal != 0) {
    if (::syscall(SYS_prctl, PR_SET_PDEATHSIG, s.parent_death_signal, 0, 0, 0) == -1) return setup_pdeath;
    // A parent that died before the prctl will never trigger it: the child
    // has been handed to a reaper already. Then the signal is sent now, and
    // arrives with default dispositions once the child unblocks signals.
    // getppid() is 0 in a new PID namespace, where the parent is not visible.
    long now = ::syscall(SYS_getppid);
    if (now != s.parent && now != 0) ::syscall(SYS_kill, ::syscall(SYS_getpid), s.parent_death_signal);
  }
  return 0;
}

// The child's part of `options` (a spawn_options, which is defined after
// this header), checked.
template <class Options>
child_setup make_child_setup(const Options& options, const std::string& program) {
  if (options.parent_death_signal < 0 || options.parent_death_signal >= NSIG)
    throw std::invalid_argument("spawn " + program + ": parent_death_signal " +
                                std::to_string(options.parent_death_signal) + " is not a signal");
  child_setup s;
  s.controlling_terminal = options.controlling_terminal;
  s.set_umask = options.umask.has_value();
  s.umask = options.umask.value_or(0);
  s.rlimits = options.rlimits.data();
  s.rlimit_count = options.rlimits.size();
  s.set_ids = options.uid || options.gid;
  s.set_uid = options.uid.has_value();
  s.uid = options.uid.value_or(0);
  s.set_gid = options.gid.has_value();
  s.gid = options.gid.value_or(0);
  s.parent_death_signal = options.parent_death_signal;
  s.parent = ::getpid();
  return s;
}

inline std::string setup_failure(int detail, const std::vector<std::pair<int, rlimit>>& rlimits,
                                 std::optional<uid_t> uid, std::optional<gid_t> gid, int pdeath) {
  switch (detail & 0xff) {
    case setup_terminal: return "ioctl TIOCSCTTY on fd 0";
    case setup_rlimit: {
      auto i = static_cast<std::size_t>(detail >> 8);
      if (i >= rlimits.size()) return "setrlimit";
      const rlimit& r = rlimits[i].second;
      auto text = [](rlim_t v) { return v == RLIM_INFINITY ? std::string("unlimited") : std::to_string(v); };
      return "setrlimit " + std::to_string(rlimits[i].first) + " " + text(r.rlim_cur) + "/" +
             text(r.rlim_max);
    }
    case setup_groups: return gid ? "setgroups {" + std::to_string(*gid) + "}" : std::string("setgroups {}");
    case setup_gid: return "setgid " + std::to_string(gid ? *gid : 0);
    case setup_uid: return "setuid " + std::to_string(uid ? *uid : 0);
    case setup_pdeath: return "prctl PR_SET_PDEATHSIG " + std::to_string(pdeath);
    default: return "child setup";
  }
}

inline std::string_view env_name(std::string_view entry) { return entry.substr(0, entry.find('=')); }

// The child's environment: `base` (or this process's) without the names in
// `unset`, then `set` on top, replacing an entry of the same name where it
// stood or added at the end. A name given twice in `set` takes the last value.
inline std::vector<std::string> edited_environment(const std::optional<std::vector<std::string>>& base,
                                                   const std::vector<std::string>& set,
                                                   const std::vector<std::string>& unset,
                                                   const std::string& program) {
  auto refuse = [&](const char* field, const std::string& entry, const char* why) {
    std::string what = "spawn ";
    what += program;
    what += ": ";
    what += field;
    what += " '";
    what += entry;
    what += why;
    throw std::invalid_argument(what);
  };
  for (const auto& e : set)
    if (e.find('=') == std::string::npos || e.front() == '=' || e.find('\0') != std::string::npos)
      refuse("env_set entry", e, "' is not NAME=value");
  for (const auto& n : unset)
    if (n.empty() || n.find_first_of(std::string_view("=\0", 2)) != std::string::npos)
      refuse("env_unset name", n, "' is empty or holds '='");
  auto last_set = [&](std::string_view name) -> const std::string* {
    for (auto it = set.rbegin(); it != set.rend(); ++it)
      if (env_name(*it) == name) return &*it;
    return nullptr;
  };
  auto unset_has = [&](std::string_view name) {
    for (const auto& n : unset)
      if (n == name) return true;
    return false;
  };
  std::vector<std::string> out;
  std::vector<std::string_view> placed;
  auto take = [&](std::string_view entry) {
    std::string_view name = env_name(entry);
    for (std::string_view p : placed)
      if (p == name) return;  // a duplicate in the base: the first one is what getenv sees
    const std::string* replacement = last_set(name);
    if (!replacement && unset_has(name)) return;
    out.emplace_back(replacement ? std::string_view(*replacement) : entry);
    placed.push_back(name);
  };
  if (base) {
    for (const auto& e : *base) take(e);
  } else {
    for (char** e = environ; e && *e; ++e) take(*e);
  }
  for (const auto& e : set) take(e);  // the names not in the base
  return out;
}

}  // namespace prefork::detail
