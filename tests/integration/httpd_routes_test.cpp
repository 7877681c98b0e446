// prefork-httpd end to end: every route, static files beneath ROOT, the
// validators and ranges, and every error status, in both worker modes, over
// raw sockets (every byte visible) and through curl.
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "catch.hpp"
#include "httpd_support.hpp"
#include "leak_check.hpp"

using namespace httpd_test;

namespace {

// A ROOT of our own: known files, a subdirectory, and symlinks in and out.
struct temp_root {
  std::string path;
  std::string text = "0123456789abcdefghijklmnopqrstuvwxyz\n";  // 37 bytes
  temp_root() {
    char tmpl[] = "/tmp/prefork-httpd-root-XXXXXX";
    path = ::mkdtemp(tmpl);
    write("index.html", "<!DOCTYPE html><title>root</title>\n");
    write("a.txt", text);
    write("style.css", "body{}\n");
    ::mkdir((path + "/sub").c_str(), 0755);
    write("sub/index.html", "<p>sub</p>\n");
    ::mkdir((path + "/empty").c_str(), 0755);
    write("sp ace.txt", "spaced\n");
    REQUIRE(::symlink("/etc/passwd", (path + "/out").c_str()) == 0);
    REQUIRE(::symlink("/etc", (path + "/outdir").c_str()) == 0);
    REQUIRE(::symlink("a.txt", (path + "/in").c_str()) == 0);
    REQUIRE(::mkfifo((path + "/fifo").c_str(), 0644) == 0);
  }
  ~temp_root() { std::system(("rm -rf '" + path + "'").c_str()); }
  void write(const std::string& name, const std::string& data) {
    std::ofstream(path + "/" + name, std::ios::binary) << data;
  }
};

std::string slurp(const std::string& file) {
  std::ifstream in(file, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// The demo site, as the server itself finds it: --check names ROOT.
std::string bundled_www() {
  std::string out = run({prefork::test::bin_path("prefork-httpd"), "--check"}).out;
  auto at = out.find("(ROOT ");
  REQUIRE(at != std::string::npos);
  at += 6;
  return out.substr(at, out.find(',', at) - at);
}

void check_error(const response& r, int status) {
  INFO("status line " << r.version << " " << r.status << ", body: " << r.body);
  CHECK(r.status == status);
  // Every error says what was wrong in its body.
  CHECK(r.body.find(std::to_string(status)) == 0);
  CHECK(r.body.size() > 5);
  CHECK(r.header("content-type").find("text/plain") == 0);
}

}  // namespace

TEST_CASE("httpd: the built-in routes", "[httpd][routes]") {
  prefork::test::leak_check leaks;
  {
    std::string mode = GENERATE(as<std::string>{}, "blocking", "evented");
    INFO("mode " << mode);
    server s({"-m", mode});

    response hello = get(s.port(), "/hello");
    CHECK(hello.status == 200);
    CHECK(hello.version == "HTTP/1.1");
    CHECK(hello.body == "Hello, World!");
    CHECK(hello.header("content-type") == "text/plain");
    CHECK(hello.header("content-length") == "13");
    CHECK(hello.header("server").find("prefork-httpd/") == 0);
    std::string date = hello.header("date");
    CHECK(date.size() == 29);
    CHECK(date.substr(25) == " GMT");

    response head = ask(s.port(), "HEAD /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", true);
    CHECK(head.status == 200);
    CHECK(head.header("content-length") == "13");
    {
      prefork::fd c = connect_to(s.port());
      send_text(c.get(), "HEAD /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
      std::string all = read_until_close(c.get());
      CHECK(all.substr(all.size() - 4) == "\r\n\r\n");  // no body after the head
    }

    response not_allowed = ask(s.port(), "DELETE /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    check_error(not_allowed, 405);
    CHECK(not_allowed.header("allow") == "GET, HEAD");

    response echo = ask(s.port(),
                        "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-test\r\n"
                        "Content-Length: 11\r\nConnection: close\r\n\r\nhello world");
    CHECK(echo.status == 200);
    CHECK(echo.body == "hello world");
    CHECK(echo.header("content-type") == "application/x-test");

    response chunked = ask(s.port(),
                           "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: text/x-chunks\r\n"
                           "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                           "5\r\nhello\r\n1;ext=1\r\n \r\n6\r\nchunks\r\n0\r\n\r\n");
    CHECK(chunked.status == 200);
    CHECK(chunked.body == "hello chunks");
    CHECK(chunked.header("content-type") == "text/x-chunks");

    check_error(ask(s.port(), "GET /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"), 405);

    SECTION("100-continue is answered before the body is read") {
      prefork::fd c = connect_to(s.port());
      send_text(c.get(),
                "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n"
                "Connection: close\r\n\r\n");
      std::string got;
      auto deadline = steady::now() + patience;
      while (got.find("\r\n\r\n") == std::string::npos && read_some_until(c.get(), got, deadline)) {
      }
      CHECK(got == "HTTP/1.1 100 Continue\r\n\r\n");
      send_text(c.get(), "ping");
      std::string rest = read_until_close(c.get());
      auto r = parse_response(rest);
      REQUIRE(r);
      CHECK(r->status == 200);
      CHECK(r->body == "ping");
    }

    SECTION("/sleep sleeps, then answers") {
      auto start = steady::now();
      response slept = get(s.port(), "/sleep?ms=200");
      CHECK(slept.status == 200);
      CHECK(steady::now() - start >= 200ms);
      check_error(get(s.port(), "/sleep?ms=abc"), 400);
    }

    SECTION("/_status shows one row per worker, as HTML or JSON") {
      response html = get(s.port(), "/_status");
      CHECK(html.status == 200);
      CHECK(html.header("content-type").find("text/html") == 0);
      CHECK(html.body.find("<table>") != std::string::npos);
      std::size_t rows = 0;
      for (auto at = html.body.find("<tr class="); at != std::string::npos;
           at = html.body.find("<tr class=", at + 1))
        ++rows;
      CHECK(rows == 2);
      for (response json : {get(s.port(), "/_status?format=json"),
                            get(s.port(), "/_status", "Accept: application/json\r\n")}) {
        CHECK(json.header("content-type") == "application/json");
        std::size_t workers = 0;
        for (auto at = json.body.find("\"pid\":"); at != std::string::npos;
             at = json.body.find("\"pid\":", at + 1))
          ++workers;
        CHECK(workers == 2);
        CHECK(json.body.find("\"generation\":1") != std::string::npos);
        CHECK(json.body.find("\"requests\":") != std::string::npos);
        CHECK(json.body.find("\"seconds_since_tick\":") != std::string::npos);
        // The worker answering is busy, in either mode (httpd_status_busy_test
        // checks that it is the answering worker's own row).
        CHECK(json.body.find("\"state\":\"busy\"") != std::string::npos);
      }
    }

    SECTION("HTTP/1.0 is answered as 1.0 and closed") {
      response old = ask(s.port(), "GET /hello HTTP/1.0\r\n\r\n");
      CHECK(old.version == "HTTP/1.0");
      CHECK(old.body == "Hello, World!");
      CHECK(old.header("connection") == "close");
    }

    check_clean_stop(s);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("httpd: static files beneath ROOT", "[httpd][static]") {
  prefork::test::leak_check leaks;
  {
    std::string mode = GENERATE(as<std::string>{}, "blocking", "evented");
    INFO("mode " << mode);
    temp_root root;
    server s({"-m", mode, root.path});

    response index = get(s.port(), "/");
    CHECK(index.status == 200);
    CHECK(index.body == slurp(root.path + "/index.html"));
    CHECK(index.header("content-type") == "text/html; charset=utf-8");
    CHECK(get(s.port(), "/a.txt").body == root.text);
    CHECK(get(s.port(), "/a.txt").header("content-type") == "text/plain; charset=utf-8");
    CHECK(get(s.port(), "/style.css").header("content-type") == "text/css; charset=utf-8");
    CHECK(get(s.port(), "/sp%20ace.txt").body == "spaced\n");
    CHECK(get(s.port(), "/sub/").body == "<p>sub</p>\n");
    CHECK(get(s.port(), "/in").body == root.text);  // a symlink that stays inside

    response moved = get(s.port(), "/sub?x=1");
    CHECK(moved.status == 301);
    CHECK(moved.header("location") == "/sub/?x=1");
    CHECK(get(s.port(), "//sub").header("location") == "/sub/");  // never "//sub/": another host
    check_error(get(s.port(), "/nope.txt"), 404);
    check_error(get(s.port(), "/empty/"), 404);  // a directory without index.html
    check_error(get(s.port(), "/fifo"), 404);    // not a regular file, and no hang

    SECTION("nothing leaves ROOT") {
      for (const char* evil :
           {"/../../../../etc/passwd", "/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/sub/..%2f..%2f..%2fetc/passwd",
            "/sub/%2E%2E/%2E%2E/etc/passwd", "/./../etc/passwd"}) {
        INFO(evil);
        response r = get(s.port(), evil);
        check_error(r, 400);
        CHECK(r.body.find("root:") == std::string::npos);
      }
      for (const char* link : {"/out", "/outdir/passwd", "/outdir/"}) {
        INFO(link);
        response r = get(s.port(), link);
        check_error(r, 404);
        CHECK(r.body.find("root:") == std::string::npos);
      }
      check_error(get(s.port(), "/a.txt%00.html"), 400);
      check_error(get(s.port(), "/bad%zzescape"), 400);
      CHECK(get(s.port(), "/sub/../a.txt").body == root.text);  // ".." that stays beneath is fine
      CHECK(get(s.port(), "/%61.txt").body == root.text);       // decoded once
      check_error(get(s.port(), "/%2561.txt"), 404);            // ... and only once: "%61.txt"
    }

    SECTION("ETag, Last-Modified and 304") {
      response full = get(s.port(), "/a.txt");
      std::string etag = full.header("etag"), modified = full.header("last-modified");
      REQUIRE(!etag.empty());
      REQUIRE(!modified.empty());
      response same = get(s.port(), "/a.txt", "If-None-Match: " + etag + "\r\n");
      CHECK(same.status == 304);
      CHECK(same.body.empty());
      CHECK(same.header("etag") == etag);
      CHECK(get(s.port(), "/a.txt", "If-None-Match: \"other\", W/" + etag + "\r\n").status == 304);
      CHECK(get(s.port(), "/a.txt", "If-None-Match: \"other\"\r\n").status == 200);
      CHECK(get(s.port(), "/a.txt", "If-Modified-Since: " + modified + "\r\n").status == 304);
      CHECK(get(s.port(), "/a.txt", "If-Modified-Since: Sat, 01 Jan 2000 00:00:00 GMT\r\n").status == 200);
      // If-None-Match wins over If-Modified-Since.
      CHECK(get(s.port(), "/a.txt", "If-None-Match: \"other\"\r\nIf-Modified-Since: " + modified + "\r\n")
                .status == 200);
    }

    SECTION("single byte ranges: 206 and 416") {
      response r = get(s.port(), "/a.txt", "Range: bytes=2-5\r\n");
      CHECK(r.status == 206);
      CHECK(r.body == "2345");
      CHECK(r.header("content-range") == "bytes 2-5/37");
      CHECK(get(s.port(), "/a.txt", "Range: bytes=-4\r\n").body == "xyz\n");
      CHECK(get(s.port(), "/a.txt", "Range: bytes=30-\r\n").body == "uvwxyz\n");
      CHECK(get(s.port(), "/a.txt", "Range: bytes=30-1000\r\n").body == "uvwxyz\n");
      response bad = get(s.port(), "/a.txt", "Range: bytes=37-\r\n");
      check_error(bad, 416);
      CHECK(bad.header("content-range") == "bytes */37");
      CHECK(get(s.port(), "/a.txt", "Range: bytes=0-1,4-5\r\n").status == 200);  // several: the whole file
      CHECK(get(s.port(), "/a.txt", "Range: lines=1-2\r\n").status == 200);
      std::string etag = get(s.port(), "/a.txt").header("etag");
      CHECK(get(s.port(), "/a.txt", "Range: bytes=0-0\r\nIf-Range: " + etag + "\r\n").status == 206);
      CHECK(get(s.port(), "/a.txt", "Range: bytes=0-0\r\nIf-Range: \"stale\"\r\n").status == 200);
    }

    SECTION("HEAD of a file: the headers of GET, no body") {
      prefork::fd c = connect_to(s.port());
      send_text(c.get(), "HEAD /a.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
      std::string all = read_until_close(c.get());
      auto r = parse_response(all, true);
      REQUIRE(r);
      CHECK(r->header("content-length") == "37");
      CHECK(all.size() == r->size);
    }

    check_clean_stop(s);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("httpd: every error status, and the server keeps serving", "[httpd][errors]") {
  prefork::test::leak_check leaks;
  {
    std::string mode = GENERATE(as<std::string>{}, "blocking", "evented");
    INFO("mode " << mode);
    server s({"-m", mode, "--max-body", "1000"});
    const std::string close = "Connection: close\r\n";
    check_error(ask(s.port(), "GARBAGE\r\n\r\n"), 400);
    check_error(ask(s.port(), "GET /hello HTTP/1.1\r\n" + close + "\r\n"), 400);  // no Host
    check_error(
        ask(s.port(), "GET /hello HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
        400);
    check_error(ask(s.port(), "PUT / HTTP/1.1\r\nHost: t\r\n" + close + "\r\n"), 405);
    check_error(ask(s.port(), "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1001\r\n" + close + "\r\n"),
                413);
    check_error(ask(s.port(), "GET /" + std::string(9000, 'a') + " HTTP/1.1\r\nHost: t\r\n" + close + "\r\n"),
                414);
    check_error(ask(s.port(), "GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + std::string(9000, 'b') + "\r\n\r\n"),
                431);
    check_error(ask(s.port(), "BREW /pot HTTP/1.1\r\nHost: t\r\n" + close + "\r\n"), 501);
    check_error(ask(s.port(), "GET / HTTP/2.0\r\nHost: t\r\n" + close + "\r\n"), 505);
    check_error(ask(s.port(), "GET /docs/signals.txt HTTP/1.1\r\nHost: t\r\nRange: bytes=99999999-\r\n" +
                                  close + "\r\n"),
                416);

    // A chunked body over the limit is refused as it arrives.
    response big = ask(s.port(), "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n" + close +
                                     "\r\n400\r\n" + std::string(1024, 'x') + "\r\n0\r\n\r\n");
    check_error(big, 413);
    // Framing errors close the connection even when keep-alive was asked for.
    {
      prefork::fd c = connect_to(s.port());
      send_text(c.get(), "GET / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n");
      std::string all = read_until_close(c.get());
      auto r = parse_response(all, false, true);
      REQUIRE(r);
      CHECK(r->status >= 400);
      CHECK(r->header("connection") == "close");
    }
    CHECK(get(s.port(), "/hello").body == "Hello, World!");
    check_clean_stop(s);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("httpd: curl agrees", "[httpd][curl]") {
  prefork::test::leak_check leaks;
  {
    std::string mode = GENERATE(as<std::string>{}, "blocking", "evented");
    INFO("mode " << mode);
    server s({"-m", mode});
    std::string base = "http://127.0.0.1:" + std::to_string(s.port());
    CHECK(run({"curl", "-sS", base + "/hello"}).out == "Hello, World!");
    CHECK(run({"curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", base + "/docs"}).out == "301");
    CHECK(run({"curl", "-sS", "-L", base + "/docs"}).out.find("A subdirectory") != std::string::npos);
    CHECK(run({"curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", base + "/missing"}).out == "404");
    std::string www = bundled_www();
    CHECK(run({"curl", "-sS", base + "/img/dot.png"}).out == slurp(www + "/img/dot.png"));
    CHECK(run({"curl", "-sS", "-r", "0-7", base + "/img/dot.png"}).out ==
          slurp(www + "/img/dot.png").substr(0, 8));
    // A body large enough that curl sends Expect: 100-continue, and a chunked one.
    std::string body(200000, 'q');
    {
      char tmpl[] = "/tmp/prefork-httpd-body-XXXXXX";
      int fd = ::mkstemp(tmpl);
      REQUIRE(fd >= 0);
      prefork::write_all(fd, body);
      ::close(fd);
      CHECK(run({"curl", "-sS", "--max-time", "10", "-H", "Content-Type: text/plain", "--data-binary",
                 std::string("@") + tmpl, base + "/echo"})
                .out == body);
      CHECK(run({"curl", "-sS", "--max-time", "10", "-H", "Transfer-Encoding: chunked", "--data-binary",
                 std::string("@") + tmpl, base + "/echo"})
                .out == body);
      ::unlink(tmpl);
    }
    check_clean_stop(s);
  }
  CHECK(leaks.problems() == "");
}
