// prefork-httpd: a Unicorn-style preforking HTTP/1.1 server built on prefork.
//
// This file is its demo application, written on the server's seam (app.hpp)
// as any application would be; the server (run.cpp and the rest) adds the
// static files under ROOT and the admin routes /_status, /_metrics, /_health.
//
//   GET  /hello        "Hello, World!" (the benchmark endpoint; allocates nothing)
//   POST /echo         the request body back, with its Content-Type
//   GET  /sleep?ms=N   sleeps N ms inside the worker, then 200
#include <fcntl.h>
#include <time.h>

#include <cerrno>
#include <charconv>
#include <string>

#include <prefork/error.hpp>
#include <prefork/worker.hpp>

#include "app.hpp"

namespace {

void sleep_ms(long ms) {
  timespec left{ms / 1000, (ms % 1000) * 1000000L};
  while (::nanosleep(&left, &left) == -1 && errno == EINTR) {
  }
}

void hello(const httpd::app_request&, httpd::response& res) {
  res.content_type("text/plain").send_view("Hello, World!");
}

void echo(const httpd::app_request& req, httpd::response& res) {
  std::string_view type = req.header("Content-Type");
  res.content_type(type.empty() ? std::string_view("application/octet-stream") : type);
  if (req.body_fd() >= 0) {  // a large body, spooled to a file: back with sendfile
    prefork::fd copy(::fcntl(req.body_fd(), F_DUPFD_CLOEXEC, 0));
    if (!copy) prefork::throw_system_error("fcntl F_DUPFD_CLOEXEC request body");
    res.send_file(std::move(copy), 0, req.body_size());
  } else {
    res.send_view(req.body());
  }
}

void nap(const httpd::app_request& req, httpd::response& res) {
  std::optional<std::string> text = req.param("ms");
  long ms = 0;
  if (!text) return void(res.error(400, "/sleep needs ?ms=N"));
  auto r = std::from_chars(text->data(), text->data() + text->size(), ms);
  if (text->empty() || r.ec != std::errc() || r.ptr != text->data() + text->size() || ms < 0 || ms > 3600000)
    return void(res.error(400, "ms must be a whole number of milliseconds from 0 to 3600000"));
  if (req.worker()) req.worker()->status("GET /sleep?ms=" + *text);
  sleep_ms(ms);
  res.content_type("text/plain; charset=utf-8").send("slept " + std::to_string(ms) + " ms\n");
}

}  // namespace

int main(int argc, char** argv) {
  httpd::app demo("prefork-httpd");
  demo.get("/hello", hello).post("/echo", echo).get("/sleep", nap);
  return httpd::run(argc, argv, demo);
}
