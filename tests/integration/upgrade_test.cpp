// USR2, the zero-downtime upgrade, in both modes, with real processes: the
// master is this test binary run as a helper, so its startup_argv() runs the
// helper again, and a switch file named in the environment makes the next
// boot fail or hang. A client loop makes connections (a full echo round trip
// each) all along; every one must succeed. Also: the systemd notification
// sequence, received on a real datagram socket.
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include <prefork/file.hpp>
#include <prefork/pool.hpp>
#include <prefork/process.hpp>

#include "catch.hpp"
#include "helpers.hpp"
#include "leak_check.hpp"
#include "notify_support.hpp"
#include "upgrade_harness.hpp"

using namespace upgrade_test;
namespace fs = std::filesystem;

// The master: MODE WORKERS GRACEFUL_MS UPGRADE_TIMEOUT_MS PID_FILE. Its
// listener comes in PREFORK_FDS; UPGRADE_TEST_SWITCH names a file that, when
// it exists, says how the next boot goes: "exit1" (refuse to boot) or
// "hang" (workers never become ready).
PREFORK_HELPER(upgrade_master) {
  if (argc != 5) return 2;
  const std::string sw = boot_switch();
  if (sw == "exit1") {
    say("boot " + std::to_string(::getpid()) + ": failing on purpose");
    return 1;
  }
  // What the pool takes from the environment with the listeners, so the
  // test sees that each new image was given their names.
  const char* names = std::getenv("PREFORK_FDNAMES");
  say("boot " + std::to_string(::getpid()) + ": listener names \"" + (names ? names : "") + "\"");
  try {
    prefork::master master(helper_pool_config(argv, sw == "hang"));
    return master.run(echo);
  } catch (const std::exception& e) {
    say(std::string("master failed: ") + e.what());
    return 1;
  }
}

namespace {

// A master under test (helper_master), with a symbolic link to this binary
// in its directory to start it through, optionally.
class pool_master : public helper_master {
 public:
  pool_master(const std::string& mode, unsigned workers, bool through_link = false,
              std::vector<std::string> env_extra = {}, long graceful_ms = 2000,
              long upgrade_timeout_ms = 20000)
      : helper_master("prefork-upgrade"), workers_(workers) {
    link_path = dir / "server";
    fs::create_symlink(prefork::test::self_exe(), link_path);
    std::vector<std::string> argv = prefork::test::helper_argv(
        "upgrade_master", {mode, std::to_string(workers), std::to_string(graceful_ms),
                           std::to_string(upgrade_timeout_ms), pid_path.string()});
    if (through_link) argv[0] = link_path.string();
    start(argv, workers, std::move(env_extra));
  }

  void clear_switch() { fs::remove(switch_path); }

  // fork_exec: USR2, the new master takes over, the old one exits; the new
  // one is then our child (we are the subreaper). Returns the new PID.
  pid_t upgrade_fork_exec() {
    const pid_t old = master.pid();
    const std::string p = "prefork[" + std::to_string(old) + "]: ";
    signal(SIGUSR2);
    pid_t next =
        number_after(log.wait_for(p + "received SIGUSR2: upgrading: started new master pid "), "pid ");
    log.wait_for("prefork[" + std::to_string(next) + "]: all " + std::to_string(workers_) +
                 " workers ready: asking the old master (pid " + std::to_string(old) + ") to stop");
    log.wait_for(p + "received SIGQUIT: new master pid " + std::to_string(next) + " is ready");
    log.wait_for(p + "stop complete");
    std::optional<prefork::exit_status> how = master.wait_for(20s);
    REQUIRE(how);
    CHECK(how->describe() == "exited 0");
    master = prefork::child::adopt(next);
    return next;
  }

