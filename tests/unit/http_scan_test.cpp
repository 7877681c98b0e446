// examples/httpd/http_scan.hpp: every implementation of every scan (portable,
// SSE2, and AVX2 where the CPU has it) agrees with a one-byte-at-a-time
// reference, for every start, every length, the stopping byte anywhere and
// every byte value; and none reads outside [0, n) (each buffer is its own
// allocation of exactly n bytes, so AddressSanitizer sees a stray read).
#include <doctest/doctest.h>

#include "httpd/http_scan.hpp"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace {

using scan_fn = std::size_t (*)(const char*, std::size_t, std::size_t);

struct impl {
  std::string name;
  scan_fn fn;
};

bool value_stop(unsigned char c) { return c < 0x20 || c == 0x7f; }
bool target_stop(unsigned char c) { return c < 0x21 || c > 0x7e || c == '#'; }
bool name_stop(unsigned char c) {
  return !httpd::is_token(std::string_view(reinterpret_cast<const char*>(&c), 1));
}
bool host_stop(unsigned char c) {
  return !((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.');
}

// A byte the scan passes over, chosen by a cheap generator.
unsigned char filler(bool (*stop)(unsigned char), std::uint32_t& seed) {
  while (true) {
    seed = seed * 1664525u + 1013904223u;
    const auto c = static_cast<unsigned char>(seed >> 24);
    if (!stop(c)) return c;
  }
}

void check_scan(const char* what, bool (*stop)(unsigned char), const std::vector<impl>& impls) {
  std::uint32_t seed = 1;
  std::size_t checked = 0;
  for (std::size_t n = 0; n <= 70; ++n) {
    std::unique_ptr<char[]> buf(new char[n == 0 ? 1 : n]);
    // With no stopping byte, and with one at each position of each value.
    for (std::size_t at = 0; at <= n; ++at) {
      // Every byte value around the vector widths, a spread of them elsewhere.
      const bool all = n == 15 || n == 16 || n == 17 || n == 33 || n == 40;
      for (unsigned v = 0; v < 256; v += (at == n ? 256 : all ? 1 : 23)) {
        if (at < n && !stop(static_cast<unsigned char>(v))) continue;
        for (std::size_t k = 0; k < n; ++k) buf[k] = static_cast<char>(filler(stop, seed));
        if (at < n) buf[at] = static_cast<char>(v);
        for (std::size_t i = 0; i <= n; i += (n > 20 ? 5 : 1)) {
          const std::size_t expected = at >= i ? at : [&] {
            std::size_t e = i;
            while (e < n && !stop(static_cast<unsigned char>(buf[e]))) ++e;
            return e;
          }();
          for (const impl& m : impls) {
            const std::size_t got = m.fn(buf.get(), i, n);
            if (got != expected) {
              INFO(std::string(what) << " " << m.name << ": n=" << n << " i=" << i << " stop byte " << v
                                     << " at " << at);
              CHECK(got == expected);
              return;
            }
            ++checked;
          }
        }
      }
    }
  }
  const std::string summary = std::string(what) + ": " + std::to_string(checked) + " scans agree";
  MESSAGE(summary);
}

std::vector<impl> value_impls() {
  std::vector<impl> v{{"portable", httpd::detail::scan_value_portable},
                      {"default", httpd::detail::scan_value}};
#ifdef HTTPD_SCAN_X86
  v.push_back({"sse2", httpd::detail::scan_value_sse2});
  if (__builtin_cpu_supports("avx2")) v.push_back({"avx2", httpd::detail::scan_value_avx2});
#endif
  return v;
}

std::vector<impl> target_impls() {
  std::vector<impl> v{{"portable", httpd::detail::scan_target_portable},
                      {"default", httpd::detail::scan_target}};
#ifdef HTTPD_SCAN_X86
  v.push_back({"sse2", httpd::detail::scan_target_sse2});
  if (__builtin_cpu_supports("avx2")) v.push_back({"avx2", httpd::detail::scan_target_avx2});
#endif
  return v;
}

std::vector<impl> name_impls() {
  std::vector<impl> v{{"portable", httpd::detail::scan_name_portable}, {"default", httpd::detail::scan_name}};
#ifdef HTTPD_SCAN_X86
  v.push_back({"sse2", httpd::detail::scan_name_sse2});
#endif
  return v;
}

}  // namespace

TEST_CASE("scan_value: the first control or DEL, in every implementation") {
  check_scan("scan_value", value_stop, value_impls());
}

TEST_CASE("scan_target: the first byte outside 0x21-0x7e, or '#'") {
  check_scan("scan_target", target_stop, target_impls());
}

TEST_CASE("scan_name: the first byte that is not a tchar") {
  check_scan("scan_name", name_stop, name_impls());
}

TEST_CASE("scan_host_simple: the first byte other than a letter, digit, '-' or '.'") {
  check_scan("scan_host_simple", host_stop, {{"default", httpd::detail::scan_host_simple}});
}

TEST_CASE("the parser's scans are the ones this build selects") {
#if defined(HTTPD_SCAN_PORTABLE) || !defined(HTTPD_SCAN_X86)
  CHECK(std::string(httpd::detail::scan_path()) == "portable");
#elif defined(__AVX2__)
  CHECK(std::string(httpd::detail::scan_path()) == "avx2");
#else
  CHECK(std::string(httpd::detail::scan_path()) == "sse2");
#endif
}
