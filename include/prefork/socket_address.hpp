// prefork/socket_address.hpp: socket_address, one type for IPv4, IPv6 and
// unix socket addresses, and the address syntax every socket call reads.
//
// The forms: "127.0.0.1:8080", "0.0.0.0:0", "[::1]:8080", "[::]:0",
// "[fe80::1%eth0]:80", "localhost:8080" (a host name, resolved through
// getaddrinfo; numeric forms never touch DNS), "unix:/run/app.sock" (or a
// bare "/run/app.sock") and "unix:@name" (the Linux abstract namespace).
// to_string() writes the same forms back, so an address read from
// local_address() can be handed to connect(). Bad input is reported as
// std::invalid_argument naming the text and what is wrong with it. Part of
// socket.hpp. Stands on inet_pton/inet_ntop, getaddrinfo, if_nametoindex,
// getsockname and getpeername.
#pragma once

#include <arpa/inet.h>
#include <net/if.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <prefork/error.hpp>

namespace prefork {

// One socket address of any family the library speaks (IPv4, IPv6, unix).
class socket_address {
 public:
  socket_address() noexcept = default;  // empty: AF_UNSPEC
  socket_address(const sockaddr* sa, socklen_t size) {
    if (size > sizeof storage_) throw std::invalid_argument("socket_address: size too large");
    std::memcpy(&storage_, sa, size);
    size_ = size;
  }

  // Numeric and unix forms only (no DNS); throws std::invalid_argument
  // naming the address and what is wrong. Use resolve() for host names.
  static socket_address parse(std::string_view text);
  // Every form; a host name may give several addresses, in getaddrinfo's order.
  static std::vector<socket_address> resolve(std::string_view text);

  static socket_address local(int sock);  // getsockname
  static socket_address peer(int sock);   // getpeername

  bool empty() const noexcept { return size_ == 0; }
  int family() const noexcept { return empty() ? AF_UNSPEC : storage_.ss_family; }
  std::uint16_t port() const noexcept {
    if (family() == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in*>(&storage_)->sin_port);
    if (family() == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6*>(&storage_)->sin6_port);
    return 0;
  }
  const sockaddr* get() const noexcept { return reinterpret_cast<const sockaddr*>(&storage_); }
  socklen_t size() const noexcept { return size_; }

  // The form parse() reads: "127.0.0.1:80", "[::1]:80", "unix:/p",
  // "unix:@name"; an unnamed unix socket (a socket_pair end, an accepted
  // unix connection) is "unix:".
  std::string to_string() const;

