// The main of every Catch2 integration-test executable (Catch2 v2 or v3):
// helper processes first.
#define CATCH_CONFIG_RUNNER
#include "catch.hpp"
#include "helpers.hpp"

int main(int argc, char** argv) {
  int helper = prefork::test::run_helper_if_asked(argc, argv);
  if (helper >= 0) return helper;
  return Catch::Session().run(argc, argv);
}
