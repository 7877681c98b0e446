// examples/httpd/http_parser.hpp: the HTTP/1.1 request parser of prefork-httpd.
//
// An incremental, zero-copy parser of request heads (RFC 9112). Including it
// also brings the chunked body decoder (http_chunked.hpp) and the helpers a
// server needs around both (http_syntax.hpp: limits, percent decoding, target
// splitting). No syscalls, no allocation per request: the parser reads the
// bytes the server has buffered and hands back string_views into them. Its
// inner loops use SSE2 or AVX2 where the build allows (http_scan.hpp).
// What each line means is in two parts it includes: http_parser_target.hpp
// (the request line and its target) and http_parser_fields.hpp (the fields,
// Host and the framing fields); this file is the request, the parser's
// state, and the pass over a head that drives both.
// It is strict where leniency lets two parsers disagree about
// where a message ends (request smuggling): CRLF line ends only, no obs-fold,
// no whitespace before the colon, one unambiguous framing per request.
//
// Usage, per connection:
//
//   httpd::request_parser parser(limits);
//   // the buffer holds the request from its first byte; feed it as it grows
//   switch (parser.parse(std::string_view(buf.data(), buf.size()))) {
//     case parse_result::incomplete: read more, call parse() again with the grown buffer
//     case parse_result::error: answer parser.error_status() with parser.error_reason()
//                               as the body, then close the connection
//     case parse_result::done: parser.get() is the request; the body (if any)
//                              starts at parser.header_length()
//   }
//   // after the response: drop header_length() + body bytes from buf, parser.reset()
#pragma once

#include "http_chunked.hpp"
#include "http_scan.hpp"
#include "http_syntax.hpp"

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string_view>
#include <vector>

namespace httpd {

/// The methods the parser knows. Any other well-formed token is answered 501;
/// which of these the server accepts is the server's business.
enum class verb : std::uint8_t { get, head, post, put, delete_, options, patch, trace, connect };

/// One header field as received: the name with its original case, the value
/// without leading and trailing whitespace.
struct header_field {
  std::string_view name, value;
};

/// A parsed request head. Every string_view points into the buffer passed to
/// the last request_parser::parse() call; it stays valid until that buffer is
/// modified, moved or freed, or the parser is reset.
struct request {
  std::string_view method;  ///< as received, e.g. "GET"
  verb kind = verb::get;
  std::string_view target;           ///< the request-target as received
  std::string_view path;             ///< of the target, still percent-encoded; "/" for "http://h";
                                     ///< "*" for asterisk-form; empty for CONNECT's authority-form
  std::string_view query;            ///< after '?', without it; empty when there is none
  int minor_version = 1;             ///< 0 for HTTP/1.0; 1 for 1.1 and later 1.x (answer them as 1.1)
  std::vector<header_field> fields;  ///< in order received (capacity reserved once: no allocation)
  std::string_view host;             ///< the authority of an absolute-form target, else the Host field
  std::optional<std::uint64_t> content_length;  ///< set when Content-Length was sent
  bool chunked = false;                         ///< the body is chunked: decode it with chunked_decoder
  bool keep_alive = true;        ///< 1.1: unless "Connection: close"; 1.0: only with "keep-alive"
  bool expect_continue = false;  ///< 1.1 "Expect: 100-continue": send 100 before reading the body

  /// Whether a body follows the head (Content-Length > 0, or chunked).
  bool has_body() const noexcept { return chunked || (content_length && *content_length != 0); }

  /// The first field with this name (ASCII case-insensitive), or nullptr.
  const header_field* find(std::string_view name) const noexcept;
};

enum class parse_result { incomplete, done, error };

/// Parses one request head at a time. Fed the same buffer, grown, on each call:
/// it remembers how far it scanned, so calling parse() after every read() costs
/// O(new bytes) however the bytes are split (one at a time works). The server
/// may reallocate the buffer between calls as long as the bytes already fed
/// stay the same: the views taken so far are re-pointed at the new one.
class request_parser {
 public:
  explicit request_parser(limits lim = {});

  /// bytes: the request from its first byte (leading empty lines allowed), and
  /// possibly more after it (a pipelined body or next request, left alone).
  /// Must start with the bytes given to the previous call. After done or error,
  /// further calls return the same result (done re-points get() at `bytes`).
  parse_result parse(std::string_view bytes);

  /// The request; meaningful once parse() returned done.
  const request& get() const noexcept { return req_; }

  /// Bytes of the head: leading empty lines, request line, fields and the
  /// final empty line. The body, or the next pipelined request, starts here.
  std::size_t header_length() const noexcept { return st_.header_length; }

