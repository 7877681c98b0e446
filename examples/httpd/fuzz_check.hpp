// fuzz_check.hpp: FUZZ_CHECK, the invariant check of the libFuzzer targets
// (fuzz_parser.cpp, fuzz_chunked.cpp, fuzz_proxy.cpp; scripts/fuzz builds
// and runs them).
//
// Not assert(): a check must hold in any build the fuzzer is compiled in.
// abort() is what libFuzzer reports as a crash, keeping the input that did
// it; the line before it says which check failed.
#pragma once

#include <cstdio>
#include <cstdlib>

#define FUZZ_CHECK(cond)                                                            \
  do {                                                                              \
    if (!(cond)) {                                                                  \
      std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                 \
    }                                                                               \
  } while (0)
