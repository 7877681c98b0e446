// tests/support/helpers.hpp: helper processes that are the test binary itself.
//
// As libuv's tests do, a test that needs another process runs its own
// executable again with `--prefork-helper NAME args...`; main() sees that
// first and runs the helper instead of the test framework. A helper is
// declared next to the test that uses it:
//
//   PREFORK_HELPER(print_fds) { ... return 0; }      // argc/argv: the args after NAME
//   auto argv = prefork::test::helper_argv("print_fds", {"x"});
#pragma once

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <map>
#include <string>
#include <system_error>
#include <vector>

namespace prefork::test {

using helper_function = int (*)(int argc, char** argv);

inline std::map<std::string, helper_function>& helper_registry() {
  static std::map<std::string, helper_function> registry;
  return registry;
}

struct register_helper {
  register_helper(const char* name, helper_function f) { helper_registry()[name] = f; }
};

// The path of the running executable.
inline std::string self_exe() {
  char buf[4096];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n < 0) std::abort();
  return std::string(buf, static_cast<std::size_t>(n));
}

// argv that runs helper `name` of this executable with `args`.
inline std::vector<std::string> helper_argv(const std::string& name, std::vector<std::string> args = {}) {
  std::vector<std::string> argv{self_exe(), "--prefork-helper", name};
  argv.insert(argv.end(), args.begin(), args.end());
  return argv;
}

// Where the project's executables are: the first folder of $PREFORK_BIN (a
// colon-separated list, set by the build's test registration: CMake puts
// every executable in one folder, Meson in one per source folder) that holds
// `program`, else the directory of this test executable.
inline std::string bin_path(const std::string& program) {
  if (const char* dirs = std::getenv("PREFORK_BIN"); dirs && *dirs) {
    std::string list = dirs;
    for (std::size_t start = 0; start <= list.size();) {
      std::size_t end = list.find(':', start);
      if (end == std::string::npos) end = list.size();
      std::string candidate = list.substr(start, end - start) + "/" + program;
      if (end > start && ::access(candidate.c_str(), X_OK) == 0) return candidate;
      start = end + 1;
    }
  }
  std::string self = self_exe();
  return self.substr(0, self.rfind('/') + 1) + program;
}

// Runs `body` in a forked child that exits with its return value (99 when it
// throws, after saying why on stderr); the child never returns into the test
// framework. The caller reaps the returned PID.
inline pid_t fork_child(const std::function<int()>& body) {
  pid_t pid = ::fork();
  if (pid == -1) throw std::system_error(errno, std::generic_category(), "fork");
  if (pid == 0) {
    int code = 99;
    try {
      code = body();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "child %d: %s\n", ::getpid(), e.what());
    }
    ::_exit(code);
  }
  return pid;
}

// Called first by the test mains: runs a helper and returns its exit code, or
// returns -1 when argv does not ask for one.
inline int run_helper_if_asked(int argc, char** argv) {
  if (argc < 3 || std::strcmp(argv[1], "--prefork-helper") != 0) return -1;
  auto it = helper_registry().find(argv[2]);
  if (it == helper_registry().end()) {
    std::fprintf(stderr, "no test helper named '%s'\n", argv[2]);
    return 127;
  }
  return it->second(argc - 3, argv + 3);
}

}  // namespace prefork::test

#define PREFORK_HELPER_CAT2(a, b) a##b
#define PREFORK_HELPER_CAT(a, b) PREFORK_HELPER_CAT2(a, b)
#define PREFORK_HELPER(name)                                                             \
  static int PREFORK_HELPER_CAT(prefork_helper_, name)(int argc, char** argv);           \
  static ::prefork::test::register_helper PREFORK_HELPER_CAT(prefork_helper_reg_, name)( \
      #name, PREFORK_HELPER_CAT(prefork_helper_, name));                                 \
  static int PREFORK_HELPER_CAT(prefork_helper_, name)([[maybe_unused]] int argc,        \
                                                       [[maybe_unused]] char** argv)
