// prefork/run.hpp: prefork::run(), a program run to completion with its
// output captured: the everyday job of Python's subprocess.run.
//
// A thin layer over spawn, pipe and child: the child's stdin, stdout and
// stderr are pipes whose parent ends are non-blocking and served by one
// poll(2) loop, so input is written while both outputs are read and no
// amount of output on either stream can deadlock the two processes. The loop
// also watches the child's pidfd and the optional deadline; at the deadline
// the child gets SIGTERM, a grace period, then SIGKILL (its whole process
// group when it leads one). Writing input to a child that has stopped
// reading must not kill the caller with SIGPIPE: the signal is blocked in the
// calling thread around each write and a SIGPIPE raised by it is consumed.
// Stands on spawn, pipe2, fcntl, poll, read, write, pthread_sigmask,
// sigpending and sigtimedwait.
#pragma once

#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <prefork/error.hpp>
#include <prefork/fd.hpp>
#include <prefork/pipe.hpp>
#include <prefork/process.hpp>

namespace prefork {

struct run_options {
  spawn_options spawn;  // fds 0, 1 and 2 are run()'s; other mappings are kept
  std::string input;    // written to the child's stdin, which is then closed
  // Then SIGTERM, `grace`, SIGKILL; also bounds the wait for output that a
  // descendant keeps open after the child has exited.
  std::optional<std::chrono::milliseconds> timeout;
  std::chrono::milliseconds grace{1000};
  bool merge_stderr = false;          // stderr into out
  std::size_t max_output = 64 << 20;  // out and err together; beyond it the child is killed and run() throws
};

struct run_result {
  exit_status status;
  std::string out, err;
  bool timed_out = false;  // the deadline passed before the child had ended and closed its output
};

namespace detail {

// Blocks SIGPIPE in this thread while alive; a SIGPIPE that a write raised
// meanwhile is taken off the pending set before the mask is restored, unless
// one was pending before (that one belongs to someone else).
class sigpipe_guard {
 public:
  sigpipe_guard() noexcept {
    sigset_t pending;
    sigemptyset(&pending);
    ::sigpending(&pending);
    was_pending_ = sigismember(&pending, SIGPIPE) == 1;
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGPIPE);
    ::pthread_sigmask(SIG_BLOCK, &block, &saved_);
  }
  ~sigpipe_guard() {
    if (!was_pending_) {
      sigset_t pending;
      sigemptyset(&pending);
      ::sigpending(&pending);
      if (sigismember(&pending, SIGPIPE) == 1) {
        sigset_t pipe_only;
        sigemptyset(&pipe_only);
        sigaddset(&pipe_only, SIGPIPE);
        const timespec now{0, 0};
        while (::sigtimedwait(&pipe_only, nullptr, &now) == -1 && errno == EINTR) {
        }
      }
    }
    ::pthread_sigmask(SIG_SETMASK, &saved_, nullptr);
  }
  sigpipe_guard(const sigpipe_guard&) = delete;
  sigpipe_guard& operator=(const sigpipe_guard&) = delete;

 private:
  sigset_t saved_{};
  bool was_pending_ = false;
};

}  // namespace detail

