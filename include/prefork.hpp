// prefork.hpp: every prefork header. Include the one you need instead when
// compile time matters; each stands alone.
#pragma once

#include <prefork/version.hpp>
#include <prefork/error.hpp>
#include <prefork/fd.hpp>
#include <prefork/pipe.hpp>
#include <prefork/process.hpp>
#include <prefork/spawn.hpp>
#include <prefork/daemon.hpp>
#include <prefork/file_lock.hpp>
#include <prefork/file.hpp>
#include <prefork/shm.hpp>
#include <prefork/socket_address.hpp>
#include <prefork/fd_passing.hpp>
#include <prefork/socket.hpp>
#include <prefork/signal.hpp>
#include <prefork/exec.hpp>
#include <prefork/systemd.hpp>
#include <prefork/pool.hpp>
#include <prefork/upgrade.hpp>
