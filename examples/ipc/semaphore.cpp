// ipc-semaphore: a POSIX named semaphore guarding a critical section.
//
// Good for: a lock or a counted resource shared by processes, around data in
// shared memory that no single atomic instruction can update. Uncontended,
// sem_wait and sem_post stay in user space (a futex); only waiting enters
// the kernel. Costs: a name in /dev/shm that outlives a crashed creator
// unless unlinked; no owner, so a holder that dies inside the section leaves
// it locked forever (a flock or a robust mutex is released on death, this
// is not); no prefork wrapper, so the C API is used directly with a small
// RAII class here.
//
// Unrelated processes would sem_open the same name; our peers are our
// children, who inherit the mapping, so the name is unlinked at once and a
// kill at any moment after that leaves nothing behind.
#include <prefork/process.hpp>
#include <prefork/shm.hpp>

#include <fcntl.h>
#include <semaphore.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <string>
#include <system_error>
#include <vector>

namespace {

class named_semaphore {
 public:
  named_semaphore(const std::string& name, unsigned value) {
    sem_ = ::sem_open(name.c_str(), O_CREAT | O_EXCL, 0600, value);
    if (sem_ == SEM_FAILED) throw std::system_error(errno, std::generic_category(), "sem_open " + name);
    ::sem_unlink(name.c_str());  // nameless from here on
  }
  named_semaphore(const named_semaphore&) = delete;
  named_semaphore& operator=(const named_semaphore&) = delete;
  ~named_semaphore() { ::sem_close(sem_); }

  void wait() {
    while (::sem_wait(sem_) == -1)
      if (errno != EINTR) throw std::system_error(errno, std::generic_category(), "sem_wait");
  }
  void post() { ::sem_post(sem_); }

 private:
  sem_t* sem_;
};

struct guarded {
  long total;                 // plain data: only touched inside the section
  std::atomic<int> inside;    // how we would catch two processes in it at once
  std::atomic<int> overlaps;
};

}  // namespace

int main() {
  const int children = 4, rounds = 20000;
  auto now = std::chrono::steady_clock::now().time_since_epoch().count();
  named_semaphore sem("/prefork-ipc-sem-" + std::to_string(::getpid()) + "-" + std::to_string(now), 1);
  prefork::shared<guarded> data;
  std::fflush(stdout);
  std::vector<prefork::child> kids;
  for (int c = 0; c < children; ++c) {
    auto kid = prefork::fork();
    if (!kid) {
      for (int i = 0; i < rounds; ++i) {
        sem.wait();
        if (data->inside.exchange(1)) ++data->overlaps;
        long v = data->total;  // a read-modify-write that would lose updates unguarded
        data->total = v + 1;
        data->inside = 0;
        sem.post();
      }
      ::_exit(0);
    }
    kids.push_back(std::move(*kid));
  }
  bool ok = true;
  for (auto& k : kids) ok = k.wait().success() && ok;
  std::printf("%d children x %d guarded increments: total %ld, overlaps %d\n", children, rounds, data->total,
              data->overlaps.load());
  ok = ok && data->total == long(children) * rounds && data->overlaps == 0;
  std::printf("%s\n", ok ? "semaphore: OK" : "semaphore: FAILED");
  return ok ? 0 : 1;
}
