// httpd/run.cpp: the server's entry point, httpd::run() (see app.hpp), which
// an application's main() calls with its handlers (prefork-httpd's own main
// is in demo_app.cpp).
//
// run() is the assembly: parse the command line, check ROOT and the user,
// detach if asked, open the logs, bind (or inherit) the listening sockets,
// and hand everything to prefork::master, whose workers run the blocking,
// the evented or the io_uring loop. Startup failures print one line naming the cause and
// exit 1; bad options print the option, the usage line, and exit 2.
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <optional>
#include <string>
#include <utility>

#include <prefork/exec.hpp>
#include <prefork/pool.hpp>
#include <prefork/process.hpp>
#include <prefork/socket.hpp>
#include <prefork/version.hpp>

#include "access_log.hpp"
#include "app.hpp"
#include "blocking_worker.hpp"
#include "cli.hpp"
#include "evented_worker.hpp"
#include "routes.hpp"
#include "uring_worker.hpp"

namespace httpd {
namespace {

// The application's name, for the error log's lines.
std::string program = "prefork-httpd";

}  // namespace

// "2026-11-27T03:20:01.123Z prefork-httpd[1234]: text", in one write.
void log_line(std::string_view text) {
  timespec now{};
  ::clock_gettime(CLOCK_REALTIME, &now);
  std::tm utc{};
  ::gmtime_r(&now.tv_sec, &utc);
  char head[96];
  int n = std::snprintf(head, sizeof head, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ ", utc.tm_year + 1900,
                        utc.tm_mon + 1, utc.tm_mday, utc.tm_hour, utc.tm_min, utc.tm_sec, now.tv_nsec / 1000000);
  std::string line(head, n > 0 ? static_cast<std::size_t>(n) : 0);
  line += program;
  line += '[';
  line += std::to_string(::getpid());
  line += "]: ";
  line += text;
  line += '\n';
  std::error_code ec;
  prefork::write_all(STDERR_FILENO, line.data(), line.size(), ec);
}

}  // namespace httpd

namespace {

using httpd::log_line;
using httpd::options;

// A startup failure: run() prints it as one line and returns 1.
struct startup_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

void check_user(const options& o) {
  if (o.user.empty()) return;
  errno = 0;
  if (::getpwnam(o.user.c_str()) == nullptr)
    throw startup_error("--user: no user named '" + o.user + "'" + (errno ? std::string(": ") + std::strerror(errno) : ""));
  if (!o.group.empty() && ::getgrnam(o.group.c_str()) == nullptr)
    throw startup_error("--user: no group named '" + o.group + "'");
}

void check_root(const options& o, const std::string& operand) {
  std::error_code ec;
  const std::string root = operand + " " + o.root.string();
  if (!std::filesystem::exists(o.root, ec)) throw startup_error(root + ": no such directory");
  if (!std::filesystem::is_directory(o.root, ec)) throw startup_error(root + ": not a directory");
  if (::access(o.root.c_str(), R_OK | X_OK) == -1) throw startup_error(root + ": " + std::strerror(errno));
}

void replace_all(std::string& s, std::string_view from, std::string_view to) {
  for (std::size_t at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size()))
    s.replace(at, from.size(), to);
}

// The server's options with the application's name, operand and paragraph
// in place of prefork-httpd's (whose text cli.cpp keeps as it was).
std::string usage_for(const httpd::app& a) {
  std::string u = httpd::usage_line();
  replace_all(u, "prefork-httpd", a.name());
  if (a.operand_name() != "ROOT") replace_all(u, "[ROOT]", a.operand_name());
  return u;
}

