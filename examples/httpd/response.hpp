// httpd/response.hpp: the bytes of a response head, and the Date header.
//
// A response is described by `reply` (what a route decided) and turned into
// bytes by append_head(), which appends to a buffer the caller reuses, so the
// common path (/hello) formats into capacity already there and allocates
// nothing. The constant bytes (status lines, Server) are literals; the Date
// value is formatted at most once a second by http_clock, which reads
// CLOCK_REALTIME_COARSE (a vDSO call, no system call).
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <ctime>
#include <functional>
#include <string>
#include <string_view>

#include <prefork/fd.hpp>

namespace httpd {

// "Fri, 27 Nov 2026 03:13:14 GMT", and back. parse accepts IMF-fixdate,
// RFC 850 and asctime forms, as RFC 9110 asks recipients to.
std::string format_http_date(std::time_t t);
bool parse_http_date(std::string_view text, std::time_t& out);

class http_clock {
 public:
  // The current Date value, 29 characters, valid until the next call.
  std::string_view now();

 private:
  std::time_t second_ = -1;
  char text_[32] = {};
};

const char* reason_phrase(int status);

// What a route answers. Reused across requests: clear() keeps capacities.
struct reply {
  int status = 200;
  std::string_view content_type;   // empty: no Content-Type
  std::string_view body_view;      // a body in static storage ...
  std::string body;                // ... or owned; body_view wins when set
  std::string headers;             // extra "Name: value\r\n" lines
  prefork::fd file;                // a file body, sent with sendfile
  off_t file_offset = 0;
  std::size_t file_length = 0;
  bool close = false;              // the connection ends after this response
  bool no_body = false;            // HEAD, 304: headers say the length, no body follows
  bool chunked = false;            // body sent with chunked encoding (no length known)
  bool admin = false;              // an admin route: left out of the request metrics
  std::string type_store;          // an application's Content-Type (content_type points here)
  // An application's generated body (chunked): appends the next piece,
  // false once done. Set with chunked; body and file are then unused.
  std::function<bool(std::string&)> generate;

  void clear() {
    status = 200;
    content_type = {};
    body_view = {};
    body.clear();
    headers.clear();
    file.reset();
    file_offset = 0;
    file_length = 0;
    close = no_body = chunked = admin = false;
    if (generate) generate = nullptr;
  }
  std::string_view body_bytes() const { return body_view.data() ? body_view : std::string_view(body); }
  std::size_t content_length() const { return file ? file_length : body_bytes().size(); }

  // An error answer whose body says what was wrong.
  void error(int code, std::string_view why, bool close_connection);
};

// Appends the status line and headers for `r` to `out`. keep_alive says
// whether the connection stays open (for HTTP/1.0 that is announced with
// "Connection: keep-alive"); http_minor is the request's version.
void append_head(std::string& out, const reply& r, std::string_view date, bool keep_alive, int http_minor);

// Appends the head and, unless no_body, a body held in memory (a generated
// body's pieces follow with append_chunk).
void append_response(std::string& out, const reply& r, std::string_view date, bool keep_alive, int http_minor);

// One piece of a chunked body, and the last-chunk after it when last.
void append_chunk(std::string& out, std::string_view piece, bool last);

}  // namespace httpd
