// ipc-fd-passing: a UNIX socket carrying an open file descriptor to another
// process.
//
// Good for: handing over access rather than data: a listening socket to a
// new master during an upgrade, an accepted connection to a worker, a file
// that only a privileged process can open, to an unprivileged one. The
// receiver gets a new descriptor for the same open file (same offset, same
// flags). Costs: a unix socket between the two; sendmsg/recvmsg with control
// messages (prefork::send_fds and recv_fds hide that); each descriptor in
// flight counts against the receiver's limit, and one the receiver did not
// make room for is silently closed.
//
// Here the parent opens a file and then deletes its name, so that the
// child, which could never open it by name, reads it through the passed
// descriptor alone.
#include <prefork/fd_passing.hpp>
#include <prefork/process.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

int main() {
  auto [mine, theirs] = prefork::socket_pair();
  std::fflush(stdout);
  auto kid = prefork::fork();
  if (!kid) {
    mine.reset();
    std::string note;
    auto fds = prefork::recv_fds(theirs.get(), 4, &note);
    if (fds.size() != 1) ::_exit(1);
    std::string content = prefork::read_all(fds[0].get());
    prefork::write_all(theirs.get(), "child " + std::to_string(::getpid()) + " read \"" + content +
                                         "\" from fd " + std::to_string(fds[0].get()) + " (" + note + ")");
    ::_exit(0);
  }
  theirs.reset();

  std::string path = (std::filesystem::temp_directory_path() / "ipc-fd-XXXXXX").string();
  prefork::fd file(::mkostemp(path.data(), O_CLOEXEC));
  if (!file) return 1;
  prefork::write_all(file.get(), "a secret with no name");
  ::lseek(file.get(), 0, SEEK_SET);
  ::unlink(path.c_str());  // from now on the descriptor is the only way in
  prefork::send_fds(mine.get(), {file.get()}, "the file's name is gone");
  ::shutdown(mine.get(), SHUT_WR);
  std::string reply = prefork::read_all(mine.get());
  bool ok = kid->wait().success() && reply.find("read \"a secret with no name\"") != std::string::npos;
  std::printf("parent sent fd %d; %s\n", file.get(), reply.c_str());
  std::printf("%s\n", ok ? "fd-passing: OK" : "fd-passing: FAILED");
  return ok ? 0 : 1;
}
