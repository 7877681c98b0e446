// httpd/cli.cpp: option parsing for prefork-httpd (see cli.hpp).
#include "cli.hpp"

#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string_view>

#ifndef PREFORK_HTTPD_WWW
#define PREFORK_HTTPD_WWW ""
#endif

namespace httpd {
namespace {

[[noreturn]] void bad(std::string_view option, std::string_view why) {
  throw usage_error(std::string(option) + ": " + std::string(why));
}

unsigned long long parse_count(std::string_view option, const std::string& text, unsigned long long max) {
  if (text.empty() || text[0] < '0' || text[0] > '9') bad(option, "expected a non-negative integer, got '" + text + "'");
  errno = 0;
  char* end = nullptr;
  unsigned long long v = std::strtoull(text.c_str(), &end, 10);
  if (*end != '\0') bad(option, "expected a non-negative integer, got '" + text + "'");
  if (errno == ERANGE || v > max) bad(option, "'" + text + "' is too large (at most " + std::to_string(max) + ")");
  return v;
}

// Bytes, with an optional K, M or G (binary: 64M is 64 MiB).
unsigned long long parse_bytes(std::string_view option, std::string text, unsigned long long max) {
  unsigned shift = 0;
  if (!text.empty() && (text.back() == 'K' || text.back() == 'M' || text.back() == 'G')) {
    shift = text.back() == 'K' ? 10 : text.back() == 'M' ? 20 : 30;
    text.pop_back();
  }
  unsigned long long v = parse_count(option, text, max >> shift);
  return v << shift;
}

// Seconds, fractions allowed: "30", "0.5".
std::chrono::milliseconds parse_seconds(std::string_view option, const std::string& text, bool zero_ok) {
  char* end = nullptr;
  errno = 0;
  double v = text.empty() ? -1 : std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || !std::isfinite(v) || v < 0 || errno == ERANGE)
    bad(option, "expected seconds (e.g. 30 or 0.5), got '" + text + "'");
  if (v > 86400.0 * 365) bad(option, "'" + text + "' seconds is more than a year");
  auto ms = std::chrono::milliseconds(static_cast<long long>(std::llround(v * 1000)));
  if (!zero_ok && ms.count() <= 0) bad(option, "must be at least 0.001 seconds, got '" + text + "'");
  return ms;
}

unsigned online_cpus() {
  long n = ::sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? static_cast<unsigned>(n) : 1;
}

}  // namespace

const char* mode_name(worker_mode m) {
  switch (m) {
    case worker_mode::evented: return "evented";
    case worker_mode::blocking: return "blocking";
    case worker_mode::uring: return "uring";
  }
  return "evented";
}

const char* usage_line() { return "usage: prefork-httpd [options] [ROOT]   (prefork-httpd --help for the options)"; }

