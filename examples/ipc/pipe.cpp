// ipc-pipe: a pipe between a parent and the child it forks.
//
// Good for: a byte stream from one related process to another: a child's
// output, a "ready" byte, a self-pipe waking a poll loop. Both ends exist
// before fork, so no name is needed and nothing is left behind when either
// side dies; the reader sees end of file once every write end is closed,
// which is also how it learns the writer died. Costs: one direction only,
// only between processes that share an ancestor, every byte copied twice
// through the kernel (write and read), a 64 KiB buffer after which the
// writer blocks, and no message boundaries (writes up to PIPE_BUF, 4096
// bytes, are at least never interleaved with other writers').
#include <prefork/pipe.hpp>
#include <prefork/process.hpp>

#include <cstdio>
#include <string>

int main() {
  auto ends = prefork::pipe();
  std::fflush(stdout);  // or the child would print our buffered output again
  auto kid = prefork::fork();
  if (!kid) {
    ends.read.reset();  // keep only the end we use: EOF depends on it
    for (int i = 1; i <= 3; ++i)
      prefork::write_all(ends.write.get(), "line " + std::to_string(i) + " from child " + std::to_string(::getpid()) + "\n");
    ::_exit(0);
  }
  ends.write.reset();  // our copy too: otherwise read_all would never see EOF
  std::string got = prefork::read_all(ends.read.get());
  auto status = kid->wait();
  std::printf("parent %d read from child %d:\n%s", ::getpid(), kid->pid(), got.c_str());
  std::printf("child %s\n", status.describe().c_str());
  bool ok = status.success() && got.find("line 3 from child") != std::string::npos;
  std::printf("%s\n", ok ? "pipe: OK" : "pipe: FAILED");
  return ok ? 0 : 1;
}
