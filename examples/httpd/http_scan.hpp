// examples/httpd/http_scan.hpp: the request parser's inner loops, finding the
// first byte of a run that does not belong to it: a field value (up to the CR
// ending its line), a request-target, a field name. Each comes as a portable
// version (eight bytes per step with integer arithmetic, or the byte table),
// an SSE2 version (16 bytes per step; SSE2 is part of every x86-64 CPU) and
// an AVX2 version (32 bytes; compiled on x86-64 with a target attribute, so a
// test can run it wherever the CPU has AVX2). scan_value(), scan_target() and
// scan_name() are what the parser uses: AVX2 when the build enables it
// (-mavx2, -march=native), else SSE2 on x86-64, else the portable code; define
// HTTPD_SCAN_PORTABLE to force the portable code (a unit test does, to run the
// whole parser suite on that path too). p is the start of the caller's
// buffer and n its size: each scans from i, and reads nothing outside
// [0, n). The vector versions finish a run shorter than a vector with one
// load ending at n, which overlaps bytes already seen (so a short head costs
// one load per run, not a byte loop).
#pragma once

#include "http_syntax.hpp"

#include <cstddef>
#include <cstdint>
#include <cstring>

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HTTPD_SCAN_X86 1
#endif

namespace httpd::detail {

// --- portable ---------------------------------------------------------------

/// Index of the first byte in [i, n) below 0x20 (HTAB and CR included) or
/// 0x7f, or n. A word with no byte below 0x20 and no 0x7f is clean (the
/// classic "has less than" and "has zero byte" tests, exact as a yes/no per
/// word); a suspect word is looked at byte by byte.
inline std::size_t scan_value_portable(const char* p, std::size_t i, std::size_t n) noexcept {
  constexpr std::uint64_t ones = 0x0101010101010101u, highs = 0x8080808080808080u;
  for (; i + 8 <= n; i += 8) {
    std::uint64_t x;
    std::memcpy(&x, p + i, 8);
    const std::uint64_t below_space = (x - ones * 0x20) & ~x & highs;
    const std::uint64_t y = x ^ (ones * 0x7f);
    const std::uint64_t del = (y - ones) & ~y & highs;
    if ((below_space | del) != 0) break;
  }
  for (; i < n; ++i)
    if (!is(p[i], c_text)) return i;
  return n;
}

/// Index of the first byte in [i, n) that a request-target may not hold
/// (outside 0x21-0x7e), or that is '#', or n.
inline std::size_t scan_target_portable(const char* p, std::size_t i, std::size_t n) noexcept {
  while (i < n && is(p[i], c_target_plain)) ++i;
  return i;
}

/// Index of the first byte in [i, n) that is not a tchar, or n.
inline std::size_t scan_name_portable(const char* p, std::size_t i, std::size_t n) noexcept {
  while (i < n && is(p[i], c_token)) ++i;
  return i;
}

#ifdef HTTPD_SCAN_X86

// --- SSE2 ---------------------------------------------------------------------
// Unsigned "x <= k" per byte is min(x, k) == x; a range [lo, hi] is
// x - lo <= hi - lo, wrapping.

inline __m128i load16(const char* q) noexcept { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(q)); }

// The first flagged byte at or after i, given mask(v) flags bytes of a
// 16-byte vector v: over [i, n) in steps of 16, the last step a load ending
// at n; portable(p, i, n) when the whole buffer is shorter than 16.
// A run already shorter than a vector at i goes straight to the last step
// (the compilers otherwise load the loop's constants for nothing first).
template <class Mask, class Portable>
inline std::size_t scan16(const char* p, std::size_t i, std::size_t n, Mask mask, Portable portable) noexcept {
  if (i + 16 <= n) {
    do {
      const unsigned m = static_cast<unsigned>(mask(load16(p + i)));
      if (m != 0) return i + static_cast<unsigned>(__builtin_ctz(m));
      i += 16;
    } while (i + 16 <= n);
  }
  if (i == n) return n;
  if (n < 16) return portable(p, i, n);
  const unsigned m = static_cast<unsigned>(mask(load16(p + n - 16))) >> (i + 16 - n);
  return m != 0 ? i + static_cast<unsigned>(__builtin_ctz(m)) : n;
}

inline int bad_value_mask_sse2(__m128i x) noexcept {
  const __m128i controls = _mm_cmpeq_epi8(_mm_min_epu8(x, _mm_set1_epi8(0x1f)), x);
  return _mm_movemask_epi8(_mm_or_si128(controls, _mm_cmpeq_epi8(x, _mm_set1_epi8(0x7f))));
}

inline std::size_t scan_value_sse2(const char* p, std::size_t i, std::size_t n) noexcept {
  return scan16(p, i, n, bad_value_mask_sse2, scan_value_portable);
}

inline int bad_target_mask_sse2(__m128i x) noexcept {
  const __m128i t = _mm_sub_epi8(x, _mm_set1_epi8(0x21));
  const __m128i good = _mm_cmpeq_epi8(_mm_min_epu8(t, _mm_set1_epi8(0x7e - 0x21)), t);
  return (_mm_movemask_epi8(good) ^ 0xffff) | _mm_movemask_epi8(_mm_cmpeq_epi8(x, _mm_set1_epi8('#')));
}

inline std::size_t scan_target_sse2(const char* p, std::size_t i, std::size_t n) noexcept {
  return scan16(p, i, n, bad_target_mask_sse2, scan_target_portable);
}

