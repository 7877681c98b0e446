// examples/echo as a process: prefork-echo started, used and stopped as an
// operator would.
#include <filesystem>

#include "helpers.hpp"
#include "pool_harness.hpp"

using namespace pool_test;
namespace fs = std::filesystem;

namespace {

// Reads one line from a pipe, waiting up to `limit`.
std::string read_line(int fd, std::chrono::milliseconds limit = 20s) {
  std::string line;
  auto deadline = clock::now() + limit;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock::now()).count();
    pollfd p{fd, POLLIN, 0};
    if (left <= 0 || ::poll(&p, 1, static_cast<int>(left)) <= 0) return line;
    char c;
    if (prefork::read_some(fd, &c, 1).bytes != 1 || c == '\n') return line;
    line += c;
  }
}

// Runs prefork-echo with `args`, its stdout and stderr on the given pipes.
prefork::child start_echo(std::vector<std::string> args, int out, int err) {
  args.insert(args.begin(), prefork::test::bin_path("prefork-echo"));
  prefork::spawn_options options;
  options.fds = {{0, 0}, {out >= 0 ? out : 1, 1}, {err, 2}};
  return prefork::spawn(args, options);
}

}  // namespace

TEST_CASE("prefork-echo: reports its address, echoes, stops on QUIT with exit 0", "[pool][echo]") {
  prefork::test::leak_check leaks;
  char tmpl[] = "/tmp/prefork-echo-XXXXXX";
  REQUIRE(::mkdtemp(tmpl) != nullptr);
  fs::path pid_path = fs::path(tmpl) / "echo.pid";
  {
    auto out = prefork::pipe();
    auto err = prefork::pipe();
    prefork::child echo =
        start_echo({"--listen", "127.0.0.1:0", "--workers", "2", "--pid", pid_path.string()}, out.write.get(),
                   err.write.get());
    out.write.reset();
    err.write.reset();
    std::string banner = read_line(out.read.get());
    REQUIRE(banner.rfind("listening on 127.0.0.1:", 0) == 0);
    const std::string address = banner.substr(13);
    // Two clients at once, each served by its own worker.
    prefork::fd a = prefork::connect(address), b = prefork::connect(address);
    std::string big(100000, 'e');
    for (std::size_t i = 0; i < big.size(); i += 97) big[i] = static_cast<char>('a' + i % 26);
    prefork::write_all(b.get(), "hello\n");
    prefork::write_all(a.get(), big);
    ::shutdown(a.get(), SHUT_WR);
    CHECK(prefork::read_all(a.get()) == big);
    CHECK(read_line(b.get()) == "hello");
    b.reset();
    a.reset();
    // The pid file, written before the first log line, names the master,
    // which is the process we started.
    std::string first_log = read_line(err.read.get());
    CHECK(first_log.find("master started: 2 workers, listening on " + address) != std::string::npos);
    CHECK(prefork::pid_file::read(pid_path) == echo.pid());
    echo.kill(SIGQUIT);
    std::optional<prefork::exit_status> how = echo.wait_for(20s);
    REQUIRE(how);
    CHECK(how->describe() == "exited 0");
    CHECK_FALSE(fs::exists(pid_path));
    std::string log = prefork::read_all(err.read.get());
    CHECK(log.find("received SIGQUIT") != std::string::npos);
    CHECK(log.find("stop complete") != std::string::npos);
  }
  fs::remove_all(tmpl);
  CHECK(leaks.problems() == "");
}

TEST_CASE("prefork-echo: a bad flag is one line naming it, the usage, and exit 2", "[pool][echo]") {
  prefork::test::leak_check leaks;
  for (std::vector<std::string> args :
       {std::vector<std::string>{"--bogus"}, {"--workers", "zero"}, {"--listen"}}) {
    auto err = prefork::pipe();
    prefork::child echo = start_echo(args, -1, err.write.get());
    err.write.reset();
    std::string text = prefork::read_all(err.read.get());
    CHECK(echo.wait().describe() == "exited 2");
    CHECK(text.find("prefork-echo: ") == 0);
    CHECK(text.find(args[0]) != std::string::npos);
    CHECK(text.find("usage: prefork-echo [--listen ADDR] [--workers N] [--pid FILE] [--reuseport]\n") !=
          std::string::npos);
    CHECK(std::count(text.begin(), text.end(), '\n') == 2);
  }
  CHECK(leaks.problems() == "");
}
