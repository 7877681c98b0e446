// prefork/daemon.hpp: becoming a classic Unix daemon, and dropping root.
//
// daemonize() forks, calls setsid() in the child and forks again, so the
// daemon is in a session of its own and can never reacquire a controlling
// terminal. The launching process does not return: it waits until the daemon
// says ready() (exit 0) or failed(why) (prints why, exit 1), or dies first
// (exit 1), so a shell script or an init system sees whether the daemon
// really started. The channel is a socketpair rather than a pipe so a daemon
// whose launcher was killed gets EPIPE, not SIGPIPE. become_user() drops
// privileges in the only safe order. Stands on fork, setsid, socketpair,
// pidfd_open, poll, open, dup2, getpwnam_r, getgrnam_r, initgroups, setgid
// and setuid.
#pragma once

#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <prefork/error.hpp>
#include <prefork/fd.hpp>
#include <prefork/process.hpp>

namespace prefork {

namespace detail {

// Messages from the daemon side to the launcher: a type byte, a 32-bit length,
// the payload. 'P' carries the daemon's PID, 'R' means ready, 'F' failed
// (payload: the text), 'E' a failed call (payload: errno, then the call).
// Allocates nothing: the first child sends with it too.
inline void send_launch_message(int sock, char type, std::string_view payload) noexcept {
  char head[5] = {type};
  auto len = static_cast<std::uint32_t>(payload.size());
  std::memcpy(head + 1, &len, sizeof len);
  iovec parts[2] = {{head, sizeof head}, {const_cast<char*>(payload.data()), payload.size()}};
  msghdr msg{};
  msg.msg_iov = parts;
  msg.msg_iovlen = 2;
  while (msg.msg_iovlen > 0) {
    ssize_t n = retry([&] { return ::sendmsg(sock, &msg, MSG_NOSIGNAL); });
    if (n <= 0) return;  // the launcher is gone: nobody is left to tell
    auto sent = static_cast<std::size_t>(n);
    while (msg.msg_iovlen > 0 && sent >= msg.msg_iov->iov_len) {
      sent -= msg.msg_iov->iov_len;
      ++msg.msg_iov;
      --msg.msg_iovlen;
    }
    if (msg.msg_iovlen > 0) {
      msg.msg_iov->iov_base = static_cast<char*>(msg.msg_iov->iov_base) + sent;
      msg.msg_iov->iov_len -= sent;
    }
  }
}

// The launching process: reap the first child, then wait for a verdict.
[[noreturn]] inline void await_daemon(fd sock, pid_t first) {
  int status = 0;
  retry([&] { return ::waitpid(first, &status, 0); });
  std::string buf;
  bool daemon_gone = false;
  pid_t daemon_pid = 0;
  fd daemon_pidfd;
  auto say = [](std::string_view text) {
    std::string line(text);
    if (line.empty() || line.back() != '\n') line += '\n';
    std::error_code ignored;
    write_all(STDERR_FILENO, line.data(), line.size(), ignored);
  };
  auto handle = [&] {  // acts on every complete message in buf
    while (buf.size() >= 5) {
      std::uint32_t len;
      std::memcpy(&len, buf.data() + 1, sizeof len);
      if (buf.size() < 5 + len) return;
      std::string payload = buf.substr(5, len);
      char type = buf[0];
      buf.erase(0, 5 + len);
      if (type == 'R') ::_exit(0);
      if (type == 'F') {
        say(payload);
        ::_exit(1);
      }
      if (type == 'E' && payload.size() > sizeof(int)) {
        int err;
        std::memcpy(&err, payload.data(), sizeof err);
        say(system_error("daemonize: " + payload.substr(sizeof err), err).what());
        ::_exit(1);
      }
      if (type == 'P' && payload.size() == sizeof daemon_pid) {
        std::memcpy(&daemon_pid, payload.data(), sizeof daemon_pid);
        std::error_code ec;
        daemon_pidfd = open_pidfd(daemon_pid, ec);
        daemon_gone = static_cast<bool>(ec);  // ESRCH: gone already
      }
    }
  };
  char chunk[4096];
  for (;;) {
    // The pidfd catches a daemon that dies while a child it forked still
    // holds the socket open (no end of file then).
    pollfd p[2] = {{sock.get(), POLLIN, 0}, {daemon_pidfd.get(), POLLIN, 0}};
    if (!daemon_gone && retry([&] { return ::poll(p, daemon_pidfd ? 2 : 1, -1); }) == -1) break;
    if (daemon_pidfd && (p[1].revents & POLLIN)) daemon_gone = true;
    // Once it is gone, read only what it said before dying, then stop.
    ssize_t n =
        retry([&] { return ::recv(sock.get(), chunk, sizeof chunk, daemon_gone ? MSG_DONTWAIT : 0); });
    if (n <= 0) break;
    buf.append(chunk, static_cast<std::size_t>(n));
    handle();
  }
  say(daemon_pid ? "daemonize: the daemon (PID " + std::to_string(daemon_pid) + ") exited before it was ready"
                 : std::string("daemonize: the daemon exited before it was ready"));
  ::_exit(1);
}

// The rule daemonize() documents. A terminal would tie the daemon to a
// session, and a pipe would keep a reader such as $(...) waiting forever.
inline void detach_std_streams() {
  int null = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  if (null == -1) throw_system_error("open /dev/null");
  bool null_is_std = false;
  for (int n = 0; n <= 2; ++n) {
    struct stat st;
    if (n > 0 && ::fstat(n, &st) == 0 && S_ISREG(st.st_mode)) continue;
    if (n == null) {  // opened into a closed 0-2 slot: dup2 onto itself would keep CLOEXEC
      if (::fcntl(n, F_SETFD, 0) == -1) throw_system_error("fcntl F_SETFD " + std::to_string(n));
      null_is_std = true;
    } else if (retry([&] { return ::dup2(null, n); }) == -1) {
      throw_system_error("dup2 /dev/null " + std::to_string(n));
    }
  }
  if (!null_is_std) ::close(null);
}

}  // namespace detail

// Held by the daemon; tells the waiting launcher how the start went. Dropped
// without ready() or failed(), the launcher reports that the daemon exited
// before it was ready.
class daemon_launch {
 public:
  explicit daemon_launch(fd channel) noexcept : channel_(std::move(channel)) {}
  daemon_launch(daemon_launch&&) noexcept = default;
  daemon_launch& operator=(daemon_launch&&) noexcept = default;

