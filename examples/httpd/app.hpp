// httpd/app.hpp: the seam between prefork-httpd's server and an application.
//
// An application is a table of handlers, by method and path; the server is
// everything else (the pool, the three worker modes, the parser, keep-alive,
// timeouts, static files, the admin routes /_status /_metrics /_health, the
// command line, signals and upgrades). An application's main() is a few lines:
//
//   int main(int argc, char** argv) {
//     httpd::app a("my-server");
//     a.get("/hello", [](const httpd::app_request&, httpd::response& res) { res.send("hi\n"); });
//     return httpd::run(argc, argv, a);
//   }
//
// Paths match the percent-decoded path of the request: exactly, or, for a
// pattern ending in '*', as a prefix (the longest prefix wins; exact
// patterns first). A path that matches under another method gets 405 with
// Allow. GET handlers answer HEAD too (the server drops the body). A handler
// runs in a worker process, one request at a time; it may block (the
// heartbeat's --timeout still applies), throw (the client gets a 500 and
// the error log a line naming the request), or forget to answer (the same).
//
// The request body is read before the handler runs, and only for handlers
// that take one (POST, PUT, PATCH and DELETE by default): any other request
// with a body is answered without reading it, and "Expect: 100-continue" is
// answered only when the handler will read the body. Bodies up to
// body_in_memory() bytes are in memory (body()); larger ones, up to
// --max-body, are spooled to an unlinked temporary file (body_fd()), so a
// large upload holds neither the worker's memory nor its other connections.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <prefork/fd.hpp>

#include "cli.hpp"
#include "http_parser.hpp"
#include "response.hpp"

namespace prefork {
class worker;
}

namespace httpd {

// What a handler reads. Views are valid while the handler runs.
class app_request {
 public:
  app_request(const request& r, std::string_view decoded_path, std::string_view rest, std::string_view body,
              int body_fd, std::size_t body_size, prefork::worker* w)
      : req_(r), path_(decoded_path), rest_(rest), body_(body), body_fd_(body_fd), body_size_(body_size), w_(w) {}

  std::string_view method() const { return req_.method; }  // "GET", as received
  verb kind() const { return req_.kind; }
  std::string_view target() const { return req_.target; }  // as received: "/a%20b?x=1"
  std::string_view path() const { return path_; }          // percent-decoded: "/a b"
  std::string_view rest() const { return rest_; }          // of path(), after a '*' pattern's prefix
  std::string_view query() const { return req_.query; }    // raw, without '?'
  // A query parameter, percent-decoded ('+' is a space); nullopt if absent.
  std::optional<std::string> param(std::string_view name) const;
  // A header field's value, the name compared case-insensitively; "" if absent.
  std::string_view header(std::string_view name) const;
  bool has_header(std::string_view name) const { return req_.find(name) != nullptr; }
  const std::vector<header_field>& headers() const { return req_.fields; }

  // The body: in memory (body()), or, when larger than body_in_memory(), in
  // a temporary file (body_fd() >= 0, body() empty) of body_size() bytes
  // from offset 0. read_body() gives it as a string either way.
  std::string_view body() const { return body_; }
  int body_fd() const { return body_fd_; }
  std::size_t body_size() const { return body_size_; }
  std::string read_body() const;

  const request& raw() const { return req_; }
  prefork::worker* worker() const { return w_; }  // for status(): what /_status shows

 private:
  const request& req_;
  std::string_view path_, rest_, body_;
  int body_fd_;
  std::size_t body_size_;
  prefork::worker* w_;
};

// What a handler answers. Until a status or a body is set, the request is
// unanswered, and the server answers 500.
class response {
 public:
  explicit response(reply& r) : r_(r) {}

