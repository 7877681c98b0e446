// ipc-fifo: a FIFO (named pipe) between two processes that share nothing but
// its path.
//
// Good for: joining processes that were not started by one another: a shell
// script feeding a daemon, a log reader started by cron. mkfifo(3) puts a
// pipe in the file system; opening it blocks until both a reader and a
// writer have it open, then it behaves exactly like a pipe. Costs: a name to
// create, protect (its permissions are the access control) and remove, even
// when someone crashes; the open-blocks-until-the-peer-arrives rule, which
// needs O_NONBLOCK tricks for anything but the simplest protocol; one
// direction, no message boundaries, a 64 KiB buffer.
//
// Here the program runs itself twice more, as `--reader PATH` and
// `--writer PATH`; the two are siblings and meet only through the path. The
// reader removes the FIFO and its directory as soon as both ends are open, so
// a crash after that leaves nothing behind.
#include <prefork/fd.hpp>
#include <prefork/process.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>

namespace {

int reader(const std::string& path) {
  prefork::fd in(::open(path.c_str(), O_RDONLY | O_CLOEXEC));  // waits for the writer
  if (!in) return 1;
  ::unlink(path.c_str());  // both ends are open: the name has served its purpose
  ::rmdir(std::filesystem::path(path).parent_path().c_str());
  std::string got = prefork::read_all(in.get());
  std::printf("reader %d got: %s", ::getpid(), got.c_str());
  return got == "hello through the FIFO\n" ? 0 : 1;
}

int writer(const std::string& path) {
  prefork::fd out(::open(path.c_str(), O_WRONLY | O_CLOEXEC));  // waits for the reader
  if (!out) return 1;
  prefork::write_all(out.get(), "hello through the FIFO\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 3 && std::strcmp(argv[1], "--reader") == 0) return reader(argv[2]);
  if (argc == 3 && std::strcmp(argv[1], "--writer") == 0) return writer(argv[2]);

  std::string dir = (std::filesystem::temp_directory_path() / "ipc-fifo-XXXXXX").string();
  if (!::mkdtemp(dir.data())) return 1;
  std::string path = dir + "/channel";
  if (::mkfifo(path.c_str(), 0600) == -1) {
    std::perror("mkfifo");
    return 1;
  }
  std::printf("FIFO at %s\n", path.c_str());
  std::fflush(stdout);
  std::string self = std::filesystem::read_symlink("/proc/self/exe");
  auto w = prefork::spawn({self, "--writer", path});
  auto r = prefork::spawn({self, "--reader", path});
  bool read_ok = r.wait().success(), wrote_ok = w.wait().success();  // reap both either way
  bool ok = read_ok && wrote_ok;
  ok = ok && !std::filesystem::exists(dir);
  std::printf("%s\n", ok ? "fifo: OK" : "fifo: FAILED");
  return ok ? 0 : 1;
}
