// Benchmarks of prefork-httpd's request parser and chunked decoder
// (examples/httpd/http_parser.hpp): a minimal GET, a browser GET with 19
// fields in 1.2 KiB, a POST with a chunked body, and a head fed one byte at a
// time; and the two GETs side by side with picohttpparser when the build
// found Debian's libh2o-evloop (bench/http/pico.hpp). Figures only; never a
// test of speed.
//   bench_http_parser                      Catch2 BENCHMARK statistics
//   bench_http_parser '[report]'           requests/s and bytes/s per CPU second, as a table
//   bench_http_parser '[compare]'          ns per request, prefork against picohttpparser:
//                                          interleaved rounds (PREFORK_BENCH_ROUNDS, default 9), medians
#include "catch.hpp"

#include "http/pico.hpp"
#include "http/requests.hpp"
#include "httpd/http_parser.hpp"

#include <time.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#ifndef PREFORK_BENCH_BUILD
#define PREFORK_BENCH_BUILD "default flags"
#endif

namespace {

using bench_requests::browser_get;
using bench_requests::chunked_post;
using bench_requests::minimal_get;

// One request as a server handles it: parse the head, decode any chunked body.
struct handler {
  httpd::request_parser parser;
  httpd::chunked_decoder decoder;
  std::string body;

  std::size_t whole(const std::string& in) {
    parser.reset();
    if (parser.parse(in) != httpd::parse_result::done) throw std::runtime_error("bench input does not parse");
    std::size_t n = parser.header_length() + parser.get().fields.size();
    if (parser.get().chunked) {
      decoder.reset();
      body.clear();
      auto r = decoder.feed(std::string_view(in).substr(parser.header_length()), body);
      if (r.result != httpd::chunk_progress::done) throw std::runtime_error("bench body does not decode");
      n += body.size();
    }
    return n;
  }

