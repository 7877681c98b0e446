// prefork-kv (examples/kv): an application on prefork-httpd's seam keeps the
// store's promises over HTTP, with the server's process model under it.
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <thread>

#include "atomic_store/atomic_store.hpp"
#include "catch.hpp"
#include "httpd_support.hpp"
#include "leak_check.hpp"

using namespace httpd_test;
namespace fs = std::filesystem;

namespace {

struct temp_dir {
  fs::path path = fs::temp_directory_path() / ("prefork-kv-test-" + std::to_string(::getpid()));
  temp_dir() {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~temp_dir() { fs::remove_all(path); }
};

server start_kv(const temp_dir& dir, std::vector<std::string> args = {}) {
  args.push_back(dir.path.string());
  return server(args, true, {}, "prefork-kv");
}

std::string put_request(std::string_view name, std::string_view value, bool close = true) {
  return "PUT /k/" + std::string(name) + " HTTP/1.1\r\nHost: t\r\n" + (close ? "Connection: close\r\n" : "") +
         "Content-Length: " + std::to_string(value.size()) + "\r\n\r\n" + std::string(value);
}

response put(int port, std::string_view name, std::string_view value) {
  return ask(port, put_request(name, value));
}

// A field of /proc/PID/status in KiB (VmHWM: the peak resident set).
long status_kib(pid_t pid, const std::string& field) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind(field + ":", 0) == 0) return std::stol(line.substr(field.size() + 1));
  return -1;
}

}  // namespace

