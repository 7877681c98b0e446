// examples/httpd/http_parser.hpp: every rule of the request parser with the
// status it must give, any split of the input giving the same result, the
// chunked decoder, and the small helpers.
#include <doctest/doctest.h>

#include "httpd/http_parser.hpp"

#include <list>
#include <ostream>
#include <string>
#include <vector>

using namespace std::string_literals;

namespace {

using httpd::parse_result;

// Everything a parse produced, as text, so two parses compare with one ==
// and a failure prints both sides.
std::string describe(const httpd::request_parser& p, parse_result r) {
  if (r == parse_result::incomplete) return "incomplete";
  if (r == parse_result::error)
    return "error " + std::to_string(p.error_status()) + " " + std::string(p.error_reason());
  const httpd::request& q = p.get();
  std::string s = "done method=" + std::string(q.method) + " target=" + std::string(q.target) +
                  " path=" + std::string(q.path) + " query=" + std::string(q.query) +
                  " minor=" + std::to_string(q.minor_version) + " host=" + std::string(q.host) +
                  " cl=" + (q.content_length ? std::to_string(*q.content_length) : "-") +
                  " chunked=" + std::to_string(q.chunked) + " keep_alive=" + std::to_string(q.keep_alive) +
                  " continue=" + std::to_string(q.expect_continue) +
                  " head=" + std::to_string(p.header_length()) + " fields=";
  for (const auto& f : q.fields) s += "[" + std::string(f.name) + "|" + std::string(f.value) + "]";
  return s;
}

std::string parse_whole(const std::string& in, httpd::limits lim = {}) {
  httpd::request_parser p(lim);
  return describe(p, p.parse(in));
}

// The server's way: the buffer grows, and may move, between calls.
std::string parse_growing(const std::string& in, std::size_t step, httpd::limits lim = {}) {
  httpd::request_parser p(lim);
  parse_result r = parse_result::incomplete;
  std::string buf;
  for (std::size_t n = 0; n < in.size() && r == parse_result::incomplete;) {
    n = std::min(in.size(), n + step);
    std::string moved = in.substr(0, n);  // a fresh allocation each time
    buf.swap(moved);
    r = p.parse(buf);
  }
  return describe(p, r);
}

int status(const std::string& in, httpd::limits lim = {}) {
  httpd::request_parser p(lim);
  parse_result r = p.parse(in);
  if (r == parse_result::done) return 200;
  if (r == parse_result::incomplete) return 0;
  CHECK(!p.error_reason().empty());
  return p.error_status();
}

std::string req(std::string request_line, std::string fields = "Host: example.com\r\n") {
  return request_line + "\r\n" + fields + "\r\n";
}

const httpd::request& parsed(httpd::request_parser& p, std::string_view in) {
  REQUIRE(p.parse(in) == parse_result::done);
  return p.get();
}

// For a temporary: the request's views point into it, so it must outlive them.
const httpd::request& parsed(httpd::request_parser& p, std::string&& in) {
  static std::list<std::string> kept;
  kept.push_back(std::move(in));
  return parsed(p, std::string_view(kept.back()));
}

const std::vector<std::string> valid_requests = {
    "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "GET /index.html?x=1&y=%20 HTTP/1.1\r\nHost: example.com:8080\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n",
    "\r\nGET /after-empty-line HTTP/1.1\r\nHost: a\r\n\r\n",
    "GET / HTTP/1.0\r\n\r\n",
    "GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
    "POST /submit HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello",
    "POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: "
    "close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "GET http://example.com/p?q HTTP/1.1\r\nHost: ignored\r\n\r\n",
    "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    "DELETE /x HTTP/1.9\r\nhost:a\r\nX-Empty:\r\nX-Tab:\t v \t\r\nX-Obs: caf\xc3\xa9\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n",
};

}  // namespace

TEST_CASE("a minimal GET") {
  httpd::request_parser p;
  const std::string in = "GET /a/b?x=1&y HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n";
  const httpd::request& r = parsed(p, in);
  CHECK(r.method == "GET");
  CHECK(r.kind == httpd::verb::get);
  CHECK(r.target == "/a/b?x=1&y");
  CHECK(r.path == "/a/b");
  CHECK(r.query == "x=1&y");
  CHECK(r.minor_version == 1);
  CHECK(r.host == "example.com");
  CHECK(r.fields.size() == 2);
  CHECK(r.fields[1].name == "Accept");
  CHECK(r.fields[1].value == "*/*");
  CHECK_FALSE(r.content_length);
  CHECK_FALSE(r.chunked);
  CHECK_FALSE(r.has_body());
  CHECK(r.keep_alive);
  CHECK_FALSE(r.expect_continue);
  CHECK(p.header_length() == in.size());
  // Views point into the caller's buffer: zero-copy.
  CHECK(r.path.data() == in.data() + 4);
}

TEST_CASE("an incomplete head asks for more, however it is cut") {
  const std::string in = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
  for (std::size_t n = 0; n < in.size(); ++n) CHECK(status(in.substr(0, n)) == 0);
}

TEST_CASE("every split point and byte-at-a-time give the same result") {
  for (const std::string& in : valid_requests) {
    CAPTURE(in);
    const std::string whole = parse_whole(in);
    REQUIRE(whole.rfind("done", 0) == 0);
    CHECK(parse_growing(in, 1) == whole);
    for (std::size_t k = 1; k < in.size(); ++k) {
      httpd::request_parser p;
      parse_result first = p.parse(std::string(in, 0, k));
      if (first == parse_result::done) continue;  // the head ended within the prefix
      CHECK(first == parse_result::incomplete);
      CHECK(describe(p, p.parse(in)) == whole);
    }
  }
}

