// prefork-echo: a preforking echo server in one screen.
//
//   prefork-echo [--listen ADDR] [--workers N] [--pid FILE] [--reuseport]
//
// The master binds ADDR (default 127.0.0.1:7007), prints "listening on
// ADDR", and forks N workers (default 4). Each worker takes one connection at
// a time and sends back every byte until the client closes. Signals go to the
// master: QUIT stops gracefully, TERM at once, HUP replaces the workers,
// TTIN/TTOU add or remove one, USR2 upgrades to a newly installed binary.
#include <cstdio>
#include <cstdlib>
#include <string>

#include <prefork/pool.hpp>
#include <prefork/socket.hpp>

namespace {

const char usage[] = "usage: prefork-echo [--listen ADDR] [--workers N] [--pid FILE] [--reuseport]\n";

int bad_flag(const std::string& why) {
  std::fprintf(stderr, "prefork-echo: %s\n%s", why.c_str(), usage);
  return 2;
}

// Echoes until the client closes. Each chunk read is a request, answered
// before the next wait; w.read() ticks the heartbeat while the client is
// quiet and returns 0 at once on QUIT, so an idle client cannot hold a stop.
void echo(prefork::worker& w, int conn) {
  char buf[16384];
  std::error_code ec;
  while (std::size_t n = w.read(conn, buf, sizeof buf))
    if (prefork::write_all(conn, buf, n, ec) != n) return;
}

}  // namespace

int main(int argc, char** argv) {
  std::string address = "127.0.0.1:7007", pid_file;
  unsigned long workers = 4;
  prefork::listen_options reuse;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    if (flag == "--reuseport") reuse.reuseport = true;
    if (flag == "--reuseport") continue;
    if (flag != "--listen" && flag != "--workers" && flag != "--pid") return bad_flag("unknown flag " + flag);
    if (i + 1 == argc) return bad_flag(flag + " needs a value");
    std::string value = argv[++i];
    char* end = nullptr;
    if (flag == "--listen") address = value;
    if (flag == "--pid") pid_file = value;
    if (flag == "--workers" &&
        ((workers = std::strtoul(value.c_str(), &end, 10)) == 0 || *end || workers > 1024))
      return bad_flag("--workers needs a number from 1 to 1024, not '" + value + "'");
  }
  try {
    prefork::pool_config config;
    config.workers = static_cast<unsigned>(workers);
    config.pid_file = pid_file;
    // Before binding, so a second start says "already running as PID N".
    if (!pid_file.empty()) prefork::pid_file::check_not_running(pid_file);
    config.reuseport = reuse.reuseport;
    // After USR2: the same socket; --reuseport: one per worker, kept by the master.
    if (!config.reuseport) config.listeners = prefork::inherited_fds();
    if (config.listeners.empty()) config.listeners.push_back(prefork::listen(address, reuse));
    std::printf("listening on %s\n", prefork::local_address(config.listeners[0].get()).c_str());
    std::fflush(stdout);
    prefork::master master(std::move(config));
    return master.run([](prefork::worker& w) {
      while (prefork::fd conn = w.accept()) {
        echo(w, conn.get());
        w.request_done();
      }
    });
  } catch (const std::exception& e) {  // a port in use, say: one line, exit 1
    std::fprintf(stderr, "prefork-echo: %s\n", e.what());
    return 1;
  }
}
