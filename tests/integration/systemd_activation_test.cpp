// prefork-httpd as systemd runs it, without systemd as PID 1.
//
// Socket activation: Debian's systemd-socket-activate binds a loopback port,
// waits for the first connection, and execs prefork-httpd in its own PID with
// LISTEN_FDS=1, as systemd does for prefork-httpd.socket. The server must
// answer that first connection from the queue and hold no listening socket
// but the one it was given.
//
// Notification: the test binds a real AF_UNIX datagram socket with
// SO_PASSCRED, as systemd's notify socket is, names it in NOTIFY_SOCKET, and
// reads what the master says: READY=1 only once every worker is ready,
// RELOADING=1/READY=1 around HUP and the in-place upgrade (the unit's
// ExecReload), WATCHDOG=1, EXTEND_TIMEOUT_USEC= during a long drain,
// STOPPING=1 on QUIT (the unit's KillSignal), each from the master's PID, as
// NotifyAccess=main requires.
//
// The unit files themselves go through systemd-analyze verify, and their
// ExecStart through prefork-httpd --check.
#include "catch.hpp"

#include <pwd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>

#include <cstring>
#include <fstream>
#include <regex>

#include "ecosystem_support.hpp"
#include "env_var.hpp"
#include "helpers.hpp"
#include "httpd_support.hpp"
#include "leak_check.hpp"
#include "notify_support.hpp"

namespace {

using prefork::test::env_var;

using namespace httpd_test;
using eco_test::temp_dir;

const std::string socket_activate = "/usr/bin/systemd-socket-activate";
const std::string analyze = "/usr/bin/systemd-analyze";

// Whether text, newline-separated assignments, holds `line` exactly, or,
// when line is "KEY=", any value of KEY.
bool has_line(const std::string& text, std::string_view line) {
  const bool any_value = !line.empty() && line.back() == '=';
  std::size_t at = 0;
  while (at <= text.size()) {
    std::size_t eol = text.find('\n', at);
    if (eol == std::string::npos) eol = text.size();
    std::string_view here = std::string_view(text).substr(at, eol - at);
    if (any_value ? here.rfind(line, 0) == 0 : here == line) return true;
    at = eol + 1;
  }
  return false;
}

// The value of KEY= in text, or nullopt.
std::optional<std::string> value_of(const std::string& text, const std::string& key) {
  std::istringstream lines(text);
  for (std::string l; std::getline(lines, l);)
    if (l.rfind(key + "=", 0) == 0) return l.substr(key.size() + 1);
  return std::nullopt;
}

// systemd's end of NOTIFY_SOCKET: a datagram socket bound at a path, with
// SO_PASSCRED so each message carries the sender's PID, which systemd checks
// against the unit's main PID.
class notify_socket {
 public:
  struct message {
    std::string text;
    pid_t pid = 0;
  };

  explicit notify_socket(std::filesystem::path path)
      : path_(std::move(path)), sock_(notify_test::bind_notify_socket(path_.native())) {}

  const std::filesystem::path& path() const { return path_; }

  // Every message received so far, in order.
  const std::vector<message>& received() const { return received_; }

  // The next message holding `line`; throws at the deadline with what came.
  message wait_for(std::string_view line) {
    auto deadline = steady::now() + patience;
    for (;;) {
      while (seen_ < received_.size()) {
        const message& m = received_[seen_++];
        if (has_line(m.text, line)) return m;
      }
      if (!receive(deadline)) {
        std::string got;
        for (const message& m : received_) got += "[pid " + std::to_string(m.pid) + "] " + m.text + "\n";
        throw std::runtime_error("no '" + std::string(line) + "' on the notify socket; received:\n" + got);
      }
    }
  }

  // Receives messages until fd is readable (or hung up). A receiver that
  // stops reading fills the socket's queue (net.unix.max_dgram_qlen, 10 by
  // default), and the master's next notification then blocks, as it would
  // with a stuck systemd: a test waiting for anything else keeps reading.
  void pump_until_readable(int fd) {
    auto deadline = steady::now() + patience;
    for (;;) {
      pollfd p[2] = {{fd, POLLIN, 0}, {sock_.get(), POLLIN, 0}};
      REQUIRE(::poll(p, 2, ms_left(deadline)) > 0);
      if (p[1].revents) receive(deadline);
      if (p[0].revents) return;
    }
  }

