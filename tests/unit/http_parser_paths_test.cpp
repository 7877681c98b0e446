// examples/httpd/http_parser.hpp: the fast path (a fresh request, whole
// lines, fast_head()) and the line-at-a-time path must give the same verdict
// on the same bytes. Each request of the fuzz corpus and a set of edge cases
// around the fast path's shortcuts (Host taken in line, the request line from
// constants, the 64-byte per-request state) is parsed whole by a fresh
// parser, by a parser reused after reset(), byte by byte (which leaves every
// line to the reference path), and cut at every point; under the default
// limits and under tiny ones, so the limit checks of both paths meet too.
#include <doctest/doctest.h>

#include "httpd/http_parser.hpp"

#include <dirent.h>

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace {

using httpd::parse_result;

// Everything a parse produced; offsets, not pointers, so parses of
// different buffers compare. An error is its status: where a line breaks
// two limits at once, a head cut short may name the other one (both 431).
std::string describe(const httpd::request_parser& p, parse_result r, std::string_view buf) {
  if (r == parse_result::incomplete) return "incomplete";
  if (r == parse_result::error) {
    CHECK(!p.error_reason().empty());
    return "error " + std::to_string(p.error_status());
  }
  const httpd::request& q = p.get();
  const auto at = [&](std::string_view v) {
    const bool inside =
        !v.empty() && v.data() >= buf.data() && v.data() + v.size() <= buf.data() + buf.size();
    return (inside ? std::to_string(v.data() - buf.data()) : std::string("x")) + ":" + std::string(v) + " ";
  };
  std::string s = "done " + at(q.method) + at(q.target) + at(q.path) + at(q.query) + at(q.host) +
                  std::to_string(static_cast<int>(q.kind)) + " " + std::to_string(q.minor_version) + " " +
                  (q.content_length ? std::to_string(*q.content_length) : "-") + std::to_string(q.chunked) +
                  std::to_string(q.keep_alive) + std::to_string(q.expect_continue) + " " +
                  std::to_string(p.header_length()) + " ";
  for (const auto& f : q.fields) s += "[" + at(f.name) + at(f.value) + "]";
  return s;
}

std::vector<std::string> corpus() {
  std::string dir = __FILE__;
  dir = dir.substr(0, dir.rfind('/')) + "/../../examples/httpd/corpus/parser";
  std::vector<std::string> out;
  DIR* d = ::opendir(dir.c_str());
  REQUIRE(d != nullptr);
  while (const dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.') continue;
    std::ifstream f(dir + "/" + e->d_name, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    out.push_back(ss.str());
  }
  ::closedir(d);
  return out;
}

const std::vector<std::string> edge_cases = {
    "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: localhost:8080\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: 127.0.0.1:\r\n\r\n",
    "GET / HTTP/1.1\r\nhOST:localhost\r\n\r\n",
    "GET / HTTP/1.1\r\nHost:\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: \r\n\r\n",
    "GET / HTTP/1.1\r\nHost: a \t\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: a:b:c\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\nHost: b\r\n\r\n",
    "GET / HTTP/1.1\r\nX: 1\r\nHost: a\r\n\r\n",
    "GET / HTTP/1.1\r\nHosts: a\r\n\r\n",
    "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: a\n\r\n",
    "GET / HTTP/1.1\r\nHost: a\r\n\n",
    "GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nHost: a\r\n\r\n",
    "GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nHost: a\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: " + std::string(30, 'h') + "\r\n\r\n",
    "GET / HTTP/1.1\r\nX-Long: " + std::string(60, 'v') + "\r\nHost: " + std::string(20, 'h') + "\r\n\r\n",
    "GET http://example.com/x HTTP/1.1\r\nHost: other\r\n\r\n",
    "GET http://example.com HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "GET / HTTP/1.0\r\nHost: a\r\n\r\n",
    "GET / HTTP/1.0\r\n\r\n",
    "HEAD /h HTTP/1.1\r\nHost: a\r\n\r\n",
    "POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
    "POST /p HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\nHost: a\r\n\r\n",
    "PUT /p?q=1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    "GET /# HTTP/1.1\r\nHost: a\r\n\r\n",
    "GET /?#x HTTP/1.1\r\nHost: a\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: b\r\n\r\n",
    "\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "GET / HTTP/1.1\r\n",
    "GET / HTTP/1.1\r\nHost: a\r\n",
    "GET / HTTP/1.1\r\nHost: a",
    "GET",
    "",
};

// One parser, reused: it has parsed `before` (done or error) and been reset.
std::string reused(const std::string& before, const std::string& in, const httpd::limits& lim) {
  httpd::request_parser p(lim);
  (void)p.parse(before);
  p.reset();
  CHECK(p.error_status() == 0);
  CHECK(p.error_reason().empty());
  return describe(p, p.parse(in), in);
}

void agree(const std::string& in, const httpd::limits& lim) {
  httpd::request_parser whole(lim);
  const std::string expect = describe(whole, whole.parse(in), in);

  httpd::request_parser bytewise(lim);
  parse_result r = parse_result::incomplete;
  std::size_t n = 0;
  while (r == parse_result::incomplete && n < in.size())
    r = bytewise.parse(std::string_view(in).substr(0, ++n));
  if (in.empty()) r = bytewise.parse(in);
  CHECK(describe(bytewise, r, in) == expect);

  // A parser that has seen a request with every optional part set.
  CHECK(reused("POST http://h:1/p?q HTTP/1.0\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n"
               "Connection: keep-alive\r\n\r\n",
               in, lim) == expect);
  CHECK(reused("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", in, lim) == expect);
  CHECK(reused("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", in, lim) == expect);

  // Cut once anywhere: the fast path takes the lines already whole. The
  // prefix is a copy, so the views taken from it must move to `in`.
  for (std::size_t k = 1; k < in.size(); ++k) {
    httpd::request_parser p(lim);
    const std::string prefix = in.substr(0, k);
    const parse_result first = p.parse(prefix);
    // A prefix may be decisive on its own (a line already over a limit
    // is refused before its end, and may name another limit than the
    // whole head would): only an undecided prefix is fed the rest.
    if (first != parse_result::incomplete) continue;
    CHECK(describe(p, p.parse(in), in) == expect);
    // Done or error stays so; done re-points the views at another copy.
    const std::string copy = in;
    CHECK(describe(p, p.parse(copy), copy) == expect);
  }
}

httpd::limits tiny() {
  httpd::limits lim;
  lim.max_request_line = 40;
  lim.max_field_line = 24;
  lim.max_header_bytes = 96;
  lim.max_fields = 4;
  lim.max_body = 64;
  return lim;
}

}  // namespace

TEST_CASE("the fuzz corpus: whole, reused, byte by byte and cut anywhere agree") {
  const std::vector<std::string> all = corpus();
  REQUIRE(all.size() >= 30);
  for (const std::string& in : all) {
    CAPTURE(in);
    agree(in, httpd::limits{});
    agree(in, tiny());
  }
}

TEST_CASE("edge cases of the fast path: whole, reused, byte by byte and cut anywhere agree") {
  for (const std::string& in : edge_cases) {
    CAPTURE(in);
    agree(in, httpd::limits{});
    agree(in, tiny());
  }
}

TEST_CASE("a whole minimal GET is taken by the fast path as the reference path takes it") {
  const std::string in = "GET /a?b HTTP/1.1\r\nHost: localhost:8080\r\nAccept: */*\r\n\r\n";
  httpd::request_parser p;
  REQUIRE(p.parse(in) == parse_result::done);
  const httpd::request& q = p.get();
  CHECK(q.method.data() == in.data());
  CHECK(q.path == "/a");
  CHECK(q.query == "b");
  CHECK(q.host == "localhost:8080");
  CHECK(q.host.data() == in.data() + 25);
  REQUIRE(q.fields.size() == 2);
  CHECK(q.fields[0].name == "Host");
  CHECK(q.fields[1].value == "*/*");
  CHECK(p.header_length() == in.size());
  // Re-pointed at a copy of the buffer, as after a move.
  const std::string copy = in;
  REQUIRE(p.parse(copy) == parse_result::done);
  CHECK(p.get().host.data() == copy.data() + 25);
  CHECK(p.get().fields[0].name.data() == copy.data() + 19);
}