  // The worst split: a client sending one byte per packet.
  std::size_t bytewise(const std::string& in) {
    parser.reset();
    httpd::parse_result r = httpd::parse_result::incomplete;
    for (std::size_t n = 1; r == httpd::parse_result::incomplete && n <= in.size(); ++n)
      r = parser.parse(std::string_view(in.data(), n));
    if (r != httpd::parse_result::done) throw std::runtime_error("bench input does not parse");
    return parser.header_length();
  }
};

// CPU time of this thread, not wall time: on a shared machine (CI, a busy
// laptop) wall time measures the neighbours.
double cpu_seconds() {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

}  // namespace

TEST_CASE("request parser", "[bench]") {
  handler h;
  BENCHMARK("minimal GET (" + std::to_string(minimal_get.size()) + " B)") { return h.whole(minimal_get); };
  BENCHMARK("browser GET (" + std::to_string(browser_get.size()) + " B)") { return h.whole(browser_get); };
  BENCHMARK("chunked POST (" + std::to_string(chunked_post.size()) + " B)") { return h.whole(chunked_post); };
  BENCHMARK("browser GET, one byte at a time") { return h.bytewise(browser_get); };
  BENCHMARK("baseline: find_header_end only") { return httpd::find_header_end(browser_get); };
}

TEST_CASE("request parser throughput", "[.report][report]") {
  handler h;
  struct row {
    const char* name;
    const std::string* input;
    bool bytewise;
  };
  const row rows[] = {
      {"minimal GET", &minimal_get, false},
      {"browser GET", &browser_get, false},
      {"chunked POST", &chunked_post, false},
      {"minimal GET, byte at a time", &minimal_get, true},
      {"browser GET, byte at a time", &browser_get, true},
  };
  std::printf("\n%-30s %8s %14s %12s %10s\n", "case", "bytes", "requests/s", "MB/s", "ns/req");
  std::size_t sink = 0;
  for (const row& r : rows) {
    // Enough iterations for about 0.3 s per row, after a warm-up.
    std::size_t iterations = 1000;
    double seconds = 0;
    while (true) {
      const double start = cpu_seconds();
      for (std::size_t i = 0; i < iterations; ++i) sink += r.bytewise ? h.bytewise(*r.input) : h.whole(*r.input);
      seconds = cpu_seconds() - start;
      if (seconds > 0.3) break;
      iterations *= seconds < 0.03 ? 10 : 2;
    }
    const double per_second = static_cast<double>(iterations) / seconds;
    std::printf("%-30s %8zu %14.0f %12.1f %10.1f\n", r.name, r.input->size(), per_second,
                per_second * static_cast<double>(r.input->size()) / 1e6, 1e9 / per_second);
  }
  std::printf("(checksum %zu)\n", sink);
  CHECK(sink > 0);
}

namespace {

// ns per call of f, on CPU time, over about `budget` CPU seconds after a
// calibration; f returns something to keep the work from being optimised out.
double ns_per_call(const std::function<std::size_t()>& f, double budget, std::size_t& sink) {
  std::size_t iterations = 1000;
  while (true) {
    const double start = cpu_seconds();
    for (std::size_t i = 0; i < iterations; ++i) sink += f();
    const double seconds = cpu_seconds() - start;
    if (seconds >= budget) return seconds * 1e9 / static_cast<double>(iterations);
    iterations = seconds < budget / 20 ? iterations * 10
                                        : static_cast<std::size_t>(static_cast<double>(iterations) * budget * 1.1 / seconds);
  }
}

}  // namespace

TEST_CASE("prefork's parser against picohttpparser", "[.compare][compare]") {
  handler h;
  struct contender {
    std::string request, parser;
    std::function<std::size_t()> run;
    std::vector<double> ns;
  };
  std::vector<contender> all;
  for (const std::string* in : {&minimal_get, &browser_get}) {
    const std::string name = in == &minimal_get ? "minimal GET" : "browser GET";
    all.push_back({name, "prefork", [&h, in] { return h.whole(*in); }, {}});
#ifdef PREFORK_BENCH_PICO
    all.push_back({name, "picohttpparser", [in] {
                     static bench_pico::parser pico;
                     const std::size_t r = pico.parse(in->data(), in->size());
                     if (r == 0) throw std::runtime_error("picohttpparser refuses a bench input");
                     return r;
                   },
                   {}});
#endif
  }
  const char* env = std::getenv("PREFORK_BENCH_ROUNDS");
  const int rounds = env != nullptr && std::atoi(env) > 0 ? std::atoi(env) : 9;
  std::size_t sink = 0;
  // Rounds interleave the contenders, starting with a different one each
  // time, so a slow spell of the machine falls on all of them alike.
  for (int r = 0; r < rounds; ++r)
    for (std::size_t k = 0; k < all.size(); ++k) {
      contender& c = all[(k + static_cast<std::size_t>(r)) % all.size()];
      c.ns.push_back(ns_per_call(c.run, 0.05, sink));
    }
  std::printf("\nbuild: %s; %d interleaved rounds of 0.05 s CPU each; ns per request\n", PREFORK_BENCH_BUILD, rounds);
#ifndef PREFORK_BENCH_PICO
  std::printf("picohttpparser: skipped (built without libh2o-evloop; install libh2o-evloop0.13 and reconfigure)\n");
#endif
  std::printf("%-12s %-15s %9s %9s %9s\n", "request", "parser", "median", "min", "max");
  for (contender& c : all) {
    std::sort(c.ns.begin(), c.ns.end());
    std::printf("%-12s %-15s %9.1f %9.1f %9.1f\n", c.request.c_str(), c.parser.c_str(), c.ns[c.ns.size() / 2],
                c.ns.front(), c.ns.back());
  }
  // One line per figure for bench/http/report.py.
  for (const contender& c : all)
    std::printf("compare|%s|%s|%s|%.2f|%.2f|%.2f\n", PREFORK_BENCH_BUILD, c.request.c_str(), c.parser.c_str(),
                c.ns[c.ns.size() / 2], c.ns.front(), c.ns.back());
  std::printf("(checksum %zu)\n", sink);
  CHECK(sink > 0);
}
