// httpd/routes.cpp: the built-in routes and the static fallback (see routes.hpp).
#include "routes.hpp"

#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstdio>

#include <prefork/pool.hpp>
#include <prefork/socket_address.hpp>

#include "metrics.hpp"

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

bool accepts_body(const request& req) { return req.kind == verb::post && req.path == "/echo"; }

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
           ",\"pss_bytes\":" + (pss.empty() ? "null" : pss) + "}";
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
  const bool close = req.has_body() && !accepts_body(req);
  const bool admin_path = req.path == "/_status" || req.path == "/_metrics" || req.path == "/_health";
  if (srv.admin_listener && admin_path != srv.from_admin) {
    // With --admin-listen the admin routes live there alone.
    out.error(404, srv.from_admin ? "the admin listener serves /_status, /_metrics and /_health only"
                                  : "no such resource",
              close);
    out.admin = srv.from_admin;
    return;
  }
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
  // after, since where the next request starts is unknown (close, above).
  if (req.path == "/sleep") {
    if (!is_get_or_head(req)) return method_not_allowed(out, "GET, HEAD", close);
    sleep_route(srv, req, out);
    out.close = close;
    out.no_body = head;
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
      out.clear();
      const bool stopping = srv.worker && srv.worker->stopping();
      out.status = stopping ? 503 : 200;
      out.content_type = "text/plain; charset=utf-8";
      out.body_view = stopping ? std::string_view("stopping\n") : std::string_view("ok\n");
    }
    out.headers = "Cache-Control: no-store\r\n";
    out.admin = true;
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