TEST_CASE("a bad request fails the same way however it is split") {
  const std::vector<std::string> bad = {
      "GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
      "GET / HTTP/2.0\r\nHost: a\r\n\r\n",
      "FOO / HTTP/1.1\r\nHost: a\r\n\r\n",
      "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
      "GET / HTTP/1.1\r\nX: a\r\n b\r\nHost: a\r\n\r\n",
      "GET / HTTP/1.1\r\n\r\n",
      "GET / HTTP/1.1\nHost: a\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: a\r\n" + std::string(9000, 'x') + "\r\n\r\n",
      "GET /" + std::string(9000, 'x') + " HTTP/1.1\r\n\r\n",
  };
  for (const std::string& in : bad) {
    CAPTURE(in.substr(0, 60));
    const std::string whole = parse_whole(in);
    REQUIRE(whole.rfind("error", 0) == 0);
    CHECK(parse_growing(in, 1) == whole);
    CHECK(parse_growing(in, 7) == whole);
  }
}

TEST_CASE("the request line: single spaces, a token method, a known version") {
  CHECK(status(req("GET / HTTP/1.1")) == 200);
  CHECK(status(req("GET  / HTTP/1.1")) == 400);
  CHECK(status(req("GET /  HTTP/1.1")) == 400);
  CHECK(status(req("GET / HTTP/1.1 ")) == 400);
  CHECK(status(req(" GET / HTTP/1.1")) == 400);
  CHECK(status(req("GET\t/ HTTP/1.1")) == 400);
  CHECK(status(req("GET /\tHTTP/1.1")) == 400);
  CHECK(status(req("GET / ")) == 400);
  CHECK(status(req("GET /")) == 400);
  CHECK(status(req("GET")) == 400);
  CHECK(status(req("G@T / HTTP/1.1")) == 400);
  CHECK(status(req("G\x01T / HTTP/1.1")) == 400);
  CHECK(status(req("GET / http/1.1")) == 400);
  CHECK(status(req("GET / HTTP/1")) == 400);
  CHECK(status(req("GET / HTTP/1.10")) == 400);
  CHECK(status(req("GET / HTTP/11.1")) == 400);
  CHECK(status(req("GET / HTTP/1.x")) == 400);
  CHECK(status(req("GET / HTTP/2.0")) == 505);
  CHECK(status(req("GET / HTTP/3.0")) == 505);
  CHECK(status(req("GET / HTTP/0.9")) == 505);
  CHECK(status("GET / HTTP/1.1\nHost: a\r\n\r\n") == 400);      // bare LF
  CHECK(status("GET / HTTP/1.1\r\r\nHost: a\r\n\r\n") == 400);  // bare CR
}

TEST_CASE("HTTP/1.x versions above 1.1 are answered as 1.1") {
  httpd::request_parser p;
  CHECK(parsed(p, req("GET / HTTP/1.2")).minor_version == 1);
  p.reset();
  CHECK(parsed(p, req("GET / HTTP/1.9")).minor_version == 1);
  p.reset();
  CHECK(parsed(p, req("GET / HTTP/1.0", "")).minor_version == 0);
}

TEST_CASE("known methods are recognised; unknown tokens are 501, case matters") {
  const std::pair<const char*, httpd::verb> known[] = {
      {"GET", httpd::verb::get},     {"HEAD", httpd::verb::head},      {"POST", httpd::verb::post},
      {"PUT", httpd::verb::put},     {"DELETE", httpd::verb::delete_}, {"OPTIONS", httpd::verb::options},
      {"PATCH", httpd::verb::patch}, {"TRACE", httpd::verb::trace},
  };
  for (const auto& [name, kind] : known) {
    httpd::request_parser p;
    const httpd::request& r = parsed(p, req(std::string(name) + " / HTTP/1.1"));
    CHECK(r.method == name);
    CHECK(r.kind == kind);
  }
  CHECK(status(req("get / HTTP/1.1")) == 501);
  CHECK(status(req("FOO / HTTP/1.1")) == 501);
  CHECK(status(req("PROPFIND / HTTP/1.1")) == 501);
  CHECK(status(req("GETS / HTTP/1.1")) == 501);
}

TEST_CASE("request targets: origin, absolute, asterisk and authority forms") {
  httpd::request_parser p;
  SUBCASE("absolute-form: its authority is the host, whatever Host says") {
    const httpd::request& r =
        parsed(p, req("GET http://example.com:8080/x/y?z=1 HTTP/1.1", "Host: other\r\n"));
    CHECK(r.host == "example.com:8080");
    CHECK(r.path == "/x/y");
    CHECK(r.query == "z=1");
  }
  SUBCASE("absolute-form without a path has path /") {
    const httpd::request& r = parsed(p, req("GET HTTPS://h?q HTTP/1.1"));
    CHECK(r.host == "h");
    CHECK(r.path == "/");
    CHECK(r.query == "q");
  }
  SUBCASE("asterisk-form for OPTIONS") {
    const httpd::request& r = parsed(p, req("OPTIONS * HTTP/1.1"));
    CHECK(r.path == "*");
    CHECK(r.kind == httpd::verb::options);
  }
  SUBCASE("authority-form for CONNECT") {
    const httpd::request& r = parsed(p, req("CONNECT example.com:443 HTTP/1.1"));
    CHECK(r.kind == httpd::verb::connect);
    CHECK(r.host == "example.com:443");
    CHECK(r.path.empty());
  }
  SUBCASE("an empty query is still split off") {
    const httpd::request& r = parsed(p, req("GET /a? HTTP/1.1"));
    CHECK(r.path == "/a");
    CHECK(r.query.empty());
  }
  CHECK(status(req("GET * HTTP/1.1")) == 400);
  CHECK(status(req("CONNECT / HTTP/1.1")) == 400);
  CHECK(status(req("CONNECT example.com HTTP/1.1")) == 400);
  CHECK(status(req("GET example.com:80 HTTP/1.1")) == 400);
  CHECK(status(req("GET ftp://h/x HTTP/1.1")) == 400);
  CHECK(status(req("GET http:///x HTTP/1.1")) == 400);
  CHECK(status(req("GET http://user@h/x HTTP/1.1")) == 400);
  CHECK(status(req("GET http://h{/x HTTP/1.1")) == 400);
  CHECK(status(req("GET /a#frag HTTP/1.1")) == 400);
  CHECK(status(req("GET /caf\xc3\xa9 HTTP/1.1")) == 400);
  CHECK(status(req("GET /a\x7f HTTP/1.1")) == 400);
  CHECK(status(req("GET /a\x01 HTTP/1.1")) == 400);
}

