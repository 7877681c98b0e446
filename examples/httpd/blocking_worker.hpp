// httpd/blocking_worker.hpp: Unicorn's contract. A worker accepts one
// connection, reads one request, answers it and closes; slow clients are a
// reverse proxy's business.
//
// The common path costs four system calls: accept4 on the non-blocking
// listener (prefork::worker::accept() tries a queued connection first, and
// marks the worker busy on the scoreboard), read, write (send), close. Only
// when nothing is queued does accept() poll the listeners and the master's
// control pipe, ticking the heartbeat; while connections keep coming it
// reads the control pipe at most ten times a second, so a graceful stop is
// still noticed promptly. Timeouts need no extra call either: the
// master sets SO_RCVTIMEO (the header timeout) and SO_SNDTIMEO on the
// listening sockets and every accepted socket inherits them.
#pragma once

#include "routes.hpp"

namespace prefork {
class worker;
}

namespace httpd {

// Serves until the worker is asked to stop.
void run_blocking(server& srv, prefork::worker& w);

// Sets the socket timeouts every accepted connection inherits (the master
// calls it on each listener).
void set_inherited_timeouts(int listener, const options& o);

}  // namespace httpd
