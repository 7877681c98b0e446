// version.hpp is the one place the version lives (CMake, Meson and prefork.pc
// read it; tests/consumer/run checks they agree): its parts and its string
// must say the same.
#include <doctest/doctest.h>

#include <prefork/version.hpp>

#include <string>

TEST_CASE("PREFORK_VERSION_STRING is MAJOR.MINOR.PATCH") {
  CHECK(std::string(PREFORK_VERSION_STRING) == std::to_string(PREFORK_VERSION_MAJOR) + "." +
                                                   std::to_string(PREFORK_VERSION_MINOR) + "." +
                                                   std::to_string(PREFORK_VERSION_PATCH));
}
