// ipc-mmap-file: a memory-mapped file shared by two processes.
//
// Good for: sharing a large data set by name between unrelated processes,
// and keeping it: the pages are the file's page cache, so every process that
// maps the file with MAP_SHARED sees the same bytes, and they reach the disk
// (msync makes that synchronous). Costs: a file to manage; page faults on
// first touch; no notification of changes (a flag in the mapping, polled,
// or another channel); and if anyone shrinks the file, accesses past the new
// end raise SIGBUS, so the size must be agreed on and protected.
//
// The child here opens and maps the file by its path on its own, as an
// unrelated process would; it writes a message and raises a flag, and the
// parent sees both in its own mapping and, afterwards, in the file itself.
#include <prefork/fd.hpp>
#include <prefork/process.hpp>

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <new>
#include <string>

namespace {

struct page {
  std::atomic<int> ready;  // lock-free: the same instructions work across processes
  char message[64];
};

page* map_file(const std::string& path) {
  prefork::fd file(::open(path.c_str(), O_RDWR | O_CLOEXEC));
  if (!file) return nullptr;
  void* p = ::mmap(nullptr, sizeof(page), PROT_READ | PROT_WRITE, MAP_SHARED, file.get(), 0);
  return p == MAP_FAILED ? nullptr : static_cast<page*>(p);  // the mapping outlives the fd
}

}  // namespace

int main() {
  std::string dir = (std::filesystem::temp_directory_path() / "ipc-mmap-XXXXXX").string();
  if (!::mkdtemp(dir.data())) return 1;
  const std::string path = dir + "/shared.bin";
  {
    prefork::fd file(::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
    if (!file || ::ftruncate(file.get(), sizeof(page)) == -1) return 1;  // zero-filled
  }
  page* mine = map_file(path);
  if (!mine) return 1;
  std::fflush(stdout);
  auto kid = prefork::fork();
  if (!kid) {
    ::munmap(mine, sizeof(page));  // act like a stranger: map it afresh by name
    page* theirs = map_file(path);
    if (!theirs) ::_exit(1);
    std::snprintf(theirs->message, sizeof theirs->message, "written by %d", ::getpid());
    theirs->ready.store(1, std::memory_order_release);  // publishes the message
    ::msync(theirs, sizeof(page), MS_SYNC);
    ::_exit(0);
  }
  bool ok = kid->wait().success() && mine->ready.load(std::memory_order_acquire) == 1;
  std::string seen = mine->message;
  std::printf("parent's mapping shows: %s\n", seen.c_str());

  char on_disk[sizeof(page)] = {};
  prefork::fd file(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  bool read_back = ::pread(file.get(), on_disk, sizeof on_disk, 0) == ssize_t(sizeof on_disk);
  std::string in_file = on_disk + offsetof(page, message);
  std::printf("the file itself holds: %s\n", in_file.c_str());
  ::munmap(mine, sizeof(page));
  std::filesystem::remove_all(dir);
  ok = ok && read_back && seen == "written by " + std::to_string(kid->pid()) && in_file == seen;
  std::printf("%s\n", ok ? "mmap-file: OK" : "mmap-file: FAILED");
  return ok ? 0 : 1;
}
