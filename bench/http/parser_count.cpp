// bench/http/parser_count.cpp: a fixed amount of parsing, for callgrind.
//
//   parser_count CASE N      parse CASE's request N times, print a checksum
//
// CASE: minimal, browser, chunked, browser-bytewise (prefork's parser), and
// pico-minimal, pico-browser (picohttpparser on the same bytes; only when
// built with -DPREFORK_BENCH_PICO and linked with libh2o-evloop, see
// bench/http/pico.hpp).
//
// Wall-clock figures of the parser move with the machine's other load; an
// instruction count does not. bench/http/callgrind.py runs this under
// callgrind twice with different N and divides the difference in
// instructions by the difference in N, which leaves start-up out and gives
// the instructions per request, the same on every run. bench/run compiles
// it at -O2 (and again with -march=native); it is not part of the CMake build.
#include "http/pico.hpp"
#include "http/requests.hpp"
#include "httpd/http_parser.hpp"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

namespace {

using bench_requests::browser_get;
using bench_requests::chunked_post;
using bench_requests::minimal_get;

std::size_t parse_whole(httpd::request_parser& p, httpd::chunked_decoder& d, std::string& body,
                        std::string_view in) {
  p.reset();
  if (p.parse(in) != httpd::parse_result::done) std::abort();
  std::size_t n = p.header_length();
  if (p.get().chunked) {
    d.reset();
    body.clear();
    if (d.feed(in.substr(p.header_length()), body).result != httpd::chunk_progress::done) std::abort();
    n += body.size();
  }
  return n;
}

// The worst a client can do: one byte per read.
std::size_t parse_bytewise(httpd::request_parser& p, std::string_view in) {
  p.reset();
  auto r = httpd::parse_result::incomplete;
  for (std::size_t n = 1; r == httpd::parse_result::incomplete && n <= in.size(); ++n) r = p.parse(in.substr(0, n));
  if (r != httpd::parse_result::done) std::abort();
  return p.header_length();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: parser_count minimal|browser|chunked|browser-bytewise|pico-minimal|pico-browser N\n");
    return 2;
  }
  const std::string which = argv[1];
  const long n = std::atol(argv[2]);
  httpd::request_parser parser;
  httpd::chunked_decoder decoder;
  std::string body;
  std::size_t sum = 0;
#ifdef PREFORK_BENCH_PICO
  static bench_pico::parser pico;
  const auto pico_whole = [](const std::string& in) {
    const std::size_t r = pico.parse(in.data(), in.size());
    if (r == 0) std::abort();
    return r;
  };
#endif
  // The case is chosen once: comparing strings in the loop would be counted
  // as parsing.
  const char* const names[] = {"minimal", "browser", "chunked", "browser-bytewise", "pico-minimal", "pico-browser"};
  int kind = -1;
  for (int k = 0; k < 6; ++k)
    if (which == names[k]) kind = k;
#ifndef PREFORK_BENCH_PICO
  if (kind >= 4) kind = -1;
#endif
  if (kind < 0) {
    std::fprintf(stderr, "unknown case %s\n", which.c_str());
    return 2;
  }
  for (long i = 0; i < n; ++i) {
    switch (kind) {
      case 0: sum += parse_whole(parser, decoder, body, minimal_get); break;
      case 1: sum += parse_whole(parser, decoder, body, browser_get); break;
      case 2: sum += parse_whole(parser, decoder, body, chunked_post); break;
      case 3: sum += parse_bytewise(parser, browser_get); break;
#ifdef PREFORK_BENCH_PICO
      case 4: sum += pico_whole(minimal_get); break;
      case 5: sum += pico_whole(browser_get); break;
#endif
      default: break;
    }
  }
  std::printf("%zu\n", sum);
  return 0;
}
