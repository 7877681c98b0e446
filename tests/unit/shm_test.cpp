// shm.hpp in one process: value-initialisation, ownership and moves, the
// memfd (CLOEXEC, sealed size), from_fd sharing the same memory and refusing
// the wrong size. Across fork and exec: tests/integration/shm_test.cpp.
#include <doctest/doctest.h>

#include <prefork/pipe.hpp>
#include <prefork/shm.hpp>

#include <atomic>
#include <cstdint>
#include <numeric>

#include "leak_check.hpp"

namespace {

struct counters {
  std::atomic<std::uint64_t> hits;
  int plain;
  int preset = 7;  // default member initialisers run
  char text[16];
};

bool is_open(int raw) { return ::fcntl(raw, F_GETFD) != -1; }

prefork::fd dup_of(int raw) { return prefork::fd(::fcntl(raw, F_DUPFD_CLOEXEC, 0)); }

}  // namespace

TEST_CASE("shared<T> is value-initialised, reachable through get, * and ->") {
  prefork::test::leak_check leaks;
  {
    prefork::shared<counters> c;
    REQUIRE(c);
    CHECK(c->hits.load() == 0);
    CHECK(c->plain == 0);
    CHECK(c->preset == 7);
    CHECK(c->text[15] == 0);
    c->hits += 3;
    (*c).plain = 5;
    CHECK(c.get()->hits == 3);
    CHECK(c.get()->plain == 5);
    CHECK(reinterpret_cast<std::uintptr_t>(c.get()) % alignof(counters) == 0);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("the memfd is CLOEXEC and sealed at its size; destruction closes it") {
  int raw;
  {
    prefork::shared<std::atomic<int>> s;
    raw = s.memfd();
    CHECK((::fcntl(raw, F_GETFD) & FD_CLOEXEC) != 0);
    CHECK(::ftruncate(raw, 0) == -1);
    CHECK(errno == EPERM);
    CHECK(::ftruncate(raw, 1 << 20) == -1);
    int seals = ::fcntl(raw, F_GET_SEALS);
    CHECK((seals & (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)) ==
          (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL));
  }
  CHECK_FALSE(is_open(raw));
}

TEST_CASE("moves transfer the mapping; a moved-from shared holds nothing") {
  prefork::test::leak_check leaks;
  {
    prefork::shared<int> a;
    *a = 11;
    int* where = a.get();
    prefork::shared<int> b(std::move(a));
    CHECK_FALSE(a);
    CHECK(a.get() == nullptr);
    CHECK(a.memfd() == -1);
    CHECK(b.get() == where);
    CHECK(*b == 11);
    prefork::shared<int> c;
    int old_fd = c.memfd();
    c = std::move(b);  // c's own mapping and memfd go
    CHECK_FALSE(is_open(old_fd));
    CHECK(*c == 11);
    auto& same = c;
    c = std::move(same);  // self-move keeps the mapping
    CHECK(*c == 11);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("from_fd maps the same memory, takes the fd, and checks the size") {
  prefork::test::leak_check leaks;
  {
    prefork::shared<counters> original;
    original->plain = 42;
    auto again = prefork::shared<counters>::from_fd(dup_of(original.memfd()).release());
    CHECK(again.get() != original.get());  // a second mapping...
    CHECK(again->plain == 42);             // ...of the same pages
    again->hits.fetch_add(9);
    CHECK(original->hits.load() == 9);
    CHECK(again->preset == 7);  // from_fd does not re-initialise

    CHECK_THROWS_WITH_AS(prefork::shared<char>::from_fd(dup_of(original.memfd())),
                         doctest::Contains("expected 1"), std::invalid_argument);
    prefork::shared_array<char> bytes(sizeof(counters) + 1);
    CHECK_THROWS_WITH_AS(
        prefork::shared<counters>::from_fd(dup_of(bytes.memfd()).release()),
        doctest::Contains(("holds " + std::to_string(sizeof(counters) + 1) + " bytes").c_str()),
        std::invalid_argument);
    auto p = prefork::pipe();
    CHECK_THROWS_WITH_AS(prefork::shared<int>::from_fd(std::move(p.read)), doctest::Contains("not a memfd"),
                         std::invalid_argument);
    CHECK_THROWS_AS(prefork::shared<int>::from_fd(1000000), std::system_error);
  }
  CHECK(leaks.problems() == "");  // the fds given to failing from_fd calls were closed too
}

TEST_CASE("shared_array: n value-initialised elements, indexing, iteration, bounds") {
  prefork::test::leak_check leaks;
  {
    prefork::shared_array<counters> a(5);
    CHECK(a.size() == 5);
    for (auto& c : a) CHECK(c.preset == 7);
    for (std::size_t i = 0; i < a.size(); ++i) a[i].plain = static_cast<int>(i);
    CHECK(a.end() - a.begin() == 5);
    CHECK(a.data() == &a[0]);
    CHECK(a.at(4).plain == 4);
    CHECK_THROWS_WITH_AS(a.at(5), doctest::Contains("index 5 >= size 5"), std::out_of_range);

    prefork::shared_array<std::uint32_t> big(100000);
    CHECK(std::accumulate(big.begin(), big.end(), 0u) == 0u);

    CHECK_THROWS_AS(prefork::shared_array<int>(0), std::invalid_argument);
    CHECK_THROWS_WITH_AS(prefork::shared_array<std::uint64_t>(std::size_t(1) << 62),
                         doctest::Contains("overflow"), std::invalid_argument);
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("shared_array::from_fd takes its size from the memfd, or checks the one given") {
  prefork::test::leak_check leaks;
  {
    prefork::shared_array<std::atomic<long>> a(8);
    a[7] = 70;
    auto b = prefork::shared_array<std::atomic<long>>::from_fd(dup_of(a.memfd()).release());
    CHECK(b.size() == 8);
    CHECK(b[7] == 70);
    b[0] += 5;
    CHECK(a[0] == 5);
    auto c = prefork::shared_array<std::atomic<long>>::from_fd(dup_of(a.memfd()).release(), 8);
    CHECK(c.size() == 8);
    CHECK_THROWS_WITH_AS(prefork::shared_array<std::atomic<long>>::from_fd(dup_of(a.memfd()).release(), 9),
                         doctest::Contains("expected 72"), std::invalid_argument);
    CHECK_THROWS_AS(prefork::shared_array<std::atomic<long>>::from_fd(dup_of(a.memfd()).release(), 0),
                    std::invalid_argument);
    // 8 longs are 64 bytes: not a whole number of 3-byte elements.
    struct three {
      char c[3];
    };
    CHECK_THROWS_WITH_AS(prefork::shared_array<three>::from_fd(dup_of(a.memfd()).release()),
                         doctest::Contains("multiple of 3"), std::invalid_argument);
    prefork::shared_array<std::atomic<long>> moved(std::move(b));
    CHECK(b.size() == 0);
    CHECK(b.begin() == b.end());
    CHECK(moved[7] == 70);
  }
  CHECK(leaks.problems() == "");
}
