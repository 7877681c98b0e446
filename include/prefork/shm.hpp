// prefork/shm.hpp: memory shared between a master and its workers.
//
// shared<T> is one T, shared_array<T> is n of them, in MAP_SHARED memory: a
// process forked after creation sees the same bytes, and because the memory
// is backed by a memfd, a process can keep it across exec by keeping the fd
// (clear its CLOEXEC, pass the number) and map it again with from_fd. The
// memfd's size is sealed, so no process can shrink it under another's
// mapping (which would turn accesses into SIGBUS).
//
// Only plain data and lock-free atomics may live here: T must be trivially
// copyable and trivially destructible (nobody owns the object, so nobody runs
// a destructor), and any std::atomic in it must be lock-free, since a
// non-lock-free atomic guards itself with a lock private to each process.
// That is checked at compile time where T is itself a std::atomic; for a
// struct of atomics, check `std::atomic<X>::is_always_lock_free` yourself.
// Pointers into private memory mean nothing to another process.
// Stands on memfd_create, ftruncate, fcntl (F_ADD_SEALS), fstat, mmap, munmap.
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstddef>
#include <limits>
#include <new>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include <prefork/error.hpp>
#include <prefork/fd.hpp>

namespace prefork {

namespace detail {

template <class T>
struct is_std_atomic : std::false_type {};
template <class U>
struct is_std_atomic<std::atomic<U>> : std::true_type {};

template <class T>
constexpr bool lock_free_if_atomic() {
  if constexpr (is_std_atomic<T>::value)
    return T::is_always_lock_free;
  else
    return true;
}

template <class T>
constexpr void check_shareable() {
  static_assert(std::is_trivially_copyable_v<T>,
                "shared memory holds only plain data and atomics (T must be trivially copyable)");
  static_assert(
      std::is_trivially_destructible_v<T>,
      "no process owns shared memory, so no destructor would run (T must be trivially destructible)");
  static_assert(lock_free_if_atomic<T>(),
                "a std::atomic that is not lock-free uses a per-process lock and breaks across processes");
  static_assert(alignof(T) <= 4096, "shared memory is page-aligned; T needs more");
}

// One mapping of a memfd, `bytes` long: the part shared<T> and
// shared_array<T> have in common.
class shared_mapping {
 public:
  shared_mapping() noexcept = default;

  // A new zero-filled memfd of `bytes`, sealed at that size, mapped.
  static shared_mapping create(std::size_t bytes, const char* name) {
    int raw = ::memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (raw == -1) throw_system_error(std::string("memfd_create ") + name);
    fd memfd(raw);
    if (::ftruncate(memfd.get(), static_cast<off_t>(bytes)) == -1)
      throw_system_error("ftruncate memfd to " + std::to_string(bytes) + " bytes");
    if (::fcntl(memfd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) == -1)
      throw_system_error("fcntl F_ADD_SEALS memfd");
    return shared_mapping(std::move(memfd), bytes);
  }

  // Maps an existing memfd (taken over: closed on failure too) whose size
  // must be a positive multiple of `unit` and, if `exact` is non-zero, equal
  // to it. Returns the mapping; the caller derives the element count.
  static shared_mapping open(fd memfd, std::size_t unit, std::size_t exact, const char* who) {
    struct stat st {};
    if (::fstat(memfd.get(), &st) == -1)
      throw_system_error(std::string(who) + "::from_fd fstat " + std::to_string(memfd.get()));
    if (!S_ISREG(st.st_mode))
      throw std::invalid_argument(std::string(who) + "::from_fd: fd " + std::to_string(memfd.get()) +
                                  " is not a memfd or regular file");
    auto bytes = static_cast<std::size_t>(st.st_size);
    if (bytes == 0 || bytes % unit != 0 || (exact != 0 && bytes != exact))
      throw std::invalid_argument(std::string(who) + "::from_fd: fd " + std::to_string(memfd.get()) +
                                  " holds " + std::to_string(bytes) + " bytes, expected " +
                                  (exact ? std::to_string(exact) : "a multiple of " + std::to_string(unit)) +
                                  " (another type, or another build of the program?)");
    return shared_mapping(std::move(memfd), bytes);
  }

  shared_mapping(shared_mapping&& other) noexcept
      : memfd_(std::move(other.memfd_)),
        addr_(std::exchange(other.addr_, nullptr)),
        bytes_(std::exchange(other.bytes_, 0)) {}
  shared_mapping& operator=(shared_mapping&& other) noexcept {
    if (this != &other) {
      unmap();
      memfd_ = std::move(other.memfd_);
      addr_ = std::exchange(other.addr_, nullptr);
      bytes_ = std::exchange(other.bytes_, 0);
    }
    return *this;
  }
  shared_mapping(const shared_mapping&) = delete;
  shared_mapping& operator=(const shared_mapping&) = delete;
  ~shared_mapping() { unmap(); }

  void* addr() const noexcept { return addr_; }
  std::size_t bytes() const noexcept { return bytes_; }
  int memfd() const noexcept { return memfd_.get(); }

 private:
  shared_mapping(fd memfd, std::size_t bytes) : memfd_(std::move(memfd)), bytes_(bytes) {
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, memfd_.get(), 0);
    if (p == MAP_FAILED)
      throw_system_error("mmap " + std::to_string(bytes) + " bytes of fd " + std::to_string(memfd_.get()));
    addr_ = p;
  }
  void unmap() noexcept {
    if (addr_) ::munmap(addr_, bytes_);
    addr_ = nullptr;
    bytes_ = 0;
    memfd_.reset();
  }

