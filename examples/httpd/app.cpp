// httpd/app.cpp: the application side of the seam (see app.hpp).
#include "app.hpp"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <stdexcept>

#include <prefork/error.hpp>

namespace httpd {
namespace {

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Form decoding of one query component: %XX and '+' as a space. A bad
// escape is kept as it came.
std::string form_decode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    int hi = 0, lo = 0;
    if (s[i] == '%' && i + 2 < s.size() && (hi = hex_digit(s[i + 1])) >= 0 &&
        (lo = hex_digit(s[i + 2])) >= 0) {
      out += static_cast<char>(hi * 16 + lo);
      i += 2;
    } else {
      out += s[i] == '+' ? ' ' : s[i];
    }
  }
  return out;
}

constexpr std::string_view verb_names[9] = {"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE",
                                             "CONNECT"};

}  // namespace

std::optional<std::string> app_request::param(std::string_view name) const {
  std::string_view q = req_.query;
  while (!q.empty()) {
    auto amp = q.find('&');
    std::string_view pair = q.substr(0, amp);
    auto eq = pair.find('=');
    if (form_decode(pair.substr(0, eq)) == name)
      return eq == std::string_view::npos ? std::string() : form_decode(pair.substr(eq + 1));
    if (amp == std::string_view::npos) break;
    q.remove_prefix(amp + 1);
  }
  return std::nullopt;
}

std::string_view app_request::header(std::string_view name) const {
  const header_field* f = req_.find(name);
  return f ? f->value : std::string_view();
}

std::string app_request::read_body() const {
  if (body_fd_ < 0) return std::string(body_);
  std::string out(body_size_, '\0');
  std::size_t got = 0;
  while (got < out.size()) {
    ssize_t n = ::pread(body_fd_, &out[got], out.size() - got, static_cast<off_t>(got));
    if (n == -1 && errno == EINTR) continue;
    if (n == -1) prefork::throw_system_error("pread request body fd " + std::to_string(body_fd_));
    if (n == 0) throw std::runtime_error("request body file shorter than its length");
    got += static_cast<std::size_t>(n);
  }
  return out;
}

response& response::status(int code) {
  r_.status = code;
  return *this;
}

response& response::header(std::string_view name, std::string_view value) {
  r_.headers.append(name.data(), name.size());
  r_.headers += ": ";
  r_.headers.append(value.data(), value.size());
  r_.headers += "\r\n";
  return *this;
}

response& response::content_type(std::string_view type) {
  r_.type_store.assign(type.data(), type.size());
  r_.content_type = r_.type_store;
  return *this;
}

response& response::send(std::string_view body) {
  if (r_.status == 0) r_.status = 200;
  if (r_.content_type.empty()) r_.content_type = "text/plain; charset=utf-8";
  r_.body_view = {};
  r_.body.assign(body.data(), body.size());
  return *this;
}

response& response::send(std::string&& body) {
  if (r_.status == 0) r_.status = 200;
  if (r_.content_type.empty()) r_.content_type = "text/plain; charset=utf-8";
  r_.body_view = {};
  r_.body.swap(body);
  return *this;
}

response& response::send_view(std::string_view body) {
  if (r_.status == 0) r_.status = 200;
  if (r_.content_type.empty()) r_.content_type = "text/plain; charset=utf-8";
  // A view of no bytes still says "this is the body" (body_view wins when set).
  r_.body_view = body.data() ? body : std::string_view("", 0);
  return *this;
}

response& response::send_file(prefork::fd file, off_t offset, std::size_t length) {
  if (r_.status == 0) r_.status = 200;
  if (r_.content_type.empty()) r_.content_type = "application/octet-stream";
  r_.file = std::move(file);
  r_.file_offset = offset;
  r_.file_length = length;
  return *this;
}

response& response::stream(std::function<bool(std::string& out)> next) {
  if (r_.status == 0) r_.status = 200;
  if (r_.content_type.empty()) r_.content_type = "application/octet-stream";
  r_.chunked = true;
  r_.generate = std::move(next);
  return *this;
}

response& response::error(int code, std::string_view why) {
  bool close = r_.close;
  r_.error(code, why, close);
  return *this;
}

app& app::handle(std::string_view method, std::string pattern, handler h, std::optional<bool> reads_body) {
  std::size_t v = 0;
  while (v < 9 && verb_names[v] != method) ++v;
  if (v >= 7) throw std::invalid_argument("httpd::app: no handlers for method '" + std::string(method) + "'");
  if (pattern.empty() || pattern[0] != '/')
    throw std::invalid_argument("httpd::app: a pattern starts with '/': '" + pattern + "'");
  const auto kind = static_cast<verb>(v);
  const bool prefix = pattern.back() == '*';
  if (prefix) pattern.pop_back();
  std::vector<route>& table = prefix ? prefixes_ : exact_;
  auto it = std::find_if(table.begin(), table.end(), [&](const route& r) { return r.pattern == pattern; });
  if (it == table.end()) {
    table.emplace_back();
    it = table.end() - 1;
    it->pattern = pattern;
    it->prefix = prefix;
  }
  const unsigned bit = method_bit(kind);
  const bool reading =
      reads_body.value_or(kind == verb::post || kind == verb::put || kind == verb::patch || kind == verb::delete_);
  it->methods |= 1u << bit;
  it->reading = reading ? it->reading | 1u << bit : it->reading & ~(1u << bit);
  it->by_verb[bit] = std::move(h);
  if (prefix)
    std::stable_sort(prefixes_.begin(), prefixes_.end(),
                     [](const route& a, const route& b) { return a.pattern.size() > b.pattern.size(); });
  return *this;
}

const app::route* app::find(verb v, std::string_view path, std::string_view& rest) const {
  const unsigned bit = 1u << method_bit(v);
  const route* seen = nullptr;
  for (const route& r : exact_) {
    if (r.pattern != path) continue;
    rest = {};
    if (r.methods & bit) return &r;
    seen = &r;
    break;
  }
  for (const route& r : prefixes_) {
    if (path.size() < r.pattern.size() || path.compare(0, r.pattern.size(), r.pattern) != 0) continue;
    if (r.methods & bit) {
      rest = path.substr(r.pattern.size());
      return &r;
    }
    if (!seen) {
      rest = path.substr(r.pattern.size());
      seen = &r;
    }
  }
  return seen;
}

std::string app::allow_of(const route& r) {
  std::string allow;
  for (std::size_t v = 0; v < 7; ++v) {
    // HEAD comes with GET.
    bool has = v == 1 ? (r.methods & 1u) : (r.methods >> v) & 1u;
    if (!has) continue;
    if (!allow.empty()) allow += ", ";
    allow += verb_names[v];
  }
  return allow;
}

}  // namespace httpd