 private:
  sockaddr_storage storage_{};
  socklen_t size_ = 0;
};

namespace detail {

// getaddrinfo reports EAI_* codes, not errno values; this category lets
// them travel in a std::system_error like every other failure.
class gai_category_impl final : public std::error_category {
 public:
  const char* name() const noexcept override { return "getaddrinfo"; }
  std::string message(int code) const override { return ::gai_strerror(code); }
};
inline const std::error_category& gai_category() noexcept {
  static const gai_category_impl category;
  return category;
}

struct parsed_address {
  socket_address numeric;  // set unless the host is a name to resolve
  std::string host;        // the name, when it is one
  std::uint16_t port = 0;
};

inline std::string parse_unix(std::string_view path, parsed_address& out) {
  sockaddr_un un{};
  un.sun_family = AF_UNIX;
  // One byte stays free: for a path it is the NUL that some peers expect,
  // for an abstract name it is the leading NUL that marks the namespace.
  constexpr std::size_t room = sizeof un.sun_path - 1;
  bool abstract = !path.empty() && path[0] == '@';
  std::string_view name = abstract ? path.substr(1) : path;
  if (name.empty()) return abstract ? "empty abstract socket name" : "empty unix socket path";
  if (name.size() > room)
    return "unix socket name too long (" + std::to_string(name.size()) + " bytes, at most " +
           std::to_string(room) + ")";
  if (name.find('\0') != std::string_view::npos && !abstract) return "NUL byte in unix socket path";
  std::memcpy(un.sun_path + (abstract ? 1 : 0), name.data(), name.size());
  // An abstract name is exactly its length (trailing NULs would be part of
  // it); a path is NUL-terminated inside sun_path.
  auto size = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size() + 1);
  out.numeric = socket_address(reinterpret_cast<const sockaddr*>(&un), size);
  return {};
}

inline bool only_chars(std::string_view s, const char* chars) {
  return s.find_first_not_of(chars) == std::string_view::npos;
}

// Fills `out`; returns why `text` is not an address, or "" when it is.
inline std::string parse_address(std::string_view text, parsed_address& out) {
  if (text.empty()) return "empty address";
  if (text.substr(0, 5) == "unix:") return parse_unix(text.substr(5), out);
  if (text[0] == '/') return parse_unix(text, out);

  std::string_view host, port;
  if (text[0] == '[') {
    auto close = text.find(']');
    if (close == std::string_view::npos) return "missing ']' after IPv6 address";
    host = text.substr(1, close - 1);
    std::string_view rest = text.substr(close + 1);
    if (rest.empty() || rest[0] != ':') return "missing ':port' after ']'";
    port = rest.substr(1);
  } else {
    auto colon = text.rfind(':');
    if (colon == std::string_view::npos) return "missing ':port'";
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) return "IPv6 addresses go in brackets: [::1]:8080";
  }
  if (port.empty()) return "missing port";
  if (!only_chars(port, "0123456789")) return "port '" + std::string(port) + "' is not a number";
  if (port.size() > 5 || std::stoul(std::string(port)) > 65535)
    return "port " + std::string(port) + " is out of range (0-65535)";
  out.port = static_cast<std::uint16_t>(std::stoul(std::string(port)));
  if (host.empty()) return "missing host (0.0.0.0 or [::] listen on every address)";

  if (text[0] == '[') {
    sockaddr_in6 in6{};
    in6.sin6_family = AF_INET6;
    in6.sin6_port = htons(out.port);
    std::string ip(host.substr(0, host.find('%')));
    if (::inet_pton(AF_INET6, ip.c_str(), &in6.sin6_addr) != 1) return "invalid IPv6 address '" + ip + "'";
    if (ip.size() < host.size()) {  // a zone: "[fe80::1%eth0]:80" or "%2"
      std::string zone(host.substr(ip.size() + 1));
      if (!zone.empty() && only_chars(zone, "0123456789") && zone.size() < 10)
        in6.sin6_scope_id = static_cast<std::uint32_t>(std::stoul(zone));
      else if ((in6.sin6_scope_id = ::if_nametoindex(zone.c_str())) == 0)
        return "unknown network interface '" + zone + "'";
    }
    out.numeric = socket_address(reinterpret_cast<const sockaddr*>(&in6), sizeof in6);
  } else if (only_chars(host, "0123456789.")) {
    // Digits and dots are meant as IPv4, so "300.1.1.1" is an error here
    // rather than a host name sent to DNS.
    sockaddr_in in{};
    in.sin_family = AF_INET;
    in.sin_port = htons(out.port);
    std::string ip(host);
    if (::inet_pton(AF_INET, ip.c_str(), &in.sin_addr) != 1) return "invalid IPv4 address '" + ip + "'";
    out.numeric = socket_address(reinterpret_cast<const sockaddr*>(&in), sizeof in);
  } else if (only_chars(host, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._")) {
    out.host = std::string(host);
  } else {
    return "invalid host name '" + std::string(host) + "'";
  }
  return {};
}

[[noreturn]] inline void throw_bad_address(std::string_view call, std::string_view text,
                                           const std::string& why) {
  throw std::invalid_argument(std::string(call) + ": cannot parse address '" + std::string(text) +
                              "': " + why);
}

// Every address `text` stands for; errors start with `call`. `is_name`
// tells whether a host name had to be resolved.
inline std::vector<socket_address> resolve(std::string_view call, std::string_view text,
                                           bool* is_name = nullptr) {
  parsed_address parsed;
  if (std::string why = parse_address(text, parsed); !why.empty()) throw_bad_address(call, text, why);
  if (is_name) *is_name = !parsed.host.empty();
  if (parsed.host.empty()) return {parsed.numeric};

  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  // No AI_ADDRCONFIG: with only loopback configured (containers, build
  // machines) it hides the loopback addresses "localhost" is for.
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* list = nullptr;
  std::string port = std::to_string(parsed.port);
  int rc = ::getaddrinfo(parsed.host.c_str(), port.c_str(), &hints, &list);
  std::string what = std::string(call) + " " + std::string(text);
  if (rc == EAI_SYSTEM) throw_system_error(what);
  if (rc != 0) throw std::system_error(rc, gai_category(), what);
  std::vector<socket_address> out;
  for (addrinfo* ai = list; ai; ai = ai->ai_next)
    if (ai->ai_family == AF_INET || ai->ai_family == AF_INET6) out.emplace_back(ai->ai_addr, ai->ai_addrlen);
  ::freeaddrinfo(list);
  if (out.empty()) throw std::system_error(EAI_NONAME, gai_category(), what);
  return out;
}

inline std::string fd_what(const char* call, int sock) {
  return std::string(call) + " fd " + std::to_string(sock);
}

}  // namespace detail

