// Connection: the read path, the batched write path and close.
#include "aiorpc/core/connection.h"

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <new>

#include "aiorpc/core/tls_detail.h"

namespace aiorpc::core {

void ConnectionHandler::onEof(Connection& c) { c.closeAfterFlush(); }
void ConnectionHandler::onOverLimit(Connection& c) { c.close(sysError(ENOBUFS)); }

Connection::Connection(Loop& loop, Fd fd, ConnectionHandler* handler)
    : loop_(loop), fd_(std::move(fd)), handler_(handler) {
  peer_ = peerAddress(fd_.get());
  local_ = localAddress(fd_.get());
  if (!peer_.isUnix()) setNoDelay(fd_.get());
  io_.bind<&Connection::onIo>(loop.raw(), this);
  io_.set(fd_.get(), EV_READ);
  io_.start();
}

Connection::~Connection() { io_.stop(); }

void Connection::updateIo() noexcept {
  int ev = 0;
  if (!paused_ && !eof_ && !close_after_flush_) ev |= EV_READ;
  if (want_write_) ev |= EV_WRITE;
  if (tls_) [[unlikely]]
    tlsEvents(ev);
  if (ev == io_.events() && io_.active() == (ev != 0)) return;
  io_.stop();
  if (ev) {
    io_.set(fd_.get(), ev);
    io_.start();
  }
}

void Connection::send(std::string_view bytes) {
  if (closed_) return;
  out_.append(bytes);
  sent();
}

void Connection::sent() noexcept {
  if (closed_) {
    out_.clear();
    return;
  }
  if (!want_write_) loop_.wantFlush(this);  // an armed write watcher will pick it up
  if (out_.size() > high_) [[unlikely]] {   // the hard limit is above the high-water mark
    if (limit_ && out_.size() > limit_) {
      handler_->onOverLimit(*this);
      if (closed_) return;
    }
    if (!above_high_) {
      above_high_ = true;
      handler_->onHighWater(*this);
    }
  }
}

void Connection::checkPeer() noexcept {
  if (closed_ || eof_ || !paused_) return;
  if (tls_ && tlsPending()) return;  // input waits for us above the socket
  // A reset is a pending socket error even while unread input remains queued before it.
  int err = 0;
  socklen_t len = sizeof err;
  if (::getsockopt(fd_.get(), SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err != 0) {
    close(sysError(err));
    return;
  }
  char c;
  ssize_t n = ::recv(fd_.get(), &c, 1, MSG_PEEK | MSG_DONTWAIT);
  if (n > 0) return;  // alive, with input waiting for us
  if (n == 0) {
    eof_ = true;
    updateIo();
    handler_->onEof(*this);
    return;
  }
  if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
  close(sysError(errno));
}

void Connection::pauseReading() noexcept {
  paused_ = true;
  if (!closed_) updateIo();
}

void Connection::resumeReading() noexcept {
  paused_ = false;
  if (closed_) return;
  updateIo();
  // Input OpenSSL has already read from the socket would never wake the watcher.
  if (tls_ && tlsPending()) io_.feed(EV_READ);
}

void Connection::closeAfterFlush() noexcept {
  if (closed_) return;
  close_after_flush_ = true;
  if (out_.empty()) {
    closeGracefully();
    return;
  }
  updateIo();
  loop_.wantFlush(this);
}

void Connection::close(std::error_code why) noexcept {
  if (closed_) return;
  closed_ = true;
  io_.stop();
  unlink();  // off the loop's flush list
  if (tls_) tlsUnlist();
  out_.clear();
  fd_.reset();
  handler_->onClose(why);
}

void Connection::onIo(int revents) noexcept {
  if (tls_) [[unlikely]] {
    tlsIo(revents);
    return;
  }
  if (revents & EV_WRITE) {
    flush();
    if (closed_) return;
  }
  if (revents & EV_READ) onReadable();
}

// Out of memory for this connection's input (its buffer, or what its data makes the handler
// allocate): this connection closes with ENOMEM; the loop and the others go on.
bool Connection::takeReadBuffer(std::span<char>& buf) noexcept {
  try {
    buf = handler_->readBuffer();
    return true;
  } catch (const std::bad_alloc&) {
    close(sysError(ENOMEM));
    return false;
  }
}

void Connection::deliver(size_t n) noexcept {
  try {
    handler_->onData(n);
  } catch (const std::bad_alloc&) {
    close(sysError(ENOMEM));
  }
}

void Connection::onReadable() noexcept {
  std::span<char> buf;
  if (!takeReadBuffer(buf)) return;
  ssize_t n;
  do {
    n = ::read(fd_.get(), buf.data(), buf.size());
  } while (n < 0 && errno == EINTR);
  if (n > 0) {
    deliver(static_cast<size_t>(n));
    return;
  }
  if (n == 0) {
    eof_ = true;
    updateIo();
    handler_->onEof(*this);
    return;
  }
  if (errno == EAGAIN || errno == EWOULDBLOCK) return;
  close(sysError(errno));
}

void Connection::flush() noexcept {
  if (closed_) return;
  if (tls_) [[unlikely]] {
    tlsFlush();
    return;
  }
  if (!out_.empty()) {
    ssize_t w = out_.writeTo(fd_.get());
    if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
      close(sysError(errno));
      return;
    }
  }
  afterWrite();
}

void Connection::afterWrite() noexcept {
  bool more = !out_.empty();
  if (tls_ && tls_->write_wants_read) [[unlikely]]
    more = false;  // the write waits for input, not for room
  if (more != want_write_) {
    want_write_ = more;
    updateIo();
  }
  if (above_high_ && out_.size() <= low_) {
    above_high_ = false;
    handler_->onLowWater(*this);
    if (closed_) return;
  }
  // Looked at again: the upcall may have queued more (replies to what it held back) and asked
  // to close after them; closing on the count from before would drop them.
  if (out_.empty() && close_after_flush_) closeGracefully();
}

void Connection::closeGracefully() noexcept {
  // Everything owed is written. Unread input (a pipelining peer, bytes after a protocol error)
  // would make close() send a reset that destroys those replies in flight: hand the socket to
  // the loop's lingering close instead, unless the peer has already sent its EOF.
  if (tls_) tlsShutdown();  // close_notify: the peer tells our close from a truncation
  if (!eof_) loop_.linger(std::move(fd_));
  close();
}

}  // namespace aiorpc::core
