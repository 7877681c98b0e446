// Benchmarks of prefork-httpd's request parser and chunked decoder
// (examples/httpd/http_parser.hpp): a minimal GET, a browser-like GET with
// about 1 KiB of headers and cookies, a POST with a chunked body, and a head
// fed one byte at a time. Figures only; never a test of speed.
//   bench_http_parser                      Catch2 BENCHMARK statistics
//   bench_http_parser '[report]'           requests/s and bytes/s per CPU second, as a table
#include "catch.hpp"

#include "httpd/http_parser.hpp"

#include <time.h>

#include <cstdio>
#include <stdexcept>
#include <string>

namespace {

const std::string minimal_get = "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";

const std::string browser_get =
    "GET /assets/js/application-5f1c0a3e.js?v=20240101 HTTP/1.1\r\n"
    "Host: www.example.com\r\n"
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36\r\n"
    "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
    "image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7\r\n"
    "Accept-Encoding: gzip, deflate, br\r\n"
    "Accept-Language: en-GB,en-US;q=0.9,en;q=0.8,fr;q=0.7\r\n"
    "Cache-Control: max-age=0\r\n"
    "Connection: keep-alive\r\n"
    "Cookie: _ga=GA1.2.1234567890.1700000000; _gid=GA1.2.987654321.1700000000; "
    "session_id=4f8a1b2c3d4e5f60718293a4b5c6d7e8f9012345; csrftoken=Zk3sQ9xV2mT7pL0aB4nR8wE1yU6iO5cH; "
    "preferences=%7B%22theme%22%3A%22dark%22%2C%22lang%22%3A%22en%22%2C%22tz%22%3A%22Europe%2FLondon%22%7D; "
    "_fbp=fb.1.1700000000000.1234567890; ab_test_bucket=variant-b\r\n"
    "If-Modified-Since: Mon, 01 Jan 2024 00:00:00 GMT\r\n"
    "If-None-Match: W/\"5f1c0a3e-1a2b3c\"\r\n"
    "Referer: https://www.example.com/products/category/widgets?page=2&sort=price\r\n"
    "Sec-Ch-Ua: \"Not_A Brand\";v=\"8\", \"Chromium\";v=\"120\", \"Google Chrome\";v=\"120\"\r\n"
    "Sec-Ch-Ua-Mobile: ?0\r\n"
    "Sec-Ch-Ua-Platform: \"Linux\"\r\n"
    "Sec-Fetch-Dest: script\r\n"
    "Sec-Fetch-Mode: no-cors\r\n"
    "Sec-Fetch-Site: same-origin\r\n"
    "Upgrade-Insecure-Requests: 1\r\n"
    "\r\n";

std::string make_chunked_post() {
  std::string s =
      "POST /api/upload HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/octet-stream\r\n"
      "Transfer-Encoding: chunked\r\n\r\n";
  const std::string chunk(1000, 'x');
  for (int i = 0; i < 4; ++i) s += "3e8\r\n" + chunk + "\r\n";
  s += "0\r\n\r\n";
  return s;
}
const std::string chunked_post = make_chunked_post();

// One request as a server handles it: parse the head, decode any chunked body.
struct handler {
  httpd::request_parser parser;
  httpd::chunked_decoder decoder;
  std::string body;

  std::size_t whole(const std::string& in) {
    parser.reset();
    if (parser.parse(in) != httpd::parse_result::done) throw std::runtime_error("bench input does not parse");
    std::size_t n = parser.header_length() + parser.get().fields.size();
    if (parser.get().chunked) {
      decoder.reset();
      body.clear();
      auto r = decoder.feed(std::string_view(in).substr(parser.header_length()), body);
      if (r.result != httpd::chunk_progress::done) throw std::runtime_error("bench body does not decode");
      n += body.size();
    }
    return n;
  }

  // The worst split: a client sending one byte per packet.
  std::size_t bytewise(const std::string& in) {
    parser.reset();
    httpd::parse_result r = httpd::parse_result::incomplete;
    for (std::size_t n = 1; r == httpd::parse_result::incomplete && n <= in.size(); ++n)
      r = parser.parse(std::string_view(in.data(), n));
    if (r != httpd::parse_result::done) throw std::runtime_error("bench input does not parse");
    return parser.header_length();
  }
};

// CPU time of this thread, not wall time: on a shared machine (CI, a busy
// laptop) wall time measures the neighbours.
double cpu_seconds() {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

}  // namespace

TEST_CASE("request parser", "[bench]") {
  handler h;
  BENCHMARK("minimal GET (" + std::to_string(minimal_get.size()) + " B)") { return h.whole(minimal_get); };
  BENCHMARK("browser GET (" + std::to_string(browser_get.size()) + " B)") { return h.whole(browser_get); };
  BENCHMARK("chunked POST (" + std::to_string(chunked_post.size()) + " B)") { return h.whole(chunked_post); };
  BENCHMARK("browser GET, one byte at a time") { return h.bytewise(browser_get); };
  BENCHMARK("baseline: find_header_end only") { return httpd::find_header_end(browser_get); };
}

TEST_CASE("request parser throughput", "[.report][report]") {
  handler h;
  struct row {
    const char* name;
    const std::string* input;
    bool bytewise;
  };
  const row rows[] = {
      {"minimal GET", &minimal_get, false},
      {"browser GET", &browser_get, false},
      {"chunked POST", &chunked_post, false},
      {"minimal GET, byte at a time", &minimal_get, true},
      {"browser GET, byte at a time", &browser_get, true},
  };
  std::printf("\n%-30s %8s %14s %12s %10s\n", "case", "bytes", "requests/s", "MB/s", "ns/req");
  std::size_t sink = 0;
  for (const row& r : rows) {
    // Enough iterations for about 0.3 s per row, after a warm-up.
    std::size_t iterations = 1000;
    double seconds = 0;
    while (true) {
      const double start = cpu_seconds();
      for (std::size_t i = 0; i < iterations; ++i) sink += r.bytewise ? h.bytewise(*r.input) : h.whole(*r.input);
      seconds = cpu_seconds() - start;
      if (seconds > 0.3) break;
      iterations *= seconds < 0.03 ? 10 : 2;
    }
    const double per_second = static_cast<double>(iterations) / seconds;
    std::printf("%-30s %8zu %14.0f %12.1f %10.1f\n", r.name, r.input->size(), per_second,
                per_second * static_cast<double>(r.input->size()) / 1e6, 1e9 / per_second);
  }
  std::printf("(checksum %zu)\n", sink);
  CHECK(sink > 0);
}
