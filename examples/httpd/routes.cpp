// httpd/routes.cpp: the admin routes, the application's, and the static fallback
// (see routes.hpp).
#include "routes.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>

#include <prefork/pool.hpp>
#include <prefork/socket_address.hpp>

#include "metrics.hpp"

namespace httpd {
namespace {

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

// The application's route for the request, if any: by the path decoded
// (into srv.scratch, only when it has escapes: /hello costs one memchr).
// bad_path: the path has a bad escape or an encoded NUL.
const app::route* find_route(server& srv, const request& req, std::string_view& path, std::string_view& rest,
                             bool& bad_path) {
  bad_path = false;
  if (!srv.application || req.path.empty() || req.path[0] != '/') return nullptr;
  path = req.path;
  if (std::memchr(path.data(), '%', path.size()) != nullptr) {
    if (!percent_decode(req.path, srv.scratch)) {
      bad_path = true;
      return nullptr;
    }
    path = srv.scratch;
  }
  return srv.application->find(req.kind, path, rest);
}

// A handler that threw or never answered: 500 for the request, a line for
// the error log, and the worker goes on.
void handler_failed(const request& req, reply& out, std::string_view why) {
  out.clear();
  out.error(500, "the application failed to answer this request (the error log says why)", false);
  std::string line = "handler error: ";
  line += req.method;
  line += ' ';
  line += req.target;
  line += ": ";
  line += why;
  log_line(line);
}

void call_handler(server& srv, const app::route& r, const request& req, std::string_view path,
                  std::string_view rest, std::string_view body, reply& out) {
  out.status = 0;  // unanswered until the handler says otherwise
  const bool spooled = srv.body_file >= 0 && body.empty();
  app_request in(req, path, rest, spooled ? std::string_view() : body, spooled ? srv.body_file : -1,
                 spooled ? srv.body_file_size : body.size(), srv.worker);
  response res(out);
  try {
    r.by_verb[app::method_bit(req.kind)](in, res);
    if (out.generate && (req.kind == verb::head || req.minor_version == 0)) {
      // No chunked encoding for these: HEAD sends no body, and an HTTP/1.0
      // client gets the body generated here, whole, with its length. Else
      // the worker calls the generator as the socket takes the pieces.
      std::string piece;
      out.body.clear();
      while (req.kind != verb::head && out.generate(piece)) {
        out.body += piece;
        piece.clear();
      }
      out.body += piece;
      out.generate = nullptr;
    }
  } catch (const std::exception& e) {
    return handler_failed(req, out, e.what());
  } catch (...) {
    return handler_failed(req, out, "an exception not derived from std::exception");
  }
  if (out.status == 0) handler_failed(req, out, "the handler returned without answering");
}

// "203.0.113.7:51234": the client as the server sees it, after a PROXY
// header when the listener expects one.
std::string client_text(const server& srv) {
  try {
    if (srv.client && srv.client->ss_family == AF_INET)
      return prefork::socket_address(reinterpret_cast<const sockaddr*>(srv.client), sizeof(sockaddr_in)).to_string();
    if (srv.client && srv.client->ss_family == AF_INET6)
      return prefork::socket_address(reinterpret_cast<const sockaddr*>(srv.client), sizeof(sockaddr_in6)).to_string();
    if (srv.client_fd >= 0) return prefork::socket_address::peer(srv.client_fd).to_string();
  } catch (const std::exception&) {
  }
  return "-";
}

}  // namespace

bool accepts_body(server& srv, const request& req) {
  std::string_view path, rest;
  bool bad = false;
  const app::route* r = find_route(srv, req, path, rest, bad);
  return r && (r->methods >> app::method_bit(req.kind) & 1u) && srv.application->reads_body(*r, req.kind);
}

void render_status(server& srv, bool json, reply& out) {
  out.clear();
  std::string& b = out.body;
  pool_view v = collect(srv);
  char num[64];
  auto fixed = [&](double x, int digits = 3) {
    std::snprintf(num, sizeof num, "%.*f", digits, x);
    return std::string(num);
  };
  const std::uint64_t total = v.totals.requests();
  const double rate = v.uptime_seconds > 0 ? static_cast<double>(total) / v.uptime_seconds : 0;
  const double mean_ms = total ? static_cast<double>(v.totals.duration_us) / 1000.0 / static_cast<double>(total) : 0;
  std::uint64_t restarts = 0;
  for (std::uint64_t r : v.master.restarts) restarts += r;
  auto mem = [](const std::optional<prefork::process_memory>& m, bool pss) -> std::string {
    return m ? std::to_string(pss ? m->pss : m->rss) : std::string();
  };
  if (json) {
    out.content_type = "application/json";
    b = "{\"master_pid\":" + std::to_string(v.master_pid) + ",\"self_pid\":" + std::to_string(::getpid()) +
        ",\"uptime_seconds\":" + fixed(v.uptime_seconds) + ",\"requests\":" + std::to_string(total) +
        ",\"requests_per_second\":" + fixed(rate) + ",\"mean_request_ms\":" + fixed(mean_ms) +
        ",\"bytes_sent\":" + std::to_string(v.totals.bytes_sent) + ",\"by_class\":{";
    static const char* classes[6] = {"other", "1xx", "2xx", "3xx", "4xx", "5xx"};
    for (std::size_t k = 0; k < 6; ++k) {
      if (k) b += ',';
      b += std::string("\"") + classes[k] + "\":" + std::to_string(v.totals.by_class[k]);
    }
    b += "},\"workers_ready\":" + std::to_string(v.ready) + ",\"workers_busy\":" + std::to_string(v.busy) +
         ",\"restarts\":{";
    for (std::size_t k = 0; k < prefork::restart_cause_count; ++k) {
      if (k) b += ',';
      b += std::string("\"") + prefork::to_string(static_cast<prefork::restart_cause>(k)) +
           "\":" + std::to_string(v.master.restarts[k]);
    }
    b += "},\"timeouts_killed\":" + std::to_string(v.master.timeouts_killed) +
         ",\"upgrades\":" + std::to_string(v.master.upgrades) + ",\"reloads\":" + std::to_string(v.master.reloads) +
         ",\"listeners\":[";
    for (std::size_t i = 0; i < v.listeners.size(); ++i) {
      const auto& l = v.listeners[i];
      if (i) b += ',';
      b += "{\"address\":\"";
      append_escaped(b, l.name, true);
      b += "\",\"admin\":";
      b += l.admin ? "true" : "false";
      b += ",\"queued\":" + (l.queue ? std::to_string(l.queue->queued) : std::string("null")) +
           ",\"backlog\":" + (l.queue ? std::to_string(l.queue->backlog) : std::string("null")) + "}";
    }
    b += "],\"workers\":[";
    bool first = true;
    for (const auto& row : v.workers) {
      const prefork::worker_info& w = row.info;
      if (!first) b += ',';
      first = false;
      std::string rss = mem(row.memory, false), pss = mem(row.memory, true);
      // The fields of earlier versions first, in their order; then the new ones.
      b += "{\"index\":" + std::to_string(w.index) + ",\"pid\":" + std::to_string(w.pid) +
           ",\"generation\":" + std::to_string(w.generation) + ",\"state\":\"" + prefork::to_string(w.state) +
           "\",\"requests\":" + std::to_string(w.requests) +
           ",\"seconds_since_tick\":" + fixed(row.seconds_since_tick) + ",\"activity\":\"";
      append_escaped(b, w.activity, true);
      b += "\",\"slot\":" + std::to_string(row.slot) + ",\"rss_bytes\":" + (rss.empty() ? "null" : rss) +
           ",\"pss_bytes\":" + (pss.empty() ? "null" : pss) +
           ",\"mold\":" + (w.state == prefork::worker_state::mold ? "true" : "false") + "}";
    }
    b += "],\"client\":\"";
    append_escaped(b, client_text(srv), true);
    b += "\"}\n";
    return;
  }
  auto mib = [&](const std::optional<prefork::process_memory>& m, bool pss) {
    if (!m) return std::string("?");
    return fixed(static_cast<double>(pss ? m->pss : m->rss) / 1048576.0, 1) + " MiB";
  };
  out.content_type = "text/html; charset=utf-8";
  b = "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"5\">"
      "<title>prefork-httpd status</title>"
      "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1.5em}"
      "td,th{border:1px solid #ccc;padding:.3em .8em;text-align:left}th{background:#eee}"
      "td.n{text-align:right}.busy{background:#ffe9b3}.stopping{background:#f6c6c6}"
      "dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dt{font-weight:bold}"
      "</style></head><body>\n<h1>prefork-httpd</h1>\n<dl>\n<dt>master PID</dt><dd>" +
      std::to_string(v.master_pid) + "</dd>\n<dt>uptime</dt><dd>" + fixed(v.uptime_seconds, 0) +
      " s</dd>\n<dt>requests</dt><dd>" + std::to_string(total) + " (" + fixed(rate, 2) +
      " per second since start, mean " + fixed(mean_ms) + " ms)</dd>\n<dt>by status</dt><dd>2xx " +
      std::to_string(v.totals.by_class[2]) + ", 3xx " + std::to_string(v.totals.by_class[3]) + ", 4xx " +
      std::to_string(v.totals.by_class[4]) + ", 5xx " + std::to_string(v.totals.by_class[5]) +
      "</dd>\n<dt>bytes sent</dt><dd>" + std::to_string(v.totals.bytes_sent) + "</dd>\n<dt>workers</dt><dd>" +
      std::to_string(v.ready) + " ready, " + std::to_string(v.busy) + " busy</dd>\n<dt>restarts</dt><dd>";
  for (std::size_t k = 0; k < prefork::restart_cause_count; ++k) {
    if (k) b += ", ";
    b += std::string(prefork::to_string(static_cast<prefork::restart_cause>(k))) + " " +
         std::to_string(v.master.restarts[k]);
  }
  b += "</dd>\n<dt>upgrades, reloads</dt><dd>" + std::to_string(v.master.upgrades) + ", " +
       std::to_string(v.master.reloads) + "</dd>\n<dt>you</dt><dd>";
  append_escaped(b, client_text(srv), false);
  b += "</dd>\n</dl>\n<h2>Listen queues</h2>\n<table>\n"
       "<tr><th>listener</th><th>queued</th><th>backlog</th></tr>\n";
  for (const auto& l : v.listeners) {
    b += "<tr><td>";
    append_escaped(b, l.name, false);
    if (l.admin) b += " (admin)";
    b += "</td><td class=\"n\">" + (l.queue ? std::to_string(l.queue->queued) : std::string("?")) +
         "</td><td class=\"n\">" + (l.queue ? std::to_string(l.queue->backlog) : std::string("?")) + "</td></tr>\n";
  }
  b += "</table>\n<h2>Workers</h2>\n<table>\n<tr><th>worker</th><th>PID</th><th>generation</th><th>state</th>"
       "<th>requests</th><th>Pss</th><th>Rss</th><th>seconds since heartbeat</th><th>current request</th></tr>\n";
  for (const auto& row : v.workers) {
    const prefork::worker_info& w = row.info;
    b += std::string("<tr class=\"") + prefork::to_string(w.state) + "\"><td>" + std::to_string(w.index) +
         "</td><td>" + std::to_string(w.pid) + "</td><td>" + std::to_string(w.generation) + "</td><td>" +
         prefork::to_string(w.state) + "</td><td class=\"n\">" + std::to_string(w.requests) +
         "</td><td class=\"n\">" + mib(row.memory, true) + "</td><td class=\"n\">" + mib(row.memory, false) +
         "</td><td class=\"n\">" + fixed(row.seconds_since_tick) + "</td><td>";
    append_escaped(b, w.activity, false);
    b += "</td></tr>\n";
  }
  b += "</table>\n<p>Refreshes every 5 s. Also as <a href=\"?format=json\">JSON</a> and "
       "<a href=\"/_metrics\">Prometheus metrics</a>.</p>\n</body></html>\n";
}

void route(server& srv, const request& req, std::string_view body, reply& out) {
  out.clear();
  const bool head = req.kind == verb::head;
  const bool close = req.has_body() && !accepts_body(srv, req);
  const bool admin_path = req.path == "/_status" || req.path == "/_metrics" || req.path == "/_health";
  if (srv.admin_listener && admin_path != srv.from_admin) {
    // With --admin-listen the admin routes live there alone.
    out.error(404, srv.from_admin ? "the admin listener serves /_status, /_metrics and /_health only"
                                  : "no such resource",
              close);
    out.admin = srv.from_admin;
    return;
  }
  if (admin_path) {
    if (!is_get_or_head(req)) return method_not_allowed(out, "GET, HEAD", close);
    if (req.path == "/_status") {
      std::string_view format;
      bool json = (query_param(req.query, "format", format) && format == "json") ||
                  field(req, "Accept").find("application/json") != std::string_view::npos;
      render_status(srv, json, out);
    } else if (req.path == "/_metrics") {
      render_metrics(srv, out);
    } else {
      // The master's stop, not this worker's: a worker retired by HUP or by
      // an upgrade's hand-over stops while the service goes on.
      out.clear();
      const bool stopping = srv.worker && srv.worker->scoreboard().master_stopping();
      struct stat st {};
      const bool draining =
          !stopping && !srv.opts.drain_file.empty() && ::stat(srv.opts.drain_file.c_str(), &st) == 0;
      out.status = stopping || draining ? 503 : 200;
      out.content_type = "text/plain; charset=utf-8";
      out.body_view = stopping ? std::string_view("stopping\n")
                      : draining ? std::string_view("draining\n")
                                 : std::string_view("ok\n");
    }
    out.headers = "Cache-Control: no-store\r\n";
    out.admin = true;
    out.close = close;
    out.no_body = head;
    return;
  }
  std::string_view path, rest;
  bool bad_path = false;
  if (const app::route* r = find_route(srv, req, path, rest, bad_path)) {
    if (!(r->methods >> app::method_bit(req.kind) & 1u)) return method_not_allowed(out, app::allow_of(*r), close);
    call_handler(srv, *r, req, path, rest, body, out);
    if (close) out.close = true;
    return;
  }
  if (srv.application && !srv.application->serves_static()) {
    if (bad_path) return out.error(400, "the path has a bad percent escape or an encoded NUL (%00)", close);
    return out.error(404, "no such resource", close);
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
