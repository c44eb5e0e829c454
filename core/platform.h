// The few differences between Linux (epoll, where this is tested) and the BSDs and macOS
// (kqueue, expected to build): socket flags, SIGPIPE suppression, heap trimming.
#pragma once

#include <sys/socket.h>

#include <cstddef>

namespace aiorpc::core::platform {

// A non-blocking, close-on-exec stream socket that never raises SIGPIPE; -1 and errno on error.
int streamSocket(int family) noexcept;
// accept() returning a connection set up like streamSocket()'s; -1 and errno on error.
int acceptStream(int fd, sockaddr* sa, socklen_t* len) noexcept;

// Flags for send()/sendmsg(): MSG_NOSIGNAL where it exists; elsewhere the socket itself has
// SO_NOSIGPIPE (set by the two functions above).
#ifdef MSG_NOSIGNAL
constexpr int kSendFlags = MSG_NOSIGNAL;
#else
constexpr int kSendFlags = 0;
#endif

// Bytes written to a socket that its peer has not acknowledged yet (Linux SIOCOUTQ, the BSDs'
// and macOS FIONWRITE / SO_NWRITE); 0 where the platform cannot tell.
size_t unsentBytes(int fd) noexcept;

// Hands freed heap pages back to the system where the allocator can (glibc); else nothing.
void trimHeap() noexcept;

}  // namespace aiorpc::core::platform
