// prefork/exec.hpp: replacing the process image while keeping chosen
// descriptors, and finding those descriptors again in the new image.
//
// exec(argv, keep) lets exactly the descriptors in `keep` (and stdin, stdout,
// stderr) cross into the new image; every other descriptor is closed by the
// kernel at exec, even one that other code opened without O_CLOEXEC. The new
// image learns which numbers it was given from PREFORK_FDS="5,7" (and their
// names from PREFORK_FDNAMES="http:admin"). take_inherited_fds() reads that,
// or systemd's socket activation (LISTEN_FDS, LISTEN_FDNAMES, for the process
// named in LISTEN_PID), takes ownership, marks the descriptors CLOEXEC again
// and removes the variables so the program's own children do not misread
// them. listen() (socket.hpp) takes the inherited socket of its address
// first, so a program that binds its listeners itself works unchanged in
// the new image. If exec fails, every descriptor's flags are put back as they were and
// std::system_error is thrown: the process goes on unchanged, which is what an
// in-place upgrade relies on to survive a bad new binary.
//
// exec allocates (the environment, the path search); call it from a
// single-threaded process or a child forked from one, as the prefork master
// is. The signal mask and ignored dispositions cross exec unchanged: reset
// them first (signal.hpp) if the new image should not see them.
//
// startup_argv() and startup_cwd() are captured while the program starts (a
// static initializer of this header), so a re-exec finds the program as it
// was started even after chdir.
//
// Stands on execve(2), close_range(2) with CLOSE_RANGE_CLOEXEC (5.11; older
// kernels and seccomp profiles that refuse it: fcntl on each descriptor
// listed in /proc/self/fd), fcntl(2),
// /proc/self/cmdline and getcwd(3).
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <charconv>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <prefork/error.hpp>
#include <prefork/fd.hpp>
#include <prefork/path_search.hpp>

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

extern char** environ;

