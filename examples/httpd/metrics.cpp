// httpd/metrics.cpp: the pool view and the Prometheus exposition (see metrics.hpp).
#include "metrics.hpp"

#include <unistd.h>

#include <cstdio>

#include <prefork/socket.hpp>
#include <prefork/worker.hpp>

#include "routes.hpp"

namespace httpd {

pool_view collect(server& srv, bool with_memory) {
  pool_view v;
  v.master_pid = ::getppid();
  if (!srv.worker) return v;
  const prefork::scoreboard& board = srv.worker->scoreboard();
  const auto now = std::chrono::steady_clock::now();
  v.master = board.master();
  v.started_unix_seconds = std::chrono::duration<double>(v.master.started_unix.time_since_epoch()).count();
  v.uptime_seconds = std::chrono::duration<double>(std::chrono::system_clock::now() - v.master.started_unix).count();
  for (std::size_t i = 0; i < board.size(); ++i) {
    prefork::slot_totals t = board.totals(i);
    for (std::size_t k = 0; k < 6; ++k) v.totals.by_class[k] += t.by_class[k];
    v.totals.bytes_sent += t.bytes_sent;
    v.totals.duration_us += t.duration_us;
    for (std::size_t k = 0; k < prefork::request_bucket_count; ++k) v.totals.buckets[k] += t.buckets[k];
    v.slot_totals.push_back(t);
    prefork::worker_info w = board.slot(i);
    if (w.state == prefork::worker_state::free) continue;
    pool_view::worker_row row;
    row.slot = i;
    double since = std::chrono::duration<double>(now - w.last_tick).count();
    row.seconds_since_tick = since < 0 ? 0 : since;
    if (w.state == prefork::worker_state::busy) ++v.busy;
    if (w.ready()) ++v.ready;
    std::error_code ec;
    if (with_memory && w.pid > 0) row.memory = prefork::read_process_memory(w.pid, ec);
    row.info = std::move(w);
    v.workers.push_back(std::move(row));
  }
  const auto& ls = srv.worker->listeners();
  for (std::size_t i = 0; i < ls.size(); ++i) {
    pool_view::listener_row l;
    l.name = prefork::local_address(ls[i].get());
    l.admin = srv.admin_listener && *srv.admin_listener == i;
    std::error_code ec;
    l.queue = prefork::read_listen_queue(ls[i].get(), ec);
    v.listeners.push_back(std::move(l));
  }
  return v;
}

namespace {

// Label values: backslash, double quote and newline escaped.
std::string label(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

void head(std::string& b, const char* name, const char* type, const char* help) {
  b += "# HELP ";
  b += name;
  b += ' ';
  b += help;
  b += "\n# TYPE ";
  b += name;
  b += ' ';
  b += type;
  b += '\n';
}

void number(std::string& b, double v) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.10g", v);
  b += buf;
}

void sample(std::string& b, const char* name, const std::string& labels, double v) {
  b += name;
  if (!labels.empty()) {
    b += '{';
    b += labels;
    b += '}';
  }
  b += ' ';
  number(b, v);
  b += '\n';
}

void sample(std::string& b, const char* name, const std::string& labels, std::uint64_t v) {
  b += name;
  if (!labels.empty()) {
    b += '{';
    b += labels;
    b += '}';
  }
  b += ' ';
  b += std::to_string(v);
  b += '\n';
}

}  // namespace

void render_metrics(server& srv, reply& out) {
  out.clear();
  pool_view v = collect(srv);
  std::string& b = out.body;
  out.content_type = "text/plain; version=0.0.4; charset=utf-8";

  static const char* classes[6] = {"other", "1xx", "2xx", "3xx", "4xx", "5xx"};
  head(b, "prefork_http_requests_total", "counter",
       "Requests answered (admin routes left out), by scoreboard slot and status class.");
  for (std::size_t i = 0; i < v.slot_totals.size(); ++i) {
    const prefork::slot_totals& t = v.slot_totals[i];
    bool occupied = false;
    for (const auto& w : v.workers) occupied |= w.slot == i;
    if (!occupied && t.requests() == 0) continue;
    for (std::size_t k = 1; k < 6; ++k)
      sample(b, "prefork_http_requests_total", "worker=\"" + std::to_string(i) + "\",code=\"" + classes[k] + "\"",
             t.by_class[k]);
    if (t.by_class[0]) sample(b, "prefork_http_requests_total", "worker=\"" + std::to_string(i) + "\",code=\"other\"", t.by_class[0]);
  }
  head(b, "prefork_http_response_bytes_total", "counter", "Response body bytes sent (admin routes left out).");
  sample(b, "prefork_http_response_bytes_total", "", v.totals.bytes_sent);

  head(b, "prefork_http_request_duration_seconds", "histogram",
       "Time from a request's first byte to its response being sent or queued (admin routes left out).");
  std::uint64_t cumulative = 0;
  for (std::size_t k = 0; k < prefork::request_bucket_count; ++k) {
    cumulative += v.totals.buckets[k];
    std::string le = "+Inf";
    if (k + 1 < prefork::request_bucket_count) {
      char buf[32];
      std::snprintf(buf, sizeof buf, "%g", prefork::request_buckets[k]);
      le = buf;
    }
    sample(b, "prefork_http_request_duration_seconds_bucket", "le=\"" + le + "\"", cumulative);
  }
  sample(b, "prefork_http_request_duration_seconds_sum", "", static_cast<double>(v.totals.duration_us) / 1e6);
  sample(b, "prefork_http_request_duration_seconds_count", "", cumulative);

  head(b, "prefork_listen_queue", "gauge", "Connections waiting in a listener's accept queue.");
  for (const auto& l : v.listeners)
    if (l.queue) sample(b, "prefork_listen_queue", "listener=\"" + label(l.name) + "\"", std::uint64_t{l.queue->queued});
  head(b, "prefork_listen_backlog", "gauge", "The most connections a listener's accept queue holds.");
  for (const auto& l : v.listeners)
    if (l.queue) sample(b, "prefork_listen_backlog", "listener=\"" + label(l.name) + "\"", std::uint64_t{l.queue->backlog});

  head(b, "prefork_workers", "gauge", "Workers ready to serve (idle or busy).");
  sample(b, "prefork_workers", "", std::uint64_t{v.ready});
  head(b, "prefork_workers_busy", "gauge", "Workers serving a connection now.");
  sample(b, "prefork_workers_busy", "", std::uint64_t{v.busy});

  head(b, "prefork_worker_rss_bytes", "gauge", "Resident memory of each worker (Rss, /proc/PID/smaps_rollup).");
  for (const auto& w : v.workers)
    if (w.memory) sample(b, "prefork_worker_rss_bytes", "worker=\"" + std::to_string(w.slot) + "\"", w.memory->rss);
  head(b, "prefork_worker_pss_bytes", "gauge", "Proportional memory of each worker: shared pages divided among sharers.");
  for (const auto& w : v.workers)
    if (w.memory) sample(b, "prefork_worker_pss_bytes", "worker=\"" + std::to_string(w.slot) + "\"", w.memory->pss);
  head(b, "prefork_worker_heartbeat_age_seconds", "gauge", "Seconds since each worker's last heartbeat.");
  for (const auto& w : v.workers)
    sample(b, "prefork_worker_heartbeat_age_seconds", "worker=\"" + std::to_string(w.slot) + "\"", w.seconds_since_tick);

  head(b, "prefork_worker_restarts_total", "counter", "Workers the master replaced, by cause.");
  for (std::size_t k = 0; k < prefork::restart_cause_count; ++k)
    sample(b, "prefork_worker_restarts_total",
           std::string("cause=\"") + prefork::to_string(static_cast<prefork::restart_cause>(k)) + "\"",
           v.master.restarts[k]);
  head(b, "prefork_worker_timeouts_total", "counter", "Workers killed for a silent heartbeat.");
  sample(b, "prefork_worker_timeouts_total", "", v.master.timeouts_killed);
  head(b, "prefork_crash_backoffs_total", "counter", "Respawns delayed because a worker kept dying at once.");
  sample(b, "prefork_crash_backoffs_total", "", v.master.crash_backoffs);
  head(b, "prefork_upgrades_total", "counter", "USR2 upgrades begun (carried from master to master).");
  sample(b, "prefork_upgrades_total", "", v.master.upgrades);
  head(b, "prefork_reloads_total", "counter", "HUP reloads done by this master.");
  sample(b, "prefork_reloads_total", "", v.master.reloads);
  head(b, "prefork_master_start_time_seconds", "gauge", "When this master started, in seconds since the Unix epoch.");
  sample(b, "prefork_master_start_time_seconds", "", v.started_unix_seconds);
}

}  // namespace httpd
