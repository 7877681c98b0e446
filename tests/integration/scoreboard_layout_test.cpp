// An in-place upgrade hands the scoreboard's memfd to the new image, which
// maps it only if the previous image says it has the same layout (version
// and slot size in the handed-over state). One of another layout, or of an
// image too old to say, is not mapped: the new master starts a fresh
// scoreboard, with the counters handed over in PREFORK_UPGRADE_COUNTERS,
// and books the adopted workers in it. Here the previous image is played by
// the test: a state written into a pipe, a courier that has exited.
#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <optional>
#include <string>

#include <prefork/pool.hpp>
#include <prefork/shm.hpp>

#include "catch.hpp"
#include "helpers.hpp"
#include "leak_check.hpp"

namespace {

struct previous_image {
  prefork::pipe_ends wake = prefork::pipe();
  std::optional<prefork::child> courier;

  // Sets PREFORK_UPGRADE_STATE to a pipe holding `board_line` and the rest of
  // a state: the numbers are this process's, as after an exec.
  void hand_over(const std::string& board_line, const std::string& extra_lines = "") {
    prefork::pipe_ends state = prefork::pipe();
    std::string text = "prefork-handover 1\nupgrades 3\ngeneration 4\n" + board_line + "\nwake " +
                       std::to_string(wake.read.release()) + " " + std::to_string(wake.write.release()) +
                       "\n" + extra_lines + "end\nqueued-end\n";
    prefork::write_all(state.write.get(), text.data(), text.size());
    state.write.reset();
    courier = prefork::fork();
    if (!courier) ::_exit(0);
    ::setenv("PREFORK_UPGRADE_STATE",
             (std::to_string(state.read.release()) + "," + std::to_string(courier->pid())).c_str(), 1);
    ::setenv("PREFORK_UPGRADE_COUNTERS", "upgrades=3,reloads=2,restarts.crash=4,bogus=1,timeouts_killed=x",
             1);
  }

  // The new master waits for the courier itself (take_over).
  void reaped_by_master() {
    CHECK(::kill(courier->pid(), 0) == -1);
    courier->wait();  // ours only in name now: "status unknown"
  }
};

prefork::pool_config config() {
  prefork::pool_config c;
  c.workers = 2;
  c.listeners.push_back(prefork::listen("127.0.0.1:0"));
  return c;
}

void check_fresh(const prefork::master& m, std::size_t slots) {
  const prefork::scoreboard& b = m.scoreboard();
  CHECK(b.size() == slots);
  prefork::master_totals t = b.master();
  CHECK(t.upgrades == 3);
  CHECK(t.reloads == 2);
  CHECK(t.restarts[static_cast<std::size_t>(prefork::restart_cause::crash)] == 4);
  CHECK(t.timeouts_killed == 0);
  CHECK_FALSE(b.master_stopping());
  CHECK(std::getenv("PREFORK_UPGRADE_STATE") == nullptr);
  CHECK(std::getenv("PREFORK_UPGRADE_COUNTERS") == nullptr);
}

}  // namespace

TEST_CASE("in-place adoption: a scoreboard of an older image (no layout given) is not mapped",
          "[scoreboard][upgrade]") {
  prefork::test::leak_check leaks;
  {
    // An older image's board: 3 slots of something else (garbage to us).
    prefork::shared_array<unsigned char> old(3 * prefork::detail::scoreboard_slot_size);
    for (std::size_t i = 0; i < old.size(); ++i) old[i] = 0xab;
    previous_image prev;
    prev.hand_over("board " + std::to_string(::dup(old.memfd())));
    prefork::master m(config());
    check_fresh(m, 2 * 2 + 8);
    for (std::size_t i = 0; i < m.scoreboard().size(); ++i)
      CHECK(m.scoreboard().slot(i).state == prefork::worker_state::free);
    prev.reaped_by_master();
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("in-place adoption: a scoreboard of another layout version is not mapped; its workers are booked",
          "[scoreboard][upgrade]") {
  prefork::test::leak_check leaks;
  {
    prefork::shared_array<unsigned char> old(5 * 640);
    previous_image prev;
    // One adopted worker, in slot 20 of the old board (beyond our 12).
    prefork::pipe_ends control = prefork::pipe();
    const pid_t worker_pid = ::getpid();  // any live PID: the master only books it here
    prev.hand_over("board " + std::to_string(::dup(old.memfd())) + " 1 640",
                   "worker " + std::to_string(worker_pid) + " 1 3 20 " +
                       std::to_string(control.write.release()) + " 10000 500 0\n");
    prefork::master m(config());
    check_fresh(m, 21);
    prefork::worker_info w = m.scoreboard().slot(20);
    CHECK(w.pid == worker_pid);
    CHECK(w.index == 1);
    CHECK(w.generation == 3);
    CHECK(w.state == prefork::worker_state::idle);
    prev.reaped_by_master();
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("in-place adoption: a scoreboard of this layout is mapped, counters and all",
          "[scoreboard][upgrade]") {
  prefork::test::leak_check leaks;
  {
    prefork::scoreboard old(5);
    prefork::detail::bump(old.master_cells().upgrades, 3);
    prefork::detail::bump(old.master_cells().reloads, 2);
    old.count_restart(prefork::restart_cause::crash, 4);
    previous_image prev;
    prev.hand_over("board " + std::to_string(::dup(old.memfd())) + " " +
                   std::to_string(prefork::detail::scoreboard_layout) + " " +
                   std::to_string(prefork::detail::scoreboard_slot_size));
    prefork::master m(config());
    check_fresh(m, 5);  // the counters once, from the board (not added again)
    prefork::detail::bump(m.scoreboard().master_cells().reloads);
    CHECK(old.master().reloads == 3);  // the same memory
    prev.reaped_by_master();
  }
  CHECK(leaks.problems() == "");
}
