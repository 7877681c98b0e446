# Finds doctest and Catch2 (v3, else v2) for prefork's tests and benchmarks.
# When one is not installed and PREFORK_FETCH_TEST_DEPS is ON, it is fetched
# with FetchContent instead (off by default: it needs the network; set
# FETCHCONTENT_SOURCE_DIR_DOCTEST / _CATCH2 to use a local checkout).
# Sets PREFORK_CATCH2_V3 when the Catch2 in use is v3.
include_guard(GLOBAL)
option(PREFORK_FETCH_TEST_DEPS "Fetch doctest and Catch2 when they are not installed" OFF)
set(PREFORK_DOCTEST_GIT "https://github.com/doctest/doctest.git" CACHE STRING "doctest for PREFORK_FETCH_TEST_DEPS")
set(PREFORK_DOCTEST_TAG "v2.4.11" CACHE STRING "")
set(PREFORK_CATCH2_GIT "https://github.com/catchorg/Catch2.git" CACHE STRING "Catch2 for PREFORK_FETCH_TEST_DEPS")
set(PREFORK_CATCH2_TAG "v3.5.4" CACHE STRING "")

find_package(doctest QUIET)
if(NOT TARGET doctest::doctest)
  if(NOT PREFORK_FETCH_TEST_DEPS)
    message(FATAL_ERROR "prefork's tests need doctest: install it (Debian: doctest-dev), "
                        "or configure with -DPREFORK_FETCH_TEST_DEPS=ON, or -DPREFORK_BUILD_TESTS=OFF")
  endif()
  include(FetchContent)
  FetchContent_Declare(doctest GIT_REPOSITORY "${PREFORK_DOCTEST_GIT}" GIT_TAG "${PREFORK_DOCTEST_TAG}")
  FetchContent_MakeAvailable(doctest)
endif()

find_package(Catch2 QUIET)
if(TARGET Catch2::Catch2)
  if(Catch2_VERSION VERSION_GREATER_EQUAL 3)
    set(PREFORK_CATCH2_V3 ON)
  endif()
else()
  if(NOT PREFORK_FETCH_TEST_DEPS)
    message(FATAL_ERROR "prefork's tests need Catch2 (v2 or v3): install it (Debian: catch2), "
                        "or configure with -DPREFORK_FETCH_TEST_DEPS=ON, or -DPREFORK_BUILD_TESTS=OFF")
  endif()
  include(FetchContent)
  FetchContent_Declare(catch2 GIT_REPOSITORY "${PREFORK_CATCH2_GIT}" GIT_TAG "${PREFORK_CATCH2_TAG}")
  FetchContent_MakeAvailable(catch2)
  if(EXISTS "${catch2_SOURCE_DIR}/src/catch2/catch_all.hpp")
    set(PREFORK_CATCH2_V3 ON)
  endif()
endif()
