// httpd/static_files.cpp: resolution beneath ROOT, validators and ranges
// (see static_files.hpp).
#include "static_files.hpp"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <string>

#include <prefork/error.hpp>

#include "http_syntax.hpp"

namespace httpd {
namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

void append_hex(std::string& out, unsigned long long v) {
  char buf[20];
  auto r = std::to_chars(buf, buf + sizeof buf, v, 16);
  out.append(buf, static_cast<std::size_t>(r.ptr - buf));
}

void append_dec(std::string& out, unsigned long long v) {
  char buf[24];
  auto r = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, static_cast<std::size_t>(r.ptr - buf));
}

// Strong validator: changes whenever the file is replaced (inode), resized or
// rewritten (mtime to the nanosecond).
std::string make_etag(const struct stat& st) {
  std::string tag = "\"";
  append_hex(tag, static_cast<unsigned long long>(st.st_ino));
  tag += '-';
  append_hex(tag, static_cast<unsigned long long>(st.st_size));
  tag += '-';
  append_hex(tag, static_cast<unsigned long long>(st.st_mtim.tv_sec) * 1000000000ULL +
                      static_cast<unsigned long long>(st.st_mtim.tv_nsec));
  tag += '"';
  return tag;
}

// If-None-Match uses the weak comparison (RFC 9110 13.1.2): W/ is ignored.
bool none_match_hits(std::string_view header, std::string_view etag) {
  header = trim(header);
  if (header == "*") return true;
  while (!header.empty()) {
    auto comma = header.find(',');
    std::string_view one = trim(header.substr(0, comma));
    if (one.substr(0, 2) == "W/") one.remove_prefix(2);
    if (one == etag) return true;
    if (comma == std::string_view::npos) break;
    header.remove_prefix(comma + 1);
  }
  return false;
}

bool parse_u64(std::string_view s, unsigned long long& out) {
  if (s.empty()) return false;
  auto r = std::from_chars(s.data(), s.data() + s.size(), out);
  return r.ec == std::errc() && r.ptr == s.data() + s.size();
}

enum class range_kind { none, satisfiable, unsatisfiable };

// One "bytes=first-last" range; several ranges or bad syntax are ignored
// (the whole file is a valid answer to any Range, RFC 9110 14.2).
range_kind parse_range(std::string_view header, unsigned long long size, unsigned long long& first,
                       unsigned long long& last) {
  header = trim(header);
  if (header.size() < 6 || !iequals(header.substr(0, 6), "bytes=")) return range_kind::none;
  std::string_view spec = trim(header.substr(6));
  if (spec.find(',') != std::string_view::npos) return range_kind::none;
  auto dash = spec.find('-');
  if (dash == std::string_view::npos) return range_kind::none;
  std::string_view a = trim(spec.substr(0, dash)), b = trim(spec.substr(dash + 1));
  unsigned long long x = 0, y = 0;
  if (a.empty()) {  // suffix: the last y bytes
    if (!parse_u64(b, y)) return range_kind::none;
    if (y == 0 || size == 0) return range_kind::unsatisfiable;
    first = y >= size ? 0 : size - y;
    last = size - 1;
    return range_kind::satisfiable;
  }
  if (!parse_u64(a, x)) return range_kind::none;
  if (b.empty()) {
    y = size == 0 ? 0 : size - 1;
  } else if (!parse_u64(b, y) || y < x) {
    return range_kind::none;
  }
  if (x >= size) return range_kind::unsatisfiable;
  first = x;
  last = y >= size ? size - 1 : y;
  return range_kind::satisfiable;
}

long openat2_syscall(int dir, const char* path, int flags) {
#ifdef SYS_openat2
  open_how how{};
  how.flags = static_cast<unsigned long long>(flags);
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
  return ::syscall(SYS_openat2, dir, path, &how, sizeof how);
#else
  (void)dir, (void)path, (void)flags;
  errno = ENOSYS;
  return -1;
#endif
}

