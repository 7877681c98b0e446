// socket.hpp (with socket_address.hpp and fd_passing.hpp) in one process:
// address syntax and its error messages, every address form listening and
// accepting a real connection, listen's options as the kernel reports them,
// unix socket leftovers, accept's flags and errors, and descriptors passed
// over a socket pair. The syscall seam is routed to mocks (as
// eintr_test.cpp does) so EINTR, ECONNABORTED and EMFILE can be injected;
// with nothing injected the mocks are the real calls.
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <cerrno>

namespace mock {
struct fault {
  int error = 0;  // errno to fail with
  int left = 0;   // how many calls fail before the real one runs
  int calls = 0;
};
inline fault accept4_fault, connect_fault, sendmsg_fault, recvmsg_fault;
template <class Real>
auto inject(fault& f, Real real) {
  ++f.calls;
  if (f.left > 0) {
    --f.left;
    errno = f.error;
    return decltype(real())(-1);
  }
  return real();
}
inline ssize_t read(int fd, void* buf, size_t n) { return ::read(fd, buf, n); }
inline ssize_t write(int fd, const void* buf, size_t n) { return ::write(fd, buf, n); }
inline int poll(pollfd* fds, nfds_t n, int timeout) { return ::poll(fds, n, timeout); }
inline ssize_t send(int s, const void* buf, size_t n, int flags) { return ::send(s, buf, n, flags); }
inline ssize_t recv(int s, void* buf, size_t n, int flags) { return ::recv(s, buf, n, flags); }
inline int accept4(int s, sockaddr* a, socklen_t* len, int flags) {
  return inject(accept4_fault, [&] { return ::accept4(s, a, len, flags); });
}
inline ssize_t sendmsg(int s, const msghdr* m, int flags) {
  return inject(sendmsg_fault, [&] { return ::sendmsg(s, m, flags); });
}
inline ssize_t recvmsg(int s, msghdr* m, int flags) {
  return inject(recvmsg_fault, [&] { return ::recvmsg(s, m, flags); });
}
// A real TCP connect interrupted by a signal has already started (and on
// loopback finished) the handshake; a unix one has not begun. The mock
// does the same, so the library's two recoveries are both exercised.
inline int connect(int s, const sockaddr* a, socklen_t len) {
  if (connect_fault.left > 0 && a->sa_family != AF_UNIX) {
    ++connect_fault.calls;
    --connect_fault.left;
    if (::connect(s, a, len) == -1) return -1;
    errno = connect_fault.error;
    return -1;
  }
  return inject(connect_fault, [&] { return ::connect(s, a, len); });
}
// Records the mode a unix socket file is born with, before listen() can
// change it.
inline mode_t born_mode = 0;
inline int bind(int s, const sockaddr* a, socklen_t len) {
  int rc = ::bind(s, a, len);
  struct stat st {};
  if (rc == 0 && a->sa_family == AF_UNIX &&
      ::lstat(reinterpret_cast<const sockaddr_un*>(a)->sun_path, &st) == 0)
    born_mode = st.st_mode & 07777;
  return rc;
}
}  // namespace mock

#define PREFORK_SYSCALL(call) mock::call

#include <doctest/doctest.h>

#include <prefork/pipe.hpp>
#include <prefork/socket.hpp>

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/stat.h>

#include <net/if.h>

#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "leak_check.hpp"

