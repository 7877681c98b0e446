// prefork-httpd's operations surface: /_metrics valid per promtool and
// scraped by a real Prometheus (its stored request counter matches what the
// client sent; a killed worker shows as a restart), --admin-listen moving
// the admin routes off the public listener, /_health, and the access log
// read by goaccess in both formats. Prometheus, promtool and goaccess come
// from Debian (prometheus, goaccess; scripts/test installs them); a test
// whose tool is missing says so and is skipped.
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cctype>
#include <cstdio>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>

#include "catch.hpp"
#include "helpers.hpp"
#include "httpd_modes.hpp"
#include "httpd_support.hpp"
#include "leak_check.hpp"
#include "proc.hpp"
#include "temp_dir.hpp"

using namespace httpd_test;
using prefork::test::temp_dir;

namespace {

bool have(const std::string& tool) {
  if (::access(tool.c_str(), X_OK) == 0) return true;
  WARN("skipped: " << tool << " is not installed (Debian: apt-get install "
                   << (tool.find("goaccess") != std::string::npos ? "goaccess" : "prometheus") << ")");
  return false;
}

int admin_port(server& s) {
  std::string line = s.wait_log("(admin)", 0);
  return std::stoi(line.substr(line.find("127.0.0.1:") + 10));
}

// A TCP port nobody listens on now (Prometheus cannot take port 0).
int free_port() {
  prefork::fd l = prefork::listen("127.0.0.1:0");
  std::string a = prefork::local_address(l.get());
  return std::stoi(a.substr(a.rfind(':') + 1));
}

std::string url_encode(std::string_view s) {
  std::string out;
  char buf[4];
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '_' || c == '.') {
      out += static_cast<char>(c);
    } else {
      std::snprintf(buf, sizeof buf, "%%%02X", c);
      out += buf;
    }
  }
  return out;
}

// The value of an instant query's single sample, or "" (no sample yet).
std::string query(int port, const std::string& promql) {
  response r = get(port, "/api/v1/query?query=" + url_encode(promql));
  std::smatch m;
  static const std::regex value(R"re("value":\[[0-9.]+,"([^"]*)"\])re");
  if (r.status != 200 || !std::regex_search(r.body, m, value)) return "";
  return m[1];
}

template <class F>
bool within(std::chrono::seconds limit, F ok) {
  auto deadline = steady::now() + limit;
  while (steady::now() < deadline) {
    if (ok()) return true;
    ::poll(nullptr, 0, 100);
  }
  return ok();
}

void check_metrics_file(const std::string& path) {
  command_result r = run({"/bin/sh", "-c", "/usr/bin/promtool check metrics < " + path}, true);
  INFO(r.out);
  CHECK(r.code == 0);
  CHECK(r.out.find("error") == std::string::npos);
}

}  // namespace

