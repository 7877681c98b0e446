// ipc-shm-counter: a counter in shared memory, updated by several children
// with atomic instructions.
//
// Good for: state many processes update at high rates: request counters,
// a scoreboard of workers, flags. After setup no system call is involved;
// an increment is one atomic instruction on memory all processes map
// (prefork::shared, MAP_SHARED over a memfd created before fork). Costs:
// only plain data and lock-free atomics may live there; anything larger than
// one atomic needs a protocol (a sequence lock, a semaphore); cache lines
// bounce between CPUs when everyone writes the same counter; and nobody is
// told about a change, so readers poll or need another channel to wake up.
#include <prefork/process.hpp>
#include <prefork/shm.hpp>

#include <atomic>
#include <cstdio>
#include <vector>

int main() {
  const int children = 4, increments = 250000;
  prefork::shared<std::atomic<long>> counter;  // before fork, so every child maps it
  std::fflush(stdout);
  std::vector<prefork::child> kids;
  for (int c = 0; c < children; ++c) {
    auto kid = prefork::fork();
    if (!kid) {
      for (int i = 0; i < increments; ++i) counter->fetch_add(1, std::memory_order_relaxed);
      ::_exit(0);
    }
    kids.push_back(std::move(*kid));
  }
  bool ok = true;
  for (auto& k : kids) ok = k.wait().success() && ok;
  long expected = long(children) * increments;
  std::printf("%d children x %d increments: counter %ld, expected %ld\n", children, increments, counter->load(),
              expected);
  ok = ok && counter->load() == expected;
  std::printf("%s\n", ok ? "shm-counter: OK" : "shm-counter: FAILED");
  return ok ? 0 : 1;
}
