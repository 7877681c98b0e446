// spawn_setup.hpp in one process: how env_set and env_unset edit a given or
// inherited environment, what they refuse, and the words of a failed step.
#include <doctest/doctest.h>

#include <prefork/spawn.hpp>

#include <stdlib.h>

#include <optional>
#include <string>
#include <vector>

using env = std::vector<std::string>;

namespace {

env edit(std::optional<env> base, const env& set, const env& unset) {
  return prefork::detail::edited_environment(base, set, unset, "prog");
}

}  // namespace

TEST_CASE("env_set replaces in place and appends what is new, in its order") {
  CHECK(edit(env{"A=1", "B=2", "C=3"}, {"B=two", "Z=26", "Y=25"}, {}) ==
        env{"A=1", "B=two", "C=3", "Z=26", "Y=25"});
}

TEST_CASE("env_set: the last value given for a name wins") {
  CHECK(edit(env{"A=1"}, {"A=2", "B=1", "A=3", "B=2"}, {}) == env{"A=3", "B=2"});
}

TEST_CASE("env_unset removes names; env_set is applied on top of it") {
  CHECK(edit(env{"A=1", "B=2", "C=3"}, {"C=three"}, {"A", "C", "MISSING"}) == env{"B=2", "C=three"});
}

TEST_CASE("a name is matched whole: A does not unset AB, and values may hold '='") {
  CHECK(edit(env{"AB=1", "A=2", "X=a=b"}, {"X=c=d"}, {"A"}) == env{"AB=1", "X=c=d"});
}

TEST_CASE("a duplicate name in the base keeps its first entry, the one getenv sees") {
  CHECK(edit(env{"A=first", "A=second", "B=1"}, {}, {"B"}) == env{"A=first"});
}

TEST_CASE("without a base, the process's own environment is edited") {
  ::setenv("PREFORK_UNIT_EDIT", "mine", 1);
  env out = edit(std::nullopt, {"PREFORK_UNIT_ADDED=1"}, {"PREFORK_UNIT_EDIT"});
  ::unsetenv("PREFORK_UNIT_EDIT");
  CHECK(out.back() == "PREFORK_UNIT_ADDED=1");
  for (const auto& e : out) CHECK(e.rfind("PREFORK_UNIT_EDIT=", 0) != 0);
  CHECK(out.size() > 1);
}

TEST_CASE("malformed entries are refused, naming the program and the entry") {
  CHECK_THROWS_WITH_AS(edit(env{}, {"NOVALUE"}, {}), "spawn prog: env_set entry 'NOVALUE' is not NAME=value",
                       std::invalid_argument);
  CHECK_THROWS_AS(edit(env{}, {"=value"}, {}), std::invalid_argument);
  CHECK_THROWS_AS(edit(env{}, {std::string("A=b\0c", 5)}, {}), std::invalid_argument);
  CHECK_THROWS_WITH_AS(edit(env{}, {}, {"A=B"}), "spawn prog: env_unset name 'A=B' is empty or holds '='",
                       std::invalid_argument);
  CHECK_THROWS_AS(edit(env{}, {}, {""}), std::invalid_argument);
}

TEST_CASE("a parent_death_signal that is not a signal is refused before the clone") {
  prefork::spawn_options options;
  options.parent_death_signal = NSIG;
  CHECK_THROWS_AS(prefork::spawn({"true"}, options), std::invalid_argument);
  options.parent_death_signal = -1;
  CHECK_THROWS_AS(prefork::spawn({"true"}, options), std::invalid_argument);
}

TEST_CASE("a failed setup step is named with its argument") {
  using namespace prefork::detail;
  std::vector<std::pair<int, rlimit>> limits{{RLIMIT_CORE, {0, 0}}, {RLIMIT_NOFILE, {RLIM_INFINITY, 5}}};
  CHECK(setup_failure(setup_rlimit | (1 << 8), limits, {}, {}, 0) ==
        "setrlimit " + std::to_string(RLIMIT_NOFILE) + " unlimited/5");
  CHECK(setup_failure(setup_groups, {}, 1000, std::nullopt, 0) == "setgroups {}");
  CHECK(setup_failure(setup_groups, {}, 1000, 100, 0) == "setgroups {100}");
  CHECK(setup_failure(setup_gid, {}, 1000, 100, 0) == "setgid 100");
  CHECK(setup_failure(setup_uid, {}, 1000, 100, 0) == "setuid 1000");
  CHECK(setup_failure(setup_pdeath, {}, {}, {}, 99) == "prctl PR_SET_PDEATHSIG 99");
  CHECK(setup_failure(setup_terminal, {}, {}, {}, 0) == "ioctl TIOCSCTTY on fd 0");
}