std::string help_text() {
  return std::string(usage_line()) + R"(

Serves the static files under ROOT and a few built-in routes with a
Unicorn-style preforking pool: one master binds the sockets, workers accept.

  -l, --listen ADDR         address to listen on, repeatable: 127.0.0.1:8080,
                            [::1]:8080, unix:/path (default 127.0.0.1:8080,
                            or the sockets inherited through PREFORK_FDS or
                            systemd's LISTEN_FDS when present)
      --proxy-protocol      the --listen before it expects a PROXY protocol
                            header (v1 or v2, as HAProxy's send-proxy-v2
                            sends) first on every connection, and refuses
                            connections without a valid one; given before
                            any --listen, every public listener does
      --admin-listen ADDR   serve /_status, /_metrics and /_health on this
                            address (127.0.0.1:9100, unix:/path) and not on
                            the public ones (default: on the public ones)
      --drain-file FILE     while FILE exists, GET /_health answers 503
                            "draining" and serving goes on (a balancer's cue)
  -w, --workers N           worker processes (default: online CPUs)
  -m, --mode MODE           evented (default: one epoll loop per worker with
                            keep-alive and pipelining), uring (the same with
                            io_uring: fewer system calls per request; where
                            the kernel cannot, it says why and runs evented)
                            or blocking (one connection, one request at a
                            time, like Unicorn)
  -t, --timeout SEC         a worker silent this long is killed (default 30)
      --graceful-timeout SEC  QUIT: how long workers may finish (default 30)
      --graceful-term       TERM stops gracefully too, like QUIT (what
                            Kubernetes and docker stop send); INT stays quick
      --keepalive-timeout SEC idle keep-alive connections close (default 5)
      --header-timeout SEC  time to receive a complete header section (default 10)
      --max-body BYTES      largest request body accepted, K/M/G allowed
                            (default 1048576: 1M)
      --max-requests N      replace a worker after N requests, +-10% (0: never)
      --refork-after N,N,.. when a worker has served N requests, it becomes the
                            mold the next workers are forked from, sharing its
                            warm memory (one promotion per count; docs/refork.md)
      --max-connections N   connections one evented (or uring) worker holds; more
                            wait in the kernel's queue (default and ceiling:
                            what the descriptor limit allows, at most 10000)
  -P, --pid FILE            write the master's PID there
      --access-log FILE     one line per request ("-": stdout; default none),
                            in the combined log format
      --access-log-format F combined (default) or combined+us: the request
                            time in microseconds appended to each line
      --error-log FILE      lifecycle and errors (default stderr)
  -D, --daemonize           detach; exit 0 once the server is ready, 1 if not
  -u, --user USER[:GROUP]   workers drop to this user once the sockets are bound
      --upgrade MODE        USR2 upgrade: fork-exec (default) or in-place
      --reuseport           a listening socket per worker (SO_REUSEPORT), kept
                            by the master so no queued connection is lost
      --check               validate options, ROOT, addresses and user; exit 0 or 1
  -h, --help                this text
  -V, --version             the version

SEC may be fractional (0.5). Routes: GET /hello, POST /echo, GET /sleep?ms=N
(sleeps inside the worker: in evented mode it blocks every connection of that
worker, on purpose, for timeout and graceful-stop tests), GET /_status (the
pool at a glance; JSON with Accept: application/json or ?format=json),
GET /_metrics (Prometheus), GET /_health (200; 503 once the master is
stopping, or while the --drain-file exists).
Everything else is a static file under ROOT (GET and HEAD).

Signals to the master: QUIT graceful stop, TERM/INT quick stop (TERM
graceful with --graceful-term), USR1 reopen logs, USR2 upgrade the binary,
HUP replace workers, TTIN/TTOU one worker more/fewer, WINCH stop workers and
keep the master.
)";
}

std::filesystem::path default_root() {
  char buf[4096];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n > 0) {
    std::filesystem::path exe(std::string(buf, static_cast<std::size_t>(n)));
    // Installed: <prefix>/bin/prefork-httpd and <prefix>/share/prefork-httpd/www.
    auto installed = exe.parent_path().parent_path() / "share" / "prefork-httpd" / "www";
    std::error_code ec;
    if (std::filesystem::is_directory(installed, ec)) return installed;
  }
  return PREFORK_HTTPD_WWW;
}