namespace {

struct temp_dir {
  std::string path;
  temp_dir() {
    char tmpl[] = "/tmp/prefork-socket-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    path = tmpl;
  }
  ~temp_dir() { std::filesystem::remove_all(path); }
};

std::string abstract_name(const char* what) {
  return "unix:@prefork-test-" + std::to_string(::getpid()) + "-" + what;
}

// Where a client connects to reach `listener` ("0.0.0.0" is not a peer).
std::string reachable(int listener) {
  std::string a = prefork::local_address(listener);
  if (a.rfind("0.0.0.0:", 0) == 0) return "127.0.0.1" + a.substr(7);
  if (a.rfind("[::]:", 0) == 0) return "[::1]" + a.substr(4);
  return a;
}

// accept(), with a deadline that only a failing test reaches.
prefork::fd accept_soon(int listener, int flags = 0, prefork::socket_address* peer = nullptr) {
  pollfd p{listener, POLLIN, 0};
  REQUIRE(::poll(&p, 1, 20000) == 1);
  return prefork::accept(listener, flags, peer);
}

// Connects to the listener, accepts, and sends a byte each way.
void roundtrip(int listener) {
  prefork::fd client = prefork::connect(reachable(listener));
  prefork::fd server = accept_soon(listener);
  REQUIRE(server);
  CHECK(prefork::local_address(server.get()) == prefork::peer_address(client.get()));
  CHECK(prefork::write_all(client.get(), "ping", 4) == 4);
  char buf[4];
  REQUIRE(prefork::read_some(server.get(), buf, 4).bytes == 4);
  CHECK(std::string(buf, 4) == "ping");
  CHECK(prefork::write_all(server.get(), "p", 1) == 1);
  CHECK(prefork::read_some(client.get(), buf, 1).bytes == 1);
}

int int_option(int sock, int level, int name) {
  int v = -1;
  socklen_t len = sizeof v;
  REQUIRE(::getsockopt(sock, level, name, &v, &len) == 0);
  return v;
}

std::string error_of_listen(const std::string& address, const prefork::listen_options& opts = {}) {
  try {
    prefork::fd never = prefork::listen(address, opts);
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no error)";
}

bool is_open(int raw) { return ::fcntl(raw, F_GETFD) != -1; }

}  // namespace

TEST_CASE("socket_address parses every form and writes it back") {
  char if1[IF_NAMESIZE] = "1";
  ::if_indextoname(1, if1);
  std::string zone_1 = "[fe80::1%" + std::string(if1) + "]:80";
  struct form {
    const char* text;
    const char* written;
    int family;
    std::uint16_t port;
  };
  const form forms[] = {
      {"127.0.0.1:8080", "127.0.0.1:8080", AF_INET, 8080},
      {"0.0.0.0:0", "0.0.0.0:0", AF_INET, 0},
      {"[::1]:8080", "[::1]:8080", AF_INET6, 8080},
      {"[::]:0", "[::]:0", AF_INET6, 0},
      {"[::ffff:1.2.3.4]:65535", "[::ffff:1.2.3.4]:65535", AF_INET6, 65535},
      {"[fe80::1%1]:80", zone_1.c_str(), AF_INET6, 80},
      {"unix:/run/x.sock", "unix:/run/x.sock", AF_UNIX, 0},
      {"/run/y.sock", "unix:/run/y.sock", AF_UNIX, 0},
      {"unix:rel/z.sock", "unix:rel/z.sock", AF_UNIX, 0},
      {"unix:@abstract", "unix:@abstract", AF_UNIX, 0},
  };
  for (const form& f : forms) {
    CAPTURE(f.text);
    auto a = prefork::socket_address::parse(f.text);
    CHECK(a.family() == f.family);
    CHECK(a.port() == f.port);
    CHECK(a.to_string() == f.written);
    CHECK(prefork::socket_address::parse(a.to_string()).to_string() == f.written);
  }
  CHECK(prefork::socket_address().to_string() == "");
  CHECK(prefork::socket_address().empty());
  CHECK_THROWS_WITH_AS(
      prefork::socket_address::parse("localhost:80"),
      "socket_address::parse: cannot parse address 'localhost:80': 'localhost' is a host name: use "
      "resolve()",
      std::invalid_argument);
  auto resolved = prefork::socket_address::resolve("localhost:80");
  REQUIRE_FALSE(resolved.empty());
  for (const auto& a : resolved) CHECK((a.to_string() == "127.0.0.1:80" || a.to_string() == "[::1]:80"));
}

