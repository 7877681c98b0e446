// prefork-httpd end to end: the grammar edges of issue 24 (chunk extensions,
// the shape of Host, transfer-codings with parameters) are refused by every
// worker mode with the status the parser gives, and the connection closed.
#include "catch.hpp"
#include "httpd_modes.hpp"
#include "httpd_support.hpp"
#include "leak_check.hpp"

using namespace httpd_test;

TEST_CASE("httpd: chunk extensions, Host and Transfer-Encoding held to their grammar", "[httpd][grammar]") {
  prefork::test::leak_check leaks;
  {
    const std::string mode = GENERATE(as<std::string>{}, "blocking", "evented", "uring");
    INFO("mode " << mode);
    if (!mode_runs_here(mode)) return;
    server s({"-m", mode});
    check_mode(s, mode);
    struct bad {
      const char* what;
      std::string request;
      int status;
    };
    const std::string post = "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n";
    const bad cases[] = {
        {"whitespace after the last chunk's size", post + "0 \r\n\r\n", 400},
        {"junk after whitespace after a size", post + "5 xyz\r\nhello\r\n0\r\n\r\n", 400},
        {"an empty extension", post + "2;\r\nab\r\n0\r\n\r\n", 400},
        {"an extension without a name", post + "5;=v\r\nhello\r\n0\r\n\r\n", 400},
        {"an unbalanced quote", post + "5;a=\"b\r\nhello\r\n0\r\n\r\n", 400},
        {"obs-text in an extension name", post + "5;a\x80\r\nhello\r\n0\r\n\r\n", 400},
        {"Host a:b:c", "GET /hello HTTP/1.1\r\nHost: a:b:c\r\n\r\n", 400},
        {"Host foo:bar", "GET /hello HTTP/1.1\r\nHost: foo:bar\r\n\r\n", 400},
        {"Host ]x[", "GET /hello HTTP/1.1\r\nHost: ]x[\r\n\r\n", 400},
        {"Host [::1:", "GET /hello HTTP/1.1\r\nHost: [::1:\r\n\r\n", 400},
        {"an absolute target's authority", "GET http://a:b:c/hello HTTP/1.1\r\nHost: t\r\n\r\n", 400},
        {"chunked with a parameter",
         "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked;q=1\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
         400},
        {"a coding with a parameter before chunked",
         "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip;q=1, chunked\r\n\r\n0\r\n\r\n", 501},
    };
    for (const bad& b : cases) {
      INFO(b.what);
      // Keep-alive asked for (HTTP/1.1, no Connection: close), yet the server
      // must answer and close: the stream cannot be framed any more.
      const response r = ask(s.port(), b.request);
      CHECK(r.status == b.status);
      CHECK(r.header("connection") == "close");
    }
    // The well-formed neighbours of those are served.
    const response echo = ask(s.port(),
                              "POST /echo HTTP/1.1\r\nHost: [::1]:8080\r\nConnection: close\r\n"
                              "Transfer-Encoding: chunked\r\n\r\n"
                              "5 ; a = \"b\\\"c\" ;d\r\nhello\r\n0;e=f\r\n\r\n");
    CHECK(echo.status == 200);
    CHECK(echo.body == "hello");
    check_clean_stop(s);
  }
  CHECK(leaks.problems() == "");
}
