// prefork-httpd --proxy-protocol end to end, in both worker modes: the
// client address of a v1 or v2 header in the access log and in /_status, a
// LOCAL header (a balancer's health check) served as the connection itself,
// a header arriving a byte at a time, and refusals: a request without a
// header, a forged or oversized header, a header that never completes (the
// header timeout), each closed without an answer and said in the error log.
// A listener without the option is untouched.
#include <unistd.h>

#include <string>
#include <thread>

#include "catch.hpp"
#include "httpd_support.hpp"
#include "leak_check.hpp"
#include "temp_dir.hpp"

using namespace httpd_test;
using namespace std::string_literals;

namespace {

const std::string v1 = "PROXY TCP4 203.0.113.7 10.0.0.2 51234 8080\r\n";
// PROXY, TCP over IPv4: 198.51.100.9:4242 -> 10.0.0.2:8080
const std::string v2 =
    "\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c\xc6\x33\x64\x09\x0a\x00\x00\x02\x10\x92\x1f\x90"s;
// LOCAL: what HAProxy's health checks send with send-proxy-v2.
const std::string v2_local = "\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00"s;

std::string send_and_read(int port, const std::string& bytes) {
  prefork::fd c = connect_to(port);
  send_text(c.get(), bytes);
  return read_until_close(c.get());
}

// The port of the n-th "listening on" line (0-based).
int nth_port(const server& s, int n) {
  std::size_t at = 0;
  for (int i = 0;; ++i) {
    at = s.log().find("listening on http://127.0.0.1:", at);
    REQUIRE(at != std::string::npos);
    at += 30;
    if (i == n) return std::stoi(s.log().substr(at));
  }
}

}  // namespace

TEST_CASE("--proxy-protocol: the real client address, and no request without a valid header") {
  prefork::test::leak_check leaks;
  prefork::test::temp_dir dir;
  for (std::string mode : {"evented", "blocking"}) {
    DYNAMIC_SECTION(mode) {
      const std::string access = (dir / (mode + ".log")).string();
      server s({"-m", mode, "-l", "127.0.0.1:0", "--proxy-protocol", "-l", "127.0.0.1:0", "--header-timeout",
                "0.5", "--access-log", access});
      CHECK(s.log().find("(PROXY protocol)") != std::string::npos);
      const int proxied = nth_port(s, 0), plain = nth_port(s, 1);
      REQUIRE(proxied == s.port());

      // v1 and v2, with the request in the same write as the header.
      std::string r = send_and_read(proxied, v1 + "GET /_status?format=json HTTP/1.0\r\n\r\n");
      CHECK(r.find("HTTP/1.0 200") == 0);
      CHECK(r.find("\"client\":\"203.0.113.7:51234\"") != std::string::npos);
      r = send_and_read(proxied, v2 + "GET /hello HTTP/1.0\r\n\r\n");
      CHECK(r.find("Hello, World!") != std::string::npos);

      // LOCAL: the connection's own address.
      r = send_and_read(proxied, v2_local + "GET /_health HTTP/1.0\r\n\r\n");
      CHECK(r.find("HTTP/1.0 200") == 0);

      // The header a byte at a time, then the request in another write.
      {
        prefork::fd c = connect_to(proxied);
        for (char ch : v2) {
          send_text(c.get(), std::string(1, ch));
          std::this_thread::sleep_for(
              std::chrono::milliseconds(1));  // separate segments, not a wait for state
        }
        send_text(c.get(), "GET /_status?format=json HTTP/1.0\r\n\r\n");
        r = read_until_close(c.get());
        CHECK(r.find("\"client\":\"198.51.100.9:4242\"") != std::string::npos);
      }

      // Refused: closed with no answer at all, and said in the error log.
      std::size_t mark = s.log_mark();
      CHECK(send_and_read(proxied, "GET /hello HTTP/1.0\r\n\r\n") == "");
      CHECK(s.wait_log("refused connection from 127.0.0.1:", mark)
                .find("did not start with a PROXY protocol header") != std::string::npos);
      mark = s.log_mark();
      CHECK(send_and_read(
                proxied, "PROXY TCP4 203.0.113.7 10.0.0.2 51234 80800\r\nGET /hello HTTP/1.0\r\n\r\n") == "");
      CHECK(s.wait_log("refused connection", mark).find("port") != std::string::npos);
      mark = s.log_mark();
      CHECK(send_and_read(proxied, "\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff"s + std::string(2000, 'x')) == "");
      CHECK(s.wait_log("refused connection", mark).find("longer than this server accepts") !=
            std::string::npos);
      mark = s.log_mark();
      CHECK(send_and_read(proxied, "PROXY UNKNOWN " + std::string(200, 'f')) == "");
      CHECK(s.wait_log("refused connection", mark).find("longer than 107 bytes") != std::string::npos);
      // A header that never completes: closed at the header timeout.
      {
        mark = s.log_mark();
        prefork::fd c = connect_to(proxied);
        send_text(c.get(), v1.substr(0, 20));
        CHECK(closed_within(c.get(), std::chrono::seconds(10)));
        CHECK(s.wait_log("refused connection", mark).find("header timeout") != std::string::npos);
      }

      // The other listener takes plain HTTP and would serve a header as a
      // bad request, not as an address.
      r = send_and_read(plain, "GET /hello HTTP/1.0\r\n\r\n");
      CHECK(r.find("Hello, World!") != std::string::npos);
      r = send_and_read(plain, v1 + "GET /hello HTTP/1.0\r\n\r\n");
      CHECK(r.find("HTTP/1.1 400") == 0);

      check_clean_stop(s);
      std::string text = prefork::test::slurp(access);
      INFO(text);
      CHECK(text.find("203.0.113.7 - - [") != std::string::npos);
      CHECK(text.find("198.51.100.9 - - [") != std::string::npos);
      CHECK(text.find("127.0.0.1 - - [") != std::string::npos);  // LOCAL and the plain listener
      CHECK(text.find("80800") == std::string::npos);
    }
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("--proxy-protocol before any --listen covers every public listener, not the admin one") {
  prefork::test::leak_check leaks;
  {
    server s({"--proxy-protocol", "-l", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"});
    const int pub = nth_port(s, 0), admin = nth_port(s, 1);
    CHECK(send_and_read(pub, "GET /hello HTTP/1.0\r\n\r\n") == "");
    CHECK(send_and_read(pub, v1 + "GET /hello HTTP/1.0\r\n\r\n").find("Hello, World!") != std::string::npos);
    CHECK(send_and_read(admin, "GET /_health HTTP/1.0\r\n\r\n").find("HTTP/1.0 200") == 0);
    check_clean_stop(s);
  }
  CHECK(leaks.problems() == "");
}
