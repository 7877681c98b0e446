// prefork-httpd end to end, the operator's side: the command line, startup
// failures, timeouts, graceful stop in the middle of a request, the heartbeat
// killing a stuck worker, log reopening, --daemonize and --user.
#include <sys/inotify.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "catch.hpp"
#include "httpd_support.hpp"
#include "leak_check.hpp"
#include "proc.hpp"

using namespace httpd_test;

namespace {

using prefork::test::slurp;
using prefork::test::status_number;

std::size_t count_lines(const std::string& text, std::string_view needle = "") {
  std::size_t n = 0;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    if (line.find(needle) != std::string::npos) ++n;
  return n;
}

struct temp_dir {
  std::string path;
  temp_dir() {
    char tmpl[] = "/tmp/prefork-httpd-ops-XXXXXX";
    path = ::mkdtemp(tmpl);
    ::chmod(path.c_str(), 0755);
  }
  ~temp_dir() { std::system(("rm -rf '" + path + "'").c_str()); }
};

command_result httpd(std::vector<std::string> args, bool with_stderr = true) {
  std::vector<std::string> argv{"/bin/sh", "-c", "exec \"$0\" \"$@\" 2>&1",
                                prefork::test::bin_path("prefork-httpd")};
  if (!with_stderr) argv = {prefork::test::bin_path("prefork-httpd")};
  argv.insert(argv.end(), args.begin(), args.end());
  return run(argv);
}

// Waits until `file` holds `count` lines with `needle`, woken by inotify
// whenever something in its directory changes; returns the file's text.
std::string wait_file_lines(const std::string& file, std::string_view needle, std::size_t count) {
  prefork::fd in(::inotify_init1(IN_CLOEXEC | IN_NONBLOCK));
  REQUIRE(in);
  std::string dir = file.substr(0, file.rfind('/'));
  REQUIRE(::inotify_add_watch(in.get(), dir.c_str(), IN_MODIFY | IN_CREATE | IN_MOVED_TO) >= 0);
  auto deadline = steady::now() + patience;
  for (;;) {
    std::string text = slurp(file);
    if (count_lines(text, needle) >= count) return text;
    pollfd p{in.get(), POLLIN, 0};
    if (::poll(&p, 1, ms_left(deadline)) <= 0)
      FAIL("no " << count << " lines with '" << needle << "' in " << file << ":\n" << text);
    char events[4096];
    while (::read(in.get(), events, sizeof events) > 0) {
    }
  }
}

// Waits until the JSON scoreboard shows a worker whose activity holds `what`.
void wait_for_activity(int port, const std::string& what) {
  auto deadline = steady::now() + patience;
  while (get(port, "/_status?format=json").body.find(what) == std::string::npos)
    REQUIRE(steady::now() < deadline);
}

// Listens on 127.0.0.1:0 at fd 3 and execs argv[1] with LISTEN_FDS and
// LISTEN_PID (systemd socket activation) or PREFORK_FDS (an upgrading
// master), as argv[0] says.
PREFORK_HELPER(hand_over_socket) {
  prefork::fd l = prefork::listen("127.0.0.1:0");
  // fd 3 must cross exec: dup2 clears CLOEXEC, but onto itself it does nothing.
  if (l.get() == 3 ? ::fcntl(3, F_SETFD, 0) == -1 : ::dup2(l.get(), 3) == -1) return 1;
  std::string how = argv[0];
  if (how == "systemd") {
    ::setenv("LISTEN_FDS", "1", 1);
    ::setenv("LISTEN_PID", std::to_string(::getpid()).c_str(), 1);
  } else {
    ::setenv("PREFORK_FDS", "3", 1);
  }
  ::execv(argv[1], argv + 1);
  return 127;
}

}  // namespace