// Without openat2: one component at a time, never following a symlink. The
// caller has made sure ".." never climbs above ROOT, so a walk that follows
// no symlink cannot leave it.
int walk_beneath(int root, const char* relative, int flags) {
  std::string path(relative);
  int dir = ::fcntl(root, F_DUPFD_CLOEXEC, 0);
  if (dir == -1) return -1;
  std::size_t pos = 0;
  for (;;) {
    auto slash = path.find('/', pos);
    bool last = slash == std::string::npos;
    std::string part = path.substr(pos, last ? std::string::npos : slash - pos);
    if (part.empty()) part = ".";
    int next = ::openat(dir, part.c_str(), (last ? flags : O_PATH | O_DIRECTORY | O_CLOEXEC) | O_NOFOLLOW);
    if (next == -1 && last && errno == ELOOP) errno = EXDEV;
    prefork::detail::errno_saver keep;
    ::close(dir);
    if (next == -1 || last) return next;
    dir = next;
    pos = slash + 1;
  }
}

// Whether ".." segments would climb above ROOT ("/a/../b" stays beneath).
bool climbs_out(std::string_view path) {
  int depth = 0;
  while (!path.empty()) {
    auto slash = path.find('/');
    std::string_view seg = path.substr(0, slash);
    if (seg == "..") {
      if (--depth < 0) return true;
    } else if (!seg.empty() && seg != ".") {
      ++depth;
    }
    if (slash == std::string_view::npos) break;
    path.remove_prefix(slash + 1);
  }
  return false;
}

}  // namespace

std::string_view mime_type(std::string_view name) {
  static constexpr std::pair<std::string_view, std::string_view> types[] = {
      {"html", "text/html; charset=utf-8"},    {"htm", "text/html; charset=utf-8"},
      {"css", "text/css; charset=utf-8"},      {"js", "text/javascript; charset=utf-8"},
      {"mjs", "text/javascript; charset=utf-8"}, {"json", "application/json"},
      {"txt", "text/plain; charset=utf-8"},    {"md", "text/markdown; charset=utf-8"},
      {"csv", "text/csv; charset=utf-8"},      {"xml", "application/xml"},
      {"svg", "image/svg+xml"},                {"png", "image/png"},
      {"jpg", "image/jpeg"},                   {"jpeg", "image/jpeg"},
      {"gif", "image/gif"},                    {"webp", "image/webp"},
      {"avif", "image/avif"},                  {"ico", "image/vnd.microsoft.icon"},
      {"woff", "font/woff"},                   {"woff2", "font/woff2"},
      {"ttf", "font/ttf"},                     {"otf", "font/otf"},
      {"wasm", "application/wasm"},            {"pdf", "application/pdf"},
      {"zip", "application/zip"},              {"gz", "application/gzip"},
      {"tar", "application/x-tar"},            {"mp4", "video/mp4"},
      {"webm", "video/webm"},                  {"mp3", "audio/mpeg"},
      {"ogg", "audio/ogg"},                    {"wav", "audio/wav"},
  };
  auto slash = name.rfind('/');
  if (slash != std::string_view::npos) name.remove_prefix(slash + 1);
  auto dot = name.rfind('.');
  if (dot != std::string_view::npos && dot != 0) {
    std::string_view ext = name.substr(dot + 1);
    for (const auto& [e, type] : types)
      if (iequals(e, ext)) return type;
  }
  return "application/octet-stream";
}