TEST_CASE("every bad address is refused with what is wrong, naming it") {
  std::string long_path = "unix:/" + std::string(106, 'x');  // 107 bytes: the most that fits
  struct bad {
    std::string text;
    std::string why;
  };
  const bad cases[] = {
      {"foo:bar", "port 'bar' is not a number"},
      {"127.0.0.1", "missing ':port'"},
      {"127.0.0.1:99999", "port 99999 is out of range (0-65535)"},
      {"127.0.0.1:123456789012", "port 123456789012 is out of range (0-65535)"},
      {"127.0.0.1:", "missing port"},
      {"127.0.0.1:-1", "port '-1' is not a number"},
      {"[::1", "missing ']' after IPv6 address"},
      {"[::1]80", "missing ':port' after ']'"},
      {"[1.2.3.4]:80", "invalid IPv6 address '1.2.3.4'"},
      {"[fe80::1%nosuchif0]:80", "unknown network interface 'nosuchif0'"},
      {"::1:80", "IPv6 addresses go in brackets: [::1]:8080"},
      {"unix:", "empty unix socket path"},
      {"unix:@", "empty abstract socket name"},
      {"unix:/" + std::string(107, 'y'), "unix socket name too long (108 bytes, at most 107)"},
      {"300.1.1.1:80", "invalid IPv4 address '300.1.1.1'"},
      {"1.2.3:80", "invalid IPv4 address '1.2.3'"},
      {"", "empty address"},
      {":80", "missing host"},
      {"bad host:80", "invalid host name 'bad host'"},
  };
  for (const bad& b : cases) {
    CAPTURE(b.text);
    CHECK(error_of_listen(b.text).rfind("listen: cannot parse address '" + b.text + "': " + b.why, 0) == 0);
    CHECK_THROWS_AS(prefork::listen(b.text), std::invalid_argument);
    std::string connect_error = "connect: cannot parse address '" + b.text + "': " + b.why;
    CHECK_THROWS_WITH(prefork::connect(b.text), doctest::Contains(connect_error.c_str()));
  }
  CHECK(prefork::socket_address::parse(long_path).to_string() == long_path);
}

TEST_CASE("a host name that does not resolve is a system_error naming the address") {
  CHECK_THROWS_AS(prefork::listen("nosuchhost.invalid:80"), std::system_error);
  CHECK(error_of_listen("nosuchhost.invalid:80").rfind("listen nosuchhost.invalid:80: ", 0) == 0);
  CHECK_THROWS_WITH(prefork::connect("nosuchhost.invalid:80"),
                    doctest::Contains("connect nosuchhost.invalid:80: "));
}