  // in_place: USR2, the same process execs and adopts its workers, a new
  // generation replaces them. Returns the old generation's worker PIDs.
  void upgrade_in_place(unsigned round) {
    const std::string p = "prefork[" + std::to_string(master.pid()) + "]: ";
    const std::string n = std::to_string(round);
    const std::set<pid_t> before = children_of(master.pid());
    signal(SIGUSR2);
    std::string courier_line = log.wait_for(p + "received SIGUSR2: upgrading in place (upgrade " + n + ")");
    const pid_t courier = number_after(courier_line, "courier pid ");
    std::string adopted = log.wait_for(p + "master re-executed in place (upgrade " + n + ")");
    CHECK(adopted.find("adopted " + std::to_string(workers_) + " workers") != std::string::npos);
    CHECK(adopted.find("courier (pid " + std::to_string(courier) + ") exited 0") != std::string::npos);
    CHECK(adopted.find("starting generation " + std::to_string(round + 1)) != std::string::npos);
    std::set<pid_t> adopted_pids;
    for (unsigned i = 0; i < workers_; ++i)
      adopted_pids.insert(number_after(log.wait_for(p + "adopted worker "), "(pid "));
    CHECK(adopted_pids == before);
    log.wait_for(p + "upgrade " + n + " complete: generation " + std::to_string(round + 1) + " ready (" +
                 std::to_string(workers_) + " workers)");
    for (unsigned i = 0; i < workers_; ++i) {
      pid_t gone = number_after(log.wait_for("generation " + std::to_string(round) + ") exited 0"), "(pid ");
      CHECK(before.count(gone) == 1);
    }
  }

  // Exactly one master (ours) with its workers; no zombie anywhere.
  void check_one_master() {
    CHECK(children_of(::getpid()) == std::set<pid_t>{master.pid()});
    CHECK(children_of(master.pid()).size() == workers_);
    CHECK(children_of(master.pid(), kids::zombies).empty());
    CHECK(children_of(::getpid(), kids::zombies).empty());
  }

  void quit() {
    signal(SIGQUIT);
    log.wait_for("prefork[" + std::to_string(master.pid()) + "]: stop complete");
    std::optional<prefork::exit_status> how = master.wait_for(20s);
    REQUIRE(how);
    CHECK(how->describe() == "exited 0");
    CHECK(!fs::exists(pid_path));
  }

  std::optional<pid_t> pid_in_file() const { return prefork::pid_file::read(pid_path); }

  fs::path link_path;

 private:
  unsigned workers_;
};

}  // namespace

