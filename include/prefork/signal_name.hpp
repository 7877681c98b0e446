// prefork/signal_name.hpp: prefork::signal_name(), "SIGTERM" for 15.
//
// Its own small header so that both signal.hpp (where people look for it)
// and process.hpp (exit_status::describe) can offer it without one including
// the other. Never allocates: the names of numbered signals are built at
// compile time. Stands on <signal.h> only.
#pragma once

#include <signal.h>

#include <array>
#include <cstddef>
#include <string_view>

namespace prefork {

namespace detail {

// "signal N" for every N a wait status can carry (7 bits), built at compile
// time so signal_name() can return a view that stays valid.
struct numbered_names {
  std::array<std::array<char, 12>, 128> text{};
  std::array<unsigned char, 128> size{};
  constexpr numbered_names(const char* prefix, int first) {
    for (int n = 0; n < 128; ++n) {
      auto& out = text[static_cast<std::size_t>(n)];
      std::size_t len = 0;
      for (const char* p = prefix; *p != '\0'; ++p) out[len++] = *p;
      int value = n - first;
      if (value >= 100) out[len++] = static_cast<char>('0' + value / 100);
      if (value >= 10) out[len++] = static_cast<char>('0' + value / 10 % 10);
      out[len++] = static_cast<char>('0' + (value < 0 ? 0 : value) % 10);
      size[static_cast<std::size_t>(n)] = static_cast<unsigned char>(len);
    }
  }
  constexpr std::string_view operator[](int n) const {
    return {text[static_cast<std::size_t>(n)].data(), size[static_cast<std::size_t>(n)]};
  }
};
inline constexpr numbered_names plain_signal_names("signal ", 0);
inline constexpr numbered_names realtime_signal_names("SIGRTMIN+", 0);

}  // namespace detail

// "SIGTERM", "SIGRTMIN+2", or "signal 77" for a number without a name. Never
// allocates, so it is safe in a signal handler and in the pool's log lines.
inline std::string_view signal_name(int sig) noexcept {
  switch (sig) {
    case SIGHUP: return "SIGHUP";
    case SIGINT: return "SIGINT";
    case SIGQUIT: return "SIGQUIT";
    case SIGILL: return "SIGILL";
    case SIGTRAP: return "SIGTRAP";
    case SIGABRT: return "SIGABRT";
    case SIGBUS: return "SIGBUS";
    case SIGFPE: return "SIGFPE";
    case SIGKILL: return "SIGKILL";
    case SIGUSR1: return "SIGUSR1";
    case SIGSEGV: return "SIGSEGV";
    case SIGUSR2: return "SIGUSR2";
    case SIGPIPE: return "SIGPIPE";
    case SIGALRM: return "SIGALRM";
    case SIGTERM: return "SIGTERM";
#ifdef SIGSTKFLT
    case SIGSTKFLT: return "SIGSTKFLT";
#endif
    case SIGCHLD: return "SIGCHLD";
    case SIGCONT: return "SIGCONT";
    case SIGSTOP: return "SIGSTOP";
    case SIGTSTP: return "SIGTSTP";
    case SIGTTIN: return "SIGTTIN";
    case SIGTTOU: return "SIGTTOU";
    case SIGURG: return "SIGURG";
    case SIGXCPU: return "SIGXCPU";
    case SIGXFSZ: return "SIGXFSZ";
    case SIGVTALRM: return "SIGVTALRM";
    case SIGPROF: return "SIGPROF";
    case SIGWINCH: return "SIGWINCH";
    case SIGIO: return "SIGIO";
#if defined(SIGPWR) && SIGPWR != SIGIO
    case SIGPWR: return "SIGPWR";
#endif
    case SIGSYS: return "SIGSYS";
    default: break;
  }
  // SIGRTMIN is a function call in glibc (it keeps the first two for threads).
  if (sig >= SIGRTMIN && sig <= SIGRTMAX && sig - SIGRTMIN < 128)
    return detail::realtime_signal_names[sig - SIGRTMIN];
  if (sig >= 0 && sig < 128) return detail::plain_signal_names[sig];
  return "invalid signal number";
}

}  // namespace prefork
