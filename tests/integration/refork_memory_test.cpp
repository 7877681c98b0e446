// What refork saves, measured (issue 19): examples/refork's workers each
// build a 64 MiB table on their first request. Four workers forked from the
// master hold four copies; forked from a warm mold, they share its one. The
// workers' Pss (and the mold's) comes from /proc/PID/smaps_rollup. A client
// loop runs through the refork: no request may fail.
#include <sys/prctl.h>

#include <cstdio>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <prefork/proc_memory.hpp>

#include "catch.hpp"
#include "httpd_support.hpp"
#include "leak_check.hpp"
#include "proc.hpp"

using namespace httpd_test;

namespace {

constexpr double mib = 1024.0 * 1024.0;

// prefork-refork, its banner on stdout and its log on stderr.
class refork_server {
 public:
  explicit refork_server(std::vector<std::string> args) {
    args.insert(args.begin(), prefork::test::bin_path("prefork-refork"));
    auto out = prefork::pipe();
    auto err = prefork::pipe();
    proc_.emplace(start_process(args, out.write.get(), err.write.get()));
    out_ = std::move(out.read);
    err_ = std::move(err.read);
    std::string banner;
    auto deadline = steady::now() + patience;
    while (banner.find('\n') == std::string::npos)
      if (!read_some_until(out_.get(), banner, deadline)) FAIL("no banner; got: " << banner);
    REQUIRE(banner.rfind("listening on ", 0) == 0);
    address = banner.substr(13, banner.find('\n') - 13);
  }
  ~refork_server() {
    if (!proc_->status()) {
      std::error_code ec;
      proc_->kill(SIGKILL, ec);
      proc_->wait();
    }
  }

  // Waits for the n-th log line (counted from the start) holding `needle`.
  std::string wait_log(const std::string& needle, std::size_t n = 1) {
    auto deadline = steady::now() + patience;
    for (;;) {
      std::size_t seen = 0, at = 0;
      for (std::size_t hit; (hit = log_.find(needle, at)) != std::string::npos; at = hit + 1)
        if (++seen == n) {
          std::size_t start = log_.rfind('\n', hit);
          start = start == std::string::npos ? 0 : start + 1;
          return log_.substr(start, log_.find('\n', hit) - start);
        }
      if (!read_some_until(err_.get(), log_, deadline)) FAIL("no \"" << needle << "\" in the log:\n" << log_);
    }
  }
  // True if `needle` is in what the log has said so far (without waiting).
  bool said(const std::string& needle) {
    while (read_some_until(err_.get(), log_, steady::now())) {
    }
    return log_.find(needle) != std::string::npos;
  }

  pid_t pid() const { return proc_->pid(); }

  void quit() {
    ::kill(pid(), SIGQUIT);
    auto status = proc_->wait_for(std::chrono::duration_cast<std::chrono::milliseconds>(patience));
    REQUIRE(status);
    CHECK(status->describe() == "exited 0");
  }

  std::string address;

