// bench/http/pico.hpp: picohttpparser, the reference for a fast HTTP/1.1
// request parser, as Debian ships it inside h2o's library (package
// libh2o-evloop0.13, which exports phr_parse_request). Only its prototype is
// declared here, from its documented interface; nothing of it is in this
// repository. Built in when PREFORK_BENCH_PICO is defined, which
// bench/CMakeLists.txt and bench/run do when they find the library.
#pragma once

#include <cstddef>

#ifdef PREFORK_BENCH_PICO
extern "C" {
struct phr_header {
  const char* name;
  std::size_t name_len;
  const char* value;
  std::size_t value_len;
};
// Returns the head's length, -1 on a parse error, -2 when incomplete.
int phr_parse_request(const char* buf, std::size_t len, const char** method, std::size_t* method_len,
                      const char** path, std::size_t* path_len, int* minor_version, phr_header* headers,
                      std::size_t* num_headers, std::size_t last_len);
}

namespace bench_pico {

// One request parsed as h2o does it: up to 100 fields (prefork's limit too).
struct parser {
  phr_header headers[100];
  std::size_t parse(const char* p, std::size_t n) {
    const char *method = nullptr, *path = nullptr;
    std::size_t method_len = 0, path_len = 0, num_headers = sizeof headers / sizeof headers[0];
    int minor = 0;
    const int r = phr_parse_request(p, n, &method, &method_len, &path, &path_len, &minor, headers, &num_headers, 0);
    return r > 0 ? static_cast<std::size_t>(r) + num_headers : 0;
  }
};

}  // namespace bench_pico
#endif
