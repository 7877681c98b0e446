// examples/echo as a newcomer meets it: a graceful stop that an idle client
// cannot hold, a second start that names the running master, and a port in
// use that is one line and a non-zero exit.
#include <sys/socket.h>

#include <filesystem>
#include <string>
#include <vector>

#include "catch.hpp"
#include "httpd_support.hpp"
#include "leak_check.hpp"
#include "temp_dir.hpp"

using namespace httpd_test;

namespace {

// prefork-echo with `args`, its stdout and stderr read by the test.
class echo_server {
 public:
  explicit echo_server(std::vector<std::string> args) {
    args.insert(args.begin(), prefork::test::bin_path("prefork-echo"));
    auto out = prefork::pipe();
    auto err = prefork::pipe();
    proc_.emplace(start_process(args, out.write.get(), err.write.get()));
    out_ = std::move(out.read);
    err_ = std::move(err.read);
  }
  ~echo_server() {
    if (!proc_->status()) {
      std::error_code ec;
      proc_->kill(SIGKILL, ec);
      proc_->wait();
    }
  }

  // "listening on ADDR": the address.
  std::string address() {
    std::string out;
    auto deadline = steady::now() + patience;
    while (out.find('\n') == std::string::npos)
      if (!read_some_until(out_.get(), out, deadline)) throw std::runtime_error("no banner; got: " + out);
    REQUIRE(out.rfind("listening on ", 0) == 0);
    return out.substr(13, out.find('\n') - 13);
  }

  // Waits for the master's first log line, written after the pid file.
  void wait_started() {
    auto deadline = steady::now() + patience;
    while (log_.find("master started") == std::string::npos)
      if (!read_some_until(err_.get(), log_, deadline)) throw std::runtime_error("not started; log: " + log_);
  }

  // The exit status (SIGKILL after `limit`), and everything on stderr.
  prefork::exit_status finish(std::chrono::milliseconds limit = patience) {
    auto status = proc_->wait_for(limit);
    if (!status) {
      proc_->kill(SIGKILL);
      status = proc_->wait();
    }
    log_ += read_until_close(err_.get(), steady::now() + 5s);
    return *status;
  }

  prefork::child& process() { return *proc_; }
  const std::string& log() const { return log_; }

 private:
  std::optional<prefork::child> proc_;
  prefork::fd out_, err_;
  std::string log_;
};

// Sends `line` and reads the echo up to its newline; false if the
// connection ended first.
bool exchange(int fd, const std::string& line) {
  std::error_code ec;
  if (prefork::write_all(fd, line.data(), line.size(), ec) != line.size()) return false;
  std::string got;
  auto deadline = steady::now() + patience;
  while (got.size() < line.size())
    if (!read_some_until(fd, got, deadline)) return false;
  return got == line;
}

}  // namespace

TEST_CASE("prefork-echo: QUIT closes an idle client's connection and ends after a busy client's reply",
          "[echo][quit]") {
  prefork::test::leak_check leaks;
  {
    prefork::test::temp_dir dir;
    echo_server echo({"--listen", "127.0.0.1:0", "--workers", "2", "--pid", (dir / "echo.pid").string()});
    const std::string address = echo.address();
    // Each client is held by its own worker: the idle one said hello and
    // then nothing; the busy one talks in lockstep.
    prefork::fd idle = prefork::connect(address);
    REQUIRE(exchange(idle.get(), "hello\n"));
    prefork::fd busy = prefork::connect(address);
    for (int i = 0; i < 20; ++i) REQUIRE(exchange(busy.get(), "line " + std::to_string(i) + "\n"));

    echo.process().kill(SIGQUIT);
    auto last_reply = steady::now();
    int after_quit = 0;
    while (exchange(busy.get(), "more\n")) {
      last_reply = steady::now();
      REQUIRE(++after_quit < 100000);
    }
    prefork::exit_status how = echo.finish();
    double seconds = std::chrono::duration<double>(steady::now() - last_reply).count();
    INFO("the master's log:\n" << echo.log());
    CHECK(how.describe() == "exited 0");
    CHECK(seconds < 1.0);
    CHECK(echo.log().find("SIGKILL") == std::string::npos);
    CHECK(echo.log().find("stop complete") != std::string::npos);
    // The idle client reads end of file: a clean close, not a reset.
    char c;
    pollfd p{idle.get(), POLLIN, 0};
    REQUIRE(::poll(&p, 1, 5000) == 1);
    ssize_t got = ::read(idle.get(), &c, 1);
    INFO("read: " << got << ", errno " << errno);
    CHECK(got == 0);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("prefork-echo: a second start with the same pid file names the running master", "[echo][pidfile]") {
  prefork::test::leak_check leaks;
  {
    prefork::test::temp_dir dir;
    const std::string pid_path = (dir / "echo.pid").string();
    echo_server first({"--listen", "127.0.0.1:0", "--workers", "1", "--pid", pid_path});
    const std::string address = first.address();
    first.wait_started();
    echo_server second({"--listen", address, "--workers", "1", "--pid", pid_path});
    CHECK(second.finish().describe() == "exited 1");
    CHECK(second.log() == "prefork-echo: pid file " + pid_path + ": already running as PID " +
                              std::to_string(first.process().pid()) + "\n");
    // Without a pid file, the port in use is one line too, and exit 1.
    echo_server third({"--listen", address, "--workers", "1"});
    CHECK(third.finish().describe() == "exited 1");
    CHECK(third.log() == "prefork-echo: listen " + address + ": Address already in use\n");
    first.process().kill(SIGQUIT);
    CHECK(first.finish().describe() == "exited 0");
  }
  CHECK(leaks.problems() == "");
}