  // The launching process exits 0.
  void ready() { finish('R', {}); }
  // The launching process prints `why` on its stderr and exits 1. The daemon
  // carries on; it normally exits next.
  void failed(std::string_view why) { finish('F', why); }

  // True until ready() or failed() was called.
  bool pending() const noexcept { return static_cast<bool>(channel_); }

 private:
  void finish(char type, std::string_view why) {
    if (!channel_) throw std::logic_error("daemon_launch: ready() or failed() was already called");
    detail::send_launch_message(channel_.get(), type, why);
    channel_.reset();
  }

  fd channel_;
};

// Turns the calling process into a daemon and returns in the daemon only: the
// launching process waits for the verdict and exits. The daemon has a session
// of its own (of which it is not the leader), its working directory is /,
// and every descriptor but the standard three is kept. Standard streams:
// stdin becomes /dev/null; stdout and stderr stay if they are regular files
// (a log the caller redirected to), and otherwise become /dev/null too, be
// they a terminal, a pipe, a socket or closed. Buffered stdio output is
// flushed first so that it is not written twice.
inline daemon_launch daemonize() {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == -1) throw_system_error("socketpair");
  fd launcher_end(sv[0]), daemon_end(sv[1]);
  (void)std::fflush(nullptr);  // a stream that fails now fails again at exit; nothing to undo here
  pid_t first = ::fork();
  if (first == -1) throw_system_error("fork");
  if (first > 0) {
    daemon_end.reset();
    try {
      detail::await_daemon(std::move(launcher_end), first);
    } catch (...) {  // the launcher must never return into the caller's code
      ::_exit(1);
    }
  }
  launcher_end.reset();
  // The first child allocates nothing: the launcher's other threads (if any)
  // did not come along, and their locks may be held. The launcher words it.
  auto give_up = [&](std::string_view call) {
    char payload[32];
    int err = errno;
    std::memcpy(payload, &err, sizeof err);
    std::memcpy(payload + sizeof err, call.data(), call.size());
    detail::send_launch_message(daemon_end.get(), 'E', std::string_view(payload, sizeof err + call.size()));
    ::_exit(1);
  };
  if (::setsid() == -1) give_up("setsid");
  pid_t second = ::fork();
  if (second == -1) give_up("fork");
  if (second > 0) {
    detail::send_launch_message(daemon_end.get(), 'P',
                                std::string_view(reinterpret_cast<const char*>(&second), sizeof second));
    ::_exit(0);
  }
  try {
    if (::chdir("/") == -1) throw_system_error("chdir /");
    detail::detach_std_streams();
  } catch (const std::system_error& e) {
    detail::send_launch_message(daemon_end.get(), 'F', std::string("daemonize: ") + e.what());
    throw;
  }
  return daemon_launch(std::move(daemon_end));
}

