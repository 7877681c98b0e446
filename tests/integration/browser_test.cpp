// prefork-httpd's pages in a real browser: headless Chromium.
//
// Chromium loads /_status and the demo site's front page from a running
// server; --dump-dom prints the document as the browser parsed it, so the
// test counts the scoreboard's rows as a user would see them (one per
// worker, each with its PID), and the access log shows the browser fetched
// the page's stylesheet and image from the server. A screenshot of the
// scoreboard, with one worker busy in a slow request, is written next to
// the test executable (docs/status.png is one such).
//
// Skipped, with a message, where chromium is not installed (Debian:
// apt-get install chromium). Runs as root, hence --no-sandbox; nothing
// reaches beyond 127.0.0.1 (no background networking, sync or updates).
#include "catch.hpp"

#include <sys/inotify.h>

#include <fstream>
#include <regex>

#include "ecosystem_support.hpp"
#include "helpers.hpp"
#include "httpd_support.hpp"
#include "leak_check.hpp"

namespace {

using namespace httpd_test;
using eco_test::temp_dir;

const std::string chromium = "/usr/bin/chromium";

// A browser's first start takes a while on a busy machine.
constexpr auto browser_patience = 90s;

struct browser_result {
  std::string describe;  // how it ended
  std::string out;       // standard output
  std::string err;       // standard error (dbus complaints and the like)
};

// Runs chromium headless on url with extra flags and a fresh profile.
browser_result run_chromium(const std::vector<std::string>& flags, const std::string& url) {
  temp_dir profile("prefork-chromium");
  std::vector<std::string> argv{chromium,
                                "--headless",
                                "--no-sandbox",
                                "--disable-gpu",
                                "--disable-quic",
                                "--no-first-run",
                                "--disable-background-networking",
                                "--disable-component-update",
                                "--disable-sync",
                                "--disable-dev-shm-usage",
                                "--user-data-dir=" + profile.path().string()};
  argv.insert(argv.end(), flags.begin(), flags.end());
  argv.push_back(url);
  auto out = prefork::pipe();
  auto err = prefork::pipe();
  prefork::child c = start_process(argv, out.write.get(), err.write.get());
  out.write.reset();
  err.write.reset();
  browser_result r;
  auto deadline = steady::now() + browser_patience;
  // Both pipes at once: either may fill while the other is read.
  for (bool out_open = true, err_open = true; out_open || err_open;) {
    pollfd p[2] = {{out_open ? out.read.get() : -1, POLLIN, 0}, {err_open ? err.read.get() : -1, POLLIN, 0}};
    if (::poll(p, 2, ms_left(deadline)) <= 0) break;
    if (p[0].revents && !read_some_until(out.read.get(), r.out, deadline)) out_open = false;
    if (p[1].revents && !read_some_until(err.read.get(), r.err, deadline)) err_open = false;
  }
  auto status =
      c.wait_for(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - steady::now()) + 1s);
  if (!status) {
    c.kill(SIGKILL);
    status = c.wait();
    r.describe = "timed out, " + status->describe();
  } else {
    r.describe = status->describe();
  }
  return r;
}

std::size_t count(const std::string& text, const std::string& needle) {
  std::size_t n = 0;
  for (auto at = text.find(needle); at != std::string::npos; at = text.find(needle, at + needle.size())) ++n;
  return n;
}

// The worker PIDs in the JSON scoreboard.
std::vector<std::string> worker_pids(const std::string& json) {
  std::vector<std::string> pids;
  std::regex pid("\\{\"index\":[0-9]+,\"pid\":([0-9]+)");
  for (auto it = std::sregex_iterator(json.begin(), json.end(), pid); it != std::sregex_iterator(); ++it)
    pids.push_back((*it)[1]);
  return pids;
}

// Waits until file holds every one of needles, woken by inotify as it
// grows; returns its text.
std::string wait_for_lines(const std::string& file, const std::vector<std::string>& needles) {
  prefork::fd in(::inotify_init1(IN_CLOEXEC | IN_NONBLOCK));
  REQUIRE(in);
  REQUIRE(::inotify_add_watch(in.get(), file.c_str(), IN_MODIFY) >= 0);
  auto deadline = steady::now() + patience;
  for (;;) {
    std::string text = prefork::test::slurp(file);
    bool all = true;
    for (const std::string& n : needles) all = all && text.find(n) != std::string::npos;
    if (all) return text;
    pollfd p{in.get(), POLLIN, 0};
    if (::poll(&p, 1, ms_left(deadline)) <= 0)
      FAIL("not all of the expected lines in " << file << ":\n" << text);
    char events[4096];
    while (::read(in.get(), events, sizeof events) > 0) {
    }
  }
}

// Width and height from a PNG's IHDR chunk; {0, 0} when not a PNG.
std::pair<unsigned, unsigned> png_size(const std::string& data) {
  if (data.size() < 24 || data.compare(0, 8, "\x89PNG\r\n\x1a\n") != 0 || data.compare(12, 4, "IHDR") != 0)
    return {0, 0};
  auto be32 = [&](std::size_t at) {
    unsigned v = 0;
    for (std::size_t i = 0; i < 4; ++i) v = (v << 8) | static_cast<unsigned char>(data[at + i]);
    return v;
  };
  return {be32(16), be32(20)};
}

}  // namespace