  /// After error: the status to answer (400, 413, 414, 417, 431, 501, 505) and
  /// a one-line, human-readable reason for the response body ("Content-Length
  /// is not a number"). The connection must be closed after answering: once a
  /// head is rejected, where the next request would start cannot be trusted.
  int error_status() const noexcept { return st_.at == stage::error ? got_.status : 0; }
  std::string_view error_reason() const noexcept { return st_.at == stage::error ? got_.reason : ""; }

  /// Ready for the next request (keeps the capacity it has: no allocation).
  void reset() noexcept;

  const limits& get_limits() const noexcept { return lim_; }

 private:
  enum class stage : std::uint8_t { request_line, fields, done, error };

  parse_result fail(int status, const char* reason) noexcept;
  // parse() past its fast path; tried: fast_head() has just given up on
  // the line at st_.line, so it is not asked again.
  parse_result parse_more(std::string_view bytes, bool tried);
  // The fast path: whole, well-formed lines within the limits, in one pass
  // each. It gives up on anything else, leaving the line to the line-at-a-
  // time path below, which is the reference: so every verdict (and its
  // order of checks) is that path's, however the bytes were split.
  // From st_.line: done, error, or incomplete for "the line at st_.line is the
  // slow path's". Positions stay in registers, members are written on the
  // way out: reading back fresh stores was a good part of a short head's cost.
  // b, fields_begin, at: st_'s line, fields_begin and at, passed in so that
  // a fresh request starts from constants, not from loads of what reset()
  // has just stored (each such load is a store-forwarding delay at the
  // head of the chain of dependent loads that sets a short head's time).
  parse_result fast_head(const char* p, std::size_t n, std::size_t b, std::size_t fields_begin,
                         stage at) noexcept;
  parse_result on_request_line(std::string_view bytes, std::size_t begin, std::size_t end) noexcept;
  // What a request line means, once its syntax is known good: method [b, i),
  // target [t, j); fragment_checked: the target is known to hold no '#'.
  // The path and query of a target whose path starts at path_begin and
  // which ends at j.
  void set_path_query(const char* p, std::size_t path_begin, std::size_t j) noexcept;
  // kind: the verb when the caller knows it already, else -1.
  parse_result on_request_parts(const char* p, std::size_t b, std::size_t i, std::size_t t, std::size_t j,
                                bool fragment_checked, int kind = -1) noexcept;
  parse_result on_field_line(std::string_view bytes, std::size_t begin, std::size_t end) noexcept;
  // What a field line means, once its syntax is known good: name [b, i),
  // value [v, ve) without surrounding whitespace.
  // host_checked: the caller knows it is Host with a plain, valid value.
  parse_result on_field(const char* p, std::size_t b, std::size_t i, std::size_t v, std::size_t ve,
                        bool host_checked = false) noexcept;
  // The Host field's value [v, ve).
  // checked: the value is known to be a plain valid host (see fast_head).
  parse_result on_host(const char* p, std::size_t v, std::size_t ve, bool checked) noexcept;
  // Expect, Connection, Content-Length, Transfer-Encoding (or another
  // name of one of their lengths); out of line, as most fields are none.
  parse_result on_special_field(const char* p, std::size_t b, std::size_t i, std::size_t v,
                                std::size_t ve) noexcept;
  parse_result on_head_end() noexcept;
  // Whether [v, ve) is plainly a valid host: letters, digits, '-' and '.'
  // (a reg-name), then perhaps ':' and digits. No means "ask valid_authority".
  bool host_quick(const char* p, std::size_t v, std::size_t ve) const noexcept;
  // The views stored so far point into got_.base: re-point them at p, a
  // copy of that buffer (the server's buffer moved between calls).
  void rebase(const char* p) noexcept;
  // Room for field k in req_.fields, whose size only grows while a head is
  // parsed (within the capacity reserved at construction: no allocation).
  void grow_fields(std::size_t k);
  // Records field k of this head, with its name [b, i) and value [v, ve).
  void add_field(const char* p, std::size_t b, std::size_t i, std::size_t v, std::size_t ve) noexcept;
  // At done: req_.fields holds exactly this head's fields.
  void trim_fields() noexcept;

