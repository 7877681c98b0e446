// bench/http/parser_count.cpp: a fixed amount of parsing, for callgrind.
//
//   parser_count CASE N      parse CASE's request N times, print a checksum
//
// Wall-clock figures of the parser move with the machine's other load; an
// instruction count does not. bench/http/callgrind.py runs this under
// callgrind twice with different N and divides the difference in
// instructions by the difference in N, which leaves start-up out and gives
// the instructions per request, the same on every run. bench/run compiles
// it with the release preset's flags; it is not part of the CMake build.
#include "httpd/http_parser.hpp"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

namespace {

// Three requests of the kinds a server sees: the smallest legal GET, a GET as
// a browser sends it (about 900 bytes of headers and cookies), and an upload
// with a chunked body.
const char* const small_get = "GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

std::string browser_get() {
  std::string s = "GET /static/app.3e9f1c.css?build=417 HTTP/1.1\r\nHost: shop.example.org\r\n";
  s += "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0\r\n";
  s += "Accept: text/css,*/*;q=0.1\r\nAccept-Language: de-DE,de;q=0.8,en-US;q=0.5,en;q=0.3\r\n";
  s += "Accept-Encoding: gzip, deflate, br\r\nConnection: keep-alive\r\n";
  s += "Referer: https://shop.example.org/basket?step=2&coupon=WINTER\r\n";
  s += "Cookie: sid=8c1d0e5b7a9f43a2b6c4d1e0f9a8b7c6; cart=17%2C42%2C311; consent=analytics%3D0%3Bads%3D0; "
       "theme=light; last_seen=1704067200; ab=checkout-v3; locale=de_DE; tz=Europe%2FBerlin\r\n";
  s += "Sec-Fetch-Dest: style\r\nSec-Fetch-Mode: no-cors\r\nSec-Fetch-Site: same-origin\r\n";
  s += "If-None-Match: \"a1b2c3d4e5\"\r\nIf-Modified-Since: Tue, 02 Jan 2024 10:00:00 GMT\r\n";
  s += "Cache-Control: max-age=0\r\nPragma: no-cache\r\nDNT: 1\r\nTE: trailers\r\n\r\n";
  return s;
}

std::string chunked_post() {
  std::string s = "POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n"
                  "Transfer-Encoding: chunked\r\n\r\n";
  for (int i = 0; i < 8; ++i) s += "200\r\n" + std::string(512, static_cast<char>('a' + i)) + "\r\n";
  return s + "0\r\n\r\n";
}

std::size_t parse_whole(httpd::request_parser& p, httpd::chunked_decoder& d, std::string& body,
                        std::string_view in) {
  p.reset();
  if (p.parse(in) != httpd::parse_result::done) std::abort();
  std::size_t n = p.header_length();
  if (p.get().chunked) {
    d.reset();
    body.clear();
    if (d.feed(in.substr(p.header_length()), body).result != httpd::chunk_progress::done) std::abort();
    n += body.size();
  }
  return n;
}

// The worst a client can do: one byte per read.
std::size_t parse_bytewise(httpd::request_parser& p, std::string_view in) {
  p.reset();
  auto r = httpd::parse_result::incomplete;
  for (std::size_t n = 1; r == httpd::parse_result::incomplete && n <= in.size(); ++n) r = p.parse(in.substr(0, n));
  if (r != httpd::parse_result::done) std::abort();
  return p.header_length();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: parser_count small|browser|chunked|browser-bytewise N\n");
    return 2;
  }
  const std::string which = argv[1];
  const long n = std::atol(argv[2]);
  const std::string browser = browser_get(), post = chunked_post();
  httpd::request_parser parser;
  httpd::chunked_decoder decoder;
  std::string body;
  std::size_t sum = 0;
  for (long i = 0; i < n; ++i) {
    if (which == "small") sum += parse_whole(parser, decoder, body, small_get);
    else if (which == "browser") sum += parse_whole(parser, decoder, body, browser);
    else if (which == "chunked") sum += parse_whole(parser, decoder, body, post);
    else if (which == "browser-bytewise") sum += parse_bytewise(parser, browser);
    else {
      std::fprintf(stderr, "unknown case %s\n", which.c_str());
      return 2;
    }
  }
  std::printf("%zu\n", sum);
  return 0;
}
