// atomic-store: the command-line front end of the lock-free file cache.
//
//   atomic-store DIR put KEY < value
//   atomic-store DIR get KEY            value on stdout; exit 1 if missing
//   atomic-store DIR del KEY            exit 1 if missing
//   atomic-store DIR sweep              remove temp files of dead writers
//   atomic-store DIR stress [--writers N] [--readers M] [--seconds S] [--keys K] [--kill-writers]
#include "atomic_store.hpp"
#include "stress.hpp"

#include <prefork/fd.hpp>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>

namespace {

int usage() {
  std::fprintf(stderr,
               "usage: atomic-store DIR put KEY < value\n"
               "       atomic-store DIR get KEY | del KEY | sweep\n"
               "       atomic-store DIR stress [--writers N] [--readers M] [--seconds S] [--keys K] "
               "[--kill-writers]\n");
  return 2;
}

int stress(const atomic_store::store& s, int argc, char** argv) {
  atomic_store::stress_options o;
  for (int i = 0; i < argc; ++i) {
    std::string flag = argv[i];
    if (flag == "--kill-writers") {
      o.kill_writers = true;
      continue;
    }
    if (i + 1 >= argc) return usage();
    const char* value = argv[++i];
    if (flag == "--writers") o.writers = static_cast<unsigned>(std::atoi(value));
    else if (flag == "--readers") o.readers = static_cast<unsigned>(std::atoi(value));
    else if (flag == "--keys") o.keys = static_cast<unsigned>(std::atoi(value));
    else if (flag == "--seconds") o.seconds = std::atof(value);
    else return usage();
  }
  if (o.keys == 0 || o.seconds <= 0) return usage();
  std::printf("stress: %u writers, %u readers, %u keys, %.1f s%s\n", o.writers, o.readers, o.keys, o.seconds,
              o.kill_writers ? ", killing writers" : "");
  auto report = atomic_store::run_stress(s, o);
  std::printf("%s\n%s\n", report.text().c_str(), report.ok() ? "OK" : "FAILED");
  return report.ok() ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) return usage();
  try {
    atomic_store::store s(argv[1]);
    std::string command = argv[2];
    if (command == "put" && argc == 4) {
      s.put(argv[3], prefork::read_all(0));
      return 0;
    }
    if (command == "get" && argc == 4) {
      auto value = s.get(argv[3]);
      if (!value) {
        std::fprintf(stderr, "atomic-store: no entry for '%s'\n", argv[3]);
        return 1;
      }
      prefork::write_all(1, *value);
      return 0;
    }
    if (command == "del" && argc == 4) return s.del(argv[3]) ? 0 : 1;
    if (command == "sweep" && argc == 3) {
      std::printf("%zu stale temp files removed\n", s.sweep());
      return 0;
    }
    if (command == "stress") return stress(s, argc - 3, argv + 3);
    return usage();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "atomic-store: %s\n", e.what());
    return 1;
  }
}
