// prefork-httpd's io_uring loop (-m uring) at its own seams: the fallback
// to the epoll loop when io_uring cannot be used, the provided receive
// buffers running out, connections closed with a receive in flight and
// their slots reused, and input piling up behind an answer the client does
// not read. The behaviour it shares with the epoll loop is tested by the
// evented tests run in every mode. Where the kernel cannot run the loop,
// the uring-only cases say so and pass (the fallback case still runs).
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>

#include <chrono>
#include <fstream>
#include <string>
#include <vector>

#include "catch.hpp"
#include "chaos_support.hpp"
#include "env_var.hpp"
#include "helpers.hpp"
#include "httpd_modes.hpp"
#include "httpd_support.hpp"
#include "leak_check.hpp"
#include "proc.hpp"

using namespace httpd_test;
using chaos::count_of;
using chaos::wait_workers;

// Runs argv[0..] with io_uring_setup refused (EPERM) by a seccomp filter, as
// a container runtime's default profile does.
PREFORK_HELPER(without_io_uring) {
  sock_filter code[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  sock_fprog prog{static_cast<unsigned short>(sizeof code / sizeof code[0]), code};
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == -1) return 126;
  if (::prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) == -1) return 126;
  ::execv(argv[0], argv);
  return 127;
}

TEST_CASE("uring: PREFORK_HTTPD_NO_URING falls back to the evented loop and says so", "[httpd][uring]") {
  prefork::test::leak_check leaks;
  {
    command_result plain = run({prefork::test::bin_path("prefork-httpd"), "--check", "-m", "uring"}, true);
    if (plain.out.find("built without liburing") != std::string::npos) {
      // A build without liburing refuses the mode outright.
      CHECK(plain.code == 1);
      return;
    }
    prefork::test::env_var off("PREFORK_HTTPD_NO_URING", std::string("1"));
    command_result check = run({prefork::test::bin_path("prefork-httpd"), "--check", "-m", "uring"}, true);
    CHECK(check.code == 0);
    CHECK(check.out.find("evented mode; io_uring unavailable: disabled by PREFORK_HTTPD_NO_URING") !=
          std::string::npos);
    server s({"-m", "uring"});
    INFO(s.log());
    CHECK(s.log().find(
              "-m uring: io_uring unavailable (disabled by PREFORK_HTTPD_NO_URING): running the evented "
              "loop instead") != std::string::npos);
    CHECK(s.log().find("ready: 2 workers serving (evented mode)") != std::string::npos);
    CHECK(get(s.port(), "/hello").body == "Hello, World!");
    check_clean_stop(s);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("uring: io_uring_setup refused by seccomp (EPERM): the probe says so and the evented loop serves",
          "[httpd][uring][seccomp]") {
  if (!mode_runs_here("uring")) return;  // WARNs why
  prefork::test::leak_check leaks;
  {
    const std::string httpd = prefork::test::bin_path("prefork-httpd");
    command_result check =
        run(prefork::test::helper_argv("without_io_uring", {httpd, "--check", "-m", "uring"}), true);
    INFO(check.out);
    CHECK(check.code == 0);
    CHECK(check.out.find("evented mode; io_uring unavailable: io_uring_setup: Operation not permitted") !=
          std::string::npos);
    server s({"-l", "127.0.0.1:0", "-w", "2", "-m", "uring"}, true,
             prefork::test::helper_argv("without_io_uring"));
    INFO(s.log());
    CHECK(s.log().find("-m uring: io_uring unavailable (io_uring_setup: Operation not permitted") !=
          std::string::npos);
    CHECK(count_of(s.log(), "io_uring unavailable") == 1);  // once, by the master
    CHECK(s.log().find("ready: 2 workers serving (evented mode)") != std::string::npos);
    CHECK(get(s.port(), "/hello").body == "Hello, World!");
    check_clean_stop(s);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("uring: the ready line names the mode that runs", "[httpd][uring]") {
  if (!mode_runs_here("uring")) return;  // WARNs why
  prefork::test::leak_check leaks;
  {
    server s({"-m", "uring"});
    CHECK(s.log().find("ready: 2 workers serving (uring mode)") != std::string::npos);
    CHECK(s.log().find("io_uring unavailable") == std::string::npos);
    check_clean_stop(s);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("uring: two provided buffers for 200 connections: ENOBUFS is said once and every request answered",
          "[httpd][uring][enobufs]") {
  if (!mode_runs_here("uring")) return;  // WARNs why
  prefork::test::leak_check leaks;
  {
    prefork::test::env_var tiny("PREFORK_HTTPD_URING_BUFFERS", std::string("2"));
    server s({"-m", "uring", "-w", "1"});
    check_mode(s, "uring");
    std::vector<prefork::fd> conns;
    for (int i = 0; i < 200; ++i) conns.push_back(connect_to(s.port()));
    int served = 0;
    for (int round = 0; round < 3; ++round) {
      // All at once, three requests each: many receives complete in one
      // turn, more than two buffers hold.
      for (auto& c : conns) send_text(c.get(), hello_request + hello_request + hello_request);
      for (auto& c : conns) {
        std::string pending;
        for (int k = 0; k < 3; ++k) {
          response r = read_response(c.get(), pending);
          if (r.status == 200 && r.body == "Hello, World!") ++served;
        }
      }
    }
    CHECK(served == 200 * 3 * 3);
    CHECK(s.wait_log("provided receive buffers ran out (ENOBUFS)").find("the 2 provided") !=
          std::string::npos);
    conns.clear();
    check_clean_stop(s);
    CHECK(count_of(s.log(), "ENOBUFS") == 1);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("uring: connections closed with a receive in flight free their slots and descriptors",
          "[httpd][uring][lifetime]") {
  if (!mode_runs_here("uring")) return;  // WARNs why
  prefork::test::leak_check leaks;
  {
    server s({"-m", "uring", "-w", "1", "--keepalive-timeout", "0.2"});
    check_mode(s, "uring");
    pid_t worker = wait_workers(s.pid(), 1)[0];
    CHECK(get(s.port(), "/hello").status == 200);
    const std::size_t fds_before = prefork::test::fd_count(worker);
    for (int round = 0; round < 3; ++round) {
      // Idle keep-alive connections, each with its multishot receive in
      // flight: the keep-alive timeout closes them (cancel and close
      // through the ring); some clients also reset theirs first.
      std::vector<prefork::fd> conns;
      for (int i = 0; i < 50; ++i) {
        conns.push_back(connect_to(s.port()));
        std::string pending;
        send_text(conns.back().get(), hello_request);
        REQUIRE(read_response(conns.back().get(), pending).status == 200);
      }
      for (std::size_t i = 0; i < conns.size(); i += 5) {
        linger hard{1, 0};
        ::setsockopt(conns[i].get(), SOL_SOCKET, SO_LINGER, &hard, sizeof hard);
        conns[i].reset();
      }
      for (auto& c : conns)
        if (c) CHECK(closed_within(c.get(), 10s));
    }
    // The slots, reused, serve new connections; nothing of the old ones is left.
    std::vector<prefork::fd> fresh;
    for (int i = 0; i < 50; ++i) fresh.push_back(connect_to(s.port()));
    for (auto& c : fresh) send_text(c.get(), hello_request);
    for (auto& c : fresh) {
      std::string pending;
      CHECK(read_response(c.get(), pending).body == "Hello, World!");
    }
    fresh.clear();
    auto deadline = steady::now() + patience;
    while (prefork::test::fd_count(worker) != fds_before && steady::now() < deadline) {
      CHECK(get(s.port(), "/hello").status == 200);  // a turn of the loop, which closes what timed out
    }
    CHECK(prefork::test::fd_count(worker) == fds_before);
    check_clean_stop(s);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE(
    "uring: requests piled up behind a large answer the client does not read are all answered, in order",
    "[httpd][uring][pipelining]") {
  if (!mode_runs_here("uring")) return;  // WARNs why
  prefork::test::leak_check leaks;
  {
    char tmpl[] = "/tmp/prefork-httpd-uring-XXXXXX";
    std::string root = ::mkdtemp(tmpl);
    std::string big(8u << 20, 'x');
    std::ofstream(root + "/big.txt", std::ios::binary) << big;
    {
      server s({"-m", "uring", "-w", "1", root});
      check_mode(s, "uring");
      prefork::fd c = connect_to(s.port());
      // The file's answer fills the socket buffers and waits; behind it
      // come 2 MiB of requests (more than the loop keeps while an answer
      // waits: it stops receiving until the answer is out).
      std::string echo_body(64 * 1024, 'e');
      std::string echo =
          "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: " + std::to_string(echo_body.size()) +
          "\r\n\r\n" + echo_body;
      std::string batch = "GET /big.txt HTTP/1.1\r\nHost: t\r\n\r\n";
      for (int i = 0; i < 32; ++i) batch += echo;
      batch += hello_request;
      // Written without blocking, reading answers whenever the server
      // stops taking more.
      std::size_t sent = 0;
      std::string got;
      auto deadline = steady::now() + patience;
      while (sent < batch.size()) {
        REQUIRE(steady::now() < deadline);
        ssize_t n = ::send(c.get(), batch.data() + sent, batch.size() - sent, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n > 0) {
          sent += static_cast<std::size_t>(n);
          continue;
        }
        // The server stopped reading: take some of the answers, then go on.
        char buf[65536];
        ssize_t r = ::recv(c.get(), buf, sizeof buf, MSG_DONTWAIT);
        if (r > 0) {
          got.append(buf, static_cast<std::size_t>(r));
        } else {
          pollfd p{c.get(), POLLIN | POLLOUT, 0};
          ::poll(&p, 1, 100);
        }
      }
      std::string pending = got;
      response file = read_response(c.get(), pending);
      CHECK(file.status == 200);
      CHECK(file.body.size() == big.size());
      for (int i = 0; i < 32; ++i) {
        response r = read_response(c.get(), pending);
        CHECK(r.status == 200);
        CHECK(r.body == echo_body);
      }
      CHECK(read_response(c.get(), pending).body == "Hello, World!");
      check_clean_stop(s);
    }
    std::system(("rm -rf '" + root + "'").c_str());
  }
  CHECK(leaks.problems() == "");
}