namespace prefork {

// What a process was given by the process that exec'd it (or by systemd).
struct inherited {
  std::vector<fd> fds;
  std::vector<std::string> names;  // one per fd; "" where none was published
  std::string source;              // "PREFORK_FDS", "LISTEN_FDS", or "" (nothing inherited)
};

namespace detail {

inline constexpr const char* fd_protocol_variables[] = {"PREFORK_FDS", "PREFORK_FDNAMES", "LISTEN_FDS",
                                                        "LISTEN_PID", "LISTEN_FDNAMES"};

struct fd_flags {
  int fd;
  int flags;
};

// Every open descriptor with its F_GETFD flags, to undo a failed exec.
inline std::vector<fd_flags> descriptor_flags() {
  DIR* dir = ::opendir("/proc/self/fd");
  if (!dir) throw_system_error("exec: opendir /proc/self/fd");
  std::vector<fd_flags> out;
  int own = ::dirfd(dir);
  while (dirent* e = ::readdir(dir)) {
    int n = -1;
    std::string_view name(e->d_name);
    if (std::from_chars(name.data(), name.data() + name.size(), n).ec != std::errc() || n == own) continue;
    int flags = ::fcntl(n, F_GETFD);
    if (flags != -1) out.push_back({n, flags});
  }
  ::closedir(dir);
  return out;
}

inline void restore_descriptor_flags(const std::vector<fd_flags>& saved) noexcept {
  for (const fd_flags& f : saved)
    if (::fcntl(f.fd, F_GETFD) != f.flags) ::fcntl(f.fd, F_SETFD, f.flags);
}

// Marks every descriptor from 3 up CLOEXEC: one close_range call where the
// kernel allows it, else each descriptor of the snapshot (never a loop up to
// RLIMIT_NOFILE, which may be a million). Any close_range error falls back:
// ENOSYS and EINVAL from kernels before 5.11, and EPERM (or anything else)
// from a container's seccomp profile.
inline void cloexec_from_3(const std::vector<fd_flags>& open_now) {
#ifdef SYS_close_range
  if (::syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_CLOEXEC) == 0) return;
#endif
  for (const fd_flags& f : open_now)
    if (f.fd >= 3 && !(f.flags & FD_CLOEXEC) && ::fcntl(f.fd, F_SETFD, f.flags | FD_CLOEXEC) == -1)
      throw_system_error("exec: fcntl F_SETFD FD_CLOEXEC " + std::to_string(f.fd));
}

inline std::string join(const std::vector<std::string>& parts, char sep) {
  std::string out;
  for (std::size_t i = 0; i < parts.size(); ++i) {
    if (i) out += sep;
    out += parts[i];
  }
  return out;
}

inline bool is_protocol_variable(std::string_view entry) {
  for (const char* name : fd_protocol_variables) {
    std::string_view n(name);
    if (entry.size() > n.size() && entry.substr(0, n.size()) == n && entry[n.size()] == '=') return true;
  }
  return false;
}

// Names published in PREFORK_FDNAMES: none, or one per descriptor, each
// non-empty and free of the list's separators.
inline void check_fd_names(const std::string& who, const std::vector<std::string>& names, std::size_t fds) {
  if (!names.empty() && names.size() != fds)
    throw std::invalid_argument(who + ": " + std::to_string(names.size()) + " names for " +
                                std::to_string(fds) + " descriptors");
  for (const std::string& name : names) {
    if (!name.empty() && name.find_first_of(":=\n", 0) == std::string::npos &&
        name.find('\0') == std::string::npos)
      continue;
    std::string why = who;
    why += ": descriptor name \"";
    why += name;
    why += "\" is empty or holds ':', '=' or a newline";
    throw std::invalid_argument(why);
  }
}

// `program` is what to execute (searched in PATH when it has no '/');
// argv[0] is passed unchanged.
[[noreturn]] inline void exec_program(const std::string& program, const std::vector<std::string>& argv,
                                      const std::vector<int>& keep, const std::vector<std::string>& names) {
  if (argv.empty() || program.empty()) throw std::invalid_argument("exec: empty argv");
  check_fd_names("exec", names, keep.size());
  for (std::size_t i = 0; i < keep.size(); ++i) {
    if (keep[i] < 0) throw std::invalid_argument("exec: cannot keep descriptor " + std::to_string(keep[i]));
    for (std::size_t j = 0; j < i; ++j)
      if (keep[j] == keep[i])
        throw std::invalid_argument("exec: descriptor " + std::to_string(keep[i]) + " kept twice");
    if (::fcntl(keep[i], F_GETFD) == -1)
      throw_system_error("exec: kept descriptor " + std::to_string(keep[i]));
  }

  // Everything is built before the first descriptor flag changes.
  const std::vector<std::string> candidates = path_candidates(program);
  std::vector<std::string> env;
  for (char** e = environ; e && *e; ++e)
    if (!is_protocol_variable(*e)) env.emplace_back(*e);
  std::vector<std::string> numbers;
  numbers.reserve(keep.size());
  for (int k : keep) numbers.push_back(std::to_string(k));
  env.push_back("PREFORK_FDS=" + join(numbers, ','));
  if (!names.empty()) env.push_back("PREFORK_FDNAMES=" + join(names, ':'));
  std::vector<char*> argv_ptrs, env_ptrs;
  for (const std::string& a : argv) argv_ptrs.push_back(const_cast<char*>(a.c_str()));
  argv_ptrs.push_back(nullptr);
  for (const std::string& e : env) env_ptrs.push_back(const_cast<char*>(e.c_str()));
  env_ptrs.push_back(nullptr);

  // exec discards stdio buffers; what the program printed must not vanish.
  (void)std::fflush(nullptr);
  std::vector<fd_flags> before = descriptor_flags();
  int err = 0;
  try {
    cloexec_from_3(before);
    for (int k : keep)
      if (::fcntl(k, F_SETFD, 0) == -1) throw_system_error("exec: fcntl F_SETFD 0 " + std::to_string(k));
  } catch (...) {
    restore_descriptor_flags(before);
    throw;
  }
  // The search execvp does: EACCES is remembered and reported if nothing
  // else is found; a missing file or directory moves on; anything else (a
  // binary for another machine, ENOEXEC, E2BIG) stops the search.
  bool denied = false;
  for (const std::string& c : candidates) {
    ::execve(c.c_str(), argv_ptrs.data(), env_ptrs.data());
    err = errno;
    if (err == EACCES) denied = true;
    if (err != EACCES && err != ENOENT && err != ENOTDIR && err != ESTALE && err != ELOOP &&
        err != ENAMETOOLONG)
      break;
  }
  if (denied && (err == ENOENT || err == ENOTDIR)) err = EACCES;
  restore_descriptor_flags(before);
  throw_system_error("exec " + program, err);
}

// Strict decimal: digits only, no sign, no spaces, fits an int.
inline bool parse_int(std::string_view text, int& out) {
  if (text.empty() || text.front() < '0' || text.front() > '9') return false;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  return ec == std::errc() && end == text.data() + text.size();
}

[[noreturn]] inline void malformed(const char* variable, std::string_view value, const std::string& why) {
  throw std::runtime_error("inherited descriptors: malformed " + std::string(variable) + "=\"" +
                           std::string(value) + "\": " + why);
}

inline std::vector<std::string> split(std::string_view text, char sep) {
  std::vector<std::string> out;
  for (;;) {
    std::size_t at = text.find(sep);
    out.emplace_back(text.substr(0, at));
    if (at == std::string_view::npos) return out;
    text.remove_prefix(at + 1);
  }
}

struct startup_state {
  std::vector<std::string> argv;
  std::filesystem::path cwd;
  int error = 0;

