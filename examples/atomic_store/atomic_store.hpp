// atomic_store: a cache shared by many processes through one directory, with
// no lock and no central writer.
//
// put() writes the value to a temp file beside the entry and rename(2)s it
// over the entry; rename replaces a name in one step, so a reader that opens
// the entry gets the old file or the new one, never a mix, and a reader that
// already has the old file open keeps reading it whole. Concurrent puts of a
// key race, and the last rename wins, which is what a cache wants. A writer
// killed mid-put leaves only its temp file, which sweep() removes; a temp
// file still being written is flock'ed by its writer, and the sweep skips it
// (prefork::remove_stale_temps). Keys are hashed to 32 hex digits, so no key
// can name a path outside the directory; the key is stored in the entry too,
// so a hash collision reads as a miss, not as another key's value.
#pragma once

#include <prefork/fd.hpp>
#include <prefork/file.hpp>

#include <fcntl.h>
#include <sys/sendfile.h>
#include <sys/stat.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

namespace atomic_store {

class store {
 public:
  // Creates `dir` if it does not exist.
  explicit store(std::filesystem::path dir) : dir_(std::move(dir)) { std::filesystem::create_directories(dir_); }

  // Durable too: atomic_file fsyncs the file and the directory.
  void put(std::string_view key, std::string_view value) const {
    prefork::atomic_file entry(entry_path(key), 0644);
    entry.write(std::to_string(key.size()) + "\n");
    entry.write(key);
    entry.write(value);
    entry.commit();
  }

  // The value from the first `length` bytes of an open file (an upload
  // spooled to disk), copied by the kernel (sendfile), never all in memory.
  void put_from(std::string_view key, int file, std::size_t length) const {
    prefork::atomic_file entry(entry_path(key), 0644);
    entry.write(std::to_string(key.size()) + "\n");
    entry.write(key);
    off_t offset = 0;
    while (length > 0) {
      ssize_t n = ::sendfile(entry.native_handle(), file, &offset, length);
      if (n == -1 && errno == EINTR) continue;
      if (n == -1) prefork::throw_system_error("sendfile into " + entry.temp_path().string());
      if (n == 0) throw std::runtime_error("put_from: the file is shorter than its length");
      length -= static_cast<std::size_t>(n);
    }
    entry.commit();
  }

  std::optional<std::string> get(std::string_view key) const {
    int raw = ::open(entry_path(key).c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (raw == -1) {
      if (errno == ENOENT) return std::nullopt;
      prefork::throw_system_error("open " + entry_path(key).string());
    }
    prefork::fd entry(raw);
    std::string content = prefork::read_all(entry.get());
    std::size_t newline = content.find('\n');
    if (newline == std::string::npos) return std::nullopt;
    std::size_t key_size = std::strtoul(content.c_str(), nullptr, 10);
    if (content.compare(newline + 1, key_size, key) != 0 || key.size() != key_size) return std::nullopt;
    return content.substr(newline + 1 + key_size);
  }

  // False if there was no such entry.
  bool del(std::string_view key) const {
    if (::unlink(entry_path(key).c_str()) == 0) return true;
    if (errno == ENOENT) return false;
    prefork::throw_system_error("unlink " + entry_path(key).string());
  }

  // Removes temp files of writers that died; returns how many.
  std::size_t sweep() const { return prefork::remove_stale_temps(dir_); }

  std::filesystem::path entry_path(std::string_view key) const { return dir_ / file_name(key); }
  const std::filesystem::path& dir() const { return dir_; }

  // Two differently seeded 64-bit FNV-1a hashes: 32 hex digits, no '/', no '.'.
  static std::string file_name(std::string_view key) {
    std::uint64_t a = 0xcbf29ce484222325ULL, b = 0x84222325cbf29ce4ULL;
    for (char ch : key) {
      auto c = static_cast<unsigned char>(ch);
      a = (a ^ c) * 0x100000001b3ULL;
      b = (b ^ static_cast<unsigned char>(c + 0x5a)) * 0x100000001b3ULL;
      b ^= b >> 29;
    }
    static const char hex[] = "0123456789abcdef";
    std::string out;
    for (std::uint64_t h : {a, b}) {
      h ^= h >> 33;  // spread: keys that differ in one byte get unlike names
      h *= 0xff51afd7ed558ccdULL;
      h ^= h >> 33;
      for (int shift = 60; shift >= 0; shift -= 4) out += hex[(h >> shift) & 0xf];
    }
    return out;
  }

 private:
  std::filesystem::path dir_;
};

// Values for stress tests that check themselves: a writer, a sequence
// number, a length, a payload derived from them, and a checksum over it all.
inline std::uint64_t checksum(std::string_view s) {
  std::uint64_t h = 1469598103934665603ULL;
  for (char c : s) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ULL;
  return h;
}

inline std::string make_value(unsigned writer, std::uint64_t seq) {
  std::size_t len = 100 + (seq * 7919 + writer * 104729) % 8000;  // sizes vary: truncation shows
  std::string body = "w" + std::to_string(writer) + " s" + std::to_string(seq) + " n" + std::to_string(len) + " ";
  for (std::size_t i = 0; i < len; ++i) body += static_cast<char>('a' + (seq + writer * 31 + i * 7) % 26);
  return body + " c" + std::to_string(checksum(body));
}

// True if `value` is exactly a value make_value produced.
inline bool valid_value(std::string_view value) {
  std::size_t c = value.rfind(" c");
  if (c == std::string_view::npos) return false;
  std::string_view body = value.substr(0, c);
  if (std::to_string(checksum(body)) != value.substr(c + 2)) return false;
  unsigned writer = 0;
  unsigned long long seq = 0;
  if (std::sscanf(std::string(body.substr(0, 64)).c_str(), "w%u s%llu ", &writer, &seq) != 2) return false;
  return make_value(writer, seq) == value;
}

}  // namespace atomic_store
