// httpd/access_log.hpp: the access log and the error log, reopened on USR1.
//
// Each access line is formatted into a reused buffer and written with one
// write(2) to an O_APPEND descriptor, so lines from many workers interleave
// whole and none is torn. Reopening (after logrotate renamed the file) opens
// the path anew and dup3()s it over the old number: a line is written either
// to the old file or to the new one, never lost. The error log is fd 2
// itself, so everything a process writes to stderr lands in it.
#pragma once

#include <sys/socket.h>
#include <sys/types.h>

#include <chrono>
#include <ctime>
#include <string>
#include <string_view>

#include <prefork/fd.hpp>

namespace httpd {

class log_file {
 public:
  log_file() = default;
  // path: a file (created 0644, appended to), or "-" for standard output.
  // onto >= 0: the descriptor to occupy (2 for the error log).
  void open(const std::string& path, int onto = -1);
  bool enabled() const { return fd_ >= 0; }
  int get() const { return fd_; }
  // Opens the path again; on failure keeps the old file and says why.
  bool reopen(std::string& why);
  // Files opened from now on are given to this owner (the --user of the
  // workers, so they can reopen the file the master created). Root only.
  void set_owner(uid_t uid, gid_t gid) {
    owner_uid_ = uid;
    owner_gid_ = gid;
    chown_ = true;
  }
  // A write that fails (a full disk, an unwritable file) drops the line
  // and is reported once per episode on stderr, not once per request; the
  // first write that succeeds again ends the episode and says how many
  // lines were lost.
  void write(std::string_view line);

 private:
  void give_away(int fd) const;

  std::string path_;
  bool chown_ = false;
  uid_t owner_uid_ = 0;
  gid_t owner_gid_ = 0;
  prefork::fd own_;  // when not occupying a chosen number
  int fd_ = -1;
  bool failing_ = false;
  unsigned long long dropped_ = 0;
};

// One access line in the combined log format (Apache's and nginx's
// "combined", which goaccess, awstats and friends read as it is):
// 127.0.0.1 - - [27/Nov/2026:03:13:14 +0000] "GET / HTTP/1.1" 200 1234 "-" "curl/7.88.1"
// and with_microseconds(true), the request time in microseconds after it
// (Apache's %D): ... "curl/7.88.1" 187
// Quotes, backslashes and control bytes in the quoted fields are escaped
// as \" \\ \xHH, as Apache does, so a client cannot forge a field.
class access_log {
 public:
  log_file& file() { return file_; }
  bool enabled() const { return file_.enabled(); }
  void with_microseconds(bool on) { micros_ = on; }

  // peer: the client's address (from getpeername); bytes: body bytes sent
  // ("-" when 0, as %b); referer, agent: the header values (empty: "-").
  void record(const sockaddr_storage& peer, std::string_view method, std::string_view target, int minor,
              int status, unsigned long long bytes, std::string_view referer, std::string_view agent,
              std::chrono::steady_clock::duration took);

 private:
  bool micros_ = false;
  log_file file_;
  std::string line_;
  std::time_t second_ = -1;
  char stamp_[32] = {};
};

// Writes "prefork-httpd[PID]: text\n" to stderr with one write.
void error_line(std::string_view text);

// Says that a connection on a --proxy-protocol listener was closed without
// a valid header: from where, why, and how many bytes it had sent.
void proxy_refused(int sock, std::string_view why, std::size_t received);

}  // namespace httpd
