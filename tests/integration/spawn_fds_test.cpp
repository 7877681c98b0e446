// spawn's fd mapping with any numbers (sources at 0, 1, 2, swaps, a source
// that is another's target, a pair given twice), the standard descriptors it
// leaves alone, and spawn and exec under a seccomp filter that refuses
// close_range with EPERM, as container profiles do.
#include "catch.hpp"

#include <prefork/exec.hpp>
#include <prefork/pipe.hpp>
#include <prefork/process.hpp>

#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <stddef.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include <chrono>
#include <cstdio>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "helpers.hpp"
#include "leak_check.hpp"

using namespace std::chrono_literals;

namespace {

// What descriptor n is, as /proc/self/fd names it, or "closed".
std::string what_is(int n) {
  char path[64], buf[512];
  std::snprintf(path, sizeof path, "/proc/self/fd/%d", n);
  ssize_t len = ::readlink(path, buf, sizeof buf - 1);
  return len < 0 ? "closed" : std::string(buf, static_cast<std::size_t>(len));
}

// A descriptor whose /proc name is its own: "/memfd:NAME (deleted)".
int named(const char* name) {
  int fd = static_cast<int>(::syscall(SYS_memfd_create, name, 1U /* MFD_CLOEXEC */));
  if (fd == -1) throw std::system_error(errno, std::generic_category(), "memfd_create");
  return fd;
}

// Everything on `fd` until end of file, with a deadline instead of a hang.
std::string read_to_eof(int fd) {
  std::string out;
  auto until = std::chrono::steady_clock::now() + 20s;
  for (;;) {
    auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
    if (left.count() <= 0) throw std::runtime_error("no end of file within 20 s");
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
    char buf[4096];
    auto got = prefork::read_some(fd, buf, sizeof buf);
    if (!got || got.bytes == 0) return out;
    out.append(buf, got.bytes);
  }
}

// Runs `body` in a forked child, so it may rearrange its own 0, 1 and 2 (or
// install a seccomp filter) without touching the test process; the child's
// exit code is the number of failed checks, its stderr says which.
int in_child(const std::function<int()>& body) {
  pid_t pid = prefork::test::fork_child(body);
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// Where expect() complains: the test's stderr, kept aside before a child
// replaces its own 2.
int complaints = 2;

int expect(bool ok, const std::string& what) {
  if (!ok) {
    std::string line = "child " + std::to_string(::getpid()) + ": " + what + "\n";
    std::error_code ec;
    prefork::write_all(complaints, line.data(), line.size(), ec);
  }
  return ok ? 0 : 1;
}

// Gives this process its own 0, 1 and 2, told apart by name ("stdio-N"),
// keeping the test's stderr for complaints.
void name_stdio() {
  complaints = ::fcntl(2, F_DUPFD_CLOEXEC, 100);
  for (int n = 0; n <= 2; ++n) {
    int fd = named(("stdio-" + std::to_string(n)).c_str());
    ::dup2(fd, n);  // dup2 clears CLOEXEC: these are plain standard descriptors
    ::close(fd);
  }
}

// Spawns the identify helper with `options` plus a report pipe at `report`,
// and returns what it says about each of `numbers`.
std::map<int, std::string> identify(prefork::spawn_options options, const std::vector<int>& numbers,
                                    int report = 9) {
  auto out = prefork::pipe();
  options.fds.emplace_back(out.write.get(), report);
  std::vector<std::string> args{std::to_string(report)};
  for (int n : numbers) args.push_back(std::to_string(n));
  prefork::child c = prefork::spawn(prefork::test::helper_argv("identify", args), options);
  out.write.reset();
  std::string text = read_to_eof(out.read.get());
  c.wait();
  std::map<int, std::string> seen;
  for (std::size_t at = 0; at < text.size();) {
    std::size_t eq = text.find('=', at), nl = text.find('\n', at);
    seen[std::stoi(text.substr(at, eq - at))] = text.substr(eq + 1, nl - eq - 1);
    at = nl + 1;
  }
  return seen;
}

}  // namespace

// identify REPORT N...: "N=<what fd N is>" per line, written to fd REPORT.
PREFORK_HELPER(identify) {
  std::string out;
  for (int i = 1; i < argc; ++i) out += std::string(argv[i]) + "=" + what_is(std::atoi(argv[i])) + "\n";
  prefork::write_all(std::atoi(argv[0]), out);
  return 0;
}

// print_fds: every descriptor open, on fd 1.
PREFORK_HELPER(print_fds) {
  std::string out;
  for (int fd : prefork::test::open_fds()) out += (out.empty() ? "" : " ") + std::to_string(fd);
  prefork::write_all(1, out);
  return 0;
}

TEST_CASE("spawn: the standard descriptors nobody maps are inherited", "[spawn][fds]") {
  prefork::test::leak_check leaks;
  int failed = in_child([] {
    int bad = 0;
    name_stdio();
    const std::string in = what_is(0), out = what_is(1), err = what_is(2);
    int other = named("other");

    // Mapping one descriptor to 3 leaves 0, 1 and 2 as they were.
    prefork::spawn_options options;
    options.fds = {{other, 3}};
    auto seen = identify(options, {0, 1, 2, 3});
    bad += expect(seen[0] == in, "0 is " + seen[0]);  // before the fix: closed
    bad += expect(seen[1] == out, "1 is " + seen[1]);
    bad += expect(seen[2] == err, "2 is " + seen[2]);
    bad += expect(seen[3] == what_is(other), "3 is " + seen[3]);

    // Mapping onto 1 replaces only 1.
    options.fds = {{other, 1}};
    seen = identify(options, {0, 1, 2});
    bad += expect(seen[0] == in && seen[1] == what_is(other) && seen[2] == err,
                  "mapped onto 1: " + seen[0] + ", " + seen[1] + ", " + seen[2]);

    // Asked for: exactly the mapped ones.
    options.fds = {{other, 3}};
    options.inherit_stdio = false;
    seen = identify(options, {0, 1, 2, 3});
    bad += expect(seen[0] == "closed" && seen[1] == "closed" && seen[2] == "closed",
                  "inherit_stdio = false: " + seen[0] + ", " + seen[1] + ", " + seen[2]);
    bad += expect(seen[3] == what_is(other), "3 is " + seen[3]);

    // A close-on-exec descriptor at a standard number is someone's private
    // one (here the report pipe identify() makes, which takes the free 0):
    // not inherited, as with posix_spawn.
    ::close(0);
    options.inherit_stdio = true;
    seen = identify(options, {0, 1});
    bad += expect(seen[0] == "closed" && seen[1] == out, "with 0 closed: " + seen[0] + ", " + seen[1]);
    return bad;
  });
  CHECK(failed == 0);
  CHECK(leaks.problems() == "");
}

TEST_CASE("spawn: any descriptor numbers map, whatever they collide with", "[spawn][fds]") {
  prefork::test::leak_check leaks;
  int failed = in_child([] {
    int bad = 0;
    name_stdio();
    const std::string zero = what_is(0), one = what_is(1), two = what_is(2);
    prefork::spawn_options options;

    // Sources at 0, 1, 2 moved elsewhere; 0, 1, 2 themselves still inherited.
    options.fds = {{0, 5}, {1, 6}, {2, 7}};
    auto seen = identify(options, {0, 1, 2, 5, 6, 7});
    bad += expect(seen[5] == zero && seen[6] == one && seen[7] == two,
                  "0,1,2 -> 5,6,7: " + seen[5] + ", " + seen[6] + ", " + seen[7]);
    bad += expect(seen[0] == zero && seen[1] == one && seen[2] == two, "0,1,2 no longer inherited");

    // A swap, and a rotation.
    options.fds = {{1, 2}, {2, 1}};
    seen = identify(options, {0, 1, 2});
    bad += expect(seen[0] == zero && seen[1] == two && seen[2] == one, "swap: " + seen[1] + ", " + seen[2]);
    options.fds = {{0, 1}, {1, 2}, {2, 0}};
    seen = identify(options, {0, 1, 2});
    bad += expect(seen[0] == two && seen[1] == zero && seen[2] == one,
                  "rotation: " + seen[0] + ", " + seen[1] + ", " + seen[2]);

    // A source that is another mapping's target, in either order.
    int a = named("a"), b = named("b");
    options.fds = {{a, b}, {b, 12}};
    seen = identify(options, {b, 12, a});
    bad += expect(seen[b] == "/memfd:a (deleted)" && seen[12] == "/memfd:b (deleted)" && seen[a] == "closed",
                  "a->b, b->12: " + seen[b] + ", " + seen[12] + ", " + seen[a]);
    options.fds = {{b, 12}, {a, b}};
    seen = identify(options, {b, 12});
    bad += expect(seen[b] == "/memfd:a (deleted)" && seen[12] == "/memfd:b (deleted)", "b->12, a->b");

    // The same pair twice (a listener at 0 that the caller also passes as
    // stdin: fork_exec's case): one mapping, not an error.
    options.fds = {{0, 0}, {1, 1}, {2, 2}, {0, 0}};
    try {
      seen = identify(options, {0, 1, 2});
      bad += expect(seen[0] == zero && seen[1] == one && seen[2] == two, "0 -> 0 twice");
    } catch (const std::exception& e) {  // before the fix: "fd 0 in the child is mapped more than once"
      bad += expect(false, std::string("0 -> 0 twice: ") + e.what());
    }
    // The same number from two sources is still refused.
    options.fds = {{a, 4}, {b, 4}};
    try {
      prefork::child never = prefork::spawn({"/bin/true"}, options);
      bad += expect(false, "two sources for 4 accepted");
    } catch (const std::invalid_argument& e) {
      bad += expect(std::string(e.what()).find("fd 4 in the child") != std::string::npos, e.what());
    }

    // A parent started with 0 closed: what it opens next (a listener, here
    // a close-on-exec memfd) is 0. Mapped to 3, it is 3 in the child, and
    // not also its stdin.
    ::close(0);
    int listener = named("listener");
    bad += expect(listener == 0, "the next descriptor is not 0 but " + std::to_string(listener));
    options.fds = {{listener, 3}};
    seen = identify(options, {0, 3});
    bad += expect(seen[0] == "closed" && seen[3] == "/memfd:listener (deleted)",
                  "listener at 0 -> 3: " + seen[0] + ", " + seen[3]);
    options.fds = {{0, 0}, {1, 1}, {2, 2}, {listener, listener}};
    seen = identify(options, {0, 1, 2});
    bad += expect(seen[0] == "/memfd:listener (deleted)" && seen[1] == one, "listener at 0 -> 0");
    return bad;
  });
  CHECK(failed == 0);
  CHECK(leaks.problems() == "");
}

namespace {

// Makes close_range fail with EPERM in this process and its children, as
// Docker's and other container runtimes' default seccomp profiles do with
// system calls they do not know.
bool refuse_close_range() {
  sock_filter program[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, static_cast<unsigned>(prefork::detail::sys_close_range), 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  sock_fprog prog{static_cast<unsigned short>(sizeof program / sizeof program[0]), program};
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == -1) return false;
  if (::syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) == -1) return false;
  return ::syscall(prefork::detail::sys_close_range, 100000U, 100000U, 0U) == -1 && errno == EPERM;
}

}  // namespace