TEST_CASE("empty lines before the request line are skipped, within reason") {
  httpd::request_parser p;
  const std::string in = "\r\n\r\n" + req("GET / HTTP/1.1");
  CHECK(parsed(p, in).method == "GET");
  CHECK(p.header_length() == in.size());
  CHECK(status(std::string(18, '\r') + req("GET / HTTP/1.1")) == 400);
  CHECK(status("\n" + req("GET / HTTP/1.1")) == 400);
  std::string many;
  for (int i = 0; i < 9; ++i) many += "\r\n";
  CHECK(status(many + req("GET / HTTP/1.1")) == 400);
}

TEST_CASE("field lines: token names, a colon right after, clean values") {
  httpd::request_parser p;
  const httpd::request& r =
      parsed(p, req("GET / HTTP/1.1", "Host: a\r\nX-A:b\r\nX-B:  \t c d \t \r\nX-C:\r\nX-D: \x80\xff\r\n"));
  REQUIRE(r.fields.size() == 5);
  CHECK(r.fields[1].value == "b");
  CHECK(r.fields[2].value == "c d");  // inner whitespace kept, outer trimmed
  CHECK(r.fields[3].value.empty());
  CHECK(r.fields[4].value == "\x80\xff");  // obs-text is tolerated
  CHECK(r.find("x-b") == &r.fields[2]);
  CHECK(r.find("X-B") == &r.fields[2]);
  CHECK(r.find("X-Nope") == nullptr);

  CHECK(status(req("GET / HTTP/1.1", "Host: a\r\nX-A : b\r\n")) == 400);
  CHECK(status(req("GET / HTTP/1.1", "Host: a\r\nX-A\t: b\r\n")) == 400);
  CHECK(status(req("GET / HTTP/1.1", "Host: a\r\nX-A b\r\n")) == 400);
  CHECK(status(req("GET / HTTP/1.1", "Host: a\r\nno-colon\r\n")) == 400);
  CHECK(status(req("GET / HTTP/1.1", "Host: a\r\n: empty name\r\n")) == 400);
  CHECK(status(req("GET / HTTP/1.1", "Host: a\r\nX(A): b\r\n")) == 400);
  CHECK(status(req("GET / HTTP/1.1", "Host: a\r\nX\xc3\xa9: b\r\n")) == 400);
  CHECK(status(req("GET / HTTP/1.1", "Host: a\r\nX-A: b\r\n c\r\n")) == 400);   // obs-fold
  CHECK(status(req("GET / HTTP/1.1", "Host: a\r\nX-A: b\r\n\tc\r\n")) == 400);  // obs-fold
  CHECK(status(req("GET / HTTP/1.1", " Host: a\r\n")) == 400);
  CHECK(status(req("GET / HTTP/1.1", "Host: a\r\nX-A: b" + std::string(1, '\0') + "c\r\n")) == 400);
  CHECK(status(req("GET / HTTP/1.1", "Host: a\r\nX-A: b\rc\r\n")) == 400);
  CHECK(status(req("GET / HTTP/1.1", "Host: a\r\nX-A: b\x01\r\n")) == 400);
  CHECK(status(req("GET / HTTP/1.1", "Host: a\r\nX-A: b\x1b[0m\r\n")) == 400);
  CHECK(status(req("GET / HTTP/1.1", "Host: a\r\nX-A: b\x7f\r\n")) == 400);
  CHECK(status(req("GET / HTTP/1.1", "Host: a\r\nX-A: b\n")) == 400);  // bare LF
}

TEST_CASE("Host is required in HTTP/1.1, once, and well-formed") {
  CHECK(status(req("GET / HTTP/1.1", "")) == 400);
  CHECK(status(req("GET / HTTP/1.1", "X: y\r\n")) == 400);
  CHECK(status(req("GET / HTTP/1.0", "")) == 200);
  CHECK(status(req("GET / HTTP/1.1", "Host: a\r\nHost: a\r\n")) == 400);
  CHECK(status(req("GET / HTTP/1.1", "Host: a\r\nhost: b\r\n")) == 400);
  CHECK(status(req("GET / HTTP/1.0", "Host: a\r\nHost: b\r\n")) == 400);
  CHECK(status(req("GET / HTTP/1.1", "Host: a b\r\n")) == 400);
  CHECK(status(req("GET / HTTP/1.1", "Host: a/b\r\n")) == 400);
  CHECK(status(req("GET / HTTP/1.1", "Host: [::1]:80\r\n")) == 200);
  CHECK(status(req("GET / HTTP/1.1", "Host:\r\n")) == 200);  // empty is allowed (RFC 9110 7.2)
  CHECK(status(req("GET http://h/ HTTP/1.1", "")) == 400);   // absolute-form still needs Host
  httpd::request_parser p;
  CHECK(parsed(p, req("GET / HTTP/1.1", "HOST: Example.COM\r\n")).host == "Example.COM");
}

