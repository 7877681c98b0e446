// httpd/proxy_protocol.hpp: the PROXY protocol header (HAProxy's, versions 1
// and 2), which a load balancer sends first on each connection to say whose
// connection it is relaying.
//
// parse() is pure: it looks at the bytes received so far on a connection,
// allocates nothing, and says incomplete (more bytes may complete a valid
// header), done (the header and its length, the rest of the input is the
// client's), or error (with a precise reason). It fails as early as the bytes
// allow: a connection that starts with "GET " is refused on its first byte,
// so nobody can send a request past a listener that expects a header, and
// a forged or broken header is refused before it is complete.
//
// Version 1 is one text line of at most 107 bytes:
//   PROXY TCP4 203.0.113.7 10.0.0.2 51234 8080\r\n
//   PROXY TCP6 2001:db8::7 2001:db8::2 51234 8080\r\n
//   PROXY UNKNOWN[ anything]\r\n      (the connection's own addresses apply)
// single spaces, addresses in their canonical text forms, ports 0-65535
// without leading zeros.
// Version 2 is binary: the 12-byte signature, version 2 with command LOCAL
// (the balancer's own connection, a health check: the connection's own
// addresses apply) or PROXY, the family (UNSPEC, INET, INET6, UNIX) and
// transport (UNSPEC, STREAM; DGRAM is refused: this is a stream), a length
// at least as long as the family's address block and at most
// max_v2_length, then the addresses and TLVs. For PROXY the TLVs must
// exactly fill the rest (type, 16-bit length, value); their content is
// not used.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace httpd::proxy_protocol {

enum class result : std::uint8_t { incomplete, done, error };

enum class error : std::uint8_t {
  none,
  no_header,     // the first bytes match neither version's signature
  v1_too_long,   // no CRLF within 107 bytes
  v1_syntax,     // a byte or a field out of place
  v1_protocol,   // neither TCP4, TCP6 nor UNKNOWN
  v1_address,    // not an address of the protocol's family
  v1_port,       // not a decimal 0-65535 without leading zeros
  v2_version,    // version nibble not 2
  v2_command,    // neither LOCAL nor PROXY
  v2_family,     // unknown address family or transport, or DGRAM
  v2_too_short,  // length below the family's address block
  v2_too_long,   // length above max_v2_length
  v2_tlv,        // the TLVs do not exactly fill the header
};

constexpr std::size_t max_v1_length = 107;  // the specification's bound, CRLF included
// Addresses (at most 216 bytes, AF_UNIX) and TLVs; HAProxy sends far less.
// A bound keeps a connection from making a worker buffer 64 KiB first.
constexpr std::size_t max_v2_length = 16 + 1024;

struct header {
  int version = 0;    // 1 or 2
  bool local = true;  // LOCAL, UNKNOWN, UNSPEC or UNIX: use the connection's own addresses
  sockaddr_storage source{}, destination{};  // AF_INET or AF_INET6 when !local
  std::size_t length = 0;                    // bytes the header took from the input
};

inline const char* describe(error e) noexcept {
  switch (e) {
    case error::none: return "no error";
    case error::no_header: return "the connection did not start with a PROXY protocol header";
    case error::v1_too_long: return "PROXY v1 header longer than 107 bytes";
    case error::v1_syntax: return "PROXY v1 header malformed";
    case error::v1_protocol: return "PROXY v1 protocol is not TCP4, TCP6 or UNKNOWN";
    case error::v1_address: return "PROXY v1 address is not a valid address of its protocol";
    case error::v1_port: return "PROXY v1 port is not a number from 0 to 65535";
    case error::v2_version: return "PROXY v2 header has a version other than 2";
    case error::v2_command: return "PROXY v2 command is neither LOCAL nor PROXY";
    case error::v2_family: return "PROXY v2 address family or transport is unknown or not a stream";
    case error::v2_too_short: return "PROXY v2 length is shorter than its addresses";
    case error::v2_too_long: return "PROXY v2 header longer than this server accepts";
    case error::v2_tlv: return "PROXY v2 TLVs do not fill the header exactly";
  }
  return "unknown error";
}

