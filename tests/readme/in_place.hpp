// tests/readme/in_place.hpp: included (-include) before the README's
// program in its readme_taste_in_place build, so the very same text runs
// with upgrade_mode::in_place: its prefork::pool_config becomes this one,
// which differs only in that default. The README's own #include of
// <prefork.hpp> is then a no-op.
#pragma once

#include <prefork.hpp>

namespace prefork {

struct readme_in_place_config : pool_config {
  readme_in_place_config() { upgrade = upgrade_mode::in_place; }
};

}  // namespace prefork

#define pool_config readme_in_place_config
