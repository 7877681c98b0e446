// prefork-httpd: a Unicorn-style preforking HTTP/1.1 server built on prefork.
//
// main() is the assembly: parse the command line, check ROOT and the user,
// detach if asked, open the logs, bind (or inherit) the listening sockets,
// and hand everything to prefork::master, whose workers run the blocking or
// the evented loop. Startup failures print one line naming the cause and
// exit 1; bad options print the option, the usage line, and exit 2.
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

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
#include "blocking_worker.hpp"
#include "cli.hpp"
#include "evented_worker.hpp"
#include "routes.hpp"

namespace {

using httpd::options;

// A startup failure: main prints it as one line and exits 1.
struct startup_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// "2026-11-27T03:20:01.123Z prefork-httpd[1234]: text", in one write.
void log_line(std::string_view text) {
  timespec now{};
  ::clock_gettime(CLOCK_REALTIME, &now);
  std::tm utc{};
  ::gmtime_r(&now.tv_sec, &utc);
  char head[96];
  int n = std::snprintf(head, sizeof head, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ prefork-httpd[%ld]: ",
                        utc.tm_year + 1900, utc.tm_mon + 1, utc.tm_mday, utc.tm_hour, utc.tm_min, utc.tm_sec,
                        now.tv_nsec / 1000000, static_cast<long>(::getpid()));
  std::string line(head, n > 0 ? static_cast<std::size_t>(n) : 0);
  line += text;
  line += '\n';
  std::error_code ec;
  prefork::write_all(STDERR_FILENO, line.data(), line.size(), ec);
}

void check_user(const options& o) {
  if (o.user.empty()) return;
  errno = 0;
  if (::getpwnam(o.user.c_str()) == nullptr)
    throw startup_error("--user: no user named '" + o.user + "'" + (errno ? std::string(": ") + std::strerror(errno) : ""));
  if (!o.group.empty() && ::getgrnam(o.group.c_str()) == nullptr)
    throw startup_error("--user: no group named '" + o.group + "'");
}

void check_root(const options& o) {
  std::error_code ec;
  if (!std::filesystem::exists(o.root, ec)) throw startup_error("ROOT " + o.root.string() + ": no such directory");
  if (!std::filesystem::is_directory(o.root, ec)) throw startup_error("ROOT " + o.root.string() + ": not a directory");
  if (::access(o.root.c_str(), R_OK | X_OK) == -1)
    throw startup_error("ROOT " + o.root.string() + ": " + std::strerror(errno));
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
  // Last, so its index is the same in every worker and after an upgrade
  // (the listeners travel in order). No TCP_DEFER_ACCEPT: a probe may connect
  // and wait.
  if (!o.admin_listen.empty()) fds.push_back(prefork::listen(o.admin_listen, prefork::listen_options{}));
  return fds;
}

std::string describe_url(int sock) {
  std::string addr = prefork::local_address(sock);
  if (addr.rfind("unix:", 0) == 0) return addr;
  return "http://" + addr;
}

}  // namespace

int main(int argc, char** argv) {
  options opts;
  try {
    opts = httpd::parse_command_line(argc, argv);
  } catch (const httpd::usage_error& e) {
    std::fprintf(stderr, "prefork-httpd: %s\n%s\n", e.what(), httpd::usage_line());
    return 2;
  }
  if (opts.help) {
    std::fputs(httpd::help_text().c_str(), stdout);
    return 0;
  }
  if (opts.version) {
    std::printf("prefork-httpd %s\n", PREFORK_VERSION_STRING);
    return 0;
  }

  std::optional<prefork::daemon_launch> launch;
  try {
    check_root(opts);
    check_addresses(opts);
    check_user(opts);
    if (opts.check) {
      std::printf("prefork-httpd: configuration OK (ROOT %s, %u workers, %s mode)\n", opts.root.c_str(), opts.workers,
                  opts.mode == httpd::worker_mode::evented ? "evented" : "blocking");
      return 0;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "prefork-httpd: %s\n", e.what());
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
    srv.log.with_microseconds(opts.access_log_us);

    prefork::pool_config config;
    config.workers = opts.workers;
    config.timeout = opts.timeout;
    config.graceful_timeout = opts.graceful_timeout;
    config.graceful_term = opts.graceful_term;
    if (!inherited) config.listeners = open_listeners(opts);  // else the pool takes the inherited ones
    config.pid_file = opts.pid_file;
    config.upgrade =
        opts.upgrade == httpd::upgrade_kind::in_place ? prefork::upgrade_mode::in_place : prefork::upgrade_mode::fork_exec;
    config.max_requests = opts.max_requests;
    config.reuseport = opts.reuseport;

    config.log = [&](std::string_view event) { log_line(event); };
    // All workers ready: the moment -D's launcher and the tests wait for
    // (on_ready runs again after each HUP and upgrade; say it once).
    bool announced = false;
    config.on_ready = [&] {
      if (std::exchange(announced, true)) return;
      log_line("ready: " + std::to_string(opts.workers) + " workers serving");
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
      if (!opts.user.empty()) prefork::become_user(opts.user, opts.group);
    };

    prefork::master m(std::move(config));
    if (!opts.admin_listen.empty() && !m.config().listeners.empty())
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
      if (opts.mode == httpd::worker_mode::evented)
        httpd::run_evented(srv, w);
      else
        httpd::run_blocking(srv, w);
    });
  } catch (const std::exception& e) {
    log_line(std::string("cannot start: ") + e.what());
    if (launch && launch->pending()) launch->failed(e.what());
    return 1;
  }
}