namespace detail {

constexpr char v2_signature[12] = {'\r', '\n', '\r', '\n', '\0', '\r', '\n', 'Q', 'U', 'I', 'T', '\n'};
constexpr std::string_view v1_prefix = "PROXY ";

inline result fail(error& why, error e) noexcept {
  why = e;
  return result::error;
}

// The bytes of a v1 line besides CRLF: the protocol names, addresses, ports.
inline bool v1_byte(char c) noexcept {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'Z') || c == '.' || c == ':' ||
         c == ' ';
}

inline bool parse_port(std::string_view s, std::uint16_t& port) noexcept {
  if (s.empty() || s.size() > 5 || (s.size() > 1 && s[0] == '0')) return false;
  unsigned v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<unsigned>(c - '0');
  }
  if (v > 65535) return false;
  port = static_cast<std::uint16_t>(v);
  return true;
}

inline bool parse_address(std::string_view s, int family, std::uint16_t port,
                          sockaddr_storage& out) noexcept {
  char text[INET6_ADDRSTRLEN];
  if (s.empty() || s.size() >= sizeof text) return false;
  std::memcpy(text, s.data(), s.size());
  text[s.size()] = '\0';
  std::memset(&out, 0, sizeof out);
  if (family == AF_INET) {
    auto& a = reinterpret_cast<sockaddr_in&>(out);
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    return ::inet_pton(AF_INET, text, &a.sin_addr) == 1;
  }
  auto& a = reinterpret_cast<sockaddr_in6&>(out);
  a.sin6_family = AF_INET6;
  a.sin6_port = htons(port);
  return ::inet_pton(AF_INET6, text, &a.sin6_addr) == 1;
}

// Splits off the text up to the next space (or to the end).
inline std::string_view next_field(std::string_view& rest) noexcept {
  auto sp = rest.find(' ');
  std::string_view f = rest.substr(0, sp);
  rest = sp == std::string_view::npos ? std::string_view() : rest.substr(sp + 1);
  return f;
}

inline result parse_v1(std::string_view in, header& out, error& why) noexcept {
  const std::size_t prefix = in.size() < v1_prefix.size() ? in.size() : v1_prefix.size();
  if (in.substr(0, prefix) != v1_prefix.substr(0, prefix)) return fail(why, error::no_header);
  const std::size_t limit = in.size() < max_v1_length ? in.size() : max_v1_length;
  std::size_t end = std::string_view::npos;
  for (std::size_t i = 0; i < limit; ++i) {
    char c = in[i];
    if (c == '\r') {
      if (i + 1 >= max_v1_length) break;  // its LF would be byte 108: too long
      if (i + 1 < in.size() && in[i + 1] != '\n') return fail(why, error::v1_syntax);
      if (i + 1 < in.size()) end = i;
      break;
    }
    if (!v1_byte(c)) return fail(why, error::v1_syntax);
  }
  if (end == std::string_view::npos) {
    if (in.size() >= max_v1_length) return fail(why, error::v1_too_long);
    return result::incomplete;
  }
  std::string_view rest = in.substr(v1_prefix.size(), end - v1_prefix.size());
  std::string_view proto = next_field(rest);
  out = header{};
  out.version = 1;
  out.length = end + 2;
  if (proto == "UNKNOWN") return result::done;  // the rest of the line is ignored, as specified
  int family;
  if (proto == "TCP4")
    family = AF_INET;
  else if (proto == "TCP6")
    family = AF_INET6;
  else
    return fail(why, error::v1_protocol);
  std::string_view src = next_field(rest), dst = next_field(rest), sport = next_field(rest), dport = rest;
  if (src.empty() || dst.empty() || sport.empty() || dport.empty() ||
      dport.find(' ') != std::string_view::npos)
    return fail(why, error::v1_syntax);
  std::uint16_t sp = 0, dp = 0;
  if (!parse_port(sport, sp) || !parse_port(dport, dp)) return fail(why, error::v1_port);
  if (!parse_address(src, family, sp, out.source) || !parse_address(dst, family, dp, out.destination))
    return fail(why, error::v1_address);
  out.local = false;
  return result::done;
}

