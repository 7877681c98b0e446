// tests/integration/httpd_support.hpp: driving prefork-httpd from a test.
//
// httpd_test::server starts the real binary as a child with its stderr (the
// error log) on a pipe, and waits, with a deadline, for the lines it prints:
// "listening on http://127.0.0.1:PORT" (the port the test talks to) and
// "ready: N workers serving". The client helpers speak raw HTTP over
// sockets, so a test sees every byte, or run curl.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <prefork/fd.hpp>
#include <prefork/pipe.hpp>
#include <prefork/process.hpp>
#include <prefork/socket.hpp>

#include "helpers.hpp"

namespace httpd_test {

using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

// How long a test waits for anything before it fails; only matters then.
constexpr auto patience = 20s;

// Built with AddressSanitizer or ThreadSanitizer: figures of memory and
// system calls move (shadow pages, the sanitizer's own calls), so a test
// loosens or skips what it asserts of them.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool sanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
constexpr bool sanitized = true;
#else
constexpr bool sanitized = false;
#endif
#else
constexpr bool sanitized = false;
#endif

// The request most tests send: keep-alive, answered "Hello, World!".
inline const std::string hello_request = "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n";

inline int ms_left(steady::time_point deadline) {
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - steady::now()).count();
  return ms <= 0 ? 0 : static_cast<int>(ms);
}

// Reads what is available on fd into out, waiting until the deadline for the
// first byte. False at end of file or on timeout.
inline bool read_some_until(int fd, std::string& out, steady::time_point deadline) {
  pollfd p{fd, POLLIN, 0};
  int r = ::poll(&p, 1, ms_left(deadline));
  if (r <= 0) return false;
  char buf[65536];
  ssize_t n = ::read(fd, buf, sizeof buf);
  if (n <= 0) return false;
  out.append(buf, static_cast<std::size_t>(n));
  return true;
}

// Starts argv with stdin from /dev/null and the given stdout and stderr.
// Plain fork and exec rather than prefork::spawn, so these tests do not
// depend on spawn's vfork-style child (tested on its own, and delicate
// under AddressSanitizer, which shadows the stack the child borrows).
inline prefork::child start_process(const std::vector<std::string>& argv, int out, int err) {
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  prefork::fd null(::open("/dev/null", O_RDWR | O_CLOEXEC));
  std::optional<prefork::child> c = prefork::fork();
  if (!c) {
    // The child: only async-signal-safe calls until exec. If the test dies
    // (a crash, an abort), the server goes too instead of lingering.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::dup2(null.get(), 0) == -1 || ::dup2(out, 1) == -1 || ::dup2(err, 2) == -1) ::_exit(126);
    ::sigset_t none;
    ::sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  return std::move(*c);
}

class server {
 public:
  // args: prefork-httpd's arguments; "-l 127.0.0.1:0" and "-w 2" are added
  // unless the args say otherwise. wait_ready: wait for the "ready" line.
  // prefix: a launcher to run prefork-httpd through (a test helper that
  // hands it sockets, say). program: another application on the same
  // server (prefork-kv).
  explicit server(std::vector<std::string> args, bool wait_ready = true, std::vector<std::string> prefix = {},
                  const std::string& program = "prefork-httpd") {
    std::vector<std::string> argv = prefix;
    argv.push_back(prefork::test::bin_path(program));
    bool has_listen = false, has_workers = false;
    for (const auto& a : args) {
      if (a == "-l" || a.rfind("--listen", 0) == 0) has_listen = true;
      if (a == "-w" || a.rfind("--workers", 0) == 0) has_workers = true;
    }
    if (!has_listen && prefix.empty()) argv.insert(argv.end(), {"-l", "127.0.0.1:0"});
    if (!has_workers) argv.insert(argv.end(), {"-w", "2"});
    argv.insert(argv.end(), args.begin(), args.end());
    auto err = prefork::pipe();
    auto out = prefork::pipe();
    proc_.emplace(start_process(argv, out.write.get(), err.write.get()));
    err_ = std::move(err.read);
    out_ = std::move(out.read);
    if (wait_ready) {
      std::string line = wait_log("listening on http://127.0.0.1:");
      port_ = std::stoi(line.substr(line.find("127.0.0.1:") + 10));
      wait_log("ready: ");
    }
  }

  ~server() {
    if (proc_ && !proc_->status()) {
      std::error_code ec;
      proc_->kill(SIGKILL, ec);
      proc_->wait();
    }
  }

  int port() const { return port_; }
  pid_t pid() const { return proc_->pid(); }
  prefork::child& process() { return *proc_; }
  const std::string& log() const { return log_; }
  int stdout_fd() const { return out_.get(); }

  // Waits for a log line holding `needle` that starts after `from` (default:
  // where the previous wait stopped); returns the line. Throws on timeout.
  std::string wait_log(std::string_view needle, std::optional<std::size_t> from = {}) {
    std::size_t start = from ? *from : searched_;
    auto deadline = steady::now() + patience;
    for (;;) {
      auto at = log_.find(needle, start);
      if (at != std::string::npos) {
        auto eol = log_.find('\n', at);
        if (eol != std::string::npos) {
          auto bol = log_.rfind('\n', at);
          bol = bol == std::string::npos ? 0 : bol + 1;
          searched_ = eol + 1;
          return log_.substr(bol, eol - bol);
        }
      }
      if (!read_some_until(err_.get(), log_, deadline))
        throw std::runtime_error("no log line with '" + std::string(needle) + "'; the log so far:\n" + log_);
    }
  }
  std::size_t log_mark() const { return log_.size(); }

  void signal(int sig) { proc_->kill(sig); }

  // Sends sig and waits for the exit (SIGKILL at the deadline); the rest of
  // the log is read.
  prefork::exit_status stop(int sig = SIGQUIT) {
    if (sig) signal(sig);
    auto status = proc_->wait_for(std::chrono::duration_cast<std::chrono::milliseconds>(patience));
    if (!status) {
      proc_->kill(SIGKILL);
      status = proc_->wait();
    }
    auto deadline = steady::now() + 2s;
    while (read_some_until(err_.get(), log_, deadline)) {
    }
    return *status;
  }

 private:
  std::optional<prefork::child> proc_;
  prefork::fd err_, out_;
  std::string log_;
  std::size_t searched_ = 0;
  int port_ = 0;
};

// QUIT, and the master exits 0 in time; the log is shown if not.
#define check_clean_stop(s)                \
  do {                                     \
    prefork::exit_status st_ = (s).stop(); \
    INFO("server log:\n" << (s).log());    \
    CHECK(st_.describe() == "exited 0");   \
  } while (0)

inline prefork::fd connect_to(int port) { return prefork::connect("127.0.0.1:" + std::to_string(port)); }

inline void send_text(int fd, std::string_view data) { prefork::write_all(fd, data.data(), data.size()); }

// Everything until the server closes (or the deadline).
inline std::string read_until_close(int fd, steady::time_point deadline = steady::now() + patience) {
  std::string out;
  while (read_some_until(fd, out, deadline)) {
  }
  return out;
}

// Whether the peer closed: EOF (or reset) within the deadline.
inline bool closed_within(int fd, std::chrono::milliseconds span) {
  auto deadline = steady::now() + span;
  std::string ignored;
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    int r = ::poll(&p, 1, ms_left(deadline));
    if (r <= 0) return false;
    char buf[4096];
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n <= 0) return true;
  }
}

