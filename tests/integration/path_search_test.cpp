// The PATH search of a bare program name (path_search.hpp), through spawn()
// and through exec() alike: with PATH unset, the directories glibc's execvp
// searches (/bin:/usr/bin) and no other; an empty PATH entry is the working
// directory.
//
// To show that /usr/local/bin is not searched without PATH, a program must
// be there and nowhere else: the test makes one on a tmpfs mounted over
// /usr/local/bin in a mount namespace of a forked child, so the machine's
// own /usr/local/bin is neither read nor touched. Without the right to make
// namespaces (neither root nor unprivileged user namespaces) that test is
// skipped.
#include "catch.hpp"

#include <prefork/exec.hpp>
#include <prefork/pipe.hpp>
#include <prefork/spawn.hpp>

#include <fcntl.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>
#include <system_error>
#include <vector>

#include "helpers.hpp"
#include "leak_check.hpp"

namespace {

std::string errno_text(const std::string& call) { return call + ": " + std::strerror(errno); }

// Writes all of `text` to a new file `path` with `mode`; "" or why not.
std::string write_file(const std::string& path, const std::string& text, mode_t mode) {
  prefork::fd f(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode));
  if (!f) return errno_text("open " + path);
  std::error_code ec;
  prefork::write_all(f.get(), text.data(), text.size(), ec);
  return ec ? path + ": " + ec.message() : "";
}

// This process in a mount namespace of its own (and a user namespace, when
// not root) with an empty tmpfs on /usr/local/bin. "" or why not.
std::string private_usr_local_bin() {
  const uid_t uid = ::geteuid();
  const gid_t gid = ::getegid();
  if (::unshare(uid == 0 ? CLONE_NEWNS : CLONE_NEWUSER | CLONE_NEWNS) == -1) return errno_text("unshare");
  if (uid != 0) {
    if (std::string why = write_file("/proc/self/setgroups", "deny", 0); !why.empty()) return why;
    if (std::string why = write_file("/proc/self/uid_map", "0 " + std::to_string(uid) + " 1", 0);
        !why.empty())
      return why;
    if (std::string why = write_file("/proc/self/gid_map", "0 " + std::to_string(gid) + " 1", 0);
        !why.empty())
      return why;
  }
  // Private first, so the tmpfs does not propagate back to the machine.
  if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) == -1)
    return errno_text("mount --make-rprivate /");
  if (::mount("tmpfs", "/usr/local/bin", "tmpfs", 0, "mode=0755") == -1)
    return errno_text("mount tmpfs /usr/local/bin");
  return "";
}

std::string outcome(int code) {
  if (code >= 100) return std::string("error: ") + std::strerror(code - 100);
  return "exit " + std::to_string(code);
}

// What spawn() makes of `argv`: "exit N" or "error: <errno's text>".
std::string by_spawn(const std::vector<std::string>& argv) {
  try {
    return outcome(prefork::spawn(argv).wait().code());
  } catch (const std::system_error& e) {
    return outcome(100 + e.code().value());
  }
}

// What exec() makes of `argv`, in a forked child: the same words.
std::string by_exec(const std::vector<std::string>& argv) {
  std::fflush(nullptr);  // or the child would print what is buffered again
  pid_t pid = ::fork();
  if (pid == -1) return errno_text("fork");
  if (pid == 0) {
    int code = 99;
    try {
      prefork::exec(argv, {});
    } catch (const std::system_error& e) {
      code = 100 + e.code().value();
    } catch (...) {
    }
    ::_exit(code);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) == -1)
    if (errno != EINTR) return errno_text("waitpid");
  return WIFEXITED(status) ? outcome(WEXITSTATUS(status))
                           : "killed by signal " + std::to_string(WTERMSIG(status));
}

// Runs `body` in a forked child whose stdout is returned, with its exit code.
template <class Body>
std::pair<std::string, int> in_child(Body body) {
  auto out = prefork::pipe();
  pid_t pid = prefork::test::fork_child([&] {
    ::dup2(out.write.get(), 1);
    int code = body();
    std::fflush(stdout);
    return code;
  });
  out.write.reset();
  std::string text;
  char buf[4096];
  for (ssize_t n; (n = ::read(out.read.get(), buf, sizeof buf)) != 0;) {
    if (n < 0 && errno == EINTR) continue;
    REQUIRE(n > 0);
    text.append(buf, static_cast<std::size_t>(n));
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  return {text, WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status)};
}

constexpr int skipped = 77;

}  // namespace

PREFORK_HELPER(exit_with) { return argc > 0 ? std::atoi(argv[0]) : 1; }

TEST_CASE("PATH unset: spawn and exec search /bin:/usr/bin, as execvp does, and not /usr/local/bin",
          "[spawn][exec][path]") {
  prefork::test::leak_check leaks;
  {
    auto [text, code] = in_child([] {
      if (std::string why = private_usr_local_bin(); !why.empty()) {
        std::printf("%s", why.c_str());
        return skipped;
      }
      if (std::string why = write_file("/usr/local/bin/prefork-path-probe", "#!/bin/sh\nexit 5\n", 0755);
          !why.empty()) {
        std::printf("%s", why.c_str());
        return 1;
      }
      ::unsetenv("PATH");
      // The probe is runnable where it is; only the search must miss it.
      std::printf("probe by path: %s\n", by_spawn({"/usr/local/bin/prefork-path-probe"}).c_str());
      std::printf("spawn probe: %s\n", by_spawn({"prefork-path-probe"}).c_str());
      std::printf("exec probe: %s\n", by_exec({"prefork-path-probe"}).c_str());
      std::printf("spawn sh: %s\n", by_spawn({"sh", "-c", "exit 7"}).c_str());
      std::printf("exec sh: %s\n", by_exec({"sh", "-c", "exit 7"}).c_str());
      return 0;
    });
    INFO(text);
    if (code == skipped) {
      WARN("SKIP: no mount namespace to hide /usr/local/bin in: " << text);
    } else {
      CHECK(code == 0);
      const std::string missing = std::string("error: ") + std::strerror(ENOENT);
      CHECK(text ==
            "probe by path: exit 5\n"
            "spawn probe: " +
                missing +
                "\n"
                "exec probe: " +
                missing +
                "\n"
                "spawn sh: exit 7\n"
                "exec sh: exit 7\n");
    }
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("an empty PATH entry is the working directory, for spawn and exec", "[spawn][exec][path]") {
  prefork::test::leak_check leaks;
  {
    const std::string self = prefork::test::self_exe();
    const std::string dir = self.substr(0, self.rfind('/'));
    const std::string name = self.substr(self.rfind('/') + 1);
    auto [text, code] = in_child([&] {
      if (::chdir(dir.c_str()) == -1) return 1;
      for (const char* path : {":/nonexistent", "/nonexistent::/nonexistent-too", "/nonexistent:"}) {
        ::setenv("PATH", path, 1);
        std::printf("%s spawn: %s\n", path, by_spawn({name, "--prefork-helper", "exit_with", "6"}).c_str());
        std::printf("%s exec: %s\n", path, by_exec({name, "--prefork-helper", "exit_with", "6"}).c_str());
      }
      return 0;
    });
    INFO(text);
    CHECK(code == 0);
    CHECK(text ==
          ":/nonexistent spawn: exit 6\n"
          ":/nonexistent exec: exit 6\n"
          "/nonexistent::/nonexistent-too spawn: exit 6\n"
          "/nonexistent::/nonexistent-too exec: exit 6\n"
          "/nonexistent: spawn: exit 6\n"
          "/nonexistent: exec: exit 6\n");
  }
  CHECK(leaks.problems() == "");
}