inline std::uint16_t be16(const unsigned char* p) noexcept {
  return static_cast<std::uint16_t>((p[0] << 8) | p[1]);
}

inline result parse_v2(std::string_view in, header& out, error& why) noexcept {
  const std::size_t sig = in.size() < sizeof v2_signature ? in.size() : sizeof v2_signature;
  if (std::memcmp(in.data(), v2_signature, sig) != 0) return fail(why, error::no_header);
  const auto* b = reinterpret_cast<const unsigned char*>(in.data());
  if (in.size() > 12) {
    if ((b[12] >> 4) != 2) return fail(why, error::v2_version);
    if ((b[12] & 0xf) > 1) return fail(why, error::v2_command);
  }
  if (in.size() > 13) {
    const unsigned family = b[13] >> 4, transport = b[13] & 0xf;
    if (family > 3 || transport > 2) return fail(why, error::v2_family);
  }
  if (in.size() < 16) return result::incomplete;
  const bool proxy = (b[12] & 0xf) == 1;
  const unsigned family = b[13] >> 4, transport = b[13] & 0xf;
  const std::size_t len = be16(b + 14);
  if (16 + len > max_v2_length) return fail(why, error::v2_too_long);
  std::size_t block = 0;
  if (proxy) {
    // A stream's addresses: DGRAM on a TCP connection is a forgery or a bug.
    if (transport == 2) return fail(why, error::v2_family);
    block = family == 1 ? 12 : family == 2 ? 36 : family == 3 ? 216 : 0;
    if (len < block) return fail(why, error::v2_too_short);
  }
  if (in.size() < 16 + len) return result::incomplete;
  out = header{};
  out.version = 2;
  out.length = 16 + len;
  if (!proxy) return result::done;  // LOCAL: the address block means nothing
  for (std::size_t at = 16 + block; at < 16 + len;) {
    if (16 + len - at < 3) return fail(why, error::v2_tlv);
    at += 3 + be16(b + at + 1);
    if (at > 16 + len) return fail(why, error::v2_tlv);
  }
  const unsigned char* a = b + 16;
  if (family == 1) {
    auto& s = reinterpret_cast<sockaddr_in&>(out.source);
    auto& d = reinterpret_cast<sockaddr_in&>(out.destination);
    s.sin_family = d.sin_family = AF_INET;
    std::memcpy(&s.sin_addr, a, 4);
    std::memcpy(&d.sin_addr, a + 4, 4);
    std::memcpy(&s.sin_port, a + 8, 2);  // both in network order already
    std::memcpy(&d.sin_port, a + 10, 2);
    out.local = false;
  } else if (family == 2) {
    auto& s = reinterpret_cast<sockaddr_in6&>(out.source);
    auto& d = reinterpret_cast<sockaddr_in6&>(out.destination);
    s.sin6_family = d.sin6_family = AF_INET6;
    std::memcpy(&s.sin6_addr, a, 16);
    std::memcpy(&d.sin6_addr, a + 16, 16);
    std::memcpy(&s.sin6_port, a + 32, 2);
    std::memcpy(&d.sin6_port, a + 34, 2);
    out.local = false;
  }
  // UNSPEC and UNIX: nothing an access log can use; the connection's own apply.
  return result::done;
}

}  // namespace detail

// Parses the header at the start of `in` (all the bytes received so far).
// done: `out` holds it and out.length bytes of `in` were the header.
// error: `why` says what was wrong; the connection must be closed.
inline result parse(std::string_view in, header& out, error& why) noexcept {
  why = error::none;
  if (in.empty()) return result::incomplete;
  if (in[0] == 'P') return detail::parse_v1(in, out, why);
  if (in[0] == '\r') return detail::parse_v2(in, out, why);
  return detail::fail(why, error::no_header);
}

}  // namespace httpd::proxy_protocol