// Runs argv (as spawn does) to completion: writes options.input to its
// stdin, captures stdout and stderr, and reaps it. Throws what spawn throws
// when the program cannot start, and std::runtime_error naming the limit
// when the output passes options.max_output (the child is killed and reaped
// first). Without a timeout, run() returns once the child has exited and its
// output is closed: a descendant that keeps stdout open keeps run() waiting.
inline run_result run(const std::vector<std::string>& argv, const run_options& options = {}) {
  using clock = std::chrono::steady_clock;
  const std::string program = argv.empty() ? std::string() : argv[0];
  pipe_ends in = pipe(), out = pipe();
  std::optional<pipe_ends> err;
  if (!options.merge_stderr) err = pipe();

  spawn_options so = options.spawn;
  std::vector<std::pair<int, int>> fds;
  for (auto mapping : so.fds)
    if (mapping.second > 2) fds.push_back(mapping);
  fds.emplace_back(in.read.get(), 0);
  fds.emplace_back(out.write.get(), 1);
  fds.emplace_back(err ? err->write.get() : out.write.get(), 2);
  so.fds = std::move(fds);
  const bool group = so.new_process_group || so.new_session;

  child process = spawn(argv, so);
  in.read.reset();
  out.write.reset();
  if (err) err->write.reset();
  // Only the parent's ends: a pipe's two ends are separate open files.
  in.write.set_nonblocking(true);
  out.read.set_nonblocking(true);
  if (err) err->read.set_nonblocking(true);

  run_result result{exit_status(0), {}, {}, false};
  std::string_view input = options.input;
  if (input.empty()) in.write.reset();
  fd* sources[2] = {&out.read, err ? &err->read : nullptr};
  std::string* sinks[2] = {&result.out, &result.err};

  enum class phase { running, terminating, killed } stage = phase::running;
  std::optional<clock::time_point> deadline;
  if (options.timeout) deadline = clock::now() + *options.timeout;
  auto stop_with = [&](int sig) {
    if (group) {
      process.kill_group(sig);
    } else {
      process.kill(sig);
    }
  };

  std::optional<exit_status> ended;
  char buf[65536];
  for (;;) {
    bool outputs_open = out.read || (err && err->read);
    if (!outputs_open && ended) break;
    if (ended && stage != phase::running) break;  // stopped: what a descendant still holds is not waited for

    pollfd polled[4];
    nfds_t count = 0;
    int input_at = -1, pidfd_at = -1, source_at[2] = {-1, -1};
    if (in.write) {
      input_at = static_cast<int>(count);
      polled[count++] = {in.write.get(), POLLOUT, 0};
    }
    for (int i = 0; i < 2; ++i)
      if (sources[i] && *sources[i]) {
        source_at[i] = static_cast<int>(count);
        polled[count++] = {sources[i]->get(), POLLIN, 0};
      }
    if (!ended && process.pidfd() != -1) {
      pidfd_at = static_cast<int>(count);
      polled[count++] = {process.pidfd(), POLLIN, 0};
    }
    int wait_ms = -1;
    if (deadline) {
      auto left = std::chrono::ceil<std::chrono::milliseconds>(*deadline - clock::now()).count();
      wait_ms = static_cast<int>(std::max<decltype(left)>(0, std::min<decltype(left)>(left, 1 << 30)));
    }
    // Kernels without pidfds (before 5.3): look at the child now and then.
    if (!ended && process.pidfd() == -1 && (wait_ms == -1 || wait_ms > 50)) wait_ms = 50;

    int ready = PREFORK_SYSCALL(poll)(polled, count, wait_ms);
    if (ready == -1 && errno != EINTR) throw_system_error("run " + program + ": poll");

    if (ready > 0 && input_at != -1 && polled[input_at].revents != 0) {
      detail::sigpipe_guard quiet;
      io_result wrote = write_some(in.write.get(), input.data(), input.size());
      if (wrote) {
        input.remove_prefix(wrote.bytes);
        if (input.empty()) in.write.reset();
      } else if (!wrote.would_block()) {
        in.write.reset();  // EPIPE: the child wants no more input, which is its business
      }
    }
    for (int i = 0; i < 2; ++i) {
      if (ready <= 0 || source_at[i] == -1 || polled[source_at[i]].revents == 0) continue;
      io_result got = read_some(sources[i]->get(), buf, sizeof buf);
      if (got.would_block()) continue;
      if (!got) throw std::system_error(got.error, std::generic_category(), "run " + program + ": read");
      if (got.bytes == 0) {
        sources[i]->reset();
        continue;
      }
      if (result.out.size() + result.err.size() + got.bytes > options.max_output) {
        if (group) process.kill_group(SIGKILL);
        process.kill(SIGKILL);
        process.wait();
        throw std::runtime_error("run " + program + ": output passed max_output (" +
                                 std::to_string(options.max_output) + " bytes); the child was killed");
      }
      sinks[i]->append(buf, got.bytes);
    }
    if (!ended && (pidfd_at == -1 || (ready > 0 && polled[pidfd_at].revents != 0)))
      ended = process.try_wait();

    if (deadline && clock::now() >= *deadline) {
      result.timed_out = true;
      if (ended) {
        stage = phase::killed;  // nothing left to signal; stop waiting for the output
      } else if (stage == phase::running) {
        stop_with(SIGTERM);
        stage = phase::terminating;
        deadline = clock::now() + options.grace;
      } else if (stage == phase::terminating) {
        stop_with(SIGKILL);
        stage = phase::killed;
        deadline.reset();
      }
    }
  }
  result.status = *ended;
  return result;
}

}  // namespace prefork
