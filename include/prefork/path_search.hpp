// prefork/path_search.hpp: where a program named without a '/' is looked
// for, once for spawn() (spawn.hpp), exec() (exec.hpp) and the in-place
// upgrade's re-exec (upgrade_handover.hpp), so the three agree.
//
// The candidates are the directories of PATH in order, each joined with the
// name; an empty entry (a leading, trailing or doubled ':') is the working
// directory, as POSIX says and execvp does. Without PATH the list is glibc
// execvp's default, confstr(_CS_PATH): "/bin:/usr/bin" (man 3 exec; glibc
// dropped the working directory from it in 2.24). It is written here rather
// than asked of confstr so that it does not depend on the libc the program
// was linked with (musl's execvp puts /usr/local/bin first). Building the
// list allocates: it runs in the parent, never between fork and exec.
//
// Stands on getenv(3).
#pragma once

#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

namespace prefork::detail {

// glibc's confstr(_CS_PATH), execvp's search path when PATH is unset.
inline constexpr std::string_view default_path = "/bin:/usr/bin";

// Where to look for `program`, in order: itself alone when it holds a '/'.
inline std::vector<std::string> path_candidates(const std::string& program) {
  if (program.find('/') != std::string::npos) return {program};
  const char* path = std::getenv("PATH");
  std::string_view dirs = path ? std::string_view(path) : default_path;
  std::vector<std::string> candidates;
  for (;;) {
    std::size_t colon = dirs.find(':');
    std::string_view dir = dirs.substr(0, colon);
    candidates.push_back((dir.empty() ? std::string(".") : std::string(dir)) + "/" + program);
    if (colon == std::string_view::npos) break;
    dirs.remove_prefix(colon + 1);
  }
  return candidates;
}

}  // namespace prefork::detail
