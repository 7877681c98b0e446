// bench/http/requests.hpp: the request bytes every parser benchmark uses
// (bench/http_parser.cpp and bench/http/parser_count.cpp), so the times and
// the instruction counts are of the same bytes, for prefork's parser and for
// picohttpparser alike.
#pragma once

#include <string>

namespace bench_requests {

// The smallest request a client sends in practice (35 bytes).
inline const std::string minimal_get = "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";

// A GET as Chrome sends it for a script: 19 fields, 1236 bytes, most of them
// in User-Agent, Accept and Cookie.
inline const std::string browser_get =
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
    "Priority: u=1\r\n"
    "Referer: https://www.example.com/products/category/widgets?page=2&sort=price\r\n"
    "Sec-Ch-Ua: \"Not_A Brand\";v=\"8\", \"Chromium\";v=\"120\", \"Google Chrome\";v=\"120\"\r\n"
    "Sec-Ch-Ua-Mobile: ?0\r\n"
    "Sec-Ch-Ua-Platform: \"Linux\"\r\n"
    "Sec-Fetch-Dest: script\r\n"
    "Sec-Fetch-Mode: no-cors\r\n"
    "Sec-Fetch-Site: same-origin\r\n"
    "Upgrade-Insecure-Requests: 1\r\n"
    "\r\n";

inline std::string make_chunked_post() {
  std::string s =
      "POST /api/upload HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/octet-stream\r\n"
      "Transfer-Encoding: chunked\r\n\r\n";
  const std::string chunk(1000, 'x');
  for (int i = 0; i < 4; ++i) s += "3e8\r\n" + chunk + "\r\n";
  s += "0\r\n\r\n";
  return s;
}
inline const std::string chunked_post = make_chunked_post();

}  // namespace bench_requests
