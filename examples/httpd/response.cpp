// httpd/response.cpp: response heads and HTTP dates (see response.hpp).
#include "response.hpp"

#include <charconv>
#include <cstring>

#include <prefork/version.hpp>

namespace httpd {
namespace {

constexpr const char* day_names[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
constexpr const char* month_names[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

void two_digits(char* p, int v) {
  p[0] = static_cast<char>('0' + v / 10);
  p[1] = static_cast<char>('0' + v % 10);
}

// Formats into exactly 29 bytes at p.
void format_date_into(char* p, std::time_t t) {
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  std::memcpy(p, day_names[tm.tm_wday], 3);
  p[3] = ',';
  p[4] = ' ';
  two_digits(p + 5, tm.tm_mday);
  p[7] = ' ';
  std::memcpy(p + 8, month_names[tm.tm_mon], 3);
  p[11] = ' ';
  int year = tm.tm_year + 1900;
  two_digits(p + 12, year / 100 % 100);
  two_digits(p + 14, year % 100);
  p[16] = ' ';
  two_digits(p + 17, tm.tm_hour);
  p[19] = ':';
  two_digits(p + 20, tm.tm_min);
  p[22] = ':';
  two_digits(p + 23, tm.tm_sec);
  std::memcpy(p + 25, " GMT", 4);
}

void append_number(std::string& out, unsigned long long v) {
  char buf[24];
  auto r = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, static_cast<std::size_t>(r.ptr - buf));
}

int month_index(std::string_view m) {
  for (int i = 0; i < 12; ++i)
    if (m == month_names[i]) return i;
  return -1;
}

bool parse_int(std::string_view s, int& out) {
  if (s.empty()) return false;
  auto r = std::from_chars(s.data(), s.data() + s.size(), out);
  return r.ec == std::errc() && r.ptr == s.data() + s.size();
}

bool parse_clock(std::string_view s, std::tm& tm) {
  return s.size() == 8 && s[2] == ':' && s[5] == ':' && parse_int(s.substr(0, 2), tm.tm_hour) &&
         parse_int(s.substr(3, 2), tm.tm_min) && parse_int(s.substr(6, 2), tm.tm_sec);
}

}  // namespace

std::string format_http_date(std::time_t t) {
  char buf[29];
  format_date_into(buf, t);
  return std::string(buf, sizeof buf);
}

bool parse_http_date(std::string_view s, std::time_t& out) {
  std::tm tm{};
  int mon = -1;
  auto comma = s.find(',');
  if (comma != std::string_view::npos) {
    std::string_view rest = s.substr(comma + 1);
    if (rest.size() == 25 && rest[0] == ' ' && rest[3] == ' ' && rest[7] == ' ' && rest[12] == ' ' &&
        rest.substr(21) == " GMT") {
      // IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT"
      mon = month_index(rest.substr(4, 3));
      if (!parse_int(rest.substr(1, 2), tm.tm_mday) || !parse_int(rest.substr(8, 4), tm.tm_year) ||
          !parse_clock(rest.substr(13, 8), tm))
        return false;
    } else if (rest.size() == 23 && rest[0] == ' ' && rest[3] == '-' && rest[7] == '-' && rest[10] == ' ' &&
               rest.substr(19) == " GMT") {
      // RFC 850: "Sunday, 06-Nov-94 08:49:37 GMT"; two-digit years are 19xx/20xx.
      mon = month_index(rest.substr(4, 3));
      if (!parse_int(rest.substr(1, 2), tm.tm_mday) || !parse_int(rest.substr(8, 2), tm.tm_year) ||
          !parse_clock(rest.substr(11, 8), tm))
        return false;
      tm.tm_year += tm.tm_year < 70 ? 2000 : 1900;
    } else {
      return false;
    }
  } else if (s.size() == 24 && s[3] == ' ' && s[7] == ' ' && s[10] == ' ' && s[19] == ' ') {
    // asctime: "Sun Nov  6 08:49:37 1994"
    mon = month_index(s.substr(4, 3));
    std::string_view day = s.substr(8, 2);
    if (day[0] == ' ') day.remove_prefix(1);
    if (!parse_int(day, tm.tm_mday) || !parse_clock(s.substr(11, 8), tm) || !parse_int(s.substr(20, 4), tm.tm_year))
      return false;
  } else {
    return false;
  }
  if (mon < 0 || tm.tm_mday < 1 || tm.tm_mday > 31 || tm.tm_hour > 23 || tm.tm_min > 59 || tm.tm_sec > 60)
    return false;
  tm.tm_mon = mon;
  tm.tm_year -= 1900;
  out = ::timegm(&tm);
  return out != static_cast<std::time_t>(-1);
}

std::string_view http_clock::now() {
  timespec ts{};
  ::clock_gettime(CLOCK_REALTIME_COARSE, &ts);
  if (ts.tv_sec != second_) {
    second_ = ts.tv_sec;
    format_date_into(text_, second_);
  }
  return std::string_view(text_, 29);
}

const char* reason_phrase(int status) {
  switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 416: return "Range Not Satisfiable";
    case 417: return "Expectation Failed";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
  }
}

void reply::error(int code, std::string_view why, bool close_connection) {
  clear();
  status = code;
  content_type = "text/plain; charset=utf-8";
  body.reserve(why.size() + 48);
  append_number(body, static_cast<unsigned long long>(code));
  body += ' ';
  body += reason_phrase(code);
  body += ": ";
  body += why;
  body += '\n';
  close = close_connection;
}

void append_head(std::string& out, const reply& r, std::string_view date, bool keep_alive, int http_minor) {
  // Answer in the version the client speaks: an HTTP/1.0 client must not be
  // sent chunked encoding, and a 1.1 status line tells it nothing it can use.
  out += http_minor == 0 ? "HTTP/1.0 " : "HTTP/1.1 ";
  append_number(out, static_cast<unsigned long long>(r.status));
  out += ' ';
  out += reason_phrase(r.status);
  out += "\r\nServer: prefork-httpd/" PREFORK_VERSION_STRING "\r\nDate: ";
  out += date;
  out += "\r\n";
  if (!r.content_type.empty()) {
    out += "Content-Type: ";
    out += r.content_type;
    out += "\r\n";
  }
  out += r.headers;
  // 1xx, 204 and 304 carry no Content-Length of their own body.
  if (r.status != 304 && r.status != 204) {
    if (r.chunked && http_minor > 0) {
      out += "Transfer-Encoding: chunked\r\n";
    } else {
      out += "Content-Length: ";
      append_number(out, r.content_length());
      out += "\r\n";
    }
  }
  if (!keep_alive) {
    out += "Connection: close\r\n";
  } else if (http_minor == 0) {
    out += "Connection: keep-alive\r\n";
  }
  out += "\r\n";
}

void append_response(std::string& out, const reply& r, std::string_view date, bool keep_alive, int http_minor) {
  append_head(out, r, date, keep_alive, http_minor);
  if (r.no_body || r.file || r.status == 304 || r.status == 204) return;
  std::string_view b = r.body_bytes();
  if (r.chunked && http_minor > 0) {
    // A generated body's pieces, and its end, come later.
    append_chunk(out, b, !r.generate);
  } else {
    out += b;
  }
}

void append_chunk(std::string& out, std::string_view piece, bool last) {
  if (!piece.empty()) {
    char hex[20];
    auto res = std::to_chars(hex, hex + sizeof hex, piece.size(), 16);
    out.append(hex, static_cast<std::size_t>(res.ptr - hex));
    out += "\r\n";
    out += piece;
    out += "\r\n";
  }
  if (last) out += "0\r\n\r\n";
}

}  // namespace httpd