 private:
  std::optional<prefork::child> proc_;
  prefork::fd out_, err_;
  std::string log_;
};

// What the server says up to its first newline (or its close, or the deadline).
std::string read_until_close_or_line(int fd) {
  std::string out;
  auto deadline = steady::now() + patience;
  while (out.find('\n') == std::string::npos)
    if (!read_some_until(fd, out, deadline)) break;
  return out;
}

// One request on a connection of its own: the answering worker's pid, or 0
// when the request failed (no answer, a short one).
pid_t one_request(const std::string& address, unsigned k) {
  try {
    prefork::fd c = prefork::connect(address);
    send_text(c.get(), "get " + std::to_string(k) + "\n");
    std::string reply = read_until_close_or_line(c.get());
    if (reply.empty() || reply.back() != '\n') return 0;
    return static_cast<pid_t>(std::stol(reply));
  } catch (const std::exception&) {
    return 0;
  }
}

// Four connections at once, each served by a different worker (a worker
// takes one connection at a time): every worker has built its table.
std::set<pid_t> warm_every_worker(const std::string& address) {
  std::vector<prefork::fd> conns;
  for (int i = 0; i < 4; ++i) conns.push_back(prefork::connect(address));
  std::set<pid_t> pids;
  for (auto& c : conns) {
    send_text(c.get(), "get 7\n");
    std::string reply = read_until_close_or_line(c.get());
    REQUIRE(!reply.empty());
    pids.insert(static_cast<pid_t>(std::stol(reply)));
  }
  return pids;
}

struct pool_memory {
  std::uint64_t workers_pss = 0, workers_rss = 0, mold_pss = 0;
  std::size_t workers = 0;
};

// Sums the Pss and Rss of the master's children; the mold apart.
pool_memory measure(pid_t master, pid_t mold) {
  pool_memory m;
  for (pid_t child : prefork::test::children_of(master)) {
    prefork::process_memory got = prefork::read_process_memory(child);
    if (child == mold) {
      m.mold_pss = got.pss;
      continue;
    }
    m.workers_pss += got.pss;
    m.workers_rss += got.rss;
    ++m.workers;
  }
  return m;
}

pid_t pid_in(const std::string& line) {
  auto at = line.find("(pid ");
  REQUIRE(at != std::string::npos);
  return static_cast<pid_t>(std::stol(line.substr(at + 5)));
}

}  // namespace

TEST_CASE("refork: four warm workers forked from the mold hold at most 0.4x the memory of four cold ones",
          "[refork][memory]") {
  prefork::test::leak_check leaks;
  pool_memory cold, warm;
  {
    refork_server s({"--listen", "127.0.0.1:0", "--workers", "4", "--table-mib", "64"});
    for (int i = 0; i < 4; ++i) s.wait_log(") ready", static_cast<std::size_t>(i + 1));
    CHECK(warm_every_worker(s.address).size() == 4);
    cold = measure(s.pid(), 0);
    s.quit();
  }
  std::size_t served = 0, failed = 0;
  std::string took;
  {
    refork_server s(
        {"--listen", "127.0.0.1:0", "--workers", "4", "--table-mib", "64", "--refork-after", "50"});
    for (int i = 0; i < 4; ++i) s.wait_log(") ready", static_cast<std::size_t>(i + 1));
    CHECK(warm_every_worker(s.address).size() == 4);
    // A client loop from before the promotion until the new generation
    // serves alone.
    auto deadline = steady::now() + patience;
    for (unsigned k = 0; !s.said("refork complete") && steady::now() < deadline; ++k) {
      ++served;
      if (one_request(s.address, k) == 0) ++failed;
    }
    took = s.wait_log("refork complete");
    pid_t mold = pid_in(s.wait_log("is the mold of generation 2"));
    std::set<pid_t> fresh = warm_every_worker(s.address);  // the new workers read their inherited table
    CHECK(fresh.size() == 4);
    CHECK(fresh.count(mold) == 0);
    warm = measure(s.pid(), mold);
    s.quit();
  }
  CHECK(failed == 0);
  CHECK(cold.workers == 4);
  CHECK(warm.workers == 4);
  const double ratio =
      static_cast<double>(warm.workers_pss + warm.mold_pss) / static_cast<double>(cold.workers_pss);
  std::printf(
      "refork memory: 4 workers from the master: Pss %.1f MiB (Rss %.1f MiB); 4 workers from the mold: "
      "Pss %.1f MiB (Rss %.1f MiB) + the mold's Pss %.1f MiB; ratio with the mold %.2f, workers alone %.2f\n"
      "refork: %zu requests during the refork, %zu failed; %s\n",
      static_cast<double>(cold.workers_pss) / mib, static_cast<double>(cold.workers_rss) / mib,
      static_cast<double>(warm.workers_pss) / mib, static_cast<double>(warm.workers_rss) / mib,
      static_cast<double>(warm.mold_pss) / mib, ratio,
      static_cast<double>(warm.workers_pss) / static_cast<double>(cold.workers_pss), served, failed,
      took.c_str());
  std::fflush(stdout);
  CHECK(ratio <= 0.4);
  CHECK(leaks.problems() == "");
}
