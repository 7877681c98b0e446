// httpd/evented_worker.hpp: one epoll loop per worker over the shared
// listening sockets and many non-blocking connections.
//
// The listeners are in every worker's epoll set with EPOLLEXCLUSIVE, so a
// new connection wakes one worker, not all of them. Connections are
// level-triggered: one read per readiness, and a response that fits the
// socket buffer leaves in one write, so a keep-alive request costs one read
// and one write (plus a share of one epoll_wait). Pipelined requests are
// answered in order, as many per write as the buffer holds; a file body goes
// out with sendfile and may take several turns without blocking the loop.
// Bodies are read as they arrive, never by waiting. Timeouts (header,
// keep-alive, stalled body or send) are swept once per turn against the
// nearest deadline, which also bounds epoll_wait. A worker holds at most
// --max-connections, and never more than max_connections() allows; beyond
// that it leaves its listeners out of its epoll set and new connections
// wait in the kernel's queue or go to a sibling. The loop ticks the heartbeat every turn and watches the master's
// control pipe: USR1 reopens logs between events; QUIT stops accepting,
// closes idle keep-alive connections at once, lets requests in hand finish
// with "Connection: close", and returns when none remain or at
// --graceful-timeout. /sleep blocks the whole loop, on purpose.
#pragma once

#include <cstddef>

#include "routes.hpp"

namespace prefork {
class worker;
}

namespace httpd {

// Serves until the worker is asked to stop and its connections are drained
// (or --graceful-timeout passes).
void run_evented(server& srv, prefork::worker& w);

// The per-worker connection cap: from RLIMIT_NOFILE, at most 10000.
std::size_t max_connections();

}  // namespace httpd
