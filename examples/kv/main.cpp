// prefork-kv: an HTTP key-value store, written on prefork-httpd's seam
// (httpd/app.hpp) over examples/atomic_store, the way an application would be.
// Copy this folder to start your own (docs/app.md walks through it).
//
//   prefork-kv [prefork-httpd's options] DIR
//   PUT    /k/NAME   store the body (atomically: a reader gets the old value or the new, whole)
//   GET    /k/NAME   the value, with an ETag; If-None-Match with it: 304
//   DELETE /k/NAME   remove it
//   GET    /k/       the names, as a JSON array
//
// The server brings the rest: workers, keep-alive, timeouts, large uploads
// spooled to disk, /_status /_metrics /_health, signals, upgrades.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string>

#include "app.hpp"
#include "atomic_store.hpp"

namespace {

std::optional<atomic_store::store> store;  // opened in the master by on_start, shared by the workers

// A name is one path segment of bytes: not empty, no '/', no NUL, not "." or
// "..", at most 1000 bytes. The path is percent-decoded already, so
// "%2e%2e" or "a%2Fb" are refused like what they decode to.
bool good_name(std::string_view n) {
  return !n.empty() && n.size() <= 1000 && n != "." && n != ".." && n.find('/') == std::string_view::npos &&
         n.find('\0') == std::string_view::npos;
}

// The key stored at the head of an entry ("LEN\nKEY" then the value), and
// where the value starts; nullopt if the file is not an entry. `head` gets
// the first 16 KiB: all of a small entry, sent from memory.
std::optional<std::pair<std::string, off_t>> entry_key(int file, std::string& head) {
  head.resize(16384);
  ssize_t n = ::pread(file, &head[0], head.size(), 0);
  head.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
  std::size_t nl = head.find('\n'), len = std::strtoul(head.c_str(), nullptr, 10);
  if (nl == std::string::npos || nl + 1 + len > head.size()) return std::nullopt;
  return std::make_pair(head.substr(nl + 1, len), static_cast<off_t>(nl + 1 + len));
}

void put(const httpd::app_request& req, httpd::response& res) {
  if (!good_name(req.rest())) return void(res.error(400, "a name is one non-empty path segment, not . or .."));
  if (req.body_fd() >= 0)  // a large upload, spooled to a file by the server
    store->put_from(req.rest(), req.body_fd(), req.body_size());
  else
    store->put(req.rest(), req.body());
  res.status(204);
}

void get(const httpd::app_request& req, httpd::response& res) {
  if (!good_name(req.rest())) return void(res.error(400, "a name is one non-empty path segment, not . or .."));
  prefork::fd file(::open(store->entry_path(req.rest()).c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  std::optional<std::pair<std::string, off_t>> key;
  std::string head;
  struct stat st {};
  if (file) key = entry_key(file.get(), head);
  if (!key || key->first != req.rest() || ::fstat(file.get(), &st) == -1)
    return void(res.error(404, "no such name"));
  // A put makes a new file, renamed over the old: inode and mtime name a value.
  char etag[80];
  std::snprintf(etag, sizeof etag, "\"%lx-%lx-%lx\"", static_cast<unsigned long>(st.st_ino),
                static_cast<unsigned long>(st.st_mtim.tv_sec), static_cast<unsigned long>(st.st_mtim.tv_nsec));
  res.header("ETag", etag);
  std::string_view inm = req.header("If-None-Match");
  if (inm == "*" || inm.find(etag) != std::string_view::npos) return void(res.status(304));
  res.content_type("application/octet-stream");
  if (static_cast<off_t>(head.size()) == st.st_size)  // read whole already: one write, no sendfile
    return void(res.send(std::move(head.erase(0, static_cast<std::size_t>(key->second)))));
  res.send_file(std::move(file), key->second, static_cast<std::size_t>(st.st_size - key->second));
}

void del(const httpd::app_request& req, httpd::response& res) {
  if (!good_name(req.rest())) return void(res.error(400, "a name is one non-empty path segment, not . or .."));
  if (!store->del(req.rest())) return void(res.error(404, "no such name"));
  res.status(204);
}

void list(const httpd::app_request&, httpd::response& res) {
  std::string json = "[";
  for (const auto& e : std::filesystem::directory_iterator(store->dir())) {
    std::string file = e.path().filename().string();
    if (file.size() != 32 || file.find_first_not_of("0123456789abcdef") != std::string::npos) continue;
    prefork::fd f(::open(e.path().c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
    std::optional<std::pair<std::string, off_t>> key;
    std::string head;
    if (!f || !(key = entry_key(f.get(), head))) continue;  // deleted meanwhile, or not an entry
    json += json.size() > 1 ? ",\"" : "\"";
    for (unsigned char c : key->first) {
      char esc[8];
      if (c == '"' || c == '\\' || c < 0x20) {
        std::snprintf(esc, sizeof esc, "\\u%04x", c);
        json += esc;
      } else {
        json += static_cast<char>(c);
      }
    }
    json += '"';
  }
  res.content_type("application/json").send(json + "]\n");
}

}  // namespace

int main(int argc, char** argv) {
  httpd::app kv("prefork-kv");
  kv.operand("DIR").static_files(false);
  kv.about("A key-value store in DIR: PUT, GET, DELETE /k/NAME; GET /k/ lists the names.");
  kv.on_start([](const httpd::options& o) { store.emplace(o.root); });
  kv.put("/k/*", put).get("/k/*", get).del("/k/*", del).get("/k/", list);
  return httpd::run(argc, argv, kv);
}