TEST_CASE("Content-Length: digits only, one value") {
  httpd::request_parser p;
  const httpd::request& r =
      parsed(p, req("POST / HTTP/1.1", "Host: a\r\nContent-Length: 12\r\ncontent-length: 12\r\n"));
  CHECK(r.content_length == 12u);
  CHECK(r.has_body());
  p.reset();
  CHECK(parsed(p, req("POST / HTTP/1.1", "Host: a\r\nContent-Length: 0\r\n")).content_length == 0u);
  CHECK_FALSE(p.get().has_body());

  for (const char* bad : {"", "abc", "-1", "+5", "1 2", "0x10", "5,5", "5, 5", "1.0", "１"}) {
    CAPTURE(bad);
    CHECK(status(req("POST / HTTP/1.1", std::string("Host: a\r\nContent-Length: ") + bad + "\r\n")) == 400);
  }
  CHECK(status(req("POST / HTTP/1.1", "Host: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n")) == 400);
  CHECK(status(req("POST / HTTP/1.1", "Host: a\r\nContent-Length: 99999999999999999999\r\n")) == 400);
  CHECK(status(req("POST / HTTP/1.1", "Host: a\r\nContent-Length: 1048576\r\n")) == 200);
  CHECK(status(req("POST / HTTP/1.1", "Host: a\r\nContent-Length: 1048577\r\n")) == 413);
  CHECK(status(req("POST / HTTP/1.1", "Host: a\r\nContent-Length: 9223372036854775807\r\n")) == 413);
  httpd::limits small;
  small.max_body = 10;
  CHECK(status(req("POST / HTTP/1.1", "Host: a\r\nContent-Length: 10\r\n"), small) == 200);
  CHECK(status(req("POST / HTTP/1.1", "Host: a\r\nContent-Length: 11\r\n"), small) == 413);
}

TEST_CASE("Transfer-Encoding: chunked last, alone, and only in HTTP/1.1") {
  httpd::request_parser p;
  const httpd::request& r = parsed(p, req("POST / HTTP/1.1", "Host: a\r\nTransfer-Encoding: chunked\r\n"));
  CHECK(r.chunked);
  CHECK_FALSE(r.content_length);
  CHECK(r.has_body());
  p.reset();
  CHECK(parsed(p, req("POST / HTTP/1.1", "Host: a\r\ntransfer-encoding: CHUNKED\r\n")).chunked);
  p.reset();
  CHECK(parsed(p, req("POST / HTTP/1.1", "Host: a\r\nTransfer-Encoding: , chunked ,\r\n")).chunked);

  const auto te = [](std::string fields) { return status(req("POST / HTTP/1.1", "Host: a\r\n" + fields)); };
  CHECK(te("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n") == 400);
  CHECK(te("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n") == 400);
  CHECK(te("Transfer-Encoding: gzip\r\n") == 400);
  CHECK(te("Transfer-Encoding: identity\r\n") == 400);
  CHECK(te("Transfer-Encoding: chunked, gzip\r\n") == 400);
  CHECK(te("Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n") == 400);
  CHECK(te("Transfer-Encoding: chunked, chunked\r\n") == 400);
  CHECK(te("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n") == 400);
  CHECK(te("Transfer-Encoding:\r\n") == 400);
  CHECK(te("Transfer-Encoding: ,\r\n") == 400);
  CHECK(te("Transfer-Encoding: chun ked\r\n") == 400);
  CHECK(te("Transfer-Encoding: \"chunked\"\r\n") == 400);
  CHECK(te("Transfer-Encoding: gzip, chunked\r\n") == 501);
  CHECK(te("Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n") == 501);
  CHECK(te("Transfer-Encoding: deflate;q=1, chunked\r\n") == 501);
  CHECK(status(req("POST / HTTP/1.0", "Transfer-Encoding: chunked\r\n")) == 400);
}

TEST_CASE("Connection decides keep-alive, per version") {
  const auto ka = [](const std::string& line, const std::string& fields) {
    httpd::request_parser p;
    return parsed(p, req(line, fields)).keep_alive;
  };
  CHECK(ka("GET / HTTP/1.1", "Host: a\r\n"));
  CHECK_FALSE(ka("GET / HTTP/1.1", "Host: a\r\nConnection: close\r\n"));
  CHECK_FALSE(ka("GET / HTTP/1.1", "Host: a\r\nConnection: Upgrade, CLOSE\r\n"));
  CHECK_FALSE(ka("GET / HTTP/1.1", "Host: a\r\nConnection: keep-alive\r\nConnection: close\r\n"));
  CHECK(ka("GET / HTTP/1.1", "Host: a\r\nConnection: keep-alive, Upgrade\r\n"));
  CHECK(ka("GET / HTTP/1.1", "Host: a\r\nConnection: closed\r\n"));  // a token, not a prefix
  CHECK_FALSE(ka("GET / HTTP/1.0", ""));
  CHECK(ka("GET / HTTP/1.0", "Connection: keep-alive\r\n"));
  CHECK(ka("GET / HTTP/1.0", "Connection: foo , Keep-Alive\r\n"));
  CHECK_FALSE(ka("GET / HTTP/1.0", "Connection: keep-alive, close\r\n"));
}