TEST_CASE("/_metrics: the names the issue lists, valid per promtool check metrics") {
  prefork::test::leak_check leaks;
  for (std::string mode : {"evented", "blocking", "uring"}) {
    if (!mode_runs_here(mode)) continue;
    DYNAMIC_SECTION(mode) {
      server s({"-m", mode});
      check_mode(s, mode);
      for (int i = 0; i < 5; ++i) CHECK(get(s.port(), "/hello").status == 200);
      CHECK(get(s.port(), "/missing").status == 404);
      CHECK(get(s.port(), "/sleep?ms=200").status == 200);
      response m = get(s.port(), "/_metrics");
      CHECK(m.status == 200);
      CHECK(m.header("content-type").find("text/plain; version=0.0.4") == 0);
      for (const char* name :
           {"prefork_http_requests_total{", "prefork_listen_queue{", "prefork_listen_backlog{",
            "prefork_workers ", "prefork_workers_busy ", "prefork_worker_rss_bytes{",
            "prefork_worker_pss_bytes{", "prefork_worker_restarts_total{cause=\"crash\"} 0",
            "prefork_master_start_time_seconds ", "prefork_upgrades_total 0",
            "prefork_http_request_duration_seconds_bucket{le=\"+Inf\"} 7",
            "prefork_http_request_duration_seconds_count 7"})
        CHECK(m.body.find(name) != std::string::npos);
      // The durations are measured with or without an access log: the
      // sleep's 0.2 s, the rest next to nothing (unmeasured, they were
      // whatever the clock read since boot).
      std::smatch sum;
      REQUIRE(std::regex_search(m.body, sum,
                                std::regex(R"re(prefork_http_request_duration_seconds_sum ([0-9.e+-]+))re")));
      CHECK(std::stod(sum[1]) >= 0.15);
      CHECK(std::stod(sum[1]) < 30);
      // 6 answered (5 hello, 1 sleep) and 1 not found across the two workers;
      // /_metrics itself is not counted.
      std::regex counts(R"re(prefork_http_requests_total\{worker="\d+",code="(\dxx)"\} (\d+))re");
      unsigned ok = 0, missing = 0;
      for (std::sregex_iterator it(m.body.begin(), m.body.end(), counts), end; it != end; ++it) {
        if ((*it)[1] == "2xx") ok += static_cast<unsigned>(std::stoul((*it)[2]));
        if ((*it)[1] == "4xx") missing += static_cast<unsigned>(std::stoul((*it)[2]));
      }
      CHECK(ok == 6);
      CHECK(missing == 1);
      if (have("/usr/bin/promtool")) {
        temp_dir dir;
        std::ofstream(dir / "m.txt") << m.body;
        check_metrics_file((dir / "m.txt").string());
      }
      check_clean_stop(s);
    }
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("--admin-listen: the admin routes there only, and /_health") {
  prefork::test::leak_check leaks;
  temp_dir dir;
  const std::string sock = (dir / "admin.sock").string();
  SECTION("on 127.0.0.1") {
    server s({"--admin-listen", "127.0.0.1:0"});
    int admin = admin_port(s);
    CHECK(admin != s.port());
    for (const char* path : {"/_status", "/_metrics", "/_health"}) {
      INFO(path);
      CHECK(get(s.port(), path).status == 404);
      CHECK(get(admin, path).status == 200);
    }
    CHECK(get(admin, "/hello").status == 404);
    CHECK(get(s.port(), "/hello").status == 200);
    CHECK(get(admin, "/_health").body == "ok\n");
    // The admin listener shows in the listen-queue metrics, and the status page marks it.
    CHECK(get(admin, "/_metrics")
              .body.find("prefork_listen_queue{listener=\"127.0.0.1:" + std::to_string(admin) + "\"} 0") !=
          std::string::npos);
    CHECK(get(admin, "/_status?format=json").body.find("\"admin\":true") != std::string::npos);
    check_clean_stop(s);
  }
  SECTION("on a unix socket, curl over it") {
    server s({"--admin-listen", "unix:" + sock});
    command_result r = run({"curl", "-s", "--unix-socket", sock, "http://x/_health"});
    CHECK(r.out == "ok\n");
    r = run({"curl", "-s", "--unix-socket", sock, "http://x/_metrics"});
    CHECK(r.out.find("prefork_listen_backlog{listener=\"unix:" + sock + "\"}") != std::string::npos);
    CHECK(get(s.port(), "/_health").status == 404);
    check_clean_stop(s);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("Prometheus scrapes prefork-httpd: the stored request count and a restart") {
  prefork::test::leak_check leaks;
  if (!have("/usr/bin/prometheus")) return;
  {
    temp_dir dir;
    server s({"-w", "2", "--admin-listen", "127.0.0.1:0"});
    const int admin = admin_port(s);
    std::ofstream(dir / "prometheus.yml")
        << "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
           "scrape_configs:\n  - job_name: prefork\n    metrics_path: /_metrics\n    static_configs:\n"
           "      - targets: ['127.0.0.1:"
        << admin << "']\n";
    std::optional<prefork::child> prom;
    int port = 0;
    prefork::fd prom_log;
    std::string log;
    // A port picked free may be taken before Prometheus binds it: try again.
    for (int attempt = 0; attempt < 5 && !prom; ++attempt) {
      port = free_port();
      auto err = prefork::pipe();
      prefork::fd null(::open("/dev/null", O_WRONLY | O_CLOEXEC));
      prefork::child c =
          start_process({"/usr/bin/prometheus", "--config.file=" + (dir / "prometheus.yml").string(),
                         "--storage.tsdb.path=" + (dir / "data").string(),
                         "--web.listen-address=127.0.0.1:" + std::to_string(port)},
                        null.get(), err.write.get());
      err.write.reset();
      bool up = within(20s, [&] {
        if (c.try_wait()) return true;
        try {
          return get(port, "/-/ready").status == 200;
        } catch (const std::exception&) {
          return false;
        }
      });
      if (up && !c.status()) {
        prom.emplace(std::move(c));
        prom_log = std::move(err.read);
      } else {
        if (!c.status()) {
          c.kill(SIGKILL);
          c.wait();
        }
        log = read_until_close(err.read.get());
        WARN("prometheus did not start on port " << port << ":\n" << log);
      }
    }
    REQUIRE(prom);

    constexpr int sent = 150;
    for (int i = 0; i < sent; ++i) REQUIRE(get(s.port(), "/hello").status == 200);
    std::string seen;
    CHECK(within(20s, [&] {
      return (seen = query(port, "sum(prefork_http_requests_total)")) == std::to_string(sent);
    }));
    INFO("Prometheus stored " << seen);
    CHECK(query(port, "sum(prefork_http_requests_total{code=\"2xx\"})") == std::to_string(sent));
    CHECK(query(port, "prefork_workers") == "2");

    std::set<pid_t> workers = prefork::test::children_of(s.pid());
    REQUIRE(workers.size() == 2);
    ::kill(*workers.begin(), SIGKILL);
    CHECK(within(20s, [&] { return query(port, "prefork_worker_restarts_total{cause=\"crash\"}") == "1"; }));
    CHECK(within(20s, [&] { return query(port, "prefork_workers") == "2"; }));
    // The dead worker's slot keeps its count: the stored total did not go down.
    CHECK(query(port, "sum(prefork_http_requests_total)") == std::to_string(sent));

    prom->kill(SIGTERM);
    auto st = prom->wait_for(20s);
    if (!st) {
      prom->kill(SIGKILL);
      prom->wait();
    }
    check_clean_stop(s);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("access log: combined by default, +microseconds as an option, both read by goaccess") {
  prefork::test::leak_check leaks;
  temp_dir dir;
  for (bool micro : {false, true}) {
    DYNAMIC_SECTION((micro ? "combined+us" : "combined")) {
      const std::string log = (dir / (micro ? "us.log" : "combined.log")).string();
      std::vector<std::string> args{"--access-log", log};
      if (micro) args.insert(args.end(), {"--access-log-format", "combined+us"});
      server s(args);
      CHECK(get(s.port(), "/hello", "Referer: http://example.com/a\"b\r\nUser-Agent: probe/1.0 \"q\"\r\n")
                .status == 200);
      CHECK(get(s.port(), "/missing").status == 404);
      CHECK(get(s.port(), "/sleep?ms=30").status == 200);
      check_clean_stop(s);
      std::string text = prefork::test::slurp(log);
      INFO(text);
      // Field by field: host ident user [time] "request" status bytes "referer" "agent" [us]
      std::regex line(
          micro
              ? R"re(^127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\] "([^"]*)" (\d{3}) (\d+|-) "((?:[^"\\]|\\.)*)" "((?:[^"\\]|\\.)*)" (\d+)$)re"
              : R"re(^127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\] "([^"]*)" (\d{3}) (\d+|-) "((?:[^"\\]|\\.)*)" "((?:[^"\\]|\\.)*)"$)re");
      std::vector<std::smatch> rows;
      std::istringstream in(text);
      std::vector<std::string> lines;
      for (std::string l; std::getline(in, l);) lines.push_back(l);
      REQUIRE(lines.size() == 3);
      std::smatch m;
      REQUIRE(std::regex_match(lines[0], m, line));
      CHECK(m[1] == "GET /hello HTTP/1.1");
      CHECK(m[2] == "200");
      CHECK(m[3] == "13");
      CHECK(m[4] == "http://example.com/a\\\"b");
      CHECK(m[5] == "probe/1.0 \\\"q\\\"");
      REQUIRE(std::regex_match(lines[1], m, line));
      CHECK(m[2] == "404");
      CHECK(m[4] == "-");
      REQUIRE(std::regex_match(lines[2], m, line));
      CHECK(m[1] == "GET /sleep?ms=30 HTTP/1.1");
      if (micro) CHECK(std::stoul(m[6]) >= 30000);
      if (micro) CHECK(std::stoul(m[6]) < 10000000);

      if (have("/usr/bin/goaccess")) {
        const std::string report = (dir / (micro ? "us.json" : "combined.json")).string();
        std::vector<std::string> ga{"/usr/bin/goaccess", log, "--no-global-config", "-o", report};
        if (micro)
          ga.insert(ga.end(), {"--log-format=%h %^[%d:%t %^] \"%r\" %s %b \"%R\" \"%u\" %D",
                               "--date-format=%d/%b/%Y", "--time-format=%T"});
        else
          ga.push_back("--log-format=COMBINED");
        command_result r = run(ga, true);
        INFO(r.out);
        REQUIRE(r.code == 0);
        std::string json = prefork::test::slurp(report);
        CHECK(json.find("\"total_requests\": 3") != std::string::npos);
        CHECK(json.find("\"valid_requests\": 3") != std::string::npos);
        CHECK(json.find("\"failed_requests\": 0") != std::string::npos);
      }
    }
  }
  CHECK(leaks.problems() == "");
}
