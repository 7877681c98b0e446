// examples/httpd/http_parser_fields.hpp: the header fields of
// httpd::request_parser, and what the few that matter to the server mean.
//
// on_field_line() is the reference check of a whole field line (the line-at-
// a-time path); the fast path in http_parser.hpp checks the same syntax
// itself. Both hand a well-formed field to on_field(), which records it
// and looks at the fields that decide framing and connection
// handling: Host (its shape, RFC 9112 3.2 and RFC 3986 3.2), Content-Length,
// Transfer-Encoding, Connection and Expect. Their combination is judged at
// the end of the head, in on_head_end(). The fields are kept in the
// request's vector as views, written as each line is taken (add_field;
// rebase when the buffer moves). Included by http_parser.hpp; include that.
#pragma once

#include "http_parser.hpp"

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace httpd {

inline parse_result request_parser::on_field_line(std::string_view bytes, std::size_t b,
                                                  std::size_t e) noexcept {
  using detail::is;
  const char* p = bytes.data();
  if (detail::is_ows_char(p[b])) return fail(400, "obsolete line folding in the header");
  if (st_.fields >= lim_.max_fields) return fail(431, "too many header fields");  // before the syntax
  std::size_t i = b;
  while (i < e && is(p[i], detail::c_token)) ++i;
  if (i == e) return fail(400, "header field without a colon");
  if (p[i] != ':') {
    if (detail::is_ows_char(p[i])) return fail(400, "whitespace before the colon of a header field");
    return fail(400, "invalid character in a header field name");
  }
  if (i == b) return fail(400, "empty header field name");
  std::size_t v = i + 1, ve = e;
  while (v < ve && detail::is_ows_char(p[v])) ++v;
  while (ve > v && detail::is_ows_char(p[ve - 1])) --ve;
  const std::size_t bad = v + detail::find_bad_value_char(p + v, ve - v);
  if (bad != ve) {
    if (p[bad] == '\0') return fail(400, "NUL in a header field value");
    if (p[bad] == '\r') return fail(400, "bare CR in a header field value");
    return fail(400, "control character in a header field value");
  }
  return on_field(p, b, i, v, ve);
}

inline parse_result request_parser::on_field(const char* p, std::size_t b, std::size_t i, std::size_t v,
                                             std::size_t ve, bool host_checked) noexcept {
  if (st_.fields >= lim_.max_fields) return fail(431, "too many header fields");
  add_field(p, b, i, v, ve);
  // Only names of these lengths can matter below: one test skips the rest.
  constexpr std::uint32_t special = 1u << 4 | 1u << 6 | 1u << 10 | 1u << 14 | 1u << 17;
  if (host_checked) return on_host(p, v, ve, true);
  if (i - b > 17 || (special >> (i - b) & 1u) == 0) return parse_result::incomplete;
  // Host is in every 1.1 request: checked here, in line, the rest out of line.
  if (i - b == 4 && detail::token_is(p + b, "host")) return on_host(p, v, ve, false);
  return on_special_field(p, b, i, v, ve);
}

inline parse_result request_parser::on_host(const char* p, std::size_t v, std::size_t ve,
                                            bool checked) noexcept {
  if (++st_.host_count > 1) return fail(400, "more than one Host field");
  // Empty is allowed (RFC 9110 7.2); anything else is an authority.
  if (!checked && ve != v && !host_quick(p, v, ve) &&
      !detail::valid_authority(std::string_view(p + v, ve - v)))
    return fail(400, "invalid Host field");
  if (!st_.host_from_target) req_.host = std::string_view(p + v, ve - v);
  return parse_result::incomplete;
}

#if defined(__GNUC__) || defined(__clang__)
__attribute__((noinline))
#endif
inline parse_result
request_parser::on_special_field(const char* p, std::size_t b, std::size_t i, std::size_t v,
                                 std::size_t ve) noexcept {
  const std::string_view name(p + b, i - b), value(p + v, ve - v);

  // Fields that decide framing and connection handling, dispatched on
  // length, then the first byte, so most fields cost a switch and a compare.
  const char first = static_cast<char>(p[b] | 0x20);
  switch (name.size()) {
    case 6:
      if (first != 'e' || !detail::token_is(p + b, "expect")) break;
      st_.framing = true;
      if (iequals(value, "100-continue"))
        req_.expect_continue = true;
      else
        st_.expect_other = true;
      break;
    case 10:
      if (first != 'c' || !detail::token_is(p + b, "connection")) break;
      st_.framing = true;
      detail::for_each_element(value, [this](std::string_view token) {
        if (iequals(token, "close"))
          st_.connection_close = true;
        else if (iequals(token, "keep-alive"))
          st_.connection_keep_alive = true;
        return true;
      });
      break;
    case 14: {
      if (first != 'c' || !detail::token_is(p + b, "content-length")) break;
      st_.framing = true;
      if (value.empty()) return fail(400, "Content-Length is not a number");
      std::uint64_t len = 0;
      for (char c : value) {
        if (c < '0' || c > '9') return fail(400, "Content-Length is not a number");
        if (len > (UINT64_MAX - 9) / 10) return fail(400, "Content-Length is too large");
        len = len * 10 + static_cast<std::uint64_t>(c - '0');
      }
      if (req_.content_length && *req_.content_length != len)
        return fail(400, "conflicting Content-Length fields");
      req_.content_length = len;
      break;
    }
    case 17: {
      if (first != 't' || !detail::token_is(p + b, "transfer-encoding")) break;
      st_.framing = true;
      unsigned before = st_.te_codings;
      bool ok = detail::for_each_element(value, [this](std::string_view coding) {
        // A coding with parameters is well-formed but never chunked (chunked
        // has none): it counts as an unknown coding, so "chunked;q=1" alone
        // is 400 (the last coding is not chunked), and before a chunked, 501.
        const std::size_t semi = coding.find(';');
        const std::string_view bare = detail::trim_ows(coding.substr(0, semi));
        if (!is_token(bare)) return false;
        if (semi != std::string_view::npos && !detail::valid_parameters(coding.substr(semi))) return false;
        ++st_.te_codings;
        st_.te_last_chunked = semi == std::string_view::npos && iequals(bare, "chunked");
        if (st_.te_last_chunked) ++st_.te_chunked;
        return true;
      });
      if (!ok) return fail(400, "invalid Transfer-Encoding");
      if (st_.te_codings == before) return fail(400, "empty Transfer-Encoding");
      break;
    }
    default: break;
  }
  return parse_result::incomplete;
}

inline bool request_parser::host_quick(const char* p, std::size_t v, std::size_t ve) const noexcept {
  std::size_t k = detail::scan_host_simple(p, v, ve);
  if (k == v) return false;
  if (k < ve && p[k] == ':')
    while (++k < ve && p[k] >= '0' && p[k] <= '9') {
    }
  return k == ve;
}

// The end of the head: what the fields say, taken together.
inline parse_result request_parser::on_head_end() noexcept {
  if (req_.minor_version == 1 && st_.host_count == 0)
    return fail(400, "missing Host field (required in HTTP/1.1)");
  if (st_.te_codings != 0) {
    if (req_.minor_version == 0) return fail(400, "Transfer-Encoding in an HTTP/1.0 request");
    if (req_.content_length) return fail(400, "both Content-Length and Transfer-Encoding");
    if (!st_.te_last_chunked) return fail(400, "final transfer coding is not chunked");
    if (st_.te_chunked > 1) return fail(400, "chunked transfer coding applied more than once");
    if (st_.te_codings > 1) return fail(501, "transfer codings other than chunked are not implemented");
    req_.chunked = true;
  }
  if (req_.content_length && *req_.content_length > lim_.max_body) return fail(413, "request body too large");
  if (st_.expect_other) return fail(417, "unsupported expectation (only 100-continue is)");
  if (req_.minor_version == 0) {
    // RFC 9110 10.1.1: a 1.0 client cannot have meant it.
    req_.expect_continue = false;
    req_.keep_alive = st_.connection_keep_alive && !st_.connection_close;
  } else {
    req_.keep_alive = !st_.connection_close;
  }
  st_.at = stage::done;
  return parse_result::done;
}

inline void request_parser::add_field(const char* p, std::size_t b, std::size_t i, std::size_t v,
                                      std::size_t ve) noexcept {
  // Written in place, through the vector's storage: its size grows ahead
  // (grow_fields), so a server whose heads carry about as many fields as
  // the last one's never resizes; trim_fields() cuts it to this head's.
  const std::size_t k = st_.fields++;
  if (k >= req_.fields.size()) grow_fields(k);
  header_field& f = req_.fields.data()[k];
  f.name = std::string_view(p + b, i - b);
  f.value = std::string_view(p + v, ve - v);
}

#if defined(__GNUC__) || defined(__clang__)
__attribute__((noinline))
#endif
inline void
request_parser::grow_fields(std::size_t k) {
  // k < max_fields (on_field checks it first), so this stays within the
  // capacity reserved at construction.
  const std::size_t want = 2 * k + 8;
  req_.fields.resize(want < lim_.max_fields ? want : lim_.max_fields);
}

inline void request_parser::trim_fields() noexcept {
  // Shrinking a vector of trivially destructible views only moves its end.
  if (req_.fields.size() != st_.fields) req_.fields.resize(st_.fields);
}

#if defined(__GNUC__) || defined(__clang__)
__attribute__((noinline))
#endif
inline void
request_parser::rebase(const char* p) noexcept {
  const char* old = got_.base;
  got_.base = p;
  if (old == nullptr) return;
  // Offsets in integers: the old buffer may be gone.
  const auto move = [p, from = reinterpret_cast<std::uintptr_t>(old)](std::string_view& v) {
    if (v.data() != nullptr)
      v = std::string_view(p + (reinterpret_cast<std::uintptr_t>(v.data()) - from), v.size());
  };
  if (st_.at != stage::request_line) {  // else they are the last request's, to be overwritten
    move(req_.method);
    move(req_.target);
    if (!st_.path_slash) move(req_.path);  // else the literal "/"
  }
  move(req_.query);  // reset() clears these two
  move(req_.host);
  header_field* f = req_.fields.data();
  for (std::size_t k = 0; k < st_.fields; ++k) move(f[k].name), move(f[k].value);
}

}  // namespace httpd
