// httpd/cli.hpp: prefork-httpd's command line.
//
// parse_command_line() turns argv into options or throws usage_error, whose
// message names the offending option; main() prints it with the usage line
// and exits 2. Durations accept fractional seconds ("0.5"), so tests can use
// short timeouts. Nothing here touches the system beyond sysconf and stat.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstddef>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

namespace httpd {

enum class worker_mode { evented, blocking, uring };

// "evented", "blocking" or "uring": the --mode word, and what the logs say.
const char* mode_name(worker_mode m);
enum class upgrade_kind { fork_exec, in_place };

struct options {
  std::vector<std::string> listen;  // empty: inherited sockets, else 127.0.0.1:8080
  std::vector<bool> listen_proxy;   // per --listen: --proxy-protocol followed it
  bool proxy_all = false;           // --proxy-protocol before any --listen: every public listener
  std::string admin_listen;         // empty: admin routes on the public listeners
  std::filesystem::path drain_file; // while it exists, /_health says 503 (serving goes on)
  unsigned workers = 0;             // 0 until parsed: the number of online CPUs
  worker_mode mode = worker_mode::evented;
  std::chrono::milliseconds timeout{30000};
  std::chrono::milliseconds graceful_timeout{30000};
  std::chrono::milliseconds keepalive_timeout{5000};
  std::chrono::milliseconds header_timeout{10000};
  std::size_t max_body = 1048576;
  unsigned max_requests = 0;
  std::vector<std::uint64_t> refork_after;  // --refork-after: promote a worker to mold at these counts
  std::size_t max_connections = 0;  // per evented worker; 0: from RLIMIT_NOFILE
  std::filesystem::path pid_file;
  std::string access_log;           // empty: none; "-": stdout
  bool access_log_us = false;       // --access-log-format combined+us: request time appended
  std::string error_log;            // empty: stderr
  bool daemonize = false;
  std::string user, group;          // from --user USER[:GROUP]
  upgrade_kind upgrade = upgrade_kind::fork_exec;
  bool reuseport = false;           // a SO_REUSEPORT socket per worker, kept by the master
  bool graceful_term = false;       // TERM stops gracefully, like QUIT (containers send TERM)
  bool check = false, help = false, version = false;
  std::filesystem::path root;       // empty until parsed: the bundled demo site
  bool root_given = false;          // ROOT was on the command line
};

// Bad command line: what() is one line naming the option.
struct usage_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

options parse_command_line(int argc, char** argv);

// The one-line usage and the full --help text.
const char* usage_line();
std::string help_text();

// The bundled demo site: next to the executable (installed layout) or in the
// source tree (build layout, through a compile definition).
std::filesystem::path default_root();

}  // namespace httpd
