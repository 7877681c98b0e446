// examples/httpd: the exact grammar at three edges where the parser used to be
// lenient (issue 24): the chunk-size line and its extensions (RFC 9112 7.1.1),
// the shape of Host and of an absolute or authority-form target's authority
// (RFC 9112 3.2, RFC 3986 3.2), and transfer-codings with parameters.
#include <doctest/doctest.h>

#include "httpd/http_parser.hpp"

#include <string>

using namespace std::string_literals;

namespace {

// The status a whole chunked body gives: 200 done, 0 incomplete, else the
// error status. Also fed byte by byte, which must agree.
int chunk_status(const std::string& in) {
  httpd::chunked_decoder whole, bytewise;
  std::string out;
  const auto verdict = [](const httpd::chunked_decoder& d, httpd::chunk_progress::status r) {
    return r == httpd::chunk_progress::done ? 200 : r == httpd::chunk_progress::error ? d.error_status() : 0;
  };
  const int a = verdict(whole, whole.feed(in, out).result);
  httpd::chunk_progress::status r = httpd::chunk_progress::incomplete;
  for (std::size_t i = 0; i < in.size() && r == httpd::chunk_progress::incomplete; ++i)
    r = bytewise.feed(in.substr(i, 1), out).result;
  CHECK(verdict(bytewise, r) == a);
  return a;
}

// One chunk of "hello" whose size line carries `ext`, then the last chunk.
int ext_status(const std::string& ext) { return chunk_status("5" + ext + "\r\nhello\r\n0\r\n\r\n"); }

int head_status(const std::string& in) {
  httpd::request_parser p;
  const httpd::parse_result r = p.parse(in);
  return r == httpd::parse_result::done ? 200 : r == httpd::parse_result::error ? p.error_status() : 0;
}

int host_status(const std::string& host) {
  return head_status("GET / HTTP/1.1\r\nHost: " + host + "\r\n\r\n");
}

int target_status(const std::string& target) {
  return head_status("GET " + target + " HTTP/1.1\r\nHost: a\r\n\r\n");
}

int te_status(const std::string& value) {
  return head_status("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: " + value + "\r\n\r\n");
}

}  // namespace

TEST_CASE("chunk-size line: after the size, only BWS then ';' extensions") {
  // The examples, all accepted before.
  CHECK(chunk_status("0 \r\n\r\n") == 400);
  CHECK(ext_status(" xyz") == 400);
  CHECK(chunk_status("2;\r\nab\r\n0\r\n\r\n") == 400);
  CHECK(ext_status(";=v") == 400);
  CHECK(ext_status(";a=\"unbalanced") == 400);
  CHECK(ext_status(";a=\"x\\") == 400);
  CHECK(ext_status(";a\x80") == 400);
  CHECK(ext_status(";\x80") == 400);
  CHECK(ext_status(";a=\x80") == 400);
  CHECK(ext_status(";a=b\x80") == 400);
  // More that the grammar forbids.
  CHECK(ext_status(" ") == 400);
  CHECK(ext_status("\t") == 400);
  CHECK(ext_status(" ;") == 400);
  CHECK(ext_status(";a;") == 400);
  CHECK(ext_status(";a ") == 400);    // BWS must be followed by '=' or ';'
  CHECK(ext_status(";a=b ") == 400);  // BWS after a value must be followed by ';'
  CHECK(ext_status(";a=") == 400);
  CHECK(ext_status(";a= ") == 400);
  CHECK(ext_status(";a=b=c") == 400);
  CHECK(ext_status(";a=\"b\"c") == 400);
  CHECK(ext_status(";a=\"b\"\"c\"") == 400);
  CHECK(ext_status(";a b") == 400);
  CHECK(ext_status(";(a)") == 400);
  CHECK(ext_status(";a=(b)") == 400);
  CHECK(ext_status(";a=b,c") == 400);
  CHECK(ext_status(";a=\"\x01\"") == 400);
  CHECK(ext_status(";a=\"\x7f\"") == 400);
  CHECK(ext_status(";a=\"\\\x01\"") == 400);
  CHECK(ext_status(";a=\"b\rc\"") == 400);
  CHECK(ext_status(";a\r") == 400);               // CR must be followed by LF, as ever
  CHECK(chunk_status("0;a=\"b\r\n\r\n") == 400);  // CR inside the quotes does not end the line
  CHECK(chunk_status("0 ;\r\n\r\n") == 400);

  // What it allows: names, token or quoted values, BWS around ';' and '='.
  CHECK(ext_status(";a") == 200);
  CHECK(ext_status(";a=b") == 200);
  CHECK(ext_status(";a=b;c;d=e") == 200);
  CHECK(ext_status(" ;a") == 200);
  CHECK(ext_status("\t; \ta \t= \tb \t; c") == 200);
  CHECK(ext_status(";a=\"\"") == 200);
  CHECK(ext_status(";a=\"b c;d=e\\\"f\\\\\"") == 200);
  CHECK(ext_status(";a=\"b\" ;c") == 200);
  CHECK(ext_status(";a=\"\x80\xff\"") == 200);  // obs-text in a quoted-string is grammatical
  CHECK(ext_status(";a=\"\\\x80\"") == 200);
  CHECK(ext_status(";!#$%&'*+-.^_`|~09AZaz=!#$%&'*+-.^_`|~") == 200);
  CHECK(chunk_status("0;last\r\n\r\n") == 200);
  CHECK(chunk_status("000 ; end = \"yes\"\r\n\r\n") == 200);
}

