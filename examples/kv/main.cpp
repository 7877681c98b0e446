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
#include <cstdio>
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

void put(const httpd::app_request& req, httpd::response& res) {
  if (!good_name(req.rest())) return void(res.error(400, "a name is one non-empty path segment, not . or .."));
  if (req.body_fd() >= 0)  // a large upload, spooled to a file by the server
    store->put_from(req.rest(), req.body_fd(), req.body_size());
  else
    store->put(req.rest(), req.body());
  res.status(204);
}

// A small value comes from the worker's cache, which costs no system call
// while no write happened (atomic_store.hpp says how that stays correct
// across workers and processes); a large one is sent from its file.
void get(const httpd::app_request& req, httpd::response& res) {
  if (!good_name(req.rest())) return void(res.error(400, "a name is one non-empty path segment, not . or .."));
  std::optional<atomic_store::found> v = store->find(req.rest());
  if (!v) return void(res.error(404, "no such name"));
  res.header("ETag", v->etag);  // names the value, whichever worker or process serves it
  std::string_view inm = req.header("If-None-Match");
  if (inm == "*" || inm.find(v->etag) != std::string_view::npos) return void(res.status(304));
  res.content_type("application/octet-stream");
  if (v->file) return void(res.send_file(std::move(v->file), v->offset, v->length));
  res.send(v->value);  // copied: the view is the cache's
}

void del(const httpd::app_request& req, httpd::response& res) {
  if (!good_name(req.rest())) return void(res.error(400, "a name is one non-empty path segment, not . or .."));
  if (!store->del(req.rest())) return void(res.error(404, "no such name"));
  res.status(204);
}

void list(const httpd::app_request&, httpd::response& res) {
  std::string json = "[";
  for (const std::string& name : store->keys()) {
    json += json.size() > 1 ? ",\"" : "\"";
    for (unsigned char c : name) {
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