TEST_CASE("prefork-kv: PUT, GET with an ETag, 304, list, DELETE; bad names are 400", "[kv]") {
  prefork::test::leak_check leaks;
  temp_dir dir;
  {
    server s = start_kv(dir);
    CHECK(put(s.port(), "greeting", "hello, kv").status == 204);
    CHECK(put(s.port(), "a%20b", "spaced").status == 204);  // stored as "a b"
    response r = get(s.port(), "/k/greeting");
    CHECK(r.status == 200);
    CHECK(r.body == "hello, kv");
    const std::string etag = r.header("etag");
    REQUIRE(etag.size() > 2);
    CHECK(get(s.port(), "/k/greeting", "If-None-Match: " + etag + "\r\n").status == 304);
    CHECK(get(s.port(), "/k/greeting", "If-None-Match: \"other\"\r\n").status == 200);
    CHECK(get(s.port(), "/k/a b").status == 400);  // not even a request line
    CHECK(get(s.port(), "/k/a%20b").body == "spaced");
    // A new value is a new ETag.
    CHECK(put(s.port(), "greeting", "changed").status == 204);
    response changed = get(s.port(), "/k/greeting", "If-None-Match: " + etag + "\r\n");
    CHECK(changed.status == 200);
    CHECK(changed.body == "changed");
    response list = get(s.port(), "/k/");
    CHECK(list.header("content-type") == "application/json");
    CHECK((list.body == "[\"greeting\",\"a b\"]\n" || list.body == "[\"a b\",\"greeting\"]\n"));
    // Bad names, as sent and once percent-decoded.
    for (const char* bad :
         {"/k/..", "/k/.", "/k/%2e%2e", "/k/%2E.", "/k/a/b", "/k/a%2Fb", "/k/a%00b", "/k/%zz"}) {
      INFO(bad);
      CHECK(get(s.port(), bad).status == 400);
      CHECK(ask(s.port(), "PUT " + std::string(bad) +
                              " HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx")
                .status == 400);
    }
    CHECK(put(s.port(), "", "empty name").status == 400);
    CHECK(ask(s.port(), "DELETE /k/greeting HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").status == 204);
    CHECK(get(s.port(), "/k/greeting").status == 404);
    CHECK(ask(s.port(), "DELETE /k/greeting HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").status == 404);
    CHECK(get(s.port(), "/index.html").status == 404);  // no static files in kv
    response wrong = ask(s.port(), "POST /k/x HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nx");
    CHECK(wrong.status == 405);
    CHECK(wrong.header("allow") == "GET, HEAD, PUT, DELETE");
    CHECK(get(s.port(), "/_health").status == 200);  // the server's admin routes come along
    check_clean_stop(s);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("prefork-kv: concurrent PUTs and GETs across two workers never see a torn value", "[kv]") {
  prefork::test::leak_check leaks;
  temp_dir dir;
  {
    server s = start_kv(dir, {"-w", "2"});
    constexpr unsigned writers = 2, readers = 2, keys = 3, puts_each = 120;
    std::atomic<unsigned> writing{writers};
    std::atomic<unsigned> torn{0}, failed{0}, reads{0};
    std::vector<std::thread> threads;
    for (unsigned w = 0; w < writers; ++w)
      threads.emplace_back([&, w] {
        for (std::uint64_t seq = 0; seq < puts_each; ++seq) {
          try {
            if (put(s.port(), "key" + std::to_string(seq % keys), atomic_store::make_value(w, seq)).status !=
                204)
              ++failed;
          } catch (const std::exception&) {
            ++failed;
          }
        }
        --writing;
      });
    for (unsigned r = 0; r < readers; ++r)
      threads.emplace_back([&, r] {
        // Keep-alive GETs, so both connection paths of the worker are used.
        // A value cut short ends the connection: that counts as torn.
        try {
          prefork::fd c = connect_to(s.port());
          std::string pending;
          for (unsigned n = r; writing > 0 || n < r + 20; ++n) {
            std::string key = "key" + std::to_string(n % keys);
            send_text(c.get(), "GET /k/" + key + " HTTP/1.1\r\nHost: t\r\n\r\n");
            response got = read_response(c.get(), pending);
            ++reads;
            if (got.status == 404) continue;  // not written yet
            if (got.status != 200 || !atomic_store::valid_value(got.body)) ++torn;
          }
        } catch (const std::exception&) {
          ++torn;
        }
      });
    for (auto& t : threads) t.join();
    INFO("server log:\n" << s.log());
    CHECK(failed == 0);
    CHECK(torn == 0);
    CHECK(reads >= 40);
    check_clean_stop(s);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("prefork-kv: a 50 MiB PUT is stored and read back whole while the worker keeps answering", "[kv]") {
  prefork::test::leak_check leaks;
  temp_dir dir;
  {
    // One evented worker: if the upload held it, the GET below could not be answered.
    server s = start_kv(dir, {"-w", "1", "--max-body", "64M"});
    CHECK(put(s.port(), "small", "still here").status == 204);
    std::string spawned = s.wait_log("worker 0 (pid ", 0);
    const pid_t worker = std::stoi(spawned.substr(spawned.find("(pid ") + 5));
    const long peak_before = status_kib(worker, "VmHWM");
    REQUIRE(peak_before > 0);
    std::string big(50u << 20, '\0');
    for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>((i * 2654435761u) >> 13);
    const std::string request = put_request("big", big);
    prefork::fd up = connect_to(s.port());
    const std::size_t half = request.size() / 2;
    send_text(up.get(), std::string_view(request).substr(0, half));
    // Mid-upload: another client is answered.
    CHECK(get(s.port(), "/k/small").body == "still here");
    send_text(up.get(), std::string_view(request).substr(half));
    std::string reply = read_until_close(up.get());
    CHECK(reply.rfind("HTTP/1.1 204", 0) == 0);
    // The body went to a file as it came (spool.hpp), not into the worker's memory.
    CHECK(status_kib(worker, "VmHWM") - peak_before < 16 * 1024);
    response back = get(s.port(), "/k/big");
    CHECK(back.status == 200);
    CHECK(back.body.size() == big.size());
    CHECK(back.body == big);
    // Beyond --max-body: refused by the server before the handler.
    CHECK(ask(s.port(),
              "PUT /k/huge HTTP/1.1\r\nHost: t\r\nContent-Length: " + std::to_string(65u << 20) + "\r\n\r\n")
              .status == 413);
    check_clean_stop(s);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("prefork-kv: an upgrade (USR2) keeps serving the same store", "[kv][upgrade]") {
  prefork::test::leak_check leaks;
  temp_dir dir;
  {
    server s = start_kv(dir, {"--upgrade", "in-place", "--graceful-timeout", "5"});
    const pid_t master = s.pid();
    CHECK(put(s.port(), "before", "kept").status == 204);
    s.signal(SIGUSR2);
    s.wait_log("upgrade 1 complete");
    CHECK(s.pid() == master);
    CHECK(get(s.port(), "/k/before").body == "kept");
    CHECK(put(s.port(), "after", "new").status == 204);
    CHECK(get(s.port(), "/k/after").body == "new");
    check_clean_stop(s);
  }
  CHECK(leaks.problems() == "");
}
