// The main of every doctest unit-test executable: helper processes first.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include "helpers.hpp"

int main(int argc, char** argv) {
  int helper = prefork::test::run_helper_if_asked(argc, argv);
  if (helper >= 0) return helper;
  doctest::Context context(argc, argv);
  return context.run();
}
