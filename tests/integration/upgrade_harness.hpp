// tests/integration/upgrade_harness.hpp: what the upgrade tests (and the
// reexec example's test) share: the lines a server prints, read with a
// deadline; a client loop that keeps connecting while the test upgrades the
// server, and remembers every connection that did not get its whole answer;
// and /proc readers for who is whose child.
//
// The client loop runs on a thread of the test process. It starts after the
// server is spawned (spawn is safe with threads; fork is not) and is joined
// before the leak check. Each connection is one full exchange: connect, send,
// read to end of file, compare. A refused connect, a reset, an early end of
// file or a wrong answer is a failure, with its description kept for the
// report; "every connection succeeds" is then a check that the list is empty.
#pragma once

#include <dirent.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <fstream>
#include <functional>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <prefork/fd.hpp>
#include <prefork/pipe.hpp>
#include <prefork/socket.hpp>

#include "catch.hpp"

namespace upgrade_test {

using namespace std::chrono_literals;
using clock = std::chrono::steady_clock;

// A master that exits leaves its children (a new master, workers) to us, not
// to init, so each one is reaped and seen by the leak check.
inline const bool subreaper = ::prctl(PR_SET_CHILD_SUBREAPER, 1) == 0;

// Field `field` of /proc/PID/stat (3 = state, 4 = ppid); "" once gone.
inline std::string proc_stat_field(pid_t pid, int field) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return "";
  auto close = line.rfind(')');
  if (close == std::string::npos) return "";
  std::istringstream rest(line.substr(close + 2));
  std::string value;
  for (int i = 3; i <= field; ++i) rest >> value;
  return value;
}

// Children of `pid` from /proc: the live ones, or the zombies.
inline std::set<pid_t> children_of(pid_t pid, bool zombies = false) {
  std::set<pid_t> kids;
  DIR* dir = ::opendir("/proc");
  if (!dir) return kids;
  while (dirent* e = ::readdir(dir)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    auto p = static_cast<pid_t>(std::atoi(e->d_name));
    if (proc_stat_field(p, 4) != std::to_string(pid)) continue;
    if ((proc_stat_field(p, 3) == "Z") == zombies) kids.insert(p);
  }
  ::closedir(dir);
  return kids;
}

// The lines written into a pipe by a server and everything it forks.
class lines {
 public:
  lines() {
    prefork::pipe_ends ends = prefork::pipe();
    read_ = std::move(ends.read);
    write_ = std::move(ends.write);
    read_.set_nonblocking(true);
    ::fcntl(write_.get(), F_SETPIPE_SZ, 1 << 20);  // a chatty server must never block on us
  }
  int write_fd() const { return write_.get(); }
  // Once the server holds its copy: ours would hide the end of file.
  void close_write() { write_.reset(); }

  // The next line not yet taken that holds `needle`; fails the test with
  // everything seen so far when none comes within `limit`.
  std::string wait_for(const std::string& needle, std::chrono::milliseconds limit = 20s) {
    auto deadline = clock::now() + limit;
    for (bool open = true;;) {
      for (std::size_t i = 0; i < lines_.size(); ++i)
        if (!taken_[i] && lines_[i].find(needle) != std::string::npos) {
          taken_[i] = true;
          return lines_[i];
        }
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock::now()).count();
      if (left <= 0 || !open)
        FAIL("no line with \"" << needle << "\" within " << limit.count() << "ms; seen:\n" << transcript());
      open = pump(static_cast<int>(left));
    }
  }

  // Lines holding `needle` seen so far (taken or not).
  std::size_t count(const std::string& needle) {
    pump(0);
    std::size_t n = 0;
    for (const std::string& l : lines_) n += l.find(needle) != std::string::npos;
    return n;
  }

  std::string transcript() const {
    std::string out;
    for (const std::string& l : lines_) out += "  " + l + "\n";
    return out;
  }

 private:
  // Reads what is there (waiting up to wait_ms for something); false at end of file.
  bool pump(int wait_ms) {
    pollfd p{read_.get(), POLLIN, 0};
    if (::poll(&p, 1, wait_ms) <= 0) return true;
    char buf[4096];
    for (;;) {
      prefork::io_result r = prefork::read_some(read_.get(), buf, sizeof buf);
      if (r.would_block()) return true;
      if (!r || r.bytes == 0) return false;
      partial_.append(buf, r.bytes);
      for (std::size_t nl; (nl = partial_.find('\n')) != std::string::npos; partial_.erase(0, nl + 1)) {
        lines_.push_back(partial_.substr(0, nl));
        taken_.push_back(false);
      }
    }
  }

  prefork::fd read_, write_;
  std::string partial_;
  std::vector<std::string> lines_;
  std::vector<bool> taken_;
};