TEST_CASE("spawn and exec under a seccomp filter that refuses close_range (EPERM)",
          "[spawn][exec][seccomp]") {
  prefork::test::leak_check leaks;
  int failed = in_child([] {
    if (!refuse_close_range()) return expect(false, "could not install the seccomp filter");
    int bad = 0;
    // A descriptor someone opened without CLOEXEC, which must not reach
    // the child, and one that is kept.
    int stray = named("stray");
    ::fcntl(stray, F_SETFD, 0);
    int kept = named("kept");

    // spawn: only the mapped ones (and 0, 1, 2) arrive.
    try {
      auto seen = identify(
          [&] {
            prefork::spawn_options o;
            o.fds = {{kept, 5}};
            return o;
          }(),
          {5, stray, kept});
      bad += expect(seen[5] == "/memfd:kept (deleted)", "kept at 5: " + seen[5]);
      bad += expect(seen[stray] == "closed", "the stray descriptor reached the child: " + seen[stray]);
      if (kept != 5) bad += expect(seen[kept] == "closed", "kept's own number reached the child");
    } catch (const std::exception& e) {  // before the fix: "closing inherited fds: Operation not permitted"
      bad += expect(false, std::string("spawn: ") + e.what());
    }

    // exec with a kept descriptor, in a child of ours that execs print_fds.
    auto out = prefork::pipe();
    std::optional<prefork::child> c = prefork::fork();
    if (!c) {
      ::dup2(out.write.get(), 1);
      try {
        prefork::exec(prefork::test::helper_argv("print_fds"), {kept});
      } catch (const std::exception& e) {  // before the fix: "exec: close_range CLOSE_RANGE_CLOEXEC: ..."
        std::fprintf(stderr, "exec failed: %s\n", e.what());
      }
      ::_exit(99);
    }
    out.write.reset();
    std::string fds = read_to_eof(out.read.get());
    prefork::exit_status how = c->wait();
    bad += expect(how.success(), "exec'd print_fds " + how.describe());
    std::string expected;
    for (int n : {0, 1, 2, kept})
      if (n <= 2 ? what_is(n) != "closed" : true)
        expected += (expected.empty() ? "" : " ") + std::to_string(n);
    bad += expect(fds == expected, "after exec: \"" + fds + "\", expected \"" + expected + "\"");
    return bad;
  });
  CHECK(failed == 0);
  CHECK(leaks.problems() == "");
}
