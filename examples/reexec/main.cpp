// prefork-reexec: replacing a running server's program without closing its
// socket or changing its PID, done by hand with the library's primitives.
//
//   prefork-reexec [--listen ADDR]
//
// A one-process server: each connection gets one line, "pid P counter N",
// and is closed. On HUP the server execs its own program again (a newly
// installed binary is what runs). Three things survive:
//
//   - the PID: exec replaces the program, not the process;
//   - the listening socket: it is kept open across exec (PREFORK_FDS says
//     which descriptor it is), so the kernel goes on queueing connections
//     while the new image starts, and none is refused;
//   - the counter, the server's state: exec wipes the memory, so before
//     exec'ing, the server forks a courier child that holds the counter and
//     writes it into a pipe whose read end crosses the exec. The new image
//     reads it back, adds one, and reaps the courier (still its child).
//
// Why a courier rather than writing into the pipe before exec: a pipe holds
// 64 KiB, and a real server's state may be larger; the courier writes while
// the new image reads. If the exec fails (the binary was removed), the old
// image goes on unchanged and says why. TERM or INT ends the server.
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>

#include <prefork/exec.hpp>
#include <prefork/pipe.hpp>
#include <prefork/process.hpp>
#include <prefork/signal.hpp>
#include <prefork/socket.hpp>

namespace {

// The old image tells the new one the courier's PID through the environment.
const char courier_variable[] = "PREFORK_REEXEC_COURIER";

void say(const std::string& line) {
  std::printf("prefork-reexec: %s\n", line.c_str());
  std::fflush(stdout);
}

std::string socket_inode(int sock) {
  struct stat st {};
  return ::fstat(sock, &st) == 0 ? std::to_string(st.st_ino) : "?";
}

struct server {
  prefork::fd listener;
  long counter = 0;
};

// The new image's side: the inherited socket, the counter from the courier.
// Returns nothing when this is a first start (nothing was inherited).
std::optional<server> take_over() {
  prefork::inherited in = prefork::take_inherited_fds();
  if (in.fds.empty()) return std::nullopt;
  server s;
  prefork::fd state;
  for (std::size_t i = 0; i < in.fds.size(); ++i) {
    if (in.names[i] == "listener") s.listener = std::move(in.fds[i]);
    if (in.names[i] == "state") state = std::move(in.fds[i]);
  }
  if (!s.listener || !state)
    throw std::runtime_error("inherited descriptors are not a listener and a state pipe");
  // End of file comes when the courier has written everything and exited.
  std::string text = prefork::read_all(state.get());
  s.counter = std::strtol(text.c_str(), nullptr, 10) + 1;
  const char* courier_pid = std::getenv(courier_variable);
  if (!courier_pid) throw std::runtime_error(std::string(courier_variable) + " is not set");
  prefork::child courier = prefork::child::adopt(static_cast<pid_t>(std::atol(courier_pid)));
  ::unsetenv(courier_variable);
  std::string how = courier.wait().describe();
  say("pid " + std::to_string(::getpid()) + " re-executed: listening on " +
      prefork::local_address(s.listener.get()) + " (socket inode " + socket_inode(s.listener.get()) +
      "), counter " + std::to_string(s.counter) + "; courier " + std::to_string(courier.pid()) + " " + how);
  return s;
}

// HUP. Returns only if the exec failed; the server is then as it was.
void reexec(const server& s) {
  // Everything the courier does is prepared here: between fork and its
  // exit it only writes and exits, which is safe whatever the parent was
  // doing when it forked.
  const std::string state = std::to_string(s.counter) + "\n";
  prefork::pipe_ends pipe = prefork::pipe();
  // Blocked from before the fork until the new image has its handlers: a
  // signal caught meanwhile would run our handler in the courier, and one
  // arriving during the exec would meet the default action (for HUP or
  // TERM: death). Blocked, it waits, and the mask crosses exec.
  prefork::blocked_signals held;
  std::optional<prefork::child> courier = prefork::fork();
  if (!courier) {
    pipe.read.reset();
    std::error_code ec;
    prefork::write_all(pipe.write.get(), state.data(), state.size(), ec);
    ::_exit(ec ? 1 : 0);
  }
  pipe.write.reset();  // the new image's end of file is the courier's exit
  ::setenv(courier_variable, std::to_string(courier->pid()).c_str(), 1);
  say("HUP: re-executing " + prefork::startup_argv()[0] + " with counter " + std::to_string(s.counter));
  try {
    prefork::exec_self({s.listener.get(), pipe.read.get()}, {"listener", "state"});
  } catch (const std::exception& e) {
    ::unsetenv(courier_variable);
    pipe.read.reset();  // a courier still writing gets EPIPE and ends
    std::string how = courier->wait().describe();
    say(std::string("re-exec failed (") + e.what() + "); still pid " + std::to_string(::getpid()) +
        ", counter " + std::to_string(s.counter) + "; courier " + how);
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string address = "127.0.0.1:7008";
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    if (flag != "--listen" || i + 1 == argc) {
      std::fprintf(stderr, "usage: prefork-reexec [--listen ADDR]\n");
      return 2;
    }
    address = argv[++i];
  }
  try {
    prefork::signal_pipe signals{SIGHUP, SIGTERM, SIGINT};
    // A previous image blocked every signal before its exec; ours are
    // installed now, so whatever arrived meanwhile may be delivered.
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);

    std::optional<server> s = take_over();
    if (!s) {
      s.emplace();
      s->listener = prefork::listen(address);
      // O_NONBLOCK belongs to the socket, not the descriptor: it crosses exec.
      s->listener.set_nonblocking(true);
      say("pid " + std::to_string(::getpid()) + " listening on " + prefork::local_address(s->listener.get()) +
          " (socket inode " + socket_inode(s->listener.get()) + "), counter 0");
    }
    for (;;) {
      pollfd polls[2] = {{signals.fd(), POLLIN, 0}, {s->listener.get(), POLLIN, 0}};
      if (::poll(polls, 2, -1) == -1 && errno != EINTR) prefork::throw_system_error("poll");
      // Signals before connections: a HUP that came with a queued
      // connection execs first, and the new image serves the connection.
      while (std::optional<int> sig = signals.next()) {
        if (*sig == SIGHUP) {
          reexec(*s);
          continue;
        }
        say(std::string(prefork::signal_name(*sig)) + ": exiting");
        return 0;
      }
      while (prefork::fd conn = prefork::accept(s->listener.get())) {
        std::string reply =
            "pid " + std::to_string(::getpid()) + " counter " + std::to_string(s->counter) + "\n";
        std::error_code ec;  // a client that left already is not our problem
        prefork::write_all(conn.get(), reply.data(), reply.size(), ec);
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "prefork-reexec: %s\n", e.what());
    return 1;
  }
}
