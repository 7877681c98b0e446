// httpd/metrics.hpp: the pool as the admin routes show it.
//
// collect() reads everything once per page: the scoreboard's slots and
// totals, the master's counters, each listener's accept queue and each
// worker's Rss/Pss. The reads that cost system calls (a getsockopt or a
// netlink query per listener, a smaps_rollup per worker) happen here, per
// scrape, never per request. render_metrics() writes the Prometheus text
// exposition format; routes.cpp renders /_status from the same view.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include <prefork/listen_queue.hpp>
#include <prefork/proc_memory.hpp>
#include <prefork/scoreboard.hpp>

#include "response.hpp"

namespace httpd {

struct server;

struct pool_view {
  struct worker_row {
    std::size_t slot = 0;
    prefork::worker_info info;
    std::optional<prefork::process_memory> memory;
    double seconds_since_tick = 0;
  };
  struct listener_row {
    std::string name;
    bool admin = false;
    std::optional<prefork::listen_queue> queue;
  };
  pid_t master_pid = 0;
  double uptime_seconds = 0;
  double started_unix_seconds = 0;
  std::vector<worker_row> workers;               // occupied slots
  std::vector<prefork::slot_totals> slot_totals;  // every slot, occupied or not
  prefork::slot_totals totals;                   // their sum
  prefork::master_totals master;
  std::vector<listener_row> listeners;
  std::size_t busy = 0, ready = 0;
};

pool_view collect(server& srv, bool with_memory = true);

void render_metrics(server& srv, reply& out);

}  // namespace httpd
