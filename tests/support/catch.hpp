// tests/support/catch.hpp: includes Catch2, v3 or v2, whichever the build found.
#pragma once
#if defined(PREFORK_CATCH2_V3)
#include <catch2/catch_all.hpp>
#else
#define CATCH_CONFIG_ENABLE_BENCHMARKING
#include <catch2/catch.hpp>
#endif
