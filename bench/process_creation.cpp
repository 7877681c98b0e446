// How the cost of making a process grows with the parent's memory.
//
// fork() copies the parent's page tables, so its cost grows with the
// parent's resident memory; prefork::spawn() (clone with CLONE_VM |
// CLONE_VFORK, as posix_spawn) shares them and should not. Each method runs
// with the parent holding 0, 64 MiB, 512 MiB and 2 GiB of touched memory
// (4 KiB pages: transparent huge pages are turned off for the ballast, as a
// fragmented heap would be in a long-running server).
//
//   bench_process_creation                      every size, Catch2 BENCHMARK
//   bench_process_creation "[64mib]"            one size
//   bench_process_creation "[csv]"              method,rss_mib,microseconds (median)
//     PREFORK_BENCH_SIZES=0,64,512,2048 (MiB)   sizes for [csv]
//     PREFORK_BENCH_RUNS=31                     runs per method and size for [csv]
//     PREFORK_BENCH_METHODS=spawn               only methods whose name holds this
#include "catch.hpp"

#include <prefork/process.hpp>

#include <pthread.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace {

// Touched anonymous memory the parent carries while it makes processes.
class ballast {
 public:
  void resize(std::size_t mib) {
    if (base_) ::munmap(base_, size_);
    base_ = nullptr;
    size_ = mib << 20;
    if (size_ == 0) return;
    void* p = ::mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::runtime_error("mmap ballast");
    ::madvise(p, size_, MADV_NOHUGEPAGE);
    base_ = static_cast<char*>(p);
    for (std::size_t at = 0; at < size_; at += 4096) base_[at] = static_cast<char>(at >> 12);
  }
  ~ballast() { resize(0); }

 private:
  char* base_ = nullptr;
  std::size_t size_ = 0;
};

ballast& carried() {
  static ballast b;
  return b;
}

void check(bool ok, const char* what) {
  if (!ok) throw std::runtime_error(what);
}

int wait_raw(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) == -1 && errno == EINTR) {
  }
  return status;
}

const std::vector<std::string> true_argv{"/bin/true"};
char* const true_raw_argv[] = {const_cast<char*>("/bin/true"), nullptr};

void prefork_fork() {
  auto c = prefork::fork();
  if (!c) ::_exit(0);
  check(c->wait().success(), "prefork::fork child failed");
}

void raw_fork() {
  pid_t pid = ::fork();
  if (pid == 0) ::_exit(0);
  check(pid > 0 && wait_raw(pid) == 0, "fork child failed");
}

void prefork_spawn() { check(prefork::spawn(true_argv).wait().success(), "spawn /bin/true failed"); }

void posix_spawn_true() {
  pid_t pid;
  check(::posix_spawn(&pid, "/bin/true", nullptr, nullptr, true_raw_argv, environ) == 0, "posix_spawn");
  check(wait_raw(pid) == 0, "posix_spawn /bin/true failed");
}

void fork_exec_true() {
  pid_t pid = ::fork();
  if (pid == 0) {
    ::execve("/bin/true", true_raw_argv, environ);
    ::_exit(127);
  }
  check(pid > 0 && wait_raw(pid) == 0, "fork+exec /bin/true failed");
}

void* nothing(void*) { return nullptr; }
void thread_create_join() {
  pthread_t t;
  check(::pthread_create(&t, nullptr, nothing, nullptr) == 0, "pthread_create");
  ::pthread_join(t, nullptr);
}

const std::vector<std::pair<const char*, void (*)()>> methods{
    {"prefork::fork+wait", prefork_fork},      {"fork+waitpid", raw_fork},
    {"prefork::spawn /bin/true", prefork_spawn}, {"posix_spawn /bin/true", posix_spawn_true},
    {"fork+exec /bin/true", fork_exec_true},   {"pthread create+join", thread_create_join},
};

void run_all(std::size_t mib) {
  carried().resize(mib);
  for (auto& [name, method] : methods) {
    auto f = method;
    BENCHMARK(std::string(name) + " @ " + std::to_string(mib) + " MiB") { f(); };
  }
  carried().resize(0);
}

std::vector<std::size_t> sizes_from_env() {
  std::vector<std::size_t> sizes;
  const char* env = std::getenv("PREFORK_BENCH_SIZES");
  std::stringstream in(env && *env ? env : "0,64,512,2048");
  for (std::string item; std::getline(in, item, ',');) sizes.push_back(std::stoul(item));
  return sizes;
}

}  // namespace

TEST_CASE("process creation, parent at 0 MiB", "[0mib]") { run_all(0); }
TEST_CASE("process creation, parent at 64 MiB", "[64mib]") { run_all(64); }
TEST_CASE("process creation, parent at 512 MiB", "[512mib]") { run_all(512); }
TEST_CASE("process creation, parent at 2 GiB", "[2gib]") { run_all(2048); }

// Hidden unless asked for: a table for docs/ and plots.
TEST_CASE("process creation as CSV", "[.][csv]") {
  const char* runs_env = std::getenv("PREFORK_BENCH_RUNS");
  int runs = runs_env ? std::max(1, std::atoi(runs_env)) : 31;
  const char* only = std::getenv("PREFORK_BENCH_METHODS");
  std::cout << "method,rss_mib,microseconds\n";
  for (std::size_t mib : sizes_from_env()) {
    carried().resize(mib);
    for (auto& [name, method] : methods) {
      if (only && std::string(name).find(only) == std::string::npos) continue;
      for (int i = 0; i < 3; ++i) method();  // warm caches and the page cache of /bin/true
      std::vector<double> us;
      for (int i = 0; i < runs; ++i) {
        auto start = std::chrono::steady_clock::now();
        method();
        us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count());
      }
      std::nth_element(us.begin(), us.begin() + runs / 2, us.end());
      std::cout << name << "," << mib << "," << static_cast<long>(us[static_cast<std::size_t>(runs / 2)] + 0.5)
                << std::endl;
    }
  }
  carried().resize(0);
}