TEST_CASE("fork_exec: 10 upgrades under load, no connection lost", "[upgrade][fork_exec]") {
  prefork::test::leak_check leaks;
  {
    pool_master m("fork_exec", 2);
    CHECK(m.pid_in_file() == m.pid());
    client_loop load(m.address);
    for (int round = 1; round <= 10; ++round) {
      load.wait_progress(10);
      const pid_t old = m.pid();
      pid_t next = m.upgrade_fork_exec();
      CHECK(next != old);
      CHECK(m.pid_in_file() == next);
      CHECK(!fs::exists(m.oldbin_path));
    }
    load.finish();
    m.check_one_master();
    m.quit();
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("both modes: the listeners' names go with them to the new image", "[upgrade][names]") {
  prefork::test::leak_check leaks;
  for (std::string mode : {"fork_exec", "in_place"}) {
    DYNAMIC_SECTION(mode) {
      pool_master m(mode, 1, false, {"PREFORK_FDNAMES=web"});
      m.log.wait_for("boot " + std::to_string(m.pid()) + ": listener names \"web\"");
      if (mode == "fork_exec") {
        m.upgrade_fork_exec();
      } else {
        m.upgrade_in_place(1);
      }
      m.log.wait_for("boot " + std::to_string(m.pid()) + ": listener names \"web\"");
      m.quit();
    }
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("fork_exec: a new master that exits at boot is rolled back", "[upgrade][fork_exec][rollback]") {
  prefork::test::leak_check leaks;
  {
    pool_master m("fork_exec", 2);
    const pid_t old = m.pid();
    const std::set<pid_t> workers = children_of(old);
    client_loop load(m.address);
    load.wait_progress(10);
    m.set_switch("exit1");
    m.signal(SIGUSR2);
    pid_t next = number_after(m.log.wait_for("upgrading: started new master pid "), "pid ");
    m.log.wait_for("boot " + std::to_string(next) + ": failing on purpose");
    std::string failed = m.log.wait_for("upgrade failed");
    CHECK(failed.find("new master (pid " + std::to_string(next) + ") exited 1 before it was ready") !=
          std::string::npos);
    CHECK(failed.find("pid file restored to " + m.pid_path.string()) != std::string::npos);
    CHECK(m.pid_in_file() == old);
    CHECK(!fs::exists(m.oldbin_path));
    CHECK(children_of(old) == workers);
    load.wait_progress(10);
    // A later USR2 may try again.
    m.clear_switch();
    m.upgrade_fork_exec();
    load.finish();
    m.check_one_master();
    m.quit();
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE(
    "fork_exec: a new master not ready in time is stopped and rolled back; a second USR2 meanwhile is "
    "refused",
    "[upgrade][fork_exec][rollback]") {
  prefork::test::leak_check leaks;
  {
    pool_master m("fork_exec", 2, false, {}, 500, 1500);
    const pid_t old = m.pid();
    const std::set<pid_t> workers = children_of(old);
    client_loop load(m.address);
    load.wait_progress(10);
    m.set_switch("hang");
    m.signal(SIGUSR2);
    pid_t next = number_after(m.log.wait_for("upgrading: started new master pid "), "pid ");
    m.log.wait_for("prefork[" + std::to_string(next) + "]: master started");
    // Both masters run: the old pid file is .oldbin, the new master's is in place.
    CHECK(prefork::pid_file::read(m.oldbin_path) == old);
    CHECK(m.pid_in_file() == next);
    m.signal(SIGUSR2);
    CHECK(
        m.log.wait_for("an upgrade is already in progress").find("new master pid " + std::to_string(next)) !=
        std::string::npos);
    m.log.wait_for("new master (pid " + std::to_string(next) + ") not ready within upgrade_timeout (1.50s)");
    std::string failed = m.log.wait_for("upgrade failed");
    CHECK(failed.find("new master (pid " + std::to_string(next) + ") exited 0 after it was not ready") !=
          std::string::npos);
    CHECK(m.pid_in_file() == old);
    CHECK(!fs::exists(m.oldbin_path));
    CHECK(children_of(old) == workers);
    load.finish();
    m.check_one_master();
    m.clear_switch();
    m.quit();
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("fork_exec: when the binary is gone the upgrade fails at once and the pid file comes back",
          "[upgrade][fork_exec][rollback]") {
  prefork::test::leak_check leaks;
  {
    pool_master m("fork_exec", 1, true);
    const pid_t old = m.pid();
    fs::remove(m.link_path);
    m.signal(SIGUSR2);
    std::string failed = m.log.wait_for("upgrade failed: cannot start the new master");
    CHECK(failed.find(m.link_path.string() + ": No such file or directory") != std::string::npos);
    CHECK(failed.find("pid file restored") != std::string::npos);
    CHECK(m.pid_in_file() == old);
    CHECK(!fs::exists(m.oldbin_path));
    CHECK(children_of(::getpid()) == std::set<pid_t>{old});
    fs::create_symlink(prefork::test::self_exe(), m.link_path);
    m.upgrade_fork_exec();
    m.check_one_master();
    m.quit();
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("in_place: 10 upgrades under load, same PID, workers adopted then retired", "[upgrade][in_place]") {
  prefork::test::leak_check leaks;
  {
    pool_master m("in_place", 2);
    const pid_t pid = m.pid();
    client_loop load(m.address);
    for (unsigned round = 1; round <= 10; ++round) {
      load.wait_progress(10);
      m.upgrade_in_place(round);
      CHECK(m.pid() == pid);
      CHECK(m.pid_in_file() == pid);
    }
    load.finish();
    // Every worker now is of generation 11.
    CHECK(m.log.count("spawn 0 11 ") == 1);
    CHECK(m.log.count("spawn 1 11 ") == 1);
    m.check_one_master();
    m.quit();
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("in_place: a failed exec leaves the old image serving, unchanged",
          "[upgrade][in_place][rollback]") {
  prefork::test::leak_check leaks;
  {
    pool_master m("in_place", 2, true);
    const pid_t pid = m.pid();
    const std::set<pid_t> workers = children_of(pid);
    client_loop load(m.address);
    load.wait_progress(10);
    fs::remove(m.link_path);
    m.signal(SIGUSR2);
    m.log.wait_for("upgrading in place (upgrade 1)");
    std::string failed = m.log.wait_for("upgrade failed");
    CHECK(failed.find("exec " + m.link_path.string() + ": No such file or directory") != std::string::npos);
    CHECK(failed.find("the old image goes on unchanged (courier ") != std::string::npos);
    CHECK(children_of(pid, kids::zombies).empty());
    CHECK(children_of(pid) == workers);  // the courier was reaped, the workers are the same
    load.wait_progress(10);
    fs::create_symlink(prefork::test::self_exe(), m.link_path);
    m.upgrade_in_place(1);
    load.finish();
    m.check_one_master();
    m.quit();
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE(
    "in_place: a new generation that never gets ready leaves the old one serving; USR2 is refused until "
    "upgrade_timeout, then a fixed binary takes over",
    "[upgrade][in_place][rollback]") {
  prefork::test::leak_check leaks;
  {
    pool_master m("in_place", 2, false, {}, 500, 1500);
    const pid_t pid = m.pid();
    const std::set<pid_t> serving = children_of(pid);
    client_loop load(m.address);
    load.wait_progress(10);
    m.set_switch("hang");
    m.signal(SIGUSR2);
    m.log.wait_for("master re-executed in place (upgrade 1)");
    m.log.wait_for("spawn 0 2 ");
    m.log.wait_for("spawn 1 2 ");
    m.signal(SIGUSR2);
    CHECK(m.log.wait_for("an upgrade is already in progress").find("not yet ready after upgrade 1") !=
          std::string::npos);
    load.wait_progress(10);
    m.log.wait_for("upgrade 1: the new generation is not ready within upgrade_timeout (1.50s)");
    for (pid_t old : serving) CHECK(children_of(pid).count(old) == 1);  // still there, still serving
    load.wait_progress(10);

    m.clear_switch();
    m.signal(SIGUSR2);
    std::string adopted = m.log.wait_for("master re-executed in place (upgrade 2)");
    CHECK(adopted.find("adopted 4 workers") != std::string::npos);  // two serving, two stuck
    m.log.wait_for("upgrade 2 complete: generation 3 ready (2 workers)");
    for (int i = 0; i < 2; ++i) m.log.wait_for("generation 1) exited 0");
    for (int i = 0; i < 2; ++i) m.log.wait_for("generation 2) killed by SIGKILL");
    load.finish();
    m.check_one_master();
    m.quit();
  }
  CHECK(leaks.problems() == "");
}

namespace {

// systemd's end of NOTIFY_SOCKET: a datagram socket on a path, read at once
// by a thread of its own as systemd reads it (a datagram queue holds only
// ten messages), with the sender's PID from the kernel (SO_PASSCRED).
class notify_socket {
 public:
  struct message {
    std::string text;
    pid_t sender = 0;
    clock::time_point at;
    bool taken = false;
  };

  explicit notify_socket(const fs::path& path) : sock_(notify_test::bind_notify_socket(path, SOCK_NONBLOCK)) {
    prefork::pipe_ends stop = prefork::pipe();
    stop_read_ = std::move(stop.read);
    stop_write_ = std::move(stop.write);
    reader_ = std::thread([this] { read_until_stopped(); });
  }
  ~notify_socket() {
    stop_write_.reset();  // end of file: the reader's cue
    reader_.join();
  }
  notify_socket(const notify_socket&) = delete;
  notify_socket& operator=(const notify_socket&) = delete;

  // The next message not yet taken that holds `needle`.
  message wait_for(const std::string& needle, std::chrono::milliseconds limit = 20s) {
    std::unique_lock<std::mutex> lock(mutex_);
    message* found = nullptr;
    auto match = [&] {
      for (message& m : seen_)
        if (!m.taken && m.text.find(needle) != std::string::npos) return (found = &m) != nullptr;
      return false;
    };
    if (!arrived_.wait_for(lock, limit, match))
      FAIL("no notification with \"" << needle << "\"; seen:\n" << transcript_locked());
    found->taken = true;
    return *found;
  }

  // Position of the first message holding `needle` (size() if none).
  std::size_t index_of(const std::string& needle) const {
    std::lock_guard<std::mutex> lock(mutex_);
    for (std::size_t i = 0; i < seen_.size(); ++i)
      if (seen_[i].text.find(needle) != std::string::npos) return i;
    return seen_.size();
  }
  std::size_t count(const std::string& needle) const {
    std::lock_guard<std::mutex> lock(mutex_);
    std::size_t n = 0;
    for (const message& m : seen_) n += m.text.find(needle) != std::string::npos;
    return n;
  }
  std::vector<message> seen() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return seen_;
  }

 private:
  std::string transcript_locked() const {
    std::string out;
    for (const message& m : seen_) {
      std::string one = m.text;
      for (char& c : one)
        if (c == '\n') c = '|';
      out += "  [" + std::to_string(m.sender) + "] " + one + "\n";
    }
    return out;
  }

  void read_until_stopped() {
    for (;;) {
      pollfd p[2] = {{sock_.get(), POLLIN, 0}, {stop_read_.get(), POLLIN, 0}};
      if (::poll(p, 2, -1) == -1 && errno != EINTR) return;
      if (p[1].revents != 0) return;
      while (std::optional<notify_test::notification> got = notify_test::read_notification(sock_.get())) {
        message m;
        m.text = std::move(got->text);
        m.sender = got->sender;
        m.at = clock::now();
        std::lock_guard<std::mutex> lock(mutex_);
        seen_.push_back(std::move(m));
        arrived_.notify_all();
      }
    }
  }

  prefork::fd sock_, stop_read_, stop_write_;
  mutable std::mutex mutex_;
  std::condition_variable arrived_;
  std::vector<message> seen_;
  std::thread reader_;
};

// WATCHDOG=1 at least every `interval` (systemd's deadline), over a few pings.
// The master pings every interval/2, so a ping may come up to interval/2
// late: 1 s keeps that margin at 500 ms (400 ms once failed at a load
// average of 13 on 2 cores).
void check_watchdog(notify_socket& n, std::chrono::milliseconds interval) {
  clock::time_point last = n.wait_for("WATCHDOG=1").at;
  for (int i = 0; i < 3; ++i) {
    clock::time_point next = n.wait_for("WATCHDOG=1").at;
    CHECK(next - last < interval);
    last = next;
  }
}

// A client whose connection keeps a worker busy until finish().
struct held_connection {
  explicit held_connection(const std::string& address) : sock(prefork::connect(address)) {
    prefork::write_all(sock.get(), "hold\n");
    auto [error, got] = read_some_within(5s);
    REQUIRE(got == "hold\n");
  }
  std::pair<std::string, std::string> read_some_within(std::chrono::milliseconds limit) {
    pollfd p{sock.get(), POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(limit.count())) <= 0) return {"timeout", ""};
    char buf[64];
    prefork::io_result r = prefork::read_some(sock.get(), buf, sizeof buf);
    return {"", std::string(buf, r.bytes)};
  }
  void finish() {
    ::shutdown(sock.get(), SHUT_WR);
    auto [error, rest] = read_to_eof(sock.get(), clock::now() + 20s);
    CHECK(error == "");
  }
  prefork::fd sock;
};

}  // namespace

TEST_CASE("systemd: start, HUP, fork_exec upgrade and stop notify in order; the watchdog is fed",
          "[upgrade][systemd][fork_exec]") {
  prefork::test::leak_check leaks;
  {
    char dir_template[] = "/tmp/prefork-notify-XXXXXX";
    REQUIRE(::mkdtemp(dir_template) != nullptr);
    const fs::path socket_path = fs::path(dir_template) / "notify";
    {
      notify_socket n(socket_path);
      pool_master m("fork_exec", 2, false, {"NOTIFY_SOCKET=" + socket_path.string(), "WATCHDOG_USEC=1000000"},
                    3000);
      const pid_t first = m.pid();
      notify_socket::message ready = n.wait_for("READY=1");
      CHECK(ready.sender == first);
      CHECK(ready.text.find("STATUS=2 workers ready") != std::string::npos);
      CHECK(n.wait_for("STATUS=2 of 2 workers ready, generation 1").sender == first);
      check_watchdog(n, 1000ms);

      m.signal(SIGHUP);
      CHECK(n.wait_for("RELOADING=1").sender == first);
      CHECK(n.wait_for("READY=1").sender == first);

      const pid_t next = m.upgrade_fork_exec();
      notify_socket::message handed = n.wait_for("MAINPID=" + std::to_string(next));
      CHECK(handed.sender == next);
      CHECK(handed.text.find("READY=1") != std::string::npos);
      // The old master retired without telling systemd the service stops.
      CHECK(n.count("STOPPING=1") == 0);
      check_watchdog(n, 1000ms);

      // A long drain: one connection is still being served when QUIT comes.
      held_connection busy(m.address);
      m.signal(SIGQUIT);
      CHECK(n.wait_for("STOPPING=1").sender == next);
      notify_socket::message extend = n.wait_for("EXTEND_TIMEOUT_USEC=");
      CHECK(extend.sender == next);
      long long usec = std::stoll(extend.text.substr(extend.text.find('=') + 1));
      CHECK(usec > 3'000'000);   // at least the drain still ahead
      CHECK(usec < 20'000'000);  // and not wildly more
      CHECK(n.wait_for("STATUS=stopping").sender == next);
      busy.finish();
      m.log.wait_for("prefork[" + std::to_string(next) + "]: stop complete");
      REQUIRE(m.master.wait_for(20s));
      CHECK(n.index_of("READY=1") < n.index_of("RELOADING=1"));
      CHECK(n.index_of("RELOADING=1") < n.index_of("MAINPID="));
      CHECK(n.index_of("MAINPID=") < n.index_of("STOPPING=1"));
      CHECK(n.index_of("STOPPING=1") < n.index_of("EXTEND_TIMEOUT_USEC="));
    }
    fs::remove_all(dir_template);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("systemd: an in_place upgrade is RELOADING then READY from the same PID, never MAINPID",
          "[upgrade][systemd][in_place]") {
  prefork::test::leak_check leaks;
  {
    char dir_template[] = "/tmp/prefork-notify-XXXXXX";
    REQUIRE(::mkdtemp(dir_template) != nullptr);
    const fs::path socket_path = fs::path(dir_template) / "notify";
    {
      notify_socket n(socket_path);
      pool_master m("in_place", 2, false, {"NOTIFY_SOCKET=" + socket_path.string(), "WATCHDOG_USEC=1000000"},
                    3000);
      const pid_t pid = m.pid();
      n.wait_for("READY=1");
      for (unsigned round = 1; round <= 2; ++round) {
        m.upgrade_in_place(round);
        n.wait_for("RELOADING=1");
        notify_socket::message ready = n.wait_for("READY=1");
        CHECK(ready.text.find("STATUS=2 workers ready") != std::string::npos);
        n.wait_for("STATUS=2 of 2 workers ready, generation " + std::to_string(round + 1));
      }
      check_watchdog(n, 1000ms);  // the new image feeds it too
      m.quit();
      n.wait_for("STOPPING=1");
      for (const notify_socket::message& msg : n.seen()) CHECK(msg.sender == pid);
      CHECK(n.count("MAINPID=") == 0);
    }
    fs::remove_all(dir_template);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("systemd: a service manager that does not read never stalls the master", "[upgrade][systemd]") {
  prefork::test::leak_check leaks;
  {
    char dir_template[] = "/tmp/prefork-notify-XXXXXX";
    REQUIRE(::mkdtemp(dir_template) != nullptr);
    const fs::path socket_path = fs::path(dir_template) / "notify";
    {
      // Bound, never read: its queue is full after ten datagrams, and a
      // ping every 10 ms fills it at once.
      prefork::fd deaf(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
      sockaddr_un addr{};
      addr.sun_family = AF_UNIX;
      std::memcpy(addr.sun_path, socket_path.c_str(), socket_path.string().size());
      REQUIRE(::bind(deaf.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0);
      pool_master m("fork_exec", 1, false, {"NOTIFY_SOCKET=" + socket_path.string(), "WATCHDOG_USEC=20000"});
      // Fill its queue ourselves, so it is full for certain.
      prefork::fd filler(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
      int sent = 0;
      while (::sendto(filler.get(), "x", 1, MSG_DONTWAIT, reinterpret_cast<const sockaddr*>(&addr),
                      sizeof addr) == 1)
        REQUIRE(++sent < 100000);
      REQUIRE(errno == EAGAIN);
      client_loop load(m.address);
      load.wait_progress(50);
      load.stop();
      CHECK(load.failures() == std::vector<std::string>{});
      const auto asked = clock::now();
      m.quit();  // STOPPING=1 waits a little for room, then is dropped
      CHECK(clock::now() - asked > 1s);
      CHECK(clock::now() - asked < 10s);
    }
    fs::remove_all(dir_template);
  }
  CHECK(leaks.problems() == "");
}
