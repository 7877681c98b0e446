// httpd/access_log.cpp: log files (see access_log.hpp).
#include "access_log.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <unistd.h>

#include <charconv>
#include <cstring>

#include <prefork/error.hpp>
#include <prefork/socket_address.hpp>

namespace httpd {
namespace {

int open_log(const std::string& path) {
  if (path == "-") return ::fcntl(STDOUT_FILENO, F_DUPFD_CLOEXEC, 3);
  return ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY, 0644);
}

void append_dec(std::string& out, unsigned long long v, int width = 0) {
  char buf[24];
  auto r = std::to_chars(buf, buf + sizeof buf, v);
  for (int pad = width - static_cast<int>(r.ptr - buf); pad > 0; --pad) out += '0';
  out.append(buf, static_cast<std::size_t>(r.ptr - buf));
}

// A quoted field's content: '"', '\\' and bytes outside printable ASCII escaped.
void append_quoted(std::string& out, std::string_view s) {
  if (s.empty()) {
    out += '-';
    return;
  }
  static const char hex[] = "0123456789abcdef";
  for (char ch : s) {
    auto c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += ch;
    } else if (c < 0x20 || c >= 0x7f) {
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    } else {
      out += ch;
    }
  }
}

}  // namespace

void log_file::give_away(int fd) const {
  // Only a file we may own; a failure leaves the file usable by the master.
  if (chown_ && path_ != "-" && ::fchown(fd, owner_uid_, owner_gid_) == -1) {
  }
}

void log_file::open(const std::string& path, int onto) {
  path_ = path;
  int raw = open_log(path);
  if (raw == -1) prefork::throw_system_error("open log " + path);
  give_away(raw);
  if (onto >= 0) {
    // The error log is stderr: dup2 leaves fd 2 inheritable, as stderr is.
    if (::dup2(raw, onto) == -1) {
      prefork::detail::errno_saver keep;
      ::close(raw);
      prefork::throw_system_error("dup2 log " + path);
    }
    ::close(raw);
    fd_ = onto;
  } else {
    own_.reset(raw);
    fd_ = raw;
  }
}

bool log_file::reopen(std::string& why) {
  if (fd_ < 0 || path_ == "-") return true;
  int raw = open_log(path_);
  if (raw == -1) {
    why = "reopen " + path_ + ": " + std::strerror(errno);
    return false;
  }
  give_away(raw);
  // dup3 swaps the file under the number atomically: every write goes whole
  // to the old file or to the new one.
  int r = fd_ == STDERR_FILENO ? ::dup2(raw, fd_) : ::dup3(raw, fd_, O_CLOEXEC);
  int err = errno;
  ::close(raw);
  if (r == -1) {
    why = "dup3 " + path_ + ": " + std::strerror(err);
    return false;
  }
  return true;
}

void log_file::write(std::string_view line) {
  if (fd_ < 0) return;
  std::error_code ec;
  prefork::write_all(fd_, line.data(), line.size(), ec);  // a full disk must not stop serving
  if (ec) {
    ++dropped_;
    if (!failing_) {
      failing_ = true;
      error_line("log " + path_ + ": " + ec.message() + "; dropping lines until it can be written again");
    }
  } else if (failing_) {
    failing_ = false;
    error_line("log " + path_ + ": writable again, " + std::to_string(dropped_) + " lines dropped");
    dropped_ = 0;
  }
}

void access_log::record(const sockaddr_storage& peer, std::string_view method, std::string_view target, int minor,
                        int status, unsigned long long bytes, std::string_view referer, std::string_view agent,
                        std::chrono::steady_clock::duration took) {
  if (!enabled()) return;
  line_.clear();
  char host[INET6_ADDRSTRLEN] = "-";
  if (peer.ss_family == AF_INET)
    ::inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in&>(peer).sin_addr, host, sizeof host);
  else if (peer.ss_family == AF_INET6)
    ::inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6&>(peer).sin6_addr, host, sizeof host);
  line_ += host;
  timespec ts{};
  ::clock_gettime(CLOCK_REALTIME_COARSE, &ts);
  if (ts.tv_sec != second_) {
    second_ = ts.tv_sec;
    std::tm tm{};
    ::gmtime_r(&second_, &tm);
    std::strftime(stamp_, sizeof stamp_, "%d/%b/%Y:%H:%M:%S +0000", &tm);
  }
  line_ += " - - [";
  line_ += stamp_;
  line_ += "] \"";
  append_quoted(line_, method);
  line_ += ' ';
  append_quoted(line_, target);
  line_ += minor == 0 ? " HTTP/1.0\" " : " HTTP/1.1\" ";
  append_dec(line_, static_cast<unsigned long long>(status));
  line_ += ' ';
  if (bytes == 0)
    line_ += '-';
  else
    append_dec(line_, bytes);
  line_ += " \"";
  append_quoted(line_, referer);
  line_ += "\" \"";
  append_quoted(line_, agent);
  line_ += '"';
  if (micros_) {
    auto us = std::chrono::duration_cast<std::chrono::microseconds>(took).count();
    line_ += ' ';
    append_dec(line_, static_cast<unsigned long long>(us < 0 ? 0 : us));
  }
  line_ += '\n';
  file_.write(line_);
}

void error_line(std::string_view text) {
  std::string line = "prefork-httpd[" + std::to_string(::getpid()) + "]: ";
  line += text;
  if (line.back() != '\n') line += '\n';
  std::error_code ec;
  prefork::write_all(STDERR_FILENO, line.data(), line.size(), ec);
}

}  // namespace httpd

namespace httpd {

void proxy_refused(int sock, std::string_view why, std::size_t received) {
  std::string from = "?";
  try {
    from = prefork::socket_address::peer(sock).to_string();
  } catch (const std::exception&) {
  }
  error_line("refused connection from " + from + " on a PROXY protocol listener: " + std::string(why) + " (" +
             std::to_string(received) + " bytes received)");
}

}  // namespace httpd