TEST_CASE("Expect: 100-continue is seen; other expectations are 417") {
  const auto cont = [](const std::string& line, const std::string& fields) {
    httpd::request_parser p;
    return parsed(p, req(line, fields)).expect_continue;
  };
  CHECK(cont("POST / HTTP/1.1", "Host: a\r\nContent-Length: 3\r\nExpect: 100-continue\r\n"));
  CHECK(cont("POST / HTTP/1.1", "Host: a\r\nContent-Length: 3\r\nexpect: 100-Continue\r\n"));
  CHECK_FALSE(cont("POST / HTTP/1.1", "Host: a\r\nContent-Length: 3\r\n"));
  CHECK_FALSE(cont("POST / HTTP/1.0", "Content-Length: 3\r\nExpect: 100-continue\r\n"));  // ignored in 1.0
  CHECK(status(req("POST / HTTP/1.1", "Host: a\r\nExpect: something-else\r\n")) == 417);
  CHECK(status(req("POST / HTTP/1.1", "Host: a\r\nExpect: 100-continue, x\r\n")) == 417);
  // The body is too large whatever was expected: 413, not 100.
  CHECK(status(req("POST / HTTP/1.1", "Host: a\r\nExpect: 100-continue\r\nContent-Length: 2000000\r\n")) ==
        413);
}

TEST_CASE("limits: 414 for the request line, 431 for fields") {
  const std::string prefix = "GET /";
  const std::string suffix = " HTTP/1.1";
  // A request line of exactly 8192 bytes passes; one more is refused.
  const std::string at_limit = prefix + std::string(8192 - prefix.size() - suffix.size(), 'a') + suffix;
  REQUIRE(at_limit.size() == 8192);
  CHECK(status(req(at_limit)) == 200);
  CHECK(status(req(prefix + "a" + at_limit.substr(prefix.size()))) == 414);
  // ... also before its end has arrived (no unbounded buffering).
  CHECK(status("GET /" + std::string(8200, 'a')) == 414);
  CHECK(status("GET /" + std::string(8180, 'a')) == 0);

  const std::string field_at_limit = "X: " + std::string(8192 - 3, 'v');
  CHECK(status(req("GET / HTTP/1.1", "Host: a\r\n" + field_at_limit + "\r\n")) == 200);
  CHECK(status(req("GET / HTTP/1.1", "Host: a\r\n" + field_at_limit + "v\r\n")) == 431);
  CHECK(status("GET / HTTP/1.1\r\nHost: a\r\nX: " + std::string(8200, 'v')) == 431);

  std::string fields = "Host: a\r\n";
  for (int i = 1; i < 100; ++i) fields += "X-" + std::to_string(i) + ": v\r\n";
  CHECK(status(req("GET / HTTP/1.1", fields)) == 200);  // 100 fields
  CHECK(status(req("GET / HTTP/1.1", fields + "X-100: v\r\n")) == 431);

  // 70 KiB of fields, each short, with a generous field count.
  httpd::limits many;
  many.max_fields = 1000;
  std::string big = "Host: a\r\n";
  while (big.size() < 70000) big += "X-Filler: " + std::string(90, 'f') + "\r\n";
  CHECK(status(req("GET / HTTP/1.1", big), many) == 431);
  CHECK(status("GET / HTTP/1.1\r\n" + big, many) == 431);  // before the end arrived

  httpd::limits tiny;
  tiny.max_request_line = 16;
  tiny.max_field_line = 8;
  tiny.max_header_bytes = 20;
  tiny.max_fields = 2;
  CHECK(status(req("GET /ab HTTP/1.1", "Host: a\r\n"), tiny) == 200);   // line of 16
  CHECK(status(req("GET /abc HTTP/1.1", "Host: a\r\n"), tiny) == 414);  // line of 17
  CHECK(status(req("GET / HTTP/1.1", "Host: ab\r\n"), tiny) == 200);    // field line of 8
  CHECK(status(req("GET / HTTP/1.1", "Host: abc\r\n"), tiny) == 431);
  CHECK(status(req("GET / HTTP/1.1", "Host: a\r\nX: 1\r\n"), tiny) == 200);
  CHECK(status(req("GET / HTTP/1.1", "Host: a\r\nX: 1\r\nY: 2\r\n"), tiny) == 431);  // 3 fields
  CHECK(status(req("GET / HTTP/1.1", "Host: a\r\nX: 1234\r\n"), tiny) == 200);       // 9 + 9 + 2 = 20 bytes
  CHECK(status(req("GET / HTTP/1.1", "Host: ab\r\nX: 1234\r\n"), tiny) == 431);      // 21
  CHECK(status("GET / HTTP/1.1\r\nHost: ab\r\nX: 1234\r\nY", tiny) == 431);          // before the end

  httpd::limits absurd;
  absurd.max_header_bytes = std::size_t{1} << 40;
  CHECK_THROWS_AS(httpd::request_parser{absurd}, std::invalid_argument);
}