options parse_command_line(int argc, char** argv) {
  options o;
  bool workers_set = false, mode_set = false;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--") {
      for (++i; i < argc; ++i) positional.emplace_back(argv[i]);
      break;
    }
    if (arg.size() < 2 || arg[0] != '-') {
      positional.push_back(arg);
      continue;
    }
    // Split "--name=value" and "-xVALUE".
    std::string name = arg, value;
    bool has_value = false;
    if (arg.compare(0, 2, "--") == 0) {
      auto eq = arg.find('=');
      if (eq != std::string::npos) {
        name = arg.substr(0, eq);
        value = arg.substr(eq + 1);
        has_value = true;
      }
    } else if (arg.size() > 2) {
      name = arg.substr(0, 2);
      value = arg.substr(2);
      has_value = true;
    }
    auto flag = [&] {
      if (has_value) bad(name, "takes no value");
    };
    auto take = [&]() -> std::string {
      if (has_value) return value;
      if (i + 1 >= argc) bad(name, "needs a value");
      return argv[++i];
    };
    auto is = [&](const char* shrt, const char* lng) { return (shrt && name == shrt) || name == lng; };

    if (is("-h", "--help")) flag(), o.help = true;
    else if (is("-V", "--version")) flag(), o.version = true;
    else if (is(nullptr, "--check")) flag(), o.check = true;
    else if (is("-D", "--daemonize")) flag(), o.daemonize = true;
    else if (is("-l", "--listen")) {
      std::string a = take();
      if (a.empty()) bad(name, "empty address");
      o.listen.push_back(a);
      o.listen_proxy.push_back(false);
    } else if (is(nullptr, "--proxy-protocol")) {
      flag();
      if (o.listen.empty())
        o.proxy_all = true;
      else
        o.listen_proxy.back() = true;
    } else if (is(nullptr, "--admin-listen")) {
      o.admin_listen = take();
      if (o.admin_listen.empty()) bad(name, "empty address");
    } else if (is(nullptr, "--drain-file")) {
      std::string p = take();
      if (p.empty()) bad(name, "empty path");
      o.drain_file = p;
    } else if (is("-w", "--workers")) {
      o.workers = static_cast<unsigned>(parse_count(name, take(), 4096));
      if (o.workers == 0) bad(name, "needs at least 1 worker");
      workers_set = true;
    } else if (is("-m", "--mode")) {
      std::string m = take();
      if (m == "evented") o.mode = worker_mode::evented;
      else if (m == "blocking") o.mode = worker_mode::blocking;
      else if (m == "uring") o.mode = worker_mode::uring;
      else bad(name, "expected evented, uring or blocking, got '" + m + "'");
      mode_set = true;
    } else if (is("-t", "--timeout")) o.timeout = parse_seconds(name, take(), false);
    else if (is(nullptr, "--graceful-timeout")) o.graceful_timeout = parse_seconds(name, take(), true);
    else if (is(nullptr, "--keepalive-timeout")) o.keepalive_timeout = parse_seconds(name, take(), true);
    else if (is(nullptr, "--header-timeout")) o.header_timeout = parse_seconds(name, take(), false);
    else if (is(nullptr, "--max-body")) o.max_body = static_cast<std::size_t>(parse_bytes(name, take(), 1ULL << 40));
    else if (is(nullptr, "--max-requests")) o.max_requests = static_cast<unsigned>(parse_count(name, take(), 4000000000ULL));
    else if (is(nullptr, "--refork-after")) {
      std::string list = take();
      o.refork_after.clear();
      for (std::size_t at = 0; at <= list.size();) {
        std::size_t comma = std::min(list.find(',', at), list.size());
        std::uint64_t n = parse_count(name, list.substr(at, comma - at), 4000000000ULL);
        if (n == 0) bad(name, "counts must be at least 1");
        o.refork_after.push_back(n);
        at = comma + 1;
      }
    } else if (is(nullptr, "--max-connections")) {
      o.max_connections = static_cast<std::size_t>(parse_count(name, take(), 10000));
      if (o.max_connections == 0) bad(name, "needs at least 1 connection");
    }
    else if (is("-P", "--pid")) {
      std::string p = take();
      if (p.empty()) bad(name, "empty path");
      o.pid_file = p;
    } else if (is(nullptr, "--access-log")) {
      o.access_log = take();
      if (o.access_log.empty()) bad(name, "empty path");
    } else if (is(nullptr, "--access-log-format")) {
      std::string f = take();
      if (f == "combined") o.access_log_us = false;
      else if (f == "combined+us") o.access_log_us = true;
      else bad(name, "expected combined or combined+us, got '" + f + "'");
    } else if (is(nullptr, "--error-log")) {
      o.error_log = take();
      if (o.error_log.empty()) bad(name, "empty path");
    } else if (is("-u", "--user")) {
      std::string u = take();
      auto colon = u.find(':');
      o.user = u.substr(0, colon);
      if (colon != std::string::npos) o.group = u.substr(colon + 1);
      if (o.user.empty() || (colon != std::string::npos && o.group.empty()))
        bad(name, "expected USER or USER:GROUP, got '" + u + "'");
    } else if (is(nullptr, "--reuseport")) flag(), o.reuseport = true;
    else if (is(nullptr, "--graceful-term")) flag(), o.graceful_term = true;
    else if (is(nullptr, "--upgrade")) {
      std::string m = take();
      if (m == "fork-exec") o.upgrade = upgrade_kind::fork_exec;
      else if (m == "in-place") o.upgrade = upgrade_kind::in_place;
      else bad(name, "expected fork-exec or in-place, got '" + m + "'");
    } else {
      bad(arg, "unknown option");
    }
  }
  (void)mode_set;
  if (positional.size() > 1) bad(positional[1], "only one ROOT may be given");
  if (!positional.empty()) {
    if (positional[0].empty()) bad("ROOT", "empty path");
    o.root = positional[0];
    o.root_given = true;
  } else {
    o.root = default_root();
  }
  if (!workers_set) o.workers = online_cpus();
  return o;
}

}  // namespace httpd