  response& status(int code);
  response& header(std::string_view name, std::string_view value);
  response& content_type(std::string_view type);
  // A body from a string (copied, or moved), and text/plain unless
  // content_type() said otherwise.
  response& send(std::string_view body);
  response& send(std::string&& body);
  response& send(const char* body) { return send(std::string_view(body)); }
  // A body that outlives the response, so nothing is copied: a literal, or
  // the request's own body() (valid until the response is sent).
  response& send_view(std::string_view body);
  // length bytes of an open file from offset, sent with sendfile(2).
  response& send_file(prefork::fd file, off_t offset, std::size_t length);
  // A generated body, sent with chunked encoding: next() appends the next
  // piece to `out` and returns false once the body is complete.
  response& stream(std::function<bool(std::string& out)> next);
  // An error answer whose body says why (text/plain).
  response& error(int code, std::string_view why);

  bool answered() const { return r_.status != 0; }
  reply& raw() { return r_; }

 private:
  reply& r_;
};

using handler = std::function<void(const app_request&, response&)>;

class app {
 public:
  explicit app(std::string name = "prefork-httpd") : name_(std::move(name)) {}

  // Register a handler. pattern: "/exact" or "/prefix/*". get() answers HEAD too.
  app& get(std::string pattern, handler h) { return handle("GET", std::move(pattern), std::move(h)); }
  app& put(std::string pattern, handler h) { return handle("PUT", std::move(pattern), std::move(h)); }
  app& post(std::string pattern, handler h) { return handle("POST", std::move(pattern), std::move(h)); }
  app& del(std::string pattern, handler h) { return handle("DELETE", std::move(pattern), std::move(h)); }
  // method: GET HEAD POST PUT DELETE OPTIONS PATCH; reads_body: whether the
  // server reads the body for this handler (default: POST, PUT, PATCH, DELETE).
  app& handle(std::string_view method, std::string pattern, handler h, std::optional<bool> reads_body = {});

  // Whether GETs no handler takes are static files under ROOT (prefork-httpd's
  // own behaviour); off, they get 404 and ROOT is just the application's
  // directory. On by default.
  app& static_files(bool on) { static_ = on; return *this; }
  // What the usage line calls the operand ("ROOT"), and a paragraph for --help.
  app& operand(std::string name) { operand_ = std::move(name); return *this; }
  app& about(std::string text) { about_ = std::move(text); return *this; }
  // Runs in the master once the options are parsed and checked (ROOT is
  // absolute by then), before workers start: open what the handlers share.
  app& on_start(std::function<void(const options&)> f) { on_start_ = std::move(f); return *this; }
  // Bodies larger than this go to a temporary file (default 1 MiB).
  app& body_in_memory(std::size_t bytes) { in_memory_ = bytes; return *this; }

  const std::string& name() const { return name_; }
  const std::string& operand_name() const { return operand_; }
  const std::string& about_text() const { return about_; }
  bool serves_static() const { return static_; }
  std::size_t in_memory_limit() const { return in_memory_; }
  void start(const options& o) const {
    if (on_start_) on_start_(o);
  }

  // The server's side of the seam. find(): the handler for this method and
  // decoded path (rest: the part after a prefix), or nullptr; allow gets the
  // methods the path has when only others match ("" when none).
  struct route {
    std::string pattern;  // without the '*'
    bool prefix = false;
    unsigned methods = 0;       // bit per verb
    unsigned reading = 0;       // bit per verb whose handler reads the body
    handler by_verb[9];
  };
  const route* find(verb v, std::string_view path, std::string_view& rest) const;
  static std::string allow_of(const route& r);
  bool reads_body(const route& r, verb v) const { return (r.reading >> method_bit(v)) & 1u; }
  static unsigned method_bit(verb v) { return v == verb::head ? 0u : static_cast<unsigned>(v); }

 private:
  std::string name_, operand_ = "ROOT", about_;
  std::vector<route> exact_, prefixes_;  // prefixes_: longest first
  bool static_ = true;
  std::size_t in_memory_ = 1 << 20;
  std::function<void(const options&)> on_start_;
};

// Runs the server with this application: parses argv (all of prefork-httpd's
// options; the operand is ROOT), binds, forks the workers, handles signals
// and upgrades; returns main()'s exit code.
int run(int argc, char** argv, const app& a);

// One line in the error log: "<time> <name>[pid]: text".
void log_line(std::string_view text);

}  // namespace httpd
