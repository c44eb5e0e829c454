// Socket helpers.
#include "aiorpc/core/socket.h"

#include <netinet/tcp.h>
#include <unistd.h>

#include <cerrno>

#include "aiorpc/core/platform.h"

namespace aiorpc::core {

void Fd::reset(int fd) noexcept {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

Result<Fd> newSocket(int family) noexcept {
  int fd = platform::streamSocket(family);
  if (fd < 0) return sysError(errno);
  return Fd(fd);
}

void setNoDelay(int fd) noexcept {
  int one = 1;
  (void)::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

Address localAddress(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return {};
  return Address::fromSockaddr(reinterpret_cast<sockaddr*>(&ss), len);
}

Address peerAddress(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return {};
  return Address::fromSockaddr(reinterpret_cast<sockaddr*>(&ss), len);
}

std::error_code socketError(int fd) noexcept {
  int err = 0;
  socklen_t len = sizeof err;
  if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
  return err ? sysError(err) : std::error_code{};
}

}  // namespace aiorpc::core
