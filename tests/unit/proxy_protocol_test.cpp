// examples/httpd/proxy_protocol.hpp: v1 and v2 headers as HAProxy sends them,
// every refusal with its reason (truncated, oversized, forged), and any split
// of the input giving the same result as the whole.
#include <doctest/doctest.h>

#include "httpd/proxy_protocol.hpp"

#include <string>
#include <vector>

#include <prefork/socket_address.hpp>

using namespace std::string_literals;
namespace pp = httpd::proxy_protocol;

namespace {

struct outcome {
  pp::result r;
  pp::error why;
  pp::header h;
};

outcome parse(const std::string& in) {
  outcome o{};
  o.r = pp::parse(in, o.h, o.why);
  return o;
}

std::string text(const sockaddr_storage& a) {
  socklen_t size = a.ss_family == AF_INET ? sizeof(sockaddr_in) : sizeof(sockaddr_in6);
  return prefork::socket_address(reinterpret_cast<const sockaddr*>(&a), size).to_string();
}

const std::string sig = "\r\n\r\n\0\r\nQUIT\n"s;

// A v2 header: command byte, family byte, then `body` (addresses, TLVs).
std::string v2(unsigned char cmd, unsigned char fam, const std::string& body) {
  std::string h = sig;
  h += static_cast<char>(cmd);
  h += static_cast<char>(fam);
  h += static_cast<char>(body.size() >> 8);
  h += static_cast<char>(body.size() & 0xff);
  return h + body;
}

std::string inet_block() {
  // 203.0.113.7:51234 -> 10.0.0.2:8080
  return "\xcb\x00\x71\x07\x0a\x00\x00\x02\xc8\x22\x1f\x90"s;
}

std::string inet6_block() {
  std::string b(36, '\0');
  b[0] = '\x20', b[1] = '\x01', b[2] = '\x0d', b[3] = '\xb8', b[15] = '\x07';  // 2001:db8::7
  b[16] = '\x20', b[17] = '\x01', b[18] = '\x0d', b[19] = '\xb8', b[31] = '\x02';
  b[32] = '\x01', b[33] = '\xbb', b[34] = '\x00', b[35] = '\x50';  // 443 -> 80
  return b;
}

// Every prefix of a valid header is incomplete, never an error: a header
// that arrives a byte at a time is accepted.
void check_prefixes_incomplete(const std::string& header) {
  for (std::size_t n = 0; n < header.size(); ++n) {
    INFO("prefix of " << n << " bytes");
    CHECK(parse(header.substr(0, n)).r == pp::result::incomplete);
  }
}

}  // namespace

TEST_CASE("v1 TCP4 gives the addresses and the header's length; what follows is left") {
  std::string h = "PROXY TCP4 203.0.113.7 10.0.0.2 51234 8080\r\n";
  outcome o = parse(h + "GET / HTTP/1.1\r\n");
  REQUIRE(o.r == pp::result::done);
  CHECK(o.why == pp::error::none);
  CHECK(o.h.version == 1);
  CHECK_FALSE(o.h.local);
  CHECK(o.h.length == h.size());
  CHECK(text(o.h.source) == "203.0.113.7:51234");
  CHECK(text(o.h.destination) == "10.0.0.2:8080");
  check_prefixes_incomplete(h);
}

TEST_CASE("v1 TCP6 and UNKNOWN") {
  outcome o = parse("PROXY TCP6 2001:db8::7 2001:db8::2 443 80\r\n");
  REQUIRE(o.r == pp::result::done);
  CHECK(text(o.h.source) == "[2001:db8::7]:443");
  CHECK(text(o.h.destination) == "[2001:db8::2]:80");
  o = parse("PROXY UNKNOWN\r\n");
  REQUIRE(o.r == pp::result::done);
  CHECK(o.h.local);
  CHECK(o.h.length == 15);
  // The rest of an UNKNOWN line is ignored, as specified.
  o = parse("PROXY UNKNOWN ffff:f::1 ffff:f::2 1 2\r\n");
  REQUIRE(o.r == pp::result::done);
  CHECK(o.h.local);
}

