// httpd/uring_worker.hpp: one io_uring loop per worker (-m uring), built
// when liburing was found (PREFORK_HTTPD_URING); docs/uring.md has the design.
//
// The loop answers exactly as the evented one does (both drive the shared
// connection logic, connection.hpp); only the I/O differs: multishot accept
// on each listener, multishot receive into a ring of provided buffers, sends
// queued per connection and submitted with the wait in one io_uring_enter
// per turn, the control pipe polled through the ring.
//
// The kernel may lack what the loop needs (too old, io_uring switched off by
// the kernel.io_uring_disabled sysctl or a seccomp filter): the master asks
// uring_unavailable() once before forking and runs the evented loop instead,
// saying why. PREFORK_HTTPD_NO_URING=1 in the environment forces that
// fallback, so it can be tested where io_uring works.
#pragma once

#include <string>

#include "routes.hpp"

namespace prefork {
class worker;
}

namespace httpd {

// "" when this process can run the loop, else why not, in a few words
// ("io_uring_setup: Operation not permitted (kernel.io_uring_disabled is 2)").
// Sets up and tears down a small ring and a socket pair: call it once.
std::string uring_unavailable();

// Serves until the worker is asked to stop and its connections are drained
// (or --graceful-timeout passes), as run_evented does.
void run_uring(server& srv, prefork::worker& w);

}  // namespace httpd
