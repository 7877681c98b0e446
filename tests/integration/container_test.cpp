// prefork-httpd as PID 1 of a container.
//
// `unshare --pid --fork --mount-proc` starts the server as PID 1 of a new pid
// namespace, where a container runtime would. PID 1 has two duties beyond
// serving: every process orphaned in the namespace becomes its child, and
// it must reap them or they stay zombies for the life of the container; and
// it must stop cleanly on the runtime's TERM (`docker stop`), since the
// kernel ignores signals PID 1 has no handler for, and kills everything in
// the namespace when it exits.
//
// The orphan is made the way `docker exec` of a daemonizing program makes
// one: a helper enters the namespace (setns, as nsenter does), its child
// forks a grandchild and exits, and the grandchild, reparented to PID 1,
// lives until the test closes its stdin. Needs root (and a kernel that lets
// it create pid namespaces); skipped otherwise.
#include "catch.hpp"

#include <fcntl.h>
#include <sched.h>
#include <sys/wait.h>

#include <climits>

#include "ecosystem_support.hpp"
#include "helpers.hpp"
#include "httpd_support.hpp"
#include "leak_check.hpp"

namespace {

using namespace httpd_test;
using prefork::test::children_of;
using prefork::test::kids;
using prefork::test::parent_of;
using prefork::test::state_of;

const std::string unshare_tool = "/usr/bin/unshare";

// Enters the pid namespace of argv[0] (a host PID) and leaves an orphan in
// it: prints "HOST_PID NS_PID" of the orphan, which exits 0 at the end of
// its stdin.
PREFORK_HELPER(make_orphan) {
  std::string ns = std::string("/proc/") + argv[0] + "/ns/pid";
  int nsfd = ::open(ns.c_str(), O_RDONLY | O_CLOEXEC);
  if (nsfd == -1 || ::setns(nsfd, CLONE_NEWPID) == -1) {
    std::perror(ns.c_str());
    return 1;
  }
  // setns only moves the children to come: fork twice, so the grandchild is
  // in the namespace and its parent there exits, leaving it to PID 1.
  pid_t middle = ::fork();
  if (middle == -1) return 1;
  if (middle == 0) {
    pid_t orphan = ::fork();
    if (orphan == -1) ::_exit(1);
    if (orphan == 0) {
      // Its PID out there: /proc is still the host's (only the pid
      // namespace was entered).
      char self[32] = {};
      if (::readlink("/proc/self", self, sizeof self - 1) <= 0) ::_exit(1);
      std::string line = std::string(self) + " " + std::to_string(::getpid()) + "\n";
      if (::write(1, line.data(), line.size()) != static_cast<ssize_t>(line.size())) ::_exit(1);
      ::close(1);
      char c;
      while (::read(0, &c, 1) > 0) {
      }
      ::_exit(0);
    }
    ::_exit(0);
  }
  int status = 0;
  bool ok = ::waitpid(middle, &status, 0) == middle && WIFEXITED(status) && WEXITSTATUS(status) == 0;
  // _exit, not return: exit handlers may start threads, and a thread of a
  // process whose children go to another pid namespace is refused or lost
  // (LeakSanitizer's exit-time check spins forever here).
  ::_exit(ok ? 0 : 1);
}

// Starts argv with stdin from `in` and stdout to `out` (stderr inherited).
prefork::child start_with(const std::vector<std::string>& argv, int in, int out) {
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::optional<prefork::child> c = prefork::fork();
  if (!c) {
    if (::dup2(in, 0) == -1 || ::dup2(out, 1) == -1) ::_exit(126);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  return std::move(*c);
}

// The "NSpid:" line of /proc/PID/status: the PID in each namespace, the
// host's first.
std::vector<pid_t> ns_pids(pid_t pid) {
  std::string line = prefork::test::status_line(pid, "NSpid:");
  std::istringstream numbers(line.empty() ? "" : line.substr(6));
  std::vector<pid_t> out;
  for (long p; numbers >> p;) out.push_back(static_cast<pid_t>(p));
  return out;
}

}  // namespace

TEST_CASE("httpd as PID 1 of a pid namespace reaps orphans and stops cleanly on TERM", "[container]") {
  if (::geteuid() != 0 || !eco_test::executable(unshare_tool)) {
    WARN("skipped: needs root and " << unshare_tool << " (util-linux) to make a pid namespace");
    return;
  }
  prefork::test::leak_check leaks;
  {
    // --kill-child: should the test kill unshare, the server goes with it.
    server s(std::vector<std::string>{"-l", "127.0.0.1:0", "-w", "2"}, false,
             std::vector<std::string>{unshare_tool, "--pid", "--fork", "--mount-proc", "--kill-child"});
    try {
      s.wait_log("ready: 2 workers serving");
    } catch (const std::exception& e) {
      if (s.log().find("unshare failed") != std::string::npos) {
        WARN("skipped: this system does not let root create a pid namespace:\n" << s.log());
        return;
      }
      FAIL(e.what());
    }
    std::string line = s.wait_log("listening on http://127.0.0.1:", 0);
    const int port = std::stoi(line.substr(line.find("127.0.0.1:") + 10));
    CHECK(line.find("prefork-httpd[1]:") != std::string::npos);

    // unshare's one child is the master: PID 1 inside, some PID outside.
    std::set<pid_t> children = children_of(s.pid(), kids::all);
    REQUIRE(children.size() == 1);
    const pid_t master = *children.begin();
    std::vector<pid_t> names = ns_pids(master);
    REQUIRE(names.size() == 2);
    CHECK(names[1] == 1);
    std::set<pid_t> workers = children_of(master, kids::all);
    CHECK(workers.size() == 2);
    CHECK(get(port, "/hello").body == "Hello, World!");

    // An orphan reparented to the master, still running.
    auto in = prefork::pipe();
    auto out = prefork::pipe();
    prefork::child helper = start_with(prefork::test::helper_argv("make_orphan", {std::to_string(master)}),
                                       in.read.get(), out.write.get());
    in.read.reset();
    out.write.reset();
    std::string said;
    while (said.find('\n') == std::string::npos)
      REQUIRE(read_some_until(out.read.get(), said, steady::now() + patience));
    std::optional<prefork::exit_status> made =
        helper.wait_for(std::chrono::duration_cast<std::chrono::milliseconds>(patience));
    if (!made) {
      helper.kill(SIGKILL);
      helper.wait();
      FAIL("make_orphan did not exit");
    }
    CHECK(made->describe() == "exited 0");
    std::istringstream words(said);
    pid_t orphan = 0, orphan_inside = 0;
    words >> orphan >> orphan_inside;
    REQUIRE(orphan > 0);
    CHECK(parent_of(orphan) == master);
    CHECK(workers.count(orphan) == 0);

    // It exits; the master reaps it (the log says so after waitpid, so by
    // then /proc has no trace of it: not even a zombie).
    in.write.reset();
    s.wait_log("reaped unknown child pid " + std::to_string(orphan_inside) + ": exited 0");
    CHECK(state_of(orphan) == 0);
    CHECK(get(port, "/hello").body == "Hello, World!");

    // docker stop: TERM to PID 1. The master stops its workers itself and
    // exits 0 (unshare passes the status on).
    REQUIRE(::kill(master, SIGTERM) == 0);
    prefork::exit_status st = s.stop(0);
    INFO("server log:\n" << s.log());
    CHECK(st.describe() == "exited 0");
    CHECK(s.log().find("received SIGTERM: quick stop") != std::string::npos);
    CHECK(s.log().find("stop complete") != std::string::npos);
    for (pid_t w : workers) {
      INFO("worker " << w);
      CHECK(state_of(w) == 0);
    }
    CHECK(state_of(master) == 0);
  }
  CHECK(leaks.problems() == "");
}
