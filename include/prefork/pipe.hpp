// prefork/pipe.hpp: prefork::pipe(), both ends owned and CLOEXEC from birth.
//
// A pipe is how a parent and child talk without sockets: the self-pipe of
// signal.hpp, the exec-error pipe of spawn, the master's control pipes to its
// workers, the courier of an in-place upgrade. Stands on pipe2(2); O_CLOEXEC
// is always added, so an end is only ever inherited on purpose.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <stdexcept>
#include <string>

#include <prefork/error.hpp>
#include <prefork/fd.hpp>

namespace prefork {

// [[nodiscard]]: a pipe nobody keeps is two descriptors opened and closed.
struct [[nodiscard]] pipe_ends {
  fd read;
  fd write;
};

// flags: O_NONBLOCK, O_DIRECT (packet mode); O_CLOEXEC is implied.
[[nodiscard]] inline pipe_ends pipe(int flags = 0) {
  if ((flags & ~(O_NONBLOCK | O_DIRECT | O_CLOEXEC)) != 0)
    throw std::invalid_argument("pipe: unsupported flags " + std::to_string(flags) +
                                " (only O_NONBLOCK and O_DIRECT are meaningful)");
  int raw[2];
  if (::pipe2(raw, flags | O_CLOEXEC) == -1) throw_system_error("pipe2");
  return pipe_ends{fd(raw[0]), fd(raw[1])};
}

}  // namespace prefork
