// A listening socket (TCP v4/v6 or unix) that accepts without spinning when out of fds.
#pragma once

#include <sys/types.h>

#include "aiorpc/core/address.h"
#include "aiorpc/core/callback.h"
#include "aiorpc/core/loop.h"
#include "aiorpc/core/socket.h"

namespace aiorpc::core {

class Listener {
 public:
  // `on_accept` gets each accepted, non-blocking, TCP_NODELAY socket with its peer address.
  Listener(Loop& loop, Callback<void(Fd, const Address&)> on_accept);
  ~Listener();
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;

  // Binds and listens (SO_REUSEADDR). Port 0 picks a free port; the result is the bound
  // address. A unix path that exists is taken over only when it is a stale socket: a file that
  // is not a socket fails with EEXIST, a socket that accepts a connect with EADDRINUSE. stop()
  // unlinks the path only while it is still the socket this listener created (same inode).
  Result<Address> listen(const Address& addr, int backlog = 1024);
  void stop() noexcept;  // stop accepting and close the socket
  const Address& address() const noexcept { return bound_; }
  unsigned long acceptErrors() const noexcept { return accept_errors_; }

 private:
  void onReadable(int) noexcept;
  void shedOne() noexcept;

  Loop& loop_;
  Callback<void(Fd, const Address&)> on_accept_;
  Fd fd_;
  Fd reserve_;  // spare fd: on EMFILE, free it, accept and close the pending peer, retake it
  IoWatcher io_;
  Address bound_;
  dev_t unix_dev_ = 0;  // the unix socket file we created, to unlink only that one
  ino_t unix_ino_ = 0;
  unsigned long accept_errors_ = 0;
  double last_emfile_log_ = -1e9;
};

}  // namespace aiorpc::core
