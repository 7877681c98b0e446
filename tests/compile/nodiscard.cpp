// Compiled, never run, by the nodiscard.* tests (tests/CMakeLists.txt): with
// DISCARD_<what> defined, one result that must not be dropped is dropped,
// and the compiler must refuse it under -Werror=unused-result; with nothing
// defined, the same calls with their results kept must compile.
#include <prefork.hpp>

int main() {
#if defined(DISCARD_spawn)
  prefork::spawn({"/bin/true"});  // the child would be killed at once
#elif defined(DISCARD_fork)
  prefork::fork();
#elif defined(DISCARD_fork_even_with_threads)
  prefork::fork_even_with_threads();
#elif defined(DISCARD_adopt)
  prefork::child::adopt(1);
#elif defined(DISCARD_pipe)
  prefork::pipe();
#elif defined(DISCARD_dup)
  prefork::fd open;
  open.dup();
#elif defined(DISCARD_listen)
  prefork::listen("127.0.0.1:0");
#elif defined(DISCARD_accept)
  prefork::accept(3);
#elif defined(DISCARD_connect)
  prefork::connect("127.0.0.1:1");
#elif defined(DISCARD_socket_pair)
  prefork::socket_pair();
#elif defined(DISCARD_recv_fds)
  prefork::recv_fds(3, 1);
#else
  prefork::child c = prefork::spawn({"/bin/true"});
  c.detach();  // the explicit way to let it outlive its handle
  std::optional<prefork::child> f = prefork::fork();
  std::optional<prefork::child> g = prefork::fork_even_with_threads();
  prefork::child a = prefork::child::adopt(1);
  prefork::pipe_ends p = prefork::pipe();
  prefork::fd d = p.read.dup();
  prefork::fd l = prefork::listen("127.0.0.1:0");
  prefork::fd s = prefork::accept(l.get());
  prefork::fd k = prefork::connect("127.0.0.1:1");
  std::pair<prefork::fd, prefork::fd> sp = prefork::socket_pair();
  std::vector<prefork::fd> r = prefork::recv_fds(sp.first.get(), 1);
#endif
  return 0;
}
