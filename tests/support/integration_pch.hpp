// tests/support/integration_pch.hpp: what nearly every integration test
// includes, compiled once per build as a precompiled header and reused by
// every integration test executable (tests/CMakeLists.txt). It only saves
// time: the Meson build compiles the tests without it, so a test that
// forgets an include of its own still fails to build there.
#pragma once
#include <prefork.hpp>
#include "catch.hpp"
#include "helpers.hpp"
#include "leak_check.hpp"