TEST_CASE("pipelined requests: header_length tells where the next one starts") {
  const std::string first = "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n";
  const std::string second = "GET /b HTTP/1.1\r\nHost: h\r\n\r\n";
  const std::string third = "GET /c HTTP/1.0\r\n\r\n";
  std::string buf = first + "hello" + second + third;
  httpd::request_parser p;
  const httpd::request& a = parsed(p, buf);
  CHECK(a.path == "/a");
  CHECK(p.header_length() == first.size());
  std::size_t at = p.header_length() + static_cast<std::size_t>(*a.content_length);
  CHECK(buf.substr(p.header_length(), 5) == "hello");

  p.reset();
  buf.erase(0, at);  // as a server would: the buffer moves
  const httpd::request& b = parsed(p, buf);
  CHECK(b.path == "/b");
  CHECK(b.fields.size() == 1);  // nothing left from the first request
  CHECK_FALSE(b.content_length);
  CHECK(p.header_length() == second.size());

  p.reset();
  const httpd::request& c = parsed(p, std::string_view(buf).substr(second.size()));
  CHECK(c.path == "/c");
  CHECK(c.minor_version == 0);
  CHECK_FALSE(c.keep_alive);
}

TEST_CASE("after done or error the parser stays there; the buffer may move") {
  httpd::request_parser p;
  std::string in = req("GET /x HTTP/1.1");
  REQUIRE(p.parse(in) == parse_result::done);
  std::string moved = in + "trailing bytes";
  CHECK(p.parse(moved) == parse_result::done);
  CHECK(p.get().path.data() == moved.data() + 4);
  CHECK(p.get().fields[0].value.data() >= moved.data());

  httpd::request_parser bad;
  CHECK(bad.parse("GET  / HTTP/1.1\r\n") == parse_result::error);
  CHECK(bad.parse("GET  / HTTP/1.1\r\nHost: a\r\n\r\n") == parse_result::error);
  CHECK(bad.error_status() == 400);
  CHECK(bad.error_reason() == "more than one space in the request line");
  bad.reset();
  CHECK(bad.parse(in) == parse_result::done);

  httpd::request_parser shrunk;
  CHECK(shrunk.parse("GET /abc") == parse_result::incomplete);
  CHECK_THROWS_AS(shrunk.parse("GET"), std::logic_error);
}

TEST_CASE("every error has a reason") {
  httpd::request_parser p;
  CHECK(p.parse(req("GET / HTTP/1.1", "Host: a\r\nContent-Length: x\r\n")) == parse_result::error);
  CHECK(p.error_status() == 400);
  CHECK(p.error_reason() == "Content-Length is not a number");
  p.reset();
  CHECK(p.parse(req("BREW / HTTP/1.1")) == parse_result::error);
  CHECK(p.error_status() == 501);
  CHECK(p.error_reason() == "unknown method");
  p.reset();
  CHECK(p.parse(req("GET / HTTP/2.0")) == parse_result::error);
  CHECK(p.error_status() == 505);
  CHECK(p.error_reason().find("HTTP/1") != std::string_view::npos);
}

// ---------------------------------------------------------------------------
// chunked_decoder

namespace {

struct decoded {
  httpd::chunk_progress::status result;
  std::string data;
  std::size_t consumed = 0;
  int status = 0;
  bool operator==(const decoded& o) const {
    return result == o.result && data == o.data && consumed == o.consumed && status == o.status;
  }
};

std::ostream& operator<<(std::ostream& os, const decoded& d) {
  return os << "{" << d.result << " \"" << d.data << "\" " << d.consumed << " " << d.status << "}";
}

// Feeds `in` in pieces cut at `cuts`, stopping like a server at done or error.
decoded decode(const std::string& in, std::vector<std::size_t> cuts = {}, std::uint64_t max_body = 1 << 20,
               httpd::limits lim = {}) {
  httpd::chunked_decoder d(max_body, lim);
  decoded out{httpd::chunk_progress::incomplete, {}, 0, 0};
  cuts.push_back(in.size());
  std::size_t at = 0;
  for (std::size_t cut : cuts) {
    std::string piece = in.substr(at, cut - at);  // its own allocation: views must not outlive it
    httpd::chunk_progress r = d.feed(piece, out.data);
    out.consumed += r.consumed;
    out.result = r.result;
    if (r.result != httpd::chunk_progress::incomplete) break;
    CHECK(r.consumed == piece.size());
    at = cut;
  }
  out.status = d.error_status();
  if (out.result == httpd::chunk_progress::error) CHECK(!d.error_reason().empty());
  if (out.result == httpd::chunk_progress::done) CHECK(d.body_size() == out.data.size());
  return out;
}

int chunk_status(const std::string& in, std::uint64_t max_body = 1 << 20, httpd::limits lim = {}) {
  decoded d = decode(in, {}, max_body, lim);
  return d.result == httpd::chunk_progress::done    ? 200
         : d.result == httpd::chunk_progress::error ? d.status
                                                    : 0;
}

const std::vector<std::string> chunked_bodies = {
    "0\r\n\r\n",
    "5\r\nhello\r\n0\r\n\r\n",
    "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    "a\r\n0123456789\r\nA\r\nabcdefghij\r\n000\r\n\r\n",
    "0005;name=value;flag\r\nhello\r\n0;last\r\n\r\n",
    "3 ; q=\"a b\"\r\nabc\r\n0\r\n\r\n",
    "2\r\n\r\n\r\n0\r\nX-Checksum: abc\r\nX-Empty:\r\n\r\n",
    "1\r\n\0\r\n0\r\n\r\nGET / HTTP/1.1\r\n"s,
};

}  // namespace

