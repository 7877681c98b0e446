// examples/atomic_store: the store's rules in one process, 8 writers and 8
// readers with writers SIGKILLed at random moments, and the atomic-store
// command line.
#include "catch.hpp"

#include "atomic_store/atomic_store.hpp"
#include "atomic_store/stress.hpp"

#include <prefork/pipe.hpp>
#include <prefork/process.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>

#include "helpers.hpp"
#include "leak_check.hpp"

namespace fs = std::filesystem;

namespace {

struct temp_dir {
  fs::path path;
  temp_dir() {
    std::string tmpl = (fs::temp_directory_path() / "prefork-store-XXXXXX").string();
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    path = tmpl;
  }
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::set<std::string> names() const {
    std::set<std::string> out;
    for (auto& e : fs::directory_iterator(path)) out.insert(e.path().filename().string());
    return out;
  }
};

struct run_result {
  int code;
  std::string out;
};

// Runs an example program with `input` on stdin; returns its exit code and stdout.
run_result run(std::vector<std::string> argv, const std::string& input = "") {
  auto in = prefork::pipe(), out = prefork::pipe();
  prefork::spawn_options o;
  o.fds = {{in.read.get(), 0}, {out.write.get(), 1}, {2, 2}};
  auto kid = prefork::spawn(argv, o);
  in.read.reset();
  out.write.reset();
  prefork::write_all(in.write.get(), input);
  in.write.reset();
  std::string text = prefork::read_all(out.read.get());
  auto status = kid.wait();
  return {status.exited() ? status.code() : 128 + status.signal(), text};
}

}  // namespace

TEST_CASE("store: put, get, del; binary values; keys cannot leave the directory", "[store]") {
  temp_dir dir;
  atomic_store::store s(dir.path / "cache");  // created
  CHECK_FALSE(s.get("a"));
  s.put("a", "one");
  CHECK(s.get("a") == "one");
  s.put("a", "two");
  CHECK(s.get("a") == "two");
  std::string binary("\0\n\xff\n12\n", 7);
  s.put("bin", binary);
  CHECK(s.get("bin") == binary);
  s.put("", "empty key");
  CHECK(s.get("") == "empty key");
  for (std::string evil :
       std::vector<std::string>{"../../etc/passwd", "/abs", "..", "a/b", std::string("nul\0byte", 8)}) {
    CAPTURE(evil);
    CHECK(s.entry_path(evil).parent_path() == dir.path / "cache");
    CHECK(atomic_store::store::file_name(evil).find_first_not_of("0123456789abcdef") == std::string::npos);
    s.put(evil, "x");
    CHECK(s.get(evil) == "x");
  }
  CHECK(atomic_store::store::file_name("a") != atomic_store::store::file_name("b"));
  CHECK(s.del("a"));
  CHECK_FALSE(s.del("a"));
  CHECK_FALSE(s.get("a"));
  CHECK(fs::is_empty(dir.path) == false);
  CHECK(std::set<std::string>{"cache"} == dir.names());
}

TEST_CASE("store: an entry naming another key (a hash collision) reads as a miss", "[store]") {
  temp_dir dir;
  atomic_store::store s(dir.path);
  s.put("other", "value of other");
  fs::rename(s.entry_path("other"), s.entry_path("mine"));
  CHECK_FALSE(s.get("mine"));
  std::ofstream(s.entry_path("junk")) << "no header";
  CHECK_FALSE(s.get("junk"));
}

TEST_CASE("self-checking values: every change is detected", "[store]") {
  std::string v = atomic_store::make_value(3, 17);
  CHECK(atomic_store::valid_value(v));
  CHECK_FALSE(atomic_store::valid_value(v.substr(0, v.size() - 1)));
  CHECK_FALSE(atomic_store::valid_value(v.substr(0, v.size() / 2)));
  std::string flipped = v;
  flipped[v.size() / 2] ^= 1;
  CHECK_FALSE(atomic_store::valid_value(flipped));
  // Half of one value and half of another: what a torn entry would be.
  std::string other = atomic_store::make_value(4, 18);
  CHECK_FALSE(atomic_store::valid_value(v.substr(0, 50) + other.substr(50)));
  CHECK_FALSE(atomic_store::valid_value(""));
}

TEST_CASE("8 writers and 8 readers on 50 keys, writers SIGKILLed at random: no torn read, no temp left",
          "[store][stress]") {
  prefork::test::leak_check leaks;
  {
    temp_dir dir;
    atomic_store::store s(dir.path);
    atomic_store::stress_options o;
    o.writers = 8;
    o.readers = 8;
    o.keys = 50;
    o.seconds = 2;
    o.kill_writers = true;
    auto report = atomic_store::run_stress(s, o);
    INFO(report.text());
    WARN(report.text());
    CHECK(report.torn == 0);
    CHECK(report.errors == 0);  // a sweep removing a live temp would fail that writer's rename
    CHECK(report.kills > 0);
    CHECK(report.puts > 0);
    CHECK(report.hits > 0);
    CHECK(report.temps_left == 0);
    CHECK(report.bad_entries == 0);
    for (auto& name : dir.names()) CHECK(name[0] != '.');
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("atomic-store command line: put, get, del, sweep, stress", "[store][cli]") {
  prefork::test::leak_check leaks;
  {
    temp_dir dir;
    const std::string bin = prefork::test::bin_path("atomic-store"), d = dir.path.string();
    CHECK(run({bin, d, "put", "greeting"}, "hello\nworld\n").code == 0);
    auto got = run({bin, d, "get", "greeting"});
    CHECK(got.code == 0);
    CHECK(got.out == "hello\nworld\n");
    CHECK(run({bin, d, "get", "nothing"}).code == 1);
    CHECK(run({bin, d, "del", "greeting"}).code == 0);
    CHECK(run({bin, d, "del", "greeting"}).code == 1);
    std::ofstream(dir.path / ".x.tmp.1.0123456789abcdef") << "left by a dead writer";
    auto swept = run({bin, d, "sweep"});
    CHECK(swept.out == "1 stale temp files removed\n");
    CHECK(run({bin, d, "frobnicate"}).code == 2);
    auto stress =
        run({bin, d, "stress", "--writers", "3", "--readers", "3", "--seconds", "1", "--kill-writers"});
    INFO(stress.out);
    CHECK(stress.code == 0);
    CHECK_THAT(stress.out,
               Catch::Contains(" 0 torn") && Catch::Contains("puts (") && Catch::EndsWith("OK\n"));
  }
  CHECK(leaks.problems() == "");
}
