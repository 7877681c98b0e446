// bench_refork: what refork saves and costs, printed, never judged.
//
//   memory   prefork-refork (examples/refork) with 4 workers that each build
//            a 64 MiB table on their first request: the sum of the workers'
//            Pss and Rss (/proc/PID/smaps_rollup) once every worker has
//            served, forked from the master, and forked from a warm mold
//            (--refork-after 50), the mold's own Pss apart
//   refork   how long from the choice of the worker to the last old worker
//            replaced (the master's "refork complete" line), and how many
//            requests a client making one connection per request sent
//            meanwhile, and how many failed
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <prefork/pipe.hpp>
#include <prefork/proc_memory.hpp>
#include <prefork/process.hpp>
#include <prefork/socket.hpp>

#include "catch.hpp"
#include "helpers.hpp"
#include "proc.hpp"

namespace {

using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;
constexpr double mib = 1024.0 * 1024.0;

// Appends what `fd` has within the deadline; false at end of file or timeout.
bool read_more(int fd, std::string& out, steady::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - steady::now()).count();
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, static_cast<int>(left < 0 ? 0 : left)) <= 0) return false;
  char buf[8192];
  ssize_t n = ::read(fd, buf, sizeof buf);
  if (n <= 0) return false;
  out.append(buf, static_cast<std::size_t>(n));
  return true;
}

class server {
 public:
  explicit server(std::vector<std::string> args) {
    args.insert(args.begin(), prefork::test::bin_path("prefork-refork"));
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    auto out = prefork::pipe();
    auto err = prefork::pipe();
    std::optional<prefork::child> c = prefork::fork();
    if (!c) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::dup2(out.write.get(), 1) == -1 || ::dup2(err.write.get(), 2) == -1) ::_exit(126);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    proc_.emplace(std::move(*c));
    out_ = std::move(out.read);
    err_ = std::move(err.read);
    std::string banner;
    while (banner.find('\n') == std::string::npos)
      if (!read_more(out_.get(), banner, steady::now() + 20s)) FAIL("no banner from prefork-refork");
    address = banner.substr(13, banner.find('\n') - 13);
    for (std::size_t ready = 0; ready < 4;) ready = count(") ready", 20s);
  }
  ~server() {
    proc_->kill(SIGQUIT);
    if (!proc_->wait_for(20s)) {
      proc_->kill(SIGKILL);
      proc_->wait();
    }
  }
  // Lines with `needle` so far, after waiting up to `wait` for more.
  std::size_t count(const std::string& needle, std::chrono::milliseconds wait = 0ms) {
    read_more(err_.get(), log, steady::now() + wait);
    std::size_t n = 0;
    for (std::size_t at = 0; (at = log.find(needle, at)) != std::string::npos; ++at) ++n;
    return n;
  }
  std::string line_with(const std::string& needle) {
    auto at = log.find(needle);
    if (at == std::string::npos) return "";
    auto bol = log.rfind('\n', at);
    bol = bol == std::string::npos ? 0 : bol + 1;
    return log.substr(bol, log.find('\n', at) - bol);
  }
  pid_t pid() const { return proc_->pid(); }

  std::string address, log;

 private:
  std::optional<prefork::child> proc_;
  prefork::fd out_, err_;
};

std::string ask(int conn, unsigned k) {
  std::string line = "get " + std::to_string(k) + "\n", reply;
  std::error_code ec;
  prefork::write_all(conn, line.data(), line.size(), ec);
  while (reply.find('\n') == std::string::npos)
    if (!read_more(conn, reply, steady::now() + 10s)) return "";
  return reply;
}

// Four connections at once: four different workers each serve one request.
void warm_every_worker(const std::string& address) {
  std::vector<prefork::fd> conns;
  for (int i = 0; i < 4; ++i) conns.push_back(prefork::connect(address));
  for (auto& c : conns) REQUIRE(!ask(c.get(), 7).empty());
}

struct memory {
  double workers_pss = 0, workers_rss = 0, mold_pss = 0;
};

memory measure(pid_t master, pid_t mold) {
  memory m;
  for (pid_t child : prefork::test::children_of(master)) {
    prefork::process_memory got = prefork::read_process_memory(child);
    if (child == mold) {
      m.mold_pss = static_cast<double>(got.pss) / mib;
    } else {
      m.workers_pss += static_cast<double>(got.pss) / mib;
      m.workers_rss += static_cast<double>(got.rss) / mib;
    }
  }
  return m;
}

}  // namespace

TEST_CASE("refork: 4 workers with a lazily built 64 MiB table, from the master and from a warm mold") {
  for (int round = 1; round <= 3; ++round) {
    memory cold, warm;
    {
      server s({"--listen", "127.0.0.1:0", "--workers", "4", "--table-mib", "64"});
      warm_every_worker(s.address);
      cold = measure(s.pid(), 0);
    }
    std::size_t sent = 0, failed = 0;
    std::string done;
    {
      server s({"--listen", "127.0.0.1:0", "--workers", "4", "--table-mib", "64", "--refork-after", "50"});
      warm_every_worker(s.address);
      auto deadline = steady::now() + 30s;
      for (unsigned k = 0; s.count("refork complete") == 0 && steady::now() < deadline; ++k) {
        ++sent;
        try {
          prefork::fd c = prefork::connect(s.address);
          if (ask(c.get(), k).empty()) ++failed;
        } catch (const std::exception&) {
          ++failed;
        }
      }
      done = s.line_with("refork complete");
      std::string mold_line = s.line_with("is the mold of generation 2");
      auto at = mold_line.find("(pid ");
      REQUIRE(at != std::string::npos);
      warm_every_worker(s.address);
      warm = measure(s.pid(), static_cast<pid_t>(std::stol(mold_line.substr(at + 5))));
    }
    std::printf(
        "round %d: from the master: workers Pss %.1f MiB, Rss %.1f MiB | from the mold: workers Pss %.1f "
        "MiB, "
        "Rss %.1f MiB, mold Pss %.1f MiB | total Pss ratio %.2f\n"
        "round %d: %s; %zu requests meanwhile, %zu failed\n",
        round, cold.workers_pss, cold.workers_rss, warm.workers_pss, warm.workers_rss, warm.mold_pss,
        (warm.workers_pss + warm.mold_pss) / cold.workers_pss, round,
        done.empty() ? "no refork complete line" : done.substr(done.find("refork complete")).c_str(), sent,
        failed);
    std::fflush(stdout);
  }
}