std::string help_for(const httpd::app& a) {
  std::string h = httpd::help_text();
  if (a.about_text().empty()) return h;
  const std::size_t opts = h.find("\n  -l, --listen"), routes = h.find(" Routes: "), signals = h.find("\nSignals to");
  if (opts == std::string::npos || routes == std::string::npos || signals == std::string::npos) return h;
  std::string out = usage_for(a) + "\n\n" + a.about_text();
  if (out.back() != '\n') out += '\n';
  out += h.substr(opts, routes - opts) + "\n" + h.substr(signals);
  replace_all(out, "prefork-httpd", a.name());
  if (a.operand_name() != "ROOT") replace_all(out, "ROOT", a.operand_name());
  return out;
}

void check_addresses(const options& o) {
  if (!o.admin_listen.empty()) {
    try {
      prefork::socket_address::resolve(o.admin_listen);
    } catch (const std::exception& e) {
      throw startup_error(std::string("--admin-listen ") + o.admin_listen + ": " + e.what());
    }
  }
  for (const std::string& a : o.listen) {
    try {
      prefork::socket_address::resolve(a);
    } catch (const std::exception& e) {
      throw startup_error(std::string("--listen ") + a + ": " + e.what());
    }
  }
}

// Whether listening sockets were handed to us: by an upgrading master
// (PREFORK_FDS) or by systemd (LISTEN_FDS for our PID). The pool takes them
// itself (inherited_fds()), so they are only looked at here, not taken.
bool sockets_inherited() {
  if (const char* fds = std::getenv("PREFORK_FDS"); fds && *fds) return true;
  const char* fds = std::getenv("LISTEN_FDS");
  const char* pid = std::getenv("LISTEN_PID");
  return fds && *fds && pid && std::atol(pid) == static_cast<long>(::getpid());
}

std::vector<prefork::fd> open_listeners(const options& o) {
  std::vector<prefork::fd> fds;
  std::vector<std::string> addrs = o.listen.empty() ? std::vector<std::string>{"127.0.0.1:8080"} : o.listen;
  prefork::listen_options lo;
  lo.reuseport = o.reuseport;
  // The kernel holds a connection until its first bytes arrive, so a
  // blocking worker's first read rarely waits (TCP only).
  long defer = (o.header_timeout.count() + 999) / 1000;
  for (const std::string& a : addrs) {
    lo.defer_accept_s = (a.rfind("unix:", 0) == 0 || a[0] == '/') ? 0 : static_cast<int>(defer);
    fds.push_back(prefork::listen(a, lo));
  }
  // Last, and named "admin" in main(): the name, not the place, marks it
  // after an upgrade. No TCP_DEFER_ACCEPT: a probe may connect and wait.
  // SO_REUSEPORT as the others: with --reuseport every listener needs it
  // (each worker then has a socket of its own on each).
  prefork::listen_options admin;
  admin.reuseport = o.reuseport;
  if (!o.admin_listen.empty()) fds.push_back(prefork::listen(o.admin_listen, admin));
  return fds;
}

std::string describe_url(int sock) {
  std::string addr = prefork::local_address(sock);
  if (addr.rfind("unix:", 0) == 0) return addr;
  return "http://" + addr;
}

}  // namespace

