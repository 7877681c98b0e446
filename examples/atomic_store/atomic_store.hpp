// atomic_store: a key-value store that many processes share through one
// directory, with no lock and no central writer, and a cache in each process
// that answers a read of an unchanged value without a system call.
//
// Writes. put() writes the entry to a temp file beside it and rename(2)s it
// over the entry; rename replaces a name in one step, so a reader that opens
// the entry gets the old file or the new one, never a mix, and a reader that
// already has the old file open keeps reading it whole. Concurrent puts of a
// key race, and the last rename wins. A writer killed mid-put leaves only its
// temp file, which sweep() removes; a temp file still being written is
// flock'ed by its writer, and the sweep skips it (prefork::remove_stale_temps).
//
// Entries. DIR/<32 hex digits hashed from the key> (so no key can name a
// path outside DIR) holds "<key length> <version>\n", the key, the value.
// The key is there so that a hash collision reads as a miss, not as another
// key's value. The version, 64 random bits drawn by each put, names the
// value: it is the ETag. (Inode and mtime would not do: a replaced entry's
// inode number comes back at once, and where timestamps are coarse, 4 ms
// ticks before Linux 6.13, two puts in a row get the same mtime.)
//
// The cache. find() keeps small values in memory, per store object (in
// prefork-kv, per worker: a process forked from the one that opened the store
// has its own copy of the cache and shares the mapping below), within
// cache_limits. Whether they are current is one load of a counter in
// DIR/generation, a file every store on DIR maps (MAP_SHARED): put and del add
// one to it after their rename or unlink and before they return, and find()
// drops its cache when the counter has moved. So a find() that starts after a
// put or del returned, in any process of the machine, sees its effect, and a
// find() of an unchanged value makes no system call. The cache is also dropped
// once a second (max_age), so what the counter cannot see (a writer SIGKILLed
// between its rename and its add, say by a heartbeat while the directory's
// fsync hangs) lasts a second at most. (While a put is under way, one process
// may read the new value from its file while another still serves the old one
// from memory; once the put has returned, every find() sees the new one.)
//
// DIR/generation appears whole (written, then link(2)ed into place: of two
// processes creating it at once, one link wins and both map that file), with
// DIR's own read and write bits: whoever may put may add to it. A process
// that cannot write it caches nothing and may not put or del (other
// processes' caches would not see its writes). On a filesystem that cannot
// map files (mmap: ENODEV) no process can, and nothing is cached.
//
// Out of scope: files written into DIR other than through this class (by
// hand, by rsync: caches see them within a second, or at the next put),
// and processes on other machines (NFS does not share a mapping).
#pragma once

#include <prefork/fd.hpp>
#include <prefork/file.hpp>
#include <prefork/shm.hpp>

#include <fcntl.h>
#include <sys/random.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace atomic_store {

struct cache_limits {
  std::size_t value_bytes = 16 * 1024;  // larger values are read from their file each time
  std::size_t total_bytes = 32 << 20;   // per store object; 0: no cache
  unsigned max_age = 1;                 // seconds; 0: dropped only when the counter moves
};

// A value found: its bytes, or for a large value the open entry to send
// them from (sendfile); and its ETag. Views are valid until the next find().
struct found {
  found(std::string_view bytes, std::string_view tag) : value(bytes), etag(tag) {}
  found(std::string_view tag, prefork::fd entry, off_t at, std::size_t bytes)
      : etag(tag), file(std::move(entry)), offset(at), length(bytes) {}

  std::string_view value;  // when !file
  std::string_view etag;   // quoted, as HTTP wants it
  prefork::fd file;        // a large value: `length` bytes from `offset`
  off_t offset = 0;
  std::size_t length = 0;
};

class store {
 public:
  // Creates `dir` if it does not exist.
  explicit store(std::filesystem::path dir, cache_limits limits = {}) : dir_(std::move(dir)), limits_(limits) {
    std::filesystem::create_directories(dir_);
    open_generation();
  }

