// Connector: connect(2) in progress, completion by writability, timeout by timer.
#include "aiorpc/core/connector.h"

#include <cerrno>

namespace aiorpc::core {

Connector::Connector(Loop& loop) {
  io_.bind<&Connector::onWritable>(loop.raw(), this);
  timer_.bind<&Connector::onTimeout>(loop.raw(), this);
}

void Connector::start(const Address& addr, double timeout_s, Done done) {
  cancel();
  done_ = std::move(done);
  auto s = newSocket(addr.family());
  std::error_code err = s ? std::error_code{} : s.error();
  if (s) {
    fd_ = std::move(s.value());
    if (::connect(fd_.get(), addr.sockaddr_ptr(), addr.length()) != 0 && errno != EINPROGRESS)
      err = sysError(errno);
  }
  if (err) {
    // Report from the loop, never inside start() (the caller's state may not be ready for it).
    fd_.reset();
    timer_.start(0);
    pending_error_ = err;
    return;
  }
  io_.set(fd_.get(), EV_WRITE);
  io_.start();
  timer_.start(timeout_s);
}

void Connector::cancel() noexcept {
  io_.stop();
  timer_.stop();
  fd_.reset();
  done_.reset();
  pending_error_ = {};
}

void Connector::onWritable(int) noexcept {
  std::error_code err = socketError(fd_.get());
  if (err) {
    finish(err);
    return;
  }
  Fd fd = std::move(fd_);
  finish(std::move(fd));
}

void Connector::onTimeout(int) noexcept {
  if (pending_error_) {
    finish(pending_error_);
    return;
  }
  finish(Errc::kTimedOut);
}

void Connector::finish(Result<Fd> r) noexcept {
  io_.stop();
  timer_.stop();
  fd_.reset();
  pending_error_ = {};
  Done d = std::move(done_);
  d(std::move(r));
}

}  // namespace aiorpc::core