// Everything the peer sends until it closes, or an error text: "" plus the
// bytes on success. Never waits past `deadline`.
inline std::pair<std::string, std::string> read_to_eof(int sock, clock::time_point deadline) {
  std::string got;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock::now()).count();
    if (left <= 0) return {"no end of file after " + std::to_string(got.size()) + " bytes", got};
    pollfd p{sock, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left)) <= 0) continue;
    char buf[4096];
    prefork::io_result r = prefork::read_some(sock, buf, sizeof buf);
    if (!r)
      return {
          std::string("read: ") + std::strerror(r.error) + " after " + std::to_string(got.size()) + " bytes",
          got};
    if (r.bytes == 0) return {"", got};
    got.append(buf, r.bytes);
  }
}

// One echo round trip on a fresh connection: "" when the whole payload came
// back, else what went wrong.
inline std::string echo_exchange(int sock, std::uint64_t n) {
  std::string payload = "connection " + std::to_string(n) + " " + std::string(n % 3000, 'x') + "\n";
  std::error_code ec;
  prefork::write_all(sock, payload.data(), payload.size(), ec);
  if (ec) return "write: " + ec.message();
  ::shutdown(sock, SHUT_WR);  // the echo server's cue to finish
  auto [error, got] = read_to_eof(sock, clock::now() + 15s);
  if (!error.empty()) return error;
  if (got != payload)
    return "short or wrong answer: " + std::to_string(got.size()) + " of " + std::to_string(payload.size()) +
           " bytes";
  return "";
}

// Connects to `address` again and again, one exchange at a time, until
// stopped. Each failure is kept as "connection N: what".
class client_loop {
 public:
  using exchange = std::function<std::string(int sock, std::uint64_t n)>;

  explicit client_loop(std::string address, exchange ex = echo_exchange)
      : address_(std::move(address)), exchange_(std::move(ex)), thread_([this] { run(); }) {}
  ~client_loop() { stop(); }
  client_loop(const client_loop&) = delete;
  client_loop& operator=(const client_loop&) = delete;

  void stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }

  std::uint64_t done() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return done_;
  }

  // Waits until `more` further exchanges have completed (successfully or
  // not): proof that the loop really ran across whatever the test just did.
  void wait_progress(std::uint64_t more, std::chrono::milliseconds limit = 20s) {
    std::unique_lock<std::mutex> lock(mutex_);
    std::uint64_t target = done_ + more;
    if (!progress_.wait_for(lock, limit, [&] { return done_ >= target; }))
      FAIL("the client loop made no progress: " << done_ << " of " << target << " exchanges");
  }

  std::vector<std::string> failures() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return failures_;
  }

 private:
  void run() {
    for (std::uint64_t n = 0; !stop_; ++n) {
      std::string what;
      try {
        prefork::fd sock = prefork::connect(address_);
        what = exchange_(sock.get(), n);
      } catch (const std::exception& e) {
        what = e.what();
      }
      std::lock_guard<std::mutex> lock(mutex_);
      if (!what.empty() && failures_.size() < 50)
        failures_.push_back("connection " + std::to_string(n) + ": " + what);
      ++done_;
      progress_.notify_all();
    }
  }

  std::string address_;
  exchange exchange_;
  std::atomic<bool> stop_{false};
  mutable std::mutex mutex_;
  std::condition_variable progress_;
  std::uint64_t done_ = 0;
  std::vector<std::string> failures_;
  std::thread thread_;  // last: starts once everything above exists
};

}  // namespace upgrade_test
