// Thin, errno-preserving helpers over BSD sockets.
#pragma once

#include "aiorpc/core/address.h"
#include "aiorpc/core/error.h"

namespace aiorpc::core {

// Owns a file descriptor; closes it on destruction.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) noexcept : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(o.release()) {}
  Fd& operator=(Fd&& o) noexcept {
    reset(o.release());
    return *this;
  }
  ~Fd() { reset(); }
  int get() const noexcept { return fd_; }
  int release() noexcept {
    int f = fd_;
    fd_ = -1;
    return f;
  }
  void reset(int fd = -1) noexcept;
  explicit operator bool() const noexcept { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

Result<Fd> newSocket(int family) noexcept;  // non-blocking, close-on-exec
void setNoDelay(int fd) noexcept;           // TCP_NODELAY; a no-op on unix sockets
Address localAddress(int fd);
Address peerAddress(int fd);
std::error_code socketError(int fd) noexcept;  // SO_ERROR

}  // namespace aiorpc::core
