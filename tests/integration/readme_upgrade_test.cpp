// The README's "A taste" program, as the README has it (extracted at build
// time by tests/readme), upgraded with USR2 in both modes while a client
// loop keeps making echo round trips: the new image's
// listen("127.0.0.1:7007") must find the inherited socket instead of
// binding again (EADDRINUSE), and no connection may fail.
//
// The program has a fixed port and pid file (/tmp/echo.pid), so each test
// runs in a network namespace of its own (with only a loopback) and a mount
// namespace with a private /tmp: nothing else on the machine can collide
// with it, nor it with anything else. Without the right to make namespaces
// (neither root nor unprivileged user namespaces) the tests are skipped.
//
// Also: inherited descriptors that no listen() takes are CLOEXEC at once and
// closed by the pool's master when it starts.
#include <fcntl.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <prefork/pool.hpp>
#include <prefork/spawn.hpp>

#include "helpers.hpp"
#include "leak_check.hpp"
#include "upgrade_harness.hpp"

using namespace upgrade_test;
namespace fs = std::filesystem;

namespace {

std::string errno_text(const std::string& call) { return call + ": " + std::strerror(errno); }

// Writes `text` to a /proc file of this process; "" or why not.
std::string write_proc(const std::string& path, const std::string& text) {
  prefork::fd f(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (!f) return errno_text("open " + path);
  std::error_code ec;
  prefork::write_all(f.get(), text.data(), text.size(), ec);
  return ec ? path + ": " + ec.message() : "";
}

// This process (the test, and all it starts from now on) in new network
// and mount namespaces: loopback up, a fresh tmpfs on /tmp. Directories
// under /tmp the test still needs (the build, if it lives there) are bound
// back into the new /tmp. "" or why not.
std::string isolate() {
  std::vector<std::string> keep = {fs::path(prefork::test::bin_path("readme_taste")).parent_path().string(),
                                   fs::path(prefork::test::self_exe()).parent_path().string(),
                                   fs::current_path().string()};  // a new master starts in it
  const uid_t uid = ::geteuid();
  const gid_t gid = ::getegid();
  int flags = CLONE_NEWNET | CLONE_NEWNS;
  if (uid != 0) flags |= CLONE_NEWUSER;
  if (::unshare(flags) == -1) return errno_text("unshare");
  if (uid != 0) {
    for (const auto& [path, text] : std::vector<std::pair<std::string, std::string>>{
             {"/proc/self/setgroups", "deny"},
             {"/proc/self/uid_map", "0 " + std::to_string(uid) + " 1"},
             {"/proc/self/gid_map", "0 " + std::to_string(gid) + " 1"}})
      if (std::string why = write_proc(path, text); !why.empty()) return why;
  }
  if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) == -1)
    return errno_text("mount --make-rprivate /");
  prefork::fd sock(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  ifreq lo{};
  std::strcpy(lo.ifr_name, "lo");
  if (!sock || ::ioctl(sock.get(), SIOCGIFFLAGS, &lo) == -1) return errno_text("SIOCGIFFLAGS lo");
  lo.ifr_flags = static_cast<short>(lo.ifr_flags | IFF_UP);
  if (::ioctl(sock.get(), SIOCSIFFLAGS, &lo) == -1) return errno_text("SIOCSIFFLAGS lo up");
  // The folders of the binaries, when they live under /tmp, are opened
  // here, in the new mount namespace: a bind mount from a descriptor opened
  // before unshare() is refused (EINVAL: a mount of another namespace).
  std::vector<std::pair<std::string, prefork::fd>> under_tmp;
  for (const std::string& dir : keep)
    if (dir.rfind("/tmp/", 0) == 0)
      under_tmp.emplace_back(dir, prefork::fd(::open(dir.c_str(), O_PATH | O_CLOEXEC)));
  if (::mount("tmpfs", "/tmp", "tmpfs", 0, "mode=1777") == -1) return errno_text("mount tmpfs /tmp");
  for (auto& [dir, old] : under_tmp) {
    std::error_code ec;
    fs::create_directories(dir, ec);
    std::string from = "/proc/self/fd/" + std::to_string(old.get());
    if (ec || ::mount(from.c_str(), dir.c_str(), nullptr, MS_BIND, nullptr) == -1) {
      std::string why = errno_text("bind " + dir + " back into the private /tmp");
      ::umount2("/tmp", MNT_DETACH);  // the other tests of this file need the real /tmp
      return why;
    }
  }
  return "";
}

// Once per process: the namespaces stay for every test of this file.
const std::string& isolated() {
  static const std::string why_not = isolate();
  return why_not;
}

pid_t pid_in_log_line(const std::string& line) {
  auto at = line.find("prefork[");
  REQUIRE(at != std::string::npos);
  return static_cast<pid_t>(std::stol(line.substr(at + 8)));
}

std::string first_line(const std::string& path) {
  std::ifstream in(path);
  std::string text;
  std::getline(in, text);
  return text;
}

// The README's program, its log (stderr) read by the test.
class taste {
 public:
  explicit taste(const std::string& program) {
    prefork::spawn_options options;
    options.fds = {{0, 0}, {1, 1}, {log.write_fd(), 2}};
    master = prefork::spawn({prefork::test::bin_path(program)}, options);
    log.close_write();
    log.wait_for("master started: 4 workers, listening on 127.0.0.1:7007");
    for (int i = 0; i < 4; ++i) log.wait_for(") ready");
  }
  // A failed test leaves masters and workers running; they are all ours
  // (the subreaper), and go.
  ~taste() {
    for (pid_t p : children_of(::getpid())) ::kill(p, SIGKILL);
    for (pid_t p : children_of(::getpid(), prefork::test::kids::all))
      if (p != master.pid()) ::waitpid(p, nullptr, 0);
  }
  taste(const taste&) = delete;
  taste& operator=(const taste&) = delete;

