// prefork-httpd's /_status tells the truth about the worker answering it: the
// row with the answering worker's PID says "busy", however that worker took
// the connection. The case that once failed now and then: a fresh worker whose
// first connection is already queued when it starts takes it without waiting
// in poll, and the blocking worker's own accept4 left the row "idle".
#include <signal.h>
#include <sys/types.h>

#include <string>

#include "catch.hpp"
#include "httpd_modes.hpp"
#include "httpd_support.hpp"
#include "leak_check.hpp"

using namespace httpd_test;

namespace {

// The number after "key": in a flat JSON text, from `from` on.
pid_t number_after(const std::string& json, const std::string& key, std::size_t from = 0) {
  auto at = json.find("\"" + key + "\":", from);
  REQUIRE(at != std::string::npos);
  return static_cast<pid_t>(std::stol(json.substr(at + key.size() + 3)));
}

// The state of the row whose pid is `pid`, or "" when there is none.
std::string state_of(const std::string& json, pid_t pid) {
  auto row = json.find("{\"index\":");
  for (; row != std::string::npos; row = json.find("{\"index\":", row + 1)) {
    if (number_after(json, "pid", row) != pid) continue;
    auto at = json.find("\"state\":\"", row);
    REQUIRE(at != std::string::npos);
    at += 9;
    return json.substr(at, json.find('"', at) - at);
  }
  return "";
}

}  // namespace

TEST_CASE("httpd: /_status shows the worker answering it as busy", "[httpd][status]") {
  prefork::test::leak_check leaks;
  {
    std::string mode = GENERATE(as<std::string>{}, "blocking", "evented", "uring");
    INFO("mode " << mode);
    if (!mode_runs_here(mode)) return;
    server s({"-m", mode, "-w", "1"});
    check_mode(s, mode);

    // A worker that waited in poll for the connection.
    response first = get(s.port(), "/_status?format=json");
    REQUIRE(first.status == 200);
    pid_t old_worker = number_after(first.body, "self_pid");
    INFO(first.body);
    CHECK(state_of(first.body, old_worker) == "busy");

    // A worker that finds the connection queued before it first looks: the
    // only worker is stopped while the request goes into the listen queue,
    // then killed; its replacement starts with that connection waiting.
    REQUIRE(::kill(old_worker, SIGSTOP) == 0);
    prefork::fd c = connect_to(s.port());
    send_text(c.get(), "GET /_status?format=json HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    REQUIRE(::kill(old_worker, SIGKILL) == 0);
    auto r = parse_response(read_until_close(c.get()));
    REQUIRE(r);
    CHECK(r->status == 200);
    pid_t new_worker = number_after(r->body, "self_pid");
    INFO(r->body);
    CHECK(new_worker != old_worker);
    CHECK(state_of(r->body, new_worker) == "busy");

    check_clean_stop(s);
  }
  CHECK(leaks.problems() == "");
}