  // Durable too: atomic_file fsyncs the file and the directory.
  void put(std::string_view key, std::string_view value) const {
    prefork::atomic_file entry = begin_entry(key);
    entry.write(value);
    commit(entry);
  }

  // The value from the first `length` bytes of an open file (an upload
  // spooled to disk), copied by the kernel (sendfile), never all in memory.
  void put_from(std::string_view key, int file, std::size_t length) const {
    prefork::atomic_file entry = begin_entry(key);
    off_t offset = 0;
    while (length > 0) {
      ssize_t n = ::sendfile(entry.native_handle(), file, &offset, length);
      if (n == -1 && errno == EINTR) continue;
      if (n == -1) prefork::throw_system_error("sendfile into " + entry.temp_path().string());
      if (n == 0) throw std::runtime_error("put_from: the file is shorter than its length");
      length -= static_cast<std::size_t>(n);
    }
    commit(entry);
  }

  // False if there was no such entry.
  bool del(std::string_view key) const {
    writable_or_throw();
    bool removed = ::unlink(entry_path(key).c_str()) == 0;
    int err = errno;
    bump();  // even for ENOENT: another del's unlink may not have bumped yet
    if (!removed && err != ENOENT) prefork::throw_system_error("unlink " + entry_path(key).string(), err);
    return removed;
  }

  // The value, cached when it is small (see above). Not thread-safe: a
  // store object per thread, as prefork-kv has one per worker.
  std::optional<found> find(std::string_view key) {
    if (caching()) {
      timespec now{};
      ::clock_gettime(CLOCK_MONOTONIC_COARSE, &now);  // the vDSO: no system call
      const std::uint64_t generation = (*generation_)->load();
      const bool old = limits_.max_age && now.tv_sec - cache_since_ >= static_cast<time_t>(limits_.max_age);
      if (generation != cache_generation_ || old) {
        cache_.clear();
        cached_bytes_ = 0;
        cache_generation_ = generation;  // read before the files the cache is filled from
        cache_since_ = now.tv_sec;
      }
      key_.assign(key.data(), key.size());
      if (auto hit = cache_.find(key_); hit != cache_.end()) return found{hit->second.value, hit->second.etag};
    }
    std::optional<opened> e = open_entry(key, limits_.value_bytes + 4096, scratch_);
    if (!e) return std::nullopt;
    etag_ = etag_of(e->head, e->st);
    const std::size_t size = static_cast<std::size_t>(e->st.st_size), value_at = e->head.value_at;
    if (scratch_.size() < size || size - value_at > limits_.value_bytes)  // the kernel sends it
      return found{etag_, std::move(e->file), static_cast<off_t>(value_at), size - value_at};
    std::string_view value = std::string_view(scratch_).substr(value_at);
    const std::size_t cost = key.size() + value.size() + etag_.size() + 64;
    if (!caching() || cost > limits_.total_bytes) return found{value, etag_};
    while (cached_bytes_ + cost > limits_.total_bytes && !cache_.empty()) {  // any entry goes: no bookkeeping per hit
      cached_bytes_ -= cache_.begin()->second.cost;
      cache_.erase(cache_.begin());
    }
    cached& c = cache_[key_] = cached{std::string(value), etag_, cost};
    cached_bytes_ += cost;
    return found{c.value, c.etag};
  }

  // The value as a string, read from its file: for a program that reads a
  // key once (and a const store).
  std::optional<std::string> get(std::string_view key) const {
    std::string all;
    std::optional<opened> e = open_entry(key, SIZE_MAX, all);
    if (!e) return std::nullopt;
    return std::move(all.erase(0, e->head.value_at));
  }

