// httpd/spool.hpp: request bodies too large for memory, in an unlinked file.
//
// A body the application takes (app.hpp) and that is larger than its
// body_in_memory() goes, as it arrives, to a file opened with O_TMPFILE in
// $TMPDIR (else /tmp): it has no name, so nothing is left behind when the
// worker closes it or dies. Where the filesystem has no O_TMPFILE, a
// mkostemp file is unlinked at once, to the same effect. Writing to a local
// file does not wait on a client, so an evented worker stays responsive.
#pragma once

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <string>
#include <string_view>

#include <prefork/fd.hpp>

namespace httpd {

inline prefork::fd open_spool() {
  const char* dir = std::getenv("TMPDIR");
  if (!dir || !*dir) dir = "/tmp";
  int f = ::open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (f == -1 && (errno == EOPNOTSUPP || errno == EISDIR || errno == EINVAL)) {
    std::string name = std::string(dir) + "/prefork-httpd-body.XXXXXX";
    f = ::mkostemp(name.data(), O_CLOEXEC);
    if (f != -1) ::unlink(name.c_str());
  }
  return prefork::fd(f);  // empty on failure, errno set
}

// Appends all of data; false on a write error (ENOSPC, say).
inline bool spool_write(int f, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::write(f, data.data(), data.size());
    if (n == -1 && errno == EINTR) continue;
    if (n <= 0) return false;
    data.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

}  // namespace httpd
