// The stress run of atomic_store: writer and reader processes on one set of
// keys for a while, every read (through the reader's own cache) checked,
// optionally with writers SIGKILLed at random moments (and replaced) while
// sweeps run beside the live writers.
// Counters live in a prefork::shared_array, so the children need no channel
// back to the parent.
#pragma once

#include "atomic_store.hpp"

#include <prefork/pipe.hpp>
#include <prefork/process.hpp>
#include <prefork/shm.hpp>

#include <poll.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

namespace atomic_store {

struct stress_options {
  unsigned writers = 8, readers = 8, keys = 50;
  double seconds = 3;
  bool kill_writers = false;  // SIGKILL writers at random moments, sweep meanwhile
};

struct stress_report {
  std::uint64_t puts = 0, dels = 0, gets = 0, hits = 0, misses = 0, torn = 0, errors = 0;
  std::uint64_t kills = 0, swept = 0, temps_left = 0, bad_entries = 0;
  double seconds = 0;
  bool ok() const { return torn == 0 && errors == 0 && temps_left == 0 && bad_entries == 0; }
  std::string text() const {
    char buf[512];
    std::snprintf(buf, sizeof buf,
                  "%.1f s: %llu puts (%.0f/s), %llu dels, %llu gets (%.0f/s): %llu hits, %llu misses, %llu torn; "
                  "%llu errors; %llu writers killed, %llu temps swept, %llu left; %llu bad entries at the end",
                  seconds, ull(puts), double(puts) / seconds, ull(dels), ull(gets), double(gets) / seconds, ull(hits),
                  ull(misses), ull(torn), ull(errors), ull(kills), ull(swept), ull(temps_left), ull(bad_entries));
    return buf;
  }

 private:
  static unsigned long long ull(std::uint64_t v) { return v; }
};

namespace detail {

enum counter { puts, dels, gets, hits, misses, torn, errors, stop, n_counters };

inline std::string key_name(unsigned k) { return "key-" + std::to_string(k); }

// A child's body: runs until the stop counter is set, then _exits.
[[noreturn]] inline void writer(const store& s, const stress_options& o, unsigned id,
                                const prefork::shared_array<std::atomic<std::uint64_t>>& c, int progress) {
  std::mt19937 rng(id * 7717u + static_cast<unsigned>(::getpid()));
  try {
    for (std::uint64_t seq = 0; c[stop] == 0; ++seq) {
      std::string key = key_name(static_cast<unsigned>(rng() % o.keys));
      if (rng() % 100 == 0) {
        s.del(key);
        ++c[dels];
      } else {
        s.put(key, make_value(id, seq));
        ++c[puts];
      }
      ssize_t ignored = ::write(progress, "p", 1);  // non-blocking: a full pipe only skips a report
      (void)ignored;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "writer %u: %s\n", id, e.what());
    ++c[errors];
    ::_exit(1);
  }
  ::_exit(0);
}

[[noreturn]] inline void reader(const store& s, const stress_options& o, unsigned id,
                                const prefork::shared_array<std::atomic<std::uint64_t>>& c) {
  std::mt19937 rng(id * 104729u + static_cast<unsigned>(::getpid()));
  try {
    store mine(s.dir());  // its own cache, dropped when a writer moves the counter
    while (c[stop] == 0) {
      const std::string key = key_name(static_cast<unsigned>(rng() % o.keys));
      std::optional<found> f = mine.find(key);
      std::optional<std::string> value;
      if (f) value = f->file ? s.get(key) : std::string(f->value);
      ++c[gets];
      if (!value) {
        ++c[misses];
      } else if (valid_value(*value)) {
        ++c[hits];
      } else if (c[torn]++ == 0) {
        std::fprintf(stderr, "reader %u: torn value (%zu bytes): %.60s\n", id, value->size(), value->c_str());
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "reader %u: %s\n", id, e.what());
    ++c[errors];
    ::_exit(1);
  }
  ::_exit(0);
}

}  // namespace detail

inline stress_report run_stress(const store& s, const stress_options& o) {
  using clock = std::chrono::steady_clock;
  prefork::shared_array<std::atomic<std::uint64_t>> c(detail::n_counters);
  auto progress = prefork::pipe(O_NONBLOCK);
  std::vector<prefork::child> writers, readers;
  unsigned next_id = 0;
  auto start_writer = [&] {
    unsigned id = next_id++;
    auto kid = prefork::fork();
    if (!kid) detail::writer(s, o, id, c, progress.write.get());
    return std::move(*kid);
  };
  const auto start = clock::now();
  const auto deadline = start + std::chrono::duration_cast<clock::duration>(std::chrono::duration<double>(o.seconds));
  for (unsigned i = 0; i < o.writers; ++i) writers.push_back(start_writer());
  for (unsigned i = 0; i < o.readers; ++i) {
    auto kid = prefork::fork();
    if (!kid) detail::reader(s, o, i, c);
    readers.push_back(std::move(*kid));
  }

  stress_report r;
  std::mt19937 rng(std::random_device{}());
  int puts_until_kill = 1 + static_cast<int>(rng() % 40);
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock::now()).count();
    if (left <= 0) break;
    // Without kills this just waits out the run; with them, the writers'
    // progress reports count down to the next kill.
    pollfd p{progress.read.get(), POLLIN, 0};
    ::poll(&p, o.kill_writers && !writers.empty() ? 1 : 0, static_cast<int>(std::min<long long>(left, 1000)));
    char buf[256];
    ssize_t n = ::read(progress.read.get(), buf, sizeof buf);
    if (!o.kill_writers || writers.empty() || n <= 0 || (puts_until_kill -= static_cast<int>(n)) > 0) continue;
    auto& victim = writers[rng() % writers.size()];
    victim.kill(SIGKILL);
    victim.wait();
    ++r.kills;
    r.swept += s.sweep();  // other writers are mid-put right now: their temps must survive
    victim = start_writer();
    puts_until_kill = 1 + static_cast<int>(rng() % 40);
  }
  c[detail::stop] = 1;
  for (auto& w : writers) w.wait();
  for (auto& rd : readers) rd.wait();
  r.seconds = std::chrono::duration<double>(clock::now() - start).count();

  r.swept += s.sweep();
  for (auto& e : std::filesystem::directory_iterator(s.dir()))
    if (e.path().filename().string()[0] == '.') ++r.temps_left;
  for (unsigned k = 0; k < o.keys; ++k)
    if (auto v = s.get(detail::key_name(k)); v && !valid_value(*v)) ++r.bad_entries;
  r.puts = c[detail::puts];
  r.dels = c[detail::dels];
  r.gets = c[detail::gets];
  r.hits = c[detail::hits];
  r.misses = c[detail::misses];
  r.torn = c[detail::torn];
  r.errors = c[detail::errors];
  return r;
}

}  // namespace atomic_store