  fd memfd_;
  void* addr_ = nullptr;
  std::size_t bytes_ = 0;
};

}  // namespace detail

// One T in shared memory. Move-only; a moved-from shared holds nothing
// (get() is null). Copies of the mapping made by fork stay valid after the
// object that created them is gone.
template <class T>
class shared {
 public:
  shared() : map_(detail::shared_mapping::create(sizeof(T), "prefork-shared")) {
    detail::check_shareable<T>();
    ptr_ = ::new (map_.addr()) T();
  }

  // Maps the memfd of a shared<T> again (after exec, with the inherited fd).
  // Takes ownership of `memfd`; throws std::invalid_argument naming both
  // sizes if it does not hold exactly one T.
  static shared from_fd(int memfd) { return from_fd(fd(memfd)); }
  static shared from_fd(fd memfd) {
    detail::check_shareable<T>();
    return shared(detail::shared_mapping::open(std::move(memfd), sizeof(T), sizeof(T), "shared<T>"));
  }

  shared(shared&& other) noexcept : map_(std::move(other.map_)), ptr_(std::exchange(other.ptr_, nullptr)) {}
  shared& operator=(shared&& other) noexcept {
    if (this != &other) {
      map_ = std::move(other.map_);
      ptr_ = std::exchange(other.ptr_, nullptr);
    }
    return *this;
  }
  shared(const shared&) = delete;
  shared& operator=(const shared&) = delete;
  ~shared() = default;

  T* get() const noexcept { return ptr_; }
  T& operator*() const noexcept { return *ptr_; }
  T* operator->() const noexcept { return ptr_; }
  explicit operator bool() const noexcept { return ptr_ != nullptr; }

  // The memfd behind the memory (CLOEXEC; clear that to keep it across exec).
  int memfd() const noexcept { return map_.memfd(); }

 private:
  explicit shared(detail::shared_mapping map)
      : map_(std::move(map)), ptr_(std::launder(static_cast<T*>(map_.addr()))) {}

  detail::shared_mapping map_;
  T* ptr_ = nullptr;
};

// n Ts in shared memory, value-initialised, with the rules of shared<T>.
template <class T>
class shared_array {
 public:
  explicit shared_array(std::size_t n) {
    detail::check_shareable<T>();
    if (n == 0) throw std::invalid_argument("shared_array: size must be at least 1");
    if (n > std::numeric_limits<std::size_t>::max() / sizeof(T))
      throw std::invalid_argument("shared_array: " + std::to_string(n) +
                                  " elements overflow the address space");
    map_ = detail::shared_mapping::create(n * sizeof(T), "prefork-shared-array");
    T* first = static_cast<T*>(map_.addr());
    for (std::size_t i = 0; i < n; ++i) ::new (first + i) T();
    data_ = first;
    size_ = n;
  }

  // Maps the memfd of a shared_array<T> again; the size comes from the memfd.
  // Takes ownership of `memfd`; throws std::invalid_argument if its size is
  // not a positive multiple of sizeof(T).
  static shared_array from_fd(int memfd) { return from_fd(fd(memfd)); }
  static shared_array from_fd(fd memfd) {
    detail::check_shareable<T>();
    return shared_array(detail::shared_mapping::open(std::move(memfd), sizeof(T), 0, "shared_array<T>"));
  }
  // As above, and the memfd must hold exactly n elements.
  static shared_array from_fd(int memfd, std::size_t n) {
    detail::check_shareable<T>();
    if (n == 0 || n > std::numeric_limits<std::size_t>::max() / sizeof(T)) {
      fd(memfd).reset();
      throw std::invalid_argument("shared_array::from_fd: bad element count " + std::to_string(n));
    }
    return shared_array(detail::shared_mapping::open(fd(memfd), sizeof(T), n * sizeof(T), "shared_array<T>"));
  }

  shared_array(shared_array&& other) noexcept
      : map_(std::move(other.map_)),
        data_(std::exchange(other.data_, nullptr)),
        size_(std::exchange(other.size_, 0)) {}
  shared_array& operator=(shared_array&& other) noexcept {
    if (this != &other) {
      map_ = std::move(other.map_);
      data_ = std::exchange(other.data_, nullptr);
      size_ = std::exchange(other.size_, 0);
    }
    return *this;
  }
  shared_array(const shared_array&) = delete;
  shared_array& operator=(const shared_array&) = delete;
  ~shared_array() = default;

  std::size_t size() const noexcept { return size_; }
  T& operator[](std::size_t i) const noexcept { return data_[i]; }
  T& at(std::size_t i) const {
    if (i >= size_)
      throw std::out_of_range("shared_array: index " + std::to_string(i) + " >= size " +
                              std::to_string(size_));
    return data_[i];
  }
  T* data() const noexcept { return data_; }
  T* begin() const noexcept { return data_; }
  T* end() const noexcept { return data_ + size_; }

  int memfd() const noexcept { return map_.memfd(); }

 private:
  explicit shared_array(detail::shared_mapping map)
      : map_(std::move(map)),
        data_(std::launder(static_cast<T*>(map_.addr()))),
        size_(map_.bytes() / sizeof(T)) {}
  detail::shared_mapping map_;
  T* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace prefork
