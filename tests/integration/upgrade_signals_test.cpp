// Signals that meet an upgrade (USR2) half-way, with real processes: the
// master is this test binary run as a helper, so its startup_argv() runs the
// helper again. Each test puts a signal into one phase of the table at the
// top of upgrade.hpp and checks what it did:
//   in_place, exec'ing: a TERM, QUIT, HUP or TTIN queued behind USR2 is
//     handled by the new image (it was lost with the signal pipe);
//   fork_exec, starting: an operator's QUIT is not the new master's
//     hand-over, it stops both masters; TERM and INT stop the new master too
//     (it was left running, an orphan);
//   fork_exec, rolling_back: an operator's QUIT stops the master (it was
//     ignored).
// To hold signals in the pipe behind USR2, the master is either stopped
// (SIGSTOP: the kernel then delivers what is pending lowest number first,
// so USR2 before TERM), or held inside its USR1 hook on a FIFO (the gate)
// while the test sends signals one by one, each taken by the master's
// kernel before the next.
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include <prefork/file.hpp>
#include <prefork/pool.hpp>
#include <prefork/process.hpp>

#include "catch.hpp"
#include "helpers.hpp"
#include "leak_check.hpp"
#include "upgrade_harness.hpp"

using namespace upgrade_test;
namespace fs = std::filesystem;

namespace {

// The master's USR1 hook: "gate closed", then wait for a byte on the FIFO.
// It waits in poll(2), which ThreadSanitizer's runtime counts as blocking:
// a signal arriving there runs its handler at once, as without TSan, rather
// than being deferred, merged with another of its kind and reordered.
void hold_at_gate(const std::string& gate) {
  // Read and write: open does not wait for a writer, and poll never sees
  // a hang-up, only our byte.
  prefork::fd f(::open(gate.c_str(), O_RDWR | O_CLOEXEC));
  if (!f) return say("gate: cannot open " + gate);
  say("gate closed " + std::to_string(::getpid()));
  pollfd p{f.get(), POLLIN, 0};
  while (::poll(&p, 1, -1) != 1) {
  }
  char byte;
  [[maybe_unused]] ssize_t n = ::read(f.get(), &byte, 1);
  say("gate open");
}

}  // namespace

// The master: MODE WORKERS GRACEFUL_MS UPGRADE_TIMEOUT_MS PID_FILE GATE. The
// listener comes in PREFORK_FDS. A file named by UPGRADE_TEST_SWITCH holding
// "hang" makes the next boot's workers hang in after_fork (never ready).
PREFORK_HELPER(upgrade_signals_master) {
  if (argc != 6) return 2;
  const std::string sw = boot_switch();
  say("boot " + std::to_string(::getpid()));
  try {
    prefork::pool_config config = helper_pool_config(argv, sw == "hang");
    const std::string gate = argv[5];
    const pid_t master = ::getpid();
    config.on_reopen_logs = [gate, master] {
      if (::getpid() == master) hold_at_gate(gate);
    };
    prefork::master m(std::move(config));
    return m.run(echo);
  } catch (const std::exception& e) {
    say(std::string("master failed: ") + e.what());
    return 1;
  }
}

namespace {

bool has_bit(const std::string& mask_line, int sig) {
  if (mask_line.empty()) return false;  // gone
  unsigned long long mask = std::stoull(mask_line.substr(mask_line.find(':') + 1), nullptr, 16);
  return (mask >> (sig - 1)) & 1U;
}

// Spins until `sig` is no longer pending for `pid`: its kernel took it and
// ran the handler (which writes the record before anything else runs).
void wait_delivered(pid_t pid, int sig) {
  auto deadline = clock::now() + 20s;
  while (has_bit(prefork::test::status_line(pid, "ShdPnd:"), sig) ||
         has_bit(prefork::test::status_line(pid, "SigPnd:"), sig)) {
    if (clock::now() > deadline) FAIL(prefork::signal_name(sig) << " still pending for pid " << pid);
    ::sched_yield();
  }
}

// A master under test (helper_master), with a FIFO in its directory, the
// gate its USR1 hook waits on.
class master_under_test : public helper_master {
 public:
  master_under_test(const std::string& mode, unsigned workers, long graceful_ms = 2000,
                    long upgrade_timeout_ms = 20000)
      : helper_master("prefork-upgrade-signals") {
    gate_path = dir / "gate";
    REQUIRE(::mkfifo(gate_path.c_str(), 0600) == 0);
    start(prefork::test::helper_argv(
              "upgrade_signals_master",
              {mode, std::to_string(workers), std::to_string(graceful_ms), std::to_string(upgrade_timeout_ms),
               pid_path.string(), gate_path.string()}),
          workers);
  }