  // Whether every message so far came from pid.
  std::string strangers(pid_t pid) const {
    std::string out;
    for (const message& m : received_)
      if (m.pid != pid) out += "from pid " + std::to_string(m.pid) + ": " + m.text + "\n";
    return out;
  }

 private:
  bool receive(steady::time_point deadline) {
    pollfd p{sock_.get(), POLLIN, 0};
    if (::poll(&p, 1, ms_left(deadline)) <= 0) return false;
    std::optional<notify_test::notification> got = notify_test::read_notification(sock_.get());
    if (!got) return false;
    received_.push_back(message{std::move(got->text), got->sender});
    return true;
  }

  std::filesystem::path path_;
  prefork::fd sock_;
  std::vector<message> received_;
  std::size_t seen_ = 0;
};

// How many times needle occurs in text.
std::size_t count(const std::string& text, const std::string& needle) {
  std::size_t n = 0;
  for (auto at = text.find(needle); at != std::string::npos; at = text.find(needle, at + needle.size())) ++n;
  return n;
}

// Waits until the JSON scoreboard shows a worker whose activity holds `what`.
void wait_for_activity(int port, const std::string& what) {
  auto deadline = steady::now() + patience;
  while (get(port, "/_status?format=json").body.find(what) == std::string::npos)
    REQUIRE(steady::now() < deadline);
}

// Waits for the server to exit while reading its notifications: it must
// exit 0, and nothing may have come from a process other than the master
// (NotifyAccess=main: systemd would drop anything a worker sent).
void check_clean_exit(server& s, notify_socket& ns) {
  prefork::fd exited(static_cast<int>(::syscall(SYS_pidfd_open, s.pid(), 0)));  // CLOEXEC by definition
  REQUIRE(exited);
  ns.pump_until_readable(exited.get());
  prefork::exit_status st = s.stop(0);
  INFO("server log:\n" << s.log());
  CHECK(st.describe() == "exited 0");
  CHECK(ns.strangers(s.pid()) == "");
}

std::string exe_name(pid_t pid) {
  std::error_code ec;
  return std::filesystem::read_symlink("/proc/" + std::to_string(pid) + "/exe", ec).filename().string();
}

// examples/httpd/systemd in the source tree: found from this file's path
// (absolute in CMake builds), else by walking up from the executable (build
// folders live in the source tree).
std::optional<std::filesystem::path> units_dir() {
  const std::filesystem::path rel = "examples/httpd/systemd";
  std::filesystem::path here(__FILE__);
  if (here.is_absolute()) {
    auto dir = here.parent_path().parent_path().parent_path() / rel;
    if (std::filesystem::exists(dir / "prefork-httpd.service")) return dir;
  }
  for (auto dir = std::filesystem::path(prefork::test::self_exe()).parent_path(); dir != dir.root_path();
       dir = dir.parent_path())
    if (std::filesystem::exists(dir / rel / "prefork-httpd.service")) return dir / rel;
  return std::nullopt;
}

// ExecStart= of a unit, continuation lines joined, split at blanks.
std::vector<std::string> exec_start(const std::string& unit) {
  std::istringstream lines(unit);
  std::string line, joined;
  bool in_it = false;
  while (std::getline(lines, line)) {
    if (!in_it && line.rfind("ExecStart=", 0) != 0) continue;
    in_it = true;
    bool more = !line.empty() && line.back() == '\\';
    if (more) line.pop_back();
    joined += line + " ";
    if (!more) break;
  }
  std::istringstream words(joined.substr(std::strlen("ExecStart=")));
  std::vector<std::string> argv;
  for (std::string w; words >> w;) argv.push_back(w);
  return argv;
}

}  // namespace