  startup_state() noexcept {
    try {
      int raw = ::open("/proc/self/cmdline", O_RDONLY | O_CLOEXEC);
      if (raw == -1) {
        error = errno;
        return;
      }
      prefork::fd file(raw);
      std::error_code ec;
      std::string all = read_all(file.get(), ec);
      if (ec) {
        error = ec.value();
        return;
      }
      // Each argument ends in '\0'.
      std::size_t start = 0;
      for (std::size_t i = 0; i < all.size(); ++i)
        if (all[i] == '\0') {
          argv.emplace_back(all, start, i - start);
          start = i + 1;
        }
      if (start < all.size()) argv.emplace_back(all, start);
      cwd = std::filesystem::current_path(ec);
    } catch (...) {
      argv.clear();
      error = ENOMEM;
    }
  }
};

inline const startup_state& startup() {
  static const startup_state state;
  return state;
}

// Runs during static initialisation of any program including this header,
// before main() has a chance to chdir or rewrite its argv.
inline const bool startup_captured = (startup(), true);

}  // namespace detail

// Replaces the process image with argv (argv[0] without '/' is searched in
// PATH), keeping exactly `keep` besides 0, 1 and 2, published in PREFORK_FDS
// in that order. Throws std::system_error naming the program if the exec
// fails, with every descriptor flag as it was before the call.
//
//   prefork::exec({"/usr/sbin/myserver", "--upgrade"}, {listener.get()});
[[noreturn]] inline void exec(const std::vector<std::string>& argv, const std::vector<int>& keep) {
  detail::exec_program(argv.empty() ? std::string() : argv[0], argv, keep, {});
}

// The same for a caller that must not throw on a system error: returns
// only if the exec failed, with `ec` holding the errno the throwing exec
// would carry and every descriptor flag as it was. Misuse (an empty argv, a
// descriptor kept twice) still throws.
inline void exec(const std::vector<std::string>& argv, const std::vector<int>& keep, std::error_code& ec) {
  ec.clear();
  try {
    exec(argv, keep);
  } catch (const std::system_error& e) {
    ec = e.code();
  }
}

// The same, with a name for each kept descriptor, published in
// PREFORK_FDNAMES ("http:admin"). Names hold no ':', '=' or newline.
[[noreturn]] inline void exec(const std::vector<std::string>& argv, const std::vector<int>& keep,
                              const std::vector<std::string>& names) {
  detail::exec_program(argv.empty() ? std::string() : argv[0], argv, keep, names);
}

// argv as this process was started (from /proc/self/cmdline, read while the
// program started). Throws if /proc could not be read then.
inline const std::vector<std::string>& startup_argv() {
  const detail::startup_state& s = detail::startup();
  if (s.argv.empty()) throw_system_error("read /proc/self/cmdline at startup", s.error ? s.error : EINVAL);
  return s.argv;
}

// The working directory when the program started; empty if unknown.
inline const std::filesystem::path& startup_cwd() { return detail::startup().cwd; }

// Re-executes the program as it was started: startup_argv(), a relative
// argv[0] like "./server" resolved against startup_cwd() (so a chdir since
// does not matter), a bare name searched in PATH again (so a newly installed
// binary is what runs). Same descriptor rules as exec().
[[noreturn]] inline void exec_self(const std::vector<int>& keep, const std::vector<std::string>& names = {}) {
  const std::vector<std::string>& argv = startup_argv();
  std::string program = argv[0];
  if (program.find('/') != std::string::npos && program.front() != '/' && !startup_cwd().empty())
    program = (startup_cwd() / program).string();
  detail::exec_program(program, argv, keep, names);
}

