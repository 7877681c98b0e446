// examples/httpd/http_chunked.hpp: a decoder for the chunked transfer coding
// (RFC 9112 section 7.1) of request bodies.
//
// A byte-at-a-time state machine, so it takes any split of its input and never
// needs bytes fed twice: the server hands it whatever arrived after the head,
// then each read's bytes. Chunk sizes are hex with an overflow check, chunk
// extensions are checked against their grammar (RFC 9112 7.1.1) and ignored,
// trailer fields are checked for syntax and ignored,
// and the CRLF after each chunk's data is enforced (a missing one is how
// smuggled requests hide). No allocation beyond what the caller's sink does.
#pragma once

#include "http_syntax.hpp"

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace httpd {

/// What one chunked_decoder::feed() call did.
struct chunk_progress {
  enum status { incomplete, done, error } result;
  std::size_t consumed;  ///< input bytes used; on done, what follows belongs to the next request
};

class chunked_decoder {
 public:
  /// max_body bounds the decoded size (413 beyond it); lim bounds the
  /// chunk-size lines and the trailer section like header lines.
  explicit chunked_decoder(std::uint64_t max_body = limits{}.max_body, const limits& lim = {}) noexcept
      : max_body_(max_body), max_line_(lim.max_field_line), max_trailer_(lim.max_header_bytes),
        max_fields_(lim.max_fields) {}

  /// Decodes from `in`, calling sink(std::string_view data) for each piece of
  /// body data (views into `in`: zero-copy). Stops at the end of the body
  /// (done), at an error, or when `in` is used up (incomplete: feed the next
  /// bytes). After done or error, returns the same result and consumes nothing.
  template <class Sink>
  chunk_progress feed(std::string_view in, Sink&& sink);

  /// The same, appending the data to out.
  chunk_progress feed(std::string_view in, std::string& out) {
    return feed(in, [&out](std::string_view data) { out.append(data.data(), data.size()); });
  }

  /// Decoded body bytes so far.
  std::uint64_t body_size() const noexcept { return body_; }

  /// After error: the status to answer (400, 413 or 431) and why. The
  /// connection must be closed: the rest of the stream cannot be framed.
  int error_status() const noexcept { return status_; }
  std::string_view error_reason() const noexcept { return reason_; }

  /// Ready for the next body.
  void reset() noexcept;

 private:
  enum class state : std::uint8_t {
    size_first,   // the first hex digit of a chunk size
    size,         // more hex digits, or the end of the size
    // chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
    ext_semi,     // BWS before a ';' (after the size or a value)
    ext_name_ws,  // BWS after ';', up to the name's first tchar
    ext_name,     // more of the name
    ext_name_end, // BWS after the name: '=' or ';' must follow
    ext_value_ws, // BWS after '=', up to a token or a quoted-string
    ext_token,    // more of a token value
    ext_quoted,   // inside a quoted-string value
    ext_escape,   // after a backslash in a quoted-string
    ext_closed,   // after the closing quote
    size_lf,      // LF after the chunk-size line
    data,         // chunk data, remaining_ bytes of it
    data_cr,      // CR after the data
    data_lf,      // LF after the data
    trailer_start,  // a trailer line's first byte, or CR of the final empty line
    trailer_name,
    trailer_value,
    trailer_lf,   // LF ending a trailer line
    end_lf,       // LF of the final empty line
    done,
    error,
  };

  // Whether a chunk-size line may end (CR) in the current extension state.
  bool ext_may_end() const noexcept {
    return state_ == state::ext_name || state_ == state::ext_token || state_ == state::ext_closed;
  }
  // One byte of a chunk extension, other than the CR that ends it; false if
  // the grammar forbids it here.
  bool ext_step(char c) noexcept;

  chunk_progress fail(int status, const char* reason, std::size_t consumed) noexcept {
    state_ = state::error;
    status_ = status;
    reason_ = reason;
    return {chunk_progress::error, consumed};
  }

  std::uint64_t max_body_;
  std::size_t max_line_, max_trailer_, max_fields_;
  state state_ = state::size_first;
  std::uint64_t remaining_ = 0;  // data bytes left in this chunk, or the size being read
  std::uint64_t body_ = 0;
  std::size_t line_bytes_ = 0;     // of the current size or trailer line
  std::size_t trailer_bytes_ = 0;  // of the whole trailer section
  std::size_t trailers_ = 0;
  bool last_chunk_ = false;        // the size line being read has size 0
  int status_ = 0;
  const char* reason_ = "";
};

inline void chunked_decoder::reset() noexcept {
  state_ = state::size_first;
  remaining_ = body_ = 0;
  line_bytes_ = trailer_bytes_ = trailers_ = 0;
  last_chunk_ = false;
  status_ = 0;
  reason_ = "";
}

inline bool chunked_decoder::ext_step(char c) noexcept {
  using detail::is;
  const bool ws = detail::is_ows_char(c), tchar = is(c, detail::c_token);
  switch (state_) {
    case state::ext_semi:
      if (c == ';') return state_ = state::ext_name_ws, true;
      return ws;
    case state::ext_name_ws:
      if (tchar) return state_ = state::ext_name, true;
      return ws;
    case state::ext_name:
    case state::ext_name_end:
      if (c == '=') return state_ = state::ext_value_ws, true;
      if (c == ';') return state_ = state::ext_name_ws, true;
      if (ws) return state_ = state::ext_name_end, true;
      return tchar && state_ == state::ext_name;
    case state::ext_value_ws:
      if (c == '"') return state_ = state::ext_quoted, true;
      if (tchar) return state_ = state::ext_token, true;
      return ws;
    case state::ext_token:
    case state::ext_closed:
      if (c == ';') return state_ = state::ext_name_ws, true;
      if (ws) return state_ = state::ext_semi, true;
      return tchar && state_ == state::ext_token;
    case state::ext_quoted:
      // qdtext = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text
      if (c == '"') return state_ = state::ext_closed, true;
      if (c == '\\') return state_ = state::ext_escape, true;
      return is(c, detail::c_value);
    case state::ext_escape:
      // quoted-pair = "\" ( HTAB / SP / VCHAR / obs-text )
      state_ = state::ext_quoted;
      return is(c, detail::c_value);
    default:
      return false;
  }
}

template <class Sink>
chunk_progress chunked_decoder::feed(std::string_view in, Sink&& sink) {
  using detail::is;
  if (state_ == state::done) return {chunk_progress::done, 0};
  if (state_ == state::error) return {chunk_progress::error, 0};
  const char* p = in.data();
  const std::size_t n = in.size();
  std::size_t i = 0;
  while (i < n) {
    const char c = p[i];
    if (state_ >= state::trailer_start && state_ <= state::end_lf) {
      // The trailer goes one byte per step, so its limits are counted here,
      // as for the head: the section with its CRLFs, a line without.
      if (++trailer_bytes_ > max_trailer_) return fail(431, "trailer section too large", i);
      if (c != '\r' && c != '\n' && ++line_bytes_ > max_line_) return fail(431, "trailer field line too long", i);
    }
    switch (state_) {
      case state::size_first: {
        const int h = detail::hex_value(c);
        if (h < 0) return fail(400, "chunk size is not a hex number", i);
        remaining_ = static_cast<std::uint64_t>(h);
        line_bytes_ = 1;
        state_ = state::size;
        ++i;
        break;
      }
      case state::size: {
        const int h = detail::hex_value(c);
        if (h >= 0) {
          if (remaining_ > (UINT64_MAX >> 4)) return fail(400, "chunk size overflows", i);
          remaining_ = remaining_ << 4 | static_cast<std::uint64_t>(h);
          if (++line_bytes_ > max_line_) return fail(400, "chunk size line too long", i);
          ++i;
          break;
        }
        // Refuse at the size line, before taking any of the chunk's data.
        if (remaining_ > max_body_ - body_) return fail(413, "request body too large", i);
        last_chunk_ = remaining_ == 0;
        if (c == '\r') {
          state_ = state::size_lf;
        } else if (c == ';') {
          state_ = state::ext_name_ws;
        } else if (detail::is_ows_char(c)) {  // BWS, which only ';' may follow
          state_ = state::ext_semi;
        } else {
          return fail(400, "invalid character after the chunk size", i);
        }
        if (c != '\r' && ++line_bytes_ > max_line_) return fail(400, "chunk size line too long", i);
        ++i;
        break;
      }
      // Extensions carry nothing we use, but they are held to their grammar:
      // a lenient skip (any byte up to CR) is where two parsers start to
      // disagree about where a chunk's data begins.
      case state::ext_semi:
      case state::ext_name_ws:
      case state::ext_name:
      case state::ext_name_end:
      case state::ext_value_ws:
      case state::ext_token:
      case state::ext_quoted:
      case state::ext_escape:
      case state::ext_closed:
        if (c == '\r' && ext_may_end()) {
          state_ = state::size_lf;
        } else {
          if (!ext_step(c)) return fail(400, "invalid chunk extension", i);
          if (++line_bytes_ > max_line_) return fail(400, "chunk size line too long", i);
        }
        ++i;
        break;
      case state::size_lf:
        if (c != '\n') return fail(400, "chunk size line not ended by CRLF", i);
        state_ = last_chunk_ ? state::trailer_start : state::data;
        line_bytes_ = 0;
        ++i;
        break;
      case state::data: {
        const std::uint64_t left = n - i;
        const std::size_t take = static_cast<std::size_t>(remaining_ < left ? remaining_ : left);
        sink(std::string_view(p + i, take));
        i += take;
        remaining_ -= take;
        body_ += take;
        if (remaining_ == 0) state_ = state::data_cr;
        break;
      }
      case state::data_cr:
        if (c != '\r') return fail(400, "chunk data not followed by CRLF", i);
        state_ = state::data_lf;
        ++i;
        break;
      case state::data_lf:
        if (c != '\n') return fail(400, "chunk data not followed by CRLF", i);
        state_ = state::size_first;
        ++i;
        break;
      // Trailer fields are checked like header fields, then dropped: the
      // server promised nothing about them (RFC 9110 6.5.1).
      case state::trailer_start:
        if (c == '\r') {
          state_ = state::end_lf;
        } else if (detail::is_ows_char(c)) {
          return fail(400, "obsolete line folding in the trailer", i);
        } else if (is(c, detail::c_token)) {
          if (++trailers_ > max_fields_) return fail(431, "too many trailer fields", i);
          state_ = state::trailer_name;
        } else {
          return fail(400, "invalid character in a trailer field name", i);
        }
        ++i;
        break;
      case state::trailer_name:
        if (c == ':') {
          state_ = state::trailer_value;
        } else if (detail::is_ows_char(c)) {
          return fail(400, "whitespace before the colon of a trailer field", i);
        } else if (!is(c, detail::c_token)) {
          return fail(400, c == '\r' ? "trailer field without a colon" : "invalid character in a trailer field name", i);
        }
        ++i;
        break;
      case state::trailer_value:
        if (c == '\r') {
          state_ = state::trailer_lf;
        } else if (!is(c, detail::c_value)) {
          return fail(400, c == '\0' ? "NUL in a trailer field value" : "control character in a trailer field value", i);
        }
        ++i;
        break;
      case state::trailer_lf:
        if (c != '\n') return fail(400, "bare CR in a trailer field", i);
        state_ = state::trailer_start;
        line_bytes_ = 0;
        ++i;
        break;
      case state::end_lf:
        if (c != '\n') return fail(400, "trailer section not ended by CRLF", i);
        state_ = state::done;
        return {chunk_progress::done, i + 1};
      case state::done:
      case state::error:
        return {state_ == state::done ? chunk_progress::done : chunk_progress::error, i};
    }
  }
  return {chunk_progress::incomplete, n};
}

}  // namespace httpd
