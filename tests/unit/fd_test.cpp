// fd.hpp and pipe.hpp: ownership, moves, flags, and the read/write loops.
#include <doctest/doctest.h>

#include <prefork/fd.hpp>
#include <prefork/pipe.hpp>

#include <sys/socket.h>

#include <thread>

#include "leak_check.hpp"

namespace {

bool is_open(int raw) { return ::fcntl(raw, F_GETFD) != -1; }

}  // namespace

TEST_CASE("fd closes what it owns, once") {
  prefork::test::leak_check leaks;
  int raw;
  {
    auto ends = prefork::pipe();
    raw = ends.read.get();
    CHECK(is_open(raw));
  }
  CHECK_FALSE(is_open(raw));
  CHECK(leaks.problems() == "");
}

TEST_CASE("fd moves transfer ownership; move assignment closes the old descriptor") {
  prefork::test::leak_check leaks;
  {
    auto a = prefork::pipe();
    auto b = prefork::pipe();
    int a_read = a.read.get(), b_read = b.read.get();
    prefork::fd moved(std::move(a.read));
    CHECK_FALSE(a.read);
    CHECK(moved.get() == a_read);
    moved = std::move(b.read);  // a's read end must be closed now
    CHECK_FALSE(is_open(a_read));
    CHECK(moved.get() == b_read);
    prefork::fd& alias = moved;  // through a reference: compilers rightly warn on a visible self-move
    moved = std::move(alias);    // self-move keeps the descriptor
    CHECK(is_open(b_read));
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("release gives up ownership; reset closes") {
  prefork::test::leak_check leaks;
  {
    auto ends = prefork::pipe();
    int raw = ends.read.release();
    CHECK_FALSE(ends.read);
    CHECK(is_open(raw));
    ends.read.reset(raw);
    ends.read.reset();
    CHECK_FALSE(is_open(raw));
    prefork::fd none;
    CHECK(none.get() == -1);
    CHECK_FALSE(none);
    none.close();  // closing nothing is not an error
  }
  CHECK(leaks.problems() == "");
}

TEST_CASE("pipe ends are CLOEXEC from birth, and dup keeps that") {
  auto ends = prefork::pipe();
  CHECK(ends.read.cloexec());
  CHECK(ends.write.cloexec());
  prefork::fd copy = ends.write.dup();
  CHECK(copy.get() != ends.write.get());
  CHECK(copy.cloexec());
  copy.set_cloexec(false);
  CHECK_FALSE(copy.cloexec());
  copy.set_cloexec(true);
  CHECK(copy.cloexec());
}

TEST_CASE("pipe flags: O_NONBLOCK honoured, nonsense refused") {
  auto ends = prefork::pipe(O_NONBLOCK);
  CHECK(ends.read.nonblocking());
  char c;
  auto r = prefork::read_some(ends.read.get(), &c, 1);
  CHECK(r.would_block());
  ends.read.set_nonblocking(false);
  CHECK_FALSE(ends.read.nonblocking());
  CHECK_THROWS_WITH_AS(prefork::pipe(O_APPEND), doctest::Contains("unsupported flags"),
                       std::invalid_argument);
}

TEST_CASE("write_all survives short writes on a non-blocking pipe; read_all reads to EOF") {
  prefork::test::leak_check leaks;
  auto ends = prefork::pipe(O_NONBLOCK);
  std::string big(1 << 20, 'x');  // 16 times the default pipe buffer
  for (std::size_t i = 0; i < big.size(); i += 4096) big[i] = static_cast<char>('a' + (i / 4096) % 26);
  std::string got;
  std::thread reader([&] {
    got = prefork::read_all(ends.read.get());  // EAGAIN -> poll inside
  });
  CHECK(prefork::write_all(ends.write.get(), big.data(), big.size()) == big.size());
  ends.write.reset();
  reader.join();
  CHECK(got == big);
  ends.read.reset();
  CHECK(leaks.problems() == "");
}

TEST_CASE("write_all reports EPIPE through the exception and the error_code overload") {
  ::signal(SIGPIPE, SIG_IGN);
  auto ends = prefork::pipe();
  ends.read.reset();
  std::error_code ec;
  CHECK(prefork::write_all(ends.write.get(), "x", 1, ec) == 0);
  CHECK(ec == std::errc::broken_pipe);
  CHECK_THROWS_AS(prefork::write_all(ends.write.get(), "x", 1), std::system_error);
  ::signal(SIGPIPE, SIG_DFL);
}

TEST_CASE("dup and flag calls on a closed descriptor name the call") {
  prefork::fd bad(1000000);
  CHECK_THROWS_WITH(bad.dup(), doctest::Contains("F_DUPFD_CLOEXEC"));
  CHECK_THROWS_WITH(bad.cloexec(), doctest::Contains("F_GETFD"));
  bad.release();
}