struct response {
  std::string version;
  int status = 0;
  std::multimap<std::string, std::string> headers;  // names lower-cased
  std::string body;
  std::size_t size = 0;  // bytes of the whole message

  std::string header(const std::string& name) const {
    auto it = headers.find(name);
    return it == headers.end() ? std::string() : it->second;
  }
  bool has(const std::string& name) const { return headers.count(name) != 0; }
};

// Parses one response from the front of raw; nullopt while incomplete.
// head: the request was HEAD (no body follows whatever the headers say).
// until_close: a body without length runs to the end of raw.
inline std::optional<response> parse_response(std::string_view raw, bool head = false,
                                              bool until_close = false) {
  auto end = raw.find("\r\n\r\n");
  if (end == std::string_view::npos) return std::nullopt;
  response r;
  std::string_view head_text = raw.substr(0, end);
  auto eol = head_text.find("\r\n");
  std::string_view status_line = head_text.substr(0, eol);
  r.version = std::string(status_line.substr(0, status_line.find(' ')));
  r.status = std::stoi(std::string(status_line.substr(r.version.size() + 1, 3)));
  while (eol != std::string_view::npos) {
    head_text.remove_prefix(eol + 2);
    eol = head_text.find("\r\n");
    std::string_view line = head_text.substr(0, eol);
    auto colon = line.find(':');
    std::string name(line.substr(0, colon));
    for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    std::string_view value = line.substr(colon + 1);
    while (!value.empty() && value.front() == ' ') value.remove_prefix(1);
    r.headers.emplace(name, std::string(value));
  }
  std::size_t body_at = end + 4;
  if (head || r.status == 304 || r.status == 204 || r.status / 100 == 1) {
    r.size = body_at;
    return r;
  }
  if (r.header("transfer-encoding") == "chunked") {
    std::size_t at = body_at;
    for (;;) {
      auto line_end = raw.find("\r\n", at);
      if (line_end == std::string_view::npos) return std::nullopt;
      std::size_t n = std::stoul(std::string(raw.substr(at, line_end - at)), nullptr, 16);
      at = line_end + 2;
      if (n == 0) {
        if (raw.size() < at + 2) return std::nullopt;
        r.size = at + 2;
        return r;
      }
      if (raw.size() < at + n + 2) return std::nullopt;
      r.body.append(raw.substr(at, n));
      at += n + 2;
    }
  }
  if (r.has("content-length")) {
    std::size_t n = std::stoul(r.header("content-length"));
    if (raw.size() < body_at + n) return std::nullopt;
    r.body = std::string(raw.substr(body_at, n));
    r.size = body_at + n;
    return r;
  }
  if (!until_close) return std::nullopt;
  r.body = std::string(raw.substr(body_at));
  r.size = raw.size();
  return r;
}

