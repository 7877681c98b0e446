// httpd/uring_worker.cpp: the io_uring loop (see uring_worker.hpp and
// docs/uring.md).
#include "uring_worker.hpp"

#include <liburing.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>

#include <prefork/fd.hpp>
#include <prefork/worker.hpp>

#include "evented_worker.hpp"

namespace httpd {
namespace {

std::string describe(const char* call, int negative_errno) {
  return std::string(call) + ": " + std::strerror(-negative_errno);
}

// A ring of provided buffers (IORING_REGISTER_PBUF_RING) in memory of our
// own: liburing 2.3, Debian's, has no io_uring_setup_buf_ring.
class buffer_ring {
 public:
  buffer_ring() = default;
  buffer_ring(const buffer_ring&) = delete;
  buffer_ring& operator=(const buffer_ring&) = delete;
  ~buffer_ring() {
    if (ring_ && registered_) io_uring_unregister_buf_ring(ring_, group_);
    if (map_ != MAP_FAILED) ::munmap(map_, map_size_);
  }

  // entries: a power of two. 0, or a negative errno naming what failed.
  int setup(io_uring* ring, unsigned entries, unsigned size, unsigned short group) {
    entries_ = entries;
    size_ = size;
    group_ = group;
    map_size_ = entries * sizeof(io_uring_buf) + std::size_t(entries) * size;
    map_ = ::mmap(nullptr, map_size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (map_ == MAP_FAILED) return -errno;
    br_ = static_cast<io_uring_buf_ring*>(map_);
    io_uring_buf_ring_init(br_);
    io_uring_buf_reg reg{};
    reg.ring_addr = reinterpret_cast<unsigned long>(map_);
    reg.ring_entries = entries;
    reg.bgid = group;
    int r = io_uring_register_buf_ring(ring, &reg, 0);
    if (r < 0) return r;
    ring_ = ring;
    registered_ = true;
    for (unsigned i = 0; i < entries; ++i) give_back(i);
    return 0;
  }
  char* buffer(unsigned id) const {
    return static_cast<char*>(map_) + entries_ * sizeof(io_uring_buf) + std::size_t(id) * size_;
  }
  // The kernel may fill it again.
  void give_back(unsigned id) {
    io_uring_buf_ring_add(br_, buffer(id), size_, static_cast<unsigned short>(id),
                          io_uring_buf_ring_mask(entries_), 0);
    io_uring_buf_ring_advance(br_, 1);
  }
  unsigned short group() const { return group_; }

 private:
  io_uring* ring_ = nullptr;
  bool registered_ = false;
  void* map_ = MAP_FAILED;
  std::size_t map_size_ = 0;
  io_uring_buf_ring* br_ = nullptr;
  unsigned entries_ = 0, size_ = 0;
  unsigned short group_ = 0;
};

struct ring_guard {
  io_uring* ring;
  ~ring_guard() { io_uring_queue_exit(ring); }
};

// Why io_uring_setup failed, with what the system says about it.
std::string setup_failure(int r) {
  std::string why = describe("io_uring_setup", r);
  std::ifstream sysctl("/proc/sys/kernel/io_uring_disabled");
  int disabled = 0;
  if (sysctl >> disabled && disabled != 0)
    return why + " (kernel.io_uring_disabled is " + std::to_string(disabled) + ")";
  if (r == -ENOSYS) return why + " (a kernel without io_uring)";
  if (r == -EPERM) return why + " (a seccomp filter or a security module refused it)";
  return why;
}

}  // namespace

std::string uring_unavailable() {
  if (const char* e = std::getenv("PREFORK_HTTPD_NO_URING"); e && *e && std::strcmp(e, "0") != 0)
    return "disabled by PREFORK_HTTPD_NO_URING";
  io_uring ring{};
  io_uring_params params{};
  int r = io_uring_queue_init_params(8, &ring, &params);
  if (r < 0) return setup_failure(r);
  ring_guard guard{&ring};
  if (!(params.features & IORING_FEAT_EXT_ARG)) return "no IORING_FEAT_EXT_ARG (timed waits; Linux 5.11)";
  if (!(params.features & IORING_FEAT_NODROP)) return "no IORING_FEAT_NODROP (Linux 5.5)";
  io_uring_probe* probe = io_uring_get_probe_ring(&ring);
  if (!probe) return "no IORING_REGISTER_PROBE (Linux 5.6)";
  struct {
    int op;
    const char* name;
  } const needed[] = {{IORING_OP_ACCEPT, "IORING_OP_ACCEPT"},
                      {IORING_OP_RECV, "IORING_OP_RECV"},
                      {IORING_OP_SEND, "IORING_OP_SEND"},
                      {IORING_OP_POLL_ADD, "IORING_OP_POLL_ADD"},
                      {IORING_OP_ASYNC_CANCEL, "IORING_OP_ASYNC_CANCEL"},
                      {IORING_OP_SHUTDOWN, "IORING_OP_SHUTDOWN"}};
  for (const auto& op : needed) {
    if (!io_uring_opcode_supported(probe, op.op)) {
      io_uring_free_probe(probe);
      return std::string("no ") + op.name;
    }
  }
  io_uring_free_probe(probe);

  buffer_ring buffers;
  if ((r = buffers.setup(&ring, 1, 64, 0)) < 0)
    return describe("io_uring_register_buf_ring", r) + " (provided buffer rings; Linux 5.19)";

  // Multishot accept and multishot receive, tried for real: the opcodes
  // exist long before their multishot flags do.
  prefork::fd listener(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  socklen_t len = sizeof(sa_family_t);  // autobind: an abstract name of the kernel's choosing
  if (!listener || ::bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), len) == -1 ||
      ::listen(listener.get(), 4) == -1 ||
      (len = sizeof addr, ::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&addr), &len)) == -1)
    return std::string("a unix socket to try io_uring on: ") + std::strerror(errno);
  int pair[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, pair) == -1)
    return std::string("socketpair: ") + std::strerror(errno);
  prefork::fd mine(pair[0]), theirs(pair[1]);

  io_uring_sqe* sqe = io_uring_get_sqe(&ring);
  io_uring_prep_multishot_accept(sqe, listener.get(), nullptr, nullptr, SOCK_CLOEXEC);
  sqe->user_data = 1;
  sqe = io_uring_get_sqe(&ring);
  io_uring_prep_recv_multishot(sqe, mine.get(), nullptr, 0, 0);
  sqe->flags |= IOSQE_BUFFER_SELECT;
  sqe->buf_group = buffers.group();
  sqe->user_data = 2;
  if ((r = io_uring_submit(&ring)) < 0) return describe("io_uring_enter", r);
  prefork::fd client(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!client || ::connect(client.get(), reinterpret_cast<sockaddr*>(&addr), len) == -1)
    return std::string("connect to a unix socket to try io_uring on: ") + std::strerror(errno);
  if (::write(theirs.get(), "x", 1) != 1)
    return std::string("write to a socket pair: ") + std::strerror(errno);

  bool accepted = false, received = false;
  for (int turn = 0; turn < 4 && !(accepted && received); ++turn) {
    __kernel_timespec wait{1, 0};
    io_uring_cqe* cqe = nullptr;
    r = io_uring_submit_and_wait_timeout(&ring, &cqe, 1, &wait, nullptr);
    if (r == -ETIME) break;
    if (r < 0 && r != -EINTR) return describe("io_uring_enter", r);
    unsigned head, seen = 0;
    io_uring_for_each_cqe(&ring, head, cqe) {
      ++seen;
      const bool more = cqe->flags & IORING_CQE_F_MORE;
      if (cqe->user_data == 1) {
        if (cqe->res < 0) return describe("multishot accept", cqe->res) + " (Linux 5.19)";
        ::close(cqe->res);
        if (!more) return "multishot accept ended after one connection (Linux 5.19)";
        accepted = true;
      } else if (cqe->user_data == 2) {
        if (cqe->res < 0) return describe("multishot recv", cqe->res) + " (Linux 6.0)";
        if (!(cqe->flags & IORING_CQE_F_BUFFER))
          return "multishot recv without a provided buffer (Linux 6.0)";
        if (!more) return "multishot recv ended after one completion (Linux 6.0)";
        received = true;
      }
    }
    io_uring_cq_advance(&ring, seen);
  }
  if (!accepted) return "multishot accept did not complete (Linux 5.19)";
  if (!received) return "multishot recv did not complete (Linux 6.0)";
  return "";
}

void run_uring(server& srv, prefork::worker& w) {
  // The loop itself comes next; until then the evented one serves.
  run_evented(srv, w);
}

}  // namespace httpd
