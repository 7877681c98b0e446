// examples/atomic_store's cache: find() serves small values from memory
// until a put or del anywhere on the directory moves DIR/generation; the
// counter file is created once however many processes race to; versions
// name values (the ETag) across stores; large values come as a file.
#include "catch.hpp"

#include "atomic_store/atomic_store.hpp"

#include <prefork/pipe.hpp>
#include <prefork/process.hpp>

#include <sys/stat.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>

#include "leak_check.hpp"

namespace fs = std::filesystem;

namespace {

struct temp_dir {
  fs::path path;
  temp_dir() {
    std::string tmpl = (fs::temp_directory_path() / "prefork-store-cache-XXXXXX").string();
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    path = tmpl;
  }
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

// The value find() gives, from memory or from the file it opened.
std::string value_of(atomic_store::store& s, std::string_view key) {
  auto f = s.find(key);
  if (!f) return "(none)";
  if (!f->file) return std::string(f->value);
  std::string v(f->length, '\0');
  if (::pread(f->file.get(), &v[0], v.size(), f->offset) != static_cast<ssize_t>(v.size())) return "(short)";
  return v;
}

std::string etag_of(atomic_store::store& s, std::string_view key) {
  auto f = s.find(key);
  return f ? std::string(f->etag) : "(none)";
}

// Dropped only by writes, so a test can tell a value served from memory.
atomic_store::cache_limits no_expiry() {
  atomic_store::cache_limits l;
  l.max_age = 0;
  return l;
}

std::uint64_t generation(const fs::path& dir) {
  std::ifstream in(dir / "generation", std::ios::binary);
  std::uint64_t g = 0;
  in.read(reinterpret_cast<char*>(&g), sizeof g);
  return g;
}

}  // namespace

TEST_CASE("store cache: served from memory until a write anywhere on the directory", "[store][cache]") {
  temp_dir dir;
  atomic_store::store reader(dir.path, no_expiry()), writer(dir.path);
  REQUIRE(reader.caching());
  writer.put("k", "one");
  writer.put("other", "x");
  CHECK(value_of(reader, "k") == "one");
  // Removed behind the store's back (no bump): the cached value is still
  // served, so it comes from memory, not from the file.
  fs::remove(reader.entry_path("k"));
  CHECK(value_of(reader, "k") == "one");
  // Any write through any store moves the counter: the cache is dropped.
  writer.put("other", "y");
  CHECK(value_of(reader, "k") == "(none)");
  writer.put("k", "two");
  CHECK(value_of(reader, "k") == "two");
  writer.put("k", "three");
  CHECK(value_of(reader, "k") == "three");
  CHECK(writer.del("k"));
  CHECK(value_of(reader, "k") == "(none)");
  CHECK_FALSE(writer.del("k"));
  // Each put and del (even of a missing key) added one.
  CHECK(generation(dir.path) == 7);
  // The counter is not an entry: the listing does not show it.
  CHECK(reader.keys() == std::vector<std::string>{"other"});
}

TEST_CASE("store cache: a store in another process sees this one's writes at once, and back",
          "[store][cache]") {
  prefork::test::leak_check leaks;
  {
    temp_dir dir;
    atomic_store::store here(dir.path);
    here.put("k", "from parent 0");
    auto to_child = prefork::pipe(), to_parent = prefork::pipe();
    auto kid = prefork::fork();
    if (!kid) {
      // The child's own store: its own mapping of the counter, its own cache.
      int code = 0;
      try {
        atomic_store::store there(dir.path);
        for (int n = 0; n < 50; ++n) {
          char go;
          if (::read(to_child.read.get(), &go, 1) != 1) ::_exit(3);
          if (value_of(there, "k") != "from parent " + std::to_string(n)) code = 1;
          there.put("k", "from child " + std::to_string(n));
          prefork::write_all(to_parent.write.get(), "w", 1);
        }
      } catch (...) {
        code = 2;
      }
      ::_exit(code);
    }
    int wrong = 0;
    for (int n = 0; n < 50; ++n) {
      if (n > 0) here.put("k", "from parent " + std::to_string(n));
      prefork::write_all(to_child.write.get(), "g", 1);
      char done;
      REQUIRE(::read(to_parent.read.get(), &done, 1) == 1);
      if (value_of(here, "k") != "from child " + std::to_string(n)) ++wrong;
    }
    CHECK(wrong == 0);
    CHECK(kid->wait().describe() == "exited 0");
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("store cache: processes racing to create the counter all map one file", "[store][cache]") {
  prefork::test::leak_check leaks;
  {
    temp_dir dir;
    const fs::path fresh = dir.path / "fresh";
    constexpr int kids = 8, puts_each = 10;
    auto start = prefork::pipe();
    std::vector<prefork::child> children;
    for (int k = 0; k < kids; ++k) {
      auto kid = prefork::fork();
      if (!kid) {
        start.write.reset();
        char go;
        (void)!::read(start.read.get(), &go, 1);  // all at once: EOF when the parent closes
        try {
          atomic_store::store s(fresh);
          if (!s.caching()) ::_exit(1);
          for (int n = 0; n < puts_each; ++n) s.put("key" + std::to_string(k), std::to_string(n));
        } catch (...) {
          ::_exit(2);
        }
        ::_exit(0);
      }
      children.push_back(std::move(*kid));
    }
    start.write.reset();
    for (auto& c : children) CHECK(c.wait().describe() == "exited 0");
    // Every put of every process landed in the one counter.
    CHECK(generation(fresh) == kids * puts_each);
    CHECK(fs::file_size(fresh / "generation") == sizeof(std::uint64_t));
    std::set<std::string> names;
    for (auto& e : fs::directory_iterator(fresh)) names.insert(e.path().filename().string());
    CHECK(names.size() == kids + 1);  // the entries and the counter: no temp file left
    CHECK(names.count("generation") == 1);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("store cache: the counter takes the directory's permission bits, whatever the umask",
          "[store][cache]") {
  temp_dir dir;
  mode_t old_mask = ::umask(077);
  for (mode_t mode : {0700, 0750, 0775, 0777}) {
    CAPTURE(mode);
    const fs::path d = dir.path / std::to_string(mode);
    fs::create_directory(d);
    REQUIRE(::chmod(d.c_str(), mode) == 0);
    atomic_store::store s(d);
    struct stat st {};
    REQUIRE(::stat((d / "generation").c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == (mode & 0666));
  }
  ::umask(old_mask);
}

TEST_CASE("store cache: a process that cannot write the counter caches nothing and may not write",
          "[store][cache]") {
  temp_dir dir;
  atomic_store::store owner(dir.path);
  owner.put("k", "v");
  if (::geteuid() == 0) {
    WARN("root writes any file: the read-only case is not testable here");
    return;
  }
  REQUIRE(::chmod((dir.path / "generation").c_str(), 0444) == 0);
  atomic_store::store guest(dir.path);
  CHECK_FALSE(guest.caching());
  CHECK(value_of(guest, "k") == "v");
  CHECK_THROWS_AS(guest.put("k", "w"), std::system_error);
  CHECK_THROWS_AS(guest.del("k"), std::system_error);
  CHECK(owner.get("k") == "v");
}

TEST_CASE("store cache: the ETag names the value, the same in every store, new with every put",
          "[store][cache]") {
  temp_dir dir;
  atomic_store::store a(dir.path), b(dir.path);
  a.put("k", "same");
  const std::string first = etag_of(a, "k");
  CHECK(first.size() == 18);  // "\"" 16 hex digits "\""
  CHECK(etag_of(b, "k") == first);
  CHECK(etag_of(a, "k") == first);
  std::set<std::string> seen{first};
  for (int n = 0; n < 20; ++n) {
    b.put("k", "same");  // the same bytes, but a new value: a new ETag
    CHECK(seen.insert(etag_of(a, "k")).second);
    CHECK(etag_of(b, "k") == etag_of(a, "k"));
  }
  // An entry written before versions (no version in its header) is read,
  // with an ETag from its inode and mtime.
  std::ofstream(a.entry_path("old"), std::ios::binary) << "3\noldvalue";
  a.put("bump", "");
  CHECK(value_of(a, "old") == "value");
  CHECK(etag_of(a, "old").find('-') != std::string::npos);
  CHECK(a.get("old") == "value");
  // Not an entry, or another key's: a miss.
  std::ofstream(a.entry_path("junk"), std::ios::binary) << "x\nnot an entry";
  std::ofstream(a.entry_path("bad"), std::ios::binary) << "3 zz\nbadvalue";
  a.put("bump", "");
  CHECK(value_of(a, "junk") == "(none)");
  CHECK(value_of(a, "bad") == "(none)");
}

TEST_CASE("store cache: large values come as a file; the cache stays within its bytes", "[store][cache]") {
  temp_dir dir;
  atomic_store::cache_limits limits = no_expiry();
  limits.value_bytes = 1000;
  limits.total_bytes = 10 * 1000;
  atomic_store::store s(dir.path, limits);
  const std::string big(5000, 'b'), small(900, 's');
  s.put("big", big);
  auto f = s.find("big");
  REQUIRE(f);
  CHECK(f->file);
  CHECK(value_of(s, "big") == big);
  CHECK(s.get("big") == big);
  // A long key: the header read grows to take it (and the value comes as a file).
  const std::string long_key(6000, 'k');
  s.put(long_key, "v");
  CHECK(value_of(s, long_key) == "v");
  CHECK(s.keys().size() == 2);
  // 30 small values through a cache of about 10: the first are evicted, so
  // once their files are gone (behind the store's back) some are misses,
  // while the last one read is still served from memory.
  for (int n = 0; n < 30; ++n) s.put("s" + std::to_string(n), small);
  for (int n = 0; n < 30; ++n) CHECK(value_of(s, "s" + std::to_string(n)) == small);
  for (int n = 0; n < 30; ++n) fs::remove(s.entry_path("s" + std::to_string(n)));
  int cached = 0;
  for (int n = 0; n < 30; ++n) cached += value_of(s, "s" + std::to_string(n)) == small;
  CHECK(cached > 0);
  CHECK(cached <= 10);
}