// Reads one response on a kept-alive connection; `pending` holds bytes read
// past the previous response. Throws on timeout or a close before the end.
inline response read_response(int fd, std::string& pending, bool head = false) {
  auto deadline = steady::now() + patience;
  for (;;) {
    if (auto r = parse_response(pending, head)) {
      pending.erase(0, r->size);
      return *r;
    }
    if (!read_some_until(fd, pending, deadline))
      throw std::runtime_error("connection closed or timed out before a whole response; got: " + pending);
  }
}

// Sends one raw request on a new connection and reads until the server closes.
inline response ask(int port, std::string_view raw, bool head = false) {
  prefork::fd c = connect_to(port);
  send_text(c.get(), raw);
  std::string all = read_until_close(c.get());
  auto r = parse_response(all, head, true);
  if (!r) throw std::runtime_error("no whole response to:\n" + std::string(raw) + "\ngot:\n" + all);
  return *r;
}

inline response get(int port, std::string_view target, std::string_view extra_headers = "") {
  std::string raw = "GET " + std::string(target) + " HTTP/1.1\r\nHost: t\r\nConnection: close\r\n" +
                    std::string(extra_headers) + "\r\n";
  return ask(port, raw);
}

struct command_result {
  int code = -1;
  std::string out;
};

// Runs a command (curl, say) with stdout captured, and stderr with it when
// asked (a checker's complaints), else discarded.
inline command_result run(const std::vector<std::string>& argv, bool with_stderr = false) {
  auto out = prefork::pipe();
  prefork::fd null(::open("/dev/null", O_WRONLY | O_CLOEXEC));
  std::vector<std::string> full = argv;
  if (full[0].find('/') == std::string::npos) full[0] = "/usr/bin/" + full[0];  // curl
  prefork::child c = start_process(full, out.write.get(), with_stderr ? out.write.get() : null.get());
  out.write.reset();
  command_result r;
  r.out = read_until_close(out.read.get());
  auto status = c.wait_for(std::chrono::duration_cast<std::chrono::milliseconds>(patience));
  if (!status) {
    c.kill(SIGKILL);
    status = c.wait();
  }
  r.code = status->exited() ? status->code() : 128 + status->signal();
  return r;
}

// New connections, one GET /hello each, until stopped; counts what failed.
class hello_loop {
 public:
  explicit hello_loop(int port)
      : thread_([this, port] {
          while (!stop_) {
            try {
              response r = get(port, "/hello");
              if (r.status == 200 && r.body == "Hello, World!")
                ++served_;
              else
                ++failed_;
            } catch (const std::exception&) {
              ++failed_;
            }
          }
        }) {}
  ~hello_loop() { finish(); }
  void finish() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  // Waits until `more` further requests were answered (the loop is alive).
  void wait_for_more(int more) {
    int target = served_ + more;
    auto deadline = steady::now() + patience;
    while (served_ < target && failed_ == 0 && steady::now() < deadline) std::this_thread::yield();
  }
  int served() const { return served_; }
  int failed() const { return failed_; }

 private:
  std::atomic<bool> stop_{false};
  std::atomic<int> served_{0}, failed_{0};
  std::thread thread_;
};

// The PID in a pid file (0 when there is none).
inline pid_t read_pid(const std::filesystem::path& p) {
  std::ifstream in(p);
  pid_t pid = 0;
  in >> pid;
  return pid;
}

// Waits for a process that is not our child to exit (a pidfd polls
// readable then): an upgrade's old master, say.
inline bool gone_within(pid_t pid, std::chrono::milliseconds limit) {
  int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (pidfd == -1) return errno == ESRCH;
  pollfd p{pidfd, POLLIN, 0};
  int r = ::poll(&p, 1, static_cast<int>(limit.count()));
  ::close(pidfd);
  return r == 1;
}

}  // namespace httpd_test
