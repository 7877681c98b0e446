// prefork-kv's GETs come from each worker's cache (atomic_store::find): once
// a PUT or DELETE is answered, every worker, of this master or of another
// on the same DIR, or of the new master of an upgrade, serves the new state,
// whole, with one ETag.
#include <sys/syscall.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <thread>

#include "atomic_store/atomic_store.hpp"
#include "catch.hpp"
#include "httpd_support.hpp"
#include "leak_check.hpp"

using namespace httpd_test;
namespace fs = std::filesystem;

namespace {

struct temp_dir {
  fs::path path = fs::temp_directory_path() / ("prefork-kv-cache-test-" + std::to_string(::getpid()));
  temp_dir() {
    fs::remove_all(path);
    fs::create_directories(path / "data");
  }
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

server start_kv(const temp_dir& dir, std::vector<std::string> args) {
  args.insert(args.end(), {"--keepalive-timeout", "60", (dir.path / "data").string()});
  return server(args, true, {}, "prefork-kv");
}

response put(int port, std::string_view name, std::string_view value) {
  return ask(port, "PUT /k/" + std::string(name) +
                       " HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: " +
                       std::to_string(value.size()) + "\r\n\r\n" + std::string(value));
}

response del(int port, std::string_view name) {
  return ask(port, "DELETE /k/" + std::string(name) + " HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
}

// A kept-alive connection, and the worker at its other end; or, with
// `port` set, a new connection for each request (blocking workers close
// after one), to whichever worker takes it.
struct conn {
  prefork::fd fd;
  std::string pending;
  pid_t worker = 0;
  int port = 0;

  response get(std::string_view target) {
    if (port) return httpd_test::get(port, target);
    send_text(fd.get(), "GET " + std::string(target) + " HTTP/1.1\r\nHost: t\r\n\r\n");
    return read_response(fd.get(), pending);
  }
};

// Kept-alive connections, one to each of `workers` workers (a worker says
// who it is in /_status). The server needs --reuseport: on one shared
// socket, a single evented worker may well accept every connection.
std::vector<conn> one_per_worker(int port, std::size_t workers) {
  std::map<pid_t, conn> by_worker;
  for (int tries = 0; by_worker.size() < workers && tries < 200; ++tries) {
    conn c{connect_to(port), {}, 0, 0};
    std::string status = c.get("/_status?format=json").body;
    std::size_t at = status.find("\"self_pid\":");
    REQUIRE(at != std::string::npos);
    c.worker = std::stoi(status.substr(at + 11));
    by_worker.emplace(c.worker, std::move(c));  // a second one to a worker is closed
  }
  REQUIRE(by_worker.size() == workers);
  std::vector<conn> out;
  for (auto& [pid, c] : by_worker) out.push_back(std::move(c));
  return out;
}

// What the readers saw that they should not have.
struct faults {
  int stale = 0, torn = 0, etags = 0, errors = 0;
  std::string first;  // the first one, for the failure message
  void note(int& counter, const std::string& what) {
    if (stale + torn + etags + errors == 0) first = what;
    ++counter;
  }
};

// Every reader GETs `name`: each must answer `want` (nullopt: 404), all with
// one ETag, which must differ from `previous_etag`; returns that ETag.
std::string all_see(std::vector<conn*>& readers, const std::string& name,
                    const std::optional<std::string>& want, const std::string& previous_etag, faults& f) {
  std::string etag;
  for (conn* r : readers) {
    response got = r->get("/k/" + name);
    const std::string who = "worker " + std::to_string(r->worker) + ", " + name + ": ";
    if (!want) {
      if (got.status != 404)
        f.note(f.stale, who + "status " + std::to_string(got.status) + " after the DELETE");
      continue;
    }
    if (got.status != 200 || got.body != *want) {
      f.note(f.stale, who + "got '" + got.body.substr(0, 40) + "', want '" + want->substr(0, 40) + "'");
      continue;
    }
    if (etag.empty()) etag = got.header("etag");
    if (got.header("etag") != etag || etag == previous_etag)
      f.note(f.etags, who + "ETag " + got.header("etag"));
  }
  return etag;
}

}  // namespace

TEST_CASE("prefork-kv: once a PUT or DELETE is answered, every worker serves the new value", "[kv][cache]") {
  for (const char* mode : {"evented", "blocking"}) {
    DYNAMIC_SECTION("-m " << mode) {
      prefork::test::leak_check leaks;
      temp_dir dir;
      {
        server s = start_kv(dir, {"-m", mode, "-w", "2", "--reuseport"});
        // Evented: a connection held to each worker. Blocking workers close
        // after each answer: ten new connections, to either worker.
        std::vector<conn> held;
        if (mode == std::string("evented"))
          held = one_per_worker(s.port(), 2);
        else
          for (int i = 0; i < 10; ++i) held.push_back(conn{prefork::fd(), {}, 0, s.port()});
        std::vector<conn*> readers;
        for (conn& c : held) readers.push_back(&c);
        faults f;
        std::string etag;
        for (int n = 0; n < 60; ++n) {
          const std::string value =
              "value " + std::to_string(n) + std::string(static_cast<std::size_t>(n) * 37, 'v');
          REQUIRE(put(s.port(), "k", value).status == 204);
          etag = all_see(readers, "k", value, etag, f);  // each worker had the previous one cached
        }
        REQUIRE(del(s.port(), "k").status == 204);
        all_see(readers, "k", std::nullopt, "", f);
        REQUIRE(put(s.port(), "k", "back").status == 204);
        all_see(readers, "k", std::string("back"), etag, f);
        INFO(f.first);
        CHECK(f.stale == 0);
        CHECK(f.etags == 0);
        check_clean_stop(s);
      }
      CHECK(leaks.problems() == "");
    }
  }
}

TEST_CASE("prefork-kv: concurrent PUTs and GETs: no GET older than the last answered PUT, none torn",
          "[kv][cache]") {
  prefork::test::leak_check leaks;
  temp_dir dir;
  {
    server s = start_kv(dir, {"-w", "2", "--reuseport"});
    std::vector<conn> readers = one_per_worker(s.port(), 2);
    constexpr unsigned writers = 2, puts_each = 100;
    // acked[w]: the last sequence number of writer w whose PUT was answered.
    std::atomic<std::uint64_t> acked[writers] = {};
    std::atomic<unsigned> writing{writers}, failed{0}, reads{0};
    std::mutex m;
    faults f;
    std::vector<std::thread> threads;
    for (unsigned w = 0; w < writers; ++w)
      threads.emplace_back([&, w] {
        for (std::uint64_t seq = 1; seq <= puts_each; ++seq) {
          try {
            if (put(s.port(), "key" + std::to_string(w), atomic_store::make_value(w, seq)).status == 204)
              acked[w] = seq;
            else
              ++failed;
          } catch (const std::exception&) {
            ++failed;
          }
        }
        --writing;
      });
    for (conn& r : readers)
      threads.emplace_back([&, r = &r] {
        try {
          for (unsigned n = 0; writing > 0 || n < 20; ++n) {
            const unsigned w = n % writers;
            const std::uint64_t at_least = acked[w];  // read before the GET is sent
            response got = r->get("/k/key" + std::to_string(w));
            ++reads;
            unsigned writer = 0;
            unsigned long long seq = 0;
            std::lock_guard<std::mutex> lock(m);
            if (got.status == 404 && at_least == 0) continue;  // not written yet
            if (got.status != 200 || !atomic_store::valid_value(got.body))
              f.note(f.torn, "torn: status " + std::to_string(got.status) + ", " + got.body.substr(0, 40));
            else if (std::sscanf(got.body.c_str(), "w%u s%llu ", &writer, &seq) != 2 || writer != w ||
                     seq < at_least)
              f.note(f.stale, "worker " + std::to_string(r->worker) + ": s" + std::to_string(seq) +
                                  " after s" + std::to_string(at_least) + " was answered");
          }
        } catch (const std::exception& e) {
          std::lock_guard<std::mutex> lock(m);
          f.note(f.errors, e.what());
        }
      });
    for (auto& t : threads) t.join();
    INFO(f.first << "\nserver log:\n" << s.log());
    CHECK(failed == 0);
    CHECK(f.torn == 0);
    CHECK(f.stale == 0);
    CHECK(f.errors == 0);
    CHECK(reads >= 100);
    check_clean_stop(s);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("prefork-kv: two servers on one DIR see each other's PUTs and DELETEs at once", "[kv][cache]") {
  prefork::test::leak_check leaks;
  temp_dir dir;
  {
    server a = start_kv(dir, {"-w", "2", "--reuseport"});
    server b = start_kv(dir, {"-w", "2", "--reuseport"});
    std::vector<conn> held_a = one_per_worker(a.port(), 2), held_b = one_per_worker(b.port(), 2);
    std::vector<conn*> readers;
    for (auto* held : {&held_a, &held_b})
      for (conn& c : *held) readers.push_back(&c);
    faults f;
    std::string etag;
    for (int n = 0; n < 40; ++n) {
      const std::string value = "value " + std::to_string(n);
      REQUIRE(put((n % 2 ? a : b).port(), "k", value).status == 204);
      etag = all_see(readers, "k", value, etag, f);
    }
    REQUIRE(del(a.port(), "k").status == 204);
    all_see(readers, "k", std::nullopt, "", f);
    INFO(f.first);
    CHECK(f.stale == 0);
    CHECK(f.etags == 0);
    check_clean_stop(a);
    check_clean_stop(b);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("prefork-kv: a fork_exec upgrade under PUTs and GETs loses nothing and serves no stale value",
          "[kv][cache][upgrade]") {
  prefork::test::leak_check leaks;
  temp_dir dir;
  const fs::path pid_path = dir.path / "kv.pid";
  {
    server s = start_kv(
        dir, {"-w", "2", "--upgrade", "fork-exec", "--graceful-timeout", "5", "-P", pid_path.string()});
    const pid_t old_master = s.pid();
    REQUIRE(read_pid(pid_path) == old_master);
    REQUIRE(put(s.port(), "before", "written before the upgrade").status == 204);
    // Each PUT, then a GET on a new connection (to any worker of either
    // master while both serve) that must see it.
    std::atomic<bool> stop{false};
    std::atomic<int> done{0}, failed{0};
    std::string first_failure;
    std::thread load([&] {
      for (int n = 0; !stop; ++n) {
        const std::string value = "v" + std::to_string(n);
        try {
          response p = put(s.port(), "k", value);
          response g = get(s.port(), "/k/k");
          if (p.status == 204 && g.status == 200 && g.body == value) {
            ++done;
            continue;
          }
          if (failed++ == 0) first_failure = "PUT " + std::to_string(p.status) + ", GET " + g.body;
        } catch (const std::exception& e) {
          if (failed++ == 0) first_failure = e.what();
        }
      }
    });
    auto wait_for_more = [&](int more) {
      const int target = done + more;
      const auto deadline = steady::now() + patience;
      while (done < target && failed == 0 && steady::now() < deadline) std::this_thread::yield();
    };
    wait_for_more(20);
    s.signal(SIGUSR2);
    // The new master starts its workers, then QUITs the old one, which
    // drains and exits 0.
    auto old_status = s.process().wait_for(std::chrono::duration_cast<std::chrono::milliseconds>(patience));
    REQUIRE(old_status);
    CHECK(old_status->describe() == "exited 0");
    wait_for_more(20);
    stop = true;
    load.join();
    const pid_t new_master = read_pid(pid_path);
    INFO(first_failure << "\nserver log:\n" << s.log());
    CHECK(failed == 0);
    CHECK(done >= 40);
    CHECK(new_master != old_master);
    CHECK(get(s.port(), "/k/before").body == "written before the upgrade");
    REQUIRE(put(s.port(), "after", "written through the new master").status == 204);
    CHECK(get(s.port(), "/k/after").body == "written through the new master");
    REQUIRE(new_master > 0);
    REQUIRE(::kill(new_master, SIGQUIT) == 0);
    CHECK(gone_within(new_master, patience));
  }
  CHECK(leaks.problems() == "");
}
