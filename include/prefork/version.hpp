// prefork/version.hpp: the library's version, the one place both build
// systems read it from.
#pragma once

#define PREFORK_VERSION_MAJOR 0
#define PREFORK_VERSION_MINOR 1
#define PREFORK_VERSION_PATCH 0
#define PREFORK_VERSION_STRING "0.1.0"