TEST_CASE("httpd under systemd-socket-activate serves on the socket it is given and binds nothing",
          "[systemd][activation]") {
  if (!eco_test::executable(socket_activate)) {
    WARN("skipped: " << socket_activate << " is not installed (Debian: apt-get install systemd)");
    return;
  }
  prefork::test::leak_check leaks;
  {
    std::optional<server> s;
    std::string port;
    // The tool cannot bind port 0: take a port that was free, and another if
    // some other process took it meanwhile.
    for (int attempt = 1;; ++attempt) {
      port = std::to_string(eco_test::free_loopback_port());
      s.emplace(std::vector<std::string>{"-w", "2"}, false,
                std::vector<std::string>{socket_activate, "--listen=127.0.0.1:" + port});
      try {
        s->wait_log("Listening on 127.0.0.1:" + port + " as 3.");
        break;
      } catch (const std::exception& e) {
        bool lost_race = s->log().find("ddress already in use") != std::string::npos;
        INFO(s->log());
        s.reset();
        if (!lost_race || attempt == 5) FAIL(e.what());
      }
    }
    const pid_t pid = s->pid();
    // The one listening socket, bound before prefork-httpd ran at all.
    const std::set<unsigned long> given = eco_test::listening_sockets_of({pid});
    REQUIRE(given.size() == 1);
    CHECK(exe_name(pid) == "systemd-socket-activate");

    // The first connection is what starts the server; it waits in the
    // socket's queue meanwhile and is answered once a worker accepts.
    prefork::fd first = connect_to(std::stoi(port));
    send_text(first.get(), "GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    s->wait_log("listening on http://127.0.0.1:" + port + " (inherited)");
    s->wait_log("ready: 2 workers serving");
    std::optional<response> r = parse_response(read_until_close(first.get()), false, true);
    REQUIRE(r);
    CHECK(r->status == 200);
    CHECK(r->body == "Hello, World!");

    // Same PID, new image: exec'd in place, as LISTEN_PID demands.
    CHECK(exe_name(pid) == "prefork-httpd");
    std::set<pid_t> all = prefork::test::children_of(pid, prefork::test::kids::all);
    CHECK(all.size() == 2);
    all.insert(pid);
    // Neither the master nor a worker holds a listening socket of its own.
    CHECK(eco_test::listening_sockets_of(all) == given);
    for (int i = 0; i < 4; ++i) CHECK(get(std::stoi(port), "/hello").body == "Hello, World!");
    INFO(s->log());
    CHECK(s->log().find("cannot start") == std::string::npos);
    check_clean_stop(*s);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE(
    "httpd on a real notify socket: READY=1 once all workers serve, RELOADING=1 on HUP, STOPPING=1 on QUIT",
    "[systemd][notify]") {
  prefork::test::leak_check leaks;
  {
    temp_dir dir;
    notify_socket ns(dir.path() / "notify");
    env_var notify("NOTIFY_SOCKET", ns.path().string());
    server s({"-w", "3"}, false);
    std::string line = s.wait_log("listening on http://127.0.0.1:");
    const int port = std::stoi(line.substr(line.find("127.0.0.1:") + 10));

    notify_socket::message ready = ns.wait_for("READY=1");
    // What systemd now tells units ordered after this one holds: all three
    // workers are up and accepting, none still booting.
    std::string board = get(port, "/_status?format=json").body;
    CHECK(count(board, "\"pid\":") == 3);
    CHECK(board.find("booting") == std::string::npos);
    INFO(ready.text);
    CHECK(value_of(ready.text, "STATUS").value_or("").find('3') != std::string::npos);

    s.signal(SIGHUP);
    ns.wait_for("RELOADING=1");
    ns.wait_for("READY=1");
    CHECK(get(port, "/hello").body == "Hello, World!");

    s.signal(SIGQUIT);
    ns.wait_for("STOPPING=1");
    check_clean_exit(s, ns);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("httpd's in-place upgrade, the unit's ExecReload, keeps MainPID: RELOADING=1 then READY=1",
          "[systemd][notify][upgrade]") {
  prefork::test::leak_check leaks;
  {
    temp_dir dir;
    notify_socket ns(dir.path() / "notify");
    env_var notify("NOTIFY_SOCKET", ns.path().string());
    server s({"-w", "2", "--upgrade", "in-place"});
    ns.wait_for("READY=1");
    std::string before = get(s.port(), "/_status?format=json").body;
    REQUIRE(before.find("\"generation\":1") != std::string::npos);

    s.signal(SIGUSR2);  // ExecReload=/bin/kill -USR2 $MAINPID
    ns.wait_for("RELOADING=1");
    ns.wait_for("READY=1");
    // READY=1 means the new generation serves; the old one may still drain.
    std::string after = get(s.port(), "/_status?format=json").body;
    INFO(after);
    CHECK(after.find("\"generation\":2") != std::string::npos);
    CHECK(after.find("\"master_pid\":" + std::to_string(s.pid())) != std::string::npos);
    for (const auto& m : ns.received()) CHECK(m.text.find("MAINPID=") == std::string::npos);

    s.signal(SIGQUIT);
    ns.wait_for("STOPPING=1");
    check_clean_exit(s, ns);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("httpd pings the watchdog and extends the stop timeout while a long request drains",
          "[systemd][notify][watchdog]") {
  prefork::test::leak_check leaks;
  {
    temp_dir dir;
    notify_socket ns(dir.path() / "notify");
    env_var notify("NOTIFY_SOCKET", ns.path().string());
    env_var watchdog("WATCHDOG_USEC", "200000");  // WatchdogSec=0.2: a ping every 0.1 s
    server s({"-w", "2", "--graceful-timeout", "20"});
    ns.wait_for("READY=1");
    for (int i = 0; i < 3; ++i) ns.wait_for("WATCHDOG=1");

    // A request in hand when QUIT comes: systemd's TimeoutStopSec must not
    // run out while it finishes.
    prefork::fd slow = connect_to(s.port());
    send_text(slow.get(), "GET /sleep?ms=1500 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    wait_for_activity(s.port(), "/sleep");
    s.signal(SIGQUIT);
    ns.wait_for("STOPPING=1");
    notify_socket::message extend = ns.wait_for("EXTEND_TIMEOUT_USEC=");
    // The drain's time left plus a margin: more than nothing, less than
    // --graceful-timeout and the margin.
    long long usec = std::stoll(value_of(extend.text, "EXTEND_TIMEOUT_USEC").value_or("0"));
    CHECK(usec > 0);
    CHECK(usec <= 30000000);
    ns.pump_until_readable(slow.get());
    std::string answer = read_until_close(slow.get());
    CHECK(answer.rfind("HTTP/1.1 200", 0) == 0);
    check_clean_exit(s, ns);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("the systemd units verify, and their ExecStart is a valid prefork-httpd command line",
          "[systemd][units]") {
  std::optional<std::filesystem::path> units = units_dir();
  if (!units) {
    WARN("skipped: examples/httpd/systemd not found from " << __FILE__ << " or "
                                                           << prefork::test::self_exe());
    return;
  }
  prefork::test::leak_check leaks;
  {
    temp_dir dir;
    std::string service = prefork::test::slurp((*units / "prefork-httpd.service").string());
    std::string socket = prefork::test::slurp((*units / "prefork-httpd.socket").string());
    REQUIRE(!service.empty());
    REQUIRE(!socket.empty());
    CHECK(has_line(service, "Type=notify"));
    CHECK(has_line(service, "KillSignal=SIGQUIT"));
    CHECK(has_line(service, "KillMode=mixed"));  // QUIT to the master alone; it tells the workers
    CHECK(has_line(service, "ExecReload=/bin/kill -USR2 $MAINPID"));

    // The installed paths, pointed at this build and a ROOT that exists.
    const std::string httpd = prefork::test::bin_path("prefork-httpd");
    service = std::regex_replace(service, std::regex("/usr/local/bin/prefork-httpd"), httpd);
    service = std::regex_replace(service, std::regex("/srv/www"), dir.path().string());
    std::vector<std::string> argv = exec_start(service);
    REQUIRE(argv.size() > 1);
    CHECK(argv[0] == httpd);
    CHECK(std::find(argv.begin(), argv.end(), "in-place") != argv.end());  // else MainPID changes on reload

    // Every option is one prefork-httpd knows, with a value it accepts.
    argv.push_back("--check");
    if (::getpwnam("www-data") == nullptr) WARN("no user www-data here: --check will say so");
    command_result check = run(argv, true);
    INFO(check.out);
    CHECK(check.code == 0);
    CHECK(check.out.find("configuration OK") != std::string::npos);

    if (!eco_test::executable(analyze)) {
      WARN("systemd-analyze verify skipped: " << analyze
                                              << " is not installed (Debian: apt-get install systemd)");
    } else {
      { std::ofstream(dir.path() / "prefork-httpd.service") << service; }
      { std::ofstream(dir.path() / "prefork-httpd.socket") << socket; }
      command_result verify =
          run({analyze, "verify", "--man=no", (dir.path() / "prefork-httpd.socket").string(),
               (dir.path() / "prefork-httpd.service").string()},
              true);
      INFO(verify.out);
      CHECK(verify.code == 0);
      // It exits 0 over settings it ignores, so any word about our units is a failure.
      CHECK(verify.out.find("prefork-httpd.") == std::string::npos);
    }
  }
  CHECK(leaks.problems() == "");
}