  std::string prefix() const { return "prefork[" + std::to_string(master.pid()) + "]: "; }

  // USR1 makes the master wait in its hook; returns once it does.
  void close_gate() {
    signal(SIGUSR1);
    log.wait_for("gate closed " + std::to_string(master.pid()));
  }
  // Sends each signal once the previous one reached the master's pipe.
  void send_one_by_one(std::initializer_list<int> sigs) {
    for (int sig : sigs) {
      signal(sig);
      wait_delivered(master.pid(), sig);
    }
  }
  void open_gate() {
    prefork::fd w(::open(gate_path.c_str(), O_WRONLY | O_CLOEXEC));
    REQUIRE(w);
    prefork::write_all(w.get(), "x", 1);
  }

  // The master's exit (we reap it), its status, and that nothing of it is
  // left: no child of ours (the test is a subreaper: an orphaned new master
  // or worker would be ours), no pid file.
  void check_ends_clean() {
    std::optional<prefork::exit_status> how = master.wait_for(20s);
    if (!how) FAIL("the master did not exit; log:\n" << log.transcript());
    CHECK(how->describe() == "exited 0");
    CHECK(children_of(::getpid()).empty());
    CHECK(children_of(::getpid(), kids::zombies).empty());
    CHECK(!fs::exists(pid_path));
    CHECK(!fs::exists(oldbin_path));
  }

  fs::path gate_path;
};

// Waits until `pid` is stopped (SIGSTOP taken).
void wait_stopped(pid_t pid) {
  auto deadline = clock::now() + 20s;
  while (prefork::test::state_of(pid) != 'T') {
    if (clock::now() > deadline) FAIL("pid " << pid << " did not stop");
    ::sched_yield();
  }
}

}  // namespace

// Each test waits first for what the old code never did (in the words the
// log always used), then checks the new lines that explain it.

