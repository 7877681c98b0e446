// docs/app.md's applications (built as app_<name> from the page) answer
// what the page says they answer, and a failing handler is a 500 for its
// request, a line in the error log, and nothing more.
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "catch.hpp"
#include "httpd_support.hpp"
#include "leak_check.hpp"

using namespace httpd_test;
namespace fs = std::filesystem;

namespace {

std::string request(std::string_view method, std::string_view target, std::string_view extra = "",
                    std::string_view body = "") {
  std::string r = std::string(method) + " " + std::string(target) +
                  " HTTP/1.1\r\nHost: t\r\nConnection: close\r\n" + std::string(extra);
  if (!body.empty()) r += "Content-Length: " + std::to_string(body.size()) + "\r\n";
  return r + "\r\n" + std::string(body);
}

// A field of /proc/PID/status in KiB (VmHWM: the peak resident set).
long status_kib(pid_t pid, const std::string& field) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind(field + ":", 0) == 0) return std::stol(line.substr(field.size() + 1));
  return -1;
}

}  // namespace

TEST_CASE("docs/app.md step 1: one route, and the server's routes beside it", "[app][guide]") {
  prefork::test::leak_check leaks;
  {
    server s({}, true, {}, "app_hi");
    response r = get(s.port(), "/hi");
    CHECK(r.status == 200);
    CHECK(r.body == "hi\n");
    CHECK(r.header("content-type") == "text/plain; charset=utf-8");
    response head = ask(s.port(), request("HEAD", "/hi"), true);
    CHECK(head.status == 200);
    CHECK(head.header("content-length") == "3");
    CHECK(get(s.port(), "/_health").status == 200);
    CHECK(get(s.port(), "/hello.txt").status == 404);  // the demo site has no such file
    CHECK(get(s.port(), "/").status == 200);           // ... but an index.html
    check_clean_stop(s);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("docs/app.md step 2: prefix, decoded path, query, headers, body; 405 with Allow", "[app][guide]") {
  prefork::test::leak_check leaks;
  {
    server s({"-m", "blocking"}, true, {}, "app_greet");
    CHECK(get(s.port(), "/greet/Ada%20L?punct=%3F").body == "hello, Ada L?\n");
    CHECK(get(s.port(), "/greet/Ada", "Accept-Language: de-CH\r\n").body == "hallo, Ada!\n");
    response up = ask(s.port(), request("POST", "/upper", "Content-Type: text/x-shout\r\n", "quiet please"));
    CHECK(up.body == "QUIET PLEASE");
    CHECK(up.header("content-type") == "text/x-shout");
    response wrong = ask(s.port(), request("PUT", "/upper", "", "x"));
    CHECK(wrong.status == 405);
    CHECK(wrong.header("allow") == "POST");
    check_clean_stop(s);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("docs/app.md step 3: status and headers, a generated body, a file, an error", "[app][guide]") {
  prefork::test::leak_check leaks;
  for (const char* mode : {"evented", "blocking"}) {
    DYNAMIC_SECTION("-m " << mode) {
      server s({"-m", mode, "-w", "1"}, true, {}, "app_answers");
      response made = get(s.port(), "/created");
      CHECK(made.status == 201);
      CHECK(made.header("location") == "/thing/1");
      CHECK(made.body == "made\n");
      response count = get(s.port(), "/count?n=5");
      CHECK(count.header("transfer-encoding") == "chunked");
      CHECK(count.body == "1\n2\n3\n4\n5\n");
      response self = get(s.port(), "/binary");
      struct stat st {};
      REQUIRE(::stat(prefork::test::bin_path("app_answers").c_str(), &st) == 0);
      CHECK(self.body.size() == static_cast<std::size_t>(st.st_size));
      // HTTP/1.0 has no chunked encoding: the body comes whole, with its length.
      response old = ask(s.port(), "GET /count?n=3 HTTP/1.0\r\n\r\n");
      CHECK(old.header("content-length") == "6");
      CHECK(old.body == "1\n2\n3\n");
      // A long generated body is made as the client takes it, not in memory
      // first: 1,000,000 lines (6.9 MB) leave the worker's peak RSS alone.
      std::string spawned = s.wait_log("worker 0 (pid ", 0);
      const pid_t worker = std::stoi(spawned.substr(spawned.find("(pid ") + 5));
      const long peak_before = status_kib(worker, "VmHWM");
      response lots = get(s.port(), "/count?n=1000000");
      CHECK(lots.body.size() == 6888896);
      CHECK(lots.body.substr(lots.body.size() - 8) == "1000000\n");
      CHECK(status_kib(worker, "VmHWM") - peak_before < 3 * 1024);
      response missing = get(s.port(), "/missing");
      CHECK(missing.status == 404);
      CHECK(missing.body.find("nothing here") != std::string::npos);
      check_clean_stop(s);
    }
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE(
    "docs/app.md step 4: a handler that throws or never answers is a 500 and a log line; the worker goes on",
    "[app][guide]") {
  prefork::test::leak_check leaks;
  fs::path dir = fs::temp_directory_path() / ("prefork-app-data-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  for (const char* mode : {"evented", "blocking"}) {
    DYNAMIC_SECTION("-m " << mode) {
      server s({"-m", mode, "-w", "1", dir.string()}, true, {}, "app_failures");
      CHECK(get(s.port(), "/").body == "serving " + dir.filename().string() + "\n");
      if (std::string(mode) == "evented") {
        // Kept alive: the 500 costs neither the connection nor the worker.
        prefork::fd c = connect_to(s.port());
        std::string pending;
        send_text(c.get(),
                  "GET /boom HTTP/1.1\r\nHost: t\r\n\r\nGET /silent HTTP/1.1\r\nHost: t\r\n\r\n"
                  "GET / HTTP/1.1\r\nHost: t\r\n\r\n");
        CHECK(read_response(c.get(), pending).status == 500);
        CHECK(read_response(c.get(), pending).status == 500);
        CHECK(read_response(c.get(), pending).status == 200);
      } else {  // one request per connection
        CHECK(get(s.port(), "/boom").status == 500);
        CHECK(get(s.port(), "/silent").status == 500);
        CHECK(get(s.port(), "/").status == 200);
      }
      s.wait_log("handler error: GET /boom: the disk is on fire");
      s.wait_log("handler error: GET /silent: the handler returned without answering", 0);
      CHECK(get(s.port(), "/index.html").status == 404);
      CHECK(s.log().find("spawned", s.log().find("ready: ")) == std::string::npos);  // no worker replaced
      check_clean_stop(s);
    }
  }
  fs::remove_all(dir);
  CHECK(leaks.problems() == "");
}
