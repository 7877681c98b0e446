// httpd/routes.cpp: the built-in routes and the static fallback (see routes.hpp).
#include "routes.hpp"

#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstdio>

#include <prefork/pool.hpp>

namespace httpd {
namespace {

constexpr std::string_view hello_body = "Hello, World!";

bool is_get_or_head(const request& req) { return req.kind == verb::get || req.kind == verb::head; }

void method_not_allowed(reply& out, std::string_view allow, bool close) {
  std::string why = "this resource allows ";
  why += allow;
  out.error(405, why, close);
  out.headers = "Allow: ";
  out.headers += allow;
  out.headers += "\r\n";
}

// The value of `name` in a query string "a=1&b=2", or nullopt.
bool query_param(std::string_view query, std::string_view name, std::string_view& value) {
  while (!query.empty()) {
    auto amp = query.find('&');
    std::string_view pair = query.substr(0, amp);
    auto eq = pair.find('=');
    if (pair.substr(0, eq) == name) {
      value = eq == std::string_view::npos ? std::string_view() : pair.substr(eq + 1);
      return true;
    }
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return false;
}

std::string_view field(const request& req, std::string_view name) {
  const header_field* f = req.find(name);
  return f ? f->value : std::string_view();
}

void sleep_ms(long ms) {
  timespec left{ms / 1000, (ms % 1000) * 1000000L};
  while (::nanosleep(&left, &left) == -1 && errno == EINTR) {
  }
}

void sleep_route(server& srv, const request& req, reply& out) {
  std::string_view text;
  long ms = 0;
  if (!query_param(req.query, "ms", text)) return out.error(400, "/sleep needs ?ms=N", false);
  auto r = std::from_chars(text.data(), text.data() + text.size(), ms);
  if (text.empty() || r.ec != std::errc() || r.ptr != text.data() + text.size() || ms < 0 || ms > 3600000)
    return out.error(400, "ms must be a whole number of milliseconds from 0 to 3600000", false);
  if (srv.worker) srv.worker->status("GET /sleep?ms=" + std::string(text));
  sleep_ms(ms);
  out.content_type = "text/plain; charset=utf-8";
  out.body = "slept " + std::to_string(ms) + " ms\n";
}

void append_escaped(std::string& out, std::string_view s, bool json) {
  for (char c : s) {
    if (json && (c == '"' || c == '\\')) {
      out += '\\';
      out += c;
    } else if (json && static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(c));
      out += buf;
    } else if (!json && (c == '<' || c == '>' || c == '&' || c == '"')) {
      out += c == '<' ? "&lt;" : c == '>' ? "&gt;" : c == '&' ? "&amp;" : "&quot;";
    } else {
      out += c;
    }
  }
}

}  // namespace

bool accepts_body(const request& req) { return req.kind == verb::post && req.path == "/echo"; }

void render_status(server& srv, bool json, reply& out) {
  out.clear();
  std::string& b = out.body;
  auto now = std::chrono::steady_clock::now();
  std::vector<prefork::worker_info> rows;
  if (srv.worker) {
    const prefork::scoreboard& board = srv.worker->scoreboard();
    for (std::size_t i = 0; i < board.size(); ++i) {
      prefork::worker_info w = board.slot(i);
      if (w.state != prefork::worker_state::free) rows.push_back(std::move(w));
    }
  }
  char num[64];
  auto since = [&](const prefork::worker_info& w) {
    double s = std::chrono::duration<double>(now - w.last_tick).count();
    std::snprintf(num, sizeof num, "%.3f", s < 0 ? 0.0 : s);
    return std::string_view(num);
  };
  if (json) {
    out.content_type = "application/json";
    b = "{\"master_pid\":" + std::to_string(::getppid()) + ",\"self_pid\":" + std::to_string(::getpid()) +
        ",\"workers\":[";
    bool first = true;
    for (const auto& w : rows) {
      if (!first) b += ',';
      first = false;
      b += "{\"index\":" + std::to_string(w.index) + ",\"pid\":" + std::to_string(w.pid) +
           ",\"generation\":" + std::to_string(w.generation) + ",\"state\":\"" + prefork::to_string(w.state) +
           "\",\"requests\":" + std::to_string(w.requests) + ",\"seconds_since_tick\":";
      b += since(w);
      b += ",\"activity\":\"";
      append_escaped(b, w.activity, true);
      b += "\"}";
    }
    b += "]}\n";
    return;
  }
  out.content_type = "text/html; charset=utf-8";
  b = "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>prefork-httpd status</title>"
      "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
      "td,th{border:1px solid #ccc;padding:.3em .8em;text-align:left}th{background:#eee}</style>"
      "</head><body>\n<h1>prefork-httpd</h1>\n<p>master PID " +
      std::to_string(::getppid()) + ", " + std::to_string(rows.size()) +
      " workers</p>\n<table>\n<tr><th>worker</th><th>PID</th><th>generation</th><th>state</th>"
      "<th>requests</th><th>seconds since last tick</th><th>activity</th></tr>\n";
  for (const auto& w : rows) {
    b += "<tr><td>" + std::to_string(w.index) + "</td><td>" + std::to_string(w.pid) + "</td><td>" +
         std::to_string(w.generation) + "</td><td>" + prefork::to_string(w.state) + "</td><td>" +
         std::to_string(w.requests) + "</td><td>";
    b += since(w);
    b += "</td><td>";
    append_escaped(b, w.activity, false);
    b += "</td></tr>\n";
  }
  b += "</table>\n</body></html>\n";
}

void route(server& srv, const request& req, std::string_view body, reply& out) {
  out.clear();
  const bool head = req.kind == verb::head;
  if (req.path == "/hello") {
    if (!is_get_or_head(req)) return method_not_allowed(out, "GET, HEAD", req.has_body());
    out.content_type = "text/plain";
    out.body_view = hello_body;
    out.no_body = head;
    return;
  }
  if (req.path == "/echo") {
    if (req.kind != verb::post) return method_not_allowed(out, "POST", req.has_body());
    std::string_view type = field(req, "Content-Type");
    out.content_type = type.empty() ? std::string_view("application/octet-stream") : type;
    out.body_view = body.data() ? body : std::string_view("", 0);
    return;
  }
  // Any other route answers without reading a body: the connection closes
  // after, since where the next request starts is unknown.
  const bool close = req.has_body();
  if (req.path == "/sleep") {
    if (!is_get_or_head(req)) return method_not_allowed(out, "GET, HEAD", close);
    sleep_route(srv, req, out);
    out.close = close;
    out.no_body = head;
    return;
  }
  if (req.path == "/_status") {
    if (!is_get_or_head(req)) return method_not_allowed(out, "GET, HEAD", close);
    std::string_view format;
    bool json = (query_param(req.query, "format", format) && format == "json") ||
                field(req, "Accept").find("application/json") != std::string_view::npos;
    render_status(srv, json, out);
    out.headers = "Cache-Control: no-store\r\n";
    out.close = close;
    out.no_body = head;
    return;
  }
  if (!is_get_or_head(req)) return method_not_allowed(out, "GET, HEAD", close);
  if (req.path.empty() || req.path[0] != '/') return out.error(400, "the target must be a path starting with '/'", close);
  if (!percent_decode(req.path, srv.scratch))
    return out.error(400, "the path has a bad percent escape or an encoded NUL (%00)", close);
  document_root::conditions cond{field(req, "If-None-Match"), field(req, "If-Modified-Since"), field(req, "Range"),
                                 field(req, "If-Range")};
  srv.docs.serve(srv.scratch, req.path, req.query, head, cond, out);
  if (close) out.close = true;
}

}  // namespace httpd
