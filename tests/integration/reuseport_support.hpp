// tests/integration/reuseport_support.hpp: the kernel's view of the
// listening sockets on a port, from /proc/net/tcp: their inodes (which
// sockets they are) and their accept queues (rx_queue of a listening socket
// is the number of connections waiting in it).
#pragma once

#include <fstream>
#include <set>
#include <sstream>
#include <string>

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

}  // namespace reuseport_test