namespace detail {

// Reads PREFORK_FDS, else LISTEN_FDS for this process, and takes what they
// list: each checked to be open and marked CLOEXEC at once, the variables
// removed. Nothing when they are absent (or already read).
inline inherited load_inherited_fds() {
  inherited out;
  std::vector<int> numbers;
  std::vector<std::string> names;
  bool listen_pid_matches = false;
  if (const char* pid_text = std::getenv("LISTEN_PID")) {
    int pid = 0;
    if (!detail::parse_int(pid_text, pid) || pid == 0)
      detail::malformed("LISTEN_PID", pid_text, "expected a process id");
    listen_pid_matches = pid == ::getpid();
  }
  const char* listen_fds = std::getenv("LISTEN_FDS");
  if (listen_pid_matches && !listen_fds)
    throw std::runtime_error("inherited descriptors: LISTEN_PID is this process but LISTEN_FDS is not set");
  const char* name_variable = nullptr;
  if (const char* list = std::getenv("PREFORK_FDS")) {
    out.source = "PREFORK_FDS";
    name_variable = "PREFORK_FDNAMES";
    if (*list)
      for (const std::string& item : detail::split(list, ',')) {
        int n = -1;
        if (!detail::parse_int(item, n))
          detail::malformed("PREFORK_FDS", list, "\"" + item + "\" is not a descriptor number");
        for (int seen : numbers)
          if (seen == n) detail::malformed("PREFORK_FDS", list, "descriptor " + item + " listed twice");
        numbers.push_back(n);
      }
  } else if (listen_pid_matches) {
    out.source = "LISTEN_FDS";
    name_variable = "LISTEN_FDNAMES";
    int count = -1;
    if (!detail::parse_int(listen_fds, count) || count > INT_MAX - 3)
      detail::malformed("LISTEN_FDS", listen_fds, "expected a count of descriptors");
    for (int i = 0; i < count; ++i) numbers.push_back(3 + i);
  }
  if (name_variable) {
    if (const char* text = std::getenv(name_variable); text && !numbers.empty()) {
      names = detail::split(text, ':');
      if (names.size() != numbers.size())
        detail::malformed(
            name_variable, text,
            std::to_string(names.size()) + " names for " + std::to_string(numbers.size()) + " descriptors");
    }
  }
  for (int n : numbers)
    if (::fcntl(n, F_GETFD) == -1)
      throw std::runtime_error("inherited descriptors: " + out.source + " lists descriptor " +
                               std::to_string(n) + ", which is not open");
  for (int n : numbers) {
    prefork::fd owned(n);
    owned.set_cloexec(true);
    out.fds.push_back(std::move(owned));
  }
  names.resize(numbers.size());
  out.names = std::move(names);
  ::unsetenv("PREFORK_FDS");
  ::unsetenv("PREFORK_FDNAMES");
  if (listen_pid_matches)
    for (const char* v : {"LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"}) ::unsetenv(v);
  return out;
}

// What was inherited and not yet taken. The environment is read by the
// first listen() or take_inherited_fds() after it was set; listen() takes
// the socket of its address from here, take_inherited_fds() the rest.
struct inherited_store {
  std::mutex lock;
  inherited untaken;
};

inline inherited_store& inherited_fds_store() {
  static inherited_store store;
  return store;
}

// Called with the store locked: what the environment lists now joins it.
inline inherited& untaken_inherited_fds(inherited_store& store) {
  inherited fresh = load_inherited_fds();
  inherited& rest = store.untaken;
  if (!fresh.source.empty()) rest.source = fresh.source;
  for (std::size_t i = 0; i < fresh.fds.size(); ++i) {
    rest.fds.push_back(std::move(fresh.fds[i]));
    rest.names.push_back(std::move(fresh.names[i]));
  }
  return rest;
}

// The first inherited descriptor, not yet taken, that `wanted` accepts
// (listen() looks for its address); an invalid fd if none.
template <class Predicate>
fd take_inherited_fd_if(Predicate wanted) {
  inherited_store& store = inherited_fds_store();
  std::lock_guard<std::mutex> hold(store.lock);
  inherited& rest = untaken_inherited_fds(store);
  for (std::size_t i = 0; i < rest.fds.size(); ++i) {
    if (!wanted(rest.fds[i].get())) continue;
    fd found = std::move(rest.fds[i]);
    rest.fds.erase(rest.fds.begin() + static_cast<std::ptrdiff_t>(i));
    rest.names.erase(rest.names.begin() + static_cast<std::ptrdiff_t>(i));
    return found;
  }
  return fd();
}

}  // namespace detail

// Takes the descriptors this process inherited: from PREFORK_FDS (set by
// exec()), else from systemd's LISTEN_FDS (descriptors 3, 4, ...) when
// LISTEN_PID is this process (otherwise they are meant for another process
// and ignored), less any that listen() already took for its address. Each
// is checked to be open and marked CLOEXEC again as soon as it is read, and
// the variables are removed, so a second call returns nothing. Malformed
// values throw std::runtime_error naming the variable and its value, before
// any descriptor is taken. The pool's master calls it as it starts and
// closes whatever nobody took; another program may call it and drop the
// result to do the same.
inline inherited take_inherited_fds() {
  detail::inherited_store& store = detail::inherited_fds_store();
  std::lock_guard<std::mutex> hold(store.lock);
  inherited out = std::move(detail::untaken_inherited_fds(store));
  store.untaken = inherited();
  return out;
}

// take_inherited_fds() without the names.
inline std::vector<fd> inherited_fds() { return take_inherited_fds().fds; }

}  // namespace prefork