TEST_CASE("httpd: inherited sockets are used instead of binding", "[httpd][inherit]") {
  prefork::test::leak_check leaks;
  {
    std::string how = GENERATE(as<std::string>{}, "systemd", "prefork");
    INFO(how);
    // -l is given but must be ignored: the inherited socket is the one.
    server s({"-l", "127.0.0.1:1"}, true, prefork::test::helper_argv("hand_over_socket", {how}));
    CHECK(s.log().find(std::to_string(s.port()) + " (inherited)") != std::string::npos);
    CHECK(get(s.port(), "/hello").body == "Hello, World!");
    check_clean_stop(s);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("httpd: listening on TCP and a unix socket at once", "[httpd][unix]") {
  prefork::test::leak_check leaks;
  {
    temp_dir dir;
    std::string sock = dir.path + "/httpd.sock";
    server s({"-l", "127.0.0.1:0", "-l", "unix:" + sock, "--access-log", "-"});
    s.wait_log("listening on unix:" + sock, 0);
    CHECK(get(s.port(), "/hello?tcp").body == "Hello, World!");
    CHECK(run({"curl", "-sS", "--unix-socket", sock, "http://x/hello?unix"}).out == "Hello, World!");
    // "--access-log -" is standard output; a unix peer has no address: "-".
    std::string access;
    auto deadline = steady::now() + patience;
    while (count_lines(access, "GET /hello?") < 2) REQUIRE(read_some_until(s.stdout_fd(), access, deadline));
    CHECK(access.find("127.0.0.1 - - [") != std::string::npos);
    CHECK(access.find("\n- - - [") != std::string::npos);
    check_clean_stop(s);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("httpd: the command line", "[httpd][cli]") {
  prefork::test::leak_check leaks;
  {
    command_result help = httpd({"--help"});
    CHECK(help.code == 0);
    CHECK(help.out.find("usage: prefork-httpd") == 0);
    CHECK(help.out.find("--keepalive-timeout") != std::string::npos);
    CHECK(httpd({"-V"}).out.find("prefork-httpd ") == 0);

    for (auto bad : std::vector<std::pair<std::vector<std::string>, std::string>>{
             {{"--bogus"}, "--bogus"},
             {{"-w", "zero"}, "-w"},
             {{"--workers=0"}, "--workers"},
             {{"-m", "threaded"}, "-m"},
             {{"--timeout", "-1"}, "--timeout"},
             {{"--header-timeout", "soon"}, "--header-timeout"},
             {{"--max-body", "1k"}, "--max-body"},
             {{"--max-connections", "0"}, "--max-connections"},
             {{"--max-connections", "10001"}, "--max-connections"},
             {{"--upgrade", "sideways"}, "--upgrade"},
             {{"-u", ":wheel"}, "-u"},
             {{"--listen"}, "--listen"},
             {{"a", "b"}, "b"}}) {
      INFO(bad.second);
      command_result r = httpd(bad.first);
      CHECK(r.code == 2);
      CHECK(r.out.find("prefork-httpd: " + bad.second + ": ") == 0);
      CHECK(r.out.find("\nusage: prefork-httpd") != std::string::npos);
      CHECK(count_lines(r.out) == 2);
    }

    temp_dir dir;
    CHECK(httpd({"--check", dir.path}).code == 0);
    CHECK(httpd({"--check", "-l", "127.0.0.1:0", "-l", "unix:" + dir.path + "/s.sock", "-u", "nobody",
                 dir.path})
              .code == 0);
    command_result missing = httpd({"--check", dir.path + "/nope"});
    CHECK(missing.code == 1);
    CHECK(missing.out.find("no such directory") != std::string::npos);
    command_result nouser = httpd({"--check", "-u", "no-such-user-here", dir.path});
    CHECK(nouser.code == 1);
    CHECK(nouser.out.find("no-such-user-here") != std::string::npos);
    CHECK(httpd({"--check", "-l", "127.0.0.1:http-alt-x", dir.path}).code == 1);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("httpd: startup failures name their cause", "[httpd][startup]") {
  prefork::test::leak_check leaks;
  {
    temp_dir dir;
    prefork::fd taken = prefork::listen("127.0.0.1:0");
    std::string addr = prefork::local_address(taken.get());
    command_result in_use = httpd({"-l", addr, dir.path});
    CHECK(in_use.code == 1);
    CHECK(in_use.out.find("Address already in use") != std::string::npos);
    CHECK(in_use.out.find(addr) != std::string::npos);
    CHECK(count_lines(in_use.out) == 1);

    command_result no_root = httpd({"-l", "127.0.0.1:0", dir.path + "/missing"});
    CHECK(no_root.code == 1);
    CHECK(no_root.out.find("missing: no such directory") != std::string::npos);

    // A pid file held by a live master.
    std::string pid_path = dir.path + "/httpd.pid";
    server first({"-P", pid_path, dir.path});
    command_result second = httpd({"-l", "127.0.0.1:0", "-P", pid_path, dir.path});
    CHECK(second.code == 1);
    CHECK(second.out.find(std::to_string(first.pid())) != std::string::npos);
    check_clean_stop(first);
    CHECK(::access(pid_path.c_str(), F_OK) == -1);  // removed on the way out
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("httpd: the header timeout closes silent and slow clients", "[httpd][timeout]") {
  prefork::test::leak_check leaks;
  {
    std::string mode = GENERATE(as<std::string>{}, "blocking", "evented");
    INFO("mode " << mode);
    server s({"-m", mode, "--header-timeout", "0.5"});
    auto start = steady::now();
    prefork::fd silent = connect_to(s.port());
    prefork::fd slow = connect_to(s.port());
    send_text(slow.get(), "GET /hello HTTP/1.1\r\nHost: t\r\n");  // never finished
    std::string got = read_until_close(slow.get(), steady::now() + 10s);
    CHECK(got.find("HTTP/1.1 408 ") == 0);
    CHECK(closed_within(silent.get(), 10s));
    CHECK(steady::now() - start >= 450ms);
    CHECK(steady::now() - start < 5s);
    CHECK(get(s.port(), "/hello").body == "Hello, World!");
    check_clean_stop(s);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("httpd: QUIT lets a request in flight finish", "[httpd][quit]") {
  prefork::test::leak_check leaks;
  {
    std::string mode = GENERATE(as<std::string>{}, "blocking", "evented");
    INFO("mode " << mode);
    server s({"-m", mode});
    prefork::fd c = connect_to(s.port());
    send_text(c.get(), "GET /sleep?ms=700 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    wait_for_activity(s.port(), "/sleep?ms=700");
    s.signal(SIGQUIT);
    std::string all = read_until_close(c.get());
    auto r = parse_response(all, false, true);
    REQUIRE(r);
    CHECK(r->status == 200);
    CHECK(r->body == "slept 700 ms\n");
    check_clean_stop(s);
    CHECK(s.log().find("killed") == std::string::npos);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("httpd: a worker silent past --timeout is killed and replaced", "[httpd][heartbeat]") {
  prefork::test::leak_check leaks;
  {
    server s({"-m", "blocking", "-t", "0.6"});
    std::size_t mark = s.log_mark();
    prefork::fd c = connect_to(s.port());
    send_text(c.get(), "GET /sleep?ms=30000 HTTP/1.1\r\nHost: t\r\n\r\n");
    auto start = steady::now();
    std::string all = read_until_close(c.get());  // the worker dies: no answer, just the close
    CHECK(all.empty());
    CHECK(steady::now() - start < 10s);
    std::string killed = s.wait_log("SIGKILL", mark);
    CHECK(killed.find("/sleep") != std::string::npos);  // the log says what it was doing
    s.wait_log("spawned");
    s.wait_log("ready", mark);
    CHECK(get(s.port(), "/hello").body == "Hello, World!");
    check_clean_stop(s);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("httpd: USR1 reopens the logs without losing a line", "[httpd][usr1]") {
  prefork::test::leak_check leaks;
  {
    temp_dir dir;
    std::string access = dir.path + "/access.log", errors = dir.path + "/error.log";
    server s({"--access-log", access, "--error-log", errors}, false);
    // The error log is a file now: read the port there.
    std::string log = wait_file_lines(errors, "ready: ", 1);
    auto at = log.find("listening on http://127.0.0.1:");
    REQUIRE(at != std::string::npos);
    int port = std::stoi(log.substr(at + 30));
    for (int i = 0; i < 10; ++i) REQUIRE(get(port, "/hello?before=" + std::to_string(i)).status == 200);
    REQUIRE(::rename(access.c_str(), (access + ".1").c_str()) == 0);
    REQUIRE(::rename(errors.c_str(), (errors + ".1").c_str()) == 0);
    s.signal(SIGUSR1);
    // Each process, master and two workers, says so in the new error log.
    wait_file_lines(errors, "logs reopened", 3);
    for (int i = 0; i < 10; ++i) REQUIRE(get(port, "/hello?after=" + std::to_string(i)).status == 200);
    check_clean_stop(s);
    std::string old_lines = slurp(access + ".1"), new_lines = slurp(access);
    CHECK(count_lines(old_lines, "before=") == 10);
    CHECK(count_lines(new_lines, "after=") == 10);
    CHECK(count_lines(old_lines + new_lines) == 20);
    // The combined log format.
    std::string first = old_lines.substr(0, old_lines.find('\n'));
    INFO(first);
    CHECK(first.find("127.0.0.1 - - [") == 0);
    CHECK(first.find("] \"GET /hello?before=0 HTTP/1.1\" 200 13 \"-\" \"") != std::string::npos);
    CHECK(slurp(errors + ".1").find("listening on") != std::string::npos);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("httpd: --daemonize returns once the server is ready", "[httpd][daemonize]") {
  prefork::test::leak_check leaks;
  {
    temp_dir dir;
    std::string pid_path = dir.path + "/httpd.pid", errors = dir.path + "/error.log";
    command_result started =
        httpd({"-D", "-w", "2", "-l", "127.0.0.1:0", "-P", pid_path, "--error-log", errors, dir.path});
    CHECK(started.code == 0);
    std::string log = slurp(errors);
    // Ready before the launcher exited: the line is there already.
    CHECK(count_lines(log, "ready: 2 workers serving") == 1);
    pid_t pid = std::atoi(slurp(pid_path).c_str());
    REQUIRE(pid > 0);
    auto at = log.find("listening on http://127.0.0.1:");
    REQUIRE(at != std::string::npos);
    int port = std::stoi(log.substr(at + 30));
    CHECK(get(port, "/hello").body == "Hello, World!");
    // Not our child: wait for it through a pidfd.
    prefork::fd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
    REQUIRE(pidfd);
    REQUIRE(::kill(pid, SIGQUIT) == 0);
    pollfd p{pidfd.get(), POLLIN, 0};
    CHECK(::poll(&p, 1, 20000) == 1);

    // A daemon that cannot start makes the launcher fail, saying why.
    prefork::fd taken = prefork::listen("127.0.0.1:0");
    command_result failed = httpd({"-D", "-l", prefork::local_address(taken.get()), dir.path});
    CHECK(failed.code == 1);
    CHECK(failed.out.find("Address already in use") != std::string::npos);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("httpd: --user drops the workers' privileges, not the master's", "[httpd][user]") {
  if (::geteuid() != 0) {
    WARN("not root: --user cannot be tested");
    return;
  }
  prefork::test::leak_check leaks;
  {
    temp_dir dir;
    { std::ofstream(dir.path + "/index.html") << "hi\n"; }
    ::chmod((dir.path + "/index.html").c_str(), 0644);
    std::string access = dir.path + "/access.log";
    server s({"-u", "nobody", "--access-log", access, dir.path});
    CHECK(status_number(s.pid(), "Uid:") == 0);  // the real uid
    std::string json = get(s.port(), "/_status?format=json").body;
    std::size_t workers = 0;
    for (auto at = json.find("\"pid\":"); at != std::string::npos; at = json.find("\"pid\":", at + 1)) {
      pid_t pid = std::atoi(json.c_str() + at + 6);
      INFO("worker " << pid);
      CHECK(status_number(pid, "Uid:") == 65534);
      ++workers;
    }
    CHECK(workers == 2);
    CHECK(get(s.port(), "/").body == "hi\n");
    // The workers, no longer root, can still reopen the log the master made.
    REQUIRE(::rename(access.c_str(), (access + ".1").c_str()) == 0);
    std::size_t mark = s.log_mark();
    s.signal(SIGUSR1);
    for (int i = 0; i < 3; ++i) s.wait_log("logs reopened");
    CHECK(s.log().find("reopen " + access, mark) == std::string::npos);  // how a failure would read
    CHECK(get(s.port(), "/?after").status == 200);
    check_clean_stop(s);
    CHECK(count_lines(slurp(access), "GET /?after") == 1);
  }
  CHECK(leaks.problems() == "");
}
