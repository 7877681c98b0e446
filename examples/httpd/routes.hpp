// httpd/routes.hpp: what the server answers, independent of how the bytes
// travel (the blocking and the evented worker both call route()): the admin
// routes, then the application's handlers (app.hpp; prefork-httpd's /hello,
// /echo and /sleep are its demo application, demo_app.cpp), then static files.
//
//   GET  /_status      the pool at a glance, as HTML or JSON, and the client's address
//   GET  /_metrics     the Prometheus text exposition (metrics.hpp)
//   GET  /_health      200 while serving, 503 once a graceful stop began
//   (these three only on --admin-listen when it is given, and only they there)
//   an application's route: its handler (a 500 if it throws or never answers)
//   GET  anything else a static file beneath ROOT (HEAD too; others 405),
//        unless the application turned static files off (then 404)
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "access_log.hpp"
#include "app.hpp"
#include "cli.hpp"
#include "http_parser.hpp"
#include "response.hpp"
#include "static_files.hpp"

namespace prefork {
class worker;
}

namespace httpd {

// Everything a worker's routes share; one per worker process.
struct server {
  server(const options& o, const std::filesystem::path& root) : opts(o), docs(root) {}

  const options& opts;
  document_root docs;
  access_log log;
  http_clock clock;
  prefork::worker* worker = nullptr;  // set in the worker: the scoreboard and the activity text
  std::optional<std::size_t> admin_listener;  // --admin-listen: its index in worker->listeners()
  bool from_admin = false;                    // the request in hand came on the admin listener
  std::vector<bool> proxy_listeners;          // --proxy-protocol: by index in worker->listeners()
  // The client of the request in hand, for /_status: its address when the
  // worker has it (from accept, or a PROXY header), else its connection.
  const sockaddr_storage* client = nullptr;
  int client_fd = -1;

  bool expects_proxy(std::size_t listener) const {
    return listener < proxy_listeners.size() && proxy_listeners[listener];
  }
  std::string scratch;                // percent-decoded paths, reused
  const app* application = nullptr;   // the handlers; none: static files only
  // A request body spooled to a temporary file by the worker (app.hpp), for
  // the request in hand: route() passes it on when body is empty.
  int body_file = -1;
  std::size_t body_file_size = 0;

  // Bodies larger than this go to a file as they arrive (spool.hpp).
  std::size_t body_in_memory() const { return application ? application->in_memory_limit() : SIZE_MAX; }
};

// Whether the route for this request reads its body. A request with a body
// for any other route is answered without reading it, and closed.
bool accepts_body(server& srv, const request& req);

// Answers one complete request. body: the decoded body (empty if none).
// The reply may point into req's buffer and body: send it before those change.
void route(server& srv, const request& req, std::string_view body, reply& out);

// The scoreboard page, HTML or JSON (exposed for the tests' sake of shape).
void render_status(server& srv, bool json, reply& out);

}  // namespace httpd
