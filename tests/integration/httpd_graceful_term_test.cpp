// prefork-httpd --graceful-term: TERM (what Kubernetes and docker stop send)
// lets the request in hand finish, as QUIT does; without the option TERM
// is the quick stop that cuts it.
#include <string>

#include "catch.hpp"
#include "httpd_support.hpp"
#include "leak_check.hpp"

using namespace httpd_test;

namespace {

// Starts GET /sleep?ms=N, sends TERM once the worker has it in hand, and
// returns what the client received.
std::string term_during_request(server& s) {
  prefork::fd c = connect_to(s.port());
  send_text(c.get(), "GET /sleep?ms=700 HTTP/1.0\r\n\r\n");
  // The worker holds it once the scoreboard says so (asked on a second connection).
  auto deadline = steady::now() + patience;
  while (get(s.port(), "/_status?format=json").body.find("/sleep?ms=700") == std::string::npos) {
    REQUIRE(steady::now() < deadline);
  }
  s.signal(SIGTERM);
  return read_until_close(c.get());
}

}  // namespace

TEST_CASE("--graceful-term: TERM finishes the request in hand; without it TERM cuts it") {
  prefork::test::leak_check leaks;
  {
    server s({"--graceful-term", "-m", "blocking"});
    std::string r = term_during_request(s);
    CHECK(r.find("HTTP/1.0 200") == 0);
    CHECK(r.find("slept 700 ms") != std::string::npos);
    prefork::exit_status st = s.stop(0);
    INFO(s.log());
    CHECK(st.describe() == "exited 0");
    CHECK(s.log().find("received SIGTERM: graceful stop") != std::string::npos);
  }
  {
    server s({"-m", "blocking"});
    CHECK(term_during_request(s) == "");
    prefork::exit_status st = s.stop(0);
    INFO(s.log());
    CHECK(st.describe() == "exited 0");
    CHECK(s.log().find("received SIGTERM: quick stop") != std::string::npos);
  }
  CHECK(leaks.problems() == "");
}