TEST_CASE("v1 at exactly 107 bytes is accepted; one more is refused") {
  std::string longest =
      "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 "
      "65535\r\n";
  REQUIRE(longest.size() == 104);
  std::string unknown = "PROXY UNKNOWN " + std::string(91, 'f') + "\r\n";
  REQUIRE(unknown.size() == 107);
  CHECK(parse(longest).r == pp::result::done);
  CHECK(parse(unknown).r == pp::result::done);
  outcome o = parse("PROXY UNKNOWN " + std::string(92, 'f') + "\r\n");
  CHECK(o.r == pp::result::error);
  CHECK(o.why == pp::error::v1_too_long);
  // Refused as soon as 107 bytes hold no CRLF, not when the line ends.
  o = parse("PROXY UNKNOWN " + std::string(93, 'f'));
  CHECK(o.r == pp::result::error);
  CHECK(o.why == pp::error::v1_too_long);
  CHECK(parse("PROXY UNKNOWN " + std::string(92, 'f')).r == pp::result::incomplete);
}

TEST_CASE("v1 forged or malformed headers are refused with the reason") {
  struct bad {
    std::string in;
    pp::error why;
  };
  std::vector<bad> cases = {
      {"GET / HTTP/1.1\r\n", pp::error::no_header},
      {"G", pp::error::no_header},
      {"PROXZ", pp::error::no_header},
      {"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", pp::error::no_header},
      {"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", pp::error::v1_protocol},
      {"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", pp::error::v1_syntax},
      {"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", pp::error::v1_syntax},
      {"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", pp::error::v1_syntax},
      {"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", pp::error::v1_syntax},
      {"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", pp::error::v1_syntax},
      {"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", pp::error::v1_syntax},
      {"PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n", pp::error::v1_syntax},
      {"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"s.insert(12, 1, '\0'), pp::error::v1_syntax},
      {"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", pp::error::v1_port},
      {"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n", pp::error::v1_port},
      {"PROXY TCP4 1.2.3.4 5.6.7.8 1 999999\r\n", pp::error::v1_port},
      {"PROXY TCP4 1.2.3.4 5.6.7.8 1 A\r\n", pp::error::v1_port},
      {"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", pp::error::v1_address},
      {"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", pp::error::v1_address},
      {"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", pp::error::v1_address},
      {"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", pp::error::v1_address},
      {"PROXY TCP6 ::1 ::1::2 1 2\r\n", pp::error::v1_address},
  };
  for (const bad& b : cases) {
    INFO("input: " << b.in);
    outcome o = parse(b.in);
    CHECK(o.r == pp::result::error);
    CHECK(o.why == b.why);
    CHECK(std::string(pp::describe(o.why)).size() > 10);
  }
}

TEST_CASE("v2 PROXY over INET and INET6, with TLVs, and LOCAL") {
  std::string h = v2(0x21, 0x11, inet_block());
  outcome o = parse(h + "GET /");
  REQUIRE(o.r == pp::result::done);
  CHECK(o.h.version == 2);
  CHECK_FALSE(o.h.local);
  CHECK(o.h.length == 28);
  CHECK(text(o.h.source) == "203.0.113.7:51234");
  CHECK(text(o.h.destination) == "10.0.0.2:8080");
  check_prefixes_incomplete(h);

  o = parse(v2(0x21, 0x21, inet6_block()));
  REQUIRE(o.r == pp::result::done);
  CHECK(text(o.h.source) == "[2001:db8::7]:443");
  CHECK(text(o.h.destination) == "[2001:db8::2]:80");

  // TLVs (a NOOP and a unique id) after the addresses.
  std::string tlvs =
      "\x04\x00\x02xx\x05\x00\x03"
      "abc"s;
  o = parse(v2(0x21, 0x11, inet_block() + tlvs));
  REQUIRE(o.r == pp::result::done);
  CHECK(o.h.length == 16 + 12 + tlvs.size());

  // LOCAL: HAProxy's own health check. Whatever the block holds is ignored.
  o = parse(v2(0x20, 0x00, ""));
  REQUIRE(o.r == pp::result::done);
  CHECK(o.h.local);
  CHECK(o.h.length == 16);
  o = parse(v2(0x20, 0x11, "\x01\x02"s));
  REQUIRE(o.r == pp::result::done);
  CHECK(o.h.local);

  // UNSPEC and UNIX with PROXY: no IP address to use.
  o = parse(v2(0x21, 0x00, ""));
  REQUIRE(o.r == pp::result::done);
  CHECK(o.h.local);
  o = parse(v2(0x21, 0x31, std::string(216, 'u')));
  REQUIRE(o.r == pp::result::done);
  CHECK(o.h.local);
}

