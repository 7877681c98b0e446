// prefork-httpd --refork-after: a warm worker becomes the mold, the next
// workers are forked from it, and /_status shows each worker's generation,
// whether it is the mold, and its Pss and Rss.
#include <signal.h>

#include <string>

#include "catch.hpp"
#include "httpd_support.hpp"
#include "leak_check.hpp"

using namespace httpd_test;

namespace {

// The JSON object of /_status's worker row that holds `needle`, or "".
std::string row_with(const std::string& json, const std::string& needle) {
  for (auto row = json.find("{\"index\":"); row != std::string::npos;
       row = json.find("{\"index\":", row + 1)) {
    std::string one = json.substr(row, json.find('}', row) - row + 1);
    if (one.find(needle) != std::string::npos) return one;
  }
  return "";
}

}  // namespace

TEST_CASE("prefork-httpd --refork-after: the mold in /_status, and the new generation serves",
          "[httpd][refork]") {
  prefork::test::leak_check leaks;
  for (const char* mode : {"evented", "blocking"}) {
    INFO("mode " << mode);
    server s({"-w", "2", "-m", mode, "--refork-after", "5,1000"});
    for (int i = 0; i < 12 && s.log().find("is the mold of generation 2") == std::string::npos; ++i)
      CHECK(get(s.port(), "/hello").status == 200);
    s.wait_log("is the mold of generation 2", 0);
    s.wait_log("refork complete: generation 2 of 2 workers", 0);
    std::string json = get(s.port(), "/_status?format=json").body;
    INFO(json);
    std::string mold = row_with(json, "\"mold\":true");
    REQUIRE(!mold.empty());
    CHECK(mold.find("\"state\":\"mold\"") != std::string::npos);
    CHECK(mold.find("\"pss_bytes\":null") == std::string::npos);
    std::string worker = row_with(json, "\"generation\":2");
    REQUIRE(!worker.empty());
    CHECK(worker.find("\"mold\":false") != std::string::npos);
    CHECK(worker.find("\"pss_bytes\":null") == std::string::npos);
    CHECK(worker.find("\"rss_bytes\":null") == std::string::npos);
    for (int i = 0; i < 5; ++i) CHECK(get(s.port(), "/hello").status == 200);
    check_clean_stop(s);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("prefork-httpd --refork-after refuses a count of 0 or a bad list", "[httpd][refork]") {
  for (const char* bad : {"0", "5,,6", "x", ""}) {
    command_result r =
        run({prefork::test::bin_path("prefork-httpd"), "--check", "--refork-after", bad}, true);
    INFO(bad << ": " << r.out);
    CHECK(r.code == 2);
  }
}

TEST_CASE("prefork-httpd --refork-after with an in-place upgrade: the mold is replaced with the rest",
          "[httpd][refork][upgrade]") {
  prefork::test::leak_check leaks;
  {
    server s({"-w", "2", "--refork-after", "5", "--upgrade", "in-place", "--graceful-timeout", "5"});
    for (int i = 0; i < 12 && s.log().find("is the mold of generation 2") == std::string::npos; ++i)
      CHECK(get(s.port(), "/hello").status == 200);
    std::string line = s.wait_log("is the mold of generation 2", 0);
    const std::string mold =
        line.substr(line.find("(pid ") + 5, line.find(')', line.find("(pid ")) - line.find("(pid ") - 5);
    s.wait_log("refork complete", 0);
    s.signal(SIGUSR2);
    s.wait_log("upgrade 1 complete", 0);
    s.wait_log("(pid " + mold + ", generation 1) exited 0",
               0);  // the old image's mold, stopped by the new one
    for (int i = 0; i < 5; ++i) CHECK(get(s.port(), "/hello").status == 200);
    check_clean_stop(s);
  }
  CHECK(leaks.problems() == "");
}
