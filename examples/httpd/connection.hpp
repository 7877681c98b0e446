// httpd/connection.hpp: what the evented and the io_uring loops share: a
// connection's HTTP state and everything done with it between bytes
// arriving and bytes to send (parsing, pipelining, bodies and their spool,
// 100-continue, the responses, the access log and the scoreboard, the
// timeouts and their sweep, the graceful stop's policy, the connection cap).
//
// A loop derives from http_engine and supplies the I/O: flush() sends what
// a connection has to send (c.out, then a file body, then generated pieces)
// and calls output_done() once all of it left; close() ends a connection
// and calls release(); finish() a lingering close; stop_accepting() and
// start_accepting() follow the cap. The loop hands over what it read with
// received() and peer_closed(). Keeping the protocol here is what makes the
// two modes answer request for request the same.
#pragma once

#include <netinet/in.h>
#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <prefork/fd.hpp>

#include "buffer.hpp"
#include "http_chunked.hpp"
#include "http_parser.hpp"
#include "routes.hpp"

namespace prefork {
class worker;
}

namespace httpd {

using steady = std::chrono::steady_clock;

// The loops' clock for timeouts: CLOCK_MONOTONIC as of the kernel's last
// timer tick. It is read several times per request, and costs a few
// nanoseconds where the precise clock costs twenty (here: a third of the
// loop's own CPU time); a few milliseconds late is nothing against
// timeouts of a second. Only the access log's durations use steady::now().
steady::time_point coarse_now();

enum class phase : std::uint8_t {
  head,      // reading a request head (or idle between requests)
  body,      // reading the body of a parsed head
  draining,  // answered and shut down for writing; discarding input until EOF
};

// What the current deadline means when it passes.
enum class timer : std::uint8_t { header, keepalive, body, send, linger };

struct connection {
  explicit connection(const limits& lim) : parser(lim), chunks(lim.max_body, lim) {}
  virtual ~connection() = default;

  prefork::fd sock;
  std::uint32_t index = 0, generation = 0;
  sockaddr_storage peer{};
  bool admin = false;  // accepted on --admin-listen
  bool proxy = false;  // a PROXY header is still to come (--proxy-protocol)
  byte_buffer in;
  std::string out;
  std::size_t out_sent = 0;
  prefork::fd file;                            // a file body still to send after `out`
  std::function<bool(std::string&)> generate;  // a generated body still to send after `out`
  off_t file_offset = 0;
  std::size_t file_left = 0;
  request_parser parser;
  chunked_decoder chunks;
  std::string body;           // a decoded chunked body
  prefork::fd spool;          // the body, when larger than the application keeps in memory
  std::size_t spooled = 0;    // its bytes so far
  std::size_t chunk_fed = 0;  // input bytes of the body given to `chunks`
  bool continue_sent = false;
  phase stage = phase::head;
  timer kind = timer::header;
  steady::time_point deadline;
  bool close_after = false;    // close once the output is sent
  bool linger = false;         // ... and drain input first (it was not all read)
  bool idle = true;            // no request in hand: between requests, nothing buffered
  bool fresh = true;           // accepted, and no request begun yet (the stop keeps it)
  bool peer_done = false;      // the client shut down its sending side
  steady::time_point started;  // of the request in hand: its duration, for the log and /_metrics

  bool sending() const { return out_sent < out.size() || file_left > 0 || generate; }
};

class http_engine {
 public:
  http_engine(server& srv, prefork::worker& w);
  virtual ~http_engine();
  http_engine(const http_engine&) = delete;
  http_engine& operator=(const http_engine&) = delete;

 protected:
  // The loop's I/O --------------------------------------------------------

  // Sends c.out, then the file body, then generated pieces (next_piece).
  // True when everything went out (output_done() said the connection stays
  // for more requests); false while it waits to send, or when it closed.
  virtual bool flush(connection& c) = 0;
  // Ends the connection now; calls release(c).
  virtual void close(connection& c) = 0;
  // The answer is out and the connection ends: shut down for writing and
  // drain the input first when it lingers, else close.
  virtual void finish(connection& c);
  virtual void stop_accepting() = 0;
  virtual void start_accepting() = 0;
  // A loop's own per-connection state lives in a type derived from connection.
  virtual std::unique_ptr<connection> make_connection(const limits& lim);
  // Whether bytes wait unread on a connection the graceful stop would close
  // as idle (a request already on its way is then answered).
  virtual bool input_pending(connection&) { return false; }

  // For the loop ------------------------------------------------------------

  // A slot for a new connection from listener `listener`, its header timer set.
  connection& open(prefork::fd sock, const sockaddr_storage& peer, std::size_t listener);
  // The protocol's part of closing (c.sock already closed or released):
  // buffers trimmed, the count, accepting again below the cap. The slot is
  // reused at once unless keep_slot (the loop calls recycle() later).
  void release(connection& c, bool keep_slot = false);
  void recycle(connection& c) { free_.push_back(c.index); }
  // Bytes were appended to c.in.
  void received(connection& c);
  // The client shut down its sending side (a read returned 0).
  void peer_closed(connection& c);
  // Answers what can be answered and sends it, and goes on while requests
  // wait behind a file body that has now been sent.
  void drive(connection& c);
  // flush()'s end, once everything went out: the next request's timers, or
  // the close. True when the connection stays for more.
  bool output_done(connection& c);
  // A request begins: not idle, its header timer, its start for the log.
  void begin_request(connection& c);
  // Appends the next pieces of c's generated body to c.out (about 16 KiB).
  // False if the generator threw.
  bool next_piece(connection& c);
  // Sends what is left of c's file body with sendfile(2), straight from the
  // page cache, in either loop: all of it, until the socket is full, or
  // until an error or a file that shrank breaks the framing.
  enum class file_sent { all, socket_full, broken };
  file_sent send_file(connection& c);
  void set_deadline(connection& c, timer kind, std::chrono::milliseconds span);
  // Closes what timed out and finds the next deadline.
  void sweep();
  // QUIT: stop accepting, close idle connections, let the others finish.
  // A fresh connection is not idle: its client connected before the stop
  // and is owed an answer to its first request (without TCP_DEFER_ACCEPT,
  // on the admin socket, it is accepted before that request arrives). Its
  // header timer, within the graceful timeout, bounds the wait.
  void begin_stop();
  // accept4 failed with EMFILE or ENFILE (err): stop accepting until a
  // connection closes, and hold no more connections than fit from now on,
  // so this happens once, not at every close. Said once, in the error log.
  void out_of_descriptors(int err);
  // When the loop should wake at the latest: the nearest deadline, the
  // heartbeat, the graceful stop's end.
  steady::time_point wake_by(steady::time_point now) const;
  // The graceful stop is over: no connection left, or its time is up.
  bool stop_done(steady::time_point now) const { return stopping_ && (live_ == 0 || now >= stop_deadline_); }

  server& srv_;
  prefork::worker& w_;
  limits lim_;
  std::vector<std::unique_ptr<connection>> conns_;
  std::vector<std::uint32_t> free_;
  std::size_t live_ = 0, cap_ = 0;
  bool listening_ = false, stopping_ = false;
  steady::time_point nearest_ = steady::time_point::max(), stop_deadline_, turn_start_;
  std::chrono::milliseconds tick_every_{1000};
  reply reply_;

 private:
  bool take_proxy_header(connection& c);
  bool process(connection& c);
  bool spool(connection& c, std::string_view data);
  void ask_for_body(connection& c, const request& req);
  void respond(connection& c, const request* req);
  void set_activity(const request& req);

  std::string piece_;  // a generated body's piece, reused
};

}  // namespace httpd
