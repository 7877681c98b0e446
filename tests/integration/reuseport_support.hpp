// tests/integration/reuseport_support.hpp: the kernel's view of the
// listening sockets on a port, from /proc/net/tcp: their inodes (which
// sockets they are) and their accept queues (rx_queue of a listening socket
// is the number of connections waiting in it); and a client's many open
// connections, read as their answers come.
#pragma once

#include <poll.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <prefork/fd.hpp>

namespace reuseport_test {

struct listening_sockets {
  std::set<std::string> inodes;
  std::size_t queued = 0;
};

inline listening_sockets listening_on(unsigned short port) {
  std::ifstream tcp("/proc/net/tcp");
  std::string line;
  std::getline(tcp, line);  // the header
  listening_sockets out;
  while (std::getline(tcp, line)) {
    std::istringstream in(line);
    std::string sl, local, remote, st, queues, timer, retr, uid, timeout, inode;
    in >> sl >> local >> remote >> st >> queues >> timer >> retr >> uid >> timeout >> inode;
    if (st != "0A") continue;  // TCP_LISTEN
    if (std::stoul(local.substr(local.find(':') + 1), nullptr, 16) != port) continue;
    out.inodes.insert(inode);
    out.queued += std::stoul(queues.substr(queues.find(':') + 1), nullptr, 16);
  }
  return out;
}

inline unsigned short port_of(const std::string& address) {
  return static_cast<unsigned short>(std::stoul(address.substr(address.rfind(':') + 1)));
}

// A client connection whose one-line answer is awaited.
struct conn {
  prefork::fd sock;
  std::string got;
  bool done = false;  // answered, or ended without an answer
  std::string error;
  bool steered = false;  // opened after the master steered new connections off a slot
};

// Reads what is there on the open connections, waiting up to `wait`; a
// finished connection is closed at once (a test may open hundreds).
inline void collect(std::vector<conn>& conns, std::chrono::milliseconds wait) {
  std::vector<pollfd> polls;
  std::vector<conn*> who;
  for (conn& c : conns)
    if (!c.done) {
      polls.push_back({c.sock.get(), POLLIN, 0});
      who.push_back(&c);
    }
  if (polls.empty() || ::poll(polls.data(), polls.size(), static_cast<int>(wait.count())) <= 0) return;
  for (std::size_t i = 0; i < polls.size(); ++i) {
    if (polls[i].revents == 0) continue;
    conn& c = *who[i];
    char buf[256];
    prefork::io_result r = prefork::read_some(c.sock.get(), buf, sizeof buf);
    if (r && r.bytes > 0) {
      c.got.append(buf, r.bytes);
      continue;
    }
    c.done = true;
    c.sock.reset();
    if (!r) c.error = std::strerror(r.error);
    if (r && c.got.find('\n') == std::string::npos) c.error = "end of file without an answer";
  }
}

}  // namespace reuseport_test
