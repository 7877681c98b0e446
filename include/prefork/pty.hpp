// prefork/pty.hpp: prefork::spawn_pty(), a program run on a new
// pseudo-terminal, for what behaves differently when it is not talking to a
// terminal (a shell's prompt, line buffering, colours, password prompts).
//
// The parent opens the pair: the master stays with the caller, the terminal
// side becomes the child's fds 0, 1 and 2. The child is a session leader
// (setsid) and makes the terminal its controlling terminal (TIOCSCTTY), so
// it is the terminal's foreground process group and ^C written to the master
// reaches it as SIGINT. Both ends are close-on-exec from birth; the terminal
// side is closed in the parent once the child has it, so a read on the
// master fails with EIO (not end of file: that is how Linux says the other
// side is gone) once the child and everything it started have closed it.
// Stands on posix_openpt, grantpt, unlockpt, ptsname_r, open, ioctl
// (TIOCSWINSZ, TIOCSCTTY) and spawn.
#pragma once

#include <fcntl.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <termios.h>

#include <string>
#include <utility>
#include <vector>

#include <prefork/error.hpp>
#include <prefork/fd.hpp>
#include <prefork/process.hpp>

namespace prefork {

// [[nodiscard]]: its child is killed when it goes out of scope.
struct [[nodiscard]] pty_child {
  child process;
  fd master;  // read the child's output, write its input
};

// Runs argv as spawn does, with fds 0, 1 and 2 on a new pseudo-terminal of
// 24 rows and 80 columns (TIOCSWINSZ on the master changes it; the child
// gets SIGWINCH). Other mappings in `options.fds` are kept; new_session and
// controlling_terminal are implied. Output arrives as a terminal sends it:
// with "\r\n" line ends and the input echoed, unless the child changes that.
[[nodiscard]] inline pty_child spawn_pty(const std::vector<std::string>& argv,
                                         const spawn_options& options = {}) {
  fd master(::posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC));
  if (!master) throw_system_error("posix_openpt");
  if (::grantpt(master.get()) == -1) throw_system_error("grantpt " + std::to_string(master.get()));
  if (::unlockpt(master.get()) == -1) throw_system_error("unlockpt " + std::to_string(master.get()));
  char name[128];
  if (int err = ::ptsname_r(master.get(), name, sizeof name); err != 0)
    throw_system_error("ptsname_r " + std::to_string(master.get()), err);
  fd terminal(::open(name, O_RDWR | O_NOCTTY | O_CLOEXEC));
  if (!terminal) throw_system_error(std::string("open ") + name);
  winsize size{};
  size.ws_row = 24;
  size.ws_col = 80;
  if (::ioctl(terminal.get(), TIOCSWINSZ, &size) == -1) throw_system_error(std::string("TIOCSWINSZ ") + name);

  spawn_options on_terminal = options;
  std::vector<std::pair<int, int>> fds;
  for (auto mapping : options.fds)
    if (mapping.second > 2) fds.push_back(mapping);
  for (int n = 0; n <= 2; ++n) fds.emplace_back(terminal.get(), n);
  on_terminal.fds = std::move(fds);
  on_terminal.new_session = true;
  on_terminal.controlling_terminal = true;
  child process = spawn(argv, on_terminal);
  return pty_child{std::move(process), std::move(master)};
}

}  // namespace prefork