  // The keys of the entries, in no order.
  std::vector<std::string> keys() const {
    std::vector<std::string> out;
    std::string head;
    for (const auto& e : std::filesystem::directory_iterator(dir_)) {
      std::string name = e.path().filename().string();
      if (name.size() != 32 || name.find_first_not_of("0123456789abcdef") != std::string::npos) continue;
      prefork::fd file(::open(e.path().c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
      struct stat st {};
      if (!file || ::fstat(file.get(), &st) == -1) continue;  // deleted meanwhile
      if (auto h = read_head(file.get(), static_cast<std::size_t>(st.st_size), 0, head))
        out.push_back(head.substr(h->value_at - h->key_size, h->key_size));
    }
    return out;
  }

  // Removes temp files of writers that died; returns how many.
  std::size_t sweep() const { return prefork::remove_stale_temps(dir_); }

  std::filesystem::path entry_path(std::string_view key) const { return dir_ / file_name(key); }
  const std::filesystem::path& dir() const { return dir_; }
  bool caching() const { return generation_.has_value() && limits_.total_bytes > 0; }

  // Two differently seeded 64-bit FNV-1a hashes: 32 hex digits, no '/', no '.'.
  static std::string file_name(std::string_view key) {
    std::uint64_t a = 0xcbf29ce484222325ULL, b = 0x84222325cbf29ce4ULL;
    for (char ch : key) {
      auto c = static_cast<unsigned char>(ch);
      a = (a ^ c) * 0x100000001b3ULL;
      b = (b ^ static_cast<unsigned char>(c + 0x5a)) * 0x100000001b3ULL;
      b ^= b >> 29;
    }
    std::string out;
    for (std::uint64_t h : {a, b}) {
      h ^= h >> 33;  // spread: keys that differ in one byte get unlike names
      h *= 0xff51afd7ed558ccdULL;
      h ^= h >> 33;
      out += hex(h);
    }
    return out;
  }

 private:
  struct header {
    std::size_t key_size = 0, value_at = 0;
    std::uint64_t version = 0;  // 0: an entry written before versions
  };
  struct opened {
    prefork::fd file;
    struct stat st;
    header head;
  };
  struct cached {
    std::string value, etag;
    std::size_t cost;
  };

  static std::string hex(std::uint64_t v) {
    char out[17];
    std::snprintf(out, sizeof out, "%016llx", static_cast<unsigned long long>(v));
    return out;
  }

  void open_generation() {
    const std::filesystem::path path = dir_ / "generation";
    int raw = ::open(path.c_str(), O_RDWR | O_NOFOLLOW | O_CLOEXEC);
    if (raw == -1 && errno == ENOENT) {
      try {
        prefork::atomic_file fresh(path);  // a temp file beside it, removed when `fresh` goes
        fresh.write(std::string(sizeof(std::uint64_t), '\0'));
        struct stat d {};
        if (::stat(dir_.c_str(), &d) == -1 || ::fchmod(fresh.native_handle(), d.st_mode & 0666) == -1)
          prefork::throw_system_error("chmod " + fresh.temp_path().string());
        if (::link(fresh.temp_path().c_str(), path.c_str()) == -1 && errno != EEXIST)
          prefork::throw_system_error("link " + fresh.temp_path().string() + " " + path.string());
      } catch (const std::system_error& e) {
        if (e.code() != std::errc::permission_denied && e.code() != std::errc::read_only_file_system) throw;
      }
      raw = ::open(path.c_str(), O_RDWR | O_NOFOLLOW | O_CLOEXEC);
    }
    if (raw == -1 && (errno == EACCES || errno == EROFS || errno == ENOENT)) {
      read_only_ = true;
      return;
    }
    if (raw == -1) prefork::throw_system_error("open " + path.string());
    try {
      generation_.emplace(prefork::shared<std::atomic<std::uint64_t>>::from_fd(raw));
    } catch (const std::system_error& e) {
      if (e.code() != std::errc::no_such_device) throw;  // this filesystem cannot map files: no cache anywhere
    }
  }

  void writable_or_throw() const {
    if (read_only_)
      throw std::system_error(EACCES, std::generic_category(),
                              (dir_ / "generation").string() +
                                  " is not writable here: other processes' caches would not see this write");
  }
  void bump() const {
    if (generation_) (*generation_)->fetch_add(1);
  }

  prefork::atomic_file begin_entry(std::string_view key) const {
    writable_or_throw();
    std::uint64_t version = 0;
    while (version == 0)
      if (::getrandom(&version, sizeof version, 0) != static_cast<ssize_t>(sizeof version) && errno != EINTR)
        prefork::throw_system_error("getrandom");
    prefork::atomic_file entry(entry_path(key), 0644);
    entry.write(std::to_string(key.size()) + " " + hex(version) + "\n");
    entry.write(key);
    return entry;
  }
  void commit(prefork::atomic_file& entry) const {
    try {
      entry.commit();
    } catch (...) {
      bump();  // the rename may have happened before the error (a failed directory fsync)
      throw;
    }
    bump();
  }

  // Opens key's entry and reads it into `buf`: all of it if it is at most
  // `whole` bytes, else its header and key. nullopt if there is none, or if
  // the file there is not key's entry (a hash collision).
  std::optional<opened> open_entry(std::string_view key, std::size_t whole, std::string& buf) const {
    opened e{prefork::fd(::open(entry_path(key).c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC)), {}, {}};
    if (!e.file && errno == ENOENT) return std::nullopt;
    if (!e.file || ::fstat(e.file.get(), &e.st) == -1) prefork::throw_system_error("open " + entry_path(key).string());
    std::optional<header> h = read_head(e.file.get(), static_cast<std::size_t>(e.st.st_size), whole, buf);
    if (!h || std::string_view(buf).substr(h->value_at - h->key_size, h->key_size) != key) return std::nullopt;
    e.head = *h;
    return e;
  }

  // Reads the entry open as `file`, `size` bytes, into `buf`: all of it if
  // it is at most `whole` bytes, else its header and key. nullopt if it is
  // not an entry. (An entry is never rewritten: a put makes a new file.)
  static std::optional<header> read_head(int file, std::size_t size, std::size_t whole, std::string& buf) {
    std::size_t want = size <= whole ? size : std::min<std::size_t>(size, 4096);
    for (int tries = 0; tries < 2; ++tries) {
      buf.resize(want);
      if (::pread(file, &buf[0], want, 0) != static_cast<ssize_t>(want)) return std::nullopt;
      const std::size_t newline = buf.find('\n');
      if (newline == std::string::npos) return std::nullopt;
      header h;
      const char* end = buf.data() + newline;
      auto length = std::from_chars(buf.data(), end, h.key_size);
      if (length.ec != std::errc() || h.key_size > size) return std::nullopt;
      if (length.ptr != end && (*length.ptr != ' ' || std::from_chars(length.ptr + 1, end, h.version, 16).ptr != end))
        return std::nullopt;
      h.value_at = newline + 1 + h.key_size;
      if (h.value_at <= want) return h;
      if (h.value_at > size) return std::nullopt;
      want = h.value_at;  // a key longer than the first read
    }
    return std::nullopt;
  }

  static std::string etag_of(const header& h, const struct stat& st) {
    if (h.version) return "\"" + hex(h.version) + "\"";
    return "\"" + hex(static_cast<std::uint64_t>(st.st_ino)) + "-" +
           hex(static_cast<std::uint64_t>(st.st_mtim.tv_sec) * 1000000000u +
               static_cast<std::uint64_t>(st.st_mtim.tv_nsec)) +
           "\"";
  }

  std::filesystem::path dir_;
  cache_limits limits_;
  std::optional<prefork::shared<std::atomic<std::uint64_t>>> generation_;  // none: nothing cached
  bool read_only_ = false;
  std::unordered_map<std::string, cached> cache_;
  std::size_t cached_bytes_ = 0;
  std::uint64_t cache_generation_ = 0;
  time_t cache_since_ = 0;
  std::string key_, scratch_, etag_;  // reused: a hit allocates nothing
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
