// tests/support/env_var.hpp: one environment variable set (or unset) for
// the life of a scope, and put back as it was at the end, so a test that
// plays systemd (NOTIFY_SOCKET, WATCHDOG_USEC) leaves the next one a clean
// environment.
#pragma once

#include <stdlib.h>

#include <optional>
#include <string>

namespace prefork::test {

class env_var {
 public:
  // value: what to set; std::nullopt unsets the variable.
  env_var(const char* name, std::optional<std::string> value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value)
      ::setenv(name, value->c_str(), 1);
    else
      ::unsetenv(name);
  }
  ~env_var() {
    if (old_)
      ::setenv(name_, old_->c_str(), 1);
    else
      ::unsetenv(name_);
  }
  env_var(const env_var&) = delete;
  env_var& operator=(const env_var&) = delete;

 private:
  const char* name_;
  std::optional<std::string> old_;
};

}  // namespace prefork::test
