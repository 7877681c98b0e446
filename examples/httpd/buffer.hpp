// httpd/buffer.hpp: a connection's byte buffer.
//
// Bytes arrive at the end and are consumed from the front; the storage is
// kept between requests, so once a connection has seen its largest request
// no read allocates. Unlike std::string, growing does not zero-fill space
// that read(2) is about to overwrite.
#pragma once

#include <cstddef>
#include <cstring>
#include <memory>
#include <string_view>

namespace httpd {

class byte_buffer {
 public:
  std::string_view view() const noexcept { return {data_.get() + begin_, end_ - begin_}; }
  std::size_t size() const noexcept { return end_ - begin_; }
  bool empty() const noexcept { return begin_ == end_; }

  // Room for at least `want` more bytes at the end; returns where they go.
  char* space(std::size_t want) {
    if (cap_ - end_ < want) {
      std::size_t used = size();
      if (begin_ > 0 && cap_ - used >= want) {
        std::memmove(data_.get(), data_.get() + begin_, used);  // compact: cheaper than growing
      } else {
        std::size_t cap = cap_ ? cap_ : 4096;
        while (cap - used < want) cap *= 2;
        std::unique_ptr<char[]> bigger(new char[cap]);
        if (used) std::memcpy(bigger.get(), data_.get() + begin_, used);
        data_ = std::move(bigger);
        cap_ = cap;
      }
      begin_ = 0;
      end_ = used;
    }
    return data_.get() + end_;
  }
  std::size_t room() const noexcept { return cap_ - end_; }
  void commit(std::size_t n) noexcept { end_ += n; }
  void consume(std::size_t n) noexcept {
    begin_ += n < size() ? n : size();
    if (begin_ == end_) begin_ = end_ = 0;
  }
  // Drops n bytes at pos, keeping what is before and after: a body spooled
  // to a file leaves the buffer, the request head before it stays.
  void erase(std::size_t pos, std::size_t n) noexcept {
    if (pos >= size()) return;
    if (n > size() - pos) n = size() - pos;
    char* at = data_.get() + begin_ + pos;
    std::memmove(at, at + n, size() - pos - n);
    end_ -= n;
  }
  void clear() noexcept { begin_ = end_ = 0; }
  // Empties the buffer and gives its storage back if it grew past `keep`
  // bytes: a slot that once carried a large head or body must not hold
  // that memory for every connection that reuses it.
  void clear_and_trim(std::size_t keep) noexcept {
    clear();
    if (cap_ > keep) {
      data_.reset();
      cap_ = 0;
    }
  }

 private:
  std::unique_ptr<char[]> data_;
  std::size_t cap_ = 0, begin_ = 0, end_ = 0;
};

}  // namespace httpd
