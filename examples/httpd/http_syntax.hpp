// examples/httpd/http_syntax.hpp: the character classes and small helpers of
// HTTP/1.1 (RFC 9110/9112) shared by the request parser and the chunked decoder:
// the limits a server enforces, token and field-value tables, percent decoding,
// splitting a target into path and query. Pure functions on bytes; no syscalls.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace httpd {

/// What one request may cost. The defaults are what prefork-httpd uses;
/// --max-body changes max_body.
struct limits {
  std::size_t max_request_line = 8192;   ///< longer: 414
  std::size_t max_field_line = 8192;     ///< one field (or trailer) line longer: 431
  std::size_t max_header_bytes = 65536;  ///< all field lines together longer: 431
  std::size_t max_fields = 100;          ///< more fields: 431
  std::uint64_t max_body = 1048576;      ///< a longer body (declared or decoded): 413
};

namespace detail {

// Classes as bits of one table, so one load classifies a byte.
enum : std::uint8_t {
  c_token = 1,   // tchar: field names, methods, codings
  c_value = 2,   // field-vchar, SP, HTAB: what a field value may hold
  c_target = 4,  // what a request-target may hold (visible ASCII)
  c_hex = 8,
  c_host = 16,   // what an authority may hold: unreserved, sub-delims, ':', '[', ']', '%'
  c_regname = 32,       // what a reg-name holds but for %XX: unreserved, sub-delims
  c_target_plain = 64,  // c_target but '#': a target the fast path takes as it is
  c_text = 128,         // c_value but HTAB: field-vchar, SP, obs-text
};

constexpr std::uint8_t char_class(unsigned c) noexcept {
  std::uint8_t k = 0;
  const bool alnum = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
  if (alnum) k |= c_token;
  switch (c) {
    case '!': case '#': case '$': case '%': case '&': case '\'': case '*': case '+':
    case '-': case '.': case '^': case '_': case '`': case '|': case '~':
      k |= c_token;
      break;
    default:
      break;
  }
  // obs-text (0x80-0xFF) is allowed in values for old clients, never in names.
  if (c == '\t' || (c >= 0x20 && c != 0x7f)) k |= c_value;
  if (c > 0x20 && c < 0x7f) k |= c_target;
  if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')) k |= c_hex;
  if (alnum) k |= c_host | c_regname;
  switch (c) {
    case '-': case '.': case '_': case '~': case '!': case '$': case '&': case '\'':
    case '(': case ')': case '*': case '+': case ',': case ';': case '=':
      k |= c_host | c_regname;
      break;
    case ':': case '[': case ']': case '%':
      k |= c_host;
      break;
    default:
      break;
  }
  if ((k & c_target) && c != '#') k |= c_target_plain;
  if ((k & c_value) && c != '\t') k |= c_text;
  return k;
}

struct char_table {
  std::uint8_t v[256];
  constexpr char_table() : v() {
    for (unsigned c = 0; c < 256; ++c) v[c] = char_class(c);
  }
};

inline constexpr char_table chars{};

constexpr bool is(char c, std::uint8_t cls) noexcept {
  return (chars.v[static_cast<unsigned char>(c)] & cls) != 0;
}

constexpr bool is_ows_char(char c) noexcept { return c == ' ' || c == '\t'; }

constexpr int hex_value(char c) noexcept {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

constexpr char lower(char c) noexcept {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + ('a' - 'A')) : c;
}

inline std::string_view trim_ows(std::string_view s) noexcept {
  while (!s.empty() && is_ows_char(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_ows_char(s.back())) s.remove_suffix(1);
  return s;
}

// Calls f(element) for each non-empty element of a comma-separated list
// (RFC 9110 5.6.1: recipients accept empty elements); stops when f says false.
template <class F>
bool for_each_element(std::string_view list, F&& f) {
  while (true) {
    std::size_t comma = list.find(',');
    std::string_view e = trim_ows(list.substr(0, comma));
    if (!e.empty() && !f(e)) return false;
    if (comma == std::string_view::npos) return true;
    list.remove_prefix(comma + 1);
  }
}

// The parameters of a transfer-coding (RFC 9112 7): *( OWS ";" OWS token BWS
// "=" BWS ( token / quoted-string ) ), for p starting at its first ';'. Used
// on one element of a list already split at commas, so a quoted comma fails.
inline bool valid_parameters(std::string_view p) noexcept {
  std::size_t i = 0;
  const auto skip_ows = [&] {
    while (i < p.size() && is_ows_char(p[i])) ++i;
  };
  while (true) {
    skip_ows();
    if (i == p.size()) return true;
    if (p[i++] != ';') return false;
    skip_ows();
    const std::size_t name = i;
    while (i < p.size() && is(p[i], c_token)) ++i;
    if (i == name) return false;
    skip_ows();
    if (i == p.size() || p[i++] != '=') return false;
    skip_ows();
    if (i < p.size() && p[i] == '"') {
      for (++i;; ++i) {
        if (i == p.size()) return false;
        if (p[i] == '"') break;
        if (p[i] == '\\' && ++i == p.size()) return false;
        if (!is(p[i], c_value)) return false;
      }
      ++i;
    } else {
      const std::size_t value = i;
      while (i < p.size() && is(p[i], c_token)) ++i;
      if (i == value) return false;
    }
  }
}

// IPv6address of RFC 3986 3.2.2: eight groups of 1-4 hex digits, or fewer
// around one "::", the last two groups possibly written as an IPv4 address.
inline bool valid_ipv4(std::string_view s) noexcept {
  int parts = 0;
  std::size_t i = 0;
  while (true) {
    std::size_t start = i;
    unsigned v = 0;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9' && i - start < 3) v = v * 10 + unsigned(s[i++] - '0');
    const std::size_t len = i - start;
    // dec-octet: no leading zero, at most 255
    if (len == 0 || v > 255 || (len > 1 && s[start] == '0')) return false;
    if (++parts == 4) return i == s.size();
    if (i == s.size() || s[i] != '.') return false;
    ++i;
  }
}

inline bool valid_ipv6(std::string_view s) noexcept {
  int groups = 0;  // 16-bit groups seen, an IPv4 tail counting two
  bool gap = false;
  std::size_t i = 0;
  if (s.size() >= 2 && s[0] == ':' && s[1] == ':') {
    gap = true;
    i = 2;
    if (i == s.size()) return true;
  } else if (!s.empty() && s[0] == ':') {
    return false;
  }
  while (true) {
    std::size_t start = i;
    while (i < s.size() && i - start < 4 && hex_value(s[i]) >= 0) ++i;
    if (i < s.size() && s[i] == '.') {  // ls32 as an IPv4 address ends the address
      if (!valid_ipv4(s.substr(start))) return false;
      groups += 2;
      break;
    }
    if (i == start) return false;
    ++groups;
    if (i == s.size()) break;
    if (s[i] != ':') return false;
    ++i;
    if (i < s.size() && s[i] == ':') {
      if (gap) return false;
      gap = true;
      ++i;
      if (i == s.size()) break;
    } else if (i == s.size()) {
      return false;  // a single trailing ':'
    }
  }
  return gap ? groups <= 7 : groups == 8;
}

// IP-literal = "[" ( IPv6address / IPvFuture ) "]", the brackets removed;
// IPvFuture = "v" 1*HEXDIG "." 1*( unreserved / sub-delims / ":" ).
inline bool valid_ip_literal(std::string_view s) noexcept {
  if (s.empty()) return false;
  if (s[0] != 'v' && s[0] != 'V') return valid_ipv6(s);
  std::size_t i = 1;
  while (i < s.size() && hex_value(s[i]) >= 0) ++i;
  if (i == 1 || i == s.size() || s[i] != '.' || ++i == s.size()) return false;
  for (; i < s.size(); ++i)
    if (!is(s[i], c_regname) && s[i] != ':') return false;
  return true;
}

enum class port_rule : std::uint8_t { optional, required };

// RFC 9112 3.2 and RFC 3986 3.2.2-3.2.3: uri-host [ ":" port ], where
// uri-host is an IP-literal in brackets, or a reg-name (which covers IPv4):
// unreserved, sub-delims and %XX escapes; port is digits. The host may not be
// empty (RFC 9110 4.2.1: an http URI with an empty host is invalid), so an
// empty authority is refused too: the caller decides whether that is allowed.
// With port_rule::required (CONNECT's authority-form) the port must be there.
inline bool valid_authority(std::string_view a, port_rule port = port_rule::optional) noexcept {
  std::size_t i = 0;
  if (!a.empty() && a[0] == '[') {
    const std::size_t close = a.find(']');
    if (close == std::string_view::npos || !valid_ip_literal(a.substr(1, close - 1))) return false;
    i = close + 1;
  } else {
    while (true) {
      while (i < a.size() && is(a[i], c_regname)) ++i;
      if (i == a.size() || a[i] != '%') break;
      if (a.size() - i < 3 || hex_value(a[i + 1]) < 0 || hex_value(a[i + 2]) < 0) return false;
      i += 3;
    }
    if (i == 0) return false;
  }
  if (i == a.size()) return port == port_rule::optional;
  if (a[i] != ':') return false;
  if (++i == a.size()) return port == port_rule::optional;  // "host:" (an empty port) is allowed
  for (; i < a.size(); ++i)
    if (a[i] < '0' || a[i] > '9') return false;
  return true;
}

// Index of the first byte of [p, p + n) that a field value may not hold
// (controls other than HTAB, DEL), or n. Values are most of a head's bytes, so
// eight are tested at once: a word without a byte below 0x20 and without 0x7f
// is clean (the classic "has less than" and "has zero byte" tricks, exact as
// a yes/no per word); only a suspect word, usually one holding a tab, is
// looked at byte by byte.
inline std::size_t find_bad_value_char(const char* p, std::size_t n) noexcept {
  constexpr std::uint64_t ones = 0x0101010101010101u, highs = 0x8080808080808080u;
  std::size_t i = 0;
  while (i + 8 <= n) {
    std::uint64_t x;
    std::memcpy(&x, p + i, 8);
    const std::uint64_t below_space = (x - ones * 0x20) & ~x & highs;
    const std::uint64_t y = x ^ (ones * 0x7f);
    const std::uint64_t del = (y - ones) & ~y & highs;
    if ((below_space | del) == 0) {
      i += 8;
      continue;
    }
    for (const std::size_t word_end = i + 8; i < word_end; ++i)
      if (!is(p[i], c_value)) return i;
  }
  for (; i < n; ++i)
    if (!is(p[i], c_value)) return i;
  return n;
}

// Whether the token of N - 1 bytes at s is lit (lower case letters and '-'),
// ignoring case. OR-ing 0x20 into each byte folds case, and can make no
// other tchar equal to a letter or '-', so words compare exactly.
template <std::size_t N>
inline bool token_is(const char* s, const char (&lit)[N]) noexcept {
  constexpr std::size_t len = N - 1;
  static_assert(len >= 4, "a word at least");
  const auto word = [](const char* q, auto w) {
    std::memcpy(&w, q, sizeof w);
    return w;
  };
  if constexpr (len >= 8) {
    constexpr std::uint64_t fold = 0x2020202020202020u;
    for (std::size_t k = 0; k + 8 < len; k += 8)
      if ((word(s + k, std::uint64_t{}) | fold) != word(lit + k, std::uint64_t{})) return false;
    return (word(s + len - 8, std::uint64_t{}) | fold) == word(lit + len - 8, std::uint64_t{});
  } else {
    constexpr std::uint32_t fold = 0x20202020u;
    return (word(s, std::uint32_t{}) | fold) == word(lit, std::uint32_t{}) &&
           (word(s + len - 4, std::uint32_t{}) | fold) == word(lit + len - 4, std::uint32_t{});
  }
}

}  // namespace detail

/// ASCII case-insensitive equality, as field names and codings compare.
constexpr bool iequals(std::string_view a, std::string_view b) noexcept {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (detail::lower(a[i]) != detail::lower(b[i])) return false;
  return true;
}

/// Whether the whole of s is a token (RFC 9110 5.6.2): non-empty, tchars only.
constexpr bool is_token(std::string_view s) noexcept {
  if (s.empty()) return false;
  for (char c : s)
    if (!detail::is(c, detail::c_token)) return false;
  return true;
}

/// Offset just past the "\r\n\r\n" ending a head in buf, searching from `from`
/// (give the previous size minus 3 to rescan only new bytes), or npos. A cheap
/// pre-check only: request_parser::parse() does the real work.
inline std::size_t find_header_end(std::string_view buf, std::size_t from = 0) noexcept {
  const char* p = buf.data();
  const char* end = p + buf.size();
  for (const char* q = p + (from < buf.size() ? from : buf.size());; ++q) {
    q = static_cast<const char*>(std::memchr(q, '\n', static_cast<std::size_t>(end - q)));
    if (q == nullptr) return std::string_view::npos;
    // q is an LF; the head ends at "\r\n\r\n" with q on its last byte.
    if (q - p >= 3 && q[-1] == '\r' && q[-2] == '\n' && q[-3] == '\r')
      return static_cast<std::size_t>(q - p) + 1;
    if (q + 1 == end) return std::string_view::npos;
  }
}

/// Decodes %XX escapes of a path once, into out (cleared first; its capacity is
/// reused). False, with out unspecified, on an escape that is not two hex
/// digits and on %00 (a NUL would cut the path short in any C API). '+' stays
/// '+': it means space only in form data. Decoded '/' and ".." are left for the
/// caller to judge: decoding happens once, so "%252e" gives "%2e", never ".".
inline bool percent_decode(std::string_view in, std::string& out) {
  out.clear();
  out.reserve(in.size());
  std::size_t i = 0;
  while (i < in.size()) {
    const void* pct = std::memchr(in.data() + i, '%', in.size() - i);
    std::size_t stop = pct ? static_cast<std::size_t>(static_cast<const char*>(pct) - in.data()) : in.size();
    out.append(in.data() + i, stop - i);
    if (stop == in.size()) break;
    if (in.size() - stop < 3) return false;
    int hi = detail::hex_value(in[stop + 1]), lo = detail::hex_value(in[stop + 2]);
    if (hi < 0 || lo < 0) return false;
    int byte = hi * 16 + lo;
    if (byte == 0) return false;
    out.push_back(static_cast<char>(byte));
    i = stop + 3;
  }
  return true;
}

/// A request-target split at the first '?'.
struct target_parts {
  std::string_view path, query;
};

/// Splits an origin-form target ("/a/b?x=1") into path ("/a/b") and query ("x=1").
constexpr target_parts split_target(std::string_view target) noexcept {
  std::size_t q = target.find('?');
  if (q == std::string_view::npos) return {target, {}};
  return {target.substr(0, q), target.substr(q + 1)};
}

}  // namespace httpd