TEST_CASE("every address form listens and accepts a real connection") {
  prefork::test::leak_check leaks;
  {
    temp_dir dir;
    const std::string forms[] = {"127.0.0.1:0",
                                 "0.0.0.0:0",
                                 "[::1]:0",
                                 "[::]:0",
                                 "localhost:0",
                                 "unix:" + dir.path + "/a.sock",
                                 dir.path + "/b.sock",
                                 abstract_name("forms")};
    for (const std::string& form : forms) {
      CAPTURE(form);
      prefork::fd l = prefork::listen(form);
      CHECK(l.cloexec());
      std::string local = prefork::local_address(l.get());
      if (form.rfind("unix:", 0) == 0) {
        CHECK(local == form);
      } else if (form[0] == '/') {
        CHECK(local == "unix:" + form);
      } else {
        CHECK(prefork::socket_address::parse(local).port() != 0);  // port 0 got a real one
      }
      roundtrip(l.get());
    }
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("a port in use is refused, naming the address") {
  prefork::fd first = prefork::listen("127.0.0.1:0");
  std::string addr = prefork::local_address(first.get());
  try {
    prefork::fd never = prefork::listen(addr);
    FAIL("second listen on " << addr << " succeeded");
  } catch (const std::system_error& e) {
    CHECK(e.code() == std::errc::address_in_use);
    CHECK(std::string(e.what()) == "listen " + addr + ": Address already in use");
  }
  std::string port = addr.substr(addr.find(':') + 1);
  if (prefork::socket_address::resolve("localhost:" + port).size() == 1)  // else [::1] may be free
    CHECK(error_of_listen("localhost:" + port) ==
          "listen localhost:" + port + " (127.0.0.1:" + port + "): Address already in use");
}

TEST_CASE("a leftover unix socket file is replaced; a live one, or any other file, is not") {
  prefork::test::leak_check leaks;
  {
    temp_dir dir;
    std::string path = dir.path + "/s.sock", addr = "unix:" + path;
    prefork::listen(addr).reset();  // closed: the file stays, nobody listens
    struct stat st {};
    REQUIRE(::lstat(path.c_str(), &st) == 0);
    prefork::fd live = prefork::listen(addr);
    roundtrip(live.get());

    CHECK(error_of_listen(addr) == "listen " + addr + ": Address already in use");
    CHECK(error_of_listen(path) == "listen " + path + ": Address already in use");
    // Each refusal found the listener alive by connecting to it: it sees two
    // connections that end at once, and goes on serving.
    for (int probe = 0; probe < 2; ++probe) {
      prefork::fd conn = accept_soon(live.get());
      char c;
      CHECK(prefork::read_some(conn.get(), &c, 1).bytes == 0);
    }
    roundtrip(live.get());

    std::string plain = dir.path + "/plain";
    prefork::write_all(prefork::fd(::open(plain.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600)).get(),
                       "data");
    CHECK(error_of_listen("unix:" + plain) ==
          "listen unix:" + plain + " (a file that is not a socket is in the way): Address already in use");
    CHECK(std::filesystem::file_size(plain) == 4);

    std::string name = abstract_name("inuse");
    prefork::fd abstract = prefork::listen(name);
    CHECK(error_of_listen(name) == "listen " + name + ": Address already in use");
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("unix_mode is the socket file's mode, whatever the umask") {
  temp_dir dir;
  auto mode_of = [](const std::string& p) {
    struct stat st {};
    REQUIRE(::lstat(p.c_str(), &st) == 0);
    CHECK(S_ISSOCK(st.st_mode));
    return st.st_mode & 07777;
  };
  mode_t old = ::umask(077);
  prefork::listen_options wide;
  wide.unix_mode = 0666;
  prefork::fd a = prefork::listen("unix:" + dir.path + "/wide.sock", wide);
  CHECK(mock::born_mode == 0600);                   // born under the umask...
  CHECK(mode_of(dir.path + "/wide.sock") == 0666);  // ...then widened past it
  ::umask(0);
  prefork::listen_options narrow;
  narrow.unix_mode = 0600;
  prefork::fd b = prefork::listen("unix:" + dir.path + "/narrow.sock", narrow);
  CHECK(mode_of(dir.path + "/narrow.sock") == 0600);
  CHECK(mock::born_mode == 0600);  // never more open than asked, not even before listen()
  prefork::fd c = prefork::listen("unix:" + dir.path + "/default.sock");
  CHECK(mode_of(dir.path + "/default.sock") == 0777);  // umask 0, no unix_mode
  ::umask(old);
  roundtrip(a.get());

  CHECK(error_of_listen("127.0.0.1:0", wide) == "listen 127.0.0.1:0: unix_mode is for unix sockets");
  CHECK(error_of_listen(abstract_name("mode"), wide) ==
        "listen " + abstract_name("mode") + ": an abstract socket has no file for unix_mode");
  prefork::listen_options bad;
  bad.unix_mode = 010000;
  CHECK(error_of_listen("unix:" + dir.path + "/x.sock", bad) ==
        "listen unix:" + dir.path + "/x.sock: unix_mode is not a mode");
}

TEST_CASE("listen options land on the socket") {
  prefork::fd l = prefork::listen("127.0.0.1:0");
  CHECK(int_option(l.get(), SOL_SOCKET, SO_REUSEADDR) == 1);
  CHECK(int_option(l.get(), SOL_SOCKET, SO_REUSEPORT) == 0);
  CHECK(int_option(l.get(), SOL_SOCKET, SO_ACCEPTCONN) == 1);
  CHECK(int_option(l.get(), IPPROTO_TCP, TCP_NODELAY) == 1);
  CHECK(int_option(l.get(), IPPROTO_TCP, TCP_DEFER_ACCEPT) == 0);
  {
    // Accepted connections inherit TCP_NODELAY from the listener.
    prefork::fd client = prefork::connect(prefork::local_address(l.get()));
    prefork::fd conn = accept_soon(l.get());
    CHECK(int_option(conn.get(), IPPROTO_TCP, TCP_NODELAY) == 1);
  }

  prefork::listen_options opts;
  opts.nodelay = false;
  opts.defer_accept_s = 5;
  opts.backlog = 7;
  prefork::fd m = prefork::listen("127.0.0.1:0", opts);
  CHECK(int_option(m.get(), IPPROTO_TCP, TCP_NODELAY) == 0);
  CHECK(int_option(m.get(), IPPROTO_TCP, TCP_DEFER_ACCEPT) >= 5);  // the kernel rounds up to retransmits

  // IPv6 listeners are IPv6 only, so the IPv4 wildcard fits beside them.
  prefork::fd v6 = prefork::listen("[::]:0");
  CHECK(int_option(v6.get(), IPPROTO_IPV6, IPV6_V6ONLY) == 1);
  std::string port = std::to_string(prefork::socket_address::local(v6.get()).port());
  prefork::fd v4 = prefork::listen("0.0.0.0:" + port);
  CHECK(prefork::local_address(v4.get()) == "0.0.0.0:" + port);

  prefork::listen_options zero;
  zero.backlog = 0;
  CHECK(error_of_listen("127.0.0.1:0", zero) == "listen 127.0.0.1:0: backlog must be positive");
  prefork::listen_options negative;
  negative.defer_accept_s = -1;
  CHECK(error_of_listen("127.0.0.1:0", negative) ==
        "listen 127.0.0.1:0: defer_accept_s must not be negative");
  prefork::listen_options tcp_only;
  tcp_only.reuseport = true;
  CHECK(error_of_listen(abstract_name("opts"), tcp_only) ==
        "listen " + abstract_name("opts") + ": reuseport and defer_accept_s are TCP options");
}

TEST_CASE("reuseport: listeners that both set it share a port and its connections") {
  prefork::test::leak_check leaks;
  {
    prefork::listen_options opts;
    opts.reuseport = true;
    prefork::fd a = prefork::listen("127.0.0.1:0", opts);
    std::string addr = prefork::local_address(a.get());
    CHECK(error_of_listen(addr) == "listen " + addr + ": Address already in use");  // one without it: refused
    prefork::fd b = prefork::listen(addr, opts);
    CHECK(int_option(b.get(), SOL_SOCKET, SO_REUSEPORT) == 1);
    CHECK(prefork::local_address(b.get()) == addr);

    // The kernel spreads connections over both by a hash of the client
    // port; 64 connections all land somewhere, and both get some.
    std::vector<prefork::fd> clients;
    for (int i = 0; i < 64; ++i) clients.push_back(prefork::connect(addr));
    a.set_nonblocking(true);
    b.set_nonblocking(true);
    int on_a = 0, on_b = 0;
    while (on_a + on_b < 64) {
      pollfd p[2] = {{a.get(), POLLIN, 0}, {b.get(), POLLIN, 0}};
      REQUIRE(::poll(p, 2, 30000) > 0);
      while (prefork::accept(a.get())) ++on_a;
      while (prefork::accept(b.get())) ++on_b;
    }
    CHECK(on_a + on_b == 64);
    CHECK(on_a > 0);
    CHECK(on_b > 0);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("accept: CLOEXEC always, SOCK_NONBLOCK on request, invalid fd when nothing is queued") {
  prefork::test::leak_check leaks;
  {
    prefork::fd l = prefork::listen("127.0.0.1:0");
    std::string addr = prefork::local_address(l.get());
    prefork::fd c1 = prefork::connect(addr), c2 = prefork::connect(addr);
    prefork::socket_address peer;
    prefork::fd blocking = accept_soon(l.get(), 0, &peer);
    CHECK(blocking.cloexec());
    CHECK_FALSE(blocking.nonblocking());
    CHECK(peer.to_string() == prefork::local_address(c1.get()));
    prefork::fd nonblocking = accept_soon(l.get(), SOCK_NONBLOCK);
    CHECK(nonblocking.cloexec());
    CHECK(nonblocking.nonblocking());

    l.set_nonblocking(true);
    CHECK_FALSE(prefork::accept(l.get()));
    std::error_code ec;
    CHECK_FALSE(prefork::accept(l.get(), 0, ec));
    CHECK_FALSE(ec);

    auto p = prefork::pipe();
    prefork::fd none = prefork::accept(p.read.get(), 0, ec);
    CHECK_FALSE(none);
    CHECK(ec == std::errc::not_a_socket);
    std::string expected = "accept fd " + std::to_string(p.read.get()) + ": Socket operation on non-socket";
    CHECK_THROWS_WITH_AS(prefork::accept(p.read.get()), expected.c_str(), std::system_error);
    CHECK_THROWS_AS(prefork::accept(l.get(), O_APPEND), std::invalid_argument);
    prefork::fd refused = prefork::accept(l.get(), O_APPEND, ec);
    CHECK(!refused);
    CHECK(ec == std::errc::invalid_argument);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("accept retries EINTR and aborted connections; EMFILE reaches the caller without a throw") {
  prefork::fd l = prefork::listen("127.0.0.1:0");
  prefork::fd client = prefork::connect(prefork::local_address(l.get()));
  mock::accept4_fault = {EINTR, 2, 0};
  prefork::fd a = accept_soon(l.get());
  CHECK(a);
  CHECK(mock::accept4_fault.calls == 3);

  prefork::fd client2 = prefork::connect(prefork::local_address(l.get()));
  mock::accept4_fault = {ECONNABORTED, 1, 0};
  CHECK(accept_soon(l.get()));
  CHECK(mock::accept4_fault.calls == 2);

  mock::accept4_fault = {EMFILE, 1, 0};
  std::error_code ec;
  CHECK_FALSE(prefork::accept(l.get(), 0, ec));
  CHECK(ec == std::errc::too_many_files_open);
  mock::accept4_fault = {EMFILE, 1, 0};
  CHECK_THROWS_WITH(prefork::accept(l.get()), doctest::Contains("Too many open files"));
  mock::accept4_fault = {};
}

TEST_CASE("connect recovers from EINTR: TCP waits for the handshake, unix tries again") {
  prefork::test::leak_check leaks;
  {
    temp_dir dir;
    for (std::string form : {std::string("127.0.0.1:0"), "unix:" + dir.path + "/c.sock"}) {
      CAPTURE(form);
      prefork::fd l = prefork::listen(form);
      mock::connect_fault = {EINTR, 1, 0};
      prefork::fd c = prefork::connect(prefork::local_address(l.get()));
      CHECK(mock::connect_fault.calls == (form[0] == 'u' ? 2 : 1));
      prefork::fd s = accept_soon(l.get());
      CHECK(prefork::write_all(c.get(), "x", 1) == 1);
      char b;
      CHECK(prefork::read_some(s.get(), &b, 1).bytes == 1);
    }
    mock::connect_fault = {};
    prefork::fd gone = prefork::listen("127.0.0.1:0");
    std::string addr = prefork::local_address(gone.get());
    gone.reset();
    std::string refused = "connect " + addr + ": Connection refused";
    CHECK_THROWS_WITH(prefork::connect(addr), refused.c_str());
    std::string missing = "connect unix:" + dir.path + "/none: No such file or directory";
    CHECK_THROWS_WITH(prefork::connect("unix:" + dir.path + "/none"), missing.c_str());
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("socket_pair: connected, CLOEXEC, of the type asked for") {
  for (int type : {SOCK_STREAM, SOCK_SEQPACKET, SOCK_DGRAM}) {
    auto [a, b] = prefork::socket_pair(type | SOCK_NONBLOCK);
    CHECK(a.cloexec());
    CHECK(b.cloexec());
    CHECK(a.nonblocking());
    CHECK(int_option(a.get(), SOL_SOCKET, SO_TYPE) == type);
    CHECK(prefork::write_all(a.get(), "hi", 2) == 2);
    char buf[2];
    CHECK(prefork::read_some(b.get(), buf, 2).bytes == 2);
    CHECK(prefork::local_address(a.get()) == "unix:");
  }
  CHECK_FALSE(prefork::socket_pair().first.nonblocking());
  CHECK_THROWS_AS(prefork::socket_pair(SOCK_RAW), std::invalid_argument);
}

TEST_CASE("send_fds/recv_fds: descriptors and a message arrive, CLOEXEC, and work") {
  prefork::test::leak_check leaks;
  for (int type : {SOCK_STREAM, SOCK_SEQPACKET, SOCK_DGRAM}) {
    CAPTURE(type);
    auto [a, b] = prefork::socket_pair(type);
    auto p1 = prefork::pipe(), p2 = prefork::pipe();
    prefork::send_fds(a.get(), {p1.write.get(), p2.write.get()}, "two pipes");
    std::string message;
    std::vector<prefork::fd> got = prefork::recv_fds(b.get(), 4, &message);
    CHECK(message == "two pipes");
    REQUIRE(got.size() == 2);
    for (const auto& f : got) CHECK(f.cloexec());
    CHECK(got[0].get() != p1.write.get());
    prefork::write_all(got[0].get(), "one");
    prefork::write_all(got[1].get(), "two");
    got.clear();
    char buf[3];
    CHECK(prefork::read_some(p1.read.get(), buf, 3).bytes == 3);
    CHECK(std::string(buf, 3) == "one");
    CHECK(prefork::read_some(p2.read.get(), buf, 3).bytes == 3);
    CHECK(std::string(buf, 3) == "two");

    // A message alone, descriptors alone, and one at the size limit.
    prefork::send_fds(a.get(), {}, "just words");
    CHECK(prefork::recv_fds(b.get(), 0, &message).empty());
    CHECK(message == "just words");
    prefork::send_fds(a.get(), {p1.read.get()});
    CHECK(prefork::recv_fds(b.get(), 1, &message).size() == 1);
    CHECK(message == "");
    if (type != SOCK_DGRAM) {  // a datagram this big needs a bigger SO_SNDBUF
      std::string big(prefork::max_fd_message, 'm');
      std::thread sender([&, &a = a] { prefork::send_fds(a.get(), {p2.read.get()}, big); });
      CHECK(prefork::recv_fds(b.get(), 1, &message).size() == 1);
      sender.join();
      CHECK(message == big);
    }
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("more descriptors than the receiver allows: an error, and every one that arrived is closed") {
  prefork::test::leak_check leaks;
  for (int type : {SOCK_STREAM, SOCK_SEQPACKET}) {
    CAPTURE(type);
    auto [a, b] = prefork::socket_pair(type);
    auto p = prefork::pipe();
    std::vector<int> five(5, p.write.get());
    prefork::test::leak_check receiver;
    for (std::size_t max : {std::size_t{0}, std::size_t{1}, std::size_t{3}}) {
      CAPTURE(max);
      prefork::send_fds(a.get(), five, "five");
      try {
        std::vector<prefork::fd> never = prefork::recv_fds(b.get(), max);
        FAIL("no error");
      } catch (const std::system_error& e) {
        CHECK(e.code() == std::errc::message_size);
        CHECK(std::string(e.what()).find("recv_fds fd " + std::to_string(b.get()) +
                                         ": peer sent 5 descriptors, at most " + std::to_string(max) +
                                         " expected") == 0);
      }
      CHECK(receiver.problems() == "");  // the ones that fit (and the kernel's padding) were closed
    }
    // The stream stayed in step: the next message arrives whole.
    prefork::send_fds(a.get(), {p.write.get()}, "next");
    std::string message;
    CHECK(prefork::recv_fds(b.get(), 1, &message).size() == 1);
    CHECK(message == "next");
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("recv_fds: end of file, stray bytes and bad arguments are clear errors") {
  prefork::test::leak_check leaks;
  {
    auto [a, b] = prefork::socket_pair();
    prefork::write_all(a.get(), "GET / HTTP/1.0\r\n\r\n");
    std::string stray = "recv_fds fd " + std::to_string(b.get()) + ": not a send_fds message: Protocol error";
    CHECK_THROWS_WITH(prefork::recv_fds(b.get(), 1), stray.c_str());
    auto [e1, e2] = prefork::socket_pair();
    e1.reset();
    try {
      std::vector<prefork::fd> never = prefork::recv_fds(e2.get(), 1);
      FAIL("no error at end of file");
    } catch (const std::system_error& e) {
      CHECK(e.code() == std::errc::connection_reset);
      CHECK(std::string(e.what()) == "recv_fds fd " + std::to_string(e2.get()) +
                                         ": peer closed the connection: Connection reset by peer");
    }
    prefork::send_fds(a.get(), {}, "cut");
    a.reset();  // b holds the rest of the stray bytes, then a message: cut short by EOF mid-header
    CHECK_THROWS_WITH(prefork::recv_fds(b.get(), 1), doctest::Contains("Protocol error"));
    auto [c, d] = prefork::socket_pair();
    CHECK_THROWS_AS(prefork::send_fds(c.get(), std::vector<int>(254, 0)), std::invalid_argument);
    CHECK_THROWS_AS(prefork::send_fds(c.get(), {-1}), std::invalid_argument);
    CHECK_THROWS_AS(prefork::send_fds(c.get(), {}, std::string(prefork::max_fd_message + 1, 'x')),
                    std::invalid_argument);
    CHECK_THROWS_AS(prefork::recv_fds(d.get(), 254), std::invalid_argument);
    d.reset();
    ::signal(SIGPIPE, SIG_DFL);  // MSG_NOSIGNAL: EPIPE, not death
    CHECK_THROWS_WITH(prefork::send_fds(c.get(), {0}), doctest::Contains("Broken pipe"));
    auto pipe = prefork::pipe();
    std::string not_socket =
        "send_fds fd " + std::to_string(pipe.write.get()) + ": Socket operation on non-socket";
    CHECK_THROWS_WITH(prefork::send_fds(pipe.write.get(), {0}), not_socket.c_str());
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("send_fds/recv_fds retry EINTR and wait on non-blocking sockets") {
  prefork::test::leak_check leaks;
  {
    auto [a, b] = prefork::socket_pair(SOCK_STREAM | SOCK_NONBLOCK);
    auto p = prefork::pipe();
    mock::sendmsg_fault = {EINTR, 2, 0};
    prefork::send_fds(a.get(), {p.write.get()}, "x");
    CHECK(mock::sendmsg_fault.calls == 3);
    mock::recvmsg_fault = {EINTR, 3, 0};
    CHECK(prefork::recv_fds(b.get(), 1).size() == 1);
    CHECK(mock::recvmsg_fault.calls == 4);
    mock::sendmsg_fault = mock::recvmsg_fault = {};

    // Nothing queued on a non-blocking socket: recv_fds waits for it.
    std::string message;
    std::thread sender([&, &a = a] { prefork::send_fds(a.get(), {p.read.get()}, "late"); });
    CHECK(prefork::recv_fds(b.get(), 1, &message).size() == 1);
    sender.join();
    CHECK(message == "late");
    int raw = p.read.get();
    CHECK(is_open(raw));
  }
  CHECK(leaks.problems() == "");
}
