// prefork.hpp: every prefork header. Include the one you need instead when
// compile time matters; each stands alone.
#pragma once

#include <prefork/version.hpp>
#include <prefork/error.hpp>
#include <prefork/fd.hpp>
#include <prefork/pipe.hpp>
