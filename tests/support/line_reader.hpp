// tests/support/line_reader.hpp: the lines a server under test writes into
// a pipe, waited for with a deadline.
//
// The pool and upgrade tests hand the write end to a master (its log, and
// what its workers announce); every process writes each line with one
// write(2), so lines never interleave. The test then waits for the line it
// expects rather than sleeping: the deadline only matters when the line does
// not come, and then the failure shows every line seen. A line is taken by
// the wait that matched it, so waiting twice for "ready" needs two of them.
// Catch2 only: a missed line is a FAIL.
#pragma once

#include <fcntl.h>
#include <poll.h>

#include <chrono>
#include <string>
#include <system_error>
#include <vector>

#include <prefork/fd.hpp>
#include <prefork/pipe.hpp>

#include "catch.hpp"

namespace prefork::test {

class line_reader {
 public:
  line_reader() {
    prefork::pipe_ends ends = prefork::pipe();
    read_ = std::move(ends.read);
    write_ = std::move(ends.write);
    read_.set_nonblocking(true);
    ::fcntl(write_.get(), F_SETPIPE_SZ, 1 << 20);  // a chatty server must never block on us
  }
  int write_fd() const { return write_.get(); }
  // Once the server holds its copy: ours would hide the end of file.
  void close_write() { write_.reset(); }
  // In a forked server, which only writes.
  void close_read() { read_.reset(); }

  // Writes one line, from any process that holds the write end.
  static void say(int fd, const std::string& text) {
    std::string line = text + "\n";
    std::error_code ec;
    prefork::write_all(fd, line.data(), line.size(), ec);
  }

  // The next line not yet taken that holds `needle`; fails the test with
  // everything seen so far when none comes within `limit`.
  std::string wait_for(const std::string& needle,
                       std::chrono::milliseconds limit = std::chrono::milliseconds(20000)) {
    auto deadline = std::chrono::steady_clock::now() + limit;
    for (bool open = true;;) {
      for (std::size_t i = 0; i < lines_.size(); ++i)
        if (!taken_[i] && lines_[i].find(needle) != std::string::npos) {
          taken_[i] = true;
          return lines_[i];
        }
      auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now())
              .count();
      if (left <= 0 || !open)
        FAIL("no line with \"" << needle << "\" within " << limit.count() << "ms; seen:\n" << transcript());
      open = pump(static_cast<int>(left));  // false: end of file, but look at what came with it
    }
  }

  // Reads what has arrived, waiting up to wait_ms for the first of it; false
  // once every writer has closed (end of file).
  bool pump(int wait_ms = 0) {
    pollfd p{read_.get(), POLLIN, 0};
    if (::poll(&p, 1, wait_ms) <= 0) return true;  // nothing yet (or EINTR): the caller's deadline decides
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

  // Lines holding `needle` seen so far, taken or not.
  std::size_t count(const std::string& needle) {
    pump();
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
  prefork::fd read_, write_;
  std::string partial_;
  std::vector<std::string> lines_;
  std::vector<bool> taken_;
};

}  // namespace prefork::test
