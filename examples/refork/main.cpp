// prefork-refork: workers that warm up lazily, and refork, which forks new
// workers from a warm one so they share its memory (docs/refork.md).
//
//   prefork-refork [--listen ADDR] [--workers N] [--refork-after N,N,...] [--table-mib M]
//
// Each worker builds a table of M MiB (default 64) on its first request, as
// an application fills a cache, compiles templates or loads a model on
// first use. Forked from the master, every worker builds its own copy;
// with --refork-after, a worker that has served that many requests becomes
// the mold, and the workers forked from it find the table built, in pages
// they share with it copy-on-write. The protocol is one line per request:
// "get K" answers "PID GENERATION VALUE" (the table's entry K).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include <prefork/pool.hpp>
#include <prefork/socket.hpp>

namespace {

const char usage[] =
    "usage: prefork-refork [--listen ADDR] [--workers N] [--refork-after N,N,...] [--table-mib M]\n";

int bad_flag(const std::string& why) {
  std::fprintf(stderr, "prefork-refork: %s\n%s", why.c_str(), usage);
  return 2;
}

std::size_t table_mib = 64;
// Outside the work function, so it outlives it: a promoted worker's work
// function returns before the mold forks, and what the new workers are to
// share must still be there.
std::unique_ptr<std::vector<std::uint64_t>> table;
std::uint64_t seed = 0;  // per worker, from prefork::fresh_seed() in after_fork

// The lazy warm-up: every page written, so each is resident and private
// until a fork shares it.
const std::vector<std::uint64_t>& warm_table() {
  if (!table) {
    table = std::make_unique<std::vector<std::uint64_t>>(table_mib * 1024 * 1024 / sizeof(std::uint64_t));
    std::uint64_t x = 0x9E3779B97F4A7C15ull;
    for (std::uint64_t& v : *table) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      v = x;
    }
  }
  return *table;
}

// One connection: a line in, a line out, until the client closes or the
// worker is asked to stop between requests.
void serve(prefork::worker& w, int conn) {
  std::string pending;
  char buf[4096];
  std::error_code ec;
  for (;;) {
    std::size_t nl;
    while ((nl = pending.find('\n')) == std::string::npos) {
      std::size_t n = w.read(conn, buf, sizeof buf);
      if (n == 0) return;
      pending.append(buf, n);
    }
    std::string line = pending.substr(0, nl);
    pending.erase(0, nl + 1);
    if (line.rfind("get ", 0) != 0) return;
    const std::vector<std::uint64_t>& t = warm_table();
    std::uint64_t k = std::strtoull(line.c_str() + 4, nullptr, 10) % t.size();
    std::string reply =
        std::to_string(::getpid()) + " " + std::to_string(w.generation()) + " " + std::to_string(t[k]) + "\n";
    if (prefork::write_all(conn, reply.data(), reply.size(), ec) != reply.size()) return;
    w.request_done();
  }
}

bool parse_counts(const std::string& text, std::vector<std::uint64_t>& out) {
  std::size_t at = 0;
  while (at <= text.size()) {
    std::size_t comma = text.find(',', at);
    if (comma == std::string::npos) comma = text.size();
    std::string item = text.substr(at, comma - at);
    char* end = nullptr;
    unsigned long long n = std::strtoull(item.c_str(), &end, 10);
    if (item.empty() || *end || n == 0) return false;
    out.push_back(n);
    at = comma + 1;
  }
  return !out.empty();
}

}  // namespace

int main(int argc, char** argv) {
  std::string address = "127.0.0.1:7008";
  unsigned long workers = 4;
  std::vector<std::uint64_t> refork_after;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    if (flag != "--listen" && flag != "--workers" && flag != "--refork-after" && flag != "--table-mib")
      return bad_flag("unknown flag " + flag);
    if (i + 1 == argc) return bad_flag(flag + " needs a value");
    std::string value = argv[++i];
    char* end = nullptr;
    if (flag == "--listen") address = value;
    if (flag == "--workers" &&
        ((workers = std::strtoul(value.c_str(), &end, 10)) == 0 || *end || workers > 1024))
      return bad_flag("--workers needs a number from 1 to 1024, not '" + value + "'");
    if (flag == "--table-mib" &&
        ((table_mib = std::strtoul(value.c_str(), &end, 10)) == 0 || *end || table_mib > 65536))
      return bad_flag("--table-mib needs a number from 1 to 65536, not '" + value + "'");
    if (flag == "--refork-after" && !parse_counts(value, refork_after))
      return bad_flag("--refork-after needs request counts like 50,100,1000, not '" + value + "'");
  }
  try {
    prefork::pool_config config;
    config.workers = static_cast<unsigned>(workers);
    config.refork_after = refork_after;
    config.refork = true;  // SIGURG promotes a worker by hand, even without --refork-after
    config.listeners = prefork::inherited_fds();
    if (config.listeners.empty()) config.listeners.push_back(prefork::listen(address));
    // Every worker, forked by the master or by a mold, draws its own numbers:
    // a forked generator state would repeat its parent's sequence.
    config.after_fork = [](prefork::worker&) { seed = prefork::fresh_seed(); };
    config.after_promotion = [](prefork::worker& w) {
      std::fprintf(stderr, "worker %u (pid %d): promoted, table %s\n", w.index(),
                   static_cast<int>(::getpid()), table ? "built" : "not built");
    };
    std::printf("listening on %s\n", prefork::local_address(config.listeners[0].get()).c_str());
    std::fflush(stdout);
    prefork::master master(std::move(config));
    return master.run([](prefork::worker& w) {
      while (prefork::fd conn = w.accept()) serve(w, conn.get());
    });
  } catch (const std::exception& e) {
    std::fprintf(stderr, "prefork-refork: %s\n", e.what());
    return 1;
  }
}