TEST_CASE("in_place: TERM right after USR2 (master stopped, then continued) stops the new image",
          "[upgrade][in_place][signals]") {
  prefork::test::leak_check leaks;
  {
    master_under_test m("in_place", 2);
    m.signal(SIGSTOP);
    wait_stopped(m.pid());
    m.signal(SIGUSR2);
    m.signal(SIGTERM);
    m.signal(SIGCONT);  // USR2 (12) is delivered before TERM (15): both in the pipe, in that order
    m.log.wait_for(m.prefix() + "master re-executed in place (upgrade 1)");
    m.log.wait_for(m.prefix() + "received SIGTERM: quick stop");
    m.check_ends_clean();
    CHECK(m.log.count(m.prefix() + "1 signals that came after SIGUSR2 are handled now: SIGTERM") == 1);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("in_place: QUIT queued behind USR2 is a graceful stop of the new image",
          "[upgrade][in_place][signals]") {
  prefork::test::leak_check leaks;
  {
    master_under_test m("in_place", 2);
    m.close_gate();
    m.send_one_by_one({SIGUSR2, SIGQUIT});
    m.open_gate();
    m.log.wait_for(m.prefix() + "master re-executed in place (upgrade 1)");
    m.log.wait_for(m.prefix() + "received SIGQUIT: graceful stop");
    m.check_ends_clean();
    CHECK(m.log.count("; handing over the signals queued since: SIGQUIT") == 1);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("in_place: HUP, TTIN and TTOU queued behind USR2 are each handled by the new image, in order",
          "[upgrade][in_place][signals]") {
  prefork::test::leak_check leaks;
  {
    master_under_test m("in_place", 1);
    m.close_gate();
    // Distinct signals: ThreadSanitizer's runtime defers handlers and merges
    // a signal that comes again before it ran the first.
    m.send_one_by_one({SIGUSR2, SIGHUP, SIGTTIN, SIGTTOU});
    m.open_gate();
    m.log.wait_for(m.prefix() + "master re-executed in place (upgrade 1)");
    // Handled by the new image: its generation is 2, the reload makes 3.
    m.log.wait_for(m.prefix() + "received SIGHUP: reloaded; replacing 1 workers with generation 3");
    m.log.wait_for(m.prefix() + "received SIGTTIN: now 2 workers");
    m.log.wait_for(m.prefix() + "received SIGTTOU: now 1 workers");
    m.log.wait_for(m.prefix() + "upgrade 1 complete: generation 3 ready (1 workers)");
    m.signal(SIGQUIT);
    m.check_ends_clean();
    CHECK(m.log.count(m.prefix() +
                      "3 signals that came after SIGUSR2 are handled now: SIGHUP, SIGTTIN, SIGTTOU") == 1);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("fork_exec: an operator's QUIT while the new master starts stops both masters, gracefully",
          "[upgrade][fork_exec][signals]") {
  prefork::test::leak_check leaks;
  {
    master_under_test m("fork_exec", 1, 500);
    m.set_switch("hang");  // the new master's workers never get ready: it stays "starting"
    m.signal(SIGUSR2);
    const pid_t next = number_after(m.log.wait_for("upgrading: started new master pid "), "pid ");
    const std::string n = "prefork[" + std::to_string(next) + "]: ";
    const std::string o = m.prefix();
    m.log.wait_for(n + "master started");
    m.signal(SIGQUIT);  // from us, not from the new master
    m.log.wait_for(o + "received SIGQUIT: graceful stop");
    m.log.wait_for(n + "received SIGQUIT: graceful stop");
    m.log.wait_for(n + "stop complete");
    m.log.wait_for(o + "stop complete");
    m.check_ends_clean();  // neither master, nor any worker, nor a pid file is left
    CHECK(m.log.count("handing over") == 0);
    CHECK(m.log.count(o + "received SIGQUIT from pid " + std::to_string(::getpid()) +
                      ", not from the new master (pid " + std::to_string(next) +
                      "): a stop, not a hand-over") == 1);
    CHECK(m.log.count(o + "stopping the new master (pid " + std::to_string(next) + ") too: SIGQUIT") == 1);
    CHECK(m.log.count(o + "new master (pid " + std::to_string(next) +
                      ") exited 0, stopped with this master; pid file restored") == 1);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("fork_exec: TERM or INT while the new master starts stops it too, leaving no orphan",
          "[upgrade][fork_exec][signals]") {
  prefork::test::leak_check leaks;
  for (int sig : {SIGTERM, SIGINT}) {
    DYNAMIC_SECTION(prefork::signal_name(sig)) {
      master_under_test m("fork_exec", 1, 500);
      m.set_switch("hang");
      m.signal(SIGUSR2);
      const pid_t next = number_after(m.log.wait_for("upgrading: started new master pid "), "pid ");
      const std::string n = "prefork[" + std::to_string(next) + "]: ";
      const std::string o = m.prefix();
      m.log.wait_for(n + "master started");
      m.log.wait_for(n + "worker 0 (pid ");  // spawned: it has a worker to stop
      m.signal(sig);
      m.log.wait_for(o + "received " + std::string(prefork::signal_name(sig)) + ": quick stop");
      // TERM, not KILL: the new master stops its own worker and its pid file goes.
      m.log.wait_for(n + "received SIGTERM: quick stop, SIGTERM to 1 workers");
      m.log.wait_for(n + "stop complete");
      m.log.wait_for(o + "stop complete");
      m.check_ends_clean();
      CHECK(m.log.count(o + "stopping the new master (pid " + std::to_string(next) + ") too: SIGTERM") == 1);
      CHECK(m.log.count(o + "new master (pid " + std::to_string(next) +
                        ") exited 0, stopped with this master") == 1);
    }
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("fork_exec: an operator's QUIT during a rollback stops the master instead of being ignored",
          "[upgrade][fork_exec][rollback][signals]") {
  prefork::test::leak_check leaks;
  {
    // The new master's workers hang, so its graceful stop lasts its whole
    // graceful_timeout (3 s): the rollback is still on when our QUIT comes.
    master_under_test m("fork_exec", 1, 3000, 1000);
    m.set_switch("hang");
    m.signal(SIGUSR2);
    const pid_t next = number_after(m.log.wait_for("upgrading: started new master pid "), "pid ");
    const std::string n = "prefork[" + std::to_string(next) + "]: ";
    const std::string o = m.prefix();
    m.log.wait_for(o + "new master (pid " + std::to_string(next) + ") not ready within upgrade_timeout");
    m.log.wait_for(n + "received SIGQUIT: graceful stop");
    m.signal(SIGQUIT);
    m.log.wait_for(o + "received SIGQUIT: graceful stop");
    m.log.wait_for(n + "stop complete");
    m.log.wait_for(o + "stop complete");
    m.check_ends_clean();
    // The QUIT came while the new master still ran: the rollback phase.
    CHECK(m.log.count(o + "received SIGQUIT from pid " + std::to_string(::getpid())) == 1);
    CHECK(m.log.count(o + "the new master (pid " + std::to_string(next) + ") is stopping already") == 1);
    CHECK(m.log.count(o + "new master (pid " + std::to_string(next) +
                      ") exited 0, stopped with this master") == 1);
  }
  CHECK(leaks.problems() == "");
}