TEST_CASE("v2 forged, truncated-by-length and oversized headers are refused early") {
  struct bad {
    std::string in;
    pp::error why;
  };
  std::vector<bad> cases = {
      {"\r\n\r\n\0\r\nQUIX"s, pp::error::no_header},
      {"\r\r"s, pp::error::no_header},
      {sig + "\x11"s, pp::error::v2_version},
      {sig + "\x31"s, pp::error::v2_version},
      {sig + "\x22"s, pp::error::v2_command},
      {sig + "\x2f"s, pp::error::v2_command},
      {sig + "\x21\x41"s, pp::error::v2_family},
      {sig + "\x21\x13"s, pp::error::v2_family},
      {v2(0x21, 0x12, inet_block()), pp::error::v2_family},  // DGRAM
      {v2(0x21, 0x11, inet_block().substr(0, 11)), pp::error::v2_too_short},
      {v2(0x21, 0x21, inet6_block().substr(0, 35)), pp::error::v2_too_short},
      {v2(0x21, 0x31, std::string(215, 'u')), pp::error::v2_too_short},
      {v2(0x21, 0x11, inet_block() + "\x04\x00"s), pp::error::v2_tlv},
      {v2(0x21, 0x11, inet_block() + "\x04\x00\x05xx"s), pp::error::v2_tlv},
  };
  for (const bad& b : cases) {
    INFO("case " << &b - cases.data());
    outcome o = parse(b.in);
    CHECK(o.r == pp::result::error);
    CHECK(o.why == b.why);
  }
  // A length beyond the bound is refused from the 16 fixed bytes alone,
  // before any of the body arrives.
  std::string huge = sig + "\x21\x11\xff\xff"s;
  outcome o = parse(huge);
  CHECK(o.r == pp::result::error);
  CHECK(o.why == pp::error::v2_too_long);
  std::string at_bound = v2(0x20, 0x00, std::string(pp::max_v2_length - 16, 'x'));
  CHECK(parse(at_bound).r == pp::result::done);
  o = parse(v2(0x20, 0x00, std::string(pp::max_v2_length - 15, 'x')));
  CHECK(o.why == pp::error::v2_too_long);
  // Truncated: a header whose length promises more than arrived waits.
  CHECK(parse(v2(0x21, 0x11, inet_block()).substr(0, 27)).r == pp::result::incomplete);
}

TEST_CASE("any split of the input gives the same result as the whole") {
  std::vector<std::string> inputs = {
      "PROXY TCP4 203.0.113.7 10.0.0.2 51234 8080\r\nGET",
      v2(0x21, 0x21, inet6_block()) + "GET",
      "PROXY TCP4 1.2.3.4 5.6.7.8 1 080\r\n",
      v2(0x21, 0x11, inet_block() + "\x04\x00\x05xx"s),
  };
  for (const std::string& in : inputs) {
    outcome whole = parse(in);
    // Feeding a growing prefix, as a worker does, stops at the same result
    // and never errs before the whole would.
    for (std::size_t n = 1; n <= in.size(); ++n) {
      outcome part = parse(in.substr(0, n));
      if (part.r == pp::result::incomplete) continue;
      CHECK(part.r == whole.r);
      CHECK(part.why == whole.why);
      CHECK(part.h.length == whole.h.length);
      break;
    }
  }
}
