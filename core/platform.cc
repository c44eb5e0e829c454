// Platform differences (see platform.h).
#include "aiorpc/core/platform.h"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <unistd.h>

#ifdef __linux__
#include <linux/sockios.h>
#endif

#ifdef __GLIBC__
#include <malloc.h>
#endif

namespace aiorpc::core::platform {
namespace {
// Where the flags cannot be given at creation: set them after (no other thread forks here).
int finish(int fd) noexcept {
  if (fd < 0) return fd;
#if !defined(SOCK_NONBLOCK) || !defined(SOCK_CLOEXEC)
  int fl = ::fcntl(fd, F_GETFL);
  if (fl < 0 || ::fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 || ::fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) {
    ::close(fd);
    return -1;
  }
#endif
#ifdef SO_NOSIGPIPE
  int one = 1;
  (void)::setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &one, sizeof one);
#endif
  return fd;
}
}  // namespace

int streamSocket(int family) noexcept {
#if defined(SOCK_NONBLOCK) && defined(SOCK_CLOEXEC)
  return finish(::socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
#else
  return finish(::socket(family, SOCK_STREAM, 0));
#endif
}

int acceptStream(int fd, sockaddr* sa, socklen_t* len) noexcept {
#if defined(__linux__) || defined(__FreeBSD__) || defined(__NetBSD__) || defined(__OpenBSD__)
  return finish(::accept4(fd, sa, len, SOCK_NONBLOCK | SOCK_CLOEXEC));
#else
  return finish(::accept(fd, sa, len));
#endif
}

void trimHeap() noexcept {
#ifdef __GLIBC__
  malloc_trim(0);
#endif
}

size_t unsentBytes(int fd) noexcept {
  int n = 0;
#if defined(SIOCOUTQ)
  if (::ioctl(fd, SIOCOUTQ, &n) != 0) return 0;
#elif defined(FIONWRITE)
  if (::ioctl(fd, FIONWRITE, &n) != 0) return 0;
#elif defined(SO_NWRITE)
  socklen_t len = sizeof n;
  if (::getsockopt(fd, SOL_SOCKET, SO_NWRITE, &n, &len) != 0) return 0;
#endif
  return n > 0 ? static_cast<size_t>(n) : 0;
}

}  // namespace aiorpc::core::platform
