// exit_status::unknown(), for a child someone else reaped, and signal_name()
// reached through signal.hpp alone (this file includes no other prefork
// header before it).
#include <prefork/signal.hpp>

#include <doctest/doctest.h>

#include <signal.h>

#include <prefork/process.hpp>

TEST_CASE("signal_name is offered by signal.hpp") {
  CHECK(prefork::signal_name(SIGTERM) == "SIGTERM");
  CHECK(prefork::signal_name(SIGRTMIN + 2) == "SIGRTMIN+2");
  CHECK(prefork::signal_name(99) == "signal 99");
}

TEST_CASE("exit_status::unknown is an ending nobody can describe but as unknown") {
  prefork::exit_status s = prefork::exit_status::unknown();
  CHECK(!s.known());
  CHECK(!s.exited());
  CHECK(!s.signaled());
  CHECK(!s.success());
  CHECK(!s.core_dumped());
  CHECK(s.code() == -1);
  CHECK(s.signal() == 0);
  CHECK(s.wait_status() == -1);
  CHECK(s.describe() == "ended, status unknown (reaped elsewhere: SIGCHLD ignored, or a waitpid(-1))");
  CHECK(s == prefork::exit_status::unknown());
  CHECK(s != prefork::exit_status(0));  // not "exited 0"
  CHECK(prefork::exit_status(0).known());
  CHECK(prefork::exit_status(0).success());
  CHECK(prefork::exit_status(SIGKILL).known());
}
