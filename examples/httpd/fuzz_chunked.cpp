// libFuzzer target for httpd::chunked_decoder (scripts/fuzz builds and runs it).
//
// Checks, besides sanitizer findings: any split of the input decodes to the
// same data, the same end and the same status; the decoded size never passes
// max_body; a finished body ends with CRLF exactly where the decoder stopped;
// and, using the input as a body instead, encoding it in chunks of varied
// sizes and decoding it gives it back.
#include "httpd/fuzz_check.hpp"
#include "httpd/http_chunked.hpp"

#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

namespace {

struct outcome {
  httpd::chunk_progress::status result = httpd::chunk_progress::incomplete;
  std::string data;
  std::size_t consumed = 0;
  int status = 0;
  bool operator==(const outcome& o) const {
    return result == o.result && data == o.data && consumed == o.consumed && status == o.status;
  }
};

// Feeds `in` in pieces of `step` bytes, each copied to its own buffer, as
// reads would deliver them; stops at done or error like a server.
outcome decode(std::string_view in, std::size_t step, std::uint64_t max_body, const httpd::limits& lim) {
  httpd::chunked_decoder d(max_body, lim);
  outcome o;
  std::size_t at = 0;
  do {
    const std::string piece(in.substr(at, step));
    const httpd::chunk_progress r = d.feed(piece, o.data);
    FUZZ_CHECK(r.consumed <= piece.size());
    o.consumed += r.consumed;
    o.result = r.result;
    if (r.result != httpd::chunk_progress::incomplete) break;
    FUZZ_CHECK(r.consumed == piece.size());
    at += piece.size();
  } while (at < in.size());
  o.status = d.error_status();
  FUZZ_CHECK(d.body_size() == o.data.size());
  FUZZ_CHECK(d.body_size() <= max_body);
  if (o.result == httpd::chunk_progress::error) {
    FUZZ_CHECK(o.status == 400 || o.status == 413 || o.status == 431);
    FUZZ_CHECK(!d.error_reason().empty());
  }
  if (o.result == httpd::chunk_progress::done) {
    FUZZ_CHECK(o.consumed >= 5 && in.substr(o.consumed - 2, 2) == "\r\n");
    // Done is final: more bytes change nothing.
    FUZZ_CHECK(d.feed("0\r\n\r\n", o.data).consumed == 0);
  }
  return o;
}

void check_splits(std::string_view in, std::uint64_t max_body, const httpd::limits& lim) {
  const outcome whole = decode(in, in.size() + 1, max_body, lim);
  FUZZ_CHECK(decode(in, 1, max_body, lim) == whole);
  FUZZ_CHECK(decode(in, 1 + in.size() % 7, max_body, lim) == whole);
}

void check_round_trip(std::string_view body) {
  std::string wire;
  std::size_t size = 1 + body.size() % 5;
  for (std::size_t at = 0; at < body.size(); at += size, size = size * 3 % 17 + 1) {
    std::string_view chunk = body.substr(at, size);
    char line[32];
    std::snprintf(line, sizeof line, "%zx\r\n", chunk.size());
    wire += line;
    wire += chunk;
    wire += "\r\n";
  }
  wire += "0\r\n\r\n";
  const outcome o = decode(wire, 3, body.size(), httpd::limits{});
  FUZZ_CHECK(o.result == httpd::chunk_progress::done);
  FUZZ_CHECK(o.consumed == wire.size());
  FUZZ_CHECK(o.data == body);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  check_splits(in, 1 << 20, httpd::limits{});
  httpd::limits tiny;
  tiny.max_field_line = 12;
  tiny.max_header_bytes = 40;
  tiny.max_fields = 3;
  check_splits(in, 64, tiny);
  check_round_trip(in);
  return 0;
}