// Flags the bytes other than letters, digits, '-' and `extra`.
inline int not_alnum_dash_mask_sse2(__m128i x, char extra) noexcept {
  const __m128i letter = _mm_sub_epi8(_mm_or_si128(x, _mm_set1_epi8(0x20)), _mm_set1_epi8('a'));
  const __m128i digit = _mm_sub_epi8(x, _mm_set1_epi8('0'));
  const __m128i good =
      _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(_mm_min_epu8(letter, _mm_set1_epi8(25)), letter),
                                _mm_cmpeq_epi8(_mm_min_epu8(digit, _mm_set1_epi8(9)), digit)),
                   _mm_or_si128(_mm_cmpeq_epi8(x, _mm_set1_epi8('-')), _mm_cmpeq_epi8(x, _mm_set1_epi8(extra))));
  return _mm_movemask_epi8(good) ^ 0xffff;
}

// Names are letters, digits and '-' nearly always: those 16 at a time; the
// table finishes the job from the first other byte (':', or a rarer tchar).
inline std::size_t scan_name_sse2(const char* p, std::size_t i, std::size_t n) noexcept {
  const std::size_t k = scan16(
      p, i, n, [](__m128i x) { return not_alnum_dash_mask_sse2(x, '-'); },
      [](const char*, std::size_t at, std::size_t) { return at; });
  return scan_name_portable(p, k, n);
}

// --- AVX2 ---------------------------------------------------------------------

__attribute__((target("avx2"))) inline std::size_t scan_value_avx2(const char* p, std::size_t i,
                                                                    std::size_t n) noexcept {
  for (; i + 32 <= n; i += 32) {
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i));
    const __m256i controls = _mm256_cmpeq_epi8(_mm256_min_epu8(x, _mm256_set1_epi8(0x1f)), x);
    const __m256i bad = _mm256_or_si256(controls, _mm256_cmpeq_epi8(x, _mm256_set1_epi8(0x7f)));
    const unsigned m = static_cast<unsigned>(_mm256_movemask_epi8(bad));
    if (m != 0) return i + static_cast<unsigned>(__builtin_ctz(m));
  }
  return scan_value_sse2(p, i, n);
}

__attribute__((target("avx2"))) inline std::size_t scan_target_avx2(const char* p, std::size_t i,
                                                                     std::size_t n) noexcept {
  for (; i + 32 <= n; i += 32) {
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i));
    const __m256i t = _mm256_sub_epi8(x, _mm256_set1_epi8(0x21));
    const __m256i good = _mm256_cmpeq_epi8(_mm256_min_epu8(t, _mm256_set1_epi8(0x7e - 0x21)), t);
    const unsigned m = ~static_cast<unsigned>(_mm256_movemask_epi8(good)) |
                       static_cast<unsigned>(_mm256_movemask_epi8(_mm256_cmpeq_epi8(x, _mm256_set1_epi8('#'))));
    if (m != 0) return i + static_cast<unsigned>(__builtin_ctz(m));
  }
  return scan_target_sse2(p, i, n);
}

#endif  // HTTPD_SCAN_X86

// --- what the parser uses -------------------------------------------------------

/// Index of the first byte in [i, n) that is not a letter, digit, '-' or
/// '.', or n: the whole of most host names, for a quick yes before the full
/// authority check.
inline std::size_t scan_host_simple(const char* p, std::size_t i, std::size_t n) noexcept {
  const auto portable = [](const char* q, std::size_t at, std::size_t end) {
    for (; at < end; ++at) {
      const int c = static_cast<unsigned char>(q[at]);
      if (!(static_cast<unsigned>((c | 0x20) - 'a') < 26 || static_cast<unsigned>(c - '0') < 10 || c == '-' ||
            c == '.'))
        break;
    }
    return at;
  };
#if defined(HTTPD_SCAN_PORTABLE) || !defined(HTTPD_SCAN_X86)
  return portable(p, i, n);
#else
  return scan16(p, i, n, [](__m128i x) { return not_alnum_dash_mask_sse2(x, '.'); }, portable);
#endif
}

inline std::size_t scan_value(const char* p, std::size_t i, std::size_t n) noexcept {
#if defined(HTTPD_SCAN_PORTABLE) || !defined(HTTPD_SCAN_X86)
  return scan_value_portable(p, i, n);
#elif defined(__AVX2__)
  return scan_value_avx2(p, i, n);
#else
  return scan_value_sse2(p, i, n);
#endif
}

inline std::size_t scan_target(const char* p, std::size_t i, std::size_t n) noexcept {
#if defined(HTTPD_SCAN_PORTABLE) || !defined(HTTPD_SCAN_X86)
  return scan_target_portable(p, i, n);
#elif defined(__AVX2__)
  return scan_target_avx2(p, i, n);
#else
  return scan_target_sse2(p, i, n);
#endif
}

inline std::size_t scan_name(const char* p, std::size_t i, std::size_t n) noexcept {
#if defined(HTTPD_SCAN_PORTABLE) || !defined(HTTPD_SCAN_X86)
  return scan_name_portable(p, i, n);
#else
  return scan_name_sse2(p, i, n);
#endif
}

/// Which of the above the parser was built with, for the benchmarks' labels.
inline const char* scan_path() noexcept {
#if defined(HTTPD_SCAN_PORTABLE) || !defined(HTTPD_SCAN_X86)
  return "portable";
#elif defined(__AVX2__)
  return "avx2";
#else
  return "sse2";
#endif
}

}  // namespace httpd::detail
