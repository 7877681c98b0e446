// libFuzzer target for httpd::proxy_protocol::parse (scripts/fuzz builds and
// runs it).
//
// Checks, besides sanitizer findings: feeding the input as a growing prefix,
// as a worker does, stops at the same result, reason and length as the whole
// input, and never errs earlier than the whole would; a finished header lies
// inside the input and within the version's bound; an error names a reason;
// addresses are given only as INET or INET6, both of the same family; and a
// valid v1 header re-parses the same with anything appended.
#include "httpd/fuzz_check.hpp"
#include "httpd/proxy_protocol.hpp"

#include <cstdint>
#include <string>
#include <string_view>

namespace {

namespace pp = httpd::proxy_protocol;

struct outcome {
  pp::result r = pp::result::incomplete;
  pp::error why = pp::error::none;
  pp::header h;
};

outcome parse(std::string_view in) {
  outcome o;
  // Its own copy, so ASan sees a read past the given bytes.
  const std::string copy(in);
  o.r = pp::parse(copy, o.h, o.why);
  return o;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  const outcome whole = parse(in);
  if (whole.r == pp::result::error) {
    FUZZ_CHECK(whole.why != pp::error::none);
  } else {
    FUZZ_CHECK(whole.why == pp::error::none);
  }
  if (whole.r == pp::result::done) {
    FUZZ_CHECK(whole.h.length > 0 && whole.h.length <= in.size());
    FUZZ_CHECK(whole.h.version == 1 || whole.h.version == 2);
    FUZZ_CHECK(whole.h.length <= (whole.h.version == 1 ? pp::max_v1_length : pp::max_v2_length));
    if (!whole.h.local) {
      const int f = whole.h.source.ss_family;
      FUZZ_CHECK(f == AF_INET || f == AF_INET6);
      FUZZ_CHECK(whole.h.destination.ss_family == f);
    }
    // Only the header's bytes decide: the header alone parses the same.
    const outcome alone = parse(in.substr(0, whole.h.length));
    FUZZ_CHECK(alone.r == pp::result::done && alone.h.length == whole.h.length &&
               alone.h.local == whole.h.local);
  }
  // Growing prefixes, as reads deliver them.
  for (std::size_t n = 0; n < in.size(); ++n) {
    const outcome part = parse(in.substr(0, n));
    if (part.r == pp::result::incomplete) continue;
    FUZZ_CHECK(part.r == whole.r);
    FUZZ_CHECK(part.why == whole.why);
    if (part.r == pp::result::done) FUZZ_CHECK(part.h.length == whole.h.length);
    break;
  }
  return 0;
}
