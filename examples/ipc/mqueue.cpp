// ipc-mqueue: a POSIX message queue.
//
// Good for: discrete messages with priorities between processes, without a
// stream to frame: each mq_send is one message, mq_receive returns the
// oldest message of the highest priority, and the queue holds messages
// while nobody reads (up to a fixed count). Costs: a name in a kernel-wide
// namespace that outlives its creator unless unlinked, small per-user limits
// (fs.mqueue.msg_max, msgsize_max, RLIMIT_MSGQUEUE), a copy in and a copy out
// per message, and no prefork wrapper, so the C API is used here directly
// with a small RAII class.
//
// The name is unique per run and unlinked at once: the queue lives on only
// through the descriptors, which the child inherits across fork, so a kill
// at any moment after that leaves nothing behind.
#include <prefork/process.hpp>

#include <fcntl.h>
#include <mqueue.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <system_error>
#include <vector>

namespace {

class message_queue {
 public:
  explicit message_queue(const std::string& name) {
    mq_attr attr{};
    attr.mq_maxmsg = 8;
    attr.mq_msgsize = 128;
    q_ = ::mq_open(name.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600, &attr);
    if (q_ == mqd_t(-1)) throw std::system_error(errno, std::generic_category(), "mq_open " + name);
    ::mq_unlink(name.c_str());  // nameless from here on
  }
  message_queue(const message_queue&) = delete;
  message_queue& operator=(const message_queue&) = delete;
  ~message_queue() { ::mq_close(q_); }

  void send(const std::string& m, unsigned priority) {
    while (::mq_send(q_, m.data(), m.size(), priority) == -1)
      if (errno != EINTR) throw std::system_error(errno, std::generic_category(), "mq_send");
  }
  std::string receive(unsigned& priority) {
    char buf[128];
    ssize_t n;
    while ((n = ::mq_receive(q_, buf, sizeof buf, &priority)) == -1)
      if (errno != EINTR) throw std::system_error(errno, std::generic_category(), "mq_receive");
    return std::string(buf, static_cast<std::size_t>(n));
  }

 private:
  mqd_t q_;
};

}  // namespace

int main() {
  auto now = std::chrono::steady_clock::now().time_since_epoch().count();
  message_queue q("/prefork-ipc-mq-" + std::to_string(::getpid()) + "-" + std::to_string(now));
  const std::vector<unsigned> priorities = {1, 5, 3, 5, 2};
  std::fflush(stdout);
  auto kid = prefork::fork();
  if (!kid) {
    for (std::size_t i = 0; i < priorities.size(); ++i)
      q.send("message " + std::to_string(i) + " (priority " + std::to_string(priorities[i]) + ")", priorities[i]);
    ::_exit(0);
  }
  bool ok = kid->wait().success();  // all sent and queued before we read one
  std::vector<std::string> order;
  unsigned last = ~0u;
  for (std::size_t i = 0; ok && i < priorities.size(); ++i) {
    unsigned priority = 0;
    order.push_back(q.receive(priority));
    std::printf("received %s\n", order.back().c_str());
    ok = priority <= last;
    last = priority;
  }
  // Highest priority first, first-in first-out within one priority.
  ok = ok && order.size() == 5 && order[0].rfind("message 1", 0) == 0 && order[1].rfind("message 3", 0) == 0 &&
       order[4].rfind("message 0", 0) == 0;
  std::printf("%s\n", ok ? "mqueue: OK" : "mqueue: FAILED");
  return ok ? 0 : 1;
}
