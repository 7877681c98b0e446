// prefork.hpp: every prefork header. Include the one you need instead when
// compile time matters; each stands alone.
#pragma once

// In layer order, lowest first (clang-format would sort them).
// clang-format off
#include <prefork/version.hpp>
#include <prefork/error.hpp>
#include <prefork/fd.hpp>
#include <prefork/pipe.hpp>
#include <prefork/file_lock.hpp>
#include <prefork/file.hpp>
#include <prefork/shm.hpp>
#include <prefork/socket_address.hpp>
#include <prefork/fd_passing.hpp>
#include <prefork/socket.hpp>
#include <prefork/signal_name.hpp>
#include <prefork/signal.hpp>
#include <prefork/process.hpp>
#include <prefork/path_search.hpp>
#include <prefork/spawn_setup.hpp>
#include <prefork/spawn_child.hpp>
#include <prefork/spawn.hpp>
#include <prefork/run.hpp>
#include <prefork/pty.hpp>
#include <prefork/daemon.hpp>
#include <prefork/exec.hpp>
#include <prefork/systemd.hpp>
#include <prefork/reuseport.hpp>
#include <prefork/refork.hpp>
#include <prefork/pool.hpp>
#include <prefork/upgrade_handover.hpp>
#include <prefork/listen_queue.hpp>
#include <prefork/proc_memory.hpp>
#include <prefork/upgrade.hpp>
// clang-format on