TEST_CASE("chunked bodies decode, and stop exactly at their end") {
  CHECK(decode("5\r\nhello\r\n0\r\n\r\n") == decoded{httpd::chunk_progress::done, "hello", 15, 0});
  CHECK(decode("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n").data == "hello world");
  CHECK(decode("a\r\n0123456789\r\nA\r\nabcdefghij\r\n000\r\n\r\n").data == "0123456789abcdefghij");
  CHECK(decode("0005;name=value;flag\r\nhello\r\n0;last\r\n\r\n").data == "hello");
  CHECK(decode("0\r\nX-Checksum: abc\r\nX-Empty:\r\n\r\n").result == httpd::chunk_progress::done);
  const std::string next = "GET / HTTP/1.1\r\n";
  decoded d = decode("3\r\nabc\r\n0\r\n\r\n" + next);
  CHECK(d.result == httpd::chunk_progress::done);
  CHECK(d.consumed == 13);
  CHECK(decode("5\r\nhel").result == httpd::chunk_progress::incomplete);
  CHECK(decode("0\r\nX: y\r\n").result == httpd::chunk_progress::incomplete);
}

TEST_CASE("chunked: every split point gives the same data and the same end") {
  for (const std::string& in : chunked_bodies) {
    CAPTURE(in);
    const decoded whole = decode(in);
    REQUIRE(whole.result == httpd::chunk_progress::done);
    for (std::size_t k = 0; k <= in.size(); ++k) CHECK(decode(in, {k}) == whole);
    std::vector<std::size_t> every;
    for (std::size_t k = 1; k < in.size(); ++k) every.push_back(k);
    CHECK(decode(in, every) == whole);
  }
}

TEST_CASE("chunked: the sink gets views into the input, no copy") {
  httpd::chunked_decoder d;
  const std::string in = "5\r\nhello\r\n0\r\n\r\n";
  std::vector<std::string_view> pieces;
  auto r = d.feed(in, [&](std::string_view s) { pieces.push_back(s); });
  CHECK(r.result == httpd::chunk_progress::done);
  REQUIRE(pieces.size() == 1);
  CHECK(pieces[0].data() == in.data() + 3);
  CHECK(pieces[0] == "hello");
  // Done stays done; reset starts over.
  CHECK(d.feed("5\r\n", [](std::string_view) {}).consumed == 0);
  d.reset();
  std::string out;
  CHECK(d.feed(in, out).result == httpd::chunk_progress::done);
  CHECK(out == "hello");
}

TEST_CASE("chunked: malformed sizes, lines and data are 400") {
  CHECK(chunk_status("g\r\n") == 400);
  CHECK(chunk_status("\r\n") == 400);
  CHECK(chunk_status(" 5\r\nhello\r\n0\r\n\r\n") == 400);
  CHECK(chunk_status("-5\r\n") == 400);
  CHECK(chunk_status("0x5\r\nhello\r\n0\r\n\r\n") == 400);
  CHECK(chunk_status("5\nhello\r\n0\r\n\r\n") == 400);  // bare LF
  CHECK(chunk_status("5\r\rhello\r\n0\r\n\r\n") == 400);
  CHECK(chunk_status("5\r\nhelloX\r\n0\r\n\r\n") == 400);  // data longer than declared
  CHECK(chunk_status("5\r\nhello\n0\r\n\r\n") == 400);
  CHECK(chunk_status("5\r\nhello\r0\r\n\r\n") == 400);
  CHECK(chunk_status("5\r\nhell\r\n0\r\n\r\n") == 400);  // shorter: CRLF eaten as data, then no CRLF
  CHECK(chunk_status("5;a\x01\r\nhello\r\n0\r\n\r\n") == 400);
  CHECK(chunk_status("5;a\nb\r\nhello\r\n0\r\n\r\n") == 400);
  CHECK(chunk_status("0\r\n\r\r") == 400);
  CHECK(chunk_status("0\r\n\n") == 400);
  CHECK(chunk_status("5\r\nhello\r\n0\r\n") == 0);
}

TEST_CASE("chunked: sizes overflow-checked, the body bounded by max_body") {
  // 2^64 does not fit; 2^64-1 fits but is larger than any max_body.
  CHECK(chunk_status("10000000000000000\r\n") == 400);
  CHECK(chunk_status("FFFFFFFFFFFFFFFF\r\n") == 413);
  CHECK(chunk_status("ffffffffffffffff0\r\n") == 400);
  CHECK(chunk_status("00000000000000000000005\r\nhello\r\n0\r\n\r\n") == 200);  // leading zeros are fine
  CHECK(chunk_status("5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n", 10) == 200);
  CHECK(chunk_status("5\r\nhello\r\n6\r\nworld!\r\n0\r\n\r\n", 10) == 413);
  // 413 is known at the size line, before the data arrives.
  CHECK(chunk_status("5\r\nhello\r\nB\r\n", 10) == 413);
  httpd::limits lim;
  lim.max_field_line = 16;
  CHECK(chunk_status("5;" + std::string(14, 'x') + "\r\nhello\r\n0\r\n\r\n", 100, lim) ==
        200);  // a line of 16
  CHECK(chunk_status("5;" + std::string(15, 'x') + "\r\nhello\r\n0\r\n\r\n", 100, lim) == 400);
  CHECK(chunk_status(std::string(16, '0') + "\r\n\r\n", 100, lim) == 200);
  CHECK(chunk_status(std::string(17, '0') + "\r\n", 100, lim) == 400);
}

