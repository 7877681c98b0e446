// tests/support/held_child.hpp: a forked child that runs exactly as long as
// the test wants. It reads its pipe until end of file, then exits with the
// code it was given; the test holds the pipe's other end (`release`) and
// closes it to let the child go, so no test sleeps or signals to end one.
#pragma once

#include <unistd.h>

#include <optional>
#include <utility>

#include <prefork/fd.hpp>
#include <prefork/pipe.hpp>
#include <prefork/process.hpp>

namespace prefork::test {

struct held_child {
  prefork::child process;
  prefork::fd release;  // closing it ends the child, with its code
};

inline held_child fork_held(int code) {
  prefork::pipe_ends hold = prefork::pipe();
  std::optional<prefork::child> c = prefork::fork();
  if (!c) {
    hold.write.reset();
    char ch;
    while (::read(hold.read.get(), &ch, 1) > 0) {
    }
    ::_exit(code);
  }
  hold.read.reset();
  return {std::move(*c), std::move(hold.write)};
}

}  // namespace prefork::test