TEST_CASE("the status page and the demo site in headless Chromium", "[browser]") {
  if (!eco_test::executable(chromium)) {
    WARN("skipped: " << chromium << " is not installed (Debian: apt-get install chromium)");
    return;
  }
  prefork::test::leak_check leaks;
  {
    temp_dir dir;
    const std::string access_log = (dir.path() / "access.log").string();
    // Blocking mode: its scoreboard tells a busy worker from an idle one
    // (the evented worker's does not yet: see the last test case).
    server s({"-w", "3", "-m", "blocking", "--access-log", access_log});
    const std::string base = "http://127.0.0.1:" + std::to_string(s.port());
    for (int i = 0; i < 5; ++i) REQUIRE(get(s.port(), "/hello").body == "Hello, World!");
    // A worker busy in a slow request, so the page shows all three states
    // of a worker's day at once; TERM ends it below.
    prefork::fd slow = connect_to(s.port());
    send_text(slow.get(), "GET /sleep?ms=60000 HTTP/1.1\r\nHost: t\r\n\r\n");
    // Polled, each poll a request: no state to wait on but the scoreboard.
    std::string json;
    auto deadline = steady::now() + patience;
    do {
      REQUIRE(steady::now() < deadline);
      json = get(s.port(), "/_status?format=json").body;
    } while (json.find("GET /sleep?ms=60000") == std::string::npos);
    std::vector<std::string> pids = worker_pids(json);
    REQUIRE(pids.size() == 3);

    SECTION("the scoreboard: one row per worker, with its PID") {
      browser_result r = run_chromium({"--dump-dom"}, base + "/_status");
      INFO(r.describe << "\nstderr:\n" << r.err << "\nDOM:\n" << r.out);
      REQUIRE(r.describe == "exited 0");
      CHECK(r.out.find("<title>prefork-httpd status</title>") != std::string::npos);
      // The parser put the rows in a <tbody>: the DOM, not the bytes sent.
      CHECK(r.out.find("<tbody>") != std::string::npos);
      CHECK(count(r.out, "<tr><th>") == 2);            // the listen queues and the workers
      CHECK(count(r.out, "<tr class=\"") == 3);        // one row per worker, classed by state
      CHECK(count(r.out, "<tr><td>127.0.0.1:") == 1);  // the listener, with its queue
      CHECK(r.out.find("http-equiv=\"refresh\"") != std::string::npos);
      CHECK(r.out.find("<th>Pss</th>") != std::string::npos);
      CHECK(r.out.find(" MiB</td>") != std::string::npos);
      CHECK(r.out.find("<dt>uptime</dt>") != std::string::npos);
      for (const std::string& pid : pids) CHECK(r.out.find("<td>" + pid + "</td>") != std::string::npos);
      CHECK(r.out.find("<tr class=\"busy\">") != std::string::npos);
      CHECK(r.out.find("<td>busy</td>") != std::string::npos);
      CHECK(r.out.find("<td>GET /sleep?ms=60000</td>") != std::string::npos);
    }

    SECTION("the demo site's front page, with its stylesheet and image") {
      browser_result r = run_chromium({"--dump-dom"}, base + "/");
      INFO(r.describe << "\nstderr:\n" << r.err << "\nDOM:\n" << r.out);
      REQUIRE(r.describe == "exited 0");
      CHECK(r.out.find("<h1>prefork-httpd is serving</h1>") != std::string::npos);
      CHECK(r.out.find("href=\"/_status\"") != std::string::npos);
      wait_for_lines(access_log, {"\"GET / HTTP/1.1\" 200", "\"GET /style.css HTTP/1.1\" 200",
                                  "\"GET /img/logo.svg HTTP/1.1\" 200"});
    }

    SECTION("a screenshot of the scoreboard") {
      const std::string shot =
          (std::filesystem::path(prefork::test::self_exe()).parent_path() / "status.png").string();
      std::filesystem::remove(shot);
      browser_result r = run_chromium({"--hide-scrollbars", "--window-size=1200,800", "--screenshot=" + shot},
                                      base + "/_status");
      INFO(r.describe << "\nstderr:\n" << r.err);
      REQUIRE(r.describe == "exited 0");
      std::string png = prefork::test::slurp(shot);
      CHECK(png_size(png) == std::pair<unsigned, unsigned>(1200, 800));
      WARN("screenshot: " << shot);
    }

    prefork::exit_status st = s.stop(SIGTERM);
    INFO("server log:\n" << s.log());
    CHECK(st.describe() == "exited 0");
  }
  CHECK(leaks.problems() == "");
}

// In evented mode (the default) the worker runs its own loop, and marks
// itself busy while it serves a turn's requests (worker::mark_busy).
TEST_CASE("evented mode: a worker inside a slow request shows busy on the scoreboard", "[browser]") {
  prefork::test::leak_check leaks;
  {
    server s({"-w", "2", "-m", "evented"});
    prefork::fd slow = connect_to(s.port());
    send_text(slow.get(), "GET /sleep?ms=60000 HTTP/1.1\r\nHost: t\r\n\r\n");
    std::string json;
    auto deadline = steady::now() + patience;
    do {
      REQUIRE(steady::now() < deadline);
      json = get(s.port(), "/_status?format=json").body;
    } while (json.find("GET /sleep?ms=60000") == std::string::npos);
    INFO(json);
    CHECK(std::regex_search(json,
                            std::regex("\"state\":\"busy\",[^}]*\"activity\":\"GET /sleep\\?ms=60000\"")));
    CHECK(s.stop(SIGTERM).describe() == "exited 0");
  }
  CHECK(leaks.problems() == "");
}
