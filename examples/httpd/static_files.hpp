// httpd/static_files.hpp: files beneath ROOT, safely, with the validators and
// ranges HTTP caches and download tools rely on.
//
// A decoded path is opened with openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)
// relative to ROOT's descriptor, so neither ".." nor a symlink can leave ROOT,
// whatever the path looks like; kernels without openat2 (before 5.6) get a
// walk that opens one component at a time with O_NOFOLLOW and refuses every
// symlink. The answer carries the open file for sendfile(2), an ETag made of
// inode, size and mtime, Last-Modified, and a single byte range when asked.
#pragma once

#include <sys/stat.h>

#include <filesystem>
#include <string_view>

#include <prefork/fd.hpp>

#include "response.hpp"

namespace httpd {

// The Content-Type for a file name, by extension; application/octet-stream
// when unknown.
std::string_view mime_type(std::string_view file_name);

class document_root {
 public:
  // Opens ROOT (O_PATH | O_DIRECTORY); throws std::system_error naming it.
  explicit document_root(const std::filesystem::path& root);

  const std::filesystem::path& path() const { return path_; }
  int dir_fd() const { return dir_.get(); }

  // Answers GET or HEAD for `decoded` (percent-decoded once, starting with
  // '/'). raw_path and query are the path as received and the query string,
  // for the Location of a directory redirect. The request fields matter for
  // If-None-Match, If-Modified-Since, Range and If-Range (empty when absent).
  struct conditions {
    std::string_view if_none_match, if_modified_since, range, if_range;
  };
  void serve(std::string_view decoded, std::string_view raw_path, std::string_view query, bool head,
             const conditions& cond, reply& out) const;

 private:
  // Opens `relative` (no leading '/') beneath ROOT; -1 with errno on failure.
  int open_beneath(const char* relative) const;

  std::filesystem::path path_;
  prefork::fd dir_;
};

}  // namespace httpd