namespace detail {

// Calls a getpwnam_r-style `lookup(entry, buf, size, &result)` with a buffer
// grown on ERANGE, and `use(entry)` while the buffer is alive. False when
// there is no such entry.
template <class Entry, class Lookup, class Use>
bool lookup_entry(const char* what, Lookup lookup, Use use) {
  std::vector<char> buf(1024);
  for (;;) {
    Entry entry{};
    Entry* found = nullptr;
    int err = lookup(&entry, buf.data(), buf.size(), &found);
    if (err == ERANGE && buf.size() < (1u << 20)) {
      buf.resize(buf.size() * 2);
      continue;
    }
    // Several errno values mean "not found" depending on the NSS module.
    if (err != 0 && err != ENOENT && err != ESRCH && err != EBADF && err != EPERM)
      throw_system_error(what, err);
    if (!found) return false;
    use(*found);
    return true;
  }
}

inline bool all_digits(std::string_view s) {
  return !s.empty() && s.size() < 10 && s.find_first_not_of("0123456789") == std::string_view::npos;
}

}  // namespace detail

// Switches the whole process to `user` (a name, or a numeric UID) and to
// `group_name` (a name or numeric GID; default: the user's primary group):
// supplementary groups first (initgroups), then the GID, then the UID, the
// only order in which each step is still permitted; then checks that root
// cannot be regained. Every lookup happens before anything changes; an
// unknown user or group is a std::invalid_argument naming it.
inline void become_user(std::string_view user, std::string_view group_name = {}) {
  const std::string user_str(user), group_str(group_name);
  std::string login;
  uid_t uid = 0;
  gid_t gid = 0;
  auto take_user = [&](const passwd& pw) {
    login = pw.pw_name;
    uid = pw.pw_uid;
    gid = pw.pw_gid;
  };
  bool found = detail::lookup_entry<passwd>(("getpwnam_r " + user_str).c_str(),
                                            [&](passwd* p, char* b, std::size_t n, passwd** r) {
                                              return ::getpwnam_r(user_str.c_str(), p, b, n, r);
                                            },
                                            take_user);
  if (!found && detail::all_digits(user))
    found = detail::lookup_entry<passwd>(("getpwuid_r " + user_str).c_str(),
                                         [&](passwd* p, char* b, std::size_t n, passwd** r) {
                                           return ::getpwuid_r(static_cast<uid_t>(std::stoul(user_str)), p, b,
                                                               n, r);
                                         },
                                         take_user);
  if (!found) throw std::invalid_argument("become_user: no such user '" + user_str + "'");

  if (!group_name.empty()) {
    auto take_group = [&](const group& gr) { gid = gr.gr_gid; };
    bool have = detail::lookup_entry<group>(("getgrnam_r " + group_str).c_str(),
                                            [&](group* g, char* b, std::size_t n, group** r) {
                                              return ::getgrnam_r(group_str.c_str(), g, b, n, r);
                                            },
                                            take_group);
    if (!have && detail::all_digits(group_name))
      have = detail::lookup_entry<group>(("getgrgid_r " + group_str).c_str(),
                                         [&](group* g, char* b, std::size_t n, group** r) {
                                           return ::getgrgid_r(static_cast<gid_t>(std::stoul(group_str)), g,
                                                               b, n, r);
                                         },
                                         take_group);
    if (!have) throw std::invalid_argument("become_user: no such group '" + group_str + "'");
  }

  if (::initgroups(login.c_str(), gid) == -1) throw_system_error("initgroups " + login);
  if (::setgid(gid) == -1) throw_system_error("setgid " + std::to_string(gid));
  if (::setuid(uid) == -1) throw_system_error("setuid " + std::to_string(uid));
  // A process that kept a saved set-user-ID of 0 could undo all of this.
  if (uid != 0 && (::setuid(0) != -1 || ::seteuid(0) != -1))
    throw std::runtime_error("become_user: root could be regained after switching to '" + user_str + "'");
}

}  // namespace prefork