  limits lim_;
  request req_;
  // What one request's parsing has found so far, in two parts. The first
  // must be zero at the start of a request: reset() clears it, and it is
  // kept within 64 bytes so that is four vector stores (past that, the
  // compilers zero it with "rep stos", whose start-up alone cost as much as
  // parsing a short head). Positions are 32-bit: the constructor keeps a
  // head under 2 GiB.
  struct progress {
    std::uint32_t line;          // where the line being scanned starts
    std::uint32_t scanned;       // how far the search for its LF got
    std::uint32_t fields_begin;  // where the field section starts
    std::uint32_t header_length;
    std::uint32_t te_codings, te_chunked;  // over all Transfer-Encoding lines
    std::uint32_t fields;                  // how many of req_.fields this head has filled
    stage at;                              // stage::request_line is zero
    std::uint8_t host_count, empty_lines;
    bool path_slash;  // the path is "/" though the target has none ("http://h")
    bool host_from_target, te_last_chunked, connection_close, connection_keep_alive, expect_other;
    bool framing;  // an Expect, Connection, Content-Length or Transfer-Encoding field was seen
  };
  static_assert(sizeof(progress) <= 64, "reset() clears progress with a few vector stores");
  progress st_{};
  // The second part is written before it is read: by fail() (reason,
  // status), by parse() (base).
  struct found {
    const char* reason = nullptr;
    int status = 0;
    const char* base = nullptr;  // the buffer the request's views point into
  };
  found got_;
};

// Implementation. A line seen whole for the first time goes through
// fast_head(): one vector scan per run (name, value up to its CR, target),
// the checks that matter, no second pass. Anything it does not take as it
// is (a partial line, an error, an odd but legal shape, a limit reached)
// goes to the line-at-a-time path: each line found with memchr and checked
// once, when its LF has arrived, so re-feeding a growing buffer costs only
// the new bytes. That path is the reference: the fast one only ever agrees
// with it, so no verdict depends on how the bytes were split (the fuzzer
// checks this). Both hand each well-formed line to the same functions
// (on_request_parts, on_field), in the two files included at the end.

inline const header_field* request::find(std::string_view name) const noexcept {
  for (const header_field& f : fields)
    if (iequals(f.name, name)) return &f;
  return nullptr;
}

namespace detail {

// The most empty lines tolerated before a request line (RFC 9112 2.2 asks for
// at least one, for clients that end a POST body with an extra CRLF).
inline constexpr unsigned max_empty_lines = 8;

// The first four (eight) bytes of a literal as one word, in memory order (so on any
// byte order it compares equal to the same bytes loaded from a buffer; the
// compilers fold it to a constant).
inline std::uint32_t word4(const char (&s)[5]) noexcept {
  std::uint32_t w;
  std::memcpy(&w, s, 4);
  return w;
}

inline std::uint64_t word8(const char (&s)[9]) noexcept {
  std::uint64_t w;
  std::memcpy(&w, s, 8);
  return w;
}

// An offset into a head, which the constructor's check keeps under 2 GiB.
constexpr std::uint32_t u32(std::size_t x) noexcept { return static_cast<std::uint32_t>(x); }

}  // namespace detail

inline request_parser::request_parser(limits lim) : lim_(lim) {
  // Positions are kept 32-bit, to keep the per-request state small; a head
  // this large would be a denial of service long before it mattered.
  const std::uint64_t most =
      std::uint64_t{2} * detail::max_empty_lines + lim.max_request_line + lim.max_header_bytes + 4;
  if (lim.max_request_line > 0xffffffffu || lim.max_header_bytes > 0xffffffffu || most > 0x7fffffffu)
    throw std::invalid_argument("httpd::limits: max_request_line + max_header_bytes must stay under 2 GiB");
  req_.fields.reserve(lim.max_fields);
}

inline void request_parser::reset() noexcept {
  // req_.fields keeps its size until the next done or error (see
  // add_field). The request's views are written as each line is taken, in
  // place (no offsets turned into views at the end); method, target and
  // path by every request line, fields by every field line; its kind,
  // version and keep_alive by every head that gets that far; an error
  // clears them all (see fail). What a head may leave unset:
  req_.query = std::string_view();
  req_.host = std::string_view();
  req_.content_length.reset();
  req_.chunked = req_.expect_continue = false;
  st_ = progress{};
}

inline parse_result request_parser::fail(int status, const char* reason) noexcept {
  // No views of an earlier request left in a failed one. One by one: a
  // chained a = b = {} made the compilers store an empty view as two 8-byte
  // halves and read it back as one 16-byte load, which cannot be
  // store-forwarded.
  req_.fields.clear();
  req_.method = std::string_view();
  req_.target = std::string_view();
  req_.path = std::string_view();
  req_.query = std::string_view();
  req_.host = std::string_view();
  st_.at = stage::error;
  got_.status = status;
  got_.reason = reason;
  return parse_result::error;
}

inline parse_result request_parser::parse(std::string_view bytes) {
  // A request not looked at yet, usually whole: the fast path, in line,
  // with none of the bookkeeping of a resumed parse.
  if (st_.scanned == 0 && st_.at == stage::request_line) {
    got_.base = bytes.data();
    const parse_result r = fast_head(bytes.data(), bytes.size(), 0, 0, stage::request_line);
    if (r == parse_result::done) trim_fields();
    if (r != parse_result::incomplete) return r;
    return parse_more(bytes, st_.scanned == st_.line);
  }
  return parse_more(bytes, false);
}

#if defined(__GNUC__) || defined(__clang__)
__attribute__((noinline))
#endif
inline parse_result
request_parser::parse_more(std::string_view bytes, bool tried) {
  if (st_.at == stage::error) return parse_result::error;
  if (bytes.size() < (st_.at == stage::done ? st_.header_length : st_.scanned))
    throw std::logic_error("httpd::request_parser::parse: the buffer lost bytes already parsed");
  if (bytes.data() != got_.base) rebase(bytes.data());
  if (st_.at == stage::done) return parse_result::done;
  const char* p = bytes.data();
  const std::size_t n = bytes.size();
  while (true) {
    if (st_.scanned == st_.line && !tried) {  // a line not looked at yet
      const parse_result r = fast_head(p, n, st_.line, st_.fields_begin, st_.at);
      if (r == parse_result::done) trim_fields();
      if (r != parse_result::incomplete) return r;
    }
    const void* lf = st_.scanned < n ? std::memchr(p + st_.scanned, '\n', n - st_.scanned) : nullptr;
    if (lf == nullptr) {
      st_.scanned = detail::u32(n);
      // Refuse an over-long line as soon as it is certain, not when it ends:
      // a client could otherwise make us buffer without bound.
      if (st_.at == stage::request_line) {
        if (n - st_.line > lim_.max_request_line + 1) return fail(414, "request line too long");
      } else {
        if (n - st_.fields_begin >= lim_.max_header_bytes) return fail(431, "header section too large");
        if (n - st_.line > lim_.max_field_line + 1) return fail(431, "header field line too long");
      }
      return parse_result::incomplete;
    }
    const std::size_t at = static_cast<std::size_t>(static_cast<const char*>(lf) - p);
    const bool crlf = at > st_.line && p[at - 1] == '\r';
    const std::size_t end = crlf ? at - 1 : at, next = at + 1;
    // Limits first, in the order the incomplete case above checks them, so
    // that the verdict does not depend on how the bytes were split.
    if (st_.at == stage::request_line) {
      if (end - st_.line > lim_.max_request_line) return fail(414, "request line too long");
    } else {
      if (next - st_.fields_begin > lim_.max_header_bytes) return fail(431, "header section too large");
      if (end - st_.line > lim_.max_field_line) return fail(431, "header field line too long");
    }
    if (!crlf) return fail(400, "line ended by a bare LF (CRLF required)");
    if (st_.at == stage::request_line) {
      if (end == st_.line) {
        if (++st_.empty_lines > detail::max_empty_lines)
          return fail(400, "too many empty lines before the request line");
      } else {
        if (on_request_line(bytes, st_.line, end) == parse_result::error) return parse_result::error;
        st_.at = stage::fields;
        st_.fields_begin = detail::u32(next);
      }
    } else {
      if (end == st_.line) {
        st_.header_length = detail::u32(next);
        if (on_head_end() == parse_result::error) return parse_result::error;
        trim_fields();
        return parse_result::done;
      }
      if (on_field_line(bytes, st_.line, end) == parse_result::error) return parse_result::error;
    }
    st_.line = st_.scanned = detail::u32(next);
    tried = false;
  }
}

inline parse_result request_parser::fast_head(const char* p, std::size_t n, std::size_t b,
                                              std::size_t fields_begin, stage at) noexcept {
  if (at == stage::request_line) {
    // method SP target SP "HTTP/1." DIGIT CRLF, nothing else; an empty line
    // before it, or anything unusual, is the slow path's.
    // GET, HEAD and POST are nearly every request: one 4-byte compare each
    // finds the method and its kind, with no scan and no second look.
    std::size_t i = b;
    int kind = -1;
    if (n - b >= 5) {
      std::uint32_t w;
      std::memcpy(&w, p + b, 4);
      if (w == detail::word4("GET "))
        i = b + 3, kind = static_cast<int>(verb::get);
      else if (p[b + 4] == ' ' && w == detail::word4("HEAD"))
        i = b + 4, kind = static_cast<int>(verb::head);
      else if (p[b + 4] == ' ' && w == detail::word4("POST"))
        i = b + 4, kind = static_cast<int>(verb::post);
    }
    if (kind < 0) {
      i = detail::scan_name(p, b, n);
      if (i == b || i >= n || p[i] != ' ') return parse_result::incomplete;
    }
    const std::size_t t = i + 1;
    const std::size_t j = detail::scan_target(p, t, n);
    if (j == t || n - j < 11) return parse_result::incomplete;
    std::uint64_t version;  // " HTTP/1." as one word
    std::memcpy(&version, p + j, 8);
    if (version != detail::word8(" HTTP/1.") || p[j + 8] < '0' || p[j + 8] > '9' || p[j + 9] != '\r' ||
        p[j + 10] != '\n' || j + 9 - b > lim_.max_request_line)
      return parse_result::incomplete;
    req_.minor_version = p[j + 8] == '0' ? 0 : 1;
    if (kind >= 0 && p[t] == '/') {  // origin-form of GET, HEAD or POST: nothing more to check
      req_.kind = static_cast<verb>(kind);
      req_.method = std::string_view(p + b, i - b);
      req_.target = std::string_view(p + t, j - t);
      set_path_query(p, t, j);
    } else if (on_request_parts(p, b, i, t, j, true, kind) == parse_result::error) {
      return parse_result::error;
    }
    st_.at = stage::fields;
    b = fields_begin = j + 11;
    st_.fields_begin = detail::u32(b);
  }
  const std::size_t max_header = lim_.max_header_bytes, max_line = lim_.max_field_line;
  while (b < n) {
    if (p[b] == '\r') {  // the empty line ending the head
      if (n - b < 2 || p[b + 1] != '\n' || b + 2 - fields_begin > max_header) break;
      st_.header_length = detail::u32(b + 2);
      // Most heads have none of the fields on_head_end() weighs against
      // each other: then only Host is left to check.
      if (!st_.framing && (st_.host_count != 0 || req_.minor_version == 0)) {
        req_.keep_alive = req_.minor_version != 0;
        st_.at = stage::done;
        return parse_result::done;
      }
      return on_head_end();
    }
    // "Host:" is in nearly every head: known by one compare, not a scan
    // (whose result would be one more link in the chain of dependent
    // loads that sets a short head's time).
    const bool host = n - b >= 5 && p[b + 4] == ':' && detail::token_is(p + b, "host");
    const std::size_t i = host ? b + 4 : detail::scan_name(p, b, n);
    if (i == b || i >= n || p[i] != ':') break;
    std::size_t v = i + 1;
    while (v < n && detail::is_ows_char(p[v])) ++v;
    if (host) {
      // Host in one pass: nearly always a plain reg-name or IPv4 address,
      // perhaps a port, then CRLF. The value scan below would only repeat
      // this; anything else goes that way, to the full authority check.
      std::size_t k = detail::scan_host_simple(p, v, n);
      if (k > v && k < n && p[k] == ':')
        while (++k < n && p[k] >= '0' && p[k] <= '9') {
        }
      if (k > v && n - k >= 2 && p[k] == '\r' && p[k + 1] == '\n' && k + 2 - fields_begin <= max_header &&
          k - b <= max_line) {
        if (st_.host_count == 0 && st_.fields < lim_.max_fields) {
          // on_field() and on_host() in line: the first Host, known valid.
          st_.host_count = 1;
          add_field(p, b, i, v, k);
          if (!st_.host_from_target) req_.host = std::string_view(p + v, k - v);
        } else if (on_field(p, b, i, v, k, true) == parse_result::error) {
          return parse_result::error;
        }
        b = k + 2;
        continue;
      }
    }
    // One pass finds the line's end and checks the value: the first byte
    // below 0x20 or 0x7f must be the CR of CRLF (HTAB is passed over).
    std::size_t e = detail::scan_value(p, v, n);
    while (e < n && p[e] == '\t') e = detail::scan_value(p, e + 1, n);
    if (n - e < 2 || p[e] != '\r' || p[e + 1] != '\n') break;
    if (e + 2 - fields_begin > max_header || e - b > max_line) break;
    std::size_t ve = e;
    while (ve > v && detail::is_ows_char(p[ve - 1])) --ve;
    if (on_field(p, b, i, v, ve) == parse_result::error) return parse_result::error;
    b = e + 2;
  }
  st_.line = st_.scanned = detail::u32(b);
  return parse_result::incomplete;
}

}  // namespace httpd

// What each line means: the fields, and the request line with its target.
#include "http_parser_fields.hpp"
#include "http_parser_target.hpp"