  prefork::test::line_reader log;
  prefork::child master;
};

}  // namespace

TEST_CASE("the README's program survives a fork_exec USR2 without failing a connection",
          "[readme][upgrade][fork_exec]") {
  if (!isolated().empty()) {
    WARN("skipped: cannot make network and mount namespaces: " << isolated());
    return;
  }
  prefork::test::leak_check leaks;
  {
    taste t("readme_taste");
    const pid_t old_master = t.master.pid();
    client_loop loop("127.0.0.1:7007");
    loop.wait_progress(20);
    REQUIRE(::kill(old_master, SIGUSR2) == 0);
    // The new master takes the socket: no bind error, no rollback.
    std::string started = t.log.wait_for("(upgrade from pid " + std::to_string(old_master) + ")");
    const pid_t next = pid_in_log_line(started);
    CHECK(started.find("listening on 127.0.0.1:7007") != std::string::npos);
    t.log.wait_for("handing over");
    std::optional<prefork::exit_status> old_end = t.master.wait_for(std::chrono::milliseconds(20000));
    REQUIRE(old_end);
    CHECK(old_end->describe() == "exited 0");
    CHECK(t.log.count("upgrade failed") == 0);
    CHECK(first_line("/tmp/echo.pid") == std::to_string(next));
    loop.wait_progress(20);
    loop.finish();

    prefork::child new_master = prefork::child::adopt(next);  // ours since the old one exited (subreaper)
    new_master.kill(SIGQUIT);
    std::optional<prefork::exit_status> end = new_master.wait_for(std::chrono::milliseconds(20000));
    REQUIRE(end);
    CHECK(end->describe() == "exited 0");
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("the README's program survives an in_place USR2 without failing a connection",
          "[readme][upgrade][in_place]") {
  if (!isolated().empty()) {
    WARN("skipped: cannot make network and mount namespaces: " << isolated());
    return;
  }
  prefork::test::leak_check leaks;
  {
    taste t("readme_taste_in_place");
    client_loop loop("127.0.0.1:7007");
    loop.wait_progress(20);
    REQUIRE(::kill(t.master.pid(), SIGUSR2) == 0);
    t.log.wait_for("master re-executed in place (upgrade 1)");
    t.log.wait_for("upgrade 1 complete");
    for (int i = 0; i < 4; ++i) t.log.wait_for("generation 1) exited 0");
    CHECK(first_line("/tmp/echo.pid") == std::to_string(t.master.pid()));
    loop.wait_progress(20);
    loop.finish();

    REQUIRE(::kill(t.master.pid(), SIGQUIT) == 0);
    std::optional<prefork::exit_status> end = t.master.wait_for(std::chrono::milliseconds(20000));
    REQUIRE(end);
    CHECK(end->describe() == "exited 0");
  }
  CHECK(leaks.problems() == "");
}

// ADDRESS INODE: listens on ADDRESS, which it inherited (PREFORK_FDS) with
// another socket, INODE, that nobody takes; says what it sees on stderr.
PREFORK_HELPER(inherit_and_listen) {
  if (argc != 2) return 2;
  const std::string other = std::string("socket:[") + argv[1] + "]";
  auto holds_other = [&] {
    for (const auto& e : fs::directory_iterator("/proc/self/fd")) {
      std::error_code ec;
      if (fs::read_symlink(e.path(), ec).string() == other) {
        int flags = ::fcntl(std::stoi(e.path().filename().string()), F_GETFD);
        return std::string(flags != -1 && (flags & FD_CLOEXEC) ? "cloexec" : "inheritable");
      }
    }
    return std::string("closed");
  };
  try {
    prefork::pool_config config;
    config.listeners.push_back(prefork::listen(argv[0]));
    prefork::test::line_reader::say(
        2, "listener fd " + std::to_string(config.listeners[0].get()) + ", the other one " + holds_other());
    config.after_fork = [&](prefork::worker&) {
      prefork::test::line_reader::say(2, "in the worker, the other one " + holds_other());
    };
    prefork::master master(std::move(config));
    return master.run([](prefork::worker& w) {
      while (prefork::fd conn = w.accept()) w.request_done();
    });
  } catch (const std::exception& e) {
    prefork::test::line_reader::say(2, std::string("failed: ") + e.what());
    return 1;
  }
}

TEST_CASE(
    "listen() returns the inherited socket of its address; the master closes inherited ones nobody took",
    "[readme][upgrade][inherit]") {
  prefork::test::leak_check leaks;
  {
    prefork::fd mine = prefork::listen("127.0.0.1:0");
    prefork::fd other = prefork::listen("127.0.0.1:0");
    struct stat st {};
    REQUIRE(::fstat(other.get(), &st) == 0);
    prefork::test::line_reader log;
    prefork::spawn_options options;
    options.fds = {{0, 0}, {1, 1}, {log.write_fd(), 2}, {mine.get(), 3}, {other.get(), 4}};
    std::vector<std::string> env{"PREFORK_FDS=3,4"};
    for (char** e = environ; *e; ++e) env.emplace_back(*e);
    options.env = env;
    prefork::child server = prefork::spawn(
        prefork::test::helper_argv("inherit_and_listen",
                                   {prefork::local_address(mine.get()), std::to_string(st.st_ino)}),
        options);
    log.close_write();
    CHECK(log.wait_for("listener fd") == "listener fd 3, the other one cloexec");
    std::string closing = log.wait_for("inherited descriptors");
    CHECK(closing.find("closing 1 inherited descriptors (PREFORK_FDS) that no listener took: " +
                       prefork::local_address(other.get())) != std::string::npos);
    CHECK(log.wait_for("in the worker") == "in the worker, the other one closed");
    log.wait_for(") ready");
    server.kill(SIGQUIT);
    std::optional<prefork::exit_status> end = server.wait_for(std::chrono::milliseconds(20000));
    REQUIRE(end);
    CHECK(end->describe() == "exited 0");
  }
  CHECK(leaks.problems() == "");
}

// ADDRESS...: listens on each (with PREFORK_FDS set by the test), prints
// the descriptor numbers listen() returned, one line.
PREFORK_HELPER(listen_each) {
  std::string out;
  try {
    std::vector<prefork::fd> kept;
    for (int i = 0; i < argc; ++i) {
      kept.push_back(prefork::listen(argv[i]));
      out += (i ? " " : "") + std::to_string(kept.back().get());
    }
  } catch (const std::exception& e) {
    out = std::string("failed: ") + e.what();
  }
  prefork::test::line_reader::say(1, out);
  return 0;
}

TEST_CASE("listen() matches inherited unix sockets by path or name, and port 0 by address",
          "[readme][upgrade][inherit]") {
  prefork::test::leak_check leaks;
  {
    char dir_template[] = "/tmp/prefork-listen-XXXXXX";
    REQUIRE(::mkdtemp(dir_template) != nullptr);
    const std::string path = std::string(dir_template) + "/s";
    const std::string abstract = "unix:@prefork-listen-test-" + std::to_string(::getpid());
    prefork::fd tcp = prefork::listen("127.0.0.1:0");
    prefork::fd file = prefork::listen("unix:" + path);
    prefork::fd name = prefork::listen(abstract);
    prefork::test::line_reader out;
    prefork::spawn_options options;
    options.fds = {{0, 0}, {out.write_fd(), 1}, {2, 2}, {tcp.get(), 3}, {file.get(), 4}, {name.get(), 5}};
    std::vector<std::string> env{"PREFORK_FDS=3,4,5"};
    for (char** e = environ; *e; ++e) env.emplace_back(*e);
    options.env = env;
    // Out of order, and a fourth address that nobody inherited: bound afresh.
    prefork::child helper = prefork::spawn(
        prefork::test::helper_argv("listen_each", {abstract, "unix:" + path, "127.0.0.1:0", "127.0.0.1:0"}),
        options);
    out.close_write();
    std::string line = out.wait_for(" ");
    std::istringstream words(line);
    int a = 0, b = 0, c = 0, d = 0;
    words >> a >> b >> c >> d;
    INFO(line);
    CHECK(a == 5);
    CHECK(b == 4);
    CHECK(c == 3);
    CHECK(d > 5);
    std::optional<prefork::exit_status> end = helper.wait_for(std::chrono::milliseconds(20000));
    REQUIRE(end);
    CHECK(end->describe() == "exited 0");
    file.reset();
    std::error_code ec;
    fs::remove_all(dir_template, ec);
  }
  CHECK(leaks.problems() == "");
}
