// Request bodies beyond the application's body_in_memory() are spooled to an
// unlinked temporary file as they arrive, in every worker mode, whether sent
// with a length or chunked; "Expect: 100-continue" is answered only when
// the handler will read the body.
#include <fcntl.h>
#include <unistd.h>

#include <filesystem>

#include "catch.hpp"
#include "httpd_modes.hpp"
#include "httpd_support.hpp"
#include "leak_check.hpp"

using namespace httpd_test;

namespace {

std::string payload(std::size_t n, unsigned seed) {
  std::string s(n, '\0');
  for (std::size_t i = 0; i < n; ++i) s[i] = static_cast<char>(((i + seed) * 2654435761u) >> 11);
  return s;
}

std::string chunked(std::string_view body, std::size_t piece) {
  std::string out;
  char size[32];
  for (std::size_t at = 0; at < body.size(); at += piece) {
    std::string_view p = body.substr(at, piece);
    std::snprintf(size, sizeof size, "%zx\r\n", p.size());
    out += size;
    out += p;
    out += "\r\n";
  }
  return out + "0\r\n\r\n";
}

// Unlinked files still open by pid: a spooled body left behind would show.
int deleted_files(pid_t pid) {
  int n = 0;
  for (const auto& e : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd")) {
    std::error_code ec;
    auto target = std::filesystem::read_symlink(e.path(), ec).string();
    if (target.find("(deleted)") != std::string::npos && target.rfind("/memfd:", 0) != 0) ++n;
  }
  return n;
}

}  // namespace

TEST_CASE("prefork-httpd spools large request bodies to a file, every worker mode, length or chunked",
          "[httpd][spool]") {
  prefork::test::leak_check leaks;
  for (const char* mode : {"evented", "blocking", "uring"}) {
    if (!mode_runs_here(mode)) continue;
    DYNAMIC_SECTION("-m " << mode) {
      server s({"-m", mode, "-w", "1", "--max-body", "8M"});
      check_mode(s, mode);
      std::string spawned = s.wait_log("worker 0 (pid ", 0);
      const pid_t worker = std::stoi(spawned.substr(spawned.find("(pid ") + 5));
      const std::string big = payload(3u << 20, 1), other = payload((1u << 20) + 17, 2);
      response r = ask(s.port(),
                       "POST /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: x/y\r\n"
                       "Content-Length: " +
                           std::to_string(big.size()) + "\r\n\r\n" + big);
      CHECK(r.status == 200);
      CHECK(r.header("content-type") == "x/y");
      CHECK(r.body.size() == big.size());
      CHECK(r.body == big);
      response c = ask(s.port(),
                       "POST /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                       "Transfer-Encoding: chunked\r\n\r\n" +
                           chunked(other, 65536 + 3));
      CHECK(c.status == 200);
      CHECK(c.body == other);
      // Small bodies stay in memory and are echoed as before.
      CHECK(ask(s.port(),
                "POST /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 5\r\n\r\nsmall")
                .body == "small");
      CHECK(deleted_files(worker) == 0);  // each spool file closed after its request
      check_clean_stop(s);
    }
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("prefork-httpd answers Expect: 100-continue only for a handler that reads the body",
          "[httpd][spool]") {
  prefork::test::leak_check leaks;
  for (const char* mode : {"evented", "blocking", "uring"}) {
    if (!mode_runs_here(mode)) continue;
    DYNAMIC_SECTION("-m " << mode) {
      server s({"-m", mode});
      check_mode(s, mode);
      {
        prefork::fd c = connect_to(s.port());
        send_text(c.get(),
                  "POST /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\nExpect: 100-continue\r\n"
                  "Content-Length: 5\r\n\r\n");
        std::string got;
        auto deadline = steady::now() + patience;
        while (got.find("\r\n\r\n") == std::string::npos && read_some_until(c.get(), got, deadline)) {
        }
        CHECK(got == "HTTP/1.1 100 Continue\r\n\r\n");
        send_text(c.get(), "hello");
        std::string rest = read_until_close(c.get());
        CHECK(rest.rfind("HTTP/1.1 200", 0) == 0);
        CHECK(rest.substr(rest.size() - 5) == "hello");
      }
      {
        // /hello reads no body: the final answer comes at once, with no 100.
        prefork::fd c = connect_to(s.port());
        send_text(c.get(),
                  "POST /hello HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
        std::string got = read_until_close(c.get());
        CHECK(got.rfind("HTTP/1.1 405", 0) == 0);
        CHECK(got.find("100 Continue") == std::string::npos);
      }
      check_clean_stop(s);
    }
  }
  CHECK(leaks.problems() == "");
}
