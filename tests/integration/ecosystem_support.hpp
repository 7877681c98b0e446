// tests/integration/ecosystem_support.hpp: looking at prefork-httpd from the
// outside, as systemd, a container runtime or an operator would.
//
// The tests that run prefork-httpd under other programs (systemd-socket-
// activate, unshare, chromium) need to see what the kernel sees: which
// processes are whose children and whether one is a zombie (proc.hpp), which
// sockets a process holds and which of them listen (here). All of it comes
// from /proc, read at one moment; the tests only read it after an event (a
// log line, a datagram, an exit) said the state is reached, never to wait
// for one.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <filesystem>
#include <optional>
#include <set>
#include <sstream>
#include <string>

#include <prefork/fd.hpp>
#include <prefork/socket.hpp>

#include "proc.hpp"

namespace eco_test {

// Inodes of every TCP socket in LISTEN state in this network namespace:
// the slow way, since /proc/net/tcp lists every TIME_WAIT socket too.
inline std::set<unsigned long> listening_tcp_inodes() {
  std::set<unsigned long> out;
  for (const char* table : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    std::istringstream lines(prefork::test::slurp(table));
    std::string line;
    std::getline(lines, line);  // the column titles
    while (std::getline(lines, line)) {
      // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
      std::istringstream f(line);
      std::string sl, local, remote, st, queues, timer, retransmits, uid, timeout;
      unsigned long inode = 0;
      f >> sl >> local >> remote >> st >> queues >> timer >> retransmits >> uid >> timeout >> inode;
      if (st == "0A") out.insert(inode);
    }
  }
  return out;
}

// The listening TCP sockets held by any of pids, by inode. Each socket is
// borrowed with pidfd_getfd(2) and asked SO_ACCEPTCONN; where that is not
// allowed, /proc/net/tcp says which inodes listen.
inline std::set<unsigned long> listening_sockets_of(const std::set<pid_t>& pids) {
  std::set<unsigned long> out;
  std::optional<std::set<unsigned long>> listening;  // read only if needed
  for (pid_t p : pids) {
    prefork::fd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, p, 0)));
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator("/proc/" + std::to_string(p) + "/fd", ec)) {
      std::string target = std::filesystem::read_symlink(e.path(), ec).string();
      if (ec || target.rfind("socket:[", 0) != 0) continue;
      unsigned long inode = std::stoul(target.substr(8));
      int number = std::stoi(e.path().filename().string());
      prefork::fd copy(pidfd ? static_cast<int>(::syscall(SYS_pidfd_getfd, pidfd.get(), number, 0)) : -1);
      if (copy) {  // CLOEXEC by definition
        int accepting = 0, protocol = 0;
        socklen_t len = sizeof accepting;
        ::getsockopt(copy.get(), SOL_SOCKET, SO_ACCEPTCONN, &accepting, &len);
        len = sizeof protocol;
        ::getsockopt(copy.get(), SOL_SOCKET, SO_PROTOCOL, &protocol, &len);
        if (accepting && protocol == IPPROTO_TCP) out.insert(inode);
        continue;
      }
      if (!listening) listening = listening_tcp_inodes();
      if (listening->count(inode)) out.insert(inode);
    }
  }
  return out;
}

// A loopback port that was free a moment ago, for tools that cannot be told
// to bind port 0. Whoever binds it may still lose a race to another
// process; callers retry with a new port on "Address already in use".
inline int free_loopback_port() {
  prefork::fd s = prefork::listen("127.0.0.1:0");
  std::string addr = prefork::local_address(s.get());
  return std::stoi(addr.substr(addr.rfind(':') + 1));
}

// Whether path is an executable file.
inline bool executable(const std::string& path) { return ::access(path.c_str(), X_OK) == 0; }

// A fresh directory, removed with everything in it on destruction.
class temp_dir {
 public:
  explicit temp_dir(const char* what = "prefork-eco") {
    std::string pattern = (std::filesystem::temp_directory_path() / (std::string(what) + ".XXXXXX")).string();
    if (!::mkdtemp(pattern.data())) throw std::runtime_error("mkdtemp " + pattern);
    path_ = pattern;
  }
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

}  // namespace eco_test