inline socket_address socket_address::parse(std::string_view text) {
  detail::parsed_address parsed;
  std::string why = detail::parse_address(text, parsed);
  if (why.empty() && !parsed.host.empty()) why = "'" + parsed.host + "' is a host name: use resolve()";
  if (!why.empty()) detail::throw_bad_address("socket_address::parse", text, why);
  return parsed.numeric;
}

inline std::vector<socket_address> socket_address::resolve(std::string_view text) {
  return detail::resolve("resolve", text);
}

inline socket_address socket_address::local(int sock) {
  socket_address a;
  a.size_ = sizeof a.storage_;
  if (::getsockname(sock, reinterpret_cast<sockaddr*>(&a.storage_), &a.size_) == -1)
    throw_system_error(detail::fd_what("getsockname", sock));
  return a;
}

inline socket_address socket_address::peer(int sock) {
  socket_address a;
  a.size_ = sizeof a.storage_;
  if (::getpeername(sock, reinterpret_cast<sockaddr*>(&a.storage_), &a.size_) == -1)
    throw_system_error(detail::fd_what("getpeername", sock));
  return a;
}

inline std::string socket_address::to_string() const {
  char buf[INET6_ADDRSTRLEN];
  switch (family()) {
    case AF_INET: {
      auto* in = reinterpret_cast<const sockaddr_in*>(&storage_);
      ::inet_ntop(AF_INET, &in->sin_addr, buf, sizeof buf);
      return std::string(buf) + ":" + std::to_string(port());
    }
    case AF_INET6: {
      auto* in6 = reinterpret_cast<const sockaddr_in6*>(&storage_);
      ::inet_ntop(AF_INET6, &in6->sin6_addr, buf, sizeof buf);
      std::string zone;
      if (in6->sin6_scope_id != 0) {
        char name[IF_NAMESIZE];
        bool named = ::if_indextoname(in6->sin6_scope_id, name) != nullptr;
        zone = "%" + (named ? std::string(name) : std::to_string(in6->sin6_scope_id));
      }
      return "[" + std::string(buf) + zone + "]:" + std::to_string(port());
    }
    case AF_UNIX: {
      auto* un = reinterpret_cast<const sockaddr_un*>(&storage_);
      if (size_ <= offsetof(sockaddr_un, sun_path)) return "unix:";
      std::size_t n = size_ - offsetof(sockaddr_un, sun_path);
      if (un->sun_path[0] == '\0') return "unix:@" + std::string(un->sun_path + 1, n - 1);
      return "unix:" + std::string(un->sun_path, ::strnlen(un->sun_path, n));
    }
    case AF_UNSPEC: return "";
    default: return "address family " + std::to_string(family());
  }
}

}  // namespace prefork