TEST_CASE("Host: a reg-name, IPv4 or bracketed literal, then an optional port of digits") {
  // The examples, all accepted before.
  CHECK(host_status("a:b:c") == 400);
  CHECK(host_status("foo:bar") == 400);
  CHECK(host_status("]x[") == 400);
  CHECK(host_status("[::1:") == 400);
  for (const char* bad : {":",
                          ":80",
                          "a::80",
                          "a:80:",
                          "a:-1",
                          "a:+1",
                          "a: 80",
                          "[",
                          "[]",
                          "[]:80",
                          "[::1",
                          "::1",
                          "[::1]x",
                          "[::1]:x",
                          "[::1]]",
                          "[[::1]]",
                          "x[::1]",
                          "a[b]",
                          "[example.com]",
                          "[1:2:3:4:5:6:7:8:9]",
                          "[1:2:3:4:5:6:7]",
                          "[1::2::3]",
                          "[:1::2]",
                          "[1::2:]",
                          "[12345::]",
                          "[::g]",
                          "[::1.2.3]",
                          "[::1.2.3.256]",
                          "[::1.2.3.04]",
                          "[1.2.3.4]",
                          "[::1.2.3.4:5]",
                          "[::1%25eth0]",
                          "[v.x]",
                          "[v1.]",
                          "[vx.a]",
                          "[v1x]",
                          "[v1.a/b]",
                          "a%",
                          "a%4",
                          "a%zz",
                          "h%2",
                          "a@b",
                          "u:p@h",
                          "a/b",
                          "a?b",
                          "a#b",
                          "a b",
                          "\"a\""}) {
    CAPTURE(bad);
    CHECK(host_status(bad) == 400);
  }
  for (const char* good : {"a",
                           "a:",
                           "a:80",
                           "a:0080",
                           "example.com",
                           "EXAMPLE.com:8080",
                           "127.0.0.1",
                           "127.0.0.1:8080",
                           "999.1.1.1",  // a reg-name, as RFC 3986 reads it
                           "[::]",
                           "[::1]",
                           "[::1]:80",
                           "[::1]:",
                           "[1:2:3:4:5:6:7:8]",
                           "[1::8]",
                           "[1::]",
                           "[1:2:3:4:5:6:7::]",
                           "[::2:3:4:5:6:7:8]",
                           "[::ffff:192.0.2.1]",
                           "[1:2:3:4:5:6:1.2.3.4]",
                           "[FEDC:BA98::3210]",
                           "[v1.a]",
                           "[V7F.a:b!$&'()*+,;=-._~]:1",
                           "a%41b",
                           "sub-delims!$&'()*+,;=",
                           "under_score~",
                           ""}) {
    CAPTURE(good);
    CHECK(host_status(good) == 200);
  }
}

TEST_CASE("the authority of an absolute-form or authority-form target has the same shape") {
  CHECK(target_status("http://a:b:c/") == 400);
  CHECK(target_status("http://foo:bar/") == 400);
  CHECK(target_status("http://]x[/") == 400);
  CHECK(target_status("http://[::1:/") == 400);
  CHECK(target_status("http://:80/") == 400);
  CHECK(target_status("http://a%zz/") == 400);
  CHECK(target_status("http://[::1]:80/x") == 200);
  CHECK(target_status("http://a:/x") == 200);
  CHECK(target_status("http://[v1.x]?q") == 200);
  const auto connect = [](const std::string& t) {
    return head_status("CONNECT " + t + " HTTP/1.1\r\nHost: a\r\n\r\n");
  };
  CHECK(connect("a:b:443") == 400);
  CHECK(connect("a:") == 400);  // authority-form needs a port
  CHECK(connect(":443") == 400);
  CHECK(connect("[::1:443") == 400);
  CHECK(connect("]x[:443") == 400);
  CHECK(connect("[::1]") == 400);
  CHECK(connect("[::1]:443") == 200);
  CHECK(connect("127.0.0.1:443") == 200);
}

TEST_CASE("Transfer-Encoding: a coding with parameters is never chunked") {
  CHECK(te_status("chunked;q=1") == 400);  // the last coding is not chunked
  CHECK(te_status("chunked ; q=1") == 400);
  CHECK(te_status("CHUNKED;a=\"b\"") == 400);
  CHECK(te_status("chunked;q=1, chunked") == 501);  // an unknown coding, then chunked
  CHECK(te_status("gzip;level=9, chunked") == 501);
  CHECK(te_status("gzip ; level = \"9\" ; x=y, chunked") == 501);
  // Parameters that break the grammar are 400 wherever they are.
  for (const char* bad : {"chunked;", "chunked;=1", "chunked;q", "chunked;q=", "chunked;q=\"1",
                          "chunked;q=1;", "gzip;q=1 2, chunked", "gzip;q=(1), chunked", "gzip;;q=1, chunked",
                          "gzip;q=\"a\"b, chunked", "gzip;q=\"a,b\", chunked"}) {
    CAPTURE(bad);
    CHECK(te_status(bad) == 400);
  }
  CHECK(te_status("chunked") == 200);
  CHECK(te_status("gzip, chunked") == 501);
}