int httpd::run(int argc, char** argv, const app& a) {
  program = a.name();
  const char* name = a.name().c_str();
  options opts;
  try {
    opts = httpd::parse_command_line(argc, argv);
    // Without static files the bundled demo site means nothing: the
    // application's directory must be named.
    if (!a.serves_static() && !opts.root_given && !opts.help && !opts.version)
      throw usage_error(a.operand_name() + ": required");
  } catch (const httpd::usage_error& e) {
    std::fprintf(stderr, "%s: %s\n%s\n", name, e.what(), usage_for(a).c_str());
    return 2;
  }
  if (opts.help) {
    std::fputs(help_for(a).c_str(), stdout);
    return 0;
  }
  if (opts.version) {
    std::printf("%s %s\n", name, PREFORK_VERSION_STRING);
    return 0;
  }

  std::optional<prefork::daemon_launch> launch;
  std::string uring_missing;  // -m uring, and why it runs the evented loop instead
  try {
    check_root(opts, a.operand_name());
    check_addresses(opts);
    check_user(opts);
    // Once, in the master: the workers inherit the answer, and the mode
    // the lines below name is the one that runs.
    if (opts.mode == httpd::worker_mode::uring) {
#if PREFORK_HTTPD_URING
      uring_missing = httpd::uring_unavailable();
      if (!uring_missing.empty()) opts.mode = httpd::worker_mode::evented;
#else
      throw startup_error("-m uring: this " + a.name() + " was built without liburing");
#endif
    }
    if (opts.check) {
      std::printf("%s: configuration OK (%s %s, %u workers, %s mode%s)\n", name, a.operand_name().c_str(),
                  opts.root.c_str(), opts.workers, httpd::mode_name(opts.mode),
                  uring_missing.empty() ? "" : ("; io_uring unavailable: " + uring_missing).c_str());
      return 0;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", name, e.what());
    return 1;
  }

  try {
    // Absolute before daemonizing: the daemon runs from "/".
    opts.root = std::filesystem::absolute(opts.root);
    if (!opts.pid_file.empty()) opts.pid_file = std::filesystem::absolute(opts.pid_file);
    // Before binding: a second start says "already running as PID N", not
    // "Address already in use" (the master writes the pid file only later).
    if (!opts.pid_file.empty()) prefork::pid_file::check_not_running(opts.pid_file);
    if (!opts.access_log.empty() && opts.access_log != "-") opts.access_log = std::filesystem::absolute(opts.access_log);
    if (!opts.error_log.empty()) opts.error_log = std::filesystem::absolute(opts.error_log);
    if (!opts.drain_file.empty()) opts.drain_file = std::filesystem::absolute(opts.drain_file);
    // An upgrade re-executes us with the same arguments: the new master is
    // already detached (and must keep its PID for an in-place upgrade).
    const bool inherited = sockets_inherited();
    if (opts.daemonize && !std::getenv("PREFORK_FDS")) launch.emplace(prefork::daemonize());

    // An evented worker holds one descriptor per connection: take what the
    // hard limit allows (the cap follows from it, evented_worker.hpp).
    rlimit files{};
    if (::getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max) {
      files.rlim_cur = files.rlim_max;
      ::setrlimit(RLIMIT_NOFILE, &files);
    }

    httpd::log_file error_log;
    httpd::server srv(opts, opts.root);
    srv.application = &a;
    if (!opts.user.empty() && ::geteuid() == 0) {
      // Workers run as --user and reopen the logs on USR1 themselves: the
      // files the master (re)creates must be theirs, as Unicorn does it.
      const passwd* pw = ::getpwnam(opts.user.c_str());
      const group* gr = opts.group.empty() ? nullptr : ::getgrnam(opts.group.c_str());
      if (!pw) throw startup_error("--user: no user named '" + opts.user + "'");
      gid_t gid = gr ? gr->gr_gid : pw->pw_gid;
      error_log.set_owner(pw->pw_uid, gid);
      srv.log.file().set_owner(pw->pw_uid, gid);
    }
    if (!opts.error_log.empty()) error_log.open(opts.error_log, STDERR_FILENO);
    if (!opts.access_log.empty()) srv.log.file().open(opts.access_log);
    if (!uring_missing.empty())
      log_line("-m uring: io_uring unavailable (" + uring_missing + "): running the evented loop instead");
    srv.log.with_microseconds(opts.access_log_us);

    a.start(opts);  // before the workers: what it opens, they share

    prefork::pool_config config;
    config.workers = opts.workers;
    config.timeout = opts.timeout;
    config.graceful_timeout = opts.graceful_timeout;
    config.graceful_term = opts.graceful_term;
    if (!inherited) {
      config.listeners = open_listeners(opts);  // else the pool takes the inherited ones, and their names
      // Named, so the admin socket is known by its name after an upgrade
      // (PREFORK_FDNAMES) whatever the order sockets arrive in.
      config.listener_names.assign(config.listeners.size(), "http");
      if (!opts.admin_listen.empty()) config.listener_names.back() = "admin";
    }
    config.pid_file = opts.pid_file;
    config.upgrade =
        opts.upgrade == httpd::upgrade_kind::in_place ? prefork::upgrade_mode::in_place : prefork::upgrade_mode::fork_exec;
    config.max_requests = opts.max_requests;
    config.refork_after = opts.refork_after;
    config.refork = !opts.refork_after.empty();
    config.reuseport = opts.reuseport;

    config.log = [&](std::string_view event) { log_line(event); };
    // All workers ready: the moment -D's launcher and the tests wait for
    // (on_ready runs again after each HUP and upgrade; say it once).
    bool announced = false;
    config.on_ready = [&] {
      if (std::exchange(announced, true)) return;
      log_line("ready: " + std::to_string(opts.workers) + " workers serving (" + httpd::mode_name(opts.mode) + " mode)");
      if (launch) launch->ready();
    };
    config.on_reopen_logs = [&] {
      // Said after the fact, so the line lands in the new error log.
      std::string why;
      bool ok = error_log.reopen(why);
      if (!ok) log_line(why);
      if (!srv.log.file().reopen(why)) {
        ok = false;
        log_line(why);
      }
      if (ok) log_line("logs reopened");
    };
    config.after_fork = [&](prefork::worker& w) {
      launch.reset();  // the master's business: a worker must not hold the launcher's channel
      ::signal(SIGPIPE, SIG_IGN);  // sendfile to a client gone is an error, not a death
      srv.worker = &w;
      // A worker forked by a mold (refork) inherits the mold's user already.
      if (!opts.user.empty() && ::geteuid() == 0) prefork::become_user(opts.user, opts.group);
    };

    prefork::master m(std::move(config));
    // The admin socket is the one named "admin" (ours, or a systemd socket
    // unit's FileDescriptorName=admin). With --admin-listen and none so
    // named (sockets from an image that did not name them), the last.
    const std::vector<std::string>& names = m.config().listener_names;
    if (auto it = std::find(names.begin(), names.end(), "admin"); it != names.end())
      srv.admin_listener = static_cast<std::size_t>(it - names.begin());
    else if (!opts.admin_listen.empty() && !m.config().listeners.empty())
      srv.admin_listener = m.config().listeners.size() - 1;
    // --proxy-protocol by --listen's order, which inherited sockets keep
    // (the admin listener, last, never expects a header).
    const std::size_t listeners = m.config().listeners.size();
    srv.proxy_listeners.assign(listeners, false);
    for (std::size_t i = 0; i < listeners; ++i)
      srv.proxy_listeners[i] = !(srv.admin_listener && *srv.admin_listener == i) &&
                               (opts.proxy_all || (i < opts.listen_proxy.size() && opts.listen_proxy[i]));
    for (std::size_t i = 0; i < listeners; ++i) {
      const prefork::fd& l = m.config().listeners[i];
      httpd::set_inherited_timeouts(l.get(), opts);
      log_line("listening on " + describe_url(l.get()) + (inherited ? " (inherited)" : "") +
               (srv.admin_listener && i == *srv.admin_listener ? " (admin)" : "") +
               (srv.proxy_listeners[i] ? " (PROXY protocol)" : ""));
    }
    return m.run([&](prefork::worker& w) {
      switch (opts.mode) {
        case httpd::worker_mode::evented: httpd::run_evented(srv, w); break;
        case httpd::worker_mode::blocking: httpd::run_blocking(srv, w); break;
        case httpd::worker_mode::uring:
#if PREFORK_HTTPD_URING
          httpd::run_uring(srv, w);
#endif
          break;
      }
    });
  } catch (const std::exception& e) {
    log_line(std::string("cannot start: ") + e.what());
    if (launch && launch->pending()) launch->failed(e.what());
    return 1;
  }
}
