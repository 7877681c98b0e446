// libFuzzer target for httpd::request_parser (scripts/fuzz builds and runs it).
//
// Beyond "no crash, no leak, no undefined behaviour" it checks what the server
// relies on: the same bytes give the same answer however they are split and
// wherever the buffer lives; a finished request's views lie inside its head;
// an error carries a status the server knows and a reason; a done head ends
// with CRLF CRLF exactly at header_length(). Each input runs under the default
// limits and under tiny ones, so the limit paths are reached by short inputs.
#include "httpd/fuzz_check.hpp"
#include "httpd/http_parser.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace {

bool inside(std::string_view part, std::string_view whole) {
  if (part.empty()) return true;
  return part.data() >= whole.data() && part.data() + part.size() <= whole.data() + whole.size();
}

// Everything a parse produced, offsets instead of pointers, so that parses of
// different buffers compare.
std::string describe(const httpd::request_parser& p, httpd::parse_result r, std::string_view buf) {
  std::string s;
  if (r == httpd::parse_result::incomplete) return "incomplete";
  if (r == httpd::parse_result::error) return "error " + std::to_string(p.error_status());
  const httpd::request& q = p.get();
  const auto at = [&](std::string_view v) {
    // The literal "/" or "*" of a target without its own path lies outside.
    std::string where = inside(v, buf) && !v.empty() ? std::to_string(v.data() - buf.data()) : "x";
    return where + ":" + std::string(v) + " ";
  };
  s = "done " + at(q.method) + at(q.target) + at(q.path) + at(q.query) + at(q.host);
  s += std::to_string(q.minor_version) + (q.content_length ? std::to_string(*q.content_length) : "-") +
       std::to_string(q.chunked) + std::to_string(q.keep_alive) + std::to_string(q.expect_continue) + " " +
       std::to_string(p.header_length());
  for (const auto& f : q.fields) s += at(f.name) + at(f.value);
  return s;
}

void check_done(const httpd::request_parser& p, std::string_view buf, const httpd::limits& lim) {
  const httpd::request& q = p.get();
  const std::size_t head = p.header_length();
  FUZZ_CHECK(head >= 18 && head <= buf.size());  // "GET / HTTP/1.0\r\n\r\n" is the shortest
  FUZZ_CHECK(buf.substr(head - 4, 4) == "\r\n\r\n");
  const std::string_view h = buf.substr(0, head);
  for (std::string_view v : {q.method, q.target, q.query, q.host}) FUZZ_CHECK(inside(v, h));
  FUZZ_CHECK(inside(q.path, h) || q.path == "/");
  FUZZ_CHECK(q.minor_version == 0 || q.minor_version == 1);
  FUZZ_CHECK(q.fields.size() <= lim.max_fields);
  FUZZ_CHECK(!(q.chunked && q.content_length));
  FUZZ_CHECK(!q.content_length || *q.content_length <= lim.max_body);
  FUZZ_CHECK(q.minor_version == 0 || q.find("host") != nullptr);
  FUZZ_CHECK(!q.chunked || q.minor_version == 1);
  for (const auto& f : q.fields) {
    FUZZ_CHECK(inside(f.name, h) && inside(f.value, h));
    FUZZ_CHECK(httpd::is_token(f.name));
    FUZZ_CHECK(f.value.find_first_of(std::string_view("\r\n\0", 3)) == std::string_view::npos);
    FUZZ_CHECK(f.value.empty() || (f.value.front() != ' ' && f.value.back() != ' '));
  }
  std::string decoded;
  if (httpd::percent_decode(q.path, decoded)) {
    FUZZ_CHECK(decoded.size() <= q.path.size());
    FUZZ_CHECK(decoded.find('\0') == std::string::npos);
  }
  // The head alone is the same request.
  httpd::request_parser again(lim);
  FUZZ_CHECK(again.parse(h) == httpd::parse_result::done);
  FUZZ_CHECK(describe(again, httpd::parse_result::done, h) == describe(p, httpd::parse_result::done, buf));
}

void run(std::string_view in, const httpd::limits& lim) {
  httpd::request_parser whole(lim);
  const httpd::parse_result rw = whole.parse(in);
  const std::string expect = describe(whole, rw, in);
  if (rw == httpd::parse_result::error) {
    const int st = whole.error_status();
    FUZZ_CHECK(st == 400 || st == 413 || st == 414 || st == 417 || st == 431 || st == 501 || st == 505);
    FUZZ_CHECK(!whole.error_reason().empty());
  } else if (rw == httpd::parse_result::done) {
    check_done(whole, in, lim);
  }

  // One byte at a time, as a slow client sends it; the buffer stays put.
  httpd::request_parser bytewise(lim);
  httpd::parse_result rb = httpd::parse_result::incomplete;
  std::size_t n = 0;
  while (rb == httpd::parse_result::incomplete && n < in.size()) rb = bytewise.parse(in.substr(0, ++n));
  FUZZ_CHECK(describe(bytewise, rb, in) == expect);

  // Larger pieces, each time in a new buffer (a server's buffer may move).
  const std::size_t step = 1 + in.size() % 13;
  httpd::request_parser moving(lim);
  httpd::parse_result rm = httpd::parse_result::incomplete;
  std::string buf;
  for (n = 0; rm == httpd::parse_result::incomplete && n < in.size();) {
    n = std::min(in.size(), n + step);
    std::string fresh(in.substr(0, n));
    buf.swap(fresh);
    rm = moving.parse(buf);
  }
  FUZZ_CHECK(describe(moving, rm, buf) == expect);

  // A chunked body after a done head goes through the decoder too.
  if (rw == httpd::parse_result::done && whole.get().chunked) {
    httpd::chunked_decoder d(lim.max_body, lim);
    std::string body;
    const auto r = d.feed(in.substr(whole.header_length()), body);
    FUZZ_CHECK(r.consumed <= in.size() - whole.header_length());
    FUZZ_CHECK(body.size() == d.body_size() && d.body_size() <= lim.max_body);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  run(in, httpd::limits{});
  httpd::limits tiny;
  tiny.max_request_line = 40;
  tiny.max_field_line = 24;
  tiny.max_header_bytes = 96;
  tiny.max_fields = 4;
  tiny.max_body = 64;
  run(in, tiny);
  return 0;
}