TEST_CASE("chunked: trailers are checked and dropped") {
  CHECK(chunk_status("0\r\nA: 1\r\nB: 2\r\n\r\n") == 200);
  CHECK(chunk_status("0\r\nA: 1\r\n b\r\n\r\n") == 400);  // obs-fold
  CHECK(chunk_status("0\r\n A: 1\r\n\r\n") == 400);
  CHECK(chunk_status("0\r\nA : 1\r\n\r\n") == 400);
  CHECK(chunk_status("0\r\nA\r\n\r\n") == 400);  // no colon
  CHECK(chunk_status("0\r\n(A): 1\r\n\r\n") == 400);
  CHECK(chunk_status("0\r\nA: \0\r\n\r\n"s) == 400);
  CHECK(chunk_status("0\r\nA: 1\rx\r\n\r\n") == 400);  // bare CR
  CHECK(chunk_status("0\r\nA: 1\n\r\n") == 400);       // bare LF
  httpd::limits lim;
  lim.max_fields = 2;
  lim.max_field_line = 10;
  lim.max_header_bytes = 20;
  CHECK(chunk_status("0\r\nA: 1\r\nB: 2\r\n\r\n", 100, lim) == 200);
  CHECK(chunk_status("0\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n", 100, lim) == 431);
  CHECK(chunk_status("0\r\nA: 1234567\r\n\r\n", 100, lim) == 200);  // a line of 10
  CHECK(chunk_status("0\r\nA: 12345678\r\n\r\n", 100, lim) == 431);
  CHECK(chunk_status("0\r\nA: 1234\r\nB: 1234\r\n\r\n", 100, lim) == 200);  // a section of 20
  CHECK(chunk_status("0\r\nA: 12345\r\nB: 1234\r\n\r\n", 100, lim) == 431);
}

// ---------------------------------------------------------------------------
// helpers

TEST_CASE("percent_decode decodes once and refuses NUL and bad escapes") {
  std::string out = "left over";
  CHECK(httpd::percent_decode("/a%20b/%C3%a9", out));
  CHECK(out == "/a b/\xc3\xa9");
  CHECK(httpd::percent_decode("", out));
  CHECK(out.empty());
  CHECK(httpd::percent_decode("/plain+path", out));
  CHECK(out == "/plain+path");
  CHECK(httpd::percent_decode("%2F%2e%2E", out));
  CHECK(out == "/..");
  CHECK(httpd::percent_decode("%252e", out));
  CHECK(out == "%2e");  // once, not twice
  CHECK(httpd::percent_decode("%ff%01", out));
  CHECK(out == "\xff\x01");
  CHECK_FALSE(httpd::percent_decode("/a%00b", out));
  CHECK_FALSE(httpd::percent_decode("%", out));
  CHECK_FALSE(httpd::percent_decode("/a%2", out));
  CHECK_FALSE(httpd::percent_decode("/a%zz", out));
  CHECK_FALSE(httpd::percent_decode("/a%g1", out));
  CHECK_FALSE(httpd::percent_decode("/a%%41", out));
  CHECK_FALSE(httpd::percent_decode("/a% 1", out));
}

TEST_CASE("split_target, find_header_end, iequals, is_token") {
  CHECK(httpd::split_target("/a?b?c").path == "/a");
  CHECK(httpd::split_target("/a?b?c").query == "b?c");
  CHECK(httpd::split_target("/a").query.empty());
  const std::string head = "GET / HTTP/1.1\r\nHost: a\r\n\r\nbody";
  CHECK(httpd::find_header_end(head) == head.size() - 4);
  CHECK(httpd::find_header_end(head, 20) == head.size() - 4);
  CHECK(httpd::find_header_end(head.substr(0, 26)) == std::string_view::npos);
  CHECK(httpd::find_header_end("\n\r\n") == std::string_view::npos);
  CHECK(httpd::find_header_end("\r\n\r\n") == 4);
  CHECK(httpd::find_header_end("") == std::string_view::npos);
  CHECK(httpd::iequals("Content-Length", "content-LENGTH"));
  CHECK_FALSE(httpd::iequals("Host", "Hosts"));
  CHECK_FALSE(httpd::iequals("[", "{"));  // 0x5b and 0x7b differ by 0x20 but are not letters
  CHECK(httpd::is_token("X-Foo_1!"));
  CHECK_FALSE(httpd::is_token(""));
  CHECK_FALSE(httpd::is_token("a b"));
  CHECK_FALSE(httpd::is_token("a:b"));
}

TEST_CASE("find_bad_value_char agrees with the byte table, wherever the byte sits") {
  // Eight bytes at a time inside, so every byte value at every offset of a
  // few words, plus a tab (allowed) before a bad byte in the same word.
  for (std::size_t len : {0u, 1u, 7u, 8u, 9u, 20u}) {
    for (std::size_t at = 0; at < len; ++at) {
      for (unsigned c = 0; c < 256; ++c) {
        std::string s(len, 'a');
        s[at] = static_cast<char>(c);
        const bool bad = !(c == '\t' || (c >= 0x20 && c != 0x7f));
        const std::size_t got = httpd::detail::find_bad_value_char(s.data(), s.size());
        if (got != (bad ? at : len)) {
          CAPTURE(len);
          CAPTURE(at);
          CAPTURE(c);
          CHECK(got == (bad ? at : len));
        }
      }
    }
  }
  const std::string tab_then_bad =
      "ab\tc\x01"
      "defghijk";
  CHECK(httpd::detail::find_bad_value_char(tab_then_bad.data(), tab_then_bad.size()) == 4);
  const std::string tab_then_del = "abcdefgh\t\t\t\x7f";
  CHECK(httpd::detail::find_bad_value_char(tab_then_del.data(), tab_then_del.size()) == 11);
  const std::string high = "\x80\x9f\xa0\xff\x80\x80\x80\x80\xff";
  CHECK(httpd::detail::find_bad_value_char(high.data(), high.size()) == high.size());
}
