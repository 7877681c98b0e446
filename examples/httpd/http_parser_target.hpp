// examples/httpd/http_parser_target.hpp: the request line of
// httpd::request_parser, and what its target means.
//
// on_request_line() is the reference check of a whole request line (the
// line-at-a-time path; the fast path in http_parser.hpp checks the same
// syntax itself). Both hand a well-formed line to on_request_parts(), which
// knows the method and the four forms of a target (RFC 9112 3.2):
// origin-form "/path?query", absolute-form "http://authority/path",
// authority-form "host:port" for CONNECT only, asterisk-form "*" for OPTIONS
// only. The parts are written to the request as views as they are found.
// Included by http_parser.hpp; include that.
#pragma once

#include "http_parser.hpp"

#include <cstdint>
#include <cstring>
#include <string_view>

namespace httpd {

namespace detail {

inline bool parse_verb(std::string_view m, verb& out) noexcept {
  switch (m.size()) {
    case 3:
      if (m == "GET") return out = verb::get, true;
      if (m == "PUT") return out = verb::put, true;
      break;
    case 4:
      if (m == "HEAD") return out = verb::head, true;
      if (m == "POST") return out = verb::post, true;
      break;
    case 5:
      if (m == "PATCH") return out = verb::patch, true;
      if (m == "TRACE") return out = verb::trace, true;
      break;
    case 6:
      if (m == "DELETE") return out = verb::delete_, true;
      break;
    case 7:
      if (m == "OPTIONS") return out = verb::options, true;
      if (m == "CONNECT") return out = verb::connect, true;
      break;
    default: break;
  }
  return false;
}

}  // namespace detail

inline parse_result request_parser::on_request_line(std::string_view bytes, std::size_t b,
                                                    std::size_t e) noexcept {
  using detail::is;
  const char* p = bytes.data();
  std::size_t i = b;
  while (i < e && is(p[i], detail::c_token)) ++i;
  if (i == b)
    return fail(400, p[b] == ' ' || p[b] == '\t' ? "whitespace before the method" : "method is not a token");
  if (i == e) return fail(400, "request line has no target");
  if (p[i] != ' ') return fail(400, "method is not a token");
  const std::size_t t = i + 1;
  std::size_t j = t;
  while (j < e && is(p[j], detail::c_target)) ++j;
  if (j == t)
    return fail(400, p[t] == ' ' ? "more than one space in the request line" : "invalid request target");
  if (j == e) return fail(400, "request line has no HTTP version");
  if (p[j] != ' ') return fail(400, "invalid character in the request target");
  std::string_view version(p + j + 1, e - j - 1);
  if (version.size() != 8 || version.substr(0, 5) != "HTTP/" || version[5] < '0' || version[5] > '9' ||
      version[6] != '.' || version[7] < '0' || version[7] > '9')
    return fail(400, version.empty()     ? "request line has no HTTP version"
                     : version[0] == ' ' ? "more than one space in the request line"
                                         : "malformed HTTP version");
  if (version[5] != '1') return fail(505, "only HTTP/1.x is supported");
  req_.minor_version = version[7] == '0' ? 0 : 1;
  return on_request_parts(p, b, i, t, j, false);
}
inline parse_result request_parser::on_request_parts(const char* p, std::size_t b, std::size_t i,
                                                     std::size_t t, std::size_t j, bool fragment_checked,
                                                     int kind) noexcept {
  if (kind >= 0)
    req_.kind = static_cast<verb>(kind);
  else if (!detail::parse_verb(std::string_view(p + b, i - b), req_.kind))
    return fail(501, "unknown method");
  req_.method = std::string_view(p + b, i - b);
  req_.target = std::string_view(p + t, j - t);
  std::string_view target(p + t, j - t);
  if (!fragment_checked && target.find('#') != std::string_view::npos)
    return fail(400, "fragment in the request target");

  if (req_.kind == verb::connect) {  // authority-form, and only there
    if (!detail::valid_authority(target, detail::port_rule::required))
      return fail(400, "CONNECT needs a host:port target");
    req_.host = target;
    st_.host_from_target = true;
    req_.path = std::string_view();
    return parse_result::incomplete;
  }
  std::size_t path_begin = t;  // origin-form
  if (target[0] != '/') {
    if (target == "*") {
      if (req_.kind != verb::options) return fail(400, "asterisk-form target is only for OPTIONS");
      req_.path = target;
      return parse_result::incomplete;
    }
    // absolute-form: scheme "://" authority [path-abempty] ["?" query]
    std::size_t colon = target.find("://");
    std::string_view scheme = target.substr(0, colon);
    if (colon == std::string_view::npos || !(iequals(scheme, "http") || iequals(scheme, "https")))
      return fail(400, "invalid request target");
    std::size_t a = colon + 3, z = a;
    while (z < target.size() && target[z] != '/' && target[z] != '?') ++z;
    std::string_view authority = target.substr(a, z - a);
    if (authority.empty()) return fail(400, "absolute target without a host");
    if (authority.find('@') != std::string_view::npos)
      return fail(400, "user information in the request target");
    if (!detail::valid_authority(authority)) return fail(400, "invalid host in the request target");
    req_.host = authority;
    st_.host_from_target = true;
    path_begin = t + z;
  }
  set_path_query(p, path_begin, j);
  return parse_result::incomplete;
}

inline void request_parser::set_path_query(const char* p, std::size_t path_begin, std::size_t j) noexcept {
  std::size_t q = path_begin;
  if (j - path_begin < 16) {  // memchr's call costs more than a short loop
    while (q < j && p[q] != '?') ++q;
  } else {
    const void* question = std::memchr(p + path_begin, '?', j - path_begin);
    q = question != nullptr ? static_cast<std::size_t>(static_cast<const char*>(question) - p) : j;
  }
  if (q == path_begin && (q == j || p[q] == '?')) {
    st_.path_slash = true;
    req_.path = std::string_view("/", 1);
  } else {
    req_.path = std::string_view(p + path_begin, q - path_begin);
  }
  if (q < j) req_.query = std::string_view(p + q + 1, j - q - 1);
}
}  // namespace httpd