document_root::document_root(const std::filesystem::path& root) : path_(root) {
  int raw = ::open(root.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (raw == -1) prefork::throw_system_error("open ROOT " + root.string());
  dir_.reset(raw);
}

int document_root::open_beneath(const char* relative) const {
  int flags = O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK;  // NONBLOCK: a FIFO must not hang us
  static bool have_openat2 = true;
  if (have_openat2) {
    long r = prefork::detail::retry([&] { return openat2_syscall(dir_.get(), relative, flags); });
    if (r >= 0 || errno != ENOSYS) return static_cast<int>(r);
    have_openat2 = false;
  }
  return walk_beneath(dir_.get(), relative, flags);
}

void document_root::serve(std::string_view decoded, std::string_view raw_path, std::string_view query, bool head,
                          const conditions& cond, reply& out) const {
  out.clear();
  if (decoded.empty() || decoded[0] != '/') return out.error(400, "the path must start with '/'", false);
  if (decoded.find('\0') != std::string_view::npos) return out.error(400, "the path holds a NUL byte", false);
  if (climbs_out(decoded)) return out.error(400, "the path climbs above the document root with '..'", false);

  // Relative to ROOT's descriptor: a leading '/' would be absolute.
  std::size_t start = decoded.find_first_not_of('/');
  std::string relative = start == std::string_view::npos ? "." : std::string(decoded.substr(start));
  prefork::fd file(open_beneath(relative.c_str()));
  struct stat st{};
  if (file && ::fstat(file.get(), &st) == -1) return out.error(500, "fstat failed", false);
  if (file && S_ISDIR(st.st_mode)) {
    if (raw_path.empty() || raw_path.back() != '/') {
      out.status = 301;
      // One leading slash only: "//host/dir/" would send the client elsewhere.
      while (raw_path.size() > 1 && raw_path[1] == '/') raw_path.remove_prefix(1);
      out.headers = "Location: ";
      out.headers += raw_path;
      out.headers += '/';
      if (!query.empty()) {
        out.headers += '?';
        out.headers += query;
      }
      out.headers += "\r\n";
      out.content_type = "text/plain; charset=utf-8";
      out.body = "301 Moved Permanently: a directory; its index is at the same path with a trailing slash\n";
      return;
    }
    if (relative.back() != '/') relative += '/';
    relative += "index.html";
    int raw = open_beneath(relative.c_str());
    {
      prefork::detail::errno_saver keep;  // closing the directory must not hide why the open failed
      file.reset(raw);
    }
    if (file && ::fstat(file.get(), &st) == -1) return out.error(500, "fstat failed", false);
  }
  if (!file) {
    switch (errno) {
      case ENOENT:
      case ENOTDIR:
        return out.error(404, "no such file", false);
      case EXDEV:
      case ELOOP:
        return out.error(404, "no such file beneath the document root", false);
      case EACCES:
      case EPERM:
        return out.error(403, "permission denied", false);
      case ENAMETOOLONG:
        return out.error(414, "the path is too long", false);
      default:
        return out.error(500, std::string("open: ") + std::strerror(errno), false);
    }
  }
  if (!S_ISREG(st.st_mode)) return out.error(404, "not a regular file", false);

  std::string etag = make_etag(st);
  std::string last_modified = format_http_date(st.st_mtim.tv_sec);
  out.headers = "ETag: " + etag + "\r\nLast-Modified: " + last_modified + "\r\nAccept-Ranges: bytes\r\n";
  out.content_type = mime_type(relative);

  bool not_modified = false;
  if (!cond.if_none_match.empty()) {
    not_modified = none_match_hits(cond.if_none_match, etag);
  } else if (!cond.if_modified_since.empty()) {
    std::time_t since = 0;
    not_modified = parse_http_date(trim(cond.if_modified_since), since) && st.st_mtim.tv_sec <= since;
  }
  if (not_modified) {
    out.status = 304;
    out.content_type = {};
    out.no_body = true;
    return;
  }

  auto size = static_cast<unsigned long long>(st.st_size);
  unsigned long long first = 0, last = size == 0 ? 0 : size - 1;
  range_kind range = range_kind::none;
  if (!cond.range.empty()) {
    // If-Range: the range only applies to the representation the client has.
    std::string_view ir = trim(cond.if_range);
    bool applies = ir.empty() || (ir.front() == '"' ? ir == etag : ir == last_modified);
    if (applies) range = parse_range(cond.range, size, first, last);
  }
  if (range == range_kind::unsatisfiable) {
    out.error(416, "the range starts beyond the end of the file", false);
    out.headers = "Content-Range: bytes */";
    append_dec(out.headers, size);
    out.headers += "\r\n";
    return;
  }
  if (range == range_kind::satisfiable) {
    out.status = 206;
    out.headers += "Content-Range: bytes ";
    append_dec(out.headers, first);
    out.headers += '-';
    append_dec(out.headers, last);
    out.headers += '/';
    append_dec(out.headers, size);
    out.headers += "\r\n";
    out.file_offset = static_cast<off_t>(first);
    out.file_length = static_cast<std::size_t>(last - first + 1);
  } else {
    out.file_offset = 0;
    out.file_length = static_cast<std::size_t>(size);
  }
  out.file = std::move(file);
  out.no_body = head;
}

}  // namespace httpd
